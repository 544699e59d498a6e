"""``BaseModel``: the loaded base model as named parts, and the family operations on it."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch

from library.models import clip_text
from library.models.families import FamilySpec, get_family
from library.models.family import Conditioning, ModelFamily, get_model_family


@dataclass
class BaseModel:
    """The modules of one base model by part name, its tokenizers and the noise schedule.

    ``family`` is the family's name ("sd1", "sd2", "sdxl"); ``parts`` maps part names to modules
    (``unet``, ``vae`` and the family's text parts: ``text_encoder`` for SD1/SD2, ``text_encoder_1`` /
    ``text_encoder_2`` for SDXL); ``tokenizers`` maps each text part to its tokenizer; ``name`` is the
    file or folder name (for metadata).
    """

    family: str
    parts: dict[str, torch.nn.Module]
    tokenizers: dict[str, object]
    noise_scheduler: object
    v_parameterization: bool
    name: str
    #: free slots families use (e.g. SDXL's cached text-encoder outputs); not saved
    extras: dict = field(default_factory=dict)

    @functools.cached_property
    def adapter(self) -> ModelFamily:
        """The :class:`ModelFamily` of this model (looked up once: the step asks for it every time)."""
        return get_model_family(self.family)

    @property
    def spec(self) -> FamilySpec:
        return get_family(self.family)

    @property
    def unet(self) -> torch.nn.Module:
        return self.parts["unet"]

    @property
    def vae(self) -> torch.nn.Module:
        return self.parts["vae"]

    @property
    def text_parts(self) -> tuple[str, ...]:
        return self.adapter.text_parts

    @property
    def text_encoders(self) -> dict[str, torch.nn.Module]:
        """{text part: encoder}, in the family's order."""
        return {name: self.parts[name] for name in self.text_parts}

    @property
    def text_encoder(self) -> torch.nn.Module:
        """The first (for SD1/SD2 the only) text encoder."""
        return self.parts[self.text_parts[0]]

    @property
    def tokenizer(self):
        """The first (for SD1/SD2 the only) tokenizer."""
        return self.tokenizers[self.text_parts[0]]

    @property
    def latent_scale(self) -> float:
        """VAE latent scaling factor (0.18215 for SD1/SD2, 0.13025 for SDXL)."""
        return float(self.vae.config.scaling_factor)

    # --- single-encoder operations (SD1/SD2; SDXL goes through encode_prompt) ---
    def tokenize(self, captions: list[str], max_token_length: int | None = None, pad: bool = True) -> torch.Tensor:
        """Token ids of the first tokenizer, LongTensor (B, n_chunks * 77); see :func:`clip_text.tokenize_chunks`."""
        return clip_text.tokenize_chunks(self.tokenizer, captions, max_token_length, pad)

    def encode_tokens(self, input_ids: torch.Tensor, clip_skip: int | None = None) -> torch.Tensor:
        """First text encoder's states (B, n_chunks * 77, hidden) as SD1/SD2 use them (clip_skip aware)."""
        return clip_text.encode_last_layers(self.text_encoder, input_ids, clip_skip)

    # --- the family's operations ---
    def tokenize_prompt(self, captions: list[str], max_token_length: int | None = None,
                        pad: bool = True) -> dict[str, torch.Tensor]:
        """Token ids per text part; ``extras["prompt_transform"]`` (new tokens of textual inversion) rewrites the
        captions first."""
        transform = self.extras.get("prompt_transform")
        if transform is not None:
            captions = transform(list(captions))
        return self.adapter.tokenize(self, captions, max_token_length, pad)

    def encode_prompt(self, captions: list[str], clip_skip: int | None = None, max_token_length: int | None = None,
                      pad: bool = True, weighted: bool = False) -> Conditioning:
        """The conditioning (hidden states, pooled output) of captions, as the family's denoiser takes it.

        ``weighted``: the captions are in the webui's attention syntax (``(tag:1.3)``, ``[tag]``); their
        tokens' states are weighted and mean-restored (:mod:`library.text.weighting`; always padded)."""
        if weighted:
            transform = self.extras.get("prompt_transform")
            captions = captions if transform is None else transform(list(captions))
            tokens, weights = self.adapter.tokenize_weighted(self, captions, max_token_length)
            return self.adapter.encode(self, tokens, clip_skip, weights)
        return self.adapter.encode(self, self.tokenize_prompt(captions, max_token_length, pad), clip_skip)

    @property
    def latent_shift(self) -> float:
        """VAE latent shift factor (FLUX's 0.1159; 0 for the SD VAEs, whose config has none)."""
        return float(getattr(self.vae.config, "shift_factor", None) or 0.0)

    def encode_images(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Latents (B, C, H/8, W/8) = (a sample of the VAE posterior − ``latent_shift``) x ``latent_scale``.

        ``pixels`` is (B, 3, H, W) in [-1, 1]; ``generator`` makes the sample reproducible.
        """
        posterior = self.vae.encode(pixels.to(self.vae.device, self.vae.dtype)).latent_dist
        sample = posterior.sample(generator=generator)
        shift = self.latent_shift
        return (sample - shift) * self.latent_scale if shift else sample * self.latent_scale

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Pixels (B, 3, 8h, 8w) in about [-1, 1] from scaled latents (B, C, h, w)."""
        latents = latents.to(self.vae.device, self.vae.dtype) / self.latent_scale + self.latent_shift
        return self.vae.decode(latents).sample
