"""Tag statistics per concept folder: frequency, tags in almost every picture, tags that always co-occur.

Tags present in (almost) every picture of a concept are candidates to fold into the trigger word; tag
pairs that nearly always appear together become entangled in the trained model.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

from library.tools.dataset.files import caption_path, find_images, read_text
from library.tools.dataset.tags import split_caption


@dataclass
class FolderTagStats:
    """Statistics of one folder's captions (each caption a list of tags)."""

    images: int
    frequency: Counter[str]
    #: (tag, share of pictures) for tags in at least ``min_share`` of them, by descending share.
    common: list[tuple[str, float]] = field(default_factory=list)
    #: (tag a, tag b, pictures with both, Jaccard index) for pairs that almost always co-occur.
    pairs: list[tuple[str, str, int, float]] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "images": self.images,
            "frequency": dict(sorted(self.frequency.items(), key=lambda kv: (-kv[1], kv[0]))),
            "common": [{"tag": t, "share": round(s, 4)} for t, s in self.common],
            "pairs": [{"tags": [a, b], "together": n, "jaccard": round(j, 4)} for a, b, n, j in self.pairs],
        }


def tag_stats(
    captions: Iterable[list[str]], min_share: float = 0.8, pair_share: float = 0.9, min_pair_count: int = 3
) -> FolderTagStats:
    """Statistics of one folder.

    ``common``: tags in ≥ ``min_share`` of the pictures. ``pairs``: tag pairs (a, b), both seen at least
    ``min_pair_count`` times, with Jaccard index ``n(a and b) / n(a or b)`` ≥ ``pair_share``; pairs of
    two ``common`` tags are left out (they are reported as common already).
    """
    sets = [set(tags) for tags in captions]
    frequency: Counter[str] = Counter(tag for tags in sets for tag in tags)
    images = len(sets)
    common = sorted(
        ((t, n / images) for t, n in frequency.items() if images and n / images >= min_share),
        key=lambda ts: (-ts[1], ts[0]),
    )
    common_names = {t for t, _ in common}
    candidates = sorted(t for t, n in frequency.items() if n >= min_pair_count)
    together: Counter[tuple[str, str]] = Counter()
    for tags in sets:
        present = sorted(tags.intersection(candidates))
        together.update(combinations(present, 2))
    pairs = []
    for (a, b), n in together.items():
        if a in common_names and b in common_names:
            continue
        jaccard = n / (frequency[a] + frequency[b] - n)
        if jaccard >= pair_share:
            pairs.append((a, b, n, jaccard))
    pairs.sort(key=lambda p: (-p[3], -p[2], p[0], p[1]))
    return FolderTagStats(images, frequency, common, pairs)


def format_stats(stats: dict[str, FolderTagStats], top: int = 20) -> str:
    """Text report: per folder the most frequent tags, the common tags and the entangled pairs."""
    lines = []
    for folder, s in stats.items():
        lines.append(f"{folder}: {s.images} pictures")
        top_tags = sorted(s.frequency.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
        lines.append("  most frequent: " + ", ".join(f"{t} ({n})" for t, n in top_tags))
        if s.common:
            lines.append(
                "  in almost every picture (fold into the trigger word?): "
                + ", ".join(f"{t} ({share:.0%})" for t, share in s.common)
            )
        for a, b, n, j in s.pairs:
            lines.append(f"  always together: {a} + {b} ({n} pictures, {j:.0%})")
    return "\n".join(lines)


def read_folder_captions(
    root: str | Path, caption_extension: str = ".txt", separator: str = ","
) -> dict[str, list[list[str]]]:
    """Folder (relative to ``root``, ``"."`` for root itself) -> the tag lists of its pictures' captions.

    All subfolders are read (hidden ones excepted); the first non-empty line of each caption is used and
    pictures without a caption file count as pictures with no tags.
    """
    root = Path(root)
    out: dict[str, list[list[str]]] = {}
    for image in find_images(root, recursive=True):
        path = caption_path(image, caption_extension)
        text = read_text(path) if path.is_file() else ""
        first = next((line for line in text.splitlines() if line.strip()), "")
        out.setdefault(str(image.parent.relative_to(root)), []).append(split_caption(first, separator))
    return out
