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
    #: share of each training subset's images held out for the validation loss (0 = none)
    validation_split: float = 0.0
    #: seed of the hold-out draw and of the validation noise; None = the training seed
    validation_seed: int | None = None


SUBSET_FIELDS: tuple[str, ...] = tuple(SubsetSpec.__dataclass_fields__)
DATASET_FIELDS: tuple[str, ...] = tuple(f for f in DatasetSpec.__dataclass_fields__ if f != "subsets")
