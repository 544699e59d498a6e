"""``BaseModel``: the loaded base model and the family-specific text/latent operations on it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from library.errors import ConfigError
from library.models.families import FamilySpec, get_family

CHUNK_TOKENS = 75  # caption tokens per 77-token window (BOS + 75 + EOS)


@dataclass
class BaseModel:
    """Components of one Stable Diffusion base model plus family facts.

    ``family`` is "sd1" or "sd2"; ``name`` is the file or folder name (for metadata).
    """

    family: str
    tokenizer: object
    text_encoder: torch.nn.Module
    vae: torch.nn.Module
    unet: torch.nn.Module
    noise_scheduler: object
    v_parameterization: bool
    name: str

    @property
    def spec(self) -> FamilySpec:
        return get_family(self.family)

    @property
    def latent_scale(self) -> float:
        """VAE latent scaling factor (0.18215 for SD1/SD2)."""
        return float(self.vae.config.scaling_factor)

    def tokenize(self, captions: list[str], max_token_length: int | None = None, pad: bool = True) -> torch.Tensor:
        """Token ids, LongTensor (B, n_chunks * 77).

        ``max_token_length`` None/75: one BOS + 75 + EOS window, padded. 150/225: the caption is
        tokenized up to that many tokens, split into 75-token chunks, each wrapped in BOS ... EOS and
        padded to 77 with the family's pad token (SD1 EOS, SD2 "!"), as sd-scripts and the webui do.
        ``pad`` False (DreamBooth's ``no_token_padding``): one window, padded only to the batch's longest
        caption, giving (B, L) with L <= 77.
        """
        # --- no_token_padding (DreamBooth) ---
        if not pad:
            return self._tokenize_unpadded(captions, max_token_length)
        # --- end no_token_padding ---
        max_tokens = max_token_length or CHUNK_TOKENS
        if max_tokens % CHUNK_TOKENS != 0 or max_tokens <= 0:
            raise ConfigError(f"max_token_length must be 75, 150 or 225, got {max_token_length}.")
        n_chunks = max_tokens // CHUNK_TOKENS
        tok = self.tokenizer
        body_ids = tok(list(captions), add_special_tokens=False, truncation=False).input_ids
        rows = []
        for ids in body_ids:
            ids = ids[:max_tokens]
            row = []
            for c in range(n_chunks):
                body = ids[c * CHUNK_TOKENS : (c + 1) * CHUNK_TOKENS]
                padding = [tok.pad_token_id] * (CHUNK_TOKENS - len(body))
                row += [tok.bos_token_id, *body, tok.eos_token_id, *padding]
            rows.append(row)
        return torch.tensor(rows, dtype=torch.long)

    def encode_tokens(self, input_ids: torch.Tensor, clip_skip: int | None = None) -> torch.Tensor:
        """Text-encoder states (B, n_chunks * 77, hidden) for ids from :meth:`tokenize`.

        Each 77-token chunk goes through the encoder separately; ``clip_skip`` n > 1 takes the n-th
        last hidden layer then the final layer norm (SD's convention); chunks are concatenated.
        """
        batch, length = input_ids.shape
        # --- no_token_padding (DreamBooth): one unpadded window shorter than 77 ---
        window = length if length < 77 else 77
        # --- end no_token_padding ---
        if length % window != 0:
            raise ValueError(f"input_ids length {length} is not a multiple of 77")
        layers = self.text_encoder.config.num_hidden_layers
        if clip_skip is not None and not 1 <= clip_skip <= layers:
            raise ConfigError(
                f"clip_skip={clip_skip} is out of range: this text encoder has {layers} layers."
            )
        chunks = input_ids.reshape(batch * (length // window), window).to(self.text_encoder.device)
        if clip_skip is None or clip_skip == 1:
            states = self.text_encoder(chunks).last_hidden_state
        else:
            out = self.text_encoder(chunks, output_hidden_states=True)
            states = self.text_encoder.final_layer_norm(out.hidden_states[-clip_skip])
        return states.reshape(batch, length, states.shape[-1])

    # --- no_token_padding (DreamBooth) ---
    def _tokenize_unpadded(self, captions: list[str], max_token_length: int | None) -> torch.Tensor:
        """BOS + up to 75 tokens + EOS per caption, padded to the longest row: LongTensor (B, L <= 77)."""
        if max_token_length not in (None, CHUNK_TOKENS):
            raise ConfigError(
                f"no_token_padding works with 75-token captions only, not max_token_length={max_token_length}."
            )
        tok = self.tokenizer
        body_ids = tok(list(captions), add_special_tokens=False, truncation=False).input_ids
        rows = [[tok.bos_token_id, *ids[:CHUNK_TOKENS], tok.eos_token_id] for ids in body_ids]
        longest = max(len(row) for row in rows)
        return torch.tensor([row + [tok.pad_token_id] * (longest - len(row)) for row in rows], dtype=torch.long)

    # --- end no_token_padding ---

    def encode_images(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Latents (B, 4, H/8, W/8) = a sample of the VAE posterior x ``latent_scale``.

        ``pixels`` is (B, 3, H, W) in [-1, 1]; ``generator`` makes the sample reproducible.
        """
        posterior = self.vae.encode(pixels.to(self.vae.device, self.vae.dtype)).latent_dist
        return posterior.sample(generator=generator) * self.latent_scale

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Pixels (B, 3, 8h, 8w) in about [-1, 1] from scaled latents (B, 4, h, w)."""
        return self.vae.decode(latents.to(self.vae.device, self.vae.dtype) / self.latent_scale).sample
