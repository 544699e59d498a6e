"""The VAE encoder's own cost: pictures already decoded and resized in memory, encoded in batches; seconds per
picture in a fresh process, as the trainer's caching meets them (its first batch pays the kernels' set-up). A
worker run by ``bench/run.py`` (prints one JSON line), twice: before and after the trainer's latent caching, which
is compared with the mean of the two.

    python bench/vae_cost.py MODEL.safetensors TRAIN_DIR --resolution 256 --batch_size 4
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import library  # noqa: E402,F401 - huge pages before the first tensor: the trainers' allocator on both sides of each ratio


def load_vae(path: str):
    from diffusers import AutoencoderKL
    from safetensors import safe_open

    from bench.workloads import sd15_vae_config
    from library.models.ldm_convert import vae_from_ldm

    with torch.device("meta"):
        vae = AutoencoderKL(**sd15_vae_config())
    prefix = "first_stage_model."
    with safe_open(path, framework="pt") as f:
        ldm = {k[len(prefix):]: f.get_tensor(k).float() for k in f.keys() if k.startswith(prefix)}
    vae.load_state_dict(vae_from_ldm(ldm, dict(vae.config)), assign=True, strict=True)
    return vae.eval().requires_grad_(False)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("train_dir")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch_size", type=int, default=1)
    args = p.parse_args()
    import numpy as np
    from PIL import Image

    vae = load_vae(args.model).to(args.device)
    files = sorted(Path(args.train_dir).rglob("*.jpg"))
    pixels = []
    for f in files:
        img = Image.open(f).convert("RGB").resize((args.resolution, args.resolution), Image.LANCZOS)
        pixels.append((torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 127.5 - 1).to(args.device))

    def encode_all() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            for i in range(0, len(pixels), args.batch_size):
                vae.encode(torch.stack(pixels[i:i + args.batch_size])).latent_dist.sample()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    seconds = encode_all()  # as the trainer meets them: in a fresh process, the kernels' first calls included
    print(json.dumps({"images": len(pixels), "seconds": seconds, "s_per_image": seconds / len(pixels)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
