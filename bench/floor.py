"""The floor: the frozen base UNet's forward plus the backward pass to its input, nothing else (no optimizer, no
network, no data pipeline). A worker run by ``bench/run.py``; prints one JSON line.

    python bench/floor.py MODEL.safetensors --resolution 256 --steps 5 [--warmup 1] [--checkpointing]

The UNet is built on the meta device and takes the file's tensors (cast to fp32) as its parameters, so no
second copy exists at any time. Also reported: the machine's fp32 matmul rate, and the floor's FLOP count
(counted on the warm-up step) and achieved rate.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import library  # noqa: E402,F401 - huge pages before the first tensor: the trainers' allocator on both sides of each ratio
from library.util.host_memory import keep_freed_memory  # noqa: E402


def load_unet(path: str):
    """The frozen UNet of ``path`` (an SD1.5-layout single file) or of the built-in tiny model (``builtin:tiny``:
    its seeded random weights, as the trainer builds them)."""
    from diffusers import UNet2DConditionModel

    if path.startswith("builtin:"):
        from library.models.tiny import BUILTIN_NAMES, tiny_components

        return tiny_components(BUILTIN_NAMES[path])["unet"].float().eval().requires_grad_(False)
    from safetensors import safe_open

    from bench.workloads import sd15_unet_config
    from library.models.ldm_convert import unet_from_ldm

    with torch.device("meta"):
        unet = UNet2DConditionModel(**sd15_unet_config())
    prefix = "model.diffusion_model."
    with safe_open(path, framework="pt") as f:
        ldm = {k[len(prefix):]: f.get_tensor(k).float() for k in f.keys() if k.startswith(prefix)}
    state = unet_from_ldm(ldm, dict(unet.config))
    del ldm
    unet.load_state_dict(state, assign=True, strict=True)
    return unet.eval().requires_grad_(False)


def matmul_gflops(n: int = 1024, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--checkpointing", action="store_true")
    args = p.parse_args()
    rate = matmul_gflops()
    unet = load_unet(args.model).to(args.device)
    keep_freed_memory()  # the training loop's allocator: its steps find the pages the last one freed
    if args.checkpointing:
        unet.enable_gradient_checkpointing()
        unet.train()  # diffusers checkpoints only in training mode
    side = args.resolution // 8
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, side, side, generator=gen).to(args.device).requires_grad_(True)
    context = torch.randn(1, 77, unet.config.cross_attention_dim, generator=gen).to(args.device)
    timestep = torch.tensor([500], device=args.device)
    cuda = args.device.startswith("cuda")

    def step():
        out = unet(latents, timestep, context).sample
        out.float().mean().backward()
        latents.grad = None
        if cuda:
            torch.cuda.synchronize()

    from torch.utils.flop_counter import FlopCounterMode

    flops = 0
    times = []
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        if i == 0:
            with FlopCounterMode(display=False) as counter:
                step()
            flops = counter.get_total_flops()
        else:
            step()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(json.dumps({"step_s": median, "times": times, "flops": flops, "matmul_gflops": rate,
                      "achieved_gflops": flops / median / 1e9,
                      "cuda_peak_bytes": torch.cuda.max_memory_allocated() if cuda else None}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
