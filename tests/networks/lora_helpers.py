"""Test helpers written independently of library.networks: hand-computed LoRA merges and model inputs."""

from __future__ import annotations

import copy

import torch

from library.networks.keys import TE_ROOT


def randomize_up_weights(network, seed: int = 1, std: float = 0.2) -> None:
    """Give every lora_up a random value (a fresh LoRA has zeros there, so it would change nothing)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in network.named_parameters():
            if name.endswith("lora_up.weight"):
                param.copy_(torch.randn(param.shape, generator=gen) * std)


def hand_delta(down: torch.Tensor, up: torch.Tensor, alpha: float) -> torch.Tensor:
    """ΔW = up·down·alpha/rank computed with einsum, for Linear (2-D) and Conv2d (4-D, 1x1 up)."""
    rank = down.shape[0]
    if down.dim() == 2:
        return torch.einsum("or,ri->oi", up.double(), down.double()) * (alpha / rank)
    return torch.einsum("or,rikl->oikl", up[:, :, 0, 0].double(), down.double()) * (alpha / rank)


def merged_copy(model: torch.nn.Module, state_dict: dict, prefix: str, te: bool = False) -> torch.nn.Module:
    """A deep copy of ``model`` whose LoRA target weights are W + ΔW, matched by key name by hand."""
    merged = copy.deepcopy(model)
    by_name = {}
    for path, module in merged.named_modules():
        key_path = TE_ROOT + path if te and not path.startswith(TE_ROOT) else path
        by_name[f"{prefix}_{key_path.replace('.', '_')}"] = module
    applied = 0
    with torch.no_grad():
        for key, down in state_dict.items():
            if not key.startswith(prefix + "_") or not key.endswith(".lora_down.weight"):
                continue
            name = key[: -len(".lora_down.weight")]
            up = state_dict[name + ".lora_up.weight"]
            alpha = float(state_dict[name + ".alpha"])
            layer = by_name[name]
            delta = hand_delta(down, up, alpha).reshape(layer.weight.shape)
            layer.weight.copy_((layer.weight.double() + delta).float())
            applied += 1
    assert applied > 0, f"no {prefix} keys merged"
    return merged


def unet_inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(latents (2, 4, 16, 16), timesteps (2,), text states (2, 77, 32)) for the tiny UNet."""
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(2, 4, 16, 16, generator=gen)
    timesteps = torch.tensor([10, 500])
    states = torch.randn(2, 77, 32, generator=gen)
    return latents, timesteps, states


def token_ids(seed: int = 0) -> torch.Tensor:
    """(2, 77) token ids starting with BOS, ending with EOS padding."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(300, 40000, (2, 77), generator=gen)
    ids[:, 0] = 49406
    ids[:, 20:] = 49407
    return ids
