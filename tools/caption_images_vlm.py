"""Caption pictures with a vision-language model: Florence-2, JoyCaption, Qwen2.5-VL, Qwen3-VL or an
OpenAI-compatible endpoint; one caption file per picture, resumable, several GPUs with accelerate launch.

python tools/caption_images_vlm.py DIR --backend qwen2.5-vl --prompt_style tags --trigger_word sks
python tools/caption_images_vlm.py DIR --backend openai --api_base http://localhost:8000/v1 --model Qwen/Qwen2.5-VL-7B-Instruct
accelerate launch --multi_gpu --num_processes 2 tools/caption_images_vlm.py DIR --backend florence2 --task "<MORE_DETAILED_CAPTION>"
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from library.tools.dataset.vlm.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
