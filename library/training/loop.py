"""The shared training loop: dataset -> model -> target -> optimizer -> steps -> saved files.

accelerate drives devices, mixed precision, gradient accumulation and distribution (the trainable modules
are wrapped in one ``TrainStep`` module, so DDP sees the forward that computes the loss); the loop itself
is the same on a CPU, one GPU or many processes.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import signal
import threading
import time
import uuid
from pathlib import Path

import torch
from accelerate.utils import set_seed

from library.errors import UserError
from library.training import optimizers as optim_lib
from library.training import state
from library.training.checkpointing import Saver, remove_leftovers
from library.training.data_setup import build_datasets
from library.training.metadata import RunFacts, training_metadata
from library.training.parking import ParkedParts, parking_folder
from library.training.progress import EventLog, Progress, RunningLoss
from library.training.sampling.runner import SampleRunner
from library.training.schedulers import build_scheduler, resolve_steps, scheduler_options
from library.training.setup import (
    load_model,
    make_accelerator,
    place_model,
    resolve_seed,
    run_length,
    shard_plan,
    step_seed,
    with_family_defaults,
)
from library.training.step import StepSettings, diffusion_loss
from library.training.validation import Validator
from library.util.host_memory import give_back_free_memory, keep_freed_memory
from library.util.prefetch import prefetch

logger = logging.getLogger(__name__)

#: TensorBoard names of sd-scripts for the usual param groups.
LR_LOG_NAMES = {"text_encoder": "lr/textencoder", "text_encoder_1": "lr/textencoder1",
                "text_encoder_2": "lr/textencoder2", "unet": "lr/unet"}


class TrainingError(UserError):
    """The run cannot go on (NaN loss, ranks out of step, ...); nothing broken has been saved."""


class TrainStep(torch.nn.Module):
    """The trainable modules plus the loss computation, as one module for accelerate/DDP."""

    def __init__(self, modules: list[torch.nn.Module], compute):
        super().__init__()
        self.trainable = torch.nn.ModuleList(modules)
        self._compute = compute

    def forward(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        return self._compute(batch, generator)


class StopRequest:
    """Ctrl-C / SIGTERM (the GUI's Stop) ends the run after the current step, with the weights saved.

    A second Ctrl-C interrupts at once, except during a save: a save (the final one included) is always
    finished. With several processes the ranks agree on the step to stop at.
    """

    def __init__(self):
        self.requested = False
        self._previous: dict = {}
        self._saving = False

    def _handle(self, signum, frame) -> None:
        if self._saving:
            self.requested = True
            logger.warning("stop requested during a save: finishing the save first")
            return
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("stop requested: finishing the current step, then saving")

    @contextlib.contextmanager
    def during_save(self):
        """A signal while this is open only marks the stop; it never interrupts the save."""
        saving, self._saving = self._saving, True
        try:
            yield
        finally:
            self._saving = saving

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def agreed(self, accelerator) -> bool:
        if accelerator.num_processes == 1:
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0], device=accelerator.device)
        self.requested = bool(accelerator.reduce(flag, reduction="sum").item() > 0)
        return self.requested


class WeightCheck:
    """Whether the trained weights are still finite after an optimizer step: one fused norm per device and
    dtype (``torch._foreach_norm``: NaN and inf survive it), read with the step's loss. A norm that overflows
    (weights beyond ~1e19) is told apart by :meth:`broken`, the per-tensor check that runs only then."""

    def __init__(self, module: torch.nn.Module):
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        self.names = [re.sub(r"^(module\.)?(trainable\.\d+\.)?", "", n) for n, _ in named]
        self.params = [p for _, p in named]
        groups: dict[tuple, list[torch.Tensor]] = {}
        for p in self.params:
            groups.setdefault((p.device, p.dtype), []).append(p)
        self._groups = list(groups.values())

    def finite(self) -> torch.Tensor:
        """A 0-d bool tensor on the first group's device (no sync: read it with ``.item()``)."""
        # the 2-norm: on CPU twice as fast as the max-abs (ord=inf), on a GPU both are one fused kernel
        flags = [torch.stack(torch._foreach_norm([p.detach() for p in group], 2, dtype=torch.float32))
                 .isfinite().all() for group in self._groups]
        if not flags:
            return torch.tensor(True)
        return torch.stack([f.to(flags[0].device) for f in flags]).all()

    def broken(self) -> list[str]:
        """The names of the tensors holding NaN or inf (the slow path, once the check failed)."""
        return [n for n, p in zip(self.names, self.params, strict=True) if not bool(torch.isfinite(p.detach()).all())]


def lr_logs(optimizer, lrs: list[float]) -> dict[str, float]:
    names = [g.get("name", f"group{i}") for i, g in enumerate(optimizer.param_groups)]
    logs = {LR_LOG_NAMES.get(n, f"lr/{n}"): lr for n, lr in zip(names, lrs, strict=False)}
    effective = getattr(optim_lib, "effective_lrs", None)
    if effective is not None:
        values = effective(optimizer)
        if values is not None:  # D-Adaptation / Prodigy: the lr that is really applied, d·lr
            logs.update({f"lr/d*{LR_LOG_NAMES.get(n, n).split('/')[-1]}": v for n, v in zip(names, values, strict=False)})
    return logs


def _optimizer_mode(optimizer, train: bool) -> None:
    """Schedule-free optimizers must switch weights between train and eval (no-op for the others)."""
    switch = getattr(optim_lib, "optimizer_train_mode" if train else "optimizer_eval_mode", None)
    if switch is not None:
        switch(optimizer)


def run_training(config, target) -> Path | None:
    """Train ``target`` as ``config`` says; returns the final file (None on non-main processes)."""
    accelerator = make_accelerator(config, getattr(target, "ddp_find_unused_parameters", False))
    if not accelerator.is_main_process:
        logging.getLogger("library").setLevel(logging.WARNING)  # one copy of the run's messages
    else:
        remove_leftovers(config.output_dir, config.output_name)  # of saves killed in an earlier run
    seed = resolve_seed(state.seed_for_resume(config.seed, config.resume, config.resume_inexact)
                        if config.resume else config.seed)  # a resumed run keeps the seed its state records
    config = with_family_defaults(config).replace(seed=seed)
    dataset, validation_set = build_datasets(config)
    steps_per_epoch = dataset.steps_per_epoch(accelerator.num_processes, config.gradient_accumulation_steps)
    length = run_length(config.max_train_steps, config.max_train_epochs, steps_per_epoch)
    if accelerator.is_main_process:
        logger.info("dataset:\n%s", dataset.summary(accelerator.num_processes, config.gradient_accumulation_steps))
        from library.data.summary import dataset_caption_lengths  # tokens per caption; long ones are cut

        for line in dataset_caption_lengths(dataset, config.max_token_length).lines():
            (logger.warning if line.startswith("warning") else logger.info)(line.removeprefix("warning: "))
        if validation_set is not None:
            logger.info("validation: %d pictures held out, %d batches", len(validation_set.items),
                        validation_set.num_batches())
        logger.info("training: %d epochs x %d steps per epoch = %d steps", length.num_epochs, steps_per_epoch,
                    length.total_steps)
    set_seed(seed)
    model = load_model(config)
    target.on_model_loaded(model, config)
    place_model(model, accelerator.device, config, target.trains_text_encoder, target.float32_components)
    from library.data.metadata import attach_prepared_latents  # fine-tuning: prepare_buckets_latents' files

    prepared = sum(attach_prepared_latents(data, model) for data in (dataset, validation_set) if data is not None)
    if config.cache_latents or config.cache_latents_to_disk or prepared:
        from library.data.latent_cache import cache_latents

        started, encoded = time.perf_counter(), 0
        with torch.no_grad():
            for data in (dataset, validation_set):
                if data is not None:
                    encoded += cache_latents(data, lambda px: model.encode_images(px.to(accelerator.device)).cpu(),
                                             to_disk=config.cache_latents_to_disk, batch_size=config.vae_batch_size,
                                             suffix=model.adapter.latent_cache_suffix)
        EventLog(accelerator.is_main_process).emit("latents_cached", encoded=encoded,
                                                   seconds=time.perf_counter() - started)
    if config.cache_text_encoder_outputs or config.cache_text_encoder_outputs_to_disk:
        _cache_text(model, config, target, dataset, validation_set)
    parking = ParkedParts(model, parking_folder(config.output_dir, config.output_name)) \
        if accelerator.is_main_process else None  # the main process saves; the others keep no copy on disk
    release_cached_parts(model, config, target, [d for d in (dataset, validation_set) if d is not None], parking)
    give_back_free_memory()  # the freed parts, and what loading and caching freed (the file's fp16 copies)
    keep_freed_memory()  # the steps allocate the same tensors each time: their pages stay for the next one
    target.attach(model, config)
    optimizer_name = optim_lib.resolve_optimizer_name(config.optimizer_type, config.use_8bit_adam,
                                                      config.use_lion_optimizer)
    optimizer = optim_lib.build_optimizer(target.param_groups(config), optimizer_name, config.learning_rate,
                                          config.optimizer_args)
    # the schedule counts optimizer steps; the loop steps it itself once per optimizer step (not through
    # accelerate, which would step it once per process), so counts like lr_warmup_steps mean the same
    # on one GPU or eight
    scheduler = build_scheduler(
        optimizer, config.lr_scheduler, warmup=config.lr_warmup_steps, total_steps=length.total_steps,
        num_cycles=config.lr_scheduler_num_cycles, power=config.lr_scheduler_power, **scheduler_options(config),
    )
    settings = StepSettings.from_config(config, model)

    def compute(batch, generator, step_settings=settings):
        with accelerator.autocast():
            return diffusion_loss(model, batch, step_settings, generator, target.trains_text_encoder)

    train_step, optimizer = accelerator.prepare(TrainStep(target.modules(), compute), optimizer)
    from library.training.fused_backward import fused_backward_wanted

    fused = fused_backward_wanted(config)  # train_db.py options
    if fused:
        from library.training.fused_backward import check_fused_backward, install_fused_backward

        check_fused_backward(config, optimizer_name, accelerator.num_processes)
        install_fused_backward(optim_lib.unwrap_optimizer(optimizer), config.max_grad_norm)
    accelerator.register_for_checkpointing(scheduler)
    target.set_modules(list(accelerator.unwrap_model(train_step).trainable))
    target.on_prepared(accelerator)
    facts = RunFacts(
        session_id=uuid.uuid4().hex, started_at=time.time(), seed=seed, optimizer=optimizer_name,
        num_train_images=dataset.num_train_images, num_reg_images=dataset.num_reg_images,
        num_batches_per_epoch=steps_per_epoch, num_epochs=length.num_epochs,
        max_train_steps=length.total_steps, model_name=model.name,
        base_model_version=model.adapter.base_model_version,
        lr_warmup_steps=resolve_steps(config.lr_warmup_steps, length.total_steps),
        tag_frequency=dataset.tag_frequency(), dataset_dirs=dataset.dataset_dirs(),
        reg_dataset_dirs=dataset.reg_dataset_dirs(), bucket_info=dataset.bucket_info(),
        num_validation_images=len(validation_set.items) if validation_set is not None else 0,
    )
    if config.logging_dir:
        init_trackers(accelerator, config)
    validator = Validator(config, validation_set, settings, model.noise_scheduler.config.num_train_timesteps, seed)
    average = None
    if config.ema_decay:
        from library.training.ema import WeightAverage

        trained = [p for group in optim_lib.unwrap_optimizer(optimizer).param_groups for p in group["params"]]
        average = WeightAverage(trained, config.ema_decay, config.ema_update_every_n_steps)
        accelerator.register_for_checkpointing(average)
    loop = TrainLoop(config, target, model, dataset, accelerator, train_step, optimizer, scheduler, length, facts,
                     validator, compute, average)
    loop.fused_backward = fused
    if config.resume:
        loop.position = state.load_state(accelerator, config.resume, accelerator.unwrap_model(train_step),
                                         allow_unsafe_pickle=config.allow_unsafe_pickle,
                                         inexact=config.resume_inexact)
        target.on_step_end(loop.position.step)  # e.g. a text encoder whose training ended before the state
    if parking is not None and parking.parts:
        loop.saver.parked = parking.restored
    try:
        final = loop.run()
    finally:
        if parking is not None:
            parking.discard()
    accelerator.end_training()
    return final


def _cache_text(model, config, target, dataset, validation_set) -> None:
    from library.training.text_cache import cache_text_encoder_outputs

    if getattr(config, "token_string", None):  # textual inversion / pivotal tuning: the captions' new token
        raise UserError(
            f"cache_text_encoder_outputs needs fixed text-encoder outputs, but this run learns the embedding of "
            f"token_string {config.token_string!r}, which changes them every step: turn the cache off."
        )
    if target.trains_text_encoder:
        raise UserError(
            "cache_text_encoder_outputs needs frozen text encoders, but this run trains them: set "
            "network_train_unet_only = true (LoRA) or train_text_encoder = false (fine-tune), or turn the cache off."
        )
    cache_text_encoder_outputs(model, [dataset, validation_set], clip_skip=config.clip_skip,
                               max_token_length=config.max_token_length,
                               to_disk=config.cache_text_encoder_outputs_to_disk)
    # the step reads the cache: the frozen text encoders leave the GPU (sample prompts encode on the host)
    for encoder in model.text_encoders.values():
        encoder.to("cpu")


def release_cached_parts(model, config, target, datasets, parking: ParkedParts | None = None) -> list[str]:
    """Free the parts a run no longer needs once their outputs are cached: the VAE when every picture's
    latents are, the text encoders when the captions' outputs are (and they are not trained); not when
    samples are rendered. The parts stay in the model on the meta device (their structure, no memory). A
    target whose saved result holds the base model (a fine-tune's checkpoint) has them parked on disk instead,
    in ``parking``, which puts them back around each save (none given: they stay). Returns the parts' names."""
    if config.sample_prompts or (target.saves_base_model and parking is None):
        return []
    freed = []
    if datasets and all(getattr(d, "latents_cached", False) for d in datasets):
        freed.append("vae")
    if model.extras.get("text_cache") is not None and not target.trains_text_encoder:
        freed += list(model.text_parts)
    for name in freed:
        if target.saves_base_model:
            parking.park(name)
        else:
            model.parts[name].to("meta")
    if freed and not target.saves_base_model:
        logger.info("freed %s: their outputs are cached and this run needs them no more", ", ".join(freed))
    return freed


def init_trackers(accelerator, config) -> None:
    """TensorBoard and/or Weights & Biases (imported only when chosen) under the run's name."""
    name = config.log_tracker_name or ("network_train" if config.trainer == "network" else "dreambooth")
    init_kwargs = {}
    if config.log_with in ("wandb", "all"):
        try:
            import wandb
        except ImportError:
            raise UserError("log_with = \"wandb\" needs the wandb package: pip install wandb") from None
        if config.wandb_api_key:
            wandb.login(key=config.wandb_api_key)
        init_kwargs["wandb"] = {"name": config.wandb_run_name} if config.wandb_run_name else {}
    accelerator.init_trackers(name, config={"output_name": config.output_name}, init_kwargs=init_kwargs)


class TrainLoop:
    """The epoch/step iteration with saving, sampling and logging; one instance per run."""

    def __init__(self, config, target, model, dataset, accelerator, train_step, optimizer, scheduler, length,
                 facts, validator: Validator | None = None, compute=None, average=None):
        self.config, self.target, self.model, self.dataset = config, target, model, dataset
        self.accelerator, self.train_step = accelerator, train_step
        self.optimizer, self.scheduler, self.length, self.seed = optimizer, scheduler, length, config.seed
        self.position = state.TrainPosition(epoch=1, step=0, batches_in_epoch=0)
        self.events = EventLog(accelerator.is_main_process)
        self.saver = Saver(config, target, accelerator, training_metadata(config, facts), self.events)
        self.stop = StopRequest()
        self.weights = WeightCheck(train_step)
        self.sampler = SampleRunner(config, model, accelerator, target, config.seed)
        self.running = RunningLoss()
        self.validator, self._compute = validator, compute
        self._last_validation: tuple[int, float] | None = None
        #: the moving average of the weights (ema_decay), or None
        self.average = average
        #: fused_backward_pass: backward steps each weight itself
        self.fused_backward = False
        if average is not None:
            self.saver.file_weights = average.in_place

    def run(self) -> Path | None:
        acc, length = self.accelerator, self.length
        progress = Progress(length.total_steps, self.position.step, length.num_epochs, self.events,
                            acc.is_main_process)
        if self.sampler.enabled and self.config.sample_at_first and self.position.step == 0:
            self._sample(None)
        self.stop.install()
        try:
            epoch = self._run_epochs(progress)
            progress.close()
            self._check_ranks_agree()
            if self.stop.requested:
                logger.warning("stopped at step %d of %d: saving the weights as they are", self.position.step,
                               length.total_steps)
                self.events.emit("stopped", step=self.position.step)
            # a stop that arrives now (the GUI's Stop at the very end) lets this save finish
            final = self._save(lambda: self.saver.save_final(epoch, self.position, stopped=self.stop.requested))
        finally:
            self.stop.uninstall()
        peak = torch.cuda.max_memory_allocated() if acc.device.type == "cuda" else None  # for bench/run.py
        self.events.emit("done", path=str(final), step=self.position.step, cuda_peak_bytes=peak)
        return final if acc.is_main_process else None

    def _run_epochs(self, progress: Progress) -> int:
        """The epochs from the current position to the end of the run (or a stop); returns the last epoch."""
        acc, length = self.accelerator, self.length
        epoch = self.position.epoch
        for epoch in range(self.position.epoch, length.num_epochs + 1):
            done = self._run_epoch(epoch, progress)
            if self.stop.requested:
                break
            if acc.is_main_process and self.config.logging_dir:
                acc.log({"loss/epoch_average": self.running.mean}, step=epoch)
            if self.validator is not None and self.validator.due_at_epoch(epoch):
                self._validate("epoch", epoch)
            if done:
                if self.sampler.due_at_epoch(epoch) and not self.sampler.due_at_step(self.position.step):
                    self._sample(epoch)
                break
            self.position = state.TrainPosition(epoch + 1, self.position.step, 0)
            if self.config.save_every_n_epochs and epoch % self.config.save_every_n_epochs == 0 \
                    and epoch < length.num_epochs:
                self._save(lambda e=epoch: self.saver.save_epoch(e, self.position))
            if self.sampler.due_at_epoch(epoch):
                self._sample(epoch)
        return epoch

    def _save(self, action):
        """A save, never cut short by a stop signal (the stop takes effect after it)."""
        self.events.phase("saving", self.position.step)
        with self.stop.during_save():
            return self._with_eval(action, average=False)

    def _run_epoch(self, epoch: int, progress: Progress) -> bool:
        """Train (the rest of) one epoch; True when the last step of the run was reached."""
        acc = self.accelerator
        batches = shard_plan(self.dataset.epoch_batches(epoch, self.seed), acc.process_index, acc.num_processes)
        done_before = self.position.batches_in_epoch if epoch == self.position.epoch else 0
        loader = prefetch(
            (lambda i=i, b=b: (i, self.dataset.load_batch(b, epoch=epoch, seed=self.seed, step=i)))
            for i, b in batches[done_before:]
        )
        for local_index, (global_index, batch) in enumerate(loader, start=done_before):
            with acc.accumulate(self.train_step):
                loss = self.train_step(batch, torch.Generator().manual_seed(step_seed(self.seed, epoch, global_index)))
                acc.backward(loss)  # with fused_backward_pass the weights are updated during backward
                if acc.sync_gradients and self.config.max_grad_norm and not self.fused_backward:
                    acc.clip_grad_norm_(self.train_step.parameters(), self.config.max_grad_norm)
                if not self.fused_backward:
                    self.optimizer.step()
                if acc.sync_gradients and not acc.optimizer_step_was_skipped:
                    self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
            if not acc.sync_gradients:
                continue
            self.position = state.TrainPosition(epoch, self.position.step + 1, local_index + 1)
            self.target.on_step_end(self.position.step)  # e.g. max-norm scaling: part of the step's weights
            if self.average is not None:
                self.average.after_step(self.position.step)
            self._after_step(epoch, loss, progress)
            if self.position.step >= self.length.total_steps:
                return True
            if self.stop.agreed(acc):
                return True
        return False

    def _after_step(self, epoch: int, loss: torch.Tensor, progress: Progress) -> None:
        step = self.position.step
        # one read from the device for both checks (a NaN loss, then NaN weights after the step)
        value, weights_finite = torch.stack([loss.detach().float().reshape(()),
                                             self.weights.finite().to(loss.device, torch.float32)]).tolist()
        if not math.isfinite(value):
            raise TrainingError(
                f"the loss became {value} at step {step} (epoch {epoch}); training stopped and nothing more "
                f"was saved{self._last_saved_note()}. Lower the learning rate (now {self.config.learning_rate}), "
                f"or use mixed_precision = \"bf16\" / \"no\" instead of fp16."
            )
        if not weights_finite:
            self._check_weights(step, epoch, value)
        avg = self.running.add(value)
        lrs = self.scheduler.get_last_lr()
        progress.update(step, epoch, value, avg, lrs[-1])
        if self.accelerator.is_main_process and self.config.logging_dir:
            self.accelerator.log({"loss/current": value, "loss/average": avg, **lr_logs(self.optimizer, lrs),
                                  **self.target.step_logs()}, step=step)
        every = self.config.save_every_n_steps
        if every and step % every == 0 and step < self.length.total_steps:
            self._save(lambda: self.saver.save_step(epoch, self.position))
        if self.validator is not None and self.validator.due_at_step(step):
            self._validate("step", step)
        if self.sampler.due_at_step(step):
            self._sample(None)

    def _last_saved_note(self) -> str:
        last = self.saver.last_saved
        return f" (the last saved file, {last[0].name}, is from step {last[1]})" if last else ""

    def _check_weights(self, step: int, epoch: int, loss: float) -> None:
        broken = self.weights.broken()
        if not broken:
            return  # finite weights, only large enough to overflow the norm
        names = ", ".join(broken[:3]) + (f" and {len(broken) - 3} more" if len(broken) > 3 else "")
        clip = "" if self.config.max_grad_norm else "set max_grad_norm = 1.0, "
        raise TrainingError(
            f"the trained weights became NaN or infinite in the optimizer step {step} (epoch {epoch}; its loss "
            f"was still {loss:.4g}) in {len(broken)} of {len(self.weights.params)} tensors ({names}); "
            f"training stopped and these weights were not saved{self._last_saved_note()}. Lower the learning "
            f"rate (now {self.config.learning_rate}), {clip}or use mixed_precision = \"bf16\" / \"no\" "
            f"instead of fp16."
        )

    def _validate(self, kind: str, at: int) -> None:
        """The validation loss, logged as sd-scripts names it (``loss/validation/step_average`` at a step,
        ``loss/validation/epoch_average`` at an epoch end, with the divergence from the training loss)."""
        step = self.position.step
        if self._last_validation is not None and self._last_validation[0] == step:
            value = self._last_validation[1]  # the weights have not changed since: the same loss
        else:
            value = self._with_eval(lambda: self.validator.loss(self._compute, self.target.modules()))
            self._last_validation = (step, value)
        logger.info("validation loss %.4f (%s %d)", value, kind, at)
        self.events.emit("validation", step=step, loss=value, kind=kind)
        if self.accelerator.is_main_process and self.config.logging_dir:
            self.accelerator.log({f"loss/validation/{kind}_average": value,
                                  f"loss/validation/{kind}_divergence": value - self.running.mean}, step=at)

    def _sample(self, epoch: int | None) -> None:
        self.events.phase("sampling", self.position.step)
        paths = self._with_eval(lambda: self.sampler.run(self.position.step, epoch))
        if paths and self.saver.first_sample is None:
            self.saver.first_sample = paths[0]
        self.events.emit("sample", step=self.position.step, paths=[str(p) for p in paths])

    def _with_eval(self, action, average: bool = True):
        """Run ``action`` with the weights that are used rather than trained: the optimizer in eval mode
        (schedule-free optimizers average weights), and the moving average of the weights (ema_decay) unless
        ``average`` is False (saves: the Saver swaps it in for the files only, states keep the trained ones)."""
        _optimizer_mode(self.optimizer, train=False)
        try:
            if self.average is None or not average:
                return action()
            with self.average.in_place():
                return action()
        finally:
            _optimizer_mode(self.optimizer, train=True)
            give_back_free_memory()  # what the save or the samples freed (the loop's heap keeps it otherwise)

    def _check_ranks_agree(self) -> None:
        """With several processes, every rank must hold the same trained weights (DDP keeps them in step)."""
        acc = self.accelerator
        from library.training.distributed import splits_weights

        if acc.num_processes == 1 or splits_weights(acc):  # each process holds its own shard: nothing to compare
            return
        with torch.no_grad():
            params = [p.detach().double() for p in self.train_step.parameters() if p.requires_grad]
            summary = torch.stack([sum(p.sum() for p in params), sum(p.pow(2).sum() for p in params)])
            gathered = acc.gather(summary.to(acc.device)[None]).cpu()
        if not torch.allclose(gathered, gathered[0].expand_as(gathered), rtol=0, atol=0):
            raise TrainingError(f"the {acc.num_processes} processes ended with different weights: {gathered.tolist()}")
        logger.info("weights identical on all %d processes", acc.num_processes)
