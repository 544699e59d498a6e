"""LoRA files of other trainers read as ``network_weights``: their layout detected and converted to the file
contract (``lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight``, ``lora_te1_…``), with the same ΔW.

Layouts read (the ones diffusers' ``FluxLoraLoaderMixin.lora_state_dict`` also reads):

* **ours / sd-scripts / ai-toolkit's kohya form**: ``lora_unet_…``, ``lora_te…`` + ``.lora_down/.lora_up/.alpha``
  — unchanged.
* **diffusers / PEFT** (diffusers' FLUX trainers, ai-toolkit's default): ``transformer.<diffusers module>`` and
  ``text_encoder.<CLIP module>`` (``text_encoder_2.`` for T5) + ``.lora_A.weight`` / ``.lora_B.weight`` (or
  ``lora_down``/``lora_up``), optional ``.alpha`` per module, else the ``lora_adapter_metadata`` header diffusers
  writes (``lora_alpha``, ``alpha_pattern``), else alpha = rank; also with ``base_model.model.`` or no prefix.
* **the "mixture" form** (``lora_transformer_transformer_blocks_0_attn_to_q.lora_down.weight``): diffusers module
  names in kohya's underscore style.
* **BFL names with PEFT suffixes** (``diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight``, ComfyUI's).

Diffusers splits FLUX's fused projections (:mod:`library.models.flux_keys`): ``attn.to_q/to_k/to_v`` are one
``img_attn.qkv``. Their LoRAs become one module: ``lora_down`` = the parts' downs stacked, ``lora_up`` = their ups
block-diagonal, so ΔW = the parts' ΔW stacked row-wise, exactly (ranks may differ; a missing part is zero rows).
One alpha for the module: Σ ranks · the common scale, or the scales folded into the ups when they differ. The
final modulation's (scale, shift) halves are swapped to BFL's (shift, scale).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from library.errors import ModelLoadError
from library.networks import keys

logger = logging.getLogger(__name__)

_DOWN = (".lora_A.weight", ".lora_down.weight")
_UP = (".lora_B.weight", ".lora_up.weight")
_ALPHA = ".alpha"
#: text-encoder prefixes of diffusers' files -> (our prefix, root of the key paths)
_TEXT = {"text_encoder.": ("lora_te1", "text_model."), "text_encoder_2.": ("lora_te3", "")}
_TRANSFORMER_PREFIXES = ("transformer.", "base_model.model.")
_BFL_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
_MIXTURE = "lora_transformer_"
_DIFFUSERS_ROOTS = ("transformer_blocks.", "single_transformer_blocks.", "x_embedder", "context_embedder",
                    "time_text_embed.", "norm_out.", "proj_out")
_BFL_ROOTS = ("double_blocks.", "single_blocks.", "img_in", "txt_in", "time_in.", "vector_in.", "guidance_in.",
              "final_layer.")
METADATA_KEY = "lora_adapter_metadata"  # diffusers' LORA_ADAPTER_METADATA_KEY


def layout_of(names) -> str:
    """``"contract"`` (ours / sd-scripts'), ``"diffusers"`` (diffusers / PEFT / ai-toolkit, the mixture form, BFL
    names with PEFT suffixes) or ``"unknown"``, from a file's keys."""
    names = list(names)
    if any(k.startswith(_MIXTURE) for k in names):
        return "diffusers"
    if any(k.startswith("lora_") for k in names):
        return "contract"
    if any(k.endswith(_DOWN + _UP) for k in names):
        return "diffusers"
    return "unknown"


def to_contract(state: Mapping[str, torch.Tensor], description: str, widths: Mapping[str, int] | None = None,
                source=None) -> dict[str, torch.Tensor]:
    """``state`` in the file contract: unchanged when it is in it, converted from a foreign layout (see the module
    docstring), refused with a one-paragraph :class:`ModelLoadError` listing a few keys when it is in none.

    ``widths`` (module name -> output width of the layer) gives the width of a fused part no LoRA of the file
    covers (a single block's MLP part); ``source`` is the file, for diffusers' alpha metadata.
    """
    layout = layout_of(state)
    if layout == "contract":
        return dict(state)
    if layout == "unknown":
        shown = ", ".join(sorted(state)[:4]) or "no keys"
        raise ModelLoadError(
            f"{description} is in no LoRA layout this trainer reads (its keys: {shown}). network_weights takes "
            "LoRA files as sd-scripts writes them (lora_unet_… / lora_te1_… with .lora_down.weight, .lora_up.weight, "
            ".alpha) and, for FLUX.1, diffusers' / PEFT / ai-toolkit's layout (transformer.… with .lora_A.weight / "
            ".lora_B.weight). Check that the file is a LoRA, not a base model or another kind of adapter."
        )
    converted = _convert(dict(state), description, widths or {}, _adapter_metadata(source))
    logger.info("network weights: %s is in diffusers' (PEFT) layout: %d modules converted to sd-scripts' names",
                description, len({k.split(".")[0] for k in converted}))
    return converted


