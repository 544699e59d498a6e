"""Network types (``network_module``) and the LoRA file contract.

``NETWORK_TYPES`` maps sd-scripts' ``network_module`` values to a :class:`NetworkType`; the trainer,
the CLI choices and the GUI dropdown read it. Add an algorithm by registering one more entry
(e.g. ``"lycoris.kohya"`` later, with its pip package).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from library.errors import ConfigError
from library.networks import hypernetwork, lora, lycoris_bridge
from library.networks.args import LORA_ARGS, parse_network_args
from library.util.registry import Registry


@dataclass(frozen=True)
class NetworkType:
    """Everything the trainer needs about one network algorithm.

    create(unet, text_encoder, *, dim, alpha, dropout, train_unet, train_text_encoder, multiplier,
    **parsed_network_args) builds a fresh network; from_weights(source, unet, text_encoder, **opts)
    builds one sized from a file and returns (network, report); parse_args turns the
    ``network_args`` strings into keyword arguments for create.
    """

    name: str
    create: Callable[..., Any]
    from_weights: Callable[..., Any]
    parse_args: Callable[[list[str]], dict]
    known_args: tuple[str, ...]
    #: whether its files are LoRA-keyed (``lora_unet_…``), so network_weights is checked for the model family
    lora_keys: bool = True
    #: whether it can adapt the text encoder (False: the text encoders stay frozen, their outputs cacheable)
    trains_text_encoder: bool = True
    #: the file format when save_model_as is not set (None: save_model_as' own default)
    default_save_format: str | None = None

    def __call__(self, *args, **kwargs):
        return self.create(*args, **kwargs)


NETWORK_TYPES = Registry("network_module")

LORA = NetworkType(
    name="networks.lora",
    create=lora.create_network,
    from_weights=lora.network_from_weights,
    parse_args=parse_network_args,
    known_args=tuple(LORA_ARGS),
)
NETWORK_TYPES.register("networks.lora", description="LoRA; LoCon with network_args conv_dim")(LORA)
NETWORK_TYPES.register("networks.lora_flux", description="sd-scripts' name of LoRA for FLUX.1 (the same LoRA; "
                       "network_args train_blocks, train_t5xxl, split_qkv, in_dims, img_/txt_/single_*_dim, "
                       "train_double/single_block_indices, network_reg_dims/lrs)")(LORA)
NETWORK_TYPES.register("lycoris.kohya", package=lycoris_bridge.PACKAGE, description="LyCORIS: LoHa, LoKr, LoCon, IA3, DyLoRA, full (network_args algo=…)")(NetworkType("lycoris.kohya", lycoris_bridge.create_lycoris_network, lycoris_bridge.lycoris_network_from_weights, lycoris_bridge.parse_lycoris_args, tuple(lycoris_bridge.LYCORIS_ARGS)))  # noqa: E501
NETWORK_TYPES.register("networks.hypernetwork", description="AUTOMATIC1111's hypernetwork (.pt in the webui's layout; "
                       "network_args layer_structure, activation_func, add_layer_norm, use_dropout, dropout_structure, "
                       "weight_initialization, activate_output, last_layer_dropout, enable_sizes)")(NetworkType(
    "networks.hypernetwork", hypernetwork.create_hypernetwork, hypernetwork.hypernetwork_from_weights,
    hypernetwork.parse_hypernetwork_args, tuple(hypernetwork.HYPERNETWORK_ARGS), lora_keys=False,
    trains_text_encoder=False, default_save_format="pt"))


def get_network_type(name: str) -> NetworkType:
    """The registered network type for a ``network_module`` value; unknown -> ConfigError listing known ones."""
    entry = NETWORK_TYPES.find(name)
    if entry is None:
        raise ConfigError(f"network_module: {NETWORK_TYPES.unknown_message(name)}")
    return entry.factory


def network_module_names() -> list[str]:
    """Registered ``network_module`` values, for CLI choices and the GUI dropdown."""
    return NETWORK_TYPES.names()
