"""LDM (CompVis single file) <-> diffusers conversion of whole Stable Diffusion models.

A single file holds ``model.diffusion_model.*`` (UNet), ``first_stage_model.*`` (VAE) and
``cond_stage_model.*`` (text encoder). Files we write also carry the diffusers configs as JSON in
the safetensors metadata (``sdtrain.*``) so they reload exactly; a foreign file gets its configs
inferred from tensor shapes. Conversion is exact in both directions (only renames, 1x1-conv <->
linear reshapes and q/k/v stacking). Other keys (``model_ema.*``, ``alphas_cumprod``...) are ignored.
"""

from __future__ import annotations

import json
import logging

import torch

from library.errors import ModelLoadError
from library.models import ldm_keys, ldm_text
from library.models.families import FAMILIES, get_family
from library.models.ldm_infer import infer_unet_config, infer_vae_config

logger = logging.getLogger(__name__)

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
META_UNET = "sdtrain.unet_config"
META_VAE = "sdtrain.vae_config"
META_TEXT = "sdtrain.text_encoder_config"
META_FAMILY = "sdtrain.family"

TEXT_LAYOUTS = {
    "hf_clip": (ldm_text.HF_CLIP_PREFIX, ldm_text.hf_clip_from_ldm, ldm_text.hf_clip_to_ldm),
    "open_clip": (ldm_text.OPEN_CLIP_PREFIX, ldm_text.open_clip_from_ldm, ldm_text.open_clip_to_ldm),
}


def detect_family(state_dict: dict[str, torch.Tensor]) -> str:
    """ "sd2" when the text encoder is in OpenCLIP layout (``cond_stage_model.model.``), else "sd1"."""
    for name, spec in FAMILIES.items():
        prefix = TEXT_LAYOUTS[spec.te_layout][0]
        if spec.te_layout != "hf_clip" and any(k.startswith(prefix) for k in state_dict):
            return name
    return "sd1"


