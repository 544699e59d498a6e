"""The dataset doctor: everything that can go wrong with a dataset, found before any GPU time is spent.

Errors (exit 1): unreadable or truncated pictures, caption files that are not UTF-8, the same picture
(exact or near copy) in both train and reg, no usable training picture. Warnings: missing or empty
captions, pictures smaller than the resolution, duplicates within a set, a bucket range that leaves
aspect-ratio bucketing no room at the resolution (SDXL at 1024 with ``max_bucket_reso`` 1024). Info:
counts, steps per epoch (bucket-aware, as the trainer counts them), the bucket distribution and tag
statistics, tokens per caption (CLIP tokenizer; a warning for captions longer than ``max_token_length``,
75 unless given, which training cuts). The resolution is the config's unless overridden: by ``resolution`` (e.g. 1024 for SDXL) or
by ``family``, whose default training resolution it then takes (sd1 512, sd2 768, sdxl 1024).
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from library.data.captions import DEFAULT_CAPTION_EXTENSIONS
from library.data.dataset import TrainDataset
from library.data.folders import list_images
from library.data.images import probe_images
from library.data.specs import DatasetSpec, SubsetSpec
from library.errors import UserError
from library.tools.dataset.check_sources import load_specs
from library.tools.dataset.files import normalise_extension
from library.tools.dataset.phash import PictureHash, hash_picture, near_duplicate_pairs
from library.tools.dataset.stats import FolderTagStats, tag_stats
from library.tools.dataset.tags import split_caption

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Finding:
    """One problem: ``severity`` is ``"error"`` or ``"warning"``; ``paths`` names the files."""

    severity: str
    code: str
    message: str
    paths: tuple[str, ...] = ()


@dataclass
class Picture:
    path: Path
    folder: str
    is_reg: bool
    size: tuple[int, int] | None = None
    caption: list[str] | None = None  # None: no caption file
    hash: PictureHash | None = None
    sha256: str = ""


@dataclass
class CheckReport:
    """The doctor's findings and the dataset figures."""

    findings: list[Finding] = field(default_factory=list)
    folders: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    buckets: list[dict[str, Any]] = field(default_factory=list)
    tag_stats: dict[str, FolderTagStats] = field(default_factory=dict)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    def add(self, severity: str, code: str, message: str, paths: list[Path] | tuple = ()) -> None:
        self.findings.append(Finding(severity, code, message, tuple(str(p) for p in paths)))

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": not self.errors,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "findings": [vars(f) | {"paths": list(f.paths)} for f in self.findings],
            "folders": self.folders,
            "summary": self.summary,
            "buckets": self.buckets,
            "tag_stats": {k: v.to_json() for k, v in self.tag_stats.items()},
        }


@dataclass(frozen=True)
class CheckOptions:
    """Overrides and thresholds of the check. Hash limits: see :func:`near_duplicate_pairs`."""

    resolution: int | None = None
    batch_size: int | None = None
    #: a model family ("sdxl" …): its default resolution when ``resolution`` is not given
    family: str | None = None
    #: override of the largest bucket side (SDXL runs use 2048, as sd-scripts' SDXL examples)
    max_bucket_reso: int | None = None
    workers: int = 4
    max_phash: int = 8
    max_dhash: int = 12
    min_share: float = 0.8
    pair_share: float = 0.9
    min_pair_count: int = 3
    #: the run's max_token_length (75, 150, 225; None: 75): longer captions get a warning
    max_token_length: int | None = None

    def __post_init__(self) -> None:
        """``UserError`` naming the option for a value the check cannot use (``--resolution -5`` is no OK)."""
        for flag, value, low in (("--resolution", self.resolution, 1), ("--batch_size", self.batch_size, 1),
                                 ("--max_bucket_reso", self.max_bucket_reso, 64),
                                 ("--max_data_loader_n_workers", self.workers, 0),
                                 ("--max_phash_distance", self.max_phash, 0), ("--min_pair_count", self.min_pair_count, 1)):
            if value is not None and value < low:
                raise UserError(f"{flag} {value} is out of range: it must be at least {low}.")
        for flag, value in (("--min_share", self.min_share), ("--pair_share", self.pair_share)):
            if not 0 < value <= 1:  # also refuses NaN
                raise UserError(f"{flag} {value} is out of range: give a share in (0, 1], e.g. 0.8.")
        if self.max_token_length not in (None, 75, 150, 225):
            raise UserError(f"--max_token_length {self.max_token_length} is not one sd-scripts accepts: use 75, 150 or 225.")


def _read_caption_tags(image: Path, subset: SubsetSpec, report: CheckReport) -> list[str] | None:
    """The caption's tags, ``[]`` for an empty file, None when there is no caption file."""
    exts = (
        (normalise_extension(subset.caption_extension),)
        if subset.caption_extension
        else DEFAULT_CAPTION_EXTENSIONS
    )
    for ext in exts:
        path = image.with_suffix(ext)
        if path.is_file():
            try:
                text = path.read_text(encoding="utf-8-sig")
            except UnicodeDecodeError:
                report.add(
                    "error", "caption_not_utf8", "caption file is not UTF-8; re-save it as UTF-8", [path]
                )
                return []
            first = next((line for line in text.splitlines() if line.strip()), "")
            return split_caption(first, subset.caption_separator)
    return None


