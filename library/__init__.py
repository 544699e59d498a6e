"""Training suite for Stable Diffusion LoRA and DreamBooth: all logic lives in this package."""

__version__ = "0.1.0"
