"""Memory and time a training config will need, before it runs (``--estimate``, the GUI's Estimate button).

The base model is loaded as for training, then placed on the meta device with the dtypes the run would
use on the training device; the trainer's own target (LoRA network or DreamBooth) is attached and one
training step of the largest batch runs through the trainer's own loss function, traced for peak memory
and FLOPs (:mod:`.tracing`). Optimizer state is measured by stepping the configured optimizer on stand-ins
(:mod:`.optimizer_state`); speed from the FLOPs and the device's measured matmul rate (:mod:`.device`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from library.training.estimate.device import DeviceInfo, matmul_rate, training_device
from library.training.estimate.optimizer_state import measure_optimizer_state
from library.training.estimate.tracing import Trace

GIB = 1024**3
#: share of the matmul rate a diffusion training step reaches (convolutions, norms and element-wise ops run
#: below the matmul peak), per device type. CPU: measured by bench/bench_estimate.py (0.36-0.40 on a wider
#: model); CUDA/MPS: not measurable here, a deliberately cautious figure (small batches leave GPUs idle).
UTILIZATION = {"cpu": 0.38, "cuda": 0.25, "mps": 0.25}
#: seconds each dispatched operator costs beyond its FLOPs (Python, dispatch, kernel launch), per device
#: type. CPU: bench/bench_estimate.py on the tiny model, where this cost is all there is (18 µs);
#: CUDA/MPS: launch-bound figures, not measured here.
OP_SECONDS = {"cpu": 18e-6, "cuda": 10e-6, "mps": 20e-6}
#: a caption of 75 tokens: the longest one window holds (matters only with no_token_padding)
LONG_CAPTION = " ".join(["photo"] * 75)


@dataclass
class MemoryLine:
    label: str
    bytes: int
    detail: str = ""


@dataclass
class RunEstimate:
    """What :func:`estimate_run` found; :meth:`report` is the text the CLI prints and the GUI shows."""

    trainer: str
    device: DeviceInfo
    dtype: torch.dtype
    resident: list[MemoryLine]
    step: list[MemoryLine]
    #: transient peak of VAE encoding (latent caching or uncached batches); not at the same time as a step
    vae_encoding: MemoryLine
    total_steps: int
    flops_per_step: int
    ops_per_step: int
    #: the part of ``flops_per_step`` spent in attention (fused kernels, counted by formula)
    attention_flops_per_step: int = 0
    matmul_rate: float | None = None
    advice: list[str] = field(default_factory=list)
    #: the entry script named in the report's first line (default: the trainer's generic one)
    script: str | None = None

    @property
    def peak_bytes(self) -> int:
        resident = sum(line.bytes for line in self.resident)
        return resident + max(sum(line.bytes for line in self.step), self.vae_encoding.bytes)

    @property
    def seconds_per_step(self) -> float | None:
        if not self.matmul_rate:
            return None
        kind = self.device.type if self.device.type in UTILIZATION else "cuda"
        return self.flops_per_step / (self.matmul_rate * UTILIZATION[kind]) + self.ops_per_step * OP_SECONDS[kind]

    @property
    def fits(self) -> bool | None:
        return None if self.device.free_bytes is None else self.peak_bytes <= self.device.free_bytes

    def report(self) -> str:
        rows = [("memory", "", "")]
        rows += [(line.label, format_bytes(line.bytes), line.detail) for line in self.resident]
        rows += [(line.label, format_bytes(line.bytes), line.detail) for line in self.step]
        rows.append((self.vae_encoding.label, format_bytes(self.vae_encoding.bytes), self.vae_encoding.detail))
        rows.append(("peak", format_bytes(self.peak_bytes), self._verdict()))
        width = max(len(r[0]) for r in rows)
        script = self.script or ("train_network.py" if self.trainer == "network" else "train_db.py")
        head = (f"Estimate for {script} on "
                f"{self.device.type} ({self.device.name}), weights computed in {str(self.dtype)[6:]}")
        lines = [head] + [f"  {a:<{width}}  {b:>10}  {c}".rstrip() for a, b, c in rows]
        lines.append(f"  time: {self.flops_per_step / 1e12:.3g} TFLOP per optimizer step, "
                     f"{self.total_steps} steps" + self._time_text())
        lines += [f"  - {text}" for text in self.advice]
        lines.append("  (PyTorch's own allocations; the CUDA context adds about 0.3-0.5 GiB outside them)"
                     if self.device.type == "cuda" else "")
        return "\n".join(line for line in lines if line)

    def _verdict(self) -> str:
        free = self.device.free_bytes
        if free is None:
            return ""
        where = "free on the GPU" if self.device.type == "cuda" else "of memory available"
        return f"{'fits' if self.fits else 'does NOT fit'}: {free / GIB:.1f} GiB {where}"

    def _time_text(self) -> str:
        seconds = self.seconds_per_step
        if seconds is None:
            return ""
        return (f", {self.ops_per_step} operators; the device does {self.matmul_rate / 1e12:.3g} TFLOP/s on "
                f"matmuls, so about {seconds:.3g} s per step, {format_duration(seconds * self.total_steps)} in all "
                "(without model loading, latent caching and samples)")


def format_bytes(count: int) -> str:
    if count >= GIB:
        return f"{count / GIB:.2f} GiB"
    return f"{count / 2**20:.1f} MiB"


def format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def largest_batch(dataset) -> tuple[int, tuple[int, int]]:
    """(batch size, (width, height)) of the batch with the most pixels the run will see."""
    best = (0, 0, (0, 0))
    for (index, bucket), count in dataset.bucket_counts().items():
        size = min(count, dataset.specs[index].batch_size)
        pixels = size * bucket[0] * bucket[1]
        if pixels > best[0]:
            best = (pixels, size, tuple(bucket))
    return best[1], best[2]


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _unique(params) -> list[torch.Tensor]:
    return list({id(p): p for p in params}.values())


def estimate_run(config, target, device: DeviceInfo | None = None, measure_speed: bool = True,
                 model=None) -> RunEstimate:
    """Estimate ``config`` trained by ``target`` on ``device`` (default: the device a run would use).

    The model is loaded (weights read from disk as for training), then moved to the meta device; the
    dataset is scanned for the run length and the largest batch. Nothing is trained or written. ``model``
    (e.g. :func:`library.training.estimate.shapes.flux_dev_shapes`) replaces the load: a full-size model
    of meta tensors, to estimate configs whose weights are not at hand.
    """
    from library.training.data_setup import build_dataset
    from library.training.setup import (
        compute_dtype,
        load_model,
        place_model,
        resolve_seed,
        run_length,
        with_family_defaults,
    )

    if model is None:
        config = with_family_defaults(config)
    config = config.replace(seed=resolve_seed(config.seed))  # initial weights need a seed
    device = device or training_device()
    dataset = build_dataset(config)
    steps_per_epoch = dataset.steps_per_epoch(1, config.gradient_accumulation_steps)
    length = run_length(config.max_train_steps, config.max_train_epochs, steps_per_epoch)
    batch_size, (width, height) = largest_batch(dataset)
    if model is None:
        model = load_model(config)
    else:
        from library.models.family import check_family_options

        check_family_options(config, model.adapter)
        model.adapter.configure(model, config)
    target.on_model_loaded(model, config)
    dtype = compute_dtype(config.mixed_precision, device.type)
    place_model(model, torch.device("meta"), config, target.trains_text_encoder, target.float32_components, dtype)
    target.attach(model, config)
    trained = _unique(p for group in target.param_groups(config) for p in group["params"] if p.requires_grad)
    trained_ids = {id(p) for p in trained}
    resident = _resident_lines(model, trained, trained_ids, config)

    optimizer_name = _optimizer_name(config)
    state = measure_optimizer_state(trained, optimizer_name, config.optimizer_args, config.learning_rate)
    resident.append(MemoryLine(f"optimizer state ({optimizer_name})", state.bytes, state.basis))

    step, step_trace = _trace_step(model, target, config, trained, dtype, batch_size, width, height)
    cached = config.cache_latents or config.cache_latents_to_disk
    vae_batch = (config.vae_batch_size or 1) if cached else batch_size
    vae_trace = _trace_vae(model, vae_batch, width, height)
    vae_line = MemoryLine("VAE encoding (transient, between steps)", vae_trace.peak_bytes,
                          f"{'latent caching' if cached else 'every step'}, {vae_batch} x {width}x{height}")
    accumulation = config.gradient_accumulation_steps
    per_step = [step_trace] if cached else [step_trace, vae_trace]
    flops = sum(t.flops for t in per_step) * accumulation
    ops = sum(t.ops for t in per_step) * accumulation
    attention = sum(t.attention_flops for t in per_step) * accumulation
    here = measure_speed and device.type == training_device().type  # a rate is measured on this machine only
    rate = matmul_rate(device.type, dtype) if here else None
    estimate = RunEstimate(config.trainer, device, dtype, resident, step, vae_line, length.total_steps, flops, ops,
                           attention, rate)
    estimate.advice = _advice(estimate, config, optimizer_name)
    return estimate


def _optimizer_name(config) -> str:
    from library.training.optimizers import resolve_optimizer_name

    return resolve_optimizer_name(config.optimizer_type, config.use_8bit_adam, config.use_lion_optimizer)


def _resident_lines(model, trained: list, trained_ids: set, config) -> list[MemoryLine]:
    lines = []
    labels = {"unet": "UNet", "vae": "VAE", "text_encoder": "text encoder", "text_encoder_1": "text encoder 1",
              "text_encoder_2": "text encoder 2"}
    swapped, blocks = model.extras.get("swapped_blocks") or ((), ())
    host_ids = {id(p) for block in swapped for p in block.parameters()}
    cached_text = config.cache_text_encoder_outputs or config.cache_text_encoder_outputs_to_disk
    for name in ("unet", *([] if cached_text else model.text_parts), "vae"):
        module, label = model.parts[name], labels.get(name, name)
        frozen = [t for t in [*module.parameters(), *module.buffers()]
                  if id(t) not in trained_ids and id(t) not in host_ids]
        if any(isinstance(t, torch.nn.Parameter) for t in frozen):  # not only buffers (position ids)
            dtypes = sorted({str(t.dtype)[6:] for t in frozen})
            lines.append(MemoryLine(f"{label} weights (frozen)", _bytes(frozen),
                                    f"{sum(t.numel() for t in frozen) / 1e6:.1f}M values, {'/'.join(dtypes)}"))
    if swapped:
        largest = max(_bytes(p for p in b.parameters() if id(p) not in trained_ids) for b in swapped)
        on_host = _bytes(p for b in swapped for p in b.parameters() if id(p) not in trained_ids)
        lines.append(MemoryLine("swapped blocks in flight (blocks_to_swap)", 2 * largest,
                                f"{len(swapped)} of {len(blocks)} blocks ({format_bytes(on_host)}) live in host "
                                "memory; the running block and the next one's copy are on the device"))
    what = "network (trained)" if config.trainer == "network" else "trained weights"
    dtypes = "/".join(sorted({str(p.dtype)[6:] for p in trained}))
    lines.append(MemoryLine(what, _bytes(trained),
                            f"{sum(p.numel() for p in trained) / 1e6:.2f}M parameters, {dtypes}"))
    lines.append(MemoryLine("gradients", _bytes(trained), "one per trained parameter, same dtype"))
    if config.ema_decay:
        lines.append(MemoryLine("moving average (ema_decay)", _bytes(trained), "a copy of the trained weights"))
    return lines


class _MetaNoiseScheduler:
    """The noise schedule for a meta-device step: diffusers' ``add_noise`` would move the schedule's own
    ``alphas_cumprod`` to the samples' device (meta), where the SNR weighting can no longer read it."""

    def __init__(self, scheduler):
        self.config = scheduler.config
        self.alphas_cumprod = getattr(scheduler, "alphas_cumprod", None)  # flow schedulers have none

    @staticmethod
    def add_noise(samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return samples * 1.0 + noise * 1.0  # same shapes and allocations as sqrt(ᾱ)·x + sqrt(1-ᾱ)·ε

    @staticmethod
    def get_velocity(samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return noise * 1.0 - samples * 1.0


class _FixedText:
    """Stands in for the text-encoder output cache in a traced step: the batch's conditioning, encoded once."""

    def __init__(self, cond):
        self.cond = cond

    def lookup(self, captions):
        return self.cond


def _trace_step(model, target, config, trained: list, dtype: torch.dtype, batch_size: int, width: int,
                height: int) -> tuple[list[MemoryLine], Trace]:
    """Activations of one step of the largest batch, through the trainer's own loss; and its FLOPs."""
    from library.training.step import StepSettings, diffusion_loss

    autocast = dtype != torch.float32 and any(p.dtype == torch.float32 for p in trained)
    if autocast:  # mixed precision runs the trained layers in half precision too (autocast); so does the trace
        for module in target.modules():
            module.to(dtype=dtype)
    meta = torch.device("meta")
    channels = model.vae.config.latent_channels
    batch = {"latents": torch.empty(batch_size, channels, height // 8, width // 8, device=meta),
             "captions": [LONG_CAPTION] * batch_size, "loss_weights": torch.ones(batch_size),
             "original_sizes_hw": [(height, width)] * batch_size, "crop_top_lefts": [(0, 0)] * batch_size,
             "target_sizes_hw": [(height, width)] * batch_size}
    settings = StepSettings.from_config(config, model)
    real_scheduler = model.noise_scheduler
    model.noise_scheduler = _MetaNoiseScheduler(real_scheduler)
    if config.cache_text_encoder_outputs or config.cache_text_encoder_outputs_to_disk:
        with torch.no_grad():  # the step reads cached outputs: encoding is not part of it
            cond = model.encode_prompt(batch["captions"], config.clip_skip, config.max_token_length)
        model.extras["text_cache"] = _FixedText(cond)
    try:
        with Trace() as trace:
            loss = diffusion_loss(model, batch, settings, torch.Generator().manual_seed(0),
                                  target.trains_text_encoder)
            loss.backward()
    finally:
        model.noise_scheduler = real_scheduler
        model.extras.pop("text_cache", None)
    grads = _bytes(p.grad for m in target.modules() for p in m.parameters() if p.grad is not None)
    checkpointing = "on" if config.gradient_checkpointing else "off"
    lines = [MemoryLine("activations (peak of one step)", max(0, trace.peak_bytes - grads),
                        f"batch {batch_size} at {width}x{height}, gradient checkpointing {checkpointing}")]
    if autocast:
        half = sum(p.numel() for p in trained) * torch.empty(0, dtype=dtype).element_size()
        lines.append(MemoryLine("half-precision copies of the trained weights", half,
                                "autocast keeps them for the step"))
    return lines, trace


def _trace_vae(model, batch_size: int, width: int, height: int) -> Trace:
    pixels = torch.empty(batch_size, 3, height, width, device=torch.device("meta"))
    with Trace() as trace, torch.no_grad():
        model.encode_images(pixels)
    return trace


def _advice(estimate: RunEstimate, config, optimizer_name: str) -> list[str]:
    """What would lower the peak most, when the run does not fit."""
    if estimate.fits is not False:
        return []
    advice = []
    activations = estimate.step[0].bytes
    state = estimate.resident[-1].bytes
    if activations > estimate.peak_bytes / 4:
        if not config.gradient_checkpointing:
            advice.append("activations are the largest part: gradient_checkpointing = true cuts them the most")
        advice.append("a smaller train_batch_size or resolution shrinks activations in proportion")
    if state > estimate.peak_bytes / 5 and "8bit" not in optimizer_name.lower():
        advice.append("an 8-bit optimizer (AdamW8bit) keeps a quarter of AdamW's state")
    if estimate.dtype == torch.float32 and estimate.device.type == "cuda":
        advice.append("mixed_precision = \"fp16\" or \"bf16\" halves the frozen weights and the activations")
    if config.trainer == "db" and not (config.full_fp16 or config.full_bf16):
        advice.append("full_bf16 (or full_fp16) stores the trained UNet, its gradients and state in half precision")
    return advice

