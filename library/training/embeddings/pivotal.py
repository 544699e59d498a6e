"""Pivotal tuning: a LoRA run (``train_network.py``) that also learns a new token's embedding.

Turned on by ``token_string`` in a LoRA config (with ``init_word`` / ``num_vectors_per_token`` as in textual
inversion); the embedding trains at ``embedding_lr`` (unset: ``learning_rate``) until ``embedding_stop_step``
optimizer steps (unset: the whole run), then stays fixed while the LoRA goes on. It is saved inside the LoRA
file as the webui's Lora extension reads bundled embeddings (``bundle_emb.<token>.string_to_param.*``; SDXL
``bundle_emb.<token>.clip_l`` / ``.clip_g``), and a run with ``network_weights`` = such a file continues from them.
"""

from __future__ import annotations

import logging

import torch

from library.config.options_ti import check_token_rules
from library.errors import ConfigError, ModelLoadError
from library.training.embeddings.files import bundle_tensors, bundled_tokens, read_bundle
from library.training.embeddings.tokens import NewToken

logger = logging.getLogger(__name__)


class PivotalEmbedding:
    """The embedding part of a LoRA target: created by :meth:`from_config` (None without ``token_string``)."""

    def __init__(self, config):
        self.token_string = config.token_string
        self.lr = config.embedding_lr
        self.stop_step = config.embedding_stop_step
        self.token: NewToken | None = None
        self.active = self.stop_step != 0

    @classmethod
    def from_config(cls, config) -> PivotalEmbedding | None:
        check_token_rules(config, required=False)
        return cls(config) if config.token_string else None

    @property
    def module(self) -> torch.nn.Module:
        return self.token.module

    def attach(self, model, config, network) -> None:
        """Add the token to ``model``; with ``network_weights``, continue from the file's bundled embedding."""
        if not hasattr(network, "file_state_dict"):
            raise ConfigError(f"pivotal tuning (token_string) works with LoRA-family networks, not "
                              f"{config.network_module}; remove token_string or choose networks.lora.")
        self.token = NewToken(model, config.token_string, config.num_vectors_per_token, config.init_word)
        if config.network_weights:
            self._load_bundle(config.network_weights)
        self.token.install()
        self.token.set_trainable(self.active)

    def _load_bundle(self, source) -> None:
        from library.networks.network import read_state_dict

        state_dict, description = read_state_dict(source)
        vectors = read_bundle(state_dict, self.token_string, self.token.embedding_keys)
        if vectors is None:
            others = bundled_tokens(state_dict)
            if others:
                raise ModelLoadError(
                    f"network_weights {description} bundles the embedding(s) {', '.join(others)}, not "
                    f"token_string {self.token_string!r}. Set token_string to the file's token to continue it."
                )
            logger.info("network_weights %s has no bundled embedding: token %r starts from init_word", description,
                        self.token_string)
            return
        self.token.load(vectors, f"network_weights {description}")

    def param_group(self, learning_rate: float) -> dict:
        return {"params": self.token.parameters(), "lr": learning_rate if self.lr is None else self.lr,
                "name": "embeddings"}

    def on_step_end(self, global_step: int) -> bool:
        """Freeze the embedding once ``embedding_stop_step`` steps trained it; True when it is frozen now."""
        if self.active and self.stop_step is not None and global_step >= self.stop_step:
            self.token.set_trainable(False)
            self.active = False
            logger.info("stopped embedding training at step %d", global_step)
        return not self.active

    def file_tensors(self, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
        """The ``bundle_emb.*`` entries of the LoRA file."""
        return bundle_tensors(self.token_string, self.token.embedding_keys, self.token.detached_rows(dtype))

    def metadata(self) -> dict[str, str]:
        return {"ss_embedding_token": self.token_string, "ss_embedding_lr": str(self.lr),
                "ss_embedding_stop_step": str(self.stop_step),
                "ss_num_vectors_per_token": str(len(self.token.tokens))}
