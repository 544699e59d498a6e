"""Static facts of the SD1 and SD2 families (their LDM layout, tokenizer padding, attention heads).

The SD family module (``sd.py``) wraps each :class:`FamilySpec` in a :class:`~library.models.family.ModelFamily`;
the LDM converter and the tiny-model builder read these fields instead of branching on the family name.
Other families (SDXL) keep their facts in their own module.
"""

from __future__ import annotations

from dataclasses import dataclass

from library.errors import ConfigError


def heads_eight(channels: int) -> int:
    """SD1 rule: every attention layer has 8 heads, whatever its width."""
    return 8


def heads_dim64(channels: int) -> int:
    """SD2 rule: 64 channels per head (at least one head for tiny widths)."""
    return max(1, channels // 64)


@dataclass(frozen=True)
class FamilySpec:
    """Static facts about one model family.

    Attributes:
        name: "sd1" / "sd2".
        pad_token: token the tokenizer pads with after EOS ("<|endoftext|>" SD1, "!" SD2).
        te_layout: single-file text-encoder layout: "hf_clip" (``cond_stage_model.transformer.``)
            or "open_clip" (``cond_stage_model.model.``).
        use_linear_projection: SpatialTransformer proj_in/proj_out are Linear (SD2) or 1x1 Conv (SD1).
        unet_heads: rule channels -> number of attention heads, used when a config is inferred.
        text_hidden_act: CLIP MLP activation ("quick_gelu" SD1, "gelu" SD2).
        default_prediction_type: prediction type of the built-in tiny model of this family.
        base_model_version: the ``ss_base_model_version`` value sd-scripts writes.
        modelspec_architecture: the ``modelspec.architecture`` prefix.
    """

    name: str
    pad_token: str
    te_layout: str
    use_linear_projection: bool
    unet_heads: object
    text_hidden_act: str
    default_prediction_type: str
    base_model_version: str
    modelspec_architecture: str


FAMILIES: dict[str, FamilySpec] = {
    "sd1": FamilySpec(
        name="sd1",
        pad_token="<|endoftext|>",
        te_layout="hf_clip",
        use_linear_projection=False,
        unet_heads=heads_eight,
        text_hidden_act="quick_gelu",
        default_prediction_type="epsilon",
        base_model_version="sd_v1",
        modelspec_architecture="stable-diffusion-v1",
    ),
    "sd2": FamilySpec(
        name="sd2",
        pad_token="!",
        te_layout="open_clip",
        use_linear_projection=True,
        unet_heads=heads_dim64,
        text_hidden_act="gelu",
        default_prediction_type="v_prediction",
        base_model_version="sd_v2",
        modelspec_architecture="stable-diffusion-v2",
    ),
}


def get_family(name: str) -> FamilySpec:
    """Return the spec of ``name`` or raise a ConfigError listing the known families."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ConfigError(
            f"Unknown model family {name!r}. Known families: {', '.join(sorted(FAMILIES))}."
        ) from None


def make_noise_scheduler(prediction_type: str = "epsilon"):
    """DDPM noise schedule with Stable Diffusion's training values.

    1000 steps, ``scaled_linear`` betas from 0.00085 to 0.012, no sample clipping;
    ``prediction_type`` is "epsilon" or "v_prediction".
    """
    from diffusers import DDPMScheduler

    if prediction_type not in ("epsilon", "v_prediction"):
        raise ConfigError(f"prediction_type must be 'epsilon' or 'v_prediction', got {prediction_type!r}.")
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )
