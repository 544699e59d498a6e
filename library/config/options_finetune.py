"""Options of fine-tuning from sd-scripts' metadata JSON (``fine_tune.py``; also accepted by the other trainers,
as sd-scripts' ``train_network.py`` accepts them).

``check_finetune_rules`` holds the rules between these options and the dataset options; it runs before any
model is loaded.
"""

from __future__ import annotations

import dataclasses
import logging

from library.config.schema import Option, Schema
from library.errors import ConfigError

logger = logging.getLogger(__name__)

OPTIONS = [
    Option(
        "in_json",
        "file",
        None,
        "Fine-tune from this metadata JSON (sd-scripts' format: image key -> caption, tags; made by "
        "tools/merge_captions_to_metadata.py, merge_dd_tags_to_metadata.py and prepare_buckets_latents.py) "
        "instead of <repeats>_<class> folders. The pictures are in train_data_dir (unset: the keys are full paths).",
        "folders",
        must_exist=True,
    ),
    Option(
        "dataset_repeats",
        "int",
        1,
        "How many times each picture of in_json is used per epoch (the repeats of folder names in DreamBooth); "
        "also the num_repeats of dataset_config subsets that set none.",
        "dataset",
        min=1,
    ),
]


def check_finetune_rules(config) -> None:
    """Rules between ``in_json`` / ``dataset_repeats`` and the dataset options (sd-scripts' behaviour, stated
    instead of silent); raises ``ConfigError``."""
    if not config.in_json:
        if config.dataset_repeats != 1 and not config.dataset_config:
            logger.warning(
                "dataset_repeats = %d has no effect on train_data_dir's folders: their names give the repeats "
                "(it applies to in_json and to dataset_config subsets that set no num_repeats).",
                config.dataset_repeats,
            )
        return
    if config.dataset_config:
        logger.warning(
            "in_json and train_data_dir are ignored because dataset_config is set (as in sd-scripts); "
            "put metadata_file = '%s' in a [[datasets.subsets]] of the dataset config instead.",
            config.in_json,
        )
        return
    if config.reg_data_dir:
        raise ConfigError(
            f"'reg_data_dir' cannot be used with 'in_json' ({config.in_json!r}): a fine-tuning dataset has no "
            f"regularisation pictures. Remove reg_data_dir, or use a dataset_config with a metadata_file dataset "
            f"and a separate DreamBooth dataset holding the is_reg subset."
        )


#: sd-scripts' ``fine_tune.py`` trains the text encoder only with ``--train_text_encoder``
FINE_TUNE_DEFAULTS = {"train_text_encoder": False}


def schema_with_defaults(defaults: dict | None) -> Schema:
    """The option schema with some defaults changed (an entry point's own defaults); the schema itself when
    ``defaults`` is empty."""
    from library.config.options import SCHEMA

    if not defaults:
        return SCHEMA
    unknown = set(defaults) - set(SCHEMA.names())
    if unknown:
        raise ValueError(f"no such options: {sorted(unknown)}")
    options = [
        dataclasses.replace(o, default=defaults[o.name]) if o.name in defaults else o for o in SCHEMA.options
    ]
    return Schema(groups=SCHEMA.groups, options=options, aliases=SCHEMA.aliases)
