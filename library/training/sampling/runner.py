"""When to sample during training, and the bookkeeping around it (eval mode, logging)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from library.training.sampling.generate import SampleSettings, generate_samples
from library.training.sampling.prompts import read_prompts

logger = logging.getLogger(__name__)


class SampleRunner:
    """Samples at the first step, every n epochs (wins) or every n steps, as sd-scripts does."""

    def __init__(self, config, model, accelerator, target, seed: int):
        self.config, self.model, self.accelerator, self.target = config, model, accelerator, target
        width, height = config.resolution
        lora_weights = getattr(config, "sample_lora_weights", None)  # train_network.py's option only
        self.settings = SampleSettings(sampler=config.sample_sampler, width=width, height=height,
                                       clip_skip=config.clip_skip, max_token_length=config.max_token_length,
                                       seed=seed,
                                       lora_weights=tuple(float(w) for w in lora_weights) if lora_weights else None)

    @property
    def enabled(self) -> bool:
        return bool(self.config.sample_prompts)

    def due_at_step(self, step: int) -> bool:
        every = self.config.sample_every_n_steps
        return self.enabled and not self.config.sample_every_n_epochs and bool(every) and step % every == 0

    def due_at_epoch(self, epoch: int) -> bool:
        every = self.config.sample_every_n_epochs
        return self.enabled and bool(every) and epoch % every == 0

    def run(self, step: int, epoch: int | None = None) -> list[Path]:
        """Render the prompt file (re-read now) on the main process; the others wait."""
        acc = self.accelerator
        paths: list[Path] = []
        if acc.is_main_process:
            paths = self._render(step, epoch)
        acc.wait_for_everyone()
        return paths

    def _render(self, step: int, epoch: int | None) -> list[Path]:
        cfg = self.config
        prompts = read_prompts(cfg.sample_prompts)
        tag = f"e{epoch:06d}" if epoch is not None else f"{step:06d}"
        modules = self.target.modules()
        modes = [m.training for m in modules]
        for m in modules:
            m.eval()
        self.target.before_sampling()
        try:
            results = generate_samples(self.model, prompts, self.settings, Path(cfg.output_dir) / "sample",
                                       f"{cfg.output_name}_{tag}", target=self.target)
        finally:
            for m, mode in zip(modules, modes, strict=False):
                m.train(mode)
            self.target.after_sampling()
        self._log(results, step)
        return [path for path, _, _ in results]

    def _log(self, results, step: int) -> None:
        if not self.config.logging_dir:
            return
        try:
            tracker = self.accelerator.get_tracker("tensorboard", unwrap=True)
        except (ValueError, KeyError):
            return
        with torch.no_grad():
            for i, (_, image, prompt) in enumerate(results):
                tracker.add_image(f"sample/{i:02d}", np.asarray(image), global_step=step, dataformats="HWC")
                tracker.add_text(f"sample/{i:02d}/prompt", prompt, global_step=step)
