"""The DreamBooth target of ``train_db.py``: a full fine-tune of the UNet and, optionally, the text encoder.

The trained modules are the base model's own modules (float32 master weights, or float16/bfloat16 with
``full_fp16``/``full_bf16``). Results are whole models: one LDM-layout file (``safetensors``/``ckpt``)
that AUTOMATIC1111 and ComfyUI load, or a diffusers folder (``diffusers``/``diffusers_safetensors``).
Parts that are not trained (the VAE, a frozen text encoder) are written from the base model's float32
weights, untouched by the training precision.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from library.config.options_db import check_db_rules, text_encoder_steps
from library.errors import ConfigError
from library.networks.metadata import IMPL_DIFFUSERS, IMPL_STABILITY_AI, modelspec_metadata
from library.training.target import BaseTarget
from library.util.atomic import atomic_folder

logger = logging.getLogger(__name__)

SAVE_DTYPES = {None: None, "float": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def training_dtype(config) -> torch.dtype:
    """dtype of the trained weights: float16 with ``full_fp16``, bfloat16 with ``full_bf16``, else float32."""
    if config.full_fp16:
        return torch.float16
    if config.full_bf16:
        return torch.bfloat16
    return torch.float32


class DreamBoothTarget(BaseTarget):
    """Trains the base model's UNet (and text encoder) in place and saves whole models."""

    #: trained parts need float32 master weights; a frozen text encoder is saved unchanged, so no cast either.
    float32_components = ("unet", "text_encoder")

    def __init__(self, config):
        check_db_rules(config)
        self.format = save_format_name(config.save_model_as, config.use_safetensors)
        self.file_ext = SAVE_FORMATS[self.format].ext
        #: optimizer steps that train the text encoder: None = all, 0 = none
        self.text_encoder_steps = text_encoder_steps(config)
        self._text_encoder_active = self.text_encoder_steps != 0
        self._model = None
        self._modules: list[torch.nn.Module] = []
        self._full_fp16 = config.full_fp16
        #: text part -> lr, settled once the model (and so its family) is known
        self._te_lrs: dict[str, float] | None = None
        self._text_parts: list[str] = []
        #: DDP must tolerate the text encoder's parameters going without gradients once it is frozen
        self.ddp_find_unused_parameters = self.text_encoder_steps not in (None, 0)

    @property
    def trains_text_encoder(self) -> bool:
        """True while a text encoder is trained; the loop reads it at every step."""
        return self._text_encoder_active

    def on_model_loaded(self, model, config) -> None:
        """Settle which text encoders train, now that the family is known: each text part's lr (0 = frozen),
        and the family's default for ``train_text_encoder`` (SDXL: off unless set, as sd-scripts' sdxl_train)."""
        family = model.adapter
        if "train_text_encoder" not in config.explicit and not family.trains_text_encoder_by_default:
            self.text_encoder_steps = 0
        self._te_lrs = text_part_lrs(config, family)
        if not any(self._te_lrs.values()):
            self.text_encoder_steps = 0
        self._text_encoder_active = self.text_encoder_steps != 0
        self.ddp_find_unused_parameters = self.text_encoder_steps not in (None, 0)

    def _trained_text_parts(self, model) -> list[str]:
        if not self._text_encoder_active:
            return []
        lrs = self._te_lrs if self._te_lrs is not None else dict.fromkeys(model.text_parts, 1.0)
        return [part for part in model.text_parts if lrs.get(part)]

    def attach(self, model, config) -> None:
        if self._te_lrs is None:
            self.on_model_loaded(model, config)
        dtype = training_dtype(config)
        text_parts = self._trained_text_parts(model)
        trained = [model.parts[p] for p in text_parts] + [model.unet]
        for module in trained:
            if module.dtype != dtype:
                module.to(dtype=dtype)
            module.requires_grad_(True).train()
        self._modules = trained
        for part in model.text_parts:
            if part not in text_parts:
                model.parts[part].requires_grad_(False)
        if not text_parts:
            logger.info("the text encoder is not trained")
        self._model = model
        self._text_parts = text_parts

    def param_groups(self, config) -> list[dict]:
        """Each trained text encoder at its lr (``learning_rate_te[1|2]``, default ``learning_rate``), UNet at
        ``learning_rate``."""
        groups = [
            {"params": list(self._model.parts[part].parameters()), "lr": self._te_lrs[part], "name": part}
            for part in self._text_parts
        ]
        groups.append(
            {"params": list(self._model.unet.parameters()), "lr": config.learning_rate, "name": "unet"}
        )
        return groups

    def modules(self) -> list[torch.nn.Module]:
        return self._modules

    def set_modules(self, modules: list[torch.nn.Module]) -> None:
        self._modules = modules
        for part, module in zip([*self._text_parts, "unet"], modules, strict=True):
            if module is not self._model.parts[part]:
                self._model.parts[part] = module  # FSDP wrapped the whole part: its forward must go through FSDP

    def on_prepared(self, accelerator) -> None:
        from library.training.distributed import describe_engine

        logger.info("training on %s", describe_engine(accelerator))
        if self._full_fp16 and accelerator.scaler is not None:
            allow_fp16_gradients(accelerator.scaler)

    def before_save(self, accelerator) -> None:
        """FSDP and DeepSpeed ZeRO-3 split the weights across processes: gather them whole for the main process."""
        from library.training.distributed import gather_full_weights

        self._gathered = gather_full_weights(accelerator)

    def _model_to_save(self):
        """The model as a single process would hold it: the gathered weights in place of split ones."""
        gathered, self._gathered = getattr(self, "_gathered", None), None
        if gathered is None:
            return self._model
        from library.training.distributed import part_states

        parts = dict(self._model.parts)
        for part, state in part_states(gathered, [*self._text_parts, "unet"]).items():
            parts[part] = module_from_state(getattr(parts[part], "module", parts[part]), state)
        return dataclasses.replace(self._model, parts=parts)

    def on_step_end(self, global_step: int) -> None:
        """Freeze the text encoder once ``stop_text_encoder_training`` steps have trained it."""
        steps = self.text_encoder_steps
        if not self._text_encoder_active or steps is None or global_step < steps:
            return
        for part in self._text_parts:
            text_encoder = self._model.parts[part]
            text_encoder.requires_grad_(False)
            text_encoder.train(False)
            for param in text_encoder.parameters():
                param.grad = None
        self._text_encoder_active = False
        logger.info("stopped text encoder training at step %d", global_step)

    def metadata(self, config) -> dict[str, str]:
        """``modelspec.*`` for a checkpoint plus the DreamBooth-specific ``ss_*`` values."""
        model = self._model
        meta = modelspec_metadata(
            model.adapter.architecture(model.v_parameterization, model),
            config.metadata_title or config.output_name,
            config.resolution,
            "v" if model.v_parameterization else "epsilon",
            implementation=IMPL_DIFFUSERS if SAVE_FORMATS[self.format].folder else IMPL_STABILITY_AI,
            author=config.metadata_author,
            description=config.metadata_description,
            license=config.metadata_license,
            tags=config.metadata_tags,
        )
        te_lrs = [self._te_lrs[p] for p in self._text_parts] if self._te_lrs else []
        te_lr = (te_lrs[0] if len(set(te_lrs)) == 1 else te_lrs) if te_lrs else None
        meta.update(
            {
                "ss_unet_lr": str(config.learning_rate),
                "ss_text_encoder_lr": str(te_lr if self.text_encoder_steps != 0 else None),
                "ss_train_text_encoder": str(self.text_encoder_steps != 0),
                "ss_stop_text_encoder_training": str(config.stop_text_encoder_training),
                "ss_no_token_padding": str(config.no_token_padding),
                "ss_full_fp16": str(config.full_fp16),
                "ss_full_bf16": str(config.full_bf16),
            }
        )
        return meta

    def save(self, path: Path, precision: str | None, metadata: dict[str, str], config) -> None:
        SAVE_FORMATS[self.format].write(self._model_to_save(), Path(path), SAVE_DTYPES[precision], metadata)


