"""The LoRA-family target of ``train_network.py``: a network hooked into the frozen base model."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from library.errors import ModelLoadError
from library.models.family import check_family_network_args, family_of_lora_names
from library.networks import get_network_type, keys
from library.networks.metadata import ADAPTER_LORA, modelspec_metadata
from library.networks.network import read_state_dict
from library.training.embeddings.pivotal import PivotalEmbedding
from library.training.target import BaseTarget

logger = logging.getLogger(__name__)

SAVE_DTYPES = {None: None, "float": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class LoRATarget(BaseTarget):
    """Creates the network named by ``network_module`` and saves it in the LoRA file contract."""

    saves_base_model = False

    def __init__(self, config):
        self.network_type = get_network_type(config.network_module)
        self.args = self.network_type.parse_args(config.network_args)
        default_format = self.network_type.default_save_format
        self.file_ext = (default_format if default_format and "save_model_as" not in config.explicit
                         else config.save_model_as)
        te_lr = config.text_encoder_lr
        self.trains_text_encoder = (self.network_type.trains_text_encoder and not config.network_train_unet_only
                                    and te_lr != 0)
        #: pivotal tuning: a new token's embedding trained with the LoRA (None without token_string)
        self.pivotal = PivotalEmbedding.from_config(config)
        self._lora_trains_text_encoder = self.trains_text_encoder
        if self.pivotal is not None and self.pivotal.active:
            self.trains_text_encoder = True  # the embedding's gradients flow through the text encoder
            # DDP must tolerate the embedding going without gradients once it stops
            self.ddp_find_unused_parameters = self.pivotal.stop_step is not None
        self.network = None
        self.max_norm = config.scale_weight_norms
        self._logs: dict[str, float] = {}
        self._modules: list[torch.nn.Module] = []
        self._model = None

    def attach(self, model, config) -> None:
        train_unet = not config.network_train_text_encoder_only
        options = dict(train_unet=train_unet, train_text_encoder=self._lora_trains_text_encoder,
                       dropout=config.network_dropout, rank_dropout=self.args.get("rank_dropout"),
                       module_dropout=self.args.get("module_dropout"))
        check_family_network_args(self.args, model.adapter)
        options["parts"] = model.adapter.network_parts(keys.model_parts(model), self.args)
        family_args = model.adapter.network_args
        if config.network_weights and self.network_type.lora_keys:
            check_weights_family(config.network_weights, model)
        if config.network_weights and config.dim_from_weights:
            network, report = self.network_type.from_weights(config.network_weights, model.unet,
                                                             model.text_encoder, **options)
        else:
            # a generator of its own: the initial weights do not depend on how the model was loaded
            generator = torch.Generator().manual_seed(config.seed)
            network = self.network_type.create(model.unet, model.text_encoder, dim=config.network_dim,
                                               alpha=config.network_alpha, generator=generator,
                                               block_layout=model.adapter.block_layout, **options,
                                               **{k: v for k, v in self.args.items()
                                                  if k not in options and k not in family_args})
            if config.network_weights:
                network.load_weights(config.network_weights)
        network.apply_to()
        network.to(model.unet.device)
        network.train()
        self.network = network
        self._modules = [network]
        if self.pivotal is not None:
            self.pivotal.attach(model, config, network)
            self._modules.append(self.pivotal.module)
        self._model = model

    def on_step_end(self, global_step: int) -> None:
        if self.pivotal is not None and self.pivotal.on_step_end(global_step):
            self.trains_text_encoder = self._lora_trains_text_encoder
        if self.max_norm:
            scaled, mean, largest = self.network.apply_max_norm(self.max_norm)
            self._logs = {"max_norm/keys_scaled": scaled, "max_norm/average_key_norm": mean,
                          "max_norm/max_key_norm": largest}

    def step_logs(self) -> dict[str, float]:
        return self._logs

    def network_multiplier(self) -> float | None:
        return self.network.multiplier

    def set_network_multiplier(self, multiplier: float) -> None:
        self.network.set_multiplier(multiplier)

    def param_groups(self, config) -> list[dict]:
        ratio = self.args.get("loraplus_lr_ratio")
        groups = self.network.param_groups(
            config.unet_lr, config.text_encoder_lr, config.learning_rate,
            loraplus_unet_ratio=self.args.get("loraplus_unet_lr_ratio") or ratio,
            loraplus_text_encoder_ratio=self.args.get("loraplus_text_encoder_lr_ratio") or ratio,
        )
        if self.pivotal is not None:
            groups.append(self.pivotal.param_group(config.learning_rate))
        return groups

    def modules(self) -> list[torch.nn.Module]:
        return self._modules

    def set_modules(self, modules: list[torch.nn.Module]) -> None:
        self._modules = modules

    def metadata(self, config) -> dict[str, str]:
        info = self.network.info
        args = dict(config.network_args and [a.split("=", 1) for a in config.network_args] or [])
        meta = {
            "ss_network_module": config.network_module,
            "ss_network_dim": str(info.get("dim")),
            "ss_network_alpha": str(info.get("alpha", config.network_alpha)),
            "ss_network_args": json.dumps(args),
            "ss_network_dropout": str(config.network_dropout),
        }
        model = self._model
        meta.update(modelspec_metadata(
            f"{model.adapter.architecture(model.v_parameterization, model)}/{ADAPTER_LORA}",
            config.metadata_title or config.output_name,
            config.resolution,
            "v" if model.v_parameterization else "epsilon",
            author=config.metadata_author, description=config.metadata_description,
            license=config.metadata_license, tags=config.metadata_tags,
        ))
        if self.pivotal is not None:
            meta.update(self.pivotal.metadata())
        return meta

    def save(self, path: Path, precision: str | None, metadata: dict[str, str], config) -> None:
        extra = self.pivotal.file_tensors(SAVE_DTYPES[precision]) if self.pivotal is not None else None
        self.network.save(path, SAVE_DTYPES[precision], metadata, **({"extra": extra} if extra else {}))


def check_weights_family(source, model) -> None:
    """``network_weights`` made for another model family is a clear error naming both families."""
    names, description = _module_names(source)
    found = family_of_lora_names(names)
    if found is not None and found.lora_layout() != model.adapter.lora_layout():
        raise ModelLoadError(
            f"network_weights {description} is a LoRA for {found.description} ({found.name}), but the base model "
            f"{model.name} is {model.adapter.description} ({model.family}). Use a LoRA trained on this family's "
            "base models, or the base model the LoRA was made for."
        )


def _module_names(source) -> tuple[set[str], str]:
    """The module names of a network file (a .safetensors header only; other files are read weights-only)."""
    from pathlib import Path

    path = Path(source) if not isinstance(source, dict) else None
    if path is not None and path.suffix.lower() == ".safetensors" and path.is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                return {key.split(".", 1)[0] for key in handle.keys()}, str(path)
        except Exception:  # noqa: BLE001 - unreadable header: the full read below says why
            pass
    state_dict, description = read_state_dict(source)
    return {key.split(".", 1)[0] for key in state_dict}, description
