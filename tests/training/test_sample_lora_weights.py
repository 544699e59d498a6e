"""Sample previews at a LoRA weight: a prompt's ``--am`` and the run's ``sample_lora_weights``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from library.config.load import parse_config
from library.errors import ConfigError, UserError
from library.training.sampling.generate import sample_file_name
from library.training.sampling.prompts import read_prompts
from tests.training.helpers import base_options


def test_am_option_in_prompt_files(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("a disc --am 0.6 --s 2\nboth --am 0.4,1\nplain\n", encoding="utf-8")
    assert [p.lora_weights for p in read_prompts(path)] == [(0.6,), (0.4, 1.0), None]
    toml_path = tmp_path / "p.toml"
    toml_path.write_text('[prompt]\nnetwork_multiplier = 0.5\n[[prompt.subset]]\nprompt = "a"\n'
                         '[[prompt.subset]]\nprompt = "b"\nam = [0, 1]\n', encoding="utf-8")
    assert [p.lora_weights for p in read_prompts(toml_path)] == [(0.5,), (0.0, 1.0)]
    path.write_text("a disc --am strong\n", encoding="utf-8")
    with pytest.raises(UserError, match="line 1: --am 'strong' is not a valid number"):
        read_prompts(path)


def test_file_names_say_the_weight():
    assert sample_file_name("lora_000002", 1, "20260101120000", 7, None) == "lora_000002_01_20260101120000_7.png"
    assert sample_file_name("lora_000002", 1, "20260101120000", 7, 0.6) == "lora_000002_01_20260101120000_7_am0.6.png"
    assert sample_file_name("lora_e000001", 0, "t", 3, 1.0) == "lora_e000001_00_t_3_am1.png"


def _argv(tiny_dataset, tmp_path, **extra):
    opts = base_options(tiny_dataset, tmp_path / "o", **extra)
    return [x for k, v in opts.items() for x in (f"--{k}", *(map(str, v) if isinstance(v, list) else [str(v)]))]


def test_sample_lora_weights_option(tiny_dataset, tmp_path):
    config = parse_config(_argv(tiny_dataset, tmp_path, sample_lora_weights=["0.6", "1.0"]), "network")
    assert config.sample_lora_weights == ["0.6", "1.0"]
    with pytest.raises(ConfigError, match="sample_lora_weights.*must be numbers"):
        parse_config(_argv(tiny_dataset, tmp_path, sample_lora_weights=["0.6", "high"]), "network")


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_dataset):
    """The tiny model with a LoRA attached through train_network.py's target, its up weights made non-zero
    (a fresh LoRA changes nothing), and the base model's own sample image rendered before."""
    from library.models.loading import load_base_model
    from library.training.lora_target import LoRATarget
    from library.training.sampling.generate import SampleSettings, generate_samples
    from library.training.sampling.prompts import SamplePrompt

    tmp = tmp_path_factory.mktemp("lora_weights")
    config = parse_config(_argv(tiny_dataset, tmp, network_dim=4, network_alpha=4), "network")
    model = load_base_model("builtin:tiny")
    settings = SampleSettings("euler", 64, 64, None, None, 0)
    prompt = SamplePrompt("sks disc", steps=2, seed=5)
    base = generate_samples(model, [prompt], settings, tmp / "base", "base")[0][1]
    target = LoRATarget(config)
    target.attach(model, config)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in target.network.named_parameters():
            if "lora_up" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    target.network.eval()
    return model, target, settings, prompt, base, tmp


