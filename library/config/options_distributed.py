"""Options of distributed training with DeepSpeed (sd-scripts' ``add_deepspeed_arguments``), declared once.

DDP needs no option (``accelerate launch --multi_gpu``); FSDP comes from an accelerate config file
(``accelerate launch --config_file fsdp.yaml``). ``check_distributed_rules`` holds the rules between these
options and the rest; it runs before any model is loaded. The plugin itself is built in
:mod:`library.training.distributed`.
"""

from __future__ import annotations

import importlib.util
import os

from library.config.schema import Option
from library.errors import ConfigError

#: sd-scripts' ``--offload_*_device`` values; "none" is accelerate's spelling of "off".
OFFLOAD_DEVICES = ("none", "cpu", "nvme")
ZERO_STAGES = (0, 1, 2, 3)
DEEPSPEED_INSTALL = "DS_BUILD_OPS=0 pip install deepspeed"

OPTIONS = [
    Option(
        "deepspeed",
        "bool",
        False,
        "Train with DeepSpeed ZeRO through accelerate: optimizer states (stage 1), gradients (2) and "
        "weights (3) are split across the processes, so a full fine-tune fits on smaller GPUs. Launch with "
        "`accelerate launch --multi_gpu --num_processes N`. Needs the deepspeed package ("
        + DEEPSPEED_INSTALL
        + ").",
        "training",
    ),
    Option(
        "zero_stage",
        "int",
        2,
        "DeepSpeed ZeRO stage: 0 (plain data parallel), 1 (split optimizer states), 2 (and gradients), 3 (and "
        "weights; needs zero3_save_16bit_model to save). Used with deepspeed = true.",
        "training",
        choices=ZERO_STAGES,
    ),
    Option(
        "offload_optimizer_device",
        "str",
        None,
        "DeepSpeed: keep the optimizer states on this device instead of the GPU: cpu or nvme (ZeRO stage 2 or 3).",
        "training",
        choices=OFFLOAD_DEVICES,
    ),
    Option(
        "offload_optimizer_nvme_path",
        "path",
        None,
        'DeepSpeed: the folder on an NVMe drive for offload_optimizer_device = "nvme" (e.g. /local_nvme).',
        "training",
    ),
    Option(
        "offload_param_device",
        "str",
        None,
        "DeepSpeed: keep the weights on this device between uses: cpu or nvme (ZeRO stage 3 only).",
        "training",
        choices=OFFLOAD_DEVICES,
    ),
    Option(
        "offload_param_nvme_path",
        "path",
        None,
        'DeepSpeed: the folder on an NVMe drive for offload_param_device = "nvme".',
        "training",
    ),
    Option(
        "zero3_init_flag",
        "bool",
        False,
        "DeepSpeed ZeRO-3: build huge models split across the processes (deepspeed.zero.Init).",
        "training",
    ),
    Option(
        "zero3_save_16bit_model",
        "bool",
        False,
        "DeepSpeed ZeRO-3: gather the 16-bit weights on the main process when saving (needed to write the model "
        "file with zero_stage = 3).",
        "training",
    ),
    Option(
        "fp16_master_weights_and_gradients",
        "bool",
        False,
        "DeepSpeed: keep master weights and gradients in fp16, optimizer states in fp32 (only with mixed_precision "
        '= "fp16", zero_stage = 2 and offload_optimizer_device = "cpu", as DeepSpeed supports it).',
        "training",
    ),
]

#: options that mean something only with ``deepspeed = true`` (``zero_stage`` has a default, so it is not here).
DEEPSPEED_ONLY = (
    "offload_optimizer_device",
    "offload_optimizer_nvme_path",
    "offload_param_device",
    "offload_param_nvme_path",
    "zero3_init_flag",
    "zero3_save_16bit_model",
    "fp16_master_weights_and_gradients",
)


def offload_device(value: str | None) -> str | None:
    """``None`` for "off" (unset or "none"), else the device name."""
    return None if value in (None, "none") else value


def deepspeed_installed() -> bool:
    return importlib.util.find_spec("deepspeed") is not None


def fsdp_launched() -> bool:
    """True when ``accelerate launch`` was given an FSDP config (it sets ``ACCELERATE_USE_FSDP``)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def check_distributed_rules(config) -> None:
    """Rules of DeepSpeed / FSDP runs, before any model loads; raises ``ConfigError``."""
    if not config.deepspeed:
        stray = [name for name in DEEPSPEED_ONLY if getattr(config, name) not in (None, False, "none")]
        if stray:
            raise ConfigError(
                f"{', '.join(stray)} {'is a DeepSpeed option' if len(stray) == 1 else 'are DeepSpeed options'}, but "
                f"deepspeed is not set: add deepspeed = true (and launch with accelerate), or remove "
                f"{'it' if len(stray) == 1 else 'them'}."
            )
    else:
        _check_deepspeed(config)
    if fsdp_launched():
        _check_fsdp(config)


def _check_deepspeed(config) -> None:
    if not deepspeed_installed():
        raise ConfigError(
            f"deepspeed = true needs the deepspeed package, which is not installed. Install it with "
            f"`{DEEPSPEED_INSTALL}` (Linux; the ops are then compiled when first used, which needs a C++ "
            f"compiler), or remove deepspeed from the config to train with plain data parallel "
            f"(accelerate launch --multi_gpu)."
        )
    if fsdp_launched():
        raise ConfigError(
            "deepspeed = true, but accelerate was launched with an FSDP config: choose one engine. "
            "Remove deepspeed from the config, or launch without the FSDP config file."
        )
    stage = config.zero_stage
    optimizer_device = offload_device(config.offload_optimizer_device)
    param_device = offload_device(config.offload_param_device)
    if optimizer_device and stage < 2:
        raise ConfigError(
            f'offload_optimizer_device = "{optimizer_device}" needs zero_stage = 2 or 3 (it is '
            f"{stage}): DeepSpeed offloads the optimizer only from those stages."
        )
    if param_device and stage != 3:
        raise ConfigError(
            f'offload_param_device = "{param_device}" needs zero_stage = 3 (it is {stage}): only '
            f"ZeRO-3 splits the weights, so only it can keep them off the GPU."
        )
    for device, path_name in (
        (optimizer_device, "offload_optimizer_nvme_path"),
        (param_device, "offload_param_nvme_path"),
    ):
        if device == "nvme" and not getattr(config, path_name):
            raise ConfigError(f'offloading to "nvme" needs {path_name}: the folder on the NVMe drive to use.')
    if stage == 3 and not config.zero3_save_16bit_model:
        raise ConfigError(
            "zero_stage = 3 splits the weights across the processes, so the model file can only be "
            "written when they are gathered: set zero3_save_16bit_model = true."
        )
    for name in ("zero3_init_flag", "zero3_save_16bit_model"):
        if getattr(config, name) and stage != 3:
            raise ConfigError(
                f"{name} is for zero_stage = 3 (it is {stage}); remove it or set zero_stage = 3."
            )
    if config.fp16_master_weights_and_gradients and not (
        config.mixed_precision == "fp16" and stage == 2 and optimizer_device == "cpu"
    ):
        raise ConfigError(
            'fp16_master_weights_and_gradients works only with mixed_precision = "fp16", zero_stage '
            '= 2 and offload_optimizer_device = "cpu" (DeepSpeed\'s ZeRO-Offload); set those or '
            "remove it."
        )
    if getattr(config, "fused_backward_pass", False) or getattr(config, "blockwise_fused_optimizers", False):
        raise ConfigError(
            "fused_backward_pass / blockwise_fused_optimizers cannot be combined with deepspeed: DeepSpeed runs the backward pass "
            "and the optimizer step itself. Remove one of the two (ZeRO-2 already saves the gradient "
            "memory that fused_backward_pass saves)."
        )
    if stage == 3:
        _check_no_side_passes(config, "DeepSpeed ZeRO-3")


def _check_fsdp(config) -> None:
    if config.trainer != "db":
        raise ConfigError(
            "accelerate was launched with an FSDP config, which this trainer supports for train_db.py "
            "(full fine-tuning). A LoRA trains few weights: launch train_network.py with "
            "`accelerate launch --multi_gpu` (data parallel) or deepspeed = true instead."
        )
    if getattr(config, "fused_backward_pass", False) or getattr(config, "blockwise_fused_optimizers", False):
        raise ConfigError(
            "fused_backward_pass / blockwise_fused_optimizers cannot be combined with FSDP: FSDP reduces and shards the gradients "
            "itself. Remove fused_backward_pass or launch without the FSDP config."
        )
    _check_no_side_passes(config, "FSDP")


def _check_no_side_passes(config, engine: str) -> None:
    """Sampling, validation and the weight average read the weights outside the training step, where an engine
    that splits the weights across processes does not hold them whole."""
    side = [
        name for name in ("sample_prompts", "validation_split", "ema_decay") if getattr(config, name, None)
    ]
    if side:
        raise ConfigError(
            f"{', '.join(side)} cannot be used with {engine} here: it splits the weights across the "
            f"processes, and {'this reads' if len(side) == 1 else 'these read'} them outside the "
            f"training step. Remove {'it' if len(side) == 1 else 'them'}, or use DeepSpeed ZeRO-2 "
            f"(deepspeed = true, zero_stage = 2), which keeps whole weights on every process."
        )
