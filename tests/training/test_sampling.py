"""Sample prompt files (sd-scripts' syntax) and sample images during training."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from library.config.load import parse_config
from library.errors import UserError
from library.training.sampling.prompts import SamplePrompt, read_prompts
from library.training.sampling.samplers import SAMPLERS, make_sampler
from tests.training.helpers import base_options, train


def test_txt_prompt_lines(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("# a comment\n\nmasterpiece, 1girl --n lowres, bad --w 768 --h 512 --s 20 --l 6.5 --d 42\n"
                    "plain prompt\nfast --s 5000 --ss euler_a\n", encoding="utf-8")
    prompts = read_prompts(path)
    assert prompts[0] == SamplePrompt("masterpiece, 1girl", "lowres, bad", 768, 512, 20, 6.5, 42, None)
    assert prompts[1] == SamplePrompt("plain prompt")
    assert prompts[2].steps == 1000 and prompts[2].sampler == "euler_a"  # steps clamped to 1..1000


def test_toml_and_json_prompt_files(tmp_path):
    toml_path = tmp_path / "p.toml"
    toml_path.write_text('[prompt]\nwidth = 512\nsample_steps = 12\n[[prompt.subset]]\nprompt = "a cat"\n'
                         '[[prompt.subset]]\nprompt = "a dog"\nseed = 3\nwidth = 640\n', encoding="utf-8")
    cats = read_prompts(toml_path)
    assert [(p.prompt, p.width, p.steps, p.seed) for p in cats] == [("a cat", 512, 12, None), ("a dog", 640, 12, 3)]
    json_path = tmp_path / "p.json"
    json_path.write_text(json.dumps(["a bird --d 1", {"prompt": "a fish", "negative_prompt": "x", "scale": 4}]),
                         encoding="utf-8")
    assert [(p.prompt, p.seed, p.scale) for p in read_prompts(json_path)] == [("a bird", 1, 7.5), ("a fish", None, 4)]


@pytest.mark.parametrize("line,message", [("cat --q 3", "line 2: unknown option --q"),
                                          ("cat --w wide", "line 2: --w 'wide' is not a valid int"),
                                          ("cat --w 50", "line 2: width 50 must be")])
def test_bad_prompt_line_names_the_line(tmp_path, line, message):
    path = tmp_path / "p.txt"
    path.write_text(f"ok prompt\n{line}\n", encoding="utf-8")
    with pytest.raises(UserError, match=message):
        read_prompts(path)


def test_bad_prompt_file_fails_before_training(tmp_path, tiny_dataset):
    path = tmp_path / "p.txt"
    path.write_text("cat --zz 1\n", encoding="utf-8")
    opts = base_options(tiny_dataset, tmp_path / "o")
    argv = [x for k, v in opts.items() for x in (f"--{k}", str(v))] + ["--sample_prompts", str(path)]
    with pytest.raises(UserError, match="unknown option --zz"):
        parse_config(argv, "network")


def test_every_sampler_name_builds_a_scheduler():
    from diffusers import DDPMScheduler

    config = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).config
    names = {"ddim", "pndm", "lms", "euler", "euler_a", "heun", "dpm_2", "dpm_2_a", "dpmsolver", "dpmsolver++",
             "dpmsingle", "k_lms", "k_euler", "k_euler_a", "k_dpm_2", "k_dpm_2_a"}
    assert names <= {n.lower() for n in SAMPLERS.names()}
    assert type(make_sampler("k_euler_a", config)).__name__ == "EulerAncestralDiscreteScheduler"
    assert make_sampler("dpmsolver++", config).config.algorithm_type == "dpmsolver++"


@pytest.mark.slow
def test_samples_written_with_sizes_prompt_and_tensorboard(tmp_path, tiny_dataset):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("sks disc, red --n blurry --w 64 --h 128 --s 2 --d 7\nblue disc --s 2 --ss euler_a\n",
                       encoding="utf-8")
    out = tmp_path / "out"
    opts = base_options(tiny_dataset, out, max_train_steps=4, sample_every_n_steps=2, sample_at_first=True,
                        sample_prompts=str(prompts), logging_dir=str(tmp_path / "logs"))
    assert train(tmp_path, opts) == 0
    files = sorted((out / "sample").glob("*.png"))
    assert len(files) == 6  # at first, step 2, step 4: two prompts each
    assert sorted({f.name.split("_")[1] for f in files}) == ["000000", "000002", "000004"]
    first = Image.open(next(f for f in files if f.name.startswith("lora_000002_00")))
    assert first.size == (64, 128)
    assert first.text["prompt"] == "sks disc, red" and "Negative prompt: blurry" in first.text["parameters"]
    second = Image.open(next(f for f in files if f.name.startswith("lora_000002_01")))
    assert second.size == (64, 64)  # the training resolution when --w/--h are not given
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(next((tmp_path / "logs").rglob("events.out.tfevents.*")).parent))
    acc.Reload()
    assert "sample/00" in acc.Tags()["images"]