def _strip(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def _convert(state: dict, table: dict[str, str], what: str) -> dict[str, torch.Tensor]:
    out, unknown = {}, []
    for key, value in state.items():
        new_key = ldm_keys.rename_key(key, table)
        if new_key is None:
            unknown.append(key)
        else:
            out[new_key] = value
    if unknown:
        logger.debug("%s: %d keys not converted, e.g. %s", what, len(unknown), unknown[:3])
    return out


def unet_from_ldm(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """LDM UNet keys (``model.diffusion_model.`` stripped) -> diffusers UNet2DConditionModel keys."""
    return _convert(state, ldm_keys.invert(ldm_keys.unet_prefix_table(config)), "unet")


def unet_to_ldm(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """diffusers UNet keys -> LDM keys (without prefix)."""
    return _convert(state, ldm_keys.unet_prefix_table(config), "unet")


def vae_from_ldm(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """LDM VAE keys (``first_stage_model.`` stripped) -> diffusers AutoencoderKL keys."""
    out = {}
    for key, value in state.items():
        if ldm_keys.VAE_ATTN_CONV_KEY.search("." + key) and value.ndim == 4:
            value = value[:, :, 0, 0]
        out[key] = value
    return _convert(out, ldm_keys.invert(ldm_keys.vae_prefix_table(config)), "vae")


def vae_to_ldm(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL keys -> LDM keys (without prefix); attention Linear -> 1x1 conv."""
    out = _convert(state, ldm_keys.vae_prefix_table(config), "vae")
    for key, value in out.items():
        if ldm_keys.VAE_ATTN_CONV_KEY.search("." + key) and value.ndim == 2:
            out[key] = value[:, :, None, None]
    return out


def _clean_config(config) -> dict:
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


def configs_from_metadata(metadata: dict[str, str], keys: dict[str, str]) -> dict | None:
    """The part configs our single files carry as JSON (``keys``: part -> metadata key), with the family;
    None when the file has none (a foreign file: configs are inferred from the tensors)."""
    if not metadata or META_UNET not in metadata:
        return None
    try:
        configs = {part: json.loads(metadata[key]) for part, key in keys.items()}
        return {"family": metadata[META_FAMILY], **configs, "inferred": False}
    except (KeyError, json.JSONDecodeError) as error:
        raise ModelLoadError(
            f"The file's sdtrain.* metadata is incomplete or not valid JSON ({error}). Re-save the model "
            "or remove the sdtrain.* metadata keys so the configs are inferred from the tensors."
        ) from error


def _configs_from_metadata(metadata: dict[str, str]) -> dict | None:
    return configs_from_metadata(metadata, {"unet": META_UNET, "vae": META_VAE, "text_encoder": META_TEXT})


def split_single_file(
    state_dict: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> tuple[dict, dict, dict, dict]:
    """Split an LDM single file into diffusers (unet_sd, vae_sd, te_sd, configs).

    ``configs`` = {"family", "unet", "vae", "text_encoder", "inferred"}; configs come from our
    ``sdtrain.*`` metadata when present, otherwise they are inferred from the tensors.
    Raises ModelLoadError when a part is missing.
    """
    unet_ldm = _strip(state_dict, UNET_PREFIX)
    vae_ldm = _strip(state_dict, VAE_PREFIX)
    if not unet_ldm:
        raise ModelLoadError("no model.diffusion_model.* keys (UNet)")
    if not vae_ldm:
        raise ModelLoadError("no first_stage_model.* keys (VAE)")
    configs = _configs_from_metadata(metadata or {})
    family = configs["family"] if configs else detect_family(state_dict)
    spec = get_family(family)
    prefix, from_ldm, _ = TEXT_LAYOUTS[spec.te_layout]
    te_sd = from_ldm(state_dict)
    if not te_sd:
        raise ModelLoadError(f"no {prefix}* keys (text encoder)")
    if configs is None:
        te_sd = _drop_unused_open_clip_layer(te_sd, spec.te_layout)
        configs = {
            "family": family,
            "unet": infer_unet_config(unet_ldm, spec.unet_heads),
            "vae": infer_vae_config(vae_ldm),
            "text_encoder": ldm_text.infer_clip_config(te_sd, spec.text_hidden_act),
            "inferred": True,
        }
    unet_sd = unet_from_ldm(unet_ldm, configs["unet"])
    vae_sd = vae_from_ldm(vae_ldm, configs["vae"])
    return unet_sd, vae_sd, te_sd, configs


#: OpenCLIP ViT-H text towers have 24 blocks; SD 2.x conditions on the penultimate one (the LDM config's
#: layer="penultimate"), which is why diffusers' SD2 text encoder has 23 layers.
OPEN_CLIP_H_LAYERS = 24


def _drop_unused_open_clip_layer(te_sd: dict, layout: str) -> dict:
    """A foreign SD2 file carries all 24 blocks; drop the last so the model matches diffusers' SD2."""
    if layout != "open_clip":
        return te_sd
    layers = {int(k.split(".")[2]) for k in te_sd if k.startswith("encoder.layers.")}
    if len(layers) != OPEN_CLIP_H_LAYERS:
        return te_sd
    last = f"encoder.layers.{OPEN_CLIP_H_LAYERS - 1}."
    return {k: v for k, v in te_sd.items() if not k.startswith(last)}


def to_single_file(unet, vae, text_encoder, family: str) -> dict[str, torch.Tensor]:
    """diffusers UNet + AutoencoderKL + CLIPTextModel -> one LDM-layout state dict.

    Tensors keep their dtype; cast before calling to save in fp16/bf16.
    """
    spec = get_family(family)
    out = {}
    for key, value in unet_to_ldm(unet.state_dict(), dict(unet.config)).items():
        out[UNET_PREFIX + key] = value
    for key, value in vae_to_ldm(vae.state_dict(), dict(vae.config)).items():
        out[VAE_PREFIX + key] = value
    out.update(TEXT_LAYOUTS[spec.te_layout][2](text_encoder.state_dict()))
    return out


def single_file_metadata(unet, vae, text_encoder, family: str) -> dict[str, str]:
    """The ``sdtrain.*`` metadata strings that let :func:`split_single_file` reload exactly."""
    te_config = {k: v for k, v in text_encoder.config.to_dict().items() if not k.startswith("_")}
    te_config = {k: v for k, v in te_config.items() if k not in ("architectures", "transformers_version")}
    return {
        META_FAMILY: family,
        META_UNET: json.dumps(_clean_config(unet.config)),
        META_VAE: json.dumps(_clean_config(vae.config)),
        META_TEXT: json.dumps(te_config, default=str),
    }
