"""Setting up a run: run length, accelerate, the base model on its device, the data plan per process."""

from __future__ import annotations

import itertools
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

from library.errors import ConfigError

logger = logging.getLogger(__name__)

@dataclass
class RunLength:
    steps_per_epoch: int
    num_epochs: int
    total_steps: int


def run_length(max_train_steps: int, max_train_epochs: int | None, steps_per_epoch: int) -> RunLength:
    """``max_train_epochs`` wins over ``max_train_steps`` (sd-scripts' rule)."""
    if max_train_epochs:
        return RunLength(steps_per_epoch, max_train_epochs, max_train_epochs * steps_per_epoch)
    return RunLength(steps_per_epoch, math.ceil(max_train_steps / steps_per_epoch), max_train_steps)


def make_accelerator(config, find_unused_parameters: bool = False) -> Accelerator:
    """accelerate for this run: precision, accumulation, trackers under logging_dir/<prefix><time>."""
    log_with = None
    project = None
    if config.logging_dir:
        log_with = "all" if config.log_with == "all" else (config.log_with or "tensorboard")
        run_name = f"{config.log_prefix or ''}{time.strftime('%Y%m%d%H%M%S')}"
        run_dir = str(Path(config.logging_dir) / run_name)
        project = ProjectConfiguration(project_dir=run_dir, logging_dir=run_dir)
    from library.training import distributed

    return Accelerator(
        cpu=_distributed_without_gpu() and not distributed.uses_deepspeed(config),
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with=log_with,
        project_config=project,
        deepspeed_plugin=distributed.deepspeed_plugin(config),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters),
                         *distributed.process_group_kwargs(config)],
    )


def _distributed_without_gpu() -> bool:
    """Launched as several processes (torchrun / accelerate launch --multi_gpu) on a machine without a
    GPU: accelerate needs cpu=True to use gloo (``accelerate launch --cpu`` alone starts one process)."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world > 1 and not torch.cuda.is_available() and not torch.backends.mps.is_available()


def with_family_defaults(config):
    """The config with the base model's family defaults for options the user did not set (SDXL: resolution
    1024, max_bucket_reso 2048), when the family can be told without loading the model."""
    from library.models.family import check_family_options, get_model_family
    from library.models.loading import peek_family

    if not config.pretrained_model_name_or_path:
        return config
    name = peek_family(str(config.pretrained_model_name_or_path))
    if name is None:
        return config
    family = get_model_family(name)
    check_family_options(config, family)
    size = family.default_resolution
    changes = {}
    if "resolution" not in config.explicit and tuple(config.resolution) != (size, size):
        changes["resolution"] = (size, size)
    if "max_bucket_reso" not in config.explicit and config.max_bucket_reso != family.default_max_bucket_reso:
        changes["max_bucket_reso"] = family.default_max_bucket_reso
    if not changes:
        return config
    logger.info("%s defaults (not set in the config): %s", name, ", ".join(f"{k} {v}" for k, v in changes.items()))
    return config.replace(**changes)


def load_model(config):
    from library.models.loading import load_base_model

    model = load_base_model(
        config.pretrained_model_name_or_path,
        v2=config.v2 if "v2" in config.explicit else None,
        v_parameterization=config.v_parameterization,
        vae=config.vae,
        allow_unsafe_pickle=config.allow_unsafe_pickle,
        components={name: getattr(config, name, None) for name in ("clip_l", "t5xxl", "ae")},
    )
    from library.models.family import check_family_options

    check_family_options(config, model.adapter)
    model.adapter.configure(model, config)
    if config.zero_terminal_snr:
        model.noise_scheduler = type(model.noise_scheduler).from_config(model.noise_scheduler.config,
                                                                        rescale_betas_zero_snr=True)
    return model


def weight_dtype(mixed_precision: str) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


def compute_dtype(mixed_precision: str, device_type: str) -> torch.dtype:
    """dtype the frozen weights run in: the mixed-precision dtype on an accelerator, float32 on the CPU."""
    return weight_dtype(mixed_precision) if device_type != "cpu" else torch.float32


def place_model(model, device: torch.device, config, trains_text_encoder: bool,
                float32_components: tuple[str, ...] = (), dtype: torch.dtype | None = None) -> None:
    """Frozen weights go to ``device`` in the compute dtype; the VAE stays float32 (fp16 VAEs NaN), and so
    do the target's ``float32_components`` (trained in full, or saved unchanged: a cast would round them).

    ``dtype`` overrides the compute dtype (the estimate places on the meta device as on a GPU).
    """
    from library.models.memory import BlockSwapper, move_except

    if dtype is None:
        dtype = compute_dtype(config.mixed_precision, device.type)
    text_encoders = model.text_encoders
    for module in model.parts.values():
        module.requires_grad_(False)
    # cast where the weights were loaded (a model may come in its file's dtype: bf16, fp8), store in fp8 and
    # pick the swapped blocks there too, then move: the device never holds more than the run keeps on it
    for name in (*text_encoders, "unet"):
        keep = dtype == torch.float32 or name in float32_components or _is_text_component(name, float32_components)
        _cast(model.parts[name], torch.float32 if keep else dtype)
    _cast(model.vae, torch.float32)
    model.vae.eval()
    swapped = _memory_savers(model, device, config, trains_text_encoder, float32_components)
    on_host = swapped if device.type != "meta" else []  # the estimate traces every block on the meta device
    for name in (*text_encoders, "unet", "vae"):
        move_except(model.parts[name], device, on_host if name == "unet" else ())
    if swapped and device.type != "meta":
        model.extras["block_swapper"] = BlockSwapper(swapped, len(swapped), device).install()
    model.unet.train(config.gradient_checkpointing)
    for module in text_encoders.values():
        module.train(trains_text_encoder and config.gradient_checkpointing)
    if config.gradient_checkpointing:
        if config.cpu_offload_checkpointing:  # a family option (FLUX): its transformer takes the flag
            model.unet.enable_gradient_checkpointing(cpu_offload=True)
        else:
            model.unet.enable_gradient_checkpointing()
        if trains_text_encoder:
            for module in text_encoders.values():
                enable = getattr(module, "activation_checkpointing_enable", None)
                (enable or module.gradient_checkpointing_enable)()


def _cast(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Floating weights to ``dtype`` when any differs (``nn.Module.to`` itself: diffusers' override warns
    about float32-kept modules on every cast, even when it has none)."""
    if any(t.is_floating_point() and t.dtype != dtype for t in [*module.parameters(), *module.buffers()]):
        torch.nn.Module.to(module, dtype=dtype)


