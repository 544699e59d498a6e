"""Typed descriptions of datasets and their subsets (sd-scripts' dataset-config keys)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from library.data.captions import CaptionOptions


@dataclass
class SubsetSpec:
    """One image folder and how its images and captions are used (``[[datasets.subsets]]``)."""

    image_dir: Path
    num_repeats: int = 1
    class_tokens: str | None = None
    is_reg: bool = False
    caption_extension: str | None = None
    keep_tokens: int = 0
    keep_tokens_separator: str | None = None
    secondary_separator: str | None = None
    caption_separator: str = ","
    shuffle_caption: bool = False
    caption_prefix: str | None = None
    caption_suffix: str | None = None
    caption_dropout_rate: float = 0.0
    caption_dropout_every_n_epochs: int = 0
    caption_tag_dropout_rate: float = 0.0
    flip_aug: bool = False
    color_aug: bool = False
    random_crop: bool = False
    #: the picture's alpha channel masks the loss (transparent parts are not learned)
    alpha_mask: bool = False
    #: folder of mask pictures named like the training pictures (red channel: 1 learned, 0 ignored)
    conditioning_data_dir: Path | None = None
    #: fine-tuning subset: sd-scripts' metadata JSON of the pictures and their captions/tags (``in_json``);
    #: its pictures and captions come from the file instead of image_dir's caption files
    metadata_file: Path | None = None
    #: ``{a|b}`` alternatives and multi-line caption files, one pick per use (sd-scripts' enable_wildcard)
    enable_wildcard: bool = False
    #: token warm-up: start with this many flexible tags ...
    token_warmup_min: int = 1
    #: ... and reach all of them after this many steps (below 1: a share of the run's steps; 0: off)
    token_warmup_step: float = 0
    #: how pictures are resized to their bucket (sd-scripts' resize_interpolation; None: Lanczos)
    resize_interpolation: str | None = None
    #: share of this subset's pictures held out for the validation loss (1.0: all of them; None: the dataset's)
    validation_split: float | None = None
    #: seed of this subset's hold-out draw (None: the training seed)
    validation_seed: int | None = None

    def caption_options(self) -> CaptionOptions:
        """The caption-processing options of this subset."""
        return CaptionOptions(
            caption_prefix=self.caption_prefix,
            caption_suffix=self.caption_suffix,
            caption_dropout_rate=self.caption_dropout_rate,
            caption_dropout_every_n_epochs=self.caption_dropout_every_n_epochs,
            shuffle_caption=self.shuffle_caption,
            keep_tokens=self.keep_tokens,
            keep_tokens_separator=self.keep_tokens_separator,
            caption_tag_dropout_rate=self.caption_tag_dropout_rate,
            caption_separator=self.caption_separator,
            secondary_separator=self.secondary_separator,
            enable_wildcard=self.enable_wildcard,
            token_warmup_min=self.token_warmup_min,
            token_warmup_step=self.token_warmup_step,
        )


@dataclass
class DatasetSpec:
    """One dataset (``[[datasets]]``): resolution, batch size, buckets and its subsets.

    ``resolution`` is ``(width, height)`` in pixels.
    """

    subsets: list[SubsetSpec] = field(default_factory=list)
    resolution: tuple[int, int] = (512, 512)
    batch_size: int = 1
    enable_bucket: bool = False
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    bucket_reso_steps: int = 64
    bucket_no_upscale: bool = False
    #: share of each training subset's images held out for the validation loss (0 = none); a subset may
    #: set its own (``SubsetSpec.validation_split``, which inherits this one)
    validation_split: float = 0.0
    #: seed of the hold-out draw and of the validation noise; None = the training seed
    validation_seed: int | None = None

    def holds_out_pictures(self) -> bool:
        """Whether any subset of this dataset holds pictures out for the validation loss."""
        return any(self.subset_validation(sub)[0] > 0 for sub in self.subsets)

    def subset_validation(self, subset: SubsetSpec) -> tuple[float, int | None]:
        """(share held out, seed or None) of one of this dataset's subsets: its own values, else the dataset's."""
        share = self.validation_split if subset.validation_split is None else subset.validation_split
        return share, self.validation_seed if subset.validation_seed is None else subset.validation_seed


SUBSET_FIELDS: tuple[str, ...] = tuple(SubsetSpec.__dataclass_fields__)
DATASET_FIELDS: tuple[str, ...] = tuple(f for f in DatasetSpec.__dataclass_fields__ if f != "subsets")
