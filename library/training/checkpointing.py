"""Saving during a run: trained files (epoch, step, final), training states, and pruning old ones."""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from pathlib import Path

from library.training import outputs, state
from library.training.metadata import card_metadata, minimal
from library.training.parking import parking_folder
from library.util import atomic

logger = logging.getLogger(__name__)


def remove_leftovers(output_dir: str | Path, name: str) -> None:
    """At the start of a run: what killed saves left in ``output_dir`` (and its ``sample`` folder) is removed,
    a state folder saved completely just before a kill is put under its name. Only our temporary names are
    touched (see :func:`library.util.atomic.remove_leftovers`); a failure here is a warning, not the run's end.
    """
    try:
        state.remove_leftovers(output_dir, name)
        for folder in (Path(output_dir), Path(output_dir) / "sample"):
            atomic.remove_leftovers(folder)
        parked = parking_folder(output_dir, name)
        if parked.is_dir():
            shutil.rmtree(parked)
    except OSError as error:
        logger.warning("could not remove the temporary files of earlier saves in %s: %s", output_dir, error)


class Saver:
    """Writes the target's files and the states as the config asks; only the main process writes files,
    every process takes part in state saves (accelerate collects them)."""

    def __init__(self, config, target, accelerator, base_meta: dict[str, str], events=None):
        self.config, self.target, self.accelerator, self.base_meta = config, target, accelerator, base_meta
        self.events = events
        self.ext = target.file_ext
        #: the weights written to files (a moving average swaps itself in here); states keep the trained ones
        self.file_weights = contextlib.nullcontext
        #: puts parts parked on disk back for a save (:mod:`library.training.parking`)
        self.parked = contextlib.nullcontext
        #: the run's first sample image (the files' ``modelspec.thumbnail`` unless metadata_thumbnail is set)
        self.first_sample: Path | None = None
        #: the last trained file written and its step (None: none yet)
        self.last_saved: tuple[Path, int] | None = None

    @property
    def states_wanted(self) -> bool:
        return bool(self.config.save_state)

    def save_epoch(self, epoch: int, position: state.TrainPosition) -> None:
        cfg = self.config
        self._save_file(outputs.epoch_file(cfg.output_dir, cfg.output_name, epoch, self.ext), epoch, position.step)
        if self.accelerator.is_main_process:
            outputs.prune_epoch_saves(cfg.output_dir, cfg.output_name, self.ext, epoch, cfg.save_every_n_epochs,
                                      cfg.save_last_n_epochs)
        if self.states_wanted:
            state.save_state(self.accelerator, state.epoch_state_dir(cfg.output_dir, cfg.output_name, epoch),
                             position, cfg.seed)
            keep = cfg.save_last_n_epochs_state or cfg.save_last_n_epochs
            old = epoch - cfg.save_every_n_epochs * keep if keep else 0
            if old > 0 and self.accelerator.is_main_process:
                state.prune_state(state.epoch_state_dir(cfg.output_dir, cfg.output_name, old))

    def save_step(self, epoch: int, position: state.TrainPosition) -> None:
        cfg, step = self.config, position.step
        self._save_file(outputs.step_file(cfg.output_dir, cfg.output_name, step, self.ext), epoch, step)
        if self.accelerator.is_main_process:
            outputs.prune_step_saves(cfg.output_dir, cfg.output_name, self.ext, step, cfg.save_every_n_steps,
                                     cfg.save_last_n_steps)
        if self.states_wanted:
            state.save_state(self.accelerator, state.step_state_dir(cfg.output_dir, cfg.output_name, step), position,
                             cfg.seed)
            keep = cfg.save_last_n_steps_state or cfg.save_last_n_steps
            every = cfg.save_every_n_steps
            old = step - every * (keep // every + 1) if keep else 0
            if old > 0 and self.accelerator.is_main_process:
                state.prune_state(state.step_state_dir(cfg.output_dir, cfg.output_name, old))

    def save_final(self, epoch: int, position: state.TrainPosition, stopped: bool = False) -> Path:
        """The last file, and with save_state or save_state_on_train_end the final state (``<name>-state``), so a
        finished or stopped run can be extended (as sd-scripts does)."""
        cfg = self.config
        path = outputs.final_file(cfg.output_dir, cfg.output_name, self.ext)
        self._save_file(path, epoch, position.step)
        if cfg.save_state or cfg.save_state_on_train_end:
            state.save_state(self.accelerator, state.final_state_dir(cfg.output_dir, cfg.output_name), position,
                             cfg.seed)
        return path

    def _save_file(self, path: Path, epoch: int, step: int) -> None:
        self.accelerator.wait_for_everyone()
        before_save = getattr(self.target, "before_save", None)
        if before_save is not None:
            before_save(self.accelerator)  # every process: FSDP / ZeRO-3 gather the weights here
        if not self.accelerator.is_main_process:
            return
        meta = {**self.base_meta, **self.target.metadata(self.config), **card_metadata(self.config, self.first_sample)}
        meta.update(ss_epoch=str(epoch), ss_steps=str(step), ss_training_finished_at=str(time.time()))
        if self.config.no_metadata:
            meta = minimal(meta)
        with self.file_weights(), self.parked():
            self.target.save(path, self.config.save_precision, meta, self.config)
        logger.info("saved %s", path.name)
        self.last_saved = (path, step)
        if self.events is not None:
            self.events.emit("saved", path=str(path), step=step)
