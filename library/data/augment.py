"""Pixel augmentations and conversion to tensors (explicit RNG, pure functions)."""

from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image, ImageOps

HUE_SHIFT_MAX = 0.02
BRIGHTNESS_RANGE = (0.9, 1.1)


def color_jitter(img: Image.Image, rng: random.Random) -> Image.Image:
    """A small random hue shift (up to ``HUE_SHIFT_MAX`` of the colour circle) and brightness change.

    The two random draws are: hue shift, then brightness factor.
    """
    hue_shift = rng.uniform(-HUE_SHIFT_MAX, HUE_SHIFT_MAX)
    brightness = rng.uniform(*BRIGHTNESS_RANGE)
    hsv = np.asarray(img.convert("HSV"), dtype=np.int16).copy()
    hsv[..., 0] = (hsv[..., 0] + int(round(hue_shift * 256))) % 256
    hsv[..., 2] = np.clip(np.rint(hsv[..., 2] * brightness), 0, 255)
    return Image.fromarray(hsv.astype(np.uint8), mode="HSV").convert("RGB")


def hflip(img: Image.Image) -> Image.Image:
    """Mirror left-right."""
    return ImageOps.mirror(img)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image (W, H) -> float32 tensor (3, H, W) in [-1, 1]."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous() / 127.5 - 1.0
