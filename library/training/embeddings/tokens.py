"""A new token learnt on a loaded model: its rows (one Parameter per text encoder), prompt rewriting, files."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch

from library.config.options_ti import token_strings
from library.errors import ModelLoadError

logger = logging.getLogger(__name__)


class TokenRows(torch.nn.Module):
    """The trained rows of one new token, ``rows[part]`` (num_vectors, D) float32 — the same Parameters the
    text encoders' :class:`~library.models.added_tokens.AddedTokenEmbedding` read."""

    def __init__(self, rows: dict[str, torch.nn.Parameter]):
        super().__init__()
        self.rows = torch.nn.ParameterDict(rows)


class NewToken:
    """``token_string`` (written as ``num_vectors`` tokens ``tok tok1 …``) added to ``model``'s tokenizers and
    text encoders, starting from ``init_word``'s embeddings."""

    def __init__(self, model, token_string: str, num_vectors: int, init_word: str | None):
        self.model = model
        self.token = token_string
        self.tokens = token_strings(token_string, num_vectors)
        self.embedding_keys = dict(model.adapter.embedding_keys)
        self.module = TokenRows(model.adapter.add_tokens(model, self.tokens, init_word))
        logger.info("new token %r: %d vector(s) per text encoder (%s), starting from %s", token_string,
                    num_vectors, ", ".join(self.embedding_keys.values()),
                    repr(init_word) if init_word else "the mean embedding")

    @property
    def rows(self) -> dict[str, torch.nn.Parameter]:
        return dict(self.module.rows.items())

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.module.parameters())

    def load(self, vectors: dict[str, torch.Tensor], source: str) -> None:
        """Continue from saved vectors ({part: (n, D)}); a count or width that differs is a ``ModelLoadError``."""
        for part, rows in self.rows.items():
            saved = vectors[part]
            if tuple(saved.shape) != tuple(rows.shape):
                raise ModelLoadError(
                    f"{source}: its {self.embedding_keys[part]} vectors have the shape {tuple(saved.shape)}, but this "
                    f"run's token {self.token!r} has {tuple(rows.shape)} (num_vectors_per_token = {rows.shape[0]}, "
                    f"width {rows.shape[1]}). Set num_vectors_per_token = {saved.shape[0]} or use an embedding of "
                    f"this model family."
                )
            with torch.no_grad():
                rows.copy_(saved.to(rows.device, rows.dtype))
        logger.info("token %r continues from %s", self.token, source)

    def detached_rows(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """{part: a CPU copy of the rows} in ``dtype`` (None: float32)."""
        return {part: rows.detach().to("cpu", dtype or rows.dtype, copy=True) for part, rows in self.rows.items()}

    def expand(self, prompts: Sequence[str]) -> list[str]:
        """Prompts with ``tok`` written as its ``num_vectors`` tokens (``tok tok1 tok2``), as sd-scripts rewrites
        captions and sample prompts."""
        if len(self.tokens) == 1:
            return list(prompts)
        words = " ".join(self.tokens)
        return [prompt.replace(self.token, words) for prompt in prompts]

    def install(self, transform: Callable[[list[str]], list[str]] | None = None) -> None:
        """Let the model's prompt encoding see the token: ``transform`` (e.g. templates) first, then :meth:`expand`."""
        if transform is None:
            self.model.extras["prompt_transform"] = self.expand
        else:
            self.model.extras["prompt_transform"] = lambda prompts: self.expand(transform(prompts))

    def set_trainable(self, trainable: bool) -> None:
        for param in self.parameters():
            param.requires_grad_(trainable)
            if not trainable:
                param.grad = None
