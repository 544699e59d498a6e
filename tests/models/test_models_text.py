from __future__ import annotations

import pytest
import torch

from library.errors import ConfigError
from library.models.loading import load_base_model

BOS, EOS = 49406, 49407


@pytest.fixture(scope="module")
def sd1():
    return load_base_model("builtin:tiny")


@pytest.fixture(scope="module")
def sd2():
    return load_base_model("builtin:tiny-sd2")


def test_single_window(sd1):
    ids = sd1.tokenize(["a photo of a cat", "a cat"])
    assert ids.shape == (2, 77) and ids.dtype == torch.long
    assert ids[0, :7].tolist() == [BOS, 320, 1125, 539, 320, 2368, EOS]
    assert (ids[0, 7:] == EOS).all()
    long_ids = sd1.tokenize(["cat " * 100])
    assert long_ids.shape == (1, 77) and long_ids[0, 76] == EOS and (long_ids[0, 1:76] == 2368).all()


def test_long_prompt_chunks_sd1(sd1):
    caption = " ".join(["cat"] * 100)  # 100 tokens
    ids = sd1.tokenize([caption], 150)
    assert ids.shape == (1, 154)
    first, second = ids[0, :77], ids[0, 77:]
    assert first[0] == BOS and first[76] == EOS and (first[1:76] == 2368).all()
    assert second[0] == BOS and (second[1:26] == 2368).all() and second[26] == EOS
    assert (second[27:] == EOS).all()
    assert sd1.tokenize([caption * 3], 225).shape == (1, 231)


def test_long_prompt_truncated_to_max_tokens(sd1):
    ids = sd1.tokenize([" ".join(["cat"] * 200)], 150)
    assert ids.shape == (1, 154)
    assert (ids[0, 77 + 1 : 77 + 76] == 2368).all() and ids[0, 153] == EOS


def test_long_prompt_chunks_sd2_pad(sd2):
    ids = sd2.tokenize(["a cat"], 150)
    assert ids[0, :4].tolist() == [BOS, 320, 2368, EOS] and (ids[0, 4:77] == 0).all()
    assert ids[0, 77:79].tolist() == [BOS, EOS] and (ids[0, 79:] == 0).all()


def test_bad_max_token_length(sd1):
    with pytest.raises(ConfigError, match="max_token_length"):
        sd1.tokenize(["a"], 100)


def test_encode_shapes_and_chunking(sd1):
    ids = sd1.tokenize(["a photo of a cat", "dog"], 150)
    with torch.no_grad():
        states = sd1.encode_tokens(ids, None)
        assert states.shape == (2, 154, 32)
        second_alone = sd1.text_encoder(ids[:, 77:]).last_hidden_state
    assert torch.equal(states[:, 77:], second_alone)


def test_clip_skip_manual(sd1):
    ids = sd1.tokenize(["a photo of a cat"])
    with torch.no_grad():
        default = sd1.encode_tokens(ids, None)
        skip1 = sd1.encode_tokens(ids, 1)
        skip2 = sd1.encode_tokens(ids, 2)
        hidden = sd1.text_encoder(ids, output_hidden_states=True).hidden_states
        manual = sd1.text_encoder.final_layer_norm(hidden[-2])
    assert torch.equal(default, skip1)
    assert torch.equal(skip2, manual)
    assert not torch.allclose(skip2, default)
    with pytest.raises(ConfigError, match="clip_skip"):
        sd1.encode_tokens(ids, 5)


def test_latents_round_shapes(sd1):
    pixels = torch.rand(2, 3, 64, 96) * 2 - 1
    with torch.no_grad():
        a = sd1.encode_images(pixels, torch.Generator().manual_seed(3))
        b = sd1.encode_images(pixels, torch.Generator().manual_seed(3))
        mean = sd1.vae.encode(pixels).latent_dist.mean * 0.18215
        decoded = sd1.decode_latents(a)
    assert a.shape == (2, 4, 8, 12) and torch.equal(a, b)
    assert not torch.equal(a, mean)
    assert decoded.shape == (2, 3, 64, 96)
    assert sd1.latent_scale == pytest.approx(0.18215)
