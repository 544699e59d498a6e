"""The textual-inversion target of ``train_textual_inversion.py``: one new token learnt, the model frozen.

As sd-scripts' ``train_textual_inversion.py``: ``token_string`` (``num_vectors_per_token`` vectors, started from
``init_word``, or continued from ``weights``) is added to the tokenizer(s); captions name it (or are replaced by
sd-scripts' object / style templates); only the token's vectors train. The files are what the webui, ComfyUI and
diffusers load (see ``embeddings/files.py``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from library.config.options_ti import check_token_rules
from library.networks.metadata import modelspec_metadata
from library.training.embeddings.files import file_tensors, read_embedding, save_embedding
from library.training.embeddings.templates import templates_for
from library.training.embeddings.tokens import NewToken
from library.training.target import BaseTarget

logger = logging.getLogger(__name__)

SAVE_DTYPES = {None: None, "float": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
#: modelspec's adapter name for embeddings (``stable-diffusion-v1/textual-inversion``)
ADAPTER_TI = "textual-inversion"


class TextualInversionTarget(BaseTarget):
    """Trains the rows of one new token in every text encoder of the family; everything else is frozen."""

    #: gradients flow through the (frozen) text encoders to the token's rows
    trains_text_encoder = True
    #: its files hold the token's embedding rows only: a cached VAE is freed, not parked
    saves_base_model = False

    def __init__(self, config):
        check_token_rules(config, required=True)
        self.file_ext = config.save_model_as
        self.templates = templates_for(config.use_object_template, config.use_style_template)
        self.token: NewToken | None = None
        self._model = None
        self._modules: list[torch.nn.Module] = []
        self._sampling = False
        self._step = 0
        self._seed = config.seed or 0

    def on_model_loaded(self, model, config) -> None:
        self._seed = config.seed or 0

    def attach(self, model, config) -> None:
        for module in model.parts.values():
            module.requires_grad_(False)
        self.token = NewToken(model, config.token_string, config.num_vectors_per_token, config.init_word)
        if config.weights:
            self.token.load(read_embedding(config.weights, self.token.embedding_keys), str(config.weights))
        self.token.install(self._template_captions if self.templates else None)
        self._model = model
        self._modules = [self.token.module]

    def _template_captions(self, captions: list[str]) -> list[str]:
        """Training captions replaced by a template naming the token (sample prompts are kept). The template is
        drawn from the seed, the step and the caption's place in the batch, so a resumed run draws the same."""
        if self._sampling:
            return captions
        from library.data.dataset import derive_rng

        return [derive_rng("ti-template", self._seed, self._step, i).choice(self.templates).format(self.token.token)
                for i in range(len(captions))]

    def param_groups(self, config) -> list[dict]:
        return [{"params": self.token.parameters(), "lr": config.learning_rate, "name": "embeddings"}]

    def modules(self) -> list[torch.nn.Module]:
        return self._modules

    def set_modules(self, modules: list[torch.nn.Module]) -> None:
        self._modules = modules

    def on_step_end(self, global_step: int) -> None:
        self._step = global_step

    def before_sampling(self) -> None:
        self._sampling = True

    def after_sampling(self) -> None:
        self._sampling = False

    def metadata(self, config) -> dict[str, str]:
        model = self._model
        meta = modelspec_metadata(
            f"{model.adapter.architecture(model.v_parameterization, model)}/{ADAPTER_TI}",
            config.metadata_title or config.output_name, config.resolution,
            "v" if model.v_parameterization else "epsilon",
            author=config.metadata_author, description=config.metadata_description,
            license=config.metadata_license, tags=config.metadata_tags, trigger_phrase=config.token_string,
        )
        meta.update({"ss_token_string": config.token_string, "ss_init_word": str(config.init_word),
                     "ss_num_vectors_per_token": str(config.num_vectors_per_token),
                     "ss_use_template": str(bool(self.templates))})
        return meta

    def save(self, path: Path, precision: str | None, metadata: dict[str, str], config) -> None:
        tensors = file_tensors(self.token.embedding_keys, self.token.detached_rows(SAVE_DTYPES[precision]))
        save_embedding(Path(path), tensors, metadata, config.token_string, self._step)
