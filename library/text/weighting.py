"""Weighted prompts as token ids with one weight per token, and the weighting of the encoders' states.

The webui's "Original" emphasis (``modules/sd_emphasis.py``), which sd-scripts' ``weighted_captions`` follows:
each token takes the weight of the attention piece it came from (BOS, EOS and padding 1.0), the text
encoder runs on the plain tokens, then its hidden states are multiplied per token and rescaled so that their
mean is what it was: ``z' = z·w · mean(z) / mean(z·w)``. The mean is taken per sample over each 77-token
CLIP window (the webui encodes a prompt one window at a time), or over the whole sequence for T5.
"""

from __future__ import annotations

import logging

import torch

from library.text.attention import is_break, parse_prompt_attention

logger = logging.getLogger(__name__)

#: caption tokens per 77-token CLIP window (BOS + 75 + EOS), as in ``library.models.clip_text``
CHUNK_TOKENS = 75


def weighted_pieces(tokenizer, captions: list[str]) -> list[list[tuple[list[int], float] | None]]:
    """Per caption, its attention pieces as (token ids without BOS/EOS, weight); ``None`` marks a BREAK.

    Each piece is tokenized on its own, as the webui and sd-scripts do, so ``a (cat:1.2)`` gives the tokens
    of ``a `` and of ``cat``."""
    parsed = [parse_prompt_attention(caption) for caption in captions]
    texts = [piece[0] for pieces in parsed for piece in pieces if piece[0] and not is_break(piece)]
    ids = iter(tokenizer(texts, add_special_tokens=False, truncation=False).input_ids if texts else [])
    return [[None if is_break(p) else ((next(ids) if p[0] else []), p[1]) for p in pieces] for pieces in parsed]


def clip_weighted_rows(tokenizer, captions: list[str], max_token_length: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids LongTensor (B, n_chunks·77) and weights FloatTensor (B, n_chunks·77) of weighted captions.

    The layout of :func:`library.models.clip_text.tokenize_chunks` (each 75-token chunk wrapped in BOS … EOS
    and padded with the tokenizer's pad token; ``max_token_length`` 75/150/225 gives 1/2/3 chunks), and a
    ``BREAK`` pads the current chunk and starts the next, as in the webui. Tokens past the last chunk are cut."""
    n_chunks = (max_token_length or CHUNK_TOKENS) // CHUNK_TOKENS
    id_rows, weight_rows = [], []
    cut = 0
    for pieces in weighted_pieces(tokenizer, captions):
        chunks: list[list[tuple[int, float]]] = [[]]
        for piece in pieces:
            if piece is None:
                chunks.append([])
                continue
            ids, weight = piece
            for token in ids:
                if len(chunks[-1]) == CHUNK_TOKENS:
                    chunks.append([])
                chunks[-1].append((token, weight))
        cut += sum(len(c) for c in chunks[n_chunks:])
        chunks = (chunks + [[] for _ in range(n_chunks)])[:n_chunks]
        ids_row: list[int] = []
        weights_row: list[float] = []
        for chunk in chunks:
            padding = CHUNK_TOKENS - len(chunk)
            ids_row += [tokenizer.bos_token_id, *(t for t, _ in chunk), tokenizer.eos_token_id,
                        *[tokenizer.pad_token_id] * padding]
            weights_row += [1.0, *(w for _, w in chunk), 1.0, *[1.0] * padding]
        id_rows.append(ids_row)
        weight_rows.append(weights_row)
    if cut:
        logger.debug("weighted prompt cut: %d tokens past max_token_length", cut)
    return torch.tensor(id_rows, dtype=torch.long), torch.tensor(weight_rows, dtype=torch.float32)


def sequence_weighted_rows(tokenizer, captions: list[str], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (B, length) and weights (B, length) for an encoder without windows (T5): the pieces' tokens,
    cut to ``length - 1``, then EOS, then padding — the layout of ``tokenizer(..., max_length=length,
    padding="max_length", truncation=True)``. ``BREAK`` has no meaning here and is dropped."""
    id_rows, weight_rows = [], []
    for pieces in weighted_pieces(tokenizer, captions):
        tokens = [(t, w) for piece in pieces if piece is not None for t in piece[0] for w in (piece[1],)]
        tokens = tokens[: length - 1] + [(tokenizer.eos_token_id, 1.0)]
        padding = length - len(tokens)
        id_rows.append([t for t, _ in tokens] + [tokenizer.pad_token_id] * padding)
        weight_rows.append([w for _, w in tokens] + [1.0] * padding)
    return torch.tensor(id_rows, dtype=torch.long), torch.tensor(weight_rows, dtype=torch.float32)


def apply_token_weights(hidden: torch.Tensor, weights: torch.Tensor | None, window: int | None = None) -> torch.Tensor:
    """``hidden`` (B, L, D) multiplied per token by ``weights`` (B, L), each sample's mean restored over every
    ``window`` tokens (None: the whole sequence): ``z·w · mean(z) / mean(z·w)``, in float32, returned in
    ``hidden``'s dtype. All weights 1 give ``hidden`` back unchanged. ``weights`` None: ``hidden`` as is.
    A window whose weighted mean is exactly 0 is not rescaled."""
    if weights is None:
        return hidden
    batch, length, dim = hidden.shape
    if weights.shape != (batch, length):
        raise ValueError(f"token weights {tuple(weights.shape)} do not match hidden states {tuple(hidden.shape)}")
    window = window if window and length % window == 0 else length
    states = hidden.float().reshape(batch, length // window, window, dim)
    scaled = states * weights.to(states.device, torch.float32).reshape(batch, length // window, window, 1)
    original = states.mean(dim=(2, 3), keepdim=True)
    new = scaled.mean(dim=(2, 3), keepdim=True)
    # a window whose weighted mean is exactly 0 keeps its scale (the webui would divide by zero there)
    factor = torch.where(new == 0, torch.ones_like(new), original / torch.where(new == 0, torch.ones_like(new), new))
    return (scaled * factor).reshape(batch, length, dim).to(hidden.dtype)
