"""Aspect-ratio buckets (sd-scripts' rules) and resize-to-cover + crop.

All sizes are ``(width, height)`` in pixels.
"""

from __future__ import annotations

import math
import random

from PIL import Image

Size = tuple[int, int]


def make_bucket_resolutions(
    max_reso: Size, min_size: int = 256, max_size: int = 1024, divisible: int = 64
) -> list[Size]:
    """The predefined buckets of sd-scripts' ``make_bucket_resolutions``.

    ``max_area = W*H``; the square ``floor(sqrt(max_area)/step)*step``; for each ``w`` from ``min_size``
    to ``max_size`` in steps of ``divisible``: ``h = min(max_size, floor(max_area/w/step)*step)``,
    adding ``(w, h)`` and ``(h, w)`` when ``h >= min_size``. Sorted, unique.
    """
    width, height = max_reso
    max_area = width * height
    side = int(math.isqrt(max_area) // divisible) * divisible
    resos = {(side, side)}
    w = min_size
    while w <= max_size:
        h = min(max_size, (max_area // w) // divisible * divisible)
        if h >= min_size:
            resos.add((w, h))
            resos.add((h, w))
        w += divisible
    return sorted(resos)


def bucket_for_size(width: int, height: int, buckets: list[Size]) -> Size:
    """The bucket whose aspect ratio ``w/h`` is nearest to the image's (an exact size match wins).

    Ties go to the first bucket in ``buckets`` order (as numpy ``argmin`` in sd-scripts).
    """
    if (width, height) in buckets:
        return (width, height)
    aspect = width / height
    return min(buckets, key=lambda b: abs(b[0] / b[1] - aspect))


def bucket_no_upscale(width: int, height: int, max_area: int, divisible: int) -> Size:
    """A per-image bucket that never enlarges the image (``bucket_no_upscale``).

    When ``width*height > max_area`` the size is scaled down to area ``max_area`` keeping the aspect
    ratio; then both sides are rounded DOWN to multiples of ``divisible``. Raises ``ValueError`` when
    a side would become 0 (image smaller than ``divisible``).
    """
    w, h = float(width), float(height)
    if width * height > max_area:
        scale = math.sqrt(max_area / (width * height))
        w, h = width * scale, height * scale
    bw = int(math.floor(w + 1e-6)) // divisible * divisible
    bh = int(math.floor(h + 1e-6)) // divisible * divisible
    if bw <= 0 or bh <= 0:
        raise ValueError(f"image {width}x{height} is smaller than bucket_reso_steps={divisible}")
    return (bw, bh)


def cover_size(width: int, height: int, bucket: Size) -> Size:
    """The size to which an image is resized so that it covers ``bucket``: scale = max(bw/w, bh/h)."""
    bw, bh = bucket
    scale = max(bw / width, bh / height)
    return max(bw, int(width * scale + 0.5)), max(bh, int(height * scale + 0.5))


def crop_origin(resized: Size, bucket: Size, rng: random.Random | None) -> tuple[int, int]:
    """The ``(left, top)`` of the crop: centred, or uniform random when ``rng`` is given."""
    dx, dy = resized[0] - bucket[0], resized[1] - bucket[1]
    if rng is None:
        return dx // 2, dy // 2
    return rng.randint(0, dx), rng.randint(0, dy)


def flipped_crop_left(left: int, covered_width: int, crop_width: int) -> int:
    """The crop's left edge measured in the horizontally flipped picture (SDXL ``crop_top_left``).

    A crop ``[left, left + crop_width)`` of a picture ``covered_width`` pixels wide (the resized-to-cover
    size) is ``[covered_width - left - crop_width, covered_width - left)`` once the picture is mirrored.
    Diffusers' ``train_text_to_image_sdxl.py`` flips before it crops and records the crop of the flipped
    picture; sd-scripts computes the same (``target_size[0] - crop_ltrb[2]``). All values in pixels.
    """
    return covered_width - left - crop_width


#: sd-scripts' ``resize_interpolation`` names -> PIL filters ("area" is box averaging, as OpenCV's INTER_AREA
#: when shrinking).
RESAMPLING: dict[str, Image.Resampling] = {
    "lanczos": Image.Resampling.LANCZOS, "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR, "linear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC, "cubic": Image.Resampling.BICUBIC,
    "area": Image.Resampling.BOX, "box": Image.Resampling.BOX,
}


def resize_and_crop(
    img: Image.Image, bucket: Size, rng: random.Random | None = None, interpolation: str | None = None
) -> tuple[Image.Image, tuple[int, int], Size]:
    """Resize ``img`` to cover ``bucket`` and crop it to exactly ``bucket``.

    ``interpolation`` is a :data:`RESAMPLING` name (sd-scripts' ``resize_interpolation``); None is Lanczos.

    Returns:
        ``(cropped image of size bucket, (left, top) of the crop in resized coordinates,
        original (width, height))``. ``rng`` None gives a centre crop, otherwise a random crop.
    """
    original = img.size
    resized_size = cover_size(original[0], original[1], bucket)
    if resized_size != original:
        img = img.resize(resized_size, RESAMPLING[interpolation or "lanczos"])
    left, top = crop_origin(resized_size, bucket, rng)
    cropped = img.crop((left, top, left + bucket[0], top + bucket[1]))
    return cropped, (left, top), original
