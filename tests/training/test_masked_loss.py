"""alpha_mask / masked_loss: the alpha channel masks the loss, cropped and flipped with the picture."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from library.config.load import config_from_values
from library.errors import UserError
from library.training.data_setup import build_dataset
from library.training.loss import per_sample_loss
from tests.training.helpers import base_options, read_lora, train


def rgba_dataset(root, alpha_left: int, alpha_right: int, size=(96, 64)):
    """train/2_sks thing: 4 RGBA pictures whose left and right halves have the given alpha."""
    folder = root / "train" / "2_sks thing"
    folder.mkdir(parents=True)
    for i in range(4):
        pixels = np.full((size[1], size[0], 4), (200, 40 * i, 90, alpha_left), dtype=np.uint8)
        pixels[:, size[0] // 2:, 3] = alpha_right
        Image.fromarray(pixels, "RGBA").save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text("sks thing", encoding="utf-8")
    return root


def test_mask_multiplies_the_elementwise_loss_at_latent_size():
    prediction, target = torch.ones(2, 4, 2, 2), torch.zeros(2, 4, 2, 2)
    mask = torch.ones(2, 1, 16, 16)
    mask[0, :, :, :8] = 0  # first sample: left half masked out
    loss = per_sample_loss(prediction, target, "l2", mask=mask)
    assert loss.tolist() == [0.5, 1.0]
    assert per_sample_loss(prediction, target, "l1", mask=torch.zeros(2, 1, 16, 16)).tolist() == [0.0, 0.0]


def test_mask_follows_crop_and_flip(tmp_path):
    root = rgba_dataset(tmp_path, alpha_left=0, alpha_right=255)
    values = base_options(root, tmp_path / "out", resolution=64, alpha_mask=True, enable_bucket=False)
    dataset = build_dataset(config_from_values(values, "network"))
    # 96x64 cover-resized to 96x64 and centre-cropped to 64x64: columns 16..47 of the source, so the
    # transparent half is the crop's left 32 columns
    mask = dataset.load_mask(0, None, False)
    assert mask.shape == (1, 64, 64)
    assert mask[0, :, :30].max() == 0 and mask[0, :, 34:].min() == 1
    flipped = dataset.load_mask(0, None, True)
    assert torch.equal(flipped, mask.flip(-1))
    cropped_left = dataset.load_mask(0, (0, 0), False)  # a random crop at the left edge: all transparent
    assert cropped_left[0, :, :46].max() == 0
    batch = dataset.load_batch([0, 1], epoch=1, seed=0, step=0)
    assert batch["loss_masks"].shape == (2, 1, 64, 64)
    plain = build_dataset(config_from_values({**values, "alpha_mask": False}, "network"))
    assert plain.load_batch([0], epoch=1, seed=0, step=0)["loss_masks"] is None


@pytest.mark.slow  # four small trainings
@pytest.mark.parametrize("cache", [False, True])
def test_transparent_pictures_teach_nothing(tmp_path, cache):
    root = rgba_dataset(tmp_path, alpha_left=0, alpha_right=0)
    options = base_options(root, tmp_path / "out", alpha_mask=True, masked_loss=True, cache_latents=cache,
                           flip_aug=True, max_train_steps=3)
    assert train(tmp_path, options) == 0
    tensors, _ = read_lora(tmp_path / "out" / "lora.safetensors")
    ups = [v for k, v in tensors.items() if k.endswith("lora_up.weight")]
    assert ups and all(torch.count_nonzero(v) == 0 for v in ups)  # zero loss, zero gradient: still a no-op
    options = {**options, "output_dir": str(tmp_path / "out2"), "alpha_mask": False, "masked_loss": False}
    assert train(tmp_path, options) == 0
    tensors, _ = read_lora(tmp_path / "out2" / "lora.safetensors")
    assert any(torch.count_nonzero(v) for k, v in tensors.items() if k.endswith("lora_up.weight"))


def test_masked_loss_needs_masks_and_dataset_configs_take_alpha_mask(tmp_path):
    root = rgba_dataset(tmp_path, alpha_left=0, alpha_right=255)
    values = base_options(root, tmp_path / "out", masked_loss=True)
    with pytest.raises(UserError, match="alpha_mask"):
        build_dataset(config_from_values(values, "network"))
    path = tmp_path / "dataset.toml"
    path.write_text(f"[[datasets]]\nresolution = 64\n[[datasets.subsets]]\nimage_dir = '{root / 'train' / '2_sks thing'}'"
                    "\nalpha_mask = true\n", encoding="utf-8")
    values = {**values, "dataset_config": str(path)}
    values.pop("train_data_dir")
    dataset = build_dataset(config_from_values(values, "network"))
    assert dataset.load_batch([0], epoch=1, seed=0, step=0)["loss_masks"] is not None


def test_mask_pictures_from_conditioning_data_dir(tmp_path):
    root = rgba_dataset(tmp_path, alpha_left=255, alpha_right=255)
    masks = tmp_path / "masks"
    masks.mkdir()
    for i in range(4):  # white left half (learned), black right half (ignored), at half the picture's size
        pixels = np.zeros((32, 48, 3), dtype=np.uint8)
        pixels[:, :24] = 255
        Image.fromarray(pixels).save(masks / f"{i}.png")
    values = base_options(root, tmp_path / "out", resolution=64, enable_bucket=False, masked_loss=True,
                          conditioning_data_dir=str(masks))
    dataset = build_dataset(config_from_values(values, "network"))
    mask = dataset.load_mask(0, None, False)
    assert mask[0, :, :30].min() == 1 and mask[0, :, 34:].max() == 0  # centre crop of 96x64, as the picture
    with pytest.raises(UserError, match="masked_loss"):  # masks without masked_loss: ControlNet is not here
        build_dataset(config_from_values({**values, "masked_loss": False}, "network"))
    (masks / "3.png").unlink()
    with pytest.raises(UserError, match="3.png"):
        build_dataset(config_from_values(values, "network"))
