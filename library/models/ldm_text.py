"""Text-encoder keys: LDM single-file layouts <-> transformers ``CLIPTextModel`` state dicts.

SD1 stores the Hugging Face CLIP model under ``cond_stage_model.transformer.text_model.``; SD2
stores OpenCLIP's text tower under ``cond_stage_model.model.`` with q/k/v stacked in
``attn.in_proj_weight`` (rows q, then k, then v). transformers 5 ``CLIPTextModel`` keys have no
``text_model.`` level (``embeddings.*``, ``encoder.layers.N.*``, ``final_layer_norm.*``).
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


def hf_clip_from_ldm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SD1 ``cond_stage_model.transformer.text_model.*`` -> CLIPTextModel keys (position_ids dropped)."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith(HF_CLIP_PREFIX):
            name = key[len(HF_CLIP_PREFIX) :]
            if not name.endswith("position_ids"):
                out[name] = value
    return out


def hf_clip_to_ldm(te_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CLIPTextModel keys -> SD1 single-file keys, with the ``position_ids`` buffer real files carry."""
    out = {HF_CLIP_PREFIX + key: value for key, value in te_state.items()}
    positions = te_state["embeddings.position_embedding.weight"].shape[0]
    out[HF_CLIP_PREFIX + "embeddings.position_ids"] = torch.arange(positions, dtype=torch.int64)[None]
    return out


def open_clip_from_ldm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SD2 ``cond_stage_model.model.*`` (OpenCLIP) -> CLIPTextModel keys.

    All residual blocks present are converted (real SD2 files have 24 while diffusers' SD2 text
    encoder has 23). ``text_projection``, ``logit_scale`` and ``attn_mask`` are dropped.
    """
    out = {}
    for key, value in state_dict.items():
        if not key.startswith(OPEN_CLIP_PREFIX):
            continue
        name = key[len(OPEN_CLIP_PREFIX) :]
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


def open_clip_to_ldm(te_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CLIPTextModel keys -> SD2 OpenCLIP single-file keys.

    Also writes ``text_projection`` (identity, hidden x hidden; unused by SD2 but present in real
    files and read by loaders to size the q/k/v split) and ``logit_scale`` (log(1/0.07)).
    """
    out = {OPEN_CLIP_PREFIX + ldm: te_state[hf] for ldm, hf in OPEN_CLIP_TOP.items()}
    layers = sorted({int(k.split(".")[2]) for k in te_state if k.startswith("encoder.layers.")})
    for layer in layers:
        src = f"encoder.layers.{layer}."
        dst = f"{OPEN_CLIP_PREFIX}transformer.resblocks.{layer}."
        for kind in ("weight", "bias"):
            parts = [te_state[f"{src}self_attn.{p}_proj.{kind}"] for p in ("q", "k", "v")]
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(parts, dim=0)
            for ldm, hf in OPEN_CLIP_BLOCK.items():
                out[f"{dst}{ldm}.{kind}"] = te_state[f"{src}{hf}.{kind}"]
    hidden = te_state["embeddings.token_embedding.weight"].shape[1]
    dtype = te_state["embeddings.token_embedding.weight"].dtype
    out[OPEN_CLIP_PREFIX + "text_projection"] = torch.eye(hidden, dtype=dtype)
    out[OPEN_CLIP_PREFIX + "logit_scale"] = torch.tensor(math.log(1 / 0.07), dtype=dtype)
    return out


def infer_clip_config(te_state: dict[str, torch.Tensor], hidden_act: str) -> dict:
    """CLIPTextConfig kwargs from converted CLIPTextModel keys (heads = hidden / 64, at least 1)."""
    vocab, hidden = te_state["embeddings.token_embedding.weight"].shape
    positions = te_state["embeddings.position_embedding.weight"].shape[0]
    layers = len({k.split(".")[2] for k in te_state if k.startswith("encoder.layers.")})
    intermediate = te_state["encoder.layers.0.mlp.fc1.weight"].shape[0]
    return {
        "vocab_size": int(vocab),
        "hidden_size": int(hidden),
        "intermediate_size": int(intermediate),
        "num_hidden_layers": layers,
        "num_attention_heads": max(1, int(hidden) // 64),
        "max_position_embeddings": int(positions),
        "hidden_act": hidden_act,
        "projection_dim": int(hidden),
        "bos_token_id": 49406,
        "eos_token_id": 49407,
    }
