"""Schema round trip through the GUI: for every form option, a value set in its field lands in the TOML
that Save writes and comes back into the field on Load (issue 7 check)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("gradio")

from library.config.load import read_toml  # noqa: E402
from library.config.options import SCHEMA  # noqa: E402
from library.config.values import coerce  # noqa: E402
from library.gui import configs  # noqa: E402
from library.gui.fields import field_spec, form_options, to_field  # noqa: E402
from library.gui.jobs import JobRunner  # noqa: E402
from library.gui.run_queue import TrainingQueue  # noqa: E402
from library.gui.training_tab import TrainingForm, make_component  # noqa: E402

REPO = Path(__file__).resolve().parents[2]

#: values that need a partner option to validate: option -> {other option: value}.
PARTNERS = {
    "color_aug": {"cache_latents": False},
    "random_crop": {"cache_latents": False},
    "full_fp16": {"mixed_precision": "fp16"},
    "full_bf16": {"mixed_precision": "bf16"},
    "use_8bit_adam": {"optimizer_type": "AdamW8bit"},
    "adaptive_noise_scale": {"noise_offset": 0.05},
    "max_token_length": {"no_token_padding": False},
    "min_timestep": {"max_timestep": 900},
    "max_timestep": {"min_timestep": 10},
    "cache_text_encoder_outputs": {"shuffle_caption": False},
    "cache_text_encoder_outputs_to_disk": {"shuffle_caption": False},
    "in_json": {"reg_data_dir": None},  # a fine-tuning dataset has no regularisation pictures
    # DeepSpeed options: deepspeed on, and the ZeRO stage / offload each one is for
    "offload_optimizer_device": {"deepspeed": True},
    "offload_optimizer_nvme_path": {"deepspeed": True, "offload_optimizer_device": "nvme"},
    "offload_param_device": {"deepspeed": True, "zero_stage": 3, "zero3_save_16bit_model": True},
    "offload_param_nvme_path": {
        "deepspeed": True,
        "zero_stage": 3,
        "offload_param_device": "nvme",
        "zero3_save_16bit_model": True,
    },
    "zero3_init_flag": {"deepspeed": True, "zero_stage": 3, "zero3_save_16bit_model": True},
    "zero3_save_16bit_model": {"deepspeed": True, "zero_stage": 3},
    "fp16_master_weights_and_gradients": {
        "deepspeed": True,
        "mixed_precision": "fp16",
        "zero_stage": 2,
        "offload_optimizer_device": "cpu",
    },
}

#: options that validate only with an optional package installed: option -> its module.
NEEDS_PACKAGE = {name: "deepspeed" for name, partner in PARTNERS.items() if partner.get("deepspeed")}
NEEDS_PACKAGE["deepspeed"] = "deepspeed"

#: explicit test values where the generic rule would not be valid.
VALUES = {
    "network_args": ["conv_dim=4", "conv_alpha=1"],
    "optimizer_args": ["weight_decay=0.01"],
    "lr_scheduler_args": ["T_max=100"],
    "lr_scheduler_type": "torch.optim.lr_scheduler.CosineAnnealingLR",
    "optimizer_type": "SGDNesterov",
    "pretrained_model_name_or_path": "builtin:tiny-sd2",
    "log_with": "tensorboard",
    "caption_separator": ";",
    "keep_tokens_separator": "|||",
    "stop_text_encoder_training": 5,
    "max_timestep": 900,
    "max_bucket_reso": 2048,
    "save_model_as": "ckpt",
    "offload_optimizer_device": "cpu",
    "offload_param_device": "cpu",
    "sample_lora_weights": [0.6, 1.0],
    "metadata_thumbnail": "data:image/png;base64,iVBORw0KGgo=",
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("gui_roundtrip")
    shutil.copytree(REPO / "dataset_examples", root / "data")
    (root / "prompts.txt").write_text("a sks circle --w 64 --h 64 --s 2\n")
    (root / "weights.safetensors").write_bytes(b"")
    (root / "state").mkdir()
    return root


def base_fields(trainer: str, root: Path) -> dict:
    fields = (
        configs.load_config(trainer, REPO / "presets" / "quickstart.toml")
        if trainer == "network"
        else configs.load_config(trainer, REPO / "presets" / "sd15_dreambooth.toml")
    )
    fields.update(
        pretrained_model_name_or_path="builtin:tiny",
        train_data_dir=str(root / "data" / "train"),
        reg_data_dir=str(root / "data" / "reg"),
        output_dir=str(root / "out"),
    )
    return fields


def sample_value(opt, root: Path):
    """A valid, non-default value for ``opt`` (None when the option allows only its default)."""
    if opt.name in VALUES:
        return VALUES[opt.name]
    paths = {"dir": root / "state", "file": root / "prompts.txt", "path": root / "elsewhere"}
    if opt.name in ("network_weights",):
        return str(root / "weights.safetensors")
    if opt.name == "dataset_config":
        return str(root / "data" / "dataset.toml")
    if opt.kind in paths:
        return str(root / "state" if opt.must_exist and opt.kind == "path" else paths[opt.kind])
    choices = opt.allowed_choices()
    if choices:
        others = [c for c in choices if c != opt.default]
        return others[-1] if others else None
    if opt.kind == "bool":
        return not opt.default
    if opt.kind in ("int", "float"):
        low = opt.min if opt.min is not None else 0
        value = low + 2 if opt.kind == "int" else low + 0.25
        if opt.max is not None:
            value = min(value, opt.max if opt.kind == "int" else opt.max * 0.5)
        if opt.kind == "int" and value == opt.default:
            value += 1
        if opt.max is not None and value > opt.max:
            return None
        return value
    return {
        "strs": ["x=1", "y=2"],
        "steps": "10%",
        "float_or_floats": 0.0002,
        "resolution": "64,128",
        "str": "some text",
    }[opt.kind]


def through_component(trainer: str, opt, value):
    """The value as the browser would send it back: postprocess (server -> page) then preprocess."""
    comp = make_component(trainer, opt)
    shown = comp.postprocess(to_field(opt, value))
    if isinstance(shown, dict) or hasattr(shown, "model_dump"):
        shown = getattr(shown, "root", shown)
    return comp.preprocess(shown)


@pytest.mark.parametrize("trainer", ["network", "db"])
def test_every_option_round_trips(trainer, workspace, tmp_path):
    form = TrainingForm(trainer, JobRunner(tmp_path / "job"), TrainingQueue(tmp_path / "q", None, None))
    import importlib.util

    checked, problems, unavailable = 0, [], 0
    for opt in form_options(trainer):
        value = sample_value(opt, workspace)
        if value is None or (opt.name == "dataset_config"):
            continue
        if opt.name in NEEDS_PACKAGE and importlib.util.find_spec(NEEDS_PACKAGE[opt.name]) is None:
            unavailable += 1  # cannot validate without the package
            continue
        fields = base_fields(trainer, workspace)
        for other, partner in PARTNERS.get(opt.name, {}).items():
            if other in fields:
                fields[other] = to_field(SCHEMA[other], partner)
        fields[opt.name] = through_component(trainer, opt, value)
        path = tmp_path / f"{opt.name}.toml"
        message = form.save(str(path), *[fields[n] for n in form.names])
        if "does not validate" in message:
            problems.append(f"{opt.name}: {message}")
            continue
        written = read_toml(path, trainer)
        expected = coerce(opt, value)
        if opt.name not in written or coerce(opt, written[opt.name]) != expected:
            problems.append(f"{opt.name}: TOML has {written.get(opt.name)!r}, expected {expected!r}")
            continue
        loaded = form.load(str(path))
        back = dict(zip(form.names, loaded[1:], strict=True))[opt.name]
        if coerce(opt, from_shown(opt, back)) != expected:
            problems.append(f"{opt.name}: field shows {back!r} after Load, expected {expected!r}")
            continue
        checked += 1
    assert not problems, "\n".join(problems)
    assert checked >= len(form_options(trainer)) - 3 - unavailable


def from_shown(opt, shown):
    from library.gui.fields import from_field

    return from_field(opt, shown)


def test_widgets_follow_the_schema():
    assert field_spec(SCHEMA["shuffle_caption"]).widget == "checkbox"
    assert field_spec(SCHEMA["lr_scheduler"]).widget == "dropdown"
    assert field_spec(SCHEMA["optimizer_type"]).custom_values  # dotted class names are allowed
    assert field_spec(SCHEMA["save_precision"]).choices[0] == ("(unset)", "")
    assert field_spec(SCHEMA["train_batch_size"]).widget == "number"
    assert field_spec(SCHEMA["network_dim"]).widget == "text"  # optional: empty means unset, not 0
    assert field_spec(SCHEMA["network_args"]).widget == "lines"
    assert field_spec(SCHEMA["resolution"]).widget == "text"
    comp = make_component("network", SCHEMA["learning_rate"])
    # the label is the catalogue's; the option name stays visible as the hint in front of the help
    assert comp.label == "Learning rate" and comp.info == f"learning_rate · {SCHEMA['learning_rate'].help}"
    assert comp.value == 1e-4
