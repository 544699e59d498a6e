"""New tokens with embedding rows of their own, for textual inversion and pivotal tuning.

The base model's token embedding matrix is never resized nor written to: each text encoder's input
embedding is wrapped in an :class:`AddedTokenEmbedding` that looks the new ids up in a small trainable
matrix (``rows``, float32, one row per new token) and every other id in the untouched base matrix. So the
rest of the vocabulary is the base model's bit for bit, and only ``rows`` receives gradients and optimizer
state (a few vectors instead of the 49,408 x 768 matrix sd-scripts keeps and restores after every step).
"""

from __future__ import annotations

import copy

import torch

from library.errors import ConfigError


class AddedTokenEmbedding(torch.nn.Module):
    """``base`` (a frozen ``nn.Embedding``) plus ``rows`` (n, D) for the ids ``first_id`` … ``first_id + n - 1``.

    Input ids (any shape) -> embeddings (*shape, D) in ``base``'s dtype.
    """

    def __init__(self, base: torch.nn.Embedding, rows: torch.nn.Parameter, first_id: int):
        super().__init__()
        self.base = base
        self.rows = rows
        self.first_id = first_id

    @property
    def weight(self) -> torch.Tensor:
        """The base matrix (what code that reads ``get_input_embeddings().weight`` expects: its dtype, device)."""
        return self.base.weight

    @property
    def num_embeddings(self) -> int:
        return max(self.base.num_embeddings, self.first_id + self.rows.shape[0])

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        added = input_ids >= self.first_id
        out = self.base(torch.where(added, torch.zeros_like(input_ids), input_ids))
        if not bool(added.any()):
            return out
        index = (input_ids - self.first_id).clamp(0, self.rows.shape[0] - 1)
        new = self.rows.to(out.dtype)[index]
        return torch.where(added.unsqueeze(-1), new, out)


def base_embedding(text_encoder) -> torch.nn.Embedding:
    """The base token embedding of a CLIP text encoder (unwrapping an earlier :class:`AddedTokenEmbedding`)."""
    embedding = text_encoder.get_input_embeddings()
    return embedding.base if isinstance(embedding, AddedTokenEmbedding) else embedding


def add_clip_tokens(model, parts, tokens: list[str], init_word: str | None) -> dict[str, torch.nn.Parameter]:
    """Add ``tokens`` to the tokenizers of the text ``parts`` of ``model`` and give each part's text encoder
    new embedding rows for them; returns {part: rows (len(tokens), D) float32 Parameter}.

    Rows start as the embeddings of ``init_word``'s tokens (repeated or cut to the number of tokens, as
    sd-scripts does), or as the mean of the whole embedding matrix without ``init_word``. The tokenizers
    are replaced by copies (the built-in ones are shared, cached objects).
    """
    rows_by_part = {}
    for part in parts:
        tokenizer = copy.deepcopy(model.tokenizers[part])
        added = tokenizer.add_tokens(list(tokens))
        if added != len(tokens):
            raise ConfigError(
                f"token_string {tokens[0]!r}: the tokenizer already has the token(s) {', '.join(tokens)} as added "
                f"tokens. Choose another token_string (a made-up word such as 'sksdog')."
            )
        ids = tokenizer.convert_tokens_to_ids(list(tokens))
        if ids != list(range(ids[0], ids[0] + len(ids))):
            raise ConfigError(f"token_string {tokens[0]!r}: the new tokens got ids {ids}, not consecutive ones.")
        encoder = model.parts[part]
        base = base_embedding(encoder)
        weight = base.weight.detach().to(torch.float32)
        if init_word:
            init_ids = tokenizer.encode(init_word, add_special_tokens=False)
            if not init_ids:
                raise ConfigError(f"init_word {init_word!r} gives no tokens; give a word such as 'dog'.")
            start = torch.stack([weight[init_ids[i % len(init_ids)]] for i in range(len(tokens))])
        else:
            start = weight.mean(dim=0, keepdim=True).expand(len(tokens), -1)
        rows = torch.nn.Parameter(start.clone().contiguous())
        encoder.set_input_embeddings(AddedTokenEmbedding(base, rows, ids[0]))
        model.tokenizers[part] = tokenizer
        rows_by_part[part] = rows
    return rows_by_part
