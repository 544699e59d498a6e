"""LoRAModule's plain-case forward (functional ops, no sub-module calls) gives the numbers and gradients of the
generic path exactly, and hands every other case (dropouts, multiplier 0) to it; where a layer is small enough,
one op on the merged weight gives them up to rounding; a plain Linear or 1x1 Conv2d with its LoRA as one autograd
node gives them up to rounding too, under autocast as well."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from library.networks.base import NetworkModule
from library.networks.lora import LoRAModule


def _pair(layer: nn.Module, x: torch.Tensor, merge: bool = False, fuse: bool = False, **options):
    torch.manual_seed(0)
    module = LoRAModule("lora_test", layer, dim=4, alpha=2, **options)
    nn.init.normal_(module.lora_up.weight)  # a trained-looking up (zeros would hide the delta)
    module.merge_when_cheaper = merge
    module.fuse_with_layer = fuse
    module.apply_to()
    assert module.merges(x) == merge
    results = []
    for forward in (lambda v: layer(v), lambda v: NetworkModule.forward(module, v)):
        module.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_(True)
        torch.manual_seed(1)
        out = forward(xi)
        out.square().sum().backward()
        base_grads = [p.grad for p in layer.parameters() if p.requires_grad]
        layer.zero_grad(set_to_none=True)
        results.append((out.detach(), xi.grad, module.lora_down.weight.grad, module.lora_up.weight.grad,
                        *base_grads))
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
    assert not module.merges(x)  # a bf16 layer and float32 LoRA weights: the separate path, in their dtypes
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


@pytest.mark.parametrize("layer, shape", [(nn.Linear(6, 5), (2, 3, 6)), (nn.Conv2d(6, 5, 1), (2, 6, 4, 4))])
def test_small_layers_run_on_the_merged_weight_with_the_same_numbers(layer, shape):
    x = torch.randn(*shape)
    fresh = copy.deepcopy(layer)
    merged, generic = _pair(layer.requires_grad_(False), x, merge=True)
    for a, b in zip(merged, generic, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    layer = fresh
    module = LoRAModule("lora_test", layer, dim=4)
    module.apply_to()
    assert module.merges(x)
    stacked = LoRAModule("lora_second", layer, dim=4)
    stacked.apply_to()
    assert not stacked.merges(x)  # the layer's forward is the first LoRA's: it must run
    stacked.remove()
    module.multiplier = 0.5  # the multiplier goes into the merged weight
    nn.init.normal_(module.lora_up.weight)
    torch.testing.assert_close(layer(x), NetworkModule.forward(module, x), rtol=1e-5, atol=1e-6)


def test_sd_sized_layers_and_layers_of_other_kinds_keep_the_separate_path():
    big = LoRAModule("lora_test", nn.Linear(320, 320), dim=16)
    big.apply_to()
    assert not big.merges(torch.randn(1, 1024, 320))  # SD1.5's first attention at 256 px: 5x the work merged
    small = LoRAModule("lora_test", nn.Linear(32, 32), dim=8)
    small.apply_to()
    assert small.merges(torch.randn(1, 256, 32))  # the tiny model's

    class Custom(nn.Linear):  # e.g. an fp8 or quantized layer: its own forward must run
        def forward(self, x):
            return super().forward(x) * 2

    for layer in (Custom(32, 32), nn.Conv2d(32, 32, 3, padding=1), nn.Conv2d(32, 32, 1, stride=2),
                  nn.Conv2d(32, 32, 1, groups=2)):
        module = LoRAModule("lora_test", layer, dim=8)
        module.apply_to()
        x = torch.randn(1, 32, 8, 8) if isinstance(layer, nn.Conv2d) else torch.randn(1, 64, 32)
        assert not module.merges(x), layer
    custom = Custom(32, 32).requires_grad_(False)
    module = LoRAModule("lora_test", custom, dim=8)
    nn.init.normal_(module.lora_up.weight)
    module.apply_to()
    x = torch.randn(1, 64, 32)
    torch.testing.assert_close(custom(x), Custom.forward(custom, x) + module.delta_forward(x))
    other = LoRAModule("lora_test", nn.Linear(32, 32), dim=8)
    other.apply_to()
    other.merge_when_cheaper = False
    assert not other.merges(torch.randn(1, 256, 32))


@pytest.mark.parametrize("layer, shape", [
    (nn.Linear(6, 5), (2, 3, 6)),
    (nn.Linear(6, 5, bias=False), (7, 6)),
    (nn.Conv2d(6, 5, 1), (1, 6, 4, 4)),
    (nn.Conv2d(6, 5, 1, bias=False), (3, 6, 4, 5)),
])
@pytest.mark.parametrize("frozen", [True, False])
def test_layer_and_lora_as_one_node_give_the_generic_numbers_and_every_gradient(layer, shape, frozen):
    x = torch.randn(*shape)
    fused, generic = _pair(layer.requires_grad_(not frozen), x, fuse=True)
    assert len(fused) == (4 if frozen else 4 + len(list(layer.parameters())))
    for a, b in zip(fused, generic, strict=True):
        assert a is not None and a.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_one_node_is_taken_where_it_fits_and_the_separate_path_elsewhere(monkeypatch):
    from library.networks import lora as lora_module

    calls = []
    for name in ("lora_linear", "lora_pointwise_conv"):
        real = getattr(lora_module, name)
        monkeypatch.setattr(lora_module, name, lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))
    linear = LoRAModule("lora_test", nn.Linear(320, 320), dim=16)
    linear.apply_to()
    x = torch.randn(1, 1024, 320)
    linear.org_module(x)
    conv = LoRAModule("lora_test", nn.Conv2d(320, 320, 1), dim=16)
    conv.apply_to()
    conv.org_module(torch.randn(1, 320, 32, 32))
    assert calls == ["lora_linear", "lora_pointwise_conv"]
    calls.clear()
    conv.org_module(torch.randn(1, 32, 32, 320).permute(0, 3, 1, 2))  # channels-last: the convolution's own op
    half_base = LoRAModule("lora_test", nn.Linear(320, 320).to(torch.bfloat16), dim=16)  # fp32 LoRA outside autocast
    half_base.apply_to()
    assert half_base.org_module(x.to(torch.bfloat16)).dtype == torch.bfloat16
    locon = LoRAModule("lora_test", nn.Conv2d(32, 32, 3, padding=1), dim=8)
    locon.apply_to()
    locon.org_module(torch.randn(1, 32, 8, 8))
    linear.fuse_with_layer = False
    linear.org_module(x)
    assert calls == []


@pytest.mark.parametrize("layer, shape", [(nn.Linear(64, 48), (2, 40, 64)), (nn.Conv2d(64, 48, 1), (2, 64, 6, 6))])
def test_one_node_under_autocast_computes_in_its_dtype_as_the_layer_would(layer, shape):
    layer.requires_grad_(False)
    x = torch.randn(*shape)
    results = []
    for fuse in (True, False):
        torch.manual_seed(0)
        module = LoRAModule("lora_test", layer, dim=8)
        nn.init.normal_(module.lora_up.weight)
        module.fuse_with_layer = fuse
        module.apply_to()
        xi = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(xi)
        assert out.dtype == torch.bfloat16
        out.float().square().sum().backward()
        results.append((out.float(), xi.grad, module.lora_down.weight.grad, module.lora_up.weight.grad))
        assert module.lora_down.weight.grad.dtype == torch.float32
        module.remove()
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)


def test_one_node_traces_on_the_meta_device():
    module = LoRAModule("lora_test", nn.Linear(32, 24).to("meta"), dim=4).to("meta")
    module.apply_to()
    module.merge_when_cheaper = False
    x = torch.empty(2, 5, 32, device="meta", requires_grad=True)
    out = module.org_module(x)
    assert out.shape == (2, 5, 24) and out.device.type == "meta"
    out.sum().backward()
    assert x.grad.shape == x.shape and module.lora_up.weight.grad.shape == (24, 4)


def test_one_node_under_gradient_checkpointing_gives_the_same_gradients():
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 8)).requires_grad_(False)
    modules = [LoRAModule(f"lora_{i}", model[i], dim=4) for i in (0, 2)]
    for module in modules:
        nn.init.normal_(module.lora_up.weight)
        module.merge_when_cheaper = False
        module.apply_to()
    x = torch.randn(3, 16)
    grads = []
    for run in (lambda: model(x), lambda: checkpoint(model, x, use_reentrant=False)):
        for module in modules:
            module.zero_grad(set_to_none=True)
        run().square().sum().backward()
        grads.append([p.grad.clone() for module in modules for p in (module.lora_down.weight, module.lora_up.weight)])
    for a, b in zip(*grads, strict=True):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b)