def _collect(specs: list[DatasetSpec], report: CheckReport, workers: int) -> list[Picture]:
    pictures = []
    for spec in specs:
        for subset in spec.subsets:
            images = list_images(subset.image_dir) if subset.image_dir.is_dir() else []
            report.folders.append(
                {
                    "folder": str(subset.image_dir),
                    "is_reg": subset.is_reg,
                    "images": len(images),
                    "repeats": subset.num_repeats,
                    "class_tokens": subset.class_tokens,
                }
            )
            for image in images:
                pic = Picture(image, subset.image_dir.name, subset.is_reg)
                pic.caption = _read_caption_tags(image, subset, report)
                pictures.append(pic)
    sizes, failures = probe_images([p.path for p in pictures], max_workers=workers)
    if failures:
        report.add(
            "error",
            "unreadable",
            "pictures that cannot be read or are truncated (re-export or remove "
            "them): " + "; ".join(failures.values()),
            list(failures),
        )
    for pic in pictures:
        pic.size = sizes.get(pic.path)
    return pictures


def _hash_all(pictures: list[Picture], workers: int) -> None:
    def work(pic: Picture) -> None:
        pic.sha256 = hashlib.sha256(pic.path.read_bytes()).hexdigest()
        pic.hash = hash_picture(pic.path)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(work, [p for p in pictures if p.size is not None]))


def _duplicate_findings(pictures: list[Picture], opts: CheckOptions, report: CheckReport) -> None:
    """Exact (same bytes) and near (perceptual hash) duplicates; train/reg overlap is an error."""
    good = [p for p in pictures if p.hash is not None]
    by_sha: dict[str, list[Picture]] = defaultdict(list)
    for pic in good:
        by_sha[pic.sha256].append(pic)
    exact_pairs = set()
    for group in by_sha.values():
        for i, a in enumerate(group):
            for b in group[i + 1 :]:
                exact_pairs.add((a.path, b.path))
                _pair_finding(a, b, "exact copies", report)
    hashes = [p.hash for p in good]
    for i, j, dist in near_duplicate_pairs(hashes, opts.max_phash, opts.max_dhash):
        a, b = good[i], good[j]
        if (a.path, b.path) not in exact_pairs:
            _pair_finding(a, b, f"near duplicates (perceptual hash distance {dist})", report)


def _pair_finding(a: Picture, b: Picture, what: str, report: CheckReport) -> None:
    if a.is_reg != b.is_reg:
        report.add(
            "error",
            "train_reg_overlap",
            f"{what} in both train and reg: the same picture must not be "
            f"in both sets (it teaches the class prior the subject); remove one",
            [a.path, b.path],
        )
    else:
        where = "reg" if a.is_reg else "train"
        report.add(
            "warning", "duplicate", f"{what} within {where}: the picture counts twice", [a.path, b.path]
        )


def _caption_findings(pictures: list[Picture], report: CheckReport) -> None:
    missing = [p.path for p in pictures if p.caption is None and not p.is_reg]
    empty = [p.path for p in pictures if p.caption == [] and not p.is_reg]
    if missing:
        report.add(
            "warning",
            "missing_caption",
            f"{len(missing)} training pictures have no caption file; the "
            "folder's class tokens are their caption",
            missing,
        )
    if empty:
        report.add(
            "warning", "empty_caption", f"{len(empty)} training pictures have an empty caption file", empty
        )


def _small_findings(pictures: list[Picture], specs: list[DatasetSpec], report: CheckReport) -> None:
    area = min(s.resolution[0] * s.resolution[1] for s in specs)
    res = next(s.resolution for s in specs if s.resolution[0] * s.resolution[1] == area)
    small = [p.path for p in pictures if p.size and p.size[0] * p.size[1] < area]
    if small:
        report.add(
            "warning",
            "small",
            f"{len(small)} pictures are smaller than the resolution {res[0]}x{res[1]} "
            "and will be enlarged (blurry); use bigger pictures or bucket_no_upscale",
            small,
        )


def override_resolution(opts: CheckOptions) -> int | None:
    """The resolution the check uses instead of the config's: ``opts.resolution``, else the default training
    resolution of ``opts.family`` (sdxl: 1024), else None (keep the config's)."""
    if opts.resolution:
        return opts.resolution
    if opts.family:
        from library.models.family import get_model_family

        return get_model_family(opts.family).default_resolution
    return None