def allow_fp16_gradients(scaler) -> None:
    """Let a ``GradScaler`` unscale float16 gradients.

    torch refuses by default because mixed precision expects float32 master weights; with ``full_fp16``
    the weights themselves are float16 (sd-scripts lifts the same check).
    """
    unscale = scaler._unscale_grads_
    scaler._unscale_grads_ = lambda optimizer, inv_scale, found_inf, _allow_fp16: unscale(
        optimizer, inv_scale, found_inf, True
    )


# --- saving -------------------------------------------------------------------------------------------


def save_single(model, path: Path, dtype: torch.dtype | None, metadata: dict[str, str]) -> None:
    """One file in the family's original layout (SD: ``model.diffusion_model.*``, ``first_stage_model.*``,
    ``cond_stage_model.*``; SDXL: SGM ``conditioner.embedders.*``).

    ``.safetensors`` carries ``metadata``; a ``.ckpt`` is a tensors-only ``{"state_dict": ...}`` pickle.
    """
    model.adapter.save_single_file(model, path, dtype, metadata)


def save_diffusers_folder(model, path: Path, dtype: torch.dtype | None, safetensors: bool) -> None:
    """A diffusers pipeline folder of the family (unet, vae, text encoders, tokenizers, scheduler).

    The scheduler is DDIM with the training schedule's betas and prediction type (sd-scripts saves DDIM
    too). Written to a temporary folder beside ``path``, then moved into place.
    """
    from diffusers import DDIMScheduler

    modules = {name: cpu_copy(module, dtype) for name, module in model.parts.items()}
    pipeline = model.adapter.diffusers_pipeline(modules, model.tokenizers,
                                                DDIMScheduler.from_config(model.noise_scheduler.config))
    with atomic_folder(path) as tmp:
        pipeline.save_pretrained(tmp, safe_serialization=safetensors)


