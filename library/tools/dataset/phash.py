"""Perceptual hashes (dHash, pHash) with numpy, and fast pairwise near-duplicate search.

dHash: a 9x8 greyscale thumbnail, one bit per horizontally adjacent pair (left brighter than right).
pHash: the 8x8 lowest frequencies of the 2-D DCT-II of a 32x32 greyscale thumbnail, one bit per
coefficient above their median (DC excluded from the median), as in Zauner, "Implementation and
Benchmarking of Perceptual Image Hash Functions" (2010). Both are 64-bit ``numpy.uint64``; similar
pictures (resized, recompressed, slightly edited) differ in few bits (Hamming distance).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

_WEIGHTS = 1 << np.arange(63, -1, -1, dtype=np.uint64)  # bit i of the flattened 64 bools -> value


def _bits_to_int(bits: np.ndarray) -> np.uint64:
    return np.uint64(np.sum(_WEIGHTS[bits.ravel().astype(bool)], dtype=np.uint64))


@lru_cache(maxsize=4)
def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix ``C`` (n, n): ``C @ x`` is the DCT of the column vector ``x``."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    c = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    c[0] /= np.sqrt(2.0)
    return c


def dhash(gray: Image.Image) -> np.uint64:
    """dHash of a greyscale ``L`` picture."""
    small = np.asarray(gray.resize((9, 8), Image.Resampling.BOX), dtype=np.float64)
    return _bits_to_int(small[:, :-1] > small[:, 1:])


def phash(gray: Image.Image) -> np.uint64:
    """pHash of a greyscale ``L`` picture."""
    small = np.asarray(gray.resize((32, 32), Image.Resampling.BOX), dtype=np.float64)
    c = _dct_matrix(32)
    low = (c @ small @ c.T)[:8, :8]
    median = np.median(low.ravel()[1:])
    return _bits_to_int(low > median)


@dataclass(frozen=True)
class PictureHash:
    """Hashes of one picture: dHash, pHash and the mean grey level (0-255, separates flat pictures)."""

    dhash: np.uint64
    phash: np.uint64
    mean: float


def hash_picture(path: str | Path) -> PictureHash:
    """Hash a picture file (EXIF rotation applied; JPEGs decoded at reduced size for speed)."""
    from library.data.images import open_checked

    with open_checked(Path(path), "Picture") as img:
        img.draft("L", (64, 64))
        gray = ImageOps.exif_transpose(img).convert("L")
    return PictureHash(dhash(gray), phash(gray), float(np.asarray(gray, dtype=np.float64).mean()))


def hamming(a: np.ndarray | np.uint64, b: np.ndarray | np.uint64) -> np.ndarray:
    """Number of differing bits between 64-bit hashes (broadcasts)."""
    return np.bitwise_count(np.bitwise_xor(a, b))


def near_duplicate_pairs(
    hashes: list[PictureHash], max_phash: int = 8, max_dhash: int = 12, max_mean: float = 12.0
) -> list[tuple[int, int, int]]:
    """Index pairs ``(i, j, phash distance)``, i < j, of pictures that look the same.

    Both hash distances must be within their limits and the mean grey levels within ``max_mean``
    (flat pictures of different colours share their hashes). Vectorised per row: O(n²) bit operations,
    about a second for 10,000 pictures.
    """
    if len(hashes) < 2:
        return []
    p = np.array([h.phash for h in hashes], dtype=np.uint64)
    d = np.array([h.dhash for h in hashes], dtype=np.uint64)
    m = np.array([h.mean for h in hashes])
    pairs = []
    for i in range(len(hashes) - 1):
        dp = hamming(p[i], p[i + 1 :])
        ok = (
            (dp <= max_phash)
            & (hamming(d[i], d[i + 1 :]) <= max_dhash)
            & (np.abs(m[i] - m[i + 1 :]) <= max_mean)
        )
        pairs.extend((i, i + 1 + int(j), int(dp[j])) for j in np.nonzero(ok)[0])
    return pairs
