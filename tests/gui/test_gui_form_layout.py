"""The training form's layout without a browser: every option in exactly one section (primary options on
top), the no-effect fold, short fields side by side, the search rule, the options that depend on another
option, the LoRA-type selector's mapping, the sample-prompt file and the path picker's checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from library.config import i18n
from library.config.options import SCHEMA
from library.errors import UserError
from library.gui.fields import form_options
from library.gui.form_layout import (
    DEPENDS_ON,
    applies,
    dependents,
    form_plan,
    has_no_effect,
    rows,
    search_matches,
)
from library.gui.form_lora_type import SELECTOR_TYPES, detect_type, type_fields
from library.gui.form_prompts import write_prompts
from library.gui.kohya_network import LORA_TYPES, network_options

pytest.importorskip("gradio")


@pytest.mark.parametrize("trainer", ["network", "db"])
def test_every_option_is_placed_once_in_section_order(trainer):
    plan = form_plan(trainer, grouped={"clip_l"})
    placed = plan.names()
    assert sorted(placed) == sorted(o.name for o in form_options(trainer))
    assert len(placed) == len(set(placed))
    keys = [s.key for s in plan.sections]
    assert keys == [s.key for s in i18n.SECTIONS if s.key in keys]
    for section in plan.sections:
        assert all(i18n.section_of(o.name) == section.key for o in section.options)
        assert all(i18n.is_primary(o.name) for o in section.primary)
        assert not any(i18n.is_primary(o.name) for o in section.more)
        wanted = [n for s in i18n.SECTIONS if s.key == section.key for n in s.primary]
        assert [o.name for o in section.primary] == [
            n for n in wanted if n in {o.name for o in section.primary}
        ]
    assert "clip_l" not in [o.name for s in plan.sections for o in s.options]


def test_the_lora_form_opens_with_the_model_and_its_primary_options():
    plan = form_plan("network")
    first = plan.sections[0]
    assert first.key == "model" and first.primary[0].name == "pretrained_model_name_or_path"
    network = next(s for s in plan.sections if s.key == "network")
    assert [o.name for o in network.primary][:3] == ["network_module", "network_dim", "network_alpha"]


def test_options_without_effect_are_folded_away():
    plan = form_plan("network")
    folded = {o.name for o in plan.no_effect}
    assert {"xformers", "lowram", "sdpa", "mem_eff_attn", "highvram", "mem_eff_save"} <= folded
    assert "gradient_checkpointing" not in folded and "cache_latents" not in folded
    assert all(has_no_effect(SCHEMA[n]) for n in folded)


def test_short_fields_share_rows():
    opts = [SCHEMA[n] for n in ("enable_bucket", "flip_aug", "train_batch_size", "color_aug", "output_dir")]
    assert [[o.name for o in row] for row in rows(opts)] == [
        ["enable_bucket", "flip_aug", "train_batch_size"],
        ["color_aug"],
        ["output_dir"],
    ]


@pytest.mark.parametrize(
    ("query", "found", "not_found"),
    [
        ("noise", "noise_offset", "learning_rate"),
        ("NOISE offset", "noise_offset", "min_snr_gamma"),
        ("network_dim", "network_dim", "network_alpha"),
        ("", "learning_rate", None),
    ],
)
def test_search_matches_names_and_labels(query, found, not_found):
    names = [o.name for o in form_options("network")]
    hits = search_matches(query, names)
    assert found in hits
    if not_found:
        assert not_found not in hits


def test_search_finds_an_option_by_its_label_in_any_language():
    names = ["pretrained_model_name_or_path", "learning_rate"]
    english = i18n.label("pretrained_model_name_or_path", "en")
    assert search_matches(english.upper(), names) == ["pretrained_model_name_or_path"]
    chinese = i18n.label("pretrained_model_name_or_path", "zh-CN")
    assert "pretrained_model_name_or_path" in search_matches(chinese, names)


@pytest.mark.slow  # the scheduler list comes from the registry (imports torch)
def test_dependent_options_follow_their_controller():
    for name, (controller, values) in DEPENDS_ON.items():
        assert name in SCHEMA and controller in SCHEMA
        choices = SCHEMA[controller].allowed_choices()
        assert choices is None or set(values) <= set(choices), name
    assert applies("lr_scheduler_num_cycles", "cosine_with_restarts")
    assert not applies("lr_scheduler_num_cycles", "constant")
    assert applies("huber_c", "huber") and not applies("huber_c", "l2")
    assert applies("zero_stage", True) and not applies("zero_stage", False)
    assert applies("fused_backward_pass", "adafactor") and not applies("fused_backward_pass", "AdamW8bit")
    assert dependents([o.name for o in form_options("db")])["optimizer_type"] == ["fused_backward_pass"]
    names = [o.name for o in form_options("network")]
    assert dependents(names)["loss_type"] == ["huber_schedule", "huber_c", "huber_scale"]


@pytest.mark.slow  # imports the model families
def test_dependent_options_are_not_family_options():
    from library.gui.family_hint import MULTI_TEXT_ENCODER_OPTIONS, family_only_options

    assert not set(DEPENDS_ON) & (family_only_options() | set(MULTI_TEXT_ENCODER_OPTIONS))


# --- LoRA type ---------------------------------------------------------------------------------------------


def test_lora_types_are_kohya_ss_mapping():
    assert "Kohya LoHa" not in SELECTOR_TYPES and "LoCon" not in SELECTOR_TYPES  # refused, alias
    for name in ("Standard", "Kohya LoCon", "LyCORIS/LoHa", "LyCORIS/LoKr", "LyCORIS/DoRA"):
        assert name in SELECTOR_TYPES
    module, args = type_fields("LyCORIS/LoKr")
    expected = network_options({}, "LyCORIS/LoKr")
    assert (module, args) == (expected.module, expected.args) and "algo=lokr" in args
    module, args = type_fields("LyCORIS/DoRA")
    assert module == "lycoris.kohya" and "dora_wd=True" in args and "algo=locon" in args
    assert type_fields("Standard") == ("networks.lora", [])
    assert all(SELECTOR_TYPES[n].kohya_type in LORA_TYPES for n in SELECTOR_TYPES)


def test_changing_the_type_keeps_what_the_new_type_reads():
    _, locon = type_fields("LyCORIS/LoCon", ["conv_dim=8", "my_key=1"])
    assert "conv_dim=8" in locon and "my_key=1" in locon
    module, args = type_fields("Standard", locon)
    assert module == "networks.lora" and args == ["my_key=1"]  # LyCORIS fields dropped, own key kept
    _, loha = type_fields("LyCORIS/LoHa", "conv_dim=8\nloraplus_lr_ratio=16")
    assert "conv_dim=8" in loha and "algo=loha" in loha and "loraplus_lr_ratio=16" in loha


@pytest.mark.parametrize("name", list(SELECTOR_TYPES))
def test_a_loaded_pair_shows_its_type(name):
    module, args = type_fields(name)
    assert detect_type(module, args) == name
    assert detect_type("networks.hypernetwork", []) is None


# --- sample prompts ---------------------------------------------------------------------------------------


def test_prompt_text_goes_to_output_dir_sample(tmp_path):
    written = write_prompts("a dog --n blurry\na cat\n", str(tmp_path / "out"), None)
    assert written == tmp_path / "out" / "sample" / "prompt.txt"
    assert written.read_text(encoding="utf-8") == "a dog --n blurry\na cat\n"
    assert write_prompts("a dog --n blurry\na cat", str(tmp_path / "out"), str(written)) is None  # unchanged
    assert write_prompts("  ", str(tmp_path / "out"), None) is None


def test_prompt_text_goes_beside_the_config_without_output_dir(tmp_path):
    written = write_prompts("a dog", "", None, str(tmp_path / "my_lora.toml"))
    assert written == tmp_path / "my_lora_prompts.txt"
    with pytest.raises(UserError, match="output_dir"):
        write_prompts("a dog", "", None)


def test_prompt_file_outside_the_allowed_folders_is_refused(tmp_path):
    from library.gui.security import GuiPolicy

    policy = GuiPolicy((tmp_path / "work",), True)
    with pytest.raises(UserError, match="outside"):
        write_prompts("a dog", str(tmp_path / "elsewhere"), None, check_path=policy.check)
    assert not (tmp_path / "elsewhere").exists()


# --- path picker --------------------------------------------------------------------------------------------


def test_picker_roots_and_picked_paths(tmp_path):
    from library.gui.path_picker import picked_path, picker_roots
    from library.gui.security import GuiPolicy

    work, inner = tmp_path / "work", tmp_path / "work" / "state"
    inner.mkdir(parents=True)
    (work / "a.png").write_bytes(b"")
    policy = GuiPolicy((work, inner, tmp_path / "missing"), True)
    assert picker_roots(policy) == [work.resolve()]
    assert picked_path(str(work / "a.png"), "dir", policy) == str(work)
    assert picked_path(str(work / "a.png"), "file", policy) == str(work / "a.png")
    with pytest.raises(UserError, match="is a folder"):
        picked_path(str(work), "file", policy)
    with pytest.raises(UserError, match="outside"):
        picked_path(str(tmp_path), "path", policy)
    with pytest.raises(UserError, match="choose"):
        picked_path(None, "path", policy)
    assert picker_roots(GuiPolicy(), cwd=work) == [work.resolve(), Path.home().resolve()] or picker_roots(
        GuiPolicy(), cwd=work
    ) == [Path.home().resolve()]


# --- the built form (gradio components, no browser) ------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("lang", ["en", "zh-CN"])
def test_built_form_keeps_the_option_order_and_words_in_the_language(lang):
    import gradio as gr

    from library.gui.form_build import build_form

    with gr.Blocks():
        built = build_form("network", lang)
    assert [f.elem_id for f in built.fields] == [f"network-{o.name}" for o in form_options("network")]
    dim = built.by_name["network_dim"]
    assert dim.label == i18n.label("network_dim", lang) and dim.info.startswith("network_dim · ")
    assert built.by_name["xformers"].interactive is False
    assert built.by_name["lr_scheduler_num_cycles"].visible is False  # constant schedule: no cycles
    assert built.by_name["huber_c"].visible is False and built.by_name["learning_rate"].visible is True
    assert built.prompts is not None
    other = "en" if lang == "zh-CN" else "zh-CN"
    updates = built.labels.updates(other)
    assert len(updates) == len(built.labels.components())
    assert all(u.get("__type__") == "update" for u in updates)
