"""FLUX.1 LoRA network_args as sd-scripts' ``networks/lora_flux.py`` has them: which layers get a LoRA, their
ranks, fused projections trained per part (``split_qkv``) and learning rates by pattern.

* ``img_attn_dim``, ``txt_attn_dim``, ``img_mlp_dim``, ``txt_mlp_dim``, ``img_mod_dim``, ``txt_mod_dim`` (double
  blocks), ``single_dim`` (a single block's ``linear1`` and ``linear2``), ``single_mod_dim`` (its
  ``modulation.lin``): the rank of the layers whose module name contains the words, the first that matches in
  this order (sd-scripts' order); 0 = no LoRA there. Alpha stays ``network_alpha``.
* ``in_dims`` = five ranks for ``img_in``, ``time_in``, ``vector_in``, ``guidance_in``, ``txt_in`` (the layers
  outside the blocks, which get no LoRA otherwise).
* ``train_double_block_indices`` / ``train_single_block_indices``: ``all``, ``none`` or indices and ranges
  (``0,1,8-12``); the other blocks of that kind get no LoRA.
* ``network_reg_dims`` = ``pattern=rank,…``: the first regular expression found in a module's name sets its rank,
  before all of the above (the block indices do not apply to it, as in sd-scripts' code); text encoders too.
* ``network_reg_lrs`` = ``pattern=lr,…``: the first matching pattern sets the module's learning rate.
* ``verbose``: every module's rank and alpha in the log.
* ``split_qkv``: a double block's ``img_attn.qkv`` / ``txt_attn.qkv`` gets one LoRA per q, k, v and a single
  block's ``linear1`` one per q, k, v and MLP part (:class:`~library.networks.lora.SplitLoRAModule`); the
  file holds the fused form, as sd-scripts saves it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from torch import nn

from library.errors import ConfigError

#: rank args of the layers inside the blocks -> the words a module name must contain (sd-scripts' order)
TYPE_DIMS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("img_attn_dim", ("img_attn",)),
    ("txt_attn_dim", ("txt_attn",)),
    ("img_mlp_dim", ("img_mlp",)),
    ("txt_mlp_dim", ("txt_mlp",)),
    ("img_mod_dim", ("img_mod",)),
    ("txt_mod_dim", ("txt_mod",)),
    ("single_dim", ("single_blocks", "linear")),
    ("single_mod_dim", ("modulation",)),
)
#: the layers outside the blocks, in ``in_dims`` order (module paths of the BFL transformer)
IN_LAYERS = ("img_in", "time_in", "vector_in", "guidance_in", "txt_in")
BLOCK_INDEX_ARGS = {"double": "train_double_block_indices", "single": "train_single_block_indices"}
#: every network_arg this module reads (the family's :attr:`network_args`)
FLUX_PLAN_ARGS = frozenset({name for name, _ in TYPE_DIMS} | set(BLOCK_INDEX_ARGS.values()) | {
    "in_dims", "split_qkv", "network_reg_dims", "network_reg_lrs", "verbose"})

_BLOCK_NAME = re.compile(r"^lora_unet_(double|single)_blocks_(\d+)_")


def parse_block_selection(text: str, total: int | None, name: str = "train_double_block_indices") -> list[bool]:
    """``all`` / ``none`` / ``""`` / ``0,1,4-5,7`` -> one flag per block (sd-scripts' ``parse_block_selection``).

    ``total`` None checks the syntax only (and returns an empty list); otherwise an index outside 0…total-1 is
    refused, naming the arg and the model's block count.
    """
    text = text.strip()
    if text in ("all", "none", ""):
        return [text == "all"] * (total or 0)
    chosen: set[int] = set()
    for item in (part.strip() for part in text.split(",")):
        start_text, dash, end_text = item.partition("-")
        try:
            start = int(start_text)
            end = int(end_text) if dash else start
        except ValueError:
            raise ValueError(
                f"has the item {item!r}, which is not a block index or range (use all, none, or e.g. 0,1,4-5,7)"
            ) from None
        if start < 0 or end < start:
            raise ValueError(f"has the item {item!r}, which is not a valid range (0-based, start <= end)")
        if total is not None and end >= total:
            raise ConfigError(
                f"network_args {name}={text!r}: block {end} does not exist; this model has {total} such blocks "
                f"(0-{total - 1}). Use indices from 0 to {total - 1}, all or none."
            )
        chosen.update(range(start, end + 1))
    return [i in chosen for i in range(total or 0)]


@dataclass
class FluxModulePlan:
    """The rank, split and learning rate of each FLUX LoRA module, from the parsed network_args."""

    type_dims: dict[str, int] = field(default_factory=dict)
    in_dims: tuple[int, ...] | None = None
    block_flags: dict[str, list[bool]] = field(default_factory=dict)
    reg_dims: dict[str, int] = field(default_factory=dict)
    reg_lrs: dict[str, float] = field(default_factory=dict)
    split_qkv: bool = False
    hidden_size: int = 0
    #: log every module's rank and alpha when the network is built (sd-scripts' ``verbose``)
    verbose: bool = False

    @classmethod
    def from_args(cls, args: dict, transformer: nn.Module | None) -> FluxModulePlan:
        flags = {}
        counts = {"double": len(getattr(transformer, "double_blocks", ())),
                  "single": len(getattr(transformer, "single_blocks", ()))}
        for kind, name in BLOCK_INDEX_ARGS.items():
            if args.get(name) is not None:
                flags[kind] = parse_block_selection(args[name], counts[kind], name)
        params = getattr(transformer, "params", None)
        return cls(
            type_dims={name: args[name] for name, _ in TYPE_DIMS if args.get(name) is not None},
            in_dims=args.get("in_dims"), block_flags=flags, reg_dims=dict(args.get("network_reg_dims") or {}),
            reg_lrs=dict(args.get("network_reg_lrs") or {}), split_qkv=bool(args.get("split_qkv")),
            hidden_size=int(params.hidden_size) if params is not None else 0, verbose=bool(args.get("verbose")),
        )

    @property
    def extra_paths(self) -> tuple[str, ...]:
        """Module paths outside the blocks that may hold LoRA modules (``in_dims``; all of them, so that a file
        with such modules loads even when in_dims is not set)."""
        return IN_LAYERS

    def size(self, lora_name: str, default: tuple, unet_side: bool) -> tuple:
        """(rank, alpha) of one module; rank 0 = no module. ``default`` is (network_dim or the block's, alpha)."""
        rank, alpha = default
        in_layer = self._in_layer(lora_name) if unet_side else None
        if in_layer is not None:
            if not self.in_dims or not self.in_dims[in_layer]:
                return 0, alpha
            rank = self.in_dims[in_layer]
        for pattern, value in self.reg_dims.items():
            if re.search(pattern, lora_name):
                return value, alpha
        if not unet_side:
            return rank, alpha
        for name, words in TYPE_DIMS:
            if name in self.type_dims and all(word in lora_name for word in words):
                rank = self.type_dims[name]
                break
        match = _BLOCK_NAME.match(lora_name)
        if rank and match and match.group(1) in self.block_flags:
            flags = self.block_flags[match.group(1)]
            if not flags[int(match.group(2))]:
                return 0, alpha
        return rank, alpha

    def split_dims(self, lora_name: str, layer: nn.Module) -> list[int] | None:
        """Output widths of the parts of a fused projection trained separately with ``split_qkv``, or None."""
        if not self.split_qkv or not isinstance(layer, nn.Linear):
            return None
        match = _BLOCK_NAME.match(lora_name)
        if match is None:
            return None
        if match.group(1) == "double" and lora_name.endswith("_attn_qkv"):
            return [layer.out_features // 3] * 3
        if match.group(1) == "single" and lora_name.endswith("_linear1"):
            hidden = layer.in_features  # linear1: hidden -> 3 x hidden (q, k, v) + the MLP's width
            return [hidden] * 3 + [layer.out_features - 3 * hidden]
        return None

    def learning_rate(self, lora_name: str) -> float | None:
        """The learning rate ``network_reg_lrs`` gives a module (the first matching pattern), or None."""
        for pattern, value in self.reg_lrs.items():
            if re.search(pattern, lora_name):
                return value
        return None

    @staticmethod
    def _in_layer(lora_name: str) -> int | None:
        path = lora_name.removeprefix("lora_unet_")
        for index, layer in enumerate(IN_LAYERS):
            if path == layer or path.startswith(layer + "_"):
                return index
        return None
