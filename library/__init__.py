"""Training suite for Stable Diffusion LoRA and DreamBooth: all logic lives in this package."""

from library.util.host_memory import use_huge_pages

__version__ = "0.1.0"

# before anything imports torch: PyTorch reads its THP_MEM_ALLOC_ENABLE once, at the first tensor it allocates,
# and importing the trainers' modules allocates some (a user's own setting of the variable is kept)
use_huge_pages()