def _memory_savers(model, device: torch.device, config, trains_text_encoder: bool,
                   float32_components: tuple[str, ...]) -> list[torch.nn.Module]:
    """fp8 storage of the frozen weights (``fp8_base``: denoiser and frozen text encoders; ``fp8_base_unet``:
    the denoiser), applied where the weights are; returns the blocks ``blocks_to_swap`` keeps in host memory
    (see :mod:`library.models.memory`)."""
    from library.models.memory import store_in_fp8

    if config.cpu_offload_checkpointing and not config.gradient_checkpointing:
        raise ConfigError("cpu_offload_checkpointing keeps gradient checkpointing's block inputs in host memory, "
                          "so it needs gradient_checkpointing = true. Turn that on, or this off.")
    fp8_parts = []
    if config.fp8_base or config.fp8_base_unet:
        fp8_parts.append("unet")
    if config.fp8_base and not trains_text_encoder:
        fp8_parts += list(model.text_encoders)
    for name in fp8_parts:
        if name in float32_components or _is_text_component(name, float32_components):
            raise ConfigError(f"fp8_base stores frozen weights in fp8, but this run trains the {name} itself. "
                              "Turn fp8_base off for a full fine-tune.")
        saved = store_in_fp8(model.parts[name])
        logger.info("fp8_base: %s weights stored in float8_e4m3fn (%.0f MiB saved)", name, saved / 2**20)
    if not config.blocks_to_swap:
        return []
    blocks = model.adapter.swappable_blocks(model.unet) or []
    swapped = model.adapter.blocks_to_swap(model.unet, config.blocks_to_swap)
    if device.type == "meta":  # the estimate counts the swapped blocks as host memory
        model.extras["swapped_blocks"] = (swapped, blocks)
    else:
        logger.info("blocks_to_swap = %d: %d of %d blocks live in host memory", config.blocks_to_swap,
                    len(swapped), len(blocks))
    return swapped


def _is_text_component(name: str, components: tuple[str, ...]) -> bool:
    """Targets name the text encoders together as "text_encoder"; that covers every text part."""
    return "text_encoder" in components and name.startswith("text_encoder")


def resolve_seed(seed: int | None) -> int:
    return seed if seed is not None else random.randint(0, 2**31 - 1)


def shard_plan(plan: list, rank: int, world: int) -> list[tuple[int, object]]:
    """This process's share of an epoch's batches as (global index, batch).

    The plan is padded by cycling from its start so every process gets the same number of batches
    (DDP needs equal step counts); ``TrainDataset.steps_per_epoch`` counts the same way.
    """
    if world == 1:
        return list(enumerate(plan))
    per_rank = math.ceil(len(plan) / world)
    padded = list(itertools.islice(itertools.cycle(plan), per_rank * world))
    return [(i, padded[i]) for i in range(rank, per_rank * world, world)]


def step_seed(seed: int, epoch: int, batch_index: int) -> int:
    """A distinct, reproducible seed for the random draws of each batch (makes resume exact)."""
    return (seed * 1_000_003 + epoch * 100_003 + batch_index * 101) % (2**63 - 1)
