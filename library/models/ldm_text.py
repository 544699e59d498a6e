"""Text-encoder keys: LDM single-file layouts <-> transformers ``CLIPTextModel`` state dicts.

SD1 stores the Hugging Face CLIP model under ``cond_stage_model.transformer.text_model.``; SD2
stores OpenCLIP's text tower under ``cond_stage_model.model.`` with q/k/v stacked in
``attn.in_proj_weight`` (rows q, then k, then v). SDXL (SGM layout) stores the same two layouts
under ``conditioner.embedders.0.transformer.text_model.`` and ``conditioner.embedders.1.model.``,
the second with its real ``text_projection``. transformers 5 ``CLIPTextModel`` keys have no
``text_model.`` level (``embeddings.*``, ``encoder.layers.N.*``, ``final_layer_norm.*``); the
projection, when kept, is ``text_projection.weight`` (projection_dim, hidden) as in
``CLIPTextModelWithProjection``.
"""

from __future__ import annotations

import math
import re

import torch

HF_CLIP_PREFIX = "cond_stage_model.transformer.text_model."
OPEN_CLIP_PREFIX = "cond_stage_model.model."

# OpenCLIP name -> CLIPTextModel name, inside one residual block.
OPEN_CLIP_BLOCK = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
OPEN_CLIP_TOP = {
    "token_embedding.weight": "embeddings.token_embedding.weight",
    "positional_embedding": "embeddings.position_embedding.weight",
    "ln_final.weight": "final_layer_norm.weight",
    "ln_final.bias": "final_layer_norm.bias",
}
_RESBLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)$")
_IN_PROJ = re.compile(r"^transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$")
#: The Linear weight of ``CLIPTextModelWithProjection``'s projection, (projection_dim, hidden).
PROJECTION_KEY = "text_projection.weight"


def hf_clip_from_ldm(
    state_dict: dict[str, torch.Tensor], prefix: str = HF_CLIP_PREFIX
) -> dict[str, torch.Tensor]:
    """``{prefix}*`` (HF CLIP layout; SD1's by default) -> CLIPTextModel keys (position_ids dropped)."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith(prefix):
            name = key[len(prefix) :]
            if not name.endswith("position_ids"):
                out[name] = value
    return out


def hf_clip_to_ldm(
    te_state: dict[str, torch.Tensor], prefix: str = HF_CLIP_PREFIX
) -> dict[str, torch.Tensor]:
    """CLIPTextModel keys -> ``{prefix}*`` single-file keys, with the ``position_ids`` buffer real files carry."""
    out = {prefix + key: value for key, value in te_state.items()}
    positions = te_state["embeddings.position_embedding.weight"].shape[0]
    out[prefix + "embeddings.position_ids"] = torch.arange(positions, dtype=torch.int64)[None]
    return out


def open_clip_from_ldm(
    state_dict: dict[str, torch.Tensor], prefix: str = OPEN_CLIP_PREFIX, keep_projection: bool = False
) -> dict[str, torch.Tensor]:
    """``{prefix}*`` OpenCLIP keys (SD2's ``cond_stage_model.model.`` by default) -> CLIPTextModel keys.

    All residual blocks present are converted (real SD2 files have 24 while diffusers' SD2 text
    encoder has 23). ``logit_scale`` and ``attn_mask`` are dropped; ``text_projection`` (hidden,
    projection_dim) is dropped too, unless ``keep_projection`` (SDXL), which returns its transpose
    as ``text_projection.weight`` (projection_dim, hidden), the ``CLIPTextModelWithProjection`` Linear.
    """
    out = {}
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix) :]
        if name == "text_projection" and keep_projection:
            out[PROJECTION_KEY] = value.t().contiguous()
            continue
        if name in OPEN_CLIP_TOP:
            out[OPEN_CLIP_TOP[name]] = value
            continue
        match = _IN_PROJ.match(name)
        if match:
            layer, kind = match.groups()
            for part, chunk in zip(("q", "k", "v"), value.chunk(3, dim=0), strict=True):
                out[f"encoder.layers.{layer}.self_attn.{part}_proj.{kind}"] = chunk.clone()
            continue
        match = _RESBLOCK.match(name)
        if match and match.group(2) in OPEN_CLIP_BLOCK:
            layer, module, kind = match.groups()
            out[f"encoder.layers.{layer}.{OPEN_CLIP_BLOCK[module]}.{kind}"] = value
    return out


def open_clip_to_ldm(
    te_state: dict[str, torch.Tensor], prefix: str = OPEN_CLIP_PREFIX, keep_projection: bool = False
) -> dict[str, torch.Tensor]:
    """CLIPTextModel keys -> ``{prefix}*`` OpenCLIP single-file keys (SD2's prefix by default).

    Also writes ``text_projection`` and ``logit_scale`` (log(1/0.07)). The projection is the identity
    (hidden x hidden; unused by SD2 but present in real files and read by loaders to size the q/k/v
    split) unless ``keep_projection`` (SDXL): then it is the transpose of ``te_state``'s
    ``text_projection.weight``, (hidden, projection_dim), as OpenCLIP applies it (``x @ text_projection``).
    """
    out = {prefix + ldm: te_state[hf] for ldm, hf in OPEN_CLIP_TOP.items()}
    layers = sorted({int(k.split(".")[2]) for k in te_state if k.startswith("encoder.layers.")})
    for layer in layers:
        src = f"encoder.layers.{layer}."
        dst = f"{prefix}transformer.resblocks.{layer}."
        for kind in ("weight", "bias"):
            parts = [te_state[f"{src}self_attn.{p}_proj.{kind}"] for p in ("q", "k", "v")]
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(parts, dim=0)
            for ldm, hf in OPEN_CLIP_BLOCK.items():
                out[f"{dst}{ldm}.{kind}"] = te_state[f"{src}{hf}.{kind}"]
    hidden = te_state["embeddings.token_embedding.weight"].shape[1]
    dtype = te_state["embeddings.token_embedding.weight"].dtype
    if keep_projection:
        out[prefix + "text_projection"] = te_state[PROJECTION_KEY].t().contiguous()
    else:
        out[prefix + "text_projection"] = torch.eye(hidden, dtype=dtype)
    out[prefix + "logit_scale"] = torch.tensor(math.log(1 / 0.07), dtype=dtype)
    return out


def infer_clip_config(te_state: dict[str, torch.Tensor], hidden_act: str) -> dict:
    """CLIPTextConfig kwargs from converted CLIPTextModel keys (heads = hidden / 64, at least 1).

    ``projection_dim`` is the rows of ``text_projection.weight`` when the keys carry it, else hidden.
    """
    vocab, hidden = te_state["embeddings.token_embedding.weight"].shape
    positions = te_state["embeddings.position_embedding.weight"].shape[0]
    layers = len({k.split(".")[2] for k in te_state if k.startswith("encoder.layers.")})
    projection = te_state[PROJECTION_KEY].shape[0] if PROJECTION_KEY in te_state else hidden
    intermediate = te_state["encoder.layers.0.mlp.fc1.weight"].shape[0]
    return {
        "vocab_size": int(vocab),
        "hidden_size": int(hidden),
        "intermediate_size": int(intermediate),
        "num_hidden_layers": layers,
        "num_attention_heads": max(1, int(hidden) // 64),
        "max_position_embeddings": int(positions),
        "hidden_act": hidden_act,
        "projection_dim": int(projection),
        "bos_token_id": 49406,
        "eos_token_id": 49407,
    }
