"""The shared training loop: dataset -> model -> target -> optimizer -> steps -> saved files.

accelerate drives devices, mixed precision, gradient accumulation and distribution; the loop itself is
the same on a CPU, one GPU or many.
"""

from __future__ import annotations

import logging
import math
import random
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed

from library.errors import UserError
from library.training import outputs
from library.training.data_setup import build_dataset
from library.training.metadata import RunFacts, minimal, training_metadata
from library.training.optimizers import build_optimizer, resolve_optimizer_name
from library.training.prefetch import prefetch
from library.training.progress import Progress, RunningLoss
from library.training.sampling.runner import SampleRunner
from library.training.schedulers import build_scheduler, resolve_steps
from library.training.step import StepSettings, diffusion_loss

logger = logging.getLogger(__name__)


#: ss_base_model_version values of sd-scripts per model family.
BASE_MODEL_VERSIONS = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}


class TrainingError(UserError):
    """The run cannot go on (NaN loss, ...); nothing broken has been saved."""


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


def make_accelerator(config) -> Accelerator:
    log_with = None
    project = None
    if config.logging_dir:
        log_with = "tensorboard"
        run_name = f"{config.log_prefix or ''}{time.strftime('%Y%m%d%H%M%S')}"
        project = ProjectConfiguration(project_dir=str(Path(config.logging_dir) / run_name),
                                       logging_dir=str(Path(config.logging_dir) / run_name))
    return Accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with=log_with,
        project_config=project,
    )


def load_model(config):
    from library.models.loading import load_base_model

    return load_base_model(
        config.pretrained_model_name_or_path,
        v2=config.v2 if "v2" in config.explicit else None,
        v_parameterization=config.v_parameterization,
        vae=config.vae,
        allow_unsafe_pickle=config.allow_unsafe_pickle,
    )


def _weight_dtype(mixed_precision: str) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


def _place_model(model, accelerator: Accelerator, config, trains_text_encoder: bool) -> None:
    """Frozen weights go to the device in the compute dtype; the VAE stays float32 (fp16 VAEs NaN)."""
    dtype = _weight_dtype(config.mixed_precision) if accelerator.device.type != "cpu" else torch.float32
    for module in (model.unet, model.text_encoder, model.vae):
        module.requires_grad_(False)
    for module in (model.unet, model.text_encoder):
        module.to(accelerator.device) if dtype == torch.float32 else module.to(accelerator.device, dtype=dtype)
    model.vae.to(accelerator.device).eval()
    model.unet.train(config.gradient_checkpointing)
    model.text_encoder.train(trains_text_encoder and config.gradient_checkpointing)
    if config.gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
        if trains_text_encoder:
            enable = getattr(model.text_encoder, "activation_checkpointing_enable", None)
            (enable or model.text_encoder.gradient_checkpointing_enable)()


def _resolve_seed(config) -> int:
    return config.seed if config.seed is not None else random.randint(0, 2**31 - 1)


