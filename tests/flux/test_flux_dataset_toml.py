"""sd-scripts' FLUX docs' dataset TOML (options above the first table, validation splits per dataset,
interpolation_type) trains a FLUX LoRA 2 steps on the tiny FLUX, with its validation-only folder validating."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import draw_picture
from tests.flux.test_flux_training import flux_options, read_lora, train

pytestmark = pytest.mark.slow


FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "sdscripts" / "flux_top_level.toml"


def _doc_toml(tmp_path: Path) -> Path:
    text = FIXTURE.read_text(encoding="utf-8")
    for i, key in enumerate(("IMAGE_DIR", "SECOND_DIR", "VAL_DIR")):
        folder = tmp_path / key.lower()
        folder.mkdir()
        for j, size in enumerate([(64, 64), (96, 64)]):
            draw_picture(folder / f"{j}.png", size, (200, 40 * i, 20), 10 * i + j)
            (folder / f"{j}.txt").write_text(f"sks disc {i}", encoding="utf-8")
        text = text.replace(key, folder.as_posix())
    path = tmp_path / "dataset.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_flux_docs_dataset_toml_trains(tmp_path, tiny_flux_files):
    out = tmp_path / "out"
    options = flux_options(tmp_path, out, tiny_flux_files["folder"], train_data_dir=None,
                           dataset_config=str(_doc_toml(tmp_path)), max_validation_steps=1,
                           logging_dir=str(tmp_path / "logs"), resolution=None)
    assert train(tmp_path, options) == 0
    tensors, metadata = read_lora(out / "lora.safetensors")
    assert metadata["ss_steps"] == "2" and metadata["ss_base_model_version"] == "flux1"
    assert any(k.startswith("lora_unet_double_blocks_") for k in tensors)
    assert list((tmp_path / "logs").rglob("events.out.tfevents.*"))