@pytest.mark.slow
def test_am_0_is_the_base_model_and_am_1_the_normal_preview(lora_run):
    from dataclasses import replace

    from library.training.sampling.generate import generate_samples

    model, target, settings, prompt, base, tmp = lora_run
    normal = generate_samples(model, [prompt], settings, tmp / "normal", "lora", target=target)[0][1]
    assert not np.array_equal(np.asarray(normal), np.asarray(base))  # the LoRA changes the picture
    results = generate_samples(model, [replace(prompt, lora_weights=(0.0, 1.0))], settings, tmp / "am", "lora",
                               target=target)
    (zero_path, zero, _), (one_path, one, _) = results
    assert np.array_equal(np.asarray(zero), np.asarray(base))
    assert np.array_equal(np.asarray(one), np.asarray(normal))
    assert zero_path.name.endswith("_5_am0.png") and one_path.name.endswith("_5_am1.png")
    assert Image.open(zero_path).text["lora_weight"] == "0" and "Lora weight: 0" in Image.open(zero_path).text["parameters"]
    assert target.network_multiplier() == 1.0
    assert all(m.multiplier == 1.0 for m in target.network.network_modules())


@pytest.mark.slow
def test_sample_lora_weights_render_each_prompt_at_each_weight_and_restore_the_multiplier(lora_run):
    from dataclasses import replace

    from library.training.sampling.generate import generate_samples

    model, target, settings, prompt, base, tmp = lora_run
    target.set_network_multiplier(0.8)  # whatever the run uses is what it gets back
    try:
        results = generate_samples(model, [prompt, replace(prompt, lora_weights=(0.0,))],
                                   replace(settings, lora_weights=(0.6,)), tmp / "list", "lora", target=target)
        assert [p.name.rsplit("_", 1)[1] for p, _, _ in results] == ["am0.6.png", "am0.png"]  # --am wins
        assert np.array_equal(np.asarray(results[1][1]), np.asarray(base))
        assert not np.array_equal(np.asarray(results[0][1]), np.asarray(base))
        assert target.network_multiplier() == 0.8
    finally:
        target.set_network_multiplier(1.0)


@pytest.mark.slow
def test_multiplier_restored_when_a_render_fails(lora_run):
    from dataclasses import replace

    from library.training.sampling.generate import generate_samples

    model, target, settings, prompt, _, tmp = lora_run
    with pytest.raises(ConfigError, match="--g"):  # --g is refused for SD models, mid-render
        generate_samples(model, [replace(prompt, lora_weights=(0.3,), guidance=3.5)], settings, tmp / "x", "lora",
                         target=target)
    assert target.network_multiplier() == 1.0


@pytest.mark.slow
def test_lora_weights_without_a_network_are_refused(lora_run):
    from dataclasses import replace

    from library.training.sampling.generate import generate_samples
    from library.training.target import BaseTarget

    model, _, settings, prompt, _, tmp = lora_run
    with pytest.raises(ConfigError, match="trains none"):
        generate_samples(model, [replace(prompt, lora_weights=(0.5,))], settings, tmp / "y", "db",
                         target=BaseTarget())


@pytest.mark.slow
def test_training_samples_at_each_sample_lora_weight(tmp_path, tiny_dataset):
    from tests.training.helpers import train

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("sks disc --s 1 --d 2\n", encoding="utf-8")
    out = tmp_path / "out"
    opts = base_options(tiny_dataset, out, max_train_steps=1, sample_every_n_steps=1, sample_prompts=str(prompts),
                        sample_lora_weights=[0.6, 1.0])
    assert train(tmp_path, opts) == 0
    names = sorted(f.name for f in (out / "sample").glob("*.png"))
    assert [n.split("_")[1] for n in names] == ["000001", "000001"]
    assert [n.rsplit("_", 1)[1] for n in names] == ["am0.6.png", "am1.png"]


def test_am_refused_before_a_dreambooth_run(tiny_dataset, tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("sks disc --am 0.5\n", encoding="utf-8")
    opts = base_options(tiny_dataset, tmp_path / "o", sample_prompts=str(path))
    for key in ("network_dim", "network_alpha"):
        opts.pop(key)
    argv = [x for k, v in opts.items() for x in (f"--{k}", str(v))]
    with pytest.raises(ConfigError, match="--am sets the weight of a trained LoRA"):
        parse_config(argv, "db")
    parse_config(argv, "network")
