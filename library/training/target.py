"""What a trainer trains: the hooks that differ between LoRA training and DreamBooth.

The shared loop (``loop.py``) drives a ``TrainTarget``; ``train_network.py`` uses ``LoRATarget`` and
``train_db.py`` will use a full fine-tune target. Each hook is small; the loop never asks which one it has.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch


class TrainTarget(Protocol):
    #: file extension of saved results ("safetensors", "ckpt", ...)
    file_ext: str
    #: whether the text encoder's forward needs gradients (read again at every step)
    trains_text_encoder: bool
    #: model components ("unet", "text_encoder") the loop must place in float32 whatever the compute dtype
    float32_components: tuple[str, ...]

    def attach(self, model, config) -> None:
        """Create/enable the trainable parameters on the loaded base model."""

    def param_groups(self, config) -> list[dict]:
        """Optimizer param groups (with their own ``lr``)."""

    def modules(self) -> list[torch.nn.Module]:
        """The modules holding trainable parameters (handed to accelerate.prepare)."""

    def set_modules(self, modules: list[torch.nn.Module]) -> None:
        """Receive the prepared (possibly wrapped) modules back."""

    def metadata(self, config) -> dict[str, str]:
        """Target-specific ``ss_*`` metadata."""

    def save(self, path: Path, precision: str | None, metadata: dict[str, str], config) -> None:
        """Write the trained result to ``path`` atomically."""

    def on_step_end(self, global_step: int) -> None:
        """Called after every optimizer step (e.g. to freeze the text encoder after step k)."""

    def on_prepared(self, accelerator) -> None:
        """Called once after ``accelerator.prepare`` (e.g. to let the grad scaler take fp16 gradients)."""


class BaseTarget:
    """No-op defaults for the optional hooks of ``TrainTarget``."""

    float32_components: tuple[str, ...] = ()
    #: whether the saved result holds the base model's frozen parts (a fine-tune's checkpoint does); when not,
    #: a run that caches latents and text-encoder outputs frees the VAE and the text encoders once they are
    #: cached (unless it renders samples), so they do not stay beside the denoiser for the whole run
    saves_base_model: bool = True

    def on_model_loaded(self, model, config) -> None:
        """Called once the base model is loaded, before it is placed (its family is known from here on)."""
        return None

    def on_step_end(self, global_step: int) -> None:
        return None

    def on_prepared(self, accelerator) -> None:
        return None

    def before_save(self, accelerator) -> None:
        """Called on every process before the main one saves (engines that split the weights gather here)."""
        return None

    def step_logs(self) -> dict[str, float]:
        """Extra scalars to log after a step (e.g. max-norm statistics)."""
        return {}

    def before_sampling(self) -> None:
        """Called before sample images are rendered (the modules are already in eval mode)."""
        return None

    def after_sampling(self) -> None:
        return None

    def network_multiplier(self) -> float | None:
        """The strength the trained network runs at (1 = as trained), for previews at a LoRA weight; None
        where the target has no network (DreamBooth)."""
        return None

    def set_network_multiplier(self, multiplier: float) -> None:
        """Run the trained network at ``multiplier`` (only where :meth:`network_multiplier` is not None)."""
        raise TypeError(f"{type(self).__name__} trains no network whose strength could change")


def require_family(make_target, family_name: str):
    """A target factory whose targets refuse a base model of another family than ``family_name`` (a clear
    error naming both), for sd-scripts' per-family scripts (``sdxl_train_network.py``, ``sdxl_train.py``)."""
    from library.errors import ModelLoadError
    from library.models.family import get_model_family

    expected = get_model_family(family_name)

    def make(config):
        target = make_target(config)
        loaded = target.on_model_loaded

        def on_model_loaded(model, config_) -> None:
            if model.adapter is not expected:
                raise ModelLoadError(
                    f"{model.name} is a {model.adapter.description} model ({model.family}), but this script "
                    f"trains {expected.description} ({expected.name}) models. Give a {expected.label} base "
                    "model, or run train_network.py / train_db.py, which take every family."
                )
            loaded(model, config_)

        target.on_model_loaded = on_model_loaded
        return target

    return make
