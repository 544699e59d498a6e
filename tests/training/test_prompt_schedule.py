"""Prompt editing ``[a:b:when]`` and alternation ``[a|b]`` in sample prompts: the schedule and the render."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from library.text.schedule import prompt_schedule, schedule_index

# (prompt, the webui's get_learned_conditioning_prompt_schedules(prompt, 10)); the first fifteen are the
# webui's own docstring examples (its "[{b|d{:.5]" one is marked "not handled": webui 1.10 gives this)
SCHEDULE_CASES = [
    ("test", [(10, "test")]),
    ("a [b:3]", [(3, "a "), (10, "a b")]),
    ("a [b: 3]", [(3, "a "), (10, "a b")]),
    ("a [[[b]]:2]", [(2, "a "), (10, "a [[b]]")]),
    ("[(a:2):3]", [(3, ""), (10, "(a:2)")]),
    ("a [b : c : 1] d", [(1, "a b  d"), (10, "a  c  d")]),
    ("a[b:[c:d:2]:1]e", [(1, "abe"), (2, "ace"), (10, "ade")]),
    ("a [unbalanced", [(10, "a [unbalanced")]),
    ("a [b:.5] c", [(5, "a  c"), (10, "a b c")]),
    ("a [{b|d{:.5] c", [(10, "a [{b|d{:.5] c")]),
    ("((a][:b:c [d:3]", [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
    ("[a|(b:1.1)]", [(s, "a" if s % 2 else "(b:1.1)") for s in range(1, 11)]),
    ("[fe|]male", [(s, "female" if s % 2 else "male") for s in range(1, 11)]),
    ("[fe|||]male", [(s, "female" if s % 4 == 1 else "male") for s in range(1, 11)]),
    ("a [b:1.5] c", [(10, "a  c")]),  # with a point: a fraction of the steps (1.5 -> past the end)
    ("[cat:dog:0.5]", [(5, "cat"), (10, "dog")]),
    ("[cat:dog:1.0]", [(10, "cat")]),
    ("[cat:dog:99]", [(10, "cat")]),
    ("[ in foreground::0.6]", [(6, " in foreground"), (10, "")]),
    ("[a (b)|c]", [(s, "a (b)" if s % 2 else "c") for s in range(1, 11)]),
    ("a | b", [(10, "a | b")]),  # no grammar: the prompt as written
    ("(x:1.2), [y:z:2]", [(2, "(x:1.2), y"), (10, "(x:1.2), z")]),
]


@pytest.mark.parametrize("prompt,expected", SCHEDULE_CASES)
def test_prompt_schedule_is_the_webuis(prompt, expected):
    assert prompt_schedule(prompt, 10) == expected


def test_the_webuis_fantasy_landscape_example():
    prompt = ("fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75][ in foreground::0.6]"
              "[ in background:0.25] [shoddy:masterful:0.5]")
    assert prompt_schedule(prompt, 100) == [
        (25, "fantasy landscape with a mountain and an oak in foreground shoddy"),
        (50, "fantasy landscape with a lake and an oak in foreground in background shoddy"),
        (60, "fantasy landscape with a lake and an oak in foreground in background masterful"),
        (75, "fantasy landscape with a lake and an oak in background masterful"),
        (100, "fantasy landscape with a lake and a christmas tree in background masterful"),
    ]


def test_schedule_index_counts_steps_from_zero_as_the_webuis_denoiser():
    schedule = prompt_schedule("[cat:dog:0.5]", 4)
    assert schedule == [(2, "cat"), (4, "dog")]
    assert [schedule_index(schedule, step) for step in range(4)] == [0, 0, 0, 1]


@pytest.fixture(scope="module")
def tiny_model():
    from library.models.loading import load_base_model

    model = load_base_model("builtin:tiny")
    with torch.no_grad():  # the tiny's final norm has no bias, so its states average 0; a real CLIP's has one
        model.text_encoder.final_layer_norm.bias.copy_(torch.linspace(-0.5, 1.0, model.text_encoder.config.hidden_size))
    return model


def _render_seen(model, prompt: str, steps: int = 4):
    """The image and the positive conditioning the UNet saw at each step."""
    from library.training.sampling.generate import SampleSettings, render_prompt

    seen = []

    def grab(module, args, kwargs):
        states = kwargs.get("encoder_hidden_states")
        seen.append(states[-1].clone())  # CFG stacks (negative, positive)

    handle = model.unet.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        settings = SampleSettings("euler", 64, 64, None, None, 0)
        from library.training.sampling.prompts import SamplePrompt

        with torch.no_grad():  # as generate_samples renders
            image = render_prompt(model, SamplePrompt(prompt, steps=steps, seed=3), settings, 3, 64, 64, "euler")
    finally:
        handle.remove()
    return image, seen


def _encode(model, text):
    with torch.no_grad():
        return model.encode_prompt([text], weighted=True).hidden[0]


@pytest.mark.slow
def test_prompt_editing_switches_the_conditioning_at_its_step(tiny_model):
    _, seen = _render_seen(tiny_model, "[red disc:blue disc:0.5]")
    red, blue = _encode(tiny_model, "red disc"), _encode(tiny_model, "blue disc")
    assert len(seen) == 4
    assert [torch.equal(s, red) for s in seen] == [True, True, True, False]  # steps 0-2 (end_at_step 2)
    assert torch.equal(seen[3], blue)
    fixed, _ = _render_seen(tiny_model, "red disc")
    never, _ = _render_seen(tiny_model, "[red disc:blue disc:99]")  # switches after the last step: "red disc" only
    assert np.array_equal(np.asarray(never), np.asarray(fixed))


@pytest.mark.slow
def test_alternation_changes_the_prompt_every_step(tiny_model):
    _, seen = _render_seen(tiny_model, "[red|blue] disc")
    red, blue = _encode(tiny_model, "red disc"), _encode(tiny_model, "blue disc")
    assert [("red" if torch.equal(s, red) else "blue" if torch.equal(s, blue) else "?") for s in seen] == \
        ["red", "red", "blue", "red"]  # entries end at steps 1, 2, 3, 4; steps count from 0


@pytest.mark.slow
def test_flux_sampler_switches_the_t5_conditioning(tmp_path_factory):
    from library.models.loading import load_base_model
    from library.models.tiny_flux import save_tiny_flux
    from library.training.sampling.generate import SampleSettings, render_prompt
    from library.training.sampling.prompts import SamplePrompt

    files = save_tiny_flux(tmp_path_factory.mktemp("flux_schedule"), "dev")["files"]
    model = load_base_model(str(files["transformer"]), components={k: str(files[k]) for k in ("clip_l", "t5xxl", "ae")})
    seen = []
    handle = model.unet.register_forward_pre_hook(lambda module, args: seen.append(args[2][0].clone()))
    try:
        with torch.no_grad():  # as generate_samples renders
            render_prompt(model, SamplePrompt("[red disc:blue disc:0.5]", steps=4, seed=1),
                    SampleSettings("euler", 64, 64, None, None, 0), 1, 64, 64, "euler")
    finally:
        handle.remove()
    red, blue = (_encode(model, text).to(seen[0].dtype) for text in ("red disc", "blue disc"))
    assert [torch.equal(s, red) for s in seen] == [True, True, True, False] and torch.equal(seen[3], blue)


@pytest.mark.slow
def test_sdxl_switches_states_and_pooled_output(tiny_sdxl_files):
    from library.models.loading import load_base_model
    from library.training.sampling.generate import SampleSettings, render_prompt
    from library.training.sampling.prompts import SamplePrompt

    model = load_base_model(str(tiny_sdxl_files["single"]))
    seen = []

    def grab(module, args, kwargs):
        seen.append((kwargs["encoder_hidden_states"][-1].clone(), kwargs["added_cond_kwargs"]["text_embeds"][-1].clone()))

    handle = model.unet.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            render_prompt(model, SamplePrompt("[red disc:blue disc:0.5]", steps=4, seed=1),
                    SampleSettings("euler", 64, 64, None, None, 0), 1, 64, 64, "euler")
    finally:
        handle.remove()
    with torch.no_grad():
        red, blue = (model.encode_prompt([t], weighted=True) for t in ("red disc", "blue disc"))
    assert [torch.equal(h, red.hidden[0]) and torch.equal(p, red.pooled[0]) for h, p in seen] == [True] * 3 + [False]
    assert torch.equal(seen[3][0], blue.hidden[0]) and torch.equal(seen[3][1], blue.pooled[0])