def bucket_range_findings(specs: list[DatasetSpec], report: CheckReport) -> None:
    """Warn when bucketing is on but ``max_bucket_reso`` is not above the resolution (no room for aspect
    ratios: SDXL at 1024 with the default 1024)."""
    for spec in specs:
        side = max(spec.resolution)
        if spec.enable_bucket and spec.max_bucket_reso <= side:
            report.add(
                "warning",
                "bucket_range",
                f"max_bucket_reso {spec.max_bucket_reso} is not above the resolution {side}: no bucket can be "
                f"longer than {spec.max_bucket_reso}, so wide and tall pictures are cropped to near-square buckets. "
                f"Set max_bucket_reso to {2 * side} (sd-scripts' SDXL examples use 2048 at 1024).",
            )


def _mask_findings(specs: list[DatasetSpec], report: CheckReport) -> None:
    """masked_loss pairing: every training picture of a subset with conditioning_data_dir needs its mask."""
    from library.data.masks import missing_mask_pictures

    missing = missing_mask_pictures(specs)
    if missing:
        report.add("error", "missing_mask",
                   f"{len(missing)} training pictures have no mask picture of the same name in "
                   "conditioning_data_dir (masked_loss would stop)", missing)


def _dataset_figures(specs: list[DatasetSpec], report: CheckReport, workers: int) -> None:
    """Steps per epoch and buckets exactly as the trainer counts them."""
    try:
        ds = TrainDataset(specs, max_workers=workers)
    except UserError as exc:
        report.add("error", "no_training_data", str(exc))
        return
    report.summary = {
        "train_images": sum(1 for it in ds.items if not it.is_reg),
        "reg_images": sum(1 for it in ds.items if it.is_reg),
        "samples_per_epoch": ds.num_train_images + ds.num_reg_items_per_epoch,
        "batch_size": [s.batch_size for s in specs],
        "resolution": [list(s.resolution) for s in specs],
        "steps_per_epoch": ds.steps_per_epoch(),
    }
    report.buckets = [
        {"dataset": d, "bucket": list(b), "samples": n} for (d, b), n in ds.bucket_counts().items()
    ]


def caption_length_findings(pictures: list[Picture], max_token_length: int | None, report: CheckReport,
                            tokenizer=None) -> None:
    """Tokens per caption file (``summary["caption_tokens"]``) and a ``long_caption`` warning for captions
    longer than ``max_token_length`` (None: 75), which training cuts there."""
    from library.data.summary import caption_lengths

    with_caption = [(p.path, ", ".join(p.caption)) for p in pictures if p.caption]
    if not with_caption:
        return
    lengths = caption_lengths(with_caption, max_token_length, tokenizer)
    numbers = [n for _, n in lengths.counts]
    over = lengths.over
    report.summary["caption_tokens"] = {"max": max(numbers), "mean": round(sum(numbers) / len(numbers), 1),
                                        "limit": lengths.limit, "over_limit": len(over)}
    if over:
        longest = over[0]
        more = "150 or 225" if lengths.limit == 75 else "225" if lengths.limit == 150 else ""
        report.add("warning", "long_caption",
                   f"{len(over)} captions are longer than max_token_length {lengths.limit} tokens (the longest: "
                   f"{longest[1]} tokens) and training cuts them there in silence; shorten them"
                   + (f" or set max_token_length = {more}" if more else ""),
                   [Path(p) for p, _ in over])


def check_specs(specs: list[DatasetSpec], opts: CheckOptions) -> CheckReport:
    """Check the datasets described by ``specs`` (modified in place by the resolution/batch overrides)."""
    resolution = override_resolution(opts)
    for spec in specs:
        if resolution:
            spec.resolution = (resolution, resolution)
        if opts.batch_size:
            spec.batch_size = opts.batch_size
        if opts.max_bucket_reso:
            spec.max_bucket_reso = opts.max_bucket_reso
    report = CheckReport()
    bucket_range_findings(specs, report)
    pictures = _collect(specs, report, opts.workers)
    _caption_findings(pictures, report)
    _small_findings(pictures, specs, report)
    _mask_findings(specs, report)
    _hash_all(pictures, opts.workers)
    _duplicate_findings(pictures, opts, report)
    _dataset_figures(specs, report, opts.workers)
    caption_length_findings(pictures, opts.max_token_length, report)
    by_folder: dict[str, list[list[str]]] = defaultdict(list)
    for pic in pictures:
        if not pic.is_reg:
            by_folder[pic.folder].append(pic.caption or [])
    report.tag_stats = {
        f: tag_stats(c, opts.min_share, opts.pair_share, opts.min_pair_count)
        for f, c in sorted(by_folder.items())
    }
    return report


def check_dataset(
    source: str | Path, reg_data_dir: str | Path | None = None, opts: CheckOptions | None = None
) -> CheckReport:
    """Check a training folder (+ reg folder), a dataset TOML or a training config.

    A folder layout the trainer would reject becomes an error finding with the trainer's message.
    """
    opts = opts or CheckOptions()
    try:
        specs = load_specs(source, reg_data_dir)
    except UserError as exc:
        report = CheckReport()
        report.add("error", "layout", str(exc))
        return report
    return check_specs(specs, opts)
