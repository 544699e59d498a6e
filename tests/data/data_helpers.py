"""Tiny image/caption generators for the dataset-layer tests (PIL-drawn, a few pixels each)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw


def make_image(
    path: Path, size: tuple[int, int], color=(200, 30, 30), mode: str = "RGB", fmt: str | None = None
) -> Path:
    """An image with a coloured background and a black square in its top-left quarter."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, color)
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 0, max(0, size[0] // 4 - 1), max(0, size[1] // 4 - 1)), fill=(0, 0, 0))
    if mode != "RGB":
        img = img.convert(mode)
    img.save(path, format=fmt)
    return path


def make_truncated_jpeg(path: Path, size: tuple[int, int] = (64, 48)) -> Path:
    """A JPEG cut in the middle (no FFD9 end marker)."""
    make_image(path, size, fmt="JPEG")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def make_truncated_png(path: Path, size: tuple[int, int] = (64, 48)) -> Path:
    """A PNG without its IEND chunk."""
    make_image(path, size, fmt="PNG")
    data = path.read_bytes()
    path.write_bytes(data[:-12])
    return path


def make_rgba_png(path: Path, size: tuple[int, int] = (16, 16)) -> Path:
    """Left half opaque red, right half fully transparent (black with alpha 0)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGBA", size, (0, 0, 0, 0))
    ImageDraw.Draw(img).rectangle((0, 0, size[0] // 2 - 1, size[1] - 1), fill=(255, 0, 0, 255))
    img.save(path)
    return path


def make_exif_rotated_jpeg(path: Path, stored_size: tuple[int, int] = (40, 20), orientation: int = 6) -> Path:
    """A JPEG stored as ``stored_size`` whose EXIF orientation says to rotate it (6 = 90° clockwise)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", stored_size, (0, 0, 255))
    ImageDraw.Draw(img).rectangle((0, 0, stored_size[0] // 2 - 1, stored_size[1] - 1), fill=(255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(path, format="JPEG", exif=exif.tobytes(), quality=95)
    return path


def write_caption(path: Path, text: str | bytes) -> Path:
    """Write a caption file (bytes are written as-is, e.g. a non-UTF-8 caption)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def make_concept(
    folder: Path, sizes: list[tuple[int, int]], captions: list[str | None] | None = None, ext: str = ".png"
) -> list[Path]:
    """Images ``img_000.png`` ... of the given sizes in ``folder``, with optional ``.txt`` captions."""
    paths = []
    for i, size in enumerate(sizes):
        p = make_image(folder / f"img_{i:03d}{ext}", size, color=(10 * i % 256, 100, 150))
        if captions is not None and captions[i] is not None:
            write_caption(p.with_suffix(".txt"), captions[i])
        paths.append(p)
    return paths