def cpu_copy(module: torch.nn.Module, dtype: torch.dtype | None) -> torch.nn.Module:
    """A CPU copy of ``module`` with floating tensors cast to ``dtype`` (None: kept), without ever holding
    a second copy on the training device. The module is rebuilt on the meta device and takes the copied
    tensors as they are (no random init)."""
    return module_from_state(module, {k: _cast(v, dtype).to("cpu", copy=True) for k, v in module.state_dict().items()})


def module_from_state(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A CPU module of ``module``'s class and config holding ``state`` (e.g. weights gathered from FSDP)."""
    with torch.device("meta"):
        clone = type(module).from_config(module.config) if hasattr(module, "from_config") else type(module)(module.config)
    clone.load_state_dict(state, strict=True, assign=True)
    for name, buffer in module.named_buffers():
        if name not in state:  # non-persistent buffers (e.g. CLIP's position_ids)
            owner, _, leaf = name.rpartition(".")
            setattr(clone.get_submodule(owner), leaf, buffer.detach().to("cpu", copy=True))
    return clone.eval()


def _cast(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    tensor = tensor.detach()
    return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor


@dataclass(frozen=True)
class SaveFormat:
    """One ``save_model_as`` value: the file extension the loop names files with, and its writer."""

    ext: str
    folder: bool
    write: Callable[[object, Path, torch.dtype | None, dict[str, str]], None]


def _write_folder(safetensors: bool) -> Callable:
    def write(model, path: Path, dtype, metadata) -> None:
        save_diffusers_folder(model, path, dtype, safetensors)  # a folder "<name>", as sd-scripts writes it

    return write


SAVE_FORMATS: dict[str, SaveFormat] = {
    "safetensors": SaveFormat("safetensors", False, save_single),
    "ckpt": SaveFormat("ckpt", False, save_single),
    "diffusers": SaveFormat("", True, _write_folder(safetensors=False)),
    "diffusers_safetensors": SaveFormat("", True, _write_folder(safetensors=True)),
}

#: sd-scripts' ``use_safetensors`` switches a pickle format to its safetensors twin.
_SAFETENSORS_TWIN = {"ckpt": "safetensors", "diffusers": "diffusers_safetensors"}


def save_format_name(save_model_as: str, use_safetensors: bool) -> str:
    if use_safetensors:
        return _SAFETENSORS_TWIN.get(save_model_as, save_model_as)
    return save_model_as


def text_part_lrs(config, family) -> dict[str, float]:
    """The learning rate of each text part: ``learning_rate_te1`` / ``learning_rate_te2`` for a family with two
    text encoders, else (and where unset) ``learning_rate_te``, else ``learning_rate``."""
    per_part = [config.learning_rate_te1, config.learning_rate_te2]
    if len(family.text_parts) < 2 and any(v is not None for v in per_part):
        raise ConfigError(
            f"learning_rate_te1 / learning_rate_te2 are for models with two text encoders (SDXL), but the base "
            f"model is {family.description} ({family.name}) with one: use learning_rate_te instead."
        )
    fallback = config.learning_rate if config.learning_rate_te is None else config.learning_rate_te
    return {part: (fallback if i >= len(per_part) or per_part[i] is None else per_part[i])
            for i, part in enumerate(family.text_parts)}
