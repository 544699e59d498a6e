"""Imports every backend module so that each registers itself in ``BACKENDS`` (one line per backend)."""

from library.tools.dataset.vlm import florence2, joycaption, openai_api, qwen2_5_vl, qwen3_vl  # noqa: F401