def run_training(config, target) -> Path | None:
    """Train ``target`` as ``config`` says; returns the final file (None on non-main processes)."""
    accelerator = make_accelerator(config)
    dataset = build_dataset(config)
    steps_per_epoch = dataset.steps_per_epoch(accelerator.num_processes, config.gradient_accumulation_steps)
    length = run_length(config.max_train_steps, config.max_train_epochs, steps_per_epoch)
    if accelerator.is_main_process:
        logger.info("dataset:\n%s", dataset.summary(accelerator.num_processes, config.gradient_accumulation_steps))
        logger.info("training: %d epochs x %d steps per epoch = %d steps", length.num_epochs,
                    steps_per_epoch, length.total_steps)
    seed = _resolve_seed(config)
    config = config.replace(seed=seed)
    set_seed(seed)
    model = load_model(config)
    if config.zero_terminal_snr:
        model.noise_scheduler = type(model.noise_scheduler).from_config(model.noise_scheduler.config,
                                                                        rescale_betas_zero_snr=True)
    _place_model(model, accelerator, config, target.trains_text_encoder)
    if config.cache_latents or config.cache_latents_to_disk:
        from library.data.latent_cache import cache_latents

        with torch.no_grad():
            cache_latents(dataset, lambda px: model.encode_images(px.to(accelerator.device)).cpu(),
                          to_disk=config.cache_latents_to_disk, batch_size=config.vae_batch_size)
    target.attach(model, config)
    optimizer_name = resolve_optimizer_name(config.optimizer_type, config.use_8bit_adam)
    optimizer = build_optimizer(target.param_groups(config), optimizer_name, config.learning_rate,
                                config.optimizer_args)
    scheduler = build_scheduler(
        optimizer, config.lr_scheduler, warmup=config.lr_warmup_steps,
        total_steps=length.total_steps * accelerator.num_processes,
        num_cycles=config.lr_scheduler_num_cycles, power=config.lr_scheduler_power,
    )
    prepared = accelerator.prepare(*target.modules(), optimizer, scheduler)
    n = len(target.modules())
    target.set_modules(list(prepared[:n]))
    optimizer, scheduler = prepared[n], prepared[n + 1]
    facts = RunFacts(
        session_id=uuid.uuid4().hex, started_at=time.time(), seed=seed, optimizer=optimizer_name,
        num_train_images=dataset.num_train_images, num_reg_images=dataset.num_reg_images,
        num_batches_per_epoch=steps_per_epoch, num_epochs=length.num_epochs,
        max_train_steps=length.total_steps, model_name=model.name,
        base_model_version=BASE_MODEL_VERSIONS.get(model.family, model.family),
        lr_warmup_steps=resolve_steps(config.lr_warmup_steps, length.total_steps),
        tag_frequency=dataset.tag_frequency(), dataset_dirs=dataset.dataset_dirs(),
        reg_dataset_dirs=dataset.reg_dataset_dirs(), bucket_info=dataset.bucket_info(),
    )
    if accelerator.is_main_process and config.logging_dir:
        accelerator.init_trackers("network_train" if config.trainer == "network" else "dreambooth")
    loop = _Loop(config, target, model, dataset, accelerator, optimizer, scheduler, length, seed, facts)
    final = loop.run()
    accelerator.end_training()
    return final


