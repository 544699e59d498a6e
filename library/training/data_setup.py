"""Building the training dataset from a config: folders or an sd-scripts dataset TOML."""

from __future__ import annotations

from library.data.dataset import TrainDataset
from library.data.dataset_config import specs_from_dataset_config, specs_from_folders

#: training options that act as defaults for every dataset/subset (lowest level of sd-scripts' lookup).
DATASET_DEFAULT_OPTIONS = (
    "resolution", "train_batch_size", "enable_bucket", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps",
    "bucket_no_upscale", "flip_aug", "color_aug", "random_crop", "caption_extension", "shuffle_caption",
    "keep_tokens", "keep_tokens_separator", "secondary_separator", "caption_separator", "caption_prefix",
    "caption_suffix", "caption_dropout_rate", "caption_dropout_every_n_epochs", "caption_tag_dropout_rate",
)


def dataset_defaults(config) -> dict:
    """The config values that datasets inherit, keyed by sd-scripts option name."""
    return {name: getattr(config, name) for name in DATASET_DEFAULT_OPTIONS}


def build_dataset(config) -> TrainDataset:
    """Scan the pictures and captions named by the config (no model needed)."""
    defaults = dataset_defaults(config)
    if config.dataset_config:
        specs = specs_from_dataset_config(config.dataset_config, defaults)
    else:
        specs = specs_from_folders(config.train_data_dir, config.reg_data_dir, defaults)
    return TrainDataset(specs, prior_loss_weight=config.prior_loss_weight,
                        max_workers=max(1, config.max_data_loader_n_workers))