def _adapter_metadata(source) -> dict:
    """diffusers' ``lora_adapter_metadata`` header ({"transformer.lora_alpha": …}), or {}."""
    if source is None or isinstance(source, dict) or Path(source).suffix.lower() != ".safetensors":
        return {}
    from library.util.safetensors_io import read_metadata

    try:
        text = (read_metadata(Path(source)) or {}).get(METADATA_KEY)
        return json.loads(text) if text else {}
    except (ValueError, OSError, ModelLoadError):
        return {}


def _module_of(key: str) -> tuple[str, str] | None:
    """(module key, kind: down / up / alpha) of a foreign key, or None for a key of another kind."""
    for kind, suffixes in (("down", _DOWN), ("up", _UP), ("alpha", (_ALPHA,))):
        for suffix in suffixes:
            if key.endswith(suffix):
                return key[: -len(suffix)], kind
    return None


def _target_of(module: str) -> tuple[str, str, int, int] | None:
    """A foreign module key -> (our module name, the diffusers path it came from, part index, parts) or None."""
    for prefix, (ours, root) in _TEXT.items():
        if module.startswith(prefix):
            path = module[len(prefix):]
            if root and not path.startswith(root):
                path = root + path
            return keys.lora_name(ours, path), module, 0, 1
    for prefix in _BFL_PREFIXES:
        if module.startswith(prefix):
            return keys.lora_name(keys.UNET_PREFIX, module[len(prefix):]), module, 0, 1
    if module.startswith(_BFL_ROOTS):
        return keys.lora_name(keys.UNET_PREFIX, module), module, 0, 1
    path = module
    for prefix in _TRANSFORMER_PREFIXES:
        if path.startswith(prefix):
            path = path[len(prefix):]
            break
    if path.startswith(_MIXTURE):
        path = _UNDERSCORED.get(path[len(_MIXTURE):])
        if path is None:
            return None
    found = _from_diffusers_path(path)
    return None if found is None else (found[0], module, found[1], found[2])


def _from_diffusers_path(path: str) -> tuple[str, int, int] | None:
    from library.models.flux_keys import DOUBLE_MODULES, GLOBAL_MODULES, SINGLE_MODULES

    match = re.match(r"^(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)$", path)
    if match:
        table = DOUBLE_MODULES if match.group(1) == "transformer_blocks" else SINGLE_MODULES
        bfl_block = "double_blocks" if match.group(1) == "transformer_blocks" else "single_blocks"
        for bfl, parts in table.items():
            if match.group(3) in parts:
                name = keys.lora_name(keys.UNET_PREFIX, f"{bfl_block}.{match.group(2)}.{bfl}")
                return name, parts.index(match.group(3)), len(parts)
        return None
    for bfl, parts in GLOBAL_MODULES.items():
        if path in parts:
            return keys.lora_name(keys.UNET_PREFIX, bfl), 0, 1
    return None


def _underscored_table() -> dict[str, str]:
    """diffusers module paths in the mixture form's underscore spelling -> dotted (blocks 0-99)."""
    from library.models.flux_keys import DOUBLE_MODULES, GLOBAL_MODULES, SINGLE_MODULES

    table = {p.replace(".", "_"): p for parts in GLOBAL_MODULES.values() for p in parts}
    for block, modules in (("transformer_blocks", DOUBLE_MODULES), ("single_transformer_blocks", SINGLE_MODULES)):
        for i in range(100):
            for parts in modules.values():
                table.update({f"{block}_{i}_{p}".replace(".", "_"): f"{block}.{i}.{p}" for p in parts})
    return table


_UNDERSCORED = _underscored_table()


def _scale(module: str, entries: dict, metadata: dict) -> float:
    """alpha / rank of one foreign module: its ``.alpha``, else diffusers' adapter metadata, else 1."""
    rank = entries["down"].shape[0]
    if "alpha" in entries:
        return float(entries["alpha"]) / rank
    for prefix in ("transformer.", "text_encoder.", "text_encoder_2."):
        if not module.startswith(prefix):
            continue
        path = module[len(prefix):]
        for pattern, alpha in (metadata.get(f"{prefix}alpha_pattern") or {}).items():
            if re.fullmatch(rf"(.*\.)?({pattern})", path):
                return float(alpha) / rank
        alpha = metadata.get(f"{prefix}lora_alpha")
        if alpha is not None:
            return float(alpha) / rank
    return 1.0