class _Loop:
    """The epoch/step iteration with saving and logging; one instance per run."""

    def __init__(self, config, target, model, dataset, accelerator, optimizer, scheduler, length, seed, facts):
        self.config, self.target, self.model, self.dataset = config, target, model, dataset
        self.accelerator, self.optimizer, self.scheduler = accelerator, optimizer, scheduler
        self.length, self.seed, self.facts = length, seed, facts
        self.global_step = 0
        self.settings = StepSettings.from_config(config, model)
        self.base_meta = training_metadata(config, facts)
        self.sampler = SampleRunner(config, model, accelerator, target, seed)

    def run(self) -> Path | None:
        acc, length = self.accelerator, self.length
        progress = Progress(length.total_steps, self.global_step, acc.is_main_process)
        running = RunningLoss()
        epoch = 0
        if self.sampler.enabled and self.config.sample_at_first:
            self.sampler.run(self.global_step, None)
        for epoch in range(1, length.num_epochs + 1):
            done = self._run_epoch(epoch, progress, running)
            if acc.is_main_process and self.config.logging_dir:
                acc.log({"loss/epoch_average": running.mean}, step=epoch)
            if not done and self._due(self.config.save_every_n_epochs, epoch) and epoch < length.num_epochs:
                self._save_epoch(epoch)
            if self.sampler.due_at_epoch(epoch) or (done and self.sampler.due_at_step(self.global_step)):
                self.sampler.run(self.global_step, epoch if self.sampler.due_at_epoch(epoch) else None)
            if done:
                break
        progress.close()
        acc.wait_for_everyone()
        if not acc.is_main_process:
            return None
        path = outputs.final_file(self.config.output_dir, self.config.output_name, self.target.file_ext)
        self._save(path, epoch)
        logger.info("saved %s", path)
        return path

    def _run_epoch(self, epoch: int, progress: Progress, running: RunningLoss) -> bool:
        """Train one epoch; True when the last step of the run was reached."""
        acc = self.accelerator
        plan = self.dataset.epoch_batches(epoch, self.seed)
        plan = plan[acc.process_index::acc.num_processes]
        loader = prefetch(
            (lambda i=i, b=b: self.dataset.load_batch(b, epoch=epoch, seed=self.seed, step=i))
            for i, b in enumerate(plan)
        )
        for batch_index, batch in enumerate(loader):
            with acc.accumulate(*self.target.modules()):
                generator = torch.Generator().manual_seed(_step_seed(self.seed, epoch, batch_index, acc.process_index))
                with acc.autocast():
                    loss = diffusion_loss(self.model, batch, self.settings, generator,
                                          self.target.trains_text_encoder)
                acc.backward(loss)
                if acc.sync_gradients and self.config.max_grad_norm:
                    params = [p for m in self.target.modules() for p in m.parameters() if p.requires_grad]
                    acc.clip_grad_norm_(params, self.config.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
            if not acc.sync_gradients:
                continue
            self.global_step += 1
            self.target.on_step_end(self.global_step)
            self._after_step(epoch, loss, progress, running)
            if self.global_step >= self.length.total_steps:
                return True
        return False

    def _after_step(self, epoch: int, loss: torch.Tensor, progress: Progress, running: RunningLoss) -> None:
        value = loss.detach().item()
        if not math.isfinite(value):
            raise TrainingError(
                f"the loss became {value} at step {self.global_step} (epoch {epoch}); training stopped and "
                f"nothing more was saved. Lower the learning rate (now {self.config.learning_rate}), or use "
                f"mixed_precision = \"bf16\" / \"no\" instead of fp16."
            )
        avg = running.add(value)
        lrs = self.scheduler.get_last_lr()
        progress.update(epoch, self.length.num_epochs, value, avg, lrs[-1])
        if self.accelerator.is_main_process and self.config.logging_dir:
            logs = {"loss/current": value, "loss/average": avg}
            logs.update(lr_logs(self.optimizer, lrs))
            self.accelerator.log(logs, step=self.global_step)
        every = self.config.save_every_n_steps
        if every and self.global_step % every == 0 and self.global_step < self.length.total_steps:
            self._save_step(epoch)
        if self.sampler.due_at_step(self.global_step) and self.global_step < self.length.total_steps:
            self.sampler.run(self.global_step, None)

    @staticmethod
    def _due(every: int | None, epoch: int) -> bool:
        return bool(every) and epoch % every == 0

    def _save_epoch(self, epoch: int) -> None:
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            cfg, ext = self.config, self.target.file_ext
            self._save(outputs.epoch_file(cfg.output_dir, cfg.output_name, epoch, ext), epoch)
            outputs.prune_epoch_saves(cfg.output_dir, cfg.output_name, ext, epoch, cfg.save_every_n_epochs,
                                      cfg.save_last_n_epochs)

    def _save_step(self, epoch: int) -> None:
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            cfg, ext = self.config, self.target.file_ext
            self._save(outputs.step_file(cfg.output_dir, cfg.output_name, self.global_step, ext), epoch)
            outputs.prune_step_saves(cfg.output_dir, cfg.output_name, ext, self.global_step,
                                     cfg.save_every_n_steps, cfg.save_last_n_steps)

    def _save(self, path: Path, epoch: int) -> None:
        meta = {**self.base_meta, **self.target.metadata(self.config)}
        meta.update(ss_epoch=str(epoch), ss_steps=str(self.global_step), ss_training_finished_at=str(time.time()))
        if self.config.no_metadata:
            meta = minimal(meta)
        self.target.save(path, self.config.save_precision, meta, self.config)


#: TensorBoard names of sd-scripts for the usual param groups.
LR_LOG_NAMES = {"text_encoder": "lr/textencoder", "unet": "lr/unet"}


def lr_logs(optimizer, lrs: list[float]) -> dict[str, float]:
    names = [g.get("name", f"group{i}") for i, g in enumerate(optimizer.param_groups)]
    return {LR_LOG_NAMES.get(n, f"lr/{n}"): lr for n, lr in zip(names, lrs)}


def _step_seed(seed: int, epoch: int, batch_index: int, rank: int) -> int:
    """A distinct, reproducible seed for the noise of each batch (makes resume exact)."""
    return (seed * 1_000_003 + epoch * 100_003 + batch_index * 101 + rank) % (2**63 - 1)
