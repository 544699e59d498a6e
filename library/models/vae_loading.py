"""Load a replacement VAE (``--vae``): a diffusers folder or a single VAE / full-model file."""

from __future__ import annotations

from pathlib import Path

import torch

from library.errors import ModelLoadError
from library.models.ldm_convert import VAE_PREFIX, vae_from_ldm
from library.models.ldm_infer import infer_vae_config
from library.models.safe_load import load_state_dict_file


def load_vae(source: str, base_config, *, allow_unsafe_pickle: bool = False):
    """Return an AutoencoderKL (float32, eval) from ``source``.

    Folders are loaded with ``from_pretrained`` (a ``vae/`` subfolder is used when present).
    Files may hold LDM keys (``first_stage_model.*`` or bare ``encoder.down.*``) or diffusers
    keys (``encoder.down_blocks.*``, built with ``base_config``, the base model's VAE config).
    """
    from diffusers import AutoencoderKL

    path = Path(source).expanduser()
    if path.is_dir():
        sub = "vae" if (path / "vae").is_dir() else None
        try:
            return AutoencoderKL.from_pretrained(str(path), subfolder=sub, local_files_only=True).eval()
        except (OSError, ValueError) as error:
            raise ModelLoadError(f"Could not load the VAE folder {path}: {error}") from error
    state, _ = load_state_dict_file(path, allow_unsafe_pickle=allow_unsafe_pickle)
    if any(k.startswith(VAE_PREFIX) for k in state):
        state = {k[len(VAE_PREFIX) :]: v for k, v in state.items() if k.startswith(VAE_PREFIX)}
    if any(k.startswith("encoder.down.") for k in state):
        config = infer_vae_config(state)
        config["scaling_factor"] = float(dict(base_config).get("scaling_factor", 0.18215))
        state = vae_from_ldm(state, config)
    elif any(k.startswith("encoder.down_blocks.") for k in state):
        config = {k: v for k, v in dict(base_config).items() if not k.startswith("_")}
    else:
        raise ModelLoadError(
            f"VAE file {path} has neither LDM (encoder.down.*) nor diffusers (encoder.down_blocks.*) "
            "VAE keys. Check the vae option."
        )
    vae = AutoencoderKL(**config)
    result = vae.load_state_dict(state, strict=False)
    if result.missing_keys:
        raise ModelLoadError(
            f"VAE file {path} does not match the VAE shape: {len(result.missing_keys)} missing keys "
            f"(e.g. {result.missing_keys[:3]})."
        )
    return torch.nn.Module.to(vae, torch.float32).eval()
