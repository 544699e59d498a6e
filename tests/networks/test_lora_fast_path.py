"""LoRAModule's plain-case forward (functional ops, no sub-module calls) gives the numbers and gradients of the
generic path exactly, and hands every other case (dropouts, multiplier 0) to it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from library.networks.base import NetworkModule
from library.networks.lora import LoRAModule


def _pair(layer: nn.Module, x: torch.Tensor, **options):
    torch.manual_seed(0)
    module = LoRAModule("lora_test", layer, dim=4, alpha=2, **options)
    nn.init.normal_(module.lora_up.weight)  # a trained-looking up (zeros would hide the delta)
    module.apply_to()
    results = []
    for forward in (lambda v: layer(v), lambda v: NetworkModule.forward(module, v)):
        module.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_(True)
        torch.manual_seed(1)
        out = forward(xi)
        out.square().sum().backward()
        results.append((out.detach(), xi.grad, module.lora_down.weight.grad, module.lora_up.weight.grad))
    return results


@pytest.mark.parametrize("layer, shape", [
    (nn.Linear(6, 5), (2, 3, 6)),
    (nn.Conv2d(6, 5, 1), (2, 6, 4, 4)),
    (nn.Conv2d(6, 5, 3, stride=2, padding=1), (2, 6, 8, 8)),  # LoCon: down keeps the kernel, stride, padding
])
def test_plain_forward_matches_the_generic_path_bit_for_bit(layer, shape):
    x = torch.randn(*shape)
    fast, generic = _pair(layer.requires_grad_(False), x)
    for a, b in zip(fast, generic, strict=True):
        assert torch.equal(a, b)
    assert fast[0].abs().sum() > 0 and fast[2].abs().sum() > 0


def test_multiplier_and_a_base_of_another_dtype():
    layer = nn.Linear(6, 5).to(torch.bfloat16).requires_grad_(False)
    torch.manual_seed(0)
    module = LoRAModule("lora_test", layer, dim=4)
    nn.init.normal_(module.lora_up.weight)
    module.multiplier = 0.5
    module.apply_to()
    x = torch.randn(3, 6, dtype=torch.bfloat16)
    out = layer(x)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, NetworkModule.forward(module, x))
    module.multiplier = 0.0
    assert torch.equal(layer(x), nn.Linear.forward(layer, x))


@pytest.mark.parametrize("options", [{"dropout": 0.5}, {"rank_dropout": 0.5}, {"module_dropout": 0.5}])
def test_dropouts_take_the_generic_path(options):
    fast, generic = _pair(nn.Linear(6, 5).requires_grad_(False), torch.randn(4, 6), **options)
    assert torch.equal(fast[0], generic[0])  # the same draws in the same order
    module = LoRAModule("lora_test", nn.Linear(6, 5), dim=4, **options)
    module.apply_to()
    module.eval()  # no dropout outside training: the plain path
    x = torch.randn(4, 6)
    assert torch.equal(module.org_module(x), NetworkModule.forward(module, x))


def test_unapplied_module_says_so():
    module = LoRAModule("lora_test", nn.Linear(6, 5), dim=4)
    with pytest.raises(RuntimeError, match="apply_to"):
        module(torch.randn(1, 6))
