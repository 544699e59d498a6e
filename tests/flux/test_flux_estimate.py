"""--estimate for FLUX.1-dev-sized configs without weights (meta tensors): fp8_base halves the frozen
transformer, blocks_to_swap moves its blocks to host memory, cached text outputs drop the text encoders."""

from __future__ import annotations

import pytest

from library.config.load import config_from_values
from library.training.estimate import estimate_run
from library.training.estimate.device import DeviceInfo
from library.training.estimate.shapes import flux_dev_shapes
from library.training.lora_target import LoRATarget

pytestmark = pytest.mark.slow
GIB = 1024**3


def estimate_result(tiny_dataset, tmp_path, **extra):
    values = dict(pretrained_model_name_or_path="builtin:tiny", train_data_dir=str(tiny_dataset / "train"),
                  output_dir=str(tmp_path / "out"), resolution=64, train_batch_size=1,
                  network_module="networks.lora_flux", network_dim=16, network_train_unet_only=True,
                  mixed_precision="bf16", gradient_checkpointing=True, optimizer_type="AdamW",
                  cache_text_encoder_outputs=True, cache_latents=True, max_train_steps=10, learning_rate=1e-4)
    config = config_from_values({**values, **extra}, "network")
    return estimate_run(config, LoRATarget(config), device=DeviceInfo("cuda", "GPU", None), measure_speed=False,
                        model=flux_dev_shapes())


def resident(result):
    return {line.label: line.bytes for line in result.resident}


@pytest.fixture(scope="module")
def runs(tiny_dataset, tmp_path_factory):
    """The three estimates the tests read (each traces a FLUX.1-dev-sized step on the meta device, ~9 s on
    2 cores): bf16 at the defaults, and fp8 + AdamW8bit at 1024 px with 16 and with 28 blocks swapped (the
    weights' lines do not depend on the resolution or the optimizer)."""
    tmp_path = tmp_path_factory.mktemp("flux_estimate")
    common = dict(resolution=1024, optimizer_type="AdamW8bit", fp8_base=True)
    return {
        "bf16": estimate_result(tiny_dataset, tmp_path),
        "swap16": estimate_result(tiny_dataset, tmp_path, blocks_to_swap=16, **common),
        "swap28": estimate_result(tiny_dataset, tmp_path, blocks_to_swap=28, **common),
    }


def test_fp8_and_block_swapping_in_the_estimate(runs):
    bf16 = resident(runs["bf16"])
    transformer = bf16["UNet weights (frozen)"]
    assert 11.8e9 * 2 < transformer < 12.0e9 * 2  # 11.9B parameters in bf16
    assert not any(label.startswith("text encoder") for label in bf16)  # cached outputs: encoders leave the GPU
    swapped = resident(runs["swap16"])
    # fp8: weights 1 byte (biases and norms stay bf16); sd-scripts' count: 8 of the 19 double blocks (about
    # 340M parameters each) and 16 of the 38 single blocks (about 142M) leave the device, two are in flight
    fp8 = swapped["UNet weights (frozen)"] + 8 * 339.8e6 + 16 * 141.6e6
    assert abs(fp8 - transformer / 2) < 0.01 * transformer
    assert 0 < swapped["swapped blocks in flight (blocks_to_swap)"] < 1.0 * GIB
    more = resident(runs["swap28"])
    assert more["UNet weights (frozen)"] < swapped["UNet weights (frozen)"]


def test_checkpointed_activations_at_1024_and_the_published_configs(runs):
    """One 1024x1024 picture: 4096 image + 512 text tokens of width 3072 through 57 blocks. Checkpointed, the
    step keeps each block's two inputs (about 28 MiB each in bf16) plus one block's recompute; sd-scripts'
    published fits (fp8 + blocks_to_swap 16 in 12 GB, 28 in 8 GB, AdamW8bit) hold in the estimate."""
    swap16 = runs["swap16"]
    activations = swap16.step[0].bytes
    assert 1.0 * GIB < activations < 4 * GIB
    assert swap16.peak_bytes < 12 * GIB
    swap28 = runs["swap28"]
    assert swap28.peak_bytes < 8.5 * GIB and swap28.peak_bytes < swap16.peak_bytes - 1.5 * GIB