def _convert(state: dict, description: str, widths: Mapping[str, int], metadata: dict) -> dict[str, torch.Tensor]:
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    odd: list[str] = []
    for key, value in state.items():
        found = _module_of(key)
        if found is None:
            odd.append(key)
            continue
        grouped.setdefault(found[0], {})[found[1]] = value
    fused: dict[str, dict[int, tuple]] = {}
    unmapped: list[str] = []
    for module, entries in grouped.items():
        if "down" not in entries or "up" not in entries:
            odd.extend(f"{module}{_ALPHA if k == 'alpha' else '.' + k}" for k in entries)
            continue
        target = _target_of(module)
        if target is None:
            unmapped.append(module)
            continue
        name, _, index, parts = target
        fused.setdefault(name, {})[index] = (entries["down"], entries["up"], _scale(module, entries, metadata),
                                             parts, module)
    if odd or unmapped:
        shown = ", ".join((odd + unmapped)[:4])
        raise ModelLoadError(
            f"{description} is a LoRA in diffusers' (PEFT) layout, but {len(odd) + len(unmapped)} of its entries "
            f"cannot be represented as sd-scripts' FLUX LoRA modules (e.g. {shown}): only lora_A/lora_B (lora_down/"
            "lora_up) pairs with an optional alpha on FLUX.1's transformer, CLIP-L and T5 layers convert exactly "
            "(no DoRA magnitudes, bias or norm diffs). Use a plain LoRA of FLUX.1, or convert the file with the tool "
            "that made it."
        )
    out: dict[str, torch.Tensor] = {}
    for name, pieces in fused.items():
        out.update(_fuse(name, pieces, description, widths.get(name)))
    return out


def _fuse(name: str, pieces: dict[int, tuple], description: str, total: int | None) -> dict[str, torch.Tensor]:
    """One module of the contract from the file's LoRA(s) of its parts (index -> (down, up, scale, parts, key))."""
    from library.models.flux_keys import FINAL_MODULATION, swap_halves

    parts = next(iter(pieces.values()))[3]
    if parts == 1:
        down, up, scale, _, _ = pieces[0]
        if name == keys.lora_name(keys.UNET_PREFIX, FINAL_MODULATION):
            up = swap_halves(up)  # diffusers' norm_out.linear is (scale, shift), BFL's (shift, scale)
        return _entries(name, down, up, scale * down.shape[0])
    in_features = {piece[0].shape[1] for piece in pieces.values()}
    if len(in_features) != 1:
        keys_shown = ", ".join(piece[4] for piece in pieces.values())
        raise ModelLoadError(
            f"{description}: the LoRAs of {keys_shown} read inputs of different widths ({sorted(in_features)}), so "
            f"they cannot be one module {name} of the fused projection. The file does not fit FLUX.1's layout."
        )
    widths = _part_widths(pieces, parts, in_features.pop(), total)
    order = sorted(pieces)
    ranks = [pieces[i][0].shape[0] for i in order]
    scales = {pieces[i][2] for i in order}
    common = scales.pop() if len(scales) == 1 else None
    down = torch.cat([pieces[i][0] for i in order], dim=0)
    up = torch.zeros(sum(widths), sum(ranks), dtype=pieces[order[0]][1].dtype)
    column = 0
    for i, rank in zip(order, ranks, strict=True):
        row = sum(widths[:i])
        block = pieces[i][1] if common is not None else pieces[i][1] * pieces[i][2]
        up[row : row + widths[i], column : column + rank] = block
        column += rank
    return _entries(name, down, up, (common if common is not None else 1.0) * down.shape[0])


def _part_widths(pieces: dict[int, tuple], parts: int, hidden: int, total: int | None) -> list[int]:
    """Output widths of the parts of a fused projection: q, k, v (double blocks) or q, k, v, MLP (single)."""
    known = {i: piece[1].shape[0] for i, piece in pieces.items()}
    if parts == 3:
        width = next(iter(known.values()))
        return [known.get(i, width) for i in range(3)]
    mlp = known.get(3)
    if mlp is None:
        mlp = total - 3 * hidden if total else 4 * hidden  # FLUX's mlp_ratio when the layer is not at hand
    return [known.get(0, hidden), known.get(1, hidden), known.get(2, hidden), mlp]


def _entries(name: str, down: torch.Tensor, up: torch.Tensor, alpha: float) -> dict[str, torch.Tensor]:
    down_key, up_key, alpha_key = keys.module_keys(name)
    return {down_key: down.contiguous(), up_key: up.contiguous(), alpha_key: torch.tensor(float(alpha))}
