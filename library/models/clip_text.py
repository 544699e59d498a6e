"""CLIP text encoding shared by the families: 75-token chunks, clip_skip, pooled outputs.

sd-scripts and the webui encode long captions as 75-token chunks, each wrapped in BOS … EOS and padded
to 77, encoded separately and concatenated; ``max_token_length`` 150 / 225 gives 2 / 3 chunks.
"""

from __future__ import annotations

import torch

from library.errors import ConfigError

CHUNK_TOKENS = 75  # caption tokens per 77-token window (BOS + 75 + EOS)
WINDOW = CHUNK_TOKENS + 2


def tokenize_chunks(tokenizer, captions: list[str], max_token_length: int | None,
                    pad: bool = True) -> torch.Tensor:
    """Token ids, LongTensor (B, n_chunks * 77).

    ``max_token_length`` None/75: one BOS + 75 + EOS window, padded. 150/225: the caption is tokenized
    up to that many tokens, split into 75-token chunks, each wrapped in BOS ... EOS and padded to 77 with
    the tokenizer's pad token (SD1 EOS, OpenCLIP "!"), as sd-scripts and the webui do. ``pad`` False
    (DreamBooth's ``no_token_padding``): one window, padded only to the batch's longest caption, giving
    (B, L) with L <= 77.
    """
    if not pad:
        return _tokenize_unpadded(tokenizer, captions, max_token_length)
    max_tokens = max_token_length or CHUNK_TOKENS
    if max_tokens % CHUNK_TOKENS != 0 or max_tokens <= 0:
        raise ConfigError(f"max_token_length must be 75, 150 or 225, got {max_token_length}.")
    n_chunks = max_tokens // CHUNK_TOKENS
    body_ids = tokenizer(list(captions), add_special_tokens=False, truncation=False).input_ids
    rows = []
    for ids in body_ids:
        ids = ids[:max_tokens]
        row = []
        for c in range(n_chunks):
            body = ids[c * CHUNK_TOKENS : (c + 1) * CHUNK_TOKENS]
            padding = [tokenizer.pad_token_id] * (CHUNK_TOKENS - len(body))
            row += [tokenizer.bos_token_id, *body, tokenizer.eos_token_id, *padding]
        rows.append(row)
    return torch.tensor(rows, dtype=torch.long)


def _tokenize_unpadded(tokenizer, captions: list[str], max_token_length: int | None) -> torch.Tensor:
    """BOS + up to 75 tokens + EOS per caption, padded to the longest row: LongTensor (B, L <= 77)."""
    if max_token_length not in (None, CHUNK_TOKENS):
        raise ConfigError(
            f"no_token_padding works with 75-token captions only, not max_token_length={max_token_length}."
        )
    body_ids = tokenizer(list(captions), add_special_tokens=False, truncation=False).input_ids
    rows = [[tokenizer.bos_token_id, *ids[:CHUNK_TOKENS], tokenizer.eos_token_id] for ids in body_ids]
    longest = max(len(row) for row in rows)
    return torch.tensor([row + [tokenizer.pad_token_id] * (longest - len(row)) for row in rows], dtype=torch.long)


def _windows(input_ids: torch.Tensor) -> tuple[int, int, int]:
    """(batch, length, window) of chunked ids; an unpadded row shorter than 77 is one window."""
    batch, length = input_ids.shape
    window = length if length < WINDOW else WINDOW
    if length % window != 0:
        raise ValueError(f"input_ids length {length} is not a multiple of {WINDOW}")
    return batch, length, window


def check_clip_skip(text_encoder, clip_skip: int | None) -> None:
    layers = text_encoder.config.num_hidden_layers
    if clip_skip is not None and not 1 <= clip_skip <= layers:
        raise ConfigError(f"clip_skip={clip_skip} is out of range: this text encoder has {layers} layers.")


def encode_last_layers(text_encoder, input_ids: torch.Tensor, clip_skip: int | None) -> torch.Tensor:
    """SD1/SD2 states (B, n_chunks * 77, hidden): the last layer, or with ``clip_skip`` n > 1 the n-th last
    hidden layer followed by the final layer norm (SD's convention); chunks concatenated."""
    batch, length, window = _windows(input_ids)
    check_clip_skip(text_encoder, clip_skip)
    chunks = input_ids.reshape(batch * (length // window), window).to(text_encoder.device)
    if clip_skip is None or clip_skip == 1:
        states = text_encoder(chunks).last_hidden_state
    else:
        out = text_encoder(chunks, output_hidden_states=True)
        states = text_encoder.final_layer_norm(out.hidden_states[-clip_skip])
    return states.reshape(batch, length, states.shape[-1])


def encode_penultimate(text_encoder, input_ids: torch.Tensor,
                       with_pooled: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """SDXL's encoding: the penultimate hidden layer without the final norm, (B, n_chunks * 77, hidden),
    and with ``with_pooled`` the projected pooled output of the first chunk (B, projection_dim), as
    sd-scripts and diffusers' SDXL pipeline take it (``text_embeds`` of CLIPTextModelWithProjection)."""
    batch, length, window = _windows(input_ids)
    chunks = input_ids.reshape(batch * (length // window), window).to(text_encoder.device)
    out = text_encoder(chunks, output_hidden_states=True)
    states = out.hidden_states[-2]
    states = states.reshape(batch, length, states.shape[-1])
    pooled = None
    if with_pooled:
        pooled = out.text_embeds.reshape(batch, length // window, -1)[:, 0]
    return states, pooled
