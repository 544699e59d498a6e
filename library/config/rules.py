"""Validation of a merged config: ranges, choices, paths and rules between options."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from library.config.schema import Schema
from library.config.values import file_name_problem
from library.data.folders import REPEATS_MAX
from library.errors import ConfigError

logger = logging.getLogger(__name__)

#: numpy's and accelerate's ``set_seed`` take seeds 0 .. 2**32 - 1 (torch takes more).
SEED_MAX = 2**32 - 1
#: a LoRA rank above a layer's width adds nothing; the widest layers of SD 1.x, 2.x and SDXL are 1280.
#: a typo guard, not a width: LyCORIS' LoKr takes a dim above the layer's width (kohya_ss' presets: 100000) as
#: its full-matrix mode
NETWORK_DIM_MAX = 100_000


def check_values(config, schema: Schema) -> None:
    """Per-option checks: choices, ranges, existing paths, custom checks."""
    for opt in schema.for_trainer(config.trainer):
        value = getattr(config, opt.name)
        if value is None:
            continue
        choices = opt.allowed_choices()
        if choices and opt.check is None and value not in choices:
            raise ConfigError(
                f"option {opt.name!r}: {value!r} is not one of {', '.join(map(str, choices))}."
            )
        if opt.check is not None:
            problem = opt.check(value)
            if problem:
                raise ConfigError(f"option {opt.name!r}: {problem}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if opt.min is not None and (value < opt.min or (opt.min_exclusive and value == opt.min)):
                bound = f"greater than {opt.min}" if opt.min_exclusive else f"at least {opt.min}"
                raise ConfigError(f"option {opt.name!r}: {value} is out of range; it must be {bound}.")
            if opt.max is not None and value > opt.max:
                raise ConfigError(f"option {opt.name!r}: {value} is out of range; it must be at most {opt.max}.")
        if opt.must_exist and opt.kind in ("dir", "file", "path"):
            path = Path(value)
            if not path.exists():
                raise ConfigError(f"option {opt.name!r}: {value!r} does not exist. Check the path.")
            if opt.kind == "dir" and not path.is_dir():
                raise ConfigError(f"option {opt.name!r}: {value!r} is a file; it must be a folder.")
            if opt.kind == "file" and not path.is_file():
                raise ConfigError(f"option {opt.name!r}: {value!r} is a folder; it must be a file.")


def check_rules(config, schema: Schema) -> None:
    """All checks that can be made before any model is loaded."""
    check_values(config, schema)
    _check_names_and_bounds(config)
    if config.output_config:
        return  # writing the config needs no data or model
    if os.environ.get("RANK", "0") == "0":  # only the main process writes outputs and logs
        for name in ("output_dir", "logging_dir"):
            if getattr(config, name):
                _check_writable(name, getattr(config, name))
    for name in ("train_data_dir", "reg_data_dir"):
        if getattr(config, name):
            _check_repeats(name, Path(getattr(config, name)))
    if not config.pretrained_model_name_or_path:
        raise ConfigError(
            "option 'pretrained_model_name_or_path' is missing: give a diffusers folder, a .safetensors/.ckpt "
            "file, a hub id, or builtin:tiny for the built-in demo model."
        )
    if not config.output_dir:
        raise ConfigError("option 'output_dir' is missing: say where the trained files should be written.")
    if config.dataset_config is None and config.train_data_dir is None and config.in_json is None:
        raise ConfigError(
            "no training data: set 'train_data_dir' (a folder of <repeats>_<class> subfolders), "
            "'dataset_config' (an sd-scripts dataset TOML) or 'in_json' (an sd-scripts fine-tuning metadata JSON)."
        )
    from library.config.options_finetune import check_finetune_rules

    check_finetune_rules(config)
    if config.trainer == "network" and config.network_train_unet_only and config.network_train_text_encoder_only:
        raise ConfigError(
            "'network_train_unet_only' and 'network_train_text_encoder_only' are both set: nothing would be "
            "trained. Keep at most one."
        )
    if config.cache_latents or config.cache_latents_to_disk:
        for name in ("color_aug", "random_crop"):
            if getattr(config, name):
                raise ConfigError(
                    f"'{name}' cannot be combined with 'cache_latents': cached latents are encoded once, so the "
                    f"image cannot change per step. Turn one of them off."
                )
    _check_text_encoder_cache(config)
    if config.use_8bit_adam and "optimizer_type" in config.explicit and config.optimizer_type.lower() != "adamw8bit":
        raise ConfigError(
            f"'use_8bit_adam' and 'optimizer_type = {config.optimizer_type}' disagree; remove use_8bit_adam "
            f"(optimizer_type = \"AdamW8bit\" says the same)."
        )
    allowed_formats = {"network": ("safetensors", "ckpt", "pt"),
                       "db": ("safetensors", "ckpt", "diffusers", "diffusers_safetensors"),
                       "ti": ("safetensors", "ckpt", "pt")}[config.trainer]
    if config.save_model_as not in allowed_formats:
        raise ConfigError(
            f"option 'save_model_as': {config.save_model_as!r} is not a format of this trainer; use one of "
            f"{', '.join(allowed_formats)}."
        )
    if config.trainer == "db":
        from library.config.options_db import check_db_rules

        check_db_rules(config)
    from library.config.options_distributed import check_distributed_rules

    check_distributed_rules(config)
    if config.trainer == "network":
        from library.networks import get_network_type

        get_network_type(config.network_module).parse_args(config.network_args)
    if config.enable_bucket and config.min_bucket_reso > config.max_bucket_reso:
        raise ConfigError(
            f"'min_bucket_reso' ({config.min_bucket_reso}) is larger than 'max_bucket_reso' "
            f"({config.max_bucket_reso})."
        )
    if config.sample_prompts:
        from library.training.sampling.prompts import read_prompts

        prompts = read_prompts(config.sample_prompts)  # a bad line is an error now, not after an hour of training
        if config.trainer != "network" and any(p.lora_weights for p in prompts):
            raise ConfigError(f"sample_prompts {config.sample_prompts!r}: --am sets the weight of a trained LoRA, and "
                              f"this trainer trains none (train_network.py does). Remove --am from the prompts.")
    _check_one_lr(config)
    _warn_unused_lr(config)
    if config.log_with in ("wandb", "all"):
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            raise ConfigError("log_with = \"wandb\" needs the wandb package, which is not installed: "
                              "pip install wandb (or use log_with = \"tensorboard\").")
        if not config.logging_dir:
            raise ConfigError("log_with is set but logging_dir is not: set logging_dir to where logs go.")
    if config.adaptive_noise_scale and not config.noise_offset:
        raise ConfigError("'adaptive_noise_scale' adds to the noise offset: set 'noise_offset' too (e.g. 0.05).")
    if config.min_timestep is not None and config.max_timestep is not None and config.min_timestep >= config.max_timestep:
        raise ConfigError(
            f"'min_timestep' ({config.min_timestep}) must be below 'max_timestep' ({config.max_timestep})."
        )
    if config.zero_terminal_snr and not config.v_parameterization:
        logger.warning("zero_terminal_snr is meant for v-prediction models; with ε-prediction the last step "
                       "cannot be learnt")
    if config.v_parameterization and not config.v2:
        logger.warning("v_parameterization is set without v2: right for v-prediction SDXL bases (e.g. NoobAI-XL "
                       "v-pred), wrong for SD 1.x models, which predict ε")


#: caption options that change a picture's caption from step to step (sd-scripts' is_text_encoder_output_cacheable)
CAPTION_RANDOMNESS = ("shuffle_caption", "caption_dropout_rate", "caption_dropout_every_n_epochs",
                      "caption_tag_dropout_rate", "token_warmup_step", "enable_wildcard")


def _check_text_encoder_cache(config) -> None:
    """``cache_text_encoder_outputs`` encodes each caption once, so captions must be the same at every step: refuse
    the caption augmentations (in the config or in a dataset_config subset) before any model loads, as
    sd-scripts asserts."""
    cache = next((name for name in ("cache_text_encoder_outputs", "cache_text_encoder_outputs_to_disk")
                  if getattr(config, name, False)), None)
    if config.weighted_captions and getattr(config, "no_token_padding", False):  # no_token_padding: db only
        raise ConfigError("'weighted_captions' cannot be combined with 'no_token_padding': weighted captions are "
                          "always padded to full 77-token windows. Turn one of them off.")
    if cache is None:
        return
    if config.weighted_captions:
        raise ConfigError(
            f"'weighted_captions' cannot be combined with '{cache}': the cached text-encoder outputs are "
            f"computed without the captions' weights (sd-scripts refuses this too). Turn '{cache}' off to "
            "train with weighted captions, or turn 'weighted_captions' off."
        )
    found = [(name, "") for name in CAPTION_RANDOMNESS if getattr(config, name, None)]
    if not found and config.dataset_config:
        from library.data.dataset_config import specs_from_dataset_config
        from library.training.data_setup import dataset_defaults

        for spec in specs_from_dataset_config(config.dataset_config, dataset_defaults(config)):
            for subset in spec.subsets:
                found += [(name, f" (dataset_config {config.dataset_config!r}, subset {str(subset.image_dir)!r})")
                          for name in CAPTION_RANDOMNESS if getattr(subset, name, None)]
    if found:
        name, where = found[0]
        raise ConfigError(
            f"'{cache}' cannot be combined with '{name}'{where}: the text encoders' outputs are computed once per "
            f"caption, but '{name}' changes the caption from step to step (sd-scripts refuses this too). Turn "
            f"'{name}' off, or turn '{cache}' off."
        )


def _part_lrs(config) -> dict[str, float]:
    """The learning rate of each trained part (UNet, text encoder) as the trainer will use it."""
    lr = config.learning_rate
    if config.trainer == "network":
        parts = {}
        if not config.network_train_text_encoder_only:
            parts["unet"] = lr if config.unet_lr is None else config.unet_lr
        if not config.network_train_unet_only:
            te_lr = config.text_encoder_lr
            for i, value in enumerate(te_lr if isinstance(te_lr, list) else [te_lr]):
                parts[f"text encoder {i + 1}" if isinstance(te_lr, list) else "text encoder"] = \
                    lr if value is None else value
    elif config.trainer == "ti":
        parts = {"embeddings": lr}
    else:
        parts = {"unet": lr}
        if config.train_text_encoder and config.stop_text_encoder_training not in (0, -1):
            parts["text encoder"] = lr if config.learning_rate_te is None else config.learning_rate_te
    return {k: v for k, v in parts.items() if v}


def _check_one_lr(config) -> None:
    """D-Adaptation and Prodigy variants refuse groups with different lrs: say so before any model loads."""
    from library.training.optimizers import needs_one_lr, resolve_optimizer_name

    name = resolve_optimizer_name(config.optimizer_type, config.use_8bit_adam, config.use_lion_optimizer)
    if not needs_one_lr(name):
        return
    lrs = _part_lrs(config)
    loraplus = [a.split("=")[0] for a in (getattr(config, "network_args", None) or []) if a.startswith("loraplus")]
    if len(set(lrs.values())) > 1 or loraplus:
        found = ", ".join(f"{k} {v}" for k, v in lrs.items()) + (f"; {', '.join(loraplus)}" if loraplus else "")
        raise ConfigError(
            f"optimizer_type {config.optimizer_type!r} needs one learning rate for everything it trains, but the "
            f"config has {found}. Set the learning rates equal (1.0 is usual for this optimizer) or leave "
            f"unet_lr / text_encoder_lr unset, and drop LoRA+ ratios."
        )


def _check_names_and_bounds(config) -> None:
    """Seeds in range, a sane rank, and names that stay plain file names inside their folder."""
    for name in ("seed", "validation_seed"):
        value = getattr(config, name)
        if value is not None and not 0 <= value <= SEED_MAX:
            raise ConfigError(f"option {name!r}: {value} is out of range; a seed must be 0 to {SEED_MAX} (2**32 - 1), "
                              f"the range numpy and accelerate accept.")
    dim = getattr(config, "network_dim", None)
    if dim is not None and dim > NETWORK_DIM_MAX:
        raise ConfigError(f"option 'network_dim': {dim} is out of range; it must be at most {NETWORK_DIM_MAX} (LoKr's "
                          f"full-matrix setting): a LoRA rank above a layer's width adds nothing. Ranks of 4 to 128 "
                          f"are usual.")
    if config.caption_extension == "":
        raise ConfigError("option 'caption_extension' is empty: give an extension such as \".txt\", or leave it unset "
                          "(then <image>.txt, else <image>.caption is read).")
    for name in ("output_name", "caption_extension", "log_prefix"):
        value = getattr(config, name)
        problem = None if value is None or (value == "" and name == "log_prefix") else file_name_problem(value)
        if problem:
            raise ConfigError(f"option {name!r}: {value!r} {problem}.")


def _check_writable(option: str, folder: str) -> None:
    """Create ``folder`` and a temporary file in it, then remove what was made: an unwritable output is
    found now, not at the final save hours later."""
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"option {option!r}: {folder!r} is a file; it must be a folder (it is created when "
                          f"missing). Give another path or move the file away.")
    made = []
    probe = path
    while not probe.exists() and probe != probe.parent:
        made.append(probe)
        probe = probe.parent
    try:
        path.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(prefix=".sdtrain-write-test-", dir=path)
        os.close(handle)
        os.unlink(temp)
    except OSError as exc:
        raise ConfigError(f"option {option!r}: the folder {folder!r} cannot be written ({exc.strerror or exc}). "
                          f"Choose a folder you can write to (or fix its permissions or free space) before "
                          f"training; otherwise the run would fail when it saves.") from None
    finally:
        for made_folder in made:  # deepest first; leave no trace of the probe
            try:
                made_folder.rmdir()
            except OSError:
                pass


def _check_repeats(option: str, root: Path) -> None:
    """Folder names ask for ``<repeats>``; a huge count would fill the memory while the epoch is built."""
    from library.data.folders import parse_folder_name

    try:
        names = [sub.name for sub in root.iterdir() if sub.is_dir()]
    except OSError:
        return  # the dataset scan reports an unreadable folder
    for name in names:
        parsed = parse_folder_name(name)
        if parsed and parsed[0] > REPEATS_MAX:
            raise ConfigError(
                f"{option}: folder {name!r} asks for {parsed[0]} repeats; at most {REPEATS_MAX} are accepted. Each "
                f"repeat adds every picture of the folder to each epoch once more (8 bytes of memory per picture "
                f"and repeat, {parsed[0] * 8 / 1e9:.1f} GB per picture here). Rename the folder with fewer repeats "
                f"and train more epochs or set max_train_steps.")


def _warn_unused_lr(config) -> None:
    """A part with its own rate ignores learning_rate, so changing learning_rate does nothing there."""
    if config.trainer == "network":
        own = [("the UNet", "unet_lr", config.unet_lr, not config.network_train_text_encoder_only),
               ("the text encoder", "text_encoder_lr", config.text_encoder_lr, not config.network_train_unet_only)]
    elif config.trainer == "db":
        own = [("the text encoder", "learning_rate_te", config.learning_rate_te, config.train_text_encoder)]
    else:
        own = []
    unused = [f"{part} uses {name} = {value}" for part, name, value, trained in own if trained and value is not None]
    if unused:
        logger.warning("learning_rate = %s has no effect where a part has its own rate: %s; change that value "
                       "to change its learning rate", config.learning_rate, ", ".join(unused))
