"""fp8 weight storage keeps the numbers fp8 promises; block swapping moves blocks in order and changes nothing."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from library.models.memory import (
    FP8_MAX,
    BlockSwapper,
    Fp8Conv2d,
    Fp8Linear,
    fp8_layer_count,
    fp8_rounding_bound,
    store_in_fp8,
    to_fp8,
)
from library.networks.lora import LoRAModule


def test_fp8_round_trip_stays_within_the_rounding_bound():
    g = torch.Generator().manual_seed(0)
    values = torch.cat([torch.randn(20000, generator=g) * s for s in (1e-4, 1e-2, 0.1, 1.0, 30.0)])
    back = to_fp8(values).float()
    error = (back - values).abs()
    assert bool((error <= fp8_rounding_bound(values)).all())
    assert float(error.max()) > 0  # it does round
    assert float(to_fp8(torch.tensor([1e6, -1e6])).float().abs().max()) == FP8_MAX


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.linear = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)

    def forward(self, x):
        return self.norm(torch.nn.functional.gelu(self.linear(x)))


class Stack(nn.Module):
    def __init__(self, width=16, depth=4, ckpt=False):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.3
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.ckpt = ckpt

    def forward(self, x):
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False) if self.ckpt else block(x)
        return x


def test_store_in_fp8_keeps_norms_and_computes_in_the_input_dtype():
    model = Stack()
    linear = model.blocks[0].linear
    before = linear.weight.detach().clone()
    x = torch.randn(2, 16)
    expected = torch.nn.functional.linear(x, to_fp8(before).float(), linear.bias)
    saved = store_in_fp8(model)
    assert isinstance(linear, Fp8Linear) and isinstance(model.conv, Fp8Conv2d)
    assert fp8_layer_count(model) == 5
    assert linear.weight.dtype == torch.float8_e4m3fn and not linear.weight.requires_grad
    assert model.blocks[0].norm.weight.dtype == torch.float32  # LayerNorm untouched
    assert saved == sum(b.linear.weight.numel() * 3 for b in model.blocks) + model.conv.weight.numel() * 3
    assert bool(((linear.weight.float() - before).abs() <= fp8_rounding_bound(before)).all())
    torch.testing.assert_close(linear(x), expected)
    assert linear(x.to(torch.bfloat16)).dtype == torch.bfloat16
    assert model.conv(torch.randn(1, 3, 5, 5)).shape == (1, 4, 5, 5)


def test_lora_on_an_fp8_layer_trains_in_full_precision():
    model = Stack()
    store_in_fp8(model)
    lora = LoRAModule("lora_unet_x", model.blocks[0].linear, dim=4)
    lora.apply_to()
    nn.init.normal_(lora.lora_up.weight)
    out = model(torch.randn(3, 16))
    out.sum().backward()
    assert lora.lora_up.weight.dtype == torch.float32 and lora.lora_up.weight.grad is not None
    assert model.blocks[0].linear.weight.grad is None


class Recorder:
    def __init__(self, blocks):
        self.index = {id(b): i for i, b in enumerate(blocks)}
        self.calls = []

    def __call__(self, block, device):
        self.calls.append((self.index[id(block)], device.type))


@pytest.mark.parametrize("ckpt", [False, True])
def test_block_swapping_gives_the_same_gradients_and_moves_in_order(ckpt):
    def run(swap: bool):
        model = Stack(ckpt=ckpt)
        for p in model.parameters():
            p.requires_grad_(False)
        adapters = []
        for i, block in enumerate(model.blocks):
            lora = LoRAModule(f"lora_{i}", block.linear, dim=2, generator=torch.Generator().manual_seed(i))
            nn.init.normal_(lora.lora_up.weight, generator=torch.Generator().manual_seed(10 + i))
            lora.apply_to()
            block.add_module("lora", lora)  # the adapter moves with its block
            adapters.append(lora)
        recorder = Recorder(model.blocks)
        if swap:
            BlockSwapper(model.blocks, 2, "cpu", mover=recorder).install()
        x = torch.randn(3, 16, generator=torch.Generator().manual_seed(5)).requires_grad_(True)
        model(x).square().sum().backward()
        return [a.lora_down.weight.grad.clone() for a in adapters], x.grad.clone(), recorder.calls

    plain_grads, plain_x, _ = run(False)
    grads, x_grad, calls = run(True)
    for a, b in zip(plain_grads, grads, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(plain_x, x_grad)
    install = [(0, "cpu"), (1, "cpu")]
    assert calls[:2] == install
    moves = calls[2:]
    forward = [(0, "cpu"), (0, "cpu"), (1, "cpu"), (1, "cpu")]
    assert moves[:4] == forward  # in before each block, out after it
    backward = [i for i, _ in moves[4:]]
    assert backward[0] == 1 and backward[-1] == 0 and sorted(set(backward)) == [0, 1]  # last block first
    assert backward.index(0) > len(backward) - 1 - backward[::-1].index(1)  # block 1 done before block 0


def test_block_swap_count_is_checked():
    with pytest.raises(ValueError, match="between 0 and 4"):
        BlockSwapper(Stack().blocks, 5, "cpu")


@pytest.mark.parametrize("early_stop", [True, False])
def test_a_block_is_on_the_device_whenever_its_layers_run(early_stop):
    """Also while gradient checkpointing recomputes its forward inside the backward (with and without the
    recompute's early stop): the recompute's forward hook must not send the weights away."""
    model = Stack(ckpt=True)
    for p in model.parameters():
        p.requires_grad_(False)
    for i, block in enumerate(model.blocks):
        block.add_module("lora", LoRAModule(f"l{i}", block.linear, dim=2))
        block.lora.apply_to()
    where = {}
    index = {id(b): i for i, b in enumerate(model.blocks)}
    ran = []

    def mover(block, device):
        where[index[id(block)]] = device.type

    def check(i):
        def hook(module, args):
            ran.append(i)
            assert where.get(i, "cpu") == "cpu", f"block {i} ran while its weights were on the host"
        return hook

    for i, block in enumerate(model.blocks):
        block.linear.register_forward_pre_hook(check(i))
    BlockSwapper(model.blocks, 3, "cpu", host="meta", mover=mover).install()
    assert where == {0: "meta", 1: "meta", 2: "meta"}
    x = torch.randn(2, 16).requires_grad_(True)
    with torch.utils.checkpoint.set_checkpoint_early_stop(early_stop):
        model(x).sum().backward()
    assert ran.count(0) == 2 and ran.count(3) == 2  # forward and recompute
    assert where == {0: "meta", 1: "meta", 2: "meta"}


def test_move_except_leaves_the_kept_blocks_where_they_are():
    from library.models.memory import move_except

    model = Stack()
    model.blocks[1].register_buffer("scale", torch.ones(3))
    move_except(model, torch.device("meta"), [model.blocks[1]])
    for i, block in enumerate(model.blocks):
        devices = {t.device.type for t in [*block.parameters(), *block.buffers()]}
        assert devices == ({"cpu"} if i == 1 else {"meta"}), i


@pytest.mark.parametrize("family_name", ["sd1", "sdxl"])
def test_an_fp8_stored_unet_gets_its_inputs_in_full_precision(family_name):
    """fp8_base: the UNet's Linear/Conv weights are fp8, but its inputs (noisy latents, text states) must stay in
    the compute dtype; diffusers' ``unet.dtype`` names the first parameter's (fp8) and rounded them to 3 bits."""
    from types import SimpleNamespace

    from library.models.family import Conditioning, get_model_family
    from library.models.tiny import builtin_components

    family = get_model_family(family_name)
    unet = builtin_components(family_name)["unet"].float()
    store_in_fp8(unet)
    assert unet.conv_in.weight.dtype == torch.float8_e4m3fn  # what diffusers' unet.dtype would report
    assert family.compute_dtype(unet) == torch.float32
    seen = []
    unet.conv_in.register_forward_pre_hook(lambda _m, args: seen.append(args[0].dtype))
    width = unet.config.cross_attention_dim
    g = torch.Generator().manual_seed(0)
    noisy = torch.randn(1, 4, 8, 8, generator=g)
    pooled = None
    if family_name == "sdxl":
        config = unet.config
        pooled = torch.randn(1, config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim,
                             generator=g)
    batch = {"original_sizes_hw": [(64, 64)], "crop_top_lefts": [(0, 0)], "target_sizes_hw": [(64, 64)]}
    out = family.predict(SimpleNamespace(unet=unet), noisy, torch.tensor([10]),
                         Conditioning(torch.randn(1, 77, width, generator=g), pooled), batch)
    assert seen == [torch.float32] and out.dtype == torch.float32 and bool(torch.isfinite(out).all())
