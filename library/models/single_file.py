"""Build diffusers modules from an LDM single file, and save modules as one."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from library.errors import ModelLoadError
from library.models.ldm_convert import single_file_metadata, split_single_file, to_single_file
from library.util.atomic import atomic_path


def _load_exact(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str, source: str) -> None:
    """Make ``state``'s tensors (cast to float32 one at a time, so the file's copy of each is freed as it goes)
    the parameters of ``module``, built on the meta device; missing or unexpected keys raise ModelLoadError."""
    for key, value in state.items():
        if value.is_floating_point() and value.dtype != torch.float32:
            state[key] = value.to(torch.float32)
        del value
    result = module.load_state_dict(state, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise ModelLoadError(
            f"{source}: the {what} weights do not match the model built from its config: "
            f"{len(result.missing_keys)} missing (e.g. {result.missing_keys[:3]}), "
            f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:3]}). "
            "The file may be damaged or of an unsupported architecture."
        )


def modules_from_single_file(
    state_dict: dict[str, torch.Tensor], metadata: dict[str, str] | None, source: str = "single file"
) -> tuple[dict, dict]:
    """Return ({"unet", "vae", "text_encoder"} float32 modules, configs) from a loaded single file.

    Consumes ``state_dict`` (it is emptied): the modules are built without weights (meta device) and take its
    tensors as their parameters, so the model exists once in memory, never beside a second copy.
    """
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    try:
        unet_sd, vae_sd, te_sd, configs = split_single_file(state_dict, metadata)
    except ModelLoadError as error:
        raise ModelLoadError(f"{source}: {error}") from error
    state_dict.clear()  # the parts' dicts hold the tensors now; each is freed once converted
    try:
        with init_empty_weights():  # parameters on the meta device, buffers real
            unet = UNet2DConditionModel(**configs["unet"])
            vae = AutoencoderKL(**configs["vae"])
            text_encoder = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
    except (TypeError, ValueError) as error:
        raise ModelLoadError(f"{source}: could not build the model from its config ({error}).") from error
    _load_exact(unet, unet_sd, "UNet", source)
    _load_exact(vae, vae_sd, "VAE", source)
    _load_exact(text_encoder, te_sd, "text encoder", source)
    modules = {"unet": unet, "vae": vae, "text_encoder": text_encoder}
    for module in modules.values():
        torch.nn.Module.to(module, torch.float32).eval()  # diffusers' own .to() warns about fp32 modules
    return modules, configs


def save_single_file(
    path: str | os.PathLike,
    unet,
    vae,
    text_encoder,
    family: str,
    *,
    dtype: torch.dtype | None = None,
    extra_metadata: dict[str, str] | None = None,
) -> Path:
    """Save the three modules as one LDM-layout file (atomically).

    ``.safetensors`` carries the ``sdtrain.*`` configs plus ``extra_metadata``; ``.ckpt``/``.pt``
    is a ``{"state_dict": ...}`` pickle of tensors only. ``dtype`` casts floating tensors.
    """
    metadata = single_file_metadata(unet, vae, text_encoder, family)
    return write_checkpoint(path, to_single_file(unet, vae, text_encoder, family), metadata, extra_metadata, dtype)


def write_checkpoint(path: str | os.PathLike, state: dict[str, torch.Tensor], metadata: dict[str, str],
                     extra_metadata: dict[str, str] | None = None, dtype: torch.dtype | None = None) -> Path:
    """Write a whole-model state dict atomically: ``.safetensors`` with ``metadata`` + ``extra_metadata``,
    else a tensors-only ``{"state_dict": ...}`` pickle. ``dtype`` casts floating tensors."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        from library.util.safetensors_io import write_streamed

        with atomic_path(path) as tmp:  # tensor by tensor: no second copy of the model in memory
            write_streamed(tmp, state, {**metadata, **(extra_metadata or {})}, dtype=dtype)
        return path
    state = {  # on the CPU: a pickle keeps each tensor's device, and a GPU's would not load without one
        k: v.detach().to("cpu", dtype if dtype is not None and v.is_floating_point() else v.dtype).contiguous()
        for k, v in state.items()
    }
    with atomic_path(path) as tmp:
        torch.save({"state_dict": state}, tmp)
    return path
