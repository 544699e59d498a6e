"""The GUI for FLUX.1 (issue 13, part 7): the family line for a FLUX folder or BFL transformer file and what
else it needs, the FLUX group and the SD-only options following the family (both from the families'
``accepted_options``), the 12 / 16 / 24 GB presets in the list and in the form, save -> load as a fixed
point, and the launch command (flux_train_network.py / flux_train.py, as the README and the presets say).

Fast: the FLUX sources here are stand-ins (a safetensors header with BFL's marker key, a model_index.json);
the hint reads no weights and validation only checks that the files exist."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import toml
import torch
from safetensors.torch import save_file

gr = pytest.importorskip("gradio")

from library.config.options import SCHEMA  # noqa: E402
from library.gui import configs  # noqa: E402
from library.gui.family_hint import (  # noqa: E402
    exclusive_options,
    family_groups,
    family_hint,
    family_only_options,
    form_visibility,
    short_name,
)
from library.gui.fields import form_options  # noqa: E402
from library.gui.jobs import JobRunner  # noqa: E402
from library.gui.run_queue import TrainingQueue  # noqa: E402
from library.gui.training_tab import TrainingForm, family_markdown, family_updates, form_fields  # noqa: E402
from library.models.family import get_model_family  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
FLUX = short_name(get_model_family("flux"))  # "FLUX.1"
FLUX_PRESETS = {
    "flux_lora_12gb": ("12 GB", 16),
    "flux_lora_16gb": ("16 GB", 8),
    "flux_lora_24gb": ("24 GB", None),
}
#: SD-only options the trainer refuses for FLUX (a sample; the test derives the full list from the families)
SD_ONLY = ("min_snr_gamma", "noise_offset", "v_parameterization", "clip_skip", "max_token_length")
FLUX_OWN = (
    "clip_l",
    "t5xxl",
    "ae",
    "timestep_sampling",
    "guidance_scale",
    "blocks_to_swap",
    "model_prediction_type",
)


@pytest.fixture(scope="module")
def flux_sources(tmp_path_factory):
    """Stand-ins: a BFL-layout transformer header, a diffusers FluxPipeline folder, the three separate files."""
    root = tmp_path_factory.mktemp("gui_flux")
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(1)}, str(root / "flux1-dev.safetensors"))
    folder = root / "FLUX.1-dev"
    (folder / "transformer").mkdir(parents=True)
    (folder / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "FluxPipeline",
                "text_encoder": ["transformers", "CLIPTextModel"],
                "text_encoder_2": ["transformers", "T5EncoderModel"],
                "transformer": ["diffusers", "FluxTransformer2DModel"],
            }
        )
    )
    files = {name: root / f"{name}.safetensors" for name in ("clip_l", "t5xxl", "ae")}
    for path in files.values():
        path.write_bytes(b"")
    return {"single": root / "flux1-dev.safetensors", "folder": folder, **files, "root": root}


def names(trainer: str = "network") -> list[str]:
    return [o.name for o in form_options(trainer)]


def make_form(tmp_path, trainer: str = "network") -> TrainingForm:
    return TrainingForm(trainer, JobRunner(tmp_path / "job"), TrainingQueue(tmp_path / "q", None, None))


def preset_fields(name: str, sources, tmp_path, trainer: str = "network") -> dict:
    fields = configs.load_config(trainer, configs.preset_path(name))
    fields.update(
        pretrained_model_name_or_path=str(sources["single"]),
        clip_l=str(sources["clip_l"]),
        t5xxl=str(sources["t5xxl"]),
        ae=str(sources["ae"]),
        output_dir=str(tmp_path / "out"),
        logging_dir="",
        train_data_dir=str(REPO / "dataset_examples" / "train"),
    )
    return fields


def updates_for(source: str, fields: dict) -> tuple[str, dict[str, bool], list[bool]]:
    """family_updates over every family-dependent option of the LoRA form: (text, shown per option, groups)."""
    dependent = list(form_visibility(None, names()))
    options = {n: SCHEMA[n] for n in dependent}
    groups = [members for _, members in family_groups(dependent)]
    text, *updates = family_updates(source, options, [fields.get(n) for n in dependent], groups)
    shown = {n: u["visible"] for n, u in zip(dependent, updates, strict=False)}
    return text, shown, [u["visible"] for u in updates[len(dependent) :]]


def test_the_hint_tells_a_flux_file_from_a_flux_folder_and_says_what_a_file_needs(flux_sources):
    flux = get_model_family("flux")
    single, folder = family_hint(str(flux_sources["single"])), family_hint(str(flux_sources["folder"]))
    assert single.family is flux and folder.family is flux
    assert (
        single.text
        == folder.text
        == "FLUX — FLUX.1 dev / schnell (flow-matching transformer, CLIP-L + T5-XXL)"
    )
    assert single.single_file and not folder.single_file
    text, _, _ = updates_for(str(flux_sources["single"]), {})
    assert f"A single {FLUX} transformer file: clip_l, t5xxl and ae must be set too" in text
    assert "missing: clip_l, t5xxl and ae" in text
    text, _, _ = updates_for(str(flux_sources["single"]), {"clip_l": str(flux_sources["clip_l"])})
    assert "missing: t5xxl and ae" in text
    done = {n: str(flux_sources[n]) for n in ("clip_l", "t5xxl", "ae")}
    text, _, _ = updates_for(str(flux_sources["single"]), done)
    assert "missing" not in text and "(separate files; all set)" in text
    text, _, _ = updates_for(str(flux_sources["single"]), {**done, "ae": "models/ae.safetensors"})
    assert "(separate files; no such file: ae = models/ae.safetensors)" in text
    text, _, _ = updates_for(str(flux_sources["folder"]), {})
    assert "clip_l, t5xxl and ae come from the model folder: leave them empty." in text
    assert "must be set" not in text
    # a folder brings its own parts: separate files set beside it are refused by the loader
    text, _, _ = updates_for(str(flux_sources["folder"]), {"ae": str(flux_sources["ae"])})
    assert "leave them empty (⚠ ae set: clear it, or the run is refused)." in text
    # the hidden SD-only options are named in the line
    assert f"Hidden (they do not apply to {FLUX} models): v_parameterization, clip_skip" in text


def test_visibility_comes_from_the_families_accepted_options():
    flux, sd1, sdxl = (get_model_family(n) for n in ("flux", "sd1", "sdxl"))
    universe = family_only_options()
    for trainer in ("network", "db"):
        every = names(trainer)
        for family in (flux, sd1, sdxl):
            shown = form_visibility(family, every)
            hidden = {n for n, v in shown.items() if not v}
            # hidden: exactly the options another family takes and this one does not (plus, for the
            # one-text-encoder SD1, the SDXL text-encoder options)
            refused = {n for n in every if n in universe and n not in family.accepted_options}
            assert (
                hidden
                - {
                    "no_half_vae",
                    "cache_text_encoder_outputs",
                    "cache_text_encoder_outputs_to_disk",
                    "learning_rate_te1",
                    "learning_rate_te2",
                }
                == refused
            ), family.name
    assert {n for n in SD_ONLY} <= {n for n, v in form_visibility(flux, names()).items() if not v}
    assert all(form_visibility(flux, names())[n] for n in FLUX_OWN)
    assert not any(form_visibility(sd1, names())[n] for n in FLUX_OWN)
    assert all(form_visibility(sd1, names())[n] for n in SD_ONLY)
    # two text encoders: FLUX shows the text-encoder cache options, as SDXL does
    assert form_visibility(flux, names())["cache_text_encoder_outputs"]
    # the FLUX group is every option FLUX alone takes, in form order
    [(family, members)] = family_groups(names())
    assert family is flux and set(members) == exclusive_options(flux) and set(FLUX_OWN) <= set(members)
    # no family: the SD options stay (the default family of the form), FLUX's only when a config sets one
    unknown = form_visibility(None, names(), ["clip_l"])
    assert unknown["min_snr_gamma"] and unknown["clip_l"] and not unknown["timestep_sampling"]


def test_an_sd_option_set_for_flux_stays_shown_with_a_warning(flux_sources):
    text, shown, groups = updates_for(
        str(flux_sources["folder"]), {"min_snr_gamma": "5", "noise_offset": 0.05}
    )
    assert shown["min_snr_gamma"] and shown["noise_offset"] and not shown["clip_skip"]
    assert f"⚠ noise_offset and min_snr_gamma are set but do not apply to {FLUX} models" in text
    assert groups == [True]
    text, shown, groups = updates_for("builtin:tiny", {"guidance_scale": 1.0})
    assert shown["guidance_scale"] and not shown["timestep_sampling"] and groups == [True]
    assert "⚠ guidance_scale is set but does not apply to SD1 models" in text


def ancestors(block) -> list:
    found = []
    while getattr(block, "parent", None) is not None:
        block = block.parent
        found.append(block)
    return found


@pytest.mark.slow  # builds the whole LoRA form: about 0.35 s
def test_the_form_has_a_flux_group_shown_only_for_flux(flux_sources):
    with gr.Blocks() as blocks:
        fields = form_fields("network")
    by_name = dict(zip(names(), fields, strict=True))
    group = next(b for b in blocks.blocks.values() if getattr(b, "elem_id", None) == "network-family-flux")
    assert isinstance(group, gr.Accordion) and group.visible is False and group.label == f"{FLUX} options"
    inside = {c.elem_id for c in blocks.blocks.values() if group in ancestors(c)}
    assert {f"network-{n}" for n in FLUX_OWN} <= inside and "network-fp8_base" not in inside
    assert by_name["min_snr_gamma"].visible is True and by_name["noise_offset"].visible is True
    _, shown, groups = updates_for(str(flux_sources["single"]), {})
    assert groups == [True] and all(shown[n] for n in FLUX_OWN) and not any(shown[n] for n in SD_ONLY)
    _, shown, groups = updates_for("builtin:tiny-sdxl", {})
    assert groups == [False] and all(shown[n] for n in SD_ONLY)


def test_the_presets_are_listed_with_a_label_that_says_what_they_are_for():
    choices = dict((value, label) for label, value in configs.preset_choices("network"))
    for name, (card, _) in FLUX_PRESETS.items():
        assert (
            choices[name] == f"{name} — A FLUX.1-dev LoRA for a {card} card from sd-scripts' separate files"
        )
    assert choices["quickstart"] == "quickstart — Quick start"
    assert not set(FLUX_PRESETS) & set(configs.list_presets("db"))  # LoRA presets: not for DreamBooth


@pytest.mark.parametrize("name", sorted(FLUX_PRESETS))
def test_a_flux_preset_fills_the_form_and_shows_flux_fields(name, tmp_path):
    message, *values = make_form(tmp_path).load_preset(name)
    fields = dict(zip(names(), values, strict=True))
    assert message == f"loaded {configs.preset_path(name)}"
    assert fields["clip_l"] == "models/clip_l.safetensors" and fields["ae"] == "models/ae.safetensors"
    assert fields["fp8_base"] is True and fields["timestep_sampling"] == "shift"
    swapped = FLUX_PRESETS[name][1]
    assert fields["blocks_to_swap"] == ("" if swapped is None else str(swapped))
    # the preset's model is a placeholder path: the family is unknown, but the form is FLUX's
    text, shown, groups = updates_for(fields["pretrained_model_name_or_path"], fields)
    assert text.startswith("Model family: unknown: no such file: models/flux1-dev.safetensors")
    assert f"The config sets {FLUX} options, so the form shows {FLUX}'s fields." in text
    assert groups == [True] and shown["blocks_to_swap"] and not shown["min_snr_gamma"]


@pytest.mark.parametrize("name", sorted(FLUX_PRESETS))
def test_saving_and_loading_a_flux_config_is_a_fixed_point(name, flux_sources, tmp_path):
    form = make_form(tmp_path)
    fields = preset_fields(name, flux_sources, tmp_path)
    first = tmp_path / "first.toml"
    assert form.save(str(first), *[fields[n] for n in form.names]) == f"saved {first}"
    message, *loaded = form.load(str(first))
    assert message == f"loaded {first}"
    back = dict(zip(form.names, loaded, strict=True))
    assert (
        back == {**fields, "logging_dir": back["logging_dir"]}
        and back["blocks_to_swap"] == fields["blocks_to_swap"]
    )
    second = tmp_path / "second.toml"
    form.save(str(second), *loaded)
    assert second.read_text() == first.read_text()
    written = toml.loads(first.read_text())
    flat = {k: v for section in written.values() if isinstance(section, dict) for k, v in section.items()}
    assert flat["clip_l"] == str(flux_sources["clip_l"]) and flat["model_prediction_type"] == "raw"
    assert flat["discrete_flow_shift"] == 3.1582 and "min_snr_gamma" not in flat


def test_a_flux_preset_with_its_placeholder_paths_saves_and_loads_unchanged(tmp_path):
    form = make_form(tmp_path)
    _, *values = form.load_preset("flux_lora_12gb")
    path = tmp_path / "draft.toml"
    assert "does not validate yet" in form.save(str(path), *values)
    _, *again = form.load(str(path))
    assert again == values


def test_the_flux_command_runs_sd_scripts_flux_script(flux_sources, tmp_path):
    form = make_form(tmp_path)
    fields = preset_fields("flux_lora_12gb", flux_sources, tmp_path)
    printed = form.command(*[fields[n] for n in form.names])
    first = printed.splitlines()[0]
    assert first.split()[1].endswith("/flux_train_network.py"), first
    assert first.endswith(f"--config_file {tmp_path / 'out' / 'flux_lora.toml'}")
    argv = configs.trainer_command("network", "x.toml", "accelerate", str(flux_sources["folder"]))
    assert argv[:2] == ["accelerate", "launch"] and Path(argv[2]).name == "flux_train_network.py"
    assert argv[2] == str(REPO / "flux_train_network.py") and (REPO / "flux_train_network.py").is_file()
    assert (
        Path(configs.trainer_command("db", "x.toml", model=str(flux_sources["single"]))[1]).name
        == "flux_train.py"
    )
    assert (REPO / "flux_train.py").is_file()
    # SD, SDXL and a model that cannot be told yet: the scripts that take every family
    for model in ("builtin:tiny", "builtin:tiny-sdxl", "models/flux1-dev.safetensors", None):
        assert Path(configs.trainer_command("network", "x.toml", model=model)[1]).name == "train_network.py"
        assert Path(configs.trainer_command("db", "x.toml", model=model)[1]).name == "train_db.py"
    # Start and the queue build theirs from the written config file
    path = configs.write_run_config("network", fields)
    assert Path(configs.config_command("network", path)[1]).name == "flux_train_network.py"
    assert Path(configs.config_command("network", tmp_path / "missing.toml")[1]).name == "train_network.py"


def test_markdown_lines_are_separate_lines():
    hint = family_hint("builtin:tiny")
    assert family_markdown(hint) == "Model family: SD1 — " + hint.text.split(" — ", 1)[1]
    assert family_markdown(hint, ["a", "b"]).split("  \n") == [f"Model family: {hint.text}", "a", "b"]


@pytest.fixture(scope="module")
def tiny_flux(tmp_path_factory):
    """The tiny FLUX.1-dev as sd-scripts' four separate files (about 5 s to build)."""
    from library.models.tiny_flux import save_tiny_flux_files

    return save_tiny_flux_files(tmp_path_factory.mktemp("gui_tiny_flux"), "dev")


