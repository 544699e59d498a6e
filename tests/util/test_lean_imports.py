"""A trainer's start does not import bitsandbytes or peft through diffusers; its models and the 8-bit optimizers
still work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys
from library.util.lean_imports import skip_diffusers_extras
done = skip_diffusers_extras()
from diffusers import AutoencoderKL, UNet2DConditionModel  # the model code a trainer loads
import importlib.util
quantizer = sys.modules["diffusers.quantizers.bitsandbytes.utils"]
out = {"done": done, "diffusers_took_bnb": hasattr(quantizer, "bnb"), "again": skip_diffusers_extras(),
       "bnb_loaded": "bitsandbytes" in sys.modules, "peft_loaded": "peft" in sys.modules,
       "peft_installed": importlib.util.find_spec("peft") is not None}
import torch
vae = AutoencoderKL(block_out_channels=[8], down_block_types=["DownEncoderBlock2D"],
                    up_block_types=["UpDecoderBlock2D"], latent_channels=4, norm_num_groups=4)
out["latent_shape"] = list(vae.encode(torch.zeros(1, 3, 16, 16)).latent_dist.mean.shape)
unet = UNet2DConditionModel(sample_size=8, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                            cross_attention_dim=8, attention_head_dim=2,
                            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
out["unet_shape"] = list(unet(torch.zeros(1, 4, 8, 8), 1, torch.zeros(1, 3, 8)).sample.shape)
out["peft_after_forward"] = "peft" in sys.modules  # diffusers' forward wrapper imports it when it thinks it may
from library.training.optimizers import build_optimizer
p = torch.nn.Parameter(torch.zeros(4096))
p.grad = torch.ones(4096)
opt = build_optimizer([{"params": [p]}], "AdamW8bit", 1e-2, [])
opt.step()
out["bnb_optimizer"] = type(opt).__module__
out["moved"] = float(p.detach().abs().sum()) > 0
print(json.dumps(out))
"""


@pytest.mark.slow  # a fresh interpreter importing torch and diffusers
def test_diffusers_models_load_without_bitsandbytes_or_peft_and_8bit_adam_still_works():
    pytest.importorskip("bitsandbytes")
    run = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["done"] and not out["diffusers_took_bnb"] and not out["again"] and out["moved"]
    assert out["peft_installed"]  # a test requirement, so the probe shows that diffusers leaves it alone
    assert not out["peft_loaded"] and not out["bnb_loaded"]  # nothing imports either before the optimizer
    assert out["latent_shape"] == [1, 4, 16, 16]
    assert out["unet_shape"] == [1, 4, 8, 8] and not out["peft_after_forward"]
    assert out["bnb_optimizer"].startswith("bitsandbytes")
