"""Building the training dataset from a config: folders or an sd-scripts dataset TOML."""

from __future__ import annotations

import os

from library.data.dataset import TrainDataset
from library.data.dataset_config import specs_from_dataset_config, specs_from_folders, specs_from_in_json
from library.data.masks import attach_mask_pictures, check_mask_sources
from library.data.scan import scan_datasets
from library.data.validation_split import split_validation

#: training options that act as defaults for every dataset/subset (lowest level of sd-scripts' lookup).
DATASET_DEFAULT_OPTIONS = (
    "resolution", "train_batch_size", "enable_bucket", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps",
    "bucket_no_upscale", "flip_aug", "color_aug", "random_crop", "caption_extension", "shuffle_caption",
    "keep_tokens", "keep_tokens_separator", "secondary_separator", "caption_separator", "caption_prefix",
    "caption_suffix", "caption_dropout_rate", "caption_dropout_every_n_epochs", "caption_tag_dropout_rate",
    "validation_split", "validation_seed", "alpha_mask", "conditioning_data_dir",
    "enable_wildcard", "token_warmup_min", "token_warmup_step", "resize_interpolation",
    "dataset_repeats",  # sd-scripts: the num_repeats of subsets that do not set their own
)


def dataset_defaults(config) -> dict:
    """The config values that datasets inherit, keyed by sd-scripts option name."""
    return {name: getattr(config, name) for name in DATASET_DEFAULT_OPTIONS}


def build_dataset(config) -> TrainDataset:
    """Scan the pictures and captions named by the config (no model needed); the training side of any
    validation split."""
    return build_datasets(config)[0]


def build_datasets(config) -> tuple[TrainDataset, TrainDataset | None]:
    """(training dataset, validation dataset or None): ``validation_split`` holds out part of each
    training folder, drawn with ``validation_seed`` (else ``seed``, else 0)."""
    defaults = dataset_defaults(config)
    if config.dataset_config:
        specs = specs_from_dataset_config(config.dataset_config, defaults)
    elif config.in_json:  # fine-tuning from sd-scripts' metadata JSON
        specs = specs_from_in_json(config.in_json, config.train_data_dir, config.dataset_repeats, defaults)
    else:
        specs = specs_from_folders(config.train_data_dir, config.reg_data_dir, defaults)
    check_mask_sources(specs, config.masked_loss)
    workers = max(1, config.max_data_loader_n_workers)
    items = attach_mask_pictures(scan_datasets(specs, max_workers=workers), specs)
    if not any(spec.holds_out_pictures() for spec in specs):
        train, held_out = TrainDataset(specs, prior_loss_weight=config.prior_loss_weight, items=items), []
    else:
        train_items, held_out = split_validation(items, specs, config.seed or 0)
        train = TrainDataset(specs, prior_loss_weight=config.prior_loss_weight, items=train_items)
    # token warm-up needs the optimizer step each batch is used at (accelerate launch sets WORLD_SIZE)
    train.set_step_clock(int(os.environ.get("WORLD_SIZE", "1")), config.gradient_accumulation_steps,
                         config.max_train_steps, config.max_train_epochs)
    return train, (TrainDataset(specs, items=held_out) if held_out else None)