@pytest.mark.slow  # builds the tiny FLUX, then a subprocess loads it: about 20 s
def test_the_estimate_button_estimates_a_flux_preset(tiny_flux, tmp_path):
    pytest.importorskip("bitsandbytes")  # the preset's AdamW8bit
    form = make_form(tmp_path)
    fields = configs.load_config("network", configs.preset_path("flux_lora_12gb"))
    fields.update(
        pretrained_model_name_or_path=str(tiny_flux["transformer"]),
        clip_l=str(tiny_flux["clip_l"]),
        t5xxl=str(tiny_flux["t5xxl"]),
        ae=str(tiny_flux["ae"]),
        train_data_dir=str(REPO / "dataset_examples" / "train"),
        output_dir=str(tmp_path / "out"),
        logging_dir="",
        resolution="64",
        min_bucket_reso="64",
        max_bucket_reso="128",
        blocks_to_swap="2",
        t5xxl_max_token_length="32",
    )
    report = form.estimate(*[fields[n] for n in form.names])
    assert report.startswith("Estimate for "), report
    lines = {line.strip().split("  ")[0]: line for line in report.splitlines()}
    # the preset's memory savers are in it: fp8 weights, two swapped blocks in host memory, the text
    # encoders cached away (no text-encoder line), AdamW8bit's state
    assert "float8_e4m3fn" in lines["UNet weights (frozen)"]
    assert "of 9 blocks" in lines["swapped blocks in flight (blocks_to_swap)"]
    assert not any(label.startswith("text encoder") for label in lines)
    assert "optimizer state (AdamW8bit)" in lines and "peak" in lines
    assert not (tmp_path / "out").exists()  # an estimate writes nothing


def test_off_values_do_not_count_as_set():
    from library.gui.training_tab import is_set

    for name, raw in (
        ("blocks_to_swap", "0"),
        ("blocks_to_swap", None),
        ("min_snr_gamma", ""),
        ("guidance_scale", 3.5),
        ("apply_t5_attn_mask", False),
        ("clip_l", None),
    ):
        assert not is_set(SCHEMA[name], raw), (name, raw)
    for name, raw in (
        ("blocks_to_swap", "16"),
        ("min_snr_gamma", "5"),
        ("guidance_scale", 1.0),
        ("clip_l", "x.safetensors"),
        ("min_snr_gamma", "five"),
    ):
        assert is_set(SCHEMA[name], raw), (name, raw)
