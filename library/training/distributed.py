"""DeepSpeed and FSDP through accelerate: the DeepSpeed plugin built from sd-scripts' options, the process
group on machines without a GPU, and the full weights of engines that split them across processes.

DDP needs nothing here. FSDP is configured by accelerate (``accelerate launch --config_file fsdp.yaml``);
DeepSpeed by our options (``deepspeed``, ``zero_stage``, ``offload_*``), as sd-scripts'
``deepspeed_utils.prepare_deepspeed_plugin`` builds it, or by an accelerate DeepSpeed config.
"""

from __future__ import annotations

import logging
import os

import torch
from accelerate.utils import DistributedType, InitProcessGroupKwargs

from library.config.options_distributed import offload_device

logger = logging.getLogger(__name__)

#: DeepSpeed's asynchronous I/O settings for NVMe offload (sd-scripts' values).
NVME_AIO = {
    "single_submit": False,
    "overlap_events": True,
    "thread_count": 1,
    "queue_depth": 128,
    "block_size": 8388608,
}


def deepspeed_plugin(config, world_size: int | None = None):
    """accelerate's ``DeepSpeedPlugin`` for ``config`` (None without ``deepspeed = true``).

    As sd-scripts: ZeRO stage, gradient accumulation and clipping (``max_grad_norm``), offload devices and
    paths, ZeRO-3 flags; ``train_micro_batch_size_per_gpu`` = ``train_batch_size``, ``train_batch_size`` =
    batch × accumulation × ``world_size`` (default: ``WORLD_SIZE``); fp16 starts at loss scale 2**0;
    ``fp16_master_weights_and_gradients`` with ZeRO-Offload. The optimizer stays ours (from the registry);
    with an offloaded optimizer DeepSpeed is told to accept it (``zero_force_ds_cpu_optimizer = False``).
    """
    if not config.deepspeed:
        return None
    from accelerate import DeepSpeedPlugin

    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    optimizer_device = offload_device(config.offload_optimizer_device)
    param_device = offload_device(config.offload_param_device)
    plugin = DeepSpeedPlugin(
        zero_stage=config.zero_stage,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        gradient_clipping=config.max_grad_norm or 0.0,  # 0: no "gradient_clipping" key
        offload_optimizer_device=optimizer_device or "none",
        offload_optimizer_nvme_path=config.offload_optimizer_nvme_path or "none",
        offload_param_device=param_device or "none",
        offload_param_nvme_path=config.offload_param_nvme_path or "none",
        zero3_init_flag=config.zero3_init_flag,
        zero3_save_16bit_model=config.zero3_save_16bit_model,
    )
    ds = plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = config.train_batch_size
    ds["train_batch_size"] = config.train_batch_size * config.gradient_accumulation_steps * world_size
    plugin.set_mixed_precision(config.mixed_precision)
    if config.mixed_precision == "fp16":
        ds["fp16"]["initial_scale_power"] = 0  # sd-scripts: a large first scale overflows at once
        if config.fp16_master_weights_and_gradients or config.full_fp16:
            ds["fp16"]["fp16_master_weights_and_grads"] = optimizer_device == "cpu" and config.zero_stage == 2
    if "nvme" in (optimizer_device, param_device):
        ds["aio"] = dict(NVME_AIO)
    if optimizer_device:
        ds["zero_optimization"]["offload_optimizer"]["pin_memory"] = True
        ds["zero_force_ds_cpu_optimizer"] = False  # our optimizer runs on the offloaded fp32 master weights
    if param_device:
        ds["zero_optimization"]["offload_param"]["pin_memory"] = True
    return plugin


def process_group_kwargs(config) -> list:
    """DeepSpeed needs a process group, also for one process.

    Started without a launcher (``python train_db.py``, or ``accelerate launch`` with one process), the
    environment of a one-process group is set here, as DeepSpeed's own launcher would (DeepSpeed would
    otherwise look for MPI). On a machine without a GPU the processes talk over gloo: accelerate picks gloo
    only in its plain CPU mode, which refuses DeepSpeed; naming the backend lets DeepSpeed run there too,
    with accelerate counting the processes.
    """
    if not uses_deepspeed(config):
        return []
    if "LOCAL_RANK" not in os.environ:
        for name, value in (
            ("RANK", "0"),
            ("LOCAL_RANK", "0"),
            ("WORLD_SIZE", "1"),
            ("LOCAL_WORLD_SIZE", "1"),
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", str(_free_port())),
        ):
            os.environ.setdefault(name, value)
    if torch.cuda.is_available():
        return []
    return [InitProcessGroupKwargs(backend="gloo")]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def describe_engine(accelerator) -> str:
    """How the trained weights are spread, for the log: "DeepSpeed ZeRO-2 over 2 processes", "FSDP ..."."""
    kind, count = accelerator.distributed_type, accelerator.num_processes
    if kind == DistributedType.DEEPSPEED:
        engine = f"DeepSpeed ZeRO-{accelerator.state.deepspeed_plugin.zero_stage}"
    elif kind == DistributedType.FSDP:
        plugin = accelerator.state.fsdp_plugin
        engine = f"FSDP{'2' if accelerator.is_fsdp2 else ''} ({getattr(plugin.sharding_strategy, 'name', 'sharded')})"
    elif count > 1:
        engine = "data parallel (DDP)"
    else:
        engine = "one process"
    return f"{engine} over {count} process{'es' if count > 1 else ''}"


def uses_deepspeed(config) -> bool:
    """DeepSpeed from our option or from accelerate's own config (``accelerate launch --use_deepspeed``)."""
    return bool(config.deepspeed) or os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def splits_weights(accelerator) -> bool:
    """True when no process holds the whole trained weights between steps (FSDP, DeepSpeed ZeRO-3)."""
    kind = accelerator.distributed_type
    if kind == DistributedType.FSDP:
        return True
    if kind == DistributedType.DEEPSPEED:
        return accelerator.state.deepspeed_plugin.zero_stage == 3
    return False


def gather_full_weights(accelerator) -> dict[str, torch.Tensor] | None:
    """The whole trained weights of the prepared training module, on the CPU of the main process.

    Every process must call it (the engines gather collectively); returns the state dict on the main
    process and None elsewhere, and None everywhere when each process holds the whole weights anyway.
    Keys are those of the unwrapped module (``trainable.<i>.<key>``).
    """
    if not splits_weights(accelerator):
        return None
    model = accelerator._models[0]
    if (
        accelerator.distributed_type == DistributedType.FSDP
        and accelerator.device.type == "cpu"
        and not accelerator.is_fsdp2
    ):
        state = _fsdp_full_state_on_cpu(model)
    else:
        state = accelerator.get_state_dict(model)
    if not accelerator.is_main_process:
        return None
    return {key: value.detach().to("cpu") for key, value in state.items()}


def _fsdp_full_state_on_cpu(model) -> dict[str, torch.Tensor]:
    """FSDP's full state dict on CPU processes: accelerate asks for ``offload_to_cpu``, which crashes torch
    (a segmentation fault) when the shards are on the CPU already; the gathered tensors are on the CPU anyway."""
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    config = FullStateDictConfig(offload_to_cpu=False, rank0_only=True)
    with FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT, config):
        return model.state_dict()


def part_states(full: dict[str, torch.Tensor], parts: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    """Split a gathered ``trainable.<i>.<key>`` state dict into {part name: its state dict} (``parts`` in the
    order the modules were handed to accelerate)."""
    out: dict[str, dict[str, torch.Tensor]] = {name: {} for name in parts}
    for key, value in full.items():
        _, index, rest = key.split(".", 2)
        out[parts[int(index)]][rest] = value
    return out
