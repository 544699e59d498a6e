"""Safe image loading (EXIF orientation, modes -> RGB) and fast probing with a truncation check.

Pictures over PIL's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS`` pixels; PIL itself only warns
up to twice that) are refused with a :class:`DatasetError` naming them, before any pixel is decoded, so
the dataset scan and the tools skip them with a warning like any unreadable picture. PIL's own
``DecompressionBombWarning`` is silenced while opening: the limit is checked here, with a message that names
the file.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from library.errors import DatasetError

logger = logging.getLogger(__name__)

_JPEG_END = b"\xff\xd9"
_PNG_IEND = b"IEND\xaeB`\x82"
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_UNREADABLE = (UnidentifiedImageError, OSError, ValueError, SyntaxError)

# catch_warnings swaps process-wide state: one opener at a time (Image.open only reads the header).
_WARNINGS_LOCK = threading.Lock()


def _bomb_error(path: Path, what: str, detail: str) -> DatasetError:
    return DatasetError(
        f"{what} '{path}' is too large to read safely ({detail}): over PIL's decompression-bomb limit of "
        f"{Image.MAX_IMAGE_PIXELS} pixels, so it may be a crafted file that would fill the memory. Downscale it "
        "(e.g. to 2048 pixels on the long side) or remove it from the dataset."
    )


def open_checked(path: Path, what: str) -> Image.Image:
    """``Image.open`` (lazy: the header only) that refuses pictures over the bomb limit with a DatasetError."""
    try:
        with _WARNINGS_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except Image.DecompressionBombError as exc:
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        raise _bomb_error(path, what, f"{pixels.group(1)} pixels" if pixels else str(exc)) from None
    limit = Image.MAX_IMAGE_PIXELS
    width, height = img.size
    if limit and width * height > limit:
        img.close()
        raise _bomb_error(path, what, f"{width}x{height} = {width * height} pixels")
    return img


def _to_eight_bit(img: Image.Image) -> Image.Image:
    """Scale a 16/32-bit integer or float greyscale image to 8-bit ``L``."""
    arr = np.asarray(img, dtype=np.float64)
    if img.mode != "F" and arr.size and arr.max() > 255:
        arr = arr / 257.0
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")


def _has_transparency(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to ``RGB``: alpha is composited on white, 16-bit scaled to 8-bit."""
    if img.mode in _SIXTEEN_BIT_MODES or img.mode == "F":
        img = _to_eight_bit(img)
    if _has_transparency(img):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if img.mode != "RGB":
        return img.convert("RGB")
    return img


def _open_transposed(path: Path, what: str = "Image") -> Image.Image:
    """Decode ``path`` with its EXIF orientation applied; DatasetError naming the file when it cannot be."""
    try:
        with open_checked(path, what) as img:
            img.load()
            return ImageOps.exif_transpose(img)
    except _UNREADABLE as exc:
        raise DatasetError(
            f"{what} '{path}' cannot be read ({exc}). Re-export it as PNG or JPEG, or remove it from the dataset."
        ) from exc


def load_image(path: str | Path) -> Image.Image:
    """Load an image as ``RGB`` with its EXIF orientation applied.

    Raises :class:`DatasetError` naming the file when it cannot be decoded.
    """
    return to_rgb(_open_transposed(Path(path)))


def load_image_and_alpha(path: str | Path) -> tuple[Image.Image, Image.Image]:
    """(``RGB`` image, its alpha channel as ``L``; all 255 without alpha), decoded once.

    The alpha is the loss mask of ``alpha_mask``: transparent parts of a picture do not count in the loss.
    """
    img = _open_transposed(Path(path))
    alpha = img.convert("RGBA").getchannel("A") if _has_transparency(img) else Image.new("L", img.size, 255)
    return to_rgb(img), alpha


def load_mask_picture(path: str | Path, size: tuple[int, int]) -> Image.Image:
    """A mask picture's red channel as an ``L`` image (white = learned), resized to the picture's ``size``."""
    mask = to_rgb(_open_transposed(Path(path), "Mask picture")).getchannel("R")
    return mask if mask.size == tuple(size) else mask.resize(tuple(size), Image.Resampling.BILINEAR)


def _tail(path: Path, n: int) -> bytes:
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - n))
        return f.read()


def _check_complete(path: Path, img: Image.Image) -> None:
    """Raise ``OSError`` when the file is truncated (JPEG without FFD9, PNG without IEND)."""
    if img.format == "JPEG":
        if not _tail(path, 4096).rstrip(b"\x00\r\n\t ").endswith(_JPEG_END):
            raise OSError("truncated JPEG: no end-of-image marker (FFD9)")
    elif img.format == "PNG":
        if _PNG_IEND not in _tail(path, 4096):
            raise OSError("truncated PNG: no IEND chunk")
    else:
        img.load()


def probe_image(path: str | Path) -> tuple[int, int]:
    """Return the displayed ``(width, height)`` of an image (EXIF rotation considered) without decoding it.

    JPEG and PNG files are checked for truncation by their end markers; other formats are fully
    decoded. Raises :class:`DatasetError` naming the file when it is unreadable or truncated.
    """
    path = Path(path)
    try:
        with open_checked(path, "Image") as img:
            _check_complete(path, img)
            width, height = img.size
            orientation = img.getexif().get(0x0112, 1)
    except _UNREADABLE as exc:
        raise DatasetError(
            f"Image '{path}' is unreadable or truncated ({exc}). Re-export it or remove it from the dataset."
        ) from exc
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return width, height


def probe_images(
    paths: list[Path], max_workers: int = 4
) -> tuple[dict[Path, tuple[int, int]], dict[Path, str]]:
    """Probe many images in a thread pool.

    Returns:
        ``(sizes, failures)``: path -> (width, height) for good images, path -> reason for bad ones.
        Each failure is also logged as a warning naming the file.
    """
    sizes: dict[Path, tuple[int, int]] = {}
    failures: dict[Path, str] = {}

    def probe(p: Path) -> tuple[Path, tuple[int, int] | None, str | None]:
        try:
            return p, probe_image(p), None
        except DatasetError as exc:
            return p, None, str(exc)

    with ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool:
        for p, size, error in pool.map(probe, paths):
            if size is None:
                failures[p] = error or "unreadable"
                logger.warning("Skipping image: %s", error)
            else:
                sizes[p] = size
    return sizes, failures
