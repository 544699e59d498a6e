"""The LoRA card in a file's metadata (issue 16): sd-scripts' metadata_* options as modelspec keys, the first
sample image as ``modelspec.thumbnail``, and hashes that inspect_lora does not report as changed."""

from __future__ import annotations

import base64
import io
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from library.config.load import parse_config
from library.errors import ConfigError
from library.training.metadata import THUMBNAIL_SIDE, card_metadata, file_data_url
from tests.training.helpers import base_options, read_lora, train

CARD = {
    "metadata_title": "Red disc",
    "metadata_author": "Ann Example",
    "metadata_description": "A red disc on white.",
    "metadata_license": "CC-BY-4.0",
    "metadata_tags": "disc, red",
    "metadata_trigger_phrase": "sks disc",
    "metadata_usage_hint": "weight 0.6",
}


def decode_data_url(url: str) -> tuple[str, bytes]:
    head, data = url.split(",", 1)
    assert head.startswith("data:") and head.endswith(";base64")
    return head[5:].split(";")[0], base64.b64decode(data)


def config_of(**values):
    fields = dict.fromkeys(("metadata_trigger_phrase", "metadata_usage_hint", "metadata_thumbnail"))
    return SimpleNamespace(**{**fields, **values})


def test_card_keys_and_a_given_thumbnail_file(tmp_path):
    picture = tmp_path / "cover.png"
    Image.new("RGB", (8, 4), (1, 2, 3)).save(picture)
    meta = card_metadata(config_of(metadata_trigger_phrase="sks", metadata_thumbnail=str(picture)),
                         first_sample=tmp_path / "ignored.png")
    assert meta["modelspec.trigger_phrase"] == "sks"
    assert "modelspec.usage_hint" not in meta
    # a file is stored as it is (sd-scripts' file_to_data_url), a data URL as given
    assert decode_data_url(meta["modelspec.thumbnail"]) == ("image/png", picture.read_bytes())
    assert meta["modelspec.thumbnail"] == file_data_url(picture)
    given = "data:image/png;base64,AAAA"
    assert card_metadata(config_of(metadata_thumbnail=given))["modelspec.thumbnail"] == given
    assert card_metadata(config_of()) == {}


def test_first_sample_is_shrunk_to_a_small_jpeg(tmp_path):
    sample = tmp_path / "s.png"
    Image.new("RGB", (640, 320), (200, 10, 10)).save(sample)
    mime, data = decode_data_url(card_metadata(config_of(), first_sample=sample)["modelspec.thumbnail"])
    with Image.open(io.BytesIO(data)) as image:
        assert (mime, image.format, image.size) == ("image/jpeg", "JPEG", (THUMBNAIL_SIDE, THUMBNAIL_SIDE // 2))
        red = image.convert("RGB").getpixel((10, 10))
    assert red[0] > 180 and red[1] < 40


def test_missing_thumbnail_file_is_a_config_error(tiny_dataset, tmp_path):
    opts = base_options(tiny_dataset, tmp_path / "o", metadata_thumbnail=str(tmp_path / "none.png"))
    argv = [x for k, v in opts.items() for x in (f"--{k}", str(v))]
    with pytest.raises(ConfigError, match="metadata_thumbnail.*none.png.*neither a data: URL nor an existing file"):
        parse_config(argv, "network")


@pytest.mark.slow
def test_trained_lora_carries_the_card_and_honest_hashes(tmp_path, tiny_dataset):
    from library.tools.models.hashes import hash_file
    from library.tools.models.inspect_lora import inspect_lora

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("sks disc --s 1 --d 2\nsks disc, blue --s 1 --d 3\n", encoding="utf-8")
    out = tmp_path / "out"
    opts = base_options(tiny_dataset, out, max_train_steps=1, network_dim=64, network_alpha=32,
                        sample_at_first=True, sample_prompts=str(prompts), **CARD)
    assert train(tmp_path, opts) == 0
    path = out / "lora.safetensors"
    _, meta = read_lora(path)
    for key, value in CARD.items():
        assert meta["modelspec." + key.removeprefix("metadata_")] == value
    first, second = sorted((out / "sample").glob("*.png"))
    assert first.name.startswith("lora_000000_00")
    mime, data = decode_data_url(meta["modelspec.thumbnail"])
    with Image.open(io.BytesIO(data)) as thumb:
        assert mime == "image/jpeg" and thumb.size == (64, 64)  # 64x64 samples are not enlarged
        pixels = np.asarray(thumb.convert("RGB"), dtype=np.float32)
    # the first prompt's picture (JPEG-close), not the second's
    error = {p.name: np.abs(pixels - np.asarray(Image.open(p).convert("RGB"), dtype=np.float32)).mean()
             for p in (first, second)}
    assert error[first.name] < error[second.name] / 2, error  # the tiny model draws noise: JPEG errs ~15
    # the report: a freshly trained LoRA over 1 MiB was "changed" at once
    assert path.stat().st_size > 0x110000
    insp = inspect_lora(path)
    assert insp.hash_problems == []
    assert insp.metadata["modelspec.thumbnail"].startswith("image/jpeg picture, ")
    assert insp.metadata["modelspec.trigger_phrase"] == "sks disc"
    hashes = hash_file(path)
    assert (meta["sshs_model_hash"], meta["sshs_legacy_hash"]) == (hashes.model_hash, hashes.sshs_legacy_hash)
    assert hashes.legacy_hash != hashes.sshs_legacy_hash  # the card's keys lengthen the header
