"""LoHa and LoKr modules of LyCORIS files (``lycoris-lora`` key names), as the LoRA tools use them.

Keys per module (``lora_unet_…_attn1_to_q`` + suffix): LoHa ``.hada_w1_a/.hada_w1_b/.hada_w2_a/.hada_w2_b``
(+ ``.hada_t1/.hada_t2`` for Tucker), LoKr ``.lokr_w1`` or ``.lokr_w1_a/_b`` and ``.lokr_w2`` or
``.lokr_w2_a/_b`` (+ ``.lokr_t2``), both with ``.alpha``. ΔW comes from :mod:`library.networks.lycoris_math`.
Modules with a DoRA ``.dora_scale`` cannot be merged as a plain ΔW and are refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from library.errors import ModelLoadError
from library.networks import lycoris_math

LOHA_PARTS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
LOKR_PARTS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
_PART = re.compile(r"^(.+)\.(" + "|".join(sorted(LOHA_PARTS + LOKR_PARTS, key=len, reverse=True)) + r")$")

#: 3x3 convs by name: diffusers (SD1/SD2) resnet conv1/conv2, sampler convs, conv_in/out; SGM (SDXL) resnet
#: in_layers_2/out_layers_3, downsampler op, upsampler conv, input_blocks_0_0 (conv_in), out_2 (conv_out)
_CONV3X3_NAME = re.compile(
    r"^lora_unet_(.+_(conv1|conv2)|.+samplers_\d+_conv|conv_in|conv_out"
    r"|.+_(in_layers_2|out_layers_3)|input_blocks_\d+_0_op|output_blocks_\d+_\d+_conv|input_blocks_0_0|out_2)$"
)


@dataclass
class LycorisModule:
    """One LoHa / LoKr module: ``kind`` "LoHa" or "LoKr", its factor tensors by suffix (no dot), alpha."""

    name: str
    kind: str
    parts: dict[str, torch.Tensor]
    alpha: float | None

    def get(self, part: str) -> torch.Tensor | None:
        return self.parts.get(part)

    @property
    def rank(self) -> int | None:
        """The rank the scale divides by (LoHa: ``hada_w1_b.shape[0]``; LoKr: see ``lokr_rank``)."""
        if self.kind == "LoHa":
            return int(self.parts["hada_w1_b"].shape[0])
        return lycoris_math.lokr_rank(self.get("lokr_w1_a"), self.get("lokr_w2_a"), self.get("lokr_t2"))

    @property
    def scale(self) -> float:
        return lycoris_math.factor_scale(self.alpha, self.rank)

    @property
    def shape2d(self) -> tuple[int, int]:
        """(out, in·kh·kw) of ΔW, from the factor shapes alone (to check the fit before computing ΔW)."""
        p = self.get
        if self.kind == "LoHa":
            if p("hada_t1") is not None:
                return int(p("hada_w1_a").shape[1]), int(p("hada_w1_b").shape[1] * p("hada_t1")[0, 0].numel())
            return int(p("hada_w1_a").shape[0]), int(p("hada_w1_b")[0].numel())
        (o1, i1), (o2, i2) = _side_shape(p, "lokr_w1"), _side_shape(p, "lokr_w2")
        return o1 * o2, i1 * i2

    @property
    def is_conv3x3(self) -> bool:
        """A 3x3 (k>1) conv module: from a 4-D factor's kernel when there is one; LyCORIS stores LoHa and
        factorised LoKr conv factors flattened ((r, in·k·k)), so then from the layer name (the UNets' 3x3
        convs in diffusers or SGM naming, see ``_CONV3X3_NAME``)."""
        kernels = {tuple(t.shape[2:]) for t in self.parts.values() if t.dim() == 4}
        if kernels:
            return kernels != {(1, 1)}
        return bool(_CONV3X3_NAME.search(self.name))

    def delta(self, multiplier: float = 1.0) -> torch.Tensor:
        """ΔW · multiplier in float32, in the module's natural shape (reshape to the layer's weight)."""
        p = self.get
        if self.kind == "LoHa":
            return lycoris_math.loha_delta_weight(
                p("hada_w1_a"),
                p("hada_w1_b"),
                p("hada_w2_a"),
                p("hada_w2_b"),
                self.scale * multiplier,
                p("hada_t1"),
                p("hada_t2"),
            )
        w1 = lycoris_math.lokr_side(p("lokr_w1"), p("lokr_w1_a"), p("lokr_w1_b"))
        w2 = lycoris_math.lokr_side(p("lokr_w2"), p("lokr_w2_a"), p("lokr_w2_b"), p("lokr_t2"))
        return lycoris_math.lokr_delta_weight(w1, w2, self.scale * multiplier)


def _side_shape(p, side: str) -> tuple[int, int]:
    """(rows, columns·kernel) of one LoKr side, whole, factorised or Tucker-factorised."""
    if p(side) is not None:
        return int(p(side).shape[0]), int(p(side)[0].numel())
    w_a, w_b, core = p(side + "_a"), p(side + "_b"), p("lokr_t2") if side == "lokr_w2" else None
    if core is not None:
        return int(w_a.shape[1]), int(w_b.shape[1] * core[0, 0].numel())
    return int(w_a.shape[0]), int(w_b[0].numel())


def _missing(kind: str, parts: dict) -> list[str]:
    if kind == "LoHa":
        need = ["hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"]
        if ("hada_t1" in parts) != ("hada_t2" in parts):
            need += ["hada_t1", "hada_t2"]
        return [n for n in need if n not in parts]
    missing = []
    for side in ("lokr_w1", "lokr_w2"):
        if side not in parts and not (side + "_a" in parts and side + "_b" in parts):
            missing.append(f"{side} (or {side}_a + {side}_b)")
    return missing


def read_lycoris_modules(
    state_dict: dict[str, torch.Tensor], source: str = "the file", *, strict: bool = True
) -> tuple[dict[str, LycorisModule], set[str]]:
    """({name: LycorisModule}, the keys they use) for every LoHa / LoKr module of ``state_dict``.

    Raises ModelLoadError for an incomplete module (a factor missing) or a DoRA module; with
    ``strict=False`` (describing a file) such modules are left out and their keys stay unused.
    """
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        match = _PART.match(key)
        if match:
            grouped.setdefault(match.group(1), {})[match.group(2)] = value
    modules, used = {}, set()
    for name, parts in grouped.items():
        kind = "LoHa" if any(k.startswith("hada_") for k in parts) else "LoKr"
        missing = _missing(kind, parts)
        if not strict and (missing or name + ".dora_scale" in state_dict):
            continue
        if missing:
            raise ModelLoadError(
                f"{source}: {kind} module {name} lacks {', '.join(missing)}; the file is incomplete or damaged."
            )
        if name + ".dora_scale" in state_dict:
            raise ModelLoadError(
                f"{source}: {name} is a DoRA ({kind}) module (.dora_scale), which cannot be merged as a plain "
                "weight difference. Merge it with LyCORIS' own tools."
            )
        alpha = state_dict.get(name + ".alpha")
        if alpha is not None and alpha.numel() != 1:
            if not strict:
                continue
            raise ModelLoadError(
                f"{source}: the alpha of {kind} module {name} has {alpha.numel()} values (shape "
                f"{tuple(alpha.shape)}); it must be one number. The file is damaged."
            )
        modules[name] = LycorisModule(name, kind, parts, float(alpha) if alpha is not None else None)
        used |= {f"{name}.{part}" for part in parts} | {name + ".alpha"}
    return modules, used
