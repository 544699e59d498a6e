"""kohya_ss GUI JSON import loses nothing in silence (issue 14): each field becomes what kohya_ss passes to
sd-scripts, or is listed with its reason; the CLI writes the TOML and the prompt file; import -> export ->
import is a fixed point. Fixtures: hand-written kohya_ss configs in tests/fixtures/kohya_ss/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import toml

from library.config.load import config_from_values, read_toml
from library.gui.kohya_convert import export_kohya
from library.gui.kohya_import import guess_trainer, import_kohya, import_kohya_file, read_kohya_json
from library.gui.kohya_network import LORA_TYPES

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "kohya_ss"
TRAIN = str(REPO / "dataset_examples" / "train")
RUN = {"pretrained_model_name_or_path": "builtin:tiny", "train_data_dir": TRAIN, "output_dir": "o"}


def fixture(name: str, **changes) -> dict:
    data = read_kohya_json(FIXTURES / f"{name}.json")
    data.update(changes)
    return data


def test_lycoris_locon_keeps_conv_rank_alpha_dropouts_and_preset():
    result = import_kohya(fixture("lora_lycoris_locon_sd15"))
    assert result.values["network_module"] == "lycoris.kohya"
    assert result.values["network_args"] == [
        "preset=full",
        "conv_dim=32",
        "conv_alpha=1",
        "use_tucker=False",
        "rank_dropout=0.1",
        "bypass_mode=False",
        "dora_wd=False",
        "module_dropout=0.1",
        "use_scalar=False",
        "train_norm=False",
        "algo=locon",
    ]
    assert not result.unmapped and not result.refused, result.message()
    # LyCORIS never reads rank_dropout_scale, so kohya_ss passes it to no effect: listed, not passed
    assert "rank_dropout_scale" in result.skipped and "rank_dropout_scale" in result.message()


#: LoRA_type -> (extra fields, network_module, network_args) as kohya_ss' train_model builds them
BASE = {
    "conv_dim": 8,
    "conv_alpha": 4,
    "rank_dropout": 0.1,
    "module_dropout": 0.2,
    "LyCORIS_preset": "attn-mlp",
    "use_tucker": True,
    "use_scalar": True,
    "train_norm": True,
    "dora_wd": True,
    "bypass_mode": False,
    "factor": 8,
    "use_cp": True,
    "decompose_both": True,
    "constrain": 0.5,
    "rescaled": True,
    "unit": 4,
    "train_on_input": True,
    "rank_dropout_scale": True,
}
LYC = ["preset=attn-mlp", "conv_dim=8", "conv_alpha=4"]
EXPECTED = {
    "Standard": ("networks.lora", ["rank_dropout=0.1", "module_dropout=0.2"]),
    "Kohya LoCon": (
        "networks.lora",
        ["conv_dim=8", "conv_alpha=4", "rank_dropout=0.1", "module_dropout=0.2"],
    ),
    "LyCORIS/LoCon": (
        "lycoris.kohya",
        [
            *LYC,
            "use_tucker=True",
            "rank_dropout=0.1",
            "bypass_mode=False",
            "dora_wd=True",
            "module_dropout=0.2",
            "use_scalar=True",
            "train_norm=True",
            "algo=locon",
        ],
    ),
    "LyCORIS/LoHa": (
        "lycoris.kohya",
        [
            *LYC,
            "use_tucker=True",
            "rank_dropout=0.1",
            "bypass_mode=False",
            "dora_wd=True",
            "module_dropout=0.2",
            "use_scalar=True",
            "train_norm=True",
            "algo=loha",
        ],
    ),
    "LyCORIS/LoKr": (
        "lycoris.kohya",
        [
            *LYC,
            "use_tucker=True",
            "rank_dropout=0.1",
            "bypass_mode=False",
            "dora_wd=True",
            "module_dropout=0.2",
            "use_scalar=True",
            "factor=8",
            "use_cp=True",
            "decompose_both=True",
            "train_norm=True",
            "algo=lokr",
        ],
    ),
    "LyCORIS/iA3": ("lycoris.kohya", [*LYC, "train_norm=True", "algo=ia3"]),
    "LyCORIS/DyLoRA": (
        "lycoris.kohya",
        [
            *LYC,
            "use_tucker=True",
            "block_size=4",
            "rank_dropout=0.1",
            "module_dropout=0.2",
            "train_norm=True",
            "algo=dylora",
        ],
    ),
    "LyCORIS/GLoRA": (
        "lycoris.kohya",
        [*LYC, "use_tucker=True", "rank_dropout=0.1", "module_dropout=0.2", "train_norm=True", "algo=glora"],
    ),
    "LyCORIS/Diag-OFT": (
        "lycoris.kohya",
        [
            *LYC,
            "module_dropout=0.2",
            "use_tucker=True",
            "rank_dropout=0.1",
            "constraint=0.5",
            "rescaled=True",
            "train_norm=True",
            "algo=diag-oft",
        ],
    ),
    "LyCORIS/BOFT": (
        "lycoris.kohya",
        [*LYC, "module_dropout=0.2", "use_tucker=True", "rank_dropout=0.1", "train_norm=True", "algo=boft"],
    ),
    "LyCORIS/Native Fine-Tuning": (
        "lycoris.kohya",
        ["preset=attn-mlp", "rank_dropout=0.1", "module_dropout=0.2", "train_norm=True", "algo=full"],
    ),
    "LoCon": (
        "lycoris.kohya",
        [
            *LYC,
            "use_tucker=True",
            "rank_dropout=0.1",
            "bypass_mode=False",
            "dora_wd=True",
            "module_dropout=0.2",
            "use_scalar=True",
            "train_norm=True",
            "algo=locon",
        ],
    ),
    "Flux1": ("networks.lora_flux", ["rank_dropout=0.1", "module_dropout=0.2"]),
}


def test_every_kohya_ss_lora_type_is_in_the_table_or_refused():
    assert {n for n, t in LORA_TYPES.items() if t.refused is None} == set(EXPECTED)
    assert {n for n, t in LORA_TYPES.items() if t.refused} == {
        "Kohya DyLoRA",
        "LoRA-FA",
        "Kohya LoHa",
        "Kohya LoKr",
        "Flux1 OFT",
        "HunyuanImage-2.1",
        "Lumina",
        "Anima",
    }


@pytest.mark.parametrize("lora_type", sorted(EXPECTED))
def test_lora_type_maps_to_kohya_ss_module_and_args(lora_type):
    result = import_kohya({"LoRA_type": lora_type, **BASE})
    module, args = EXPECTED[lora_type]
    assert (result.values["network_module"], result.values.get("network_args", [])) == (module, args)
    assert set(BASE) <= set(result.mapped) | set(result.skipped)
    assert not result.unmapped, (
        result.unmapped
    )  # what kohya_ss does not pass for this type is listed, not lost
    if lora_type in ("LyCORIS/iA3",):
        assert "lycoris-lora" in result.skipped["train_on_input"]
    # our own network_args parser accepts exactly what kohya_ss passes
    from library.networks import get_network_type

    get_network_type(module).parse_args(args)


def test_missing_fields_keep_kohya_ss_form_defaults():
    # kohya_ss' form keeps its defaults for fields a JSON lacks: conv_dim 1, not LyCORIS' own (network_dim)
    args = import_kohya({"LoRA_type": "LyCORIS/LoKr", "network_dim": 16}).values["network_args"]
    assert args[:3] == ["preset=full", "conv_dim=1", "conv_alpha=1"] and "factor=-1" in args
    assert import_kohya({"LoRA_type": "Standard"}).values.get("network_args") is None


def test_flux1_split_mode_and_t5_become_flux_network_args():
    result = import_kohya(
        {
            "LoRA_type": "Flux1",
            "flux1_checkbox": True,
            "split_mode": True,
            "train_t5xxl": True,
            "split_qkv": False,
            "img_attn_dim": "",
        }
    )
    assert result.values["network_args"] == ["train_blocks=single", "train_t5xxl=True"]


@pytest.mark.parametrize("lora_type", ["Kohya DyLoRA", "LoRA-FA", "Kohya LoHa", "Flux1 OFT", "Lumina"])
def test_types_we_cannot_train_are_refused_naming_module_and_alternative(lora_type, tmp_path, capsys):
    result = import_kohya({"LoRA_type": lora_type, "network_dim": 8})
    module = LORA_TYPES[lora_type].module
    assert result.refused and module in result.refused[0] and "network_module" not in result.values
    assert result.message().count("❌ cannot be trained as it is") == 1 and lora_type in result.message()
    from tools.import_kohya_config import main

    source = tmp_path / "k.json"
    source.write_text(json.dumps({"LoRA_type": lora_type}), encoding="utf-8")
    assert main([str(source), str(tmp_path / "out.toml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and module in err and "Traceback" not in err
    assert not (tmp_path / "out.toml").exists()
    if lora_type == "Kohya DyLoRA":
        assert "LyCORIS/DyLoRA" in result.refused[0]


def test_noise_offset_type_picks_original_or_multires_options():
    multires = import_kohya(fixture("lora_lycoris_locon_sd15")).values
    assert multires["multires_noise_iterations"] == 6 and "noise_offset" not in multires
    assert "adaptive_noise_scale" not in multires  # 0.3 discount is the default, so it is not repeated
    original = import_kohya(fixture("lora_standard_sdxl_multi_gpu"))
    assert (
        original.values["noise_offset"] == 0.0357 and original.values["noise_offset_random_strength"] is True
    )
    assert (
        "multires_noise_iterations" not in original.values
        and "multires_noise_discount" not in original.values
    )
    assert "noise_offset_type is Original" in original.skipped["multires_noise_iterations"]
    other = import_kohya(
        {
            "noise_offset_type": "Multires",
            "multires_noise_iterations": 4,
            "multires_noise_discount": 0.5,
            "noise_offset": 0.1,
        }
    )
    assert other.values == {"multires_noise_iterations": 4, "multires_noise_discount": 0.5}


def test_lr_warmup_percentage_becomes_lr_warmup_steps_and_absolute_steps_win():
    result = import_kohya({"lr_warmup": 10, "lr_warmup_steps": 0})  # kohya_ss' default save
    assert result.values == {"lr_warmup_steps": "10%"}
    config = config_from_values({**result.values, **RUN}, "network")
    assert config.lr_warmup_steps == "10%"
    absolute = import_kohya({"lr_warmup": 5, "lr_warmup_steps": 40})
    assert (
        absolute.values == {"lr_warmup_steps": 40}
        and "wins over the percentage" in absolute.skipped["lr_warmup"]
    )
    assert import_kohya({"lr_warmup": 0, "lr_warmup_steps": 0}).values == {}
    assert import_kohya({"lr_warmup": "12.5"}).values == {"lr_warmup_steps": "12.5%"}


def test_additional_parameters_go_through_our_parser_override_and_name_unknown_flags():
    data = fixture("lora_lycoris_locon_sd15", optimizer_args="weight_decay=0.01")
    result = import_kohya(data)
    v = result.values
    assert v["max_grad_norm"] == 0.5 and v["network_train_unet_only"] is True
    assert v["optimizer_args"] == ["weight_decay=0.05", "betas=0.9,0.99"]  # flags override the form
    db = import_kohya(fixture("dreambooth_sd15"), "db")
    assert db.values["lr_scheduler_power"] == 2.0
    assert "--no_such_flag" in db.skipped["additional_parameters"] and "additional_parameters" in db.unmapped
    assert "--no_such_flag" in db.message()
    bad = import_kohya({"additional_parameters": "--max_grad_norm"})
    assert "cannot be read as sd-scripts flags" in bad.skipped["additional_parameters"]
    assert "max_grad_norm" in bad.skipped["additional_parameters"]


@pytest.mark.parametrize(
    "te,unet,flags",
    [
        (0, 1e-4, (True, False)),
        (5e-5, 0, (False, True)),
        (5e-5, 1e-4, (False, False)),
        (0, 0, (False, False)),
    ],
)
def test_text_encoder_lr_zero_means_unet_only(te, unet, flags):
    result = import_kohya(
        {"LoRA_type": "Standard", "text_encoder_lr": te, "unet_lr": unet, "learning_rate": 1e-4}
    )
    v = result.values
    assert (v.get("network_train_unet_only", False), v.get("network_train_text_encoder_only", False)) == flags
    assert v.get("text_encoder_lr") == (te or None) and v.get("unet_lr") == (unet or None)
    config = config_from_values({**v, **RUN}, "network")
    assert config.network_train_unet_only is flags[0]


def test_finetune_train_dir_gives_in_json_and_keeps_output_dir():
    result = import_kohya(fixture("finetune_sd15"), "db")
    v = result.values
    assert v["in_json"] == "/path/to/finetune/meta_lat.json" and v["output_dir"] == "/path/to/model"
    assert v["train_data_dir"] == "/path/to/img" and v["dataset_repeats"] == 10 and v["enable_bucket"] is True
    assert v["lr_warmup_steps"] == "10%" and v["train_text_encoder"] is True  # fine_tune.py's default: False
    assert (
        import_kohya(fixture("finetune_sd15", train_text_encoder=False), "db").values["train_text_encoder"]
        is False
    )
    captions = import_kohya(fixture("finetune_sd15", use_latent_files="No"), "db")
    assert captions.values["in_json"] == "/path/to/finetune/meta_cap.json"
    assert "prepare_buckets_latents.py" in result.skipped["create_buckets"] and not result.unmapped


def test_finetune_config_validates_as_a_fine_tune_py_run(tmp_path):
    (tmp_path / "meta_lat.json").write_text("{}", encoding="utf-8")
    result = import_kohya(fixture("finetune_sd15", train_dir=str(tmp_path), image_folder=TRAIN), "db")
    assert result.script == "fine_tune.py"
    config = config_from_values({**result.values, "output_dir": str(tmp_path / "model")}, "db")
    assert config.in_json == f"{tmp_path}/meta_lat.json" and config.dataset_repeats == 10
    assert config.train_data_dir == TRAIN and config.output_dir == str(tmp_path / "model")


def test_unreadable_numbers_are_read_as_kohya_ss_reads_them_and_noted():
    result = import_kohya(
        {"LoRA_type": "Standard", "text_encoder_lr": "abc", "unet_lr": 1e-4, "lr_warmup": "x"}
    )
    assert result.values["network_train_unet_only"] is True and "lr_warmup_steps" not in result.values
    assert "text_encoder_lr = 'abc' is not a number" in result.message()
    assert "lr_warmup = 'x' is not a number" in result.message()


def test_zero_values_are_dropped_as_kohya_ss_drops_them_and_kept_through_flags():
    # kohya_ss filters `value not in ["", False, None]`, which drops 0 too: sd-scripts' default applies there
    dropped = import_kohya(
        {"max_grad_norm": 0, "prior_loss_weight": 0, "max_train_steps": 0, "keep_tokens": 0}
    )
    assert dropped.values == {}
    assert any("--max_grad_norm=0" in n for n in dropped.notes) and any(
        "prior_loss_weight" in n for n in dropped.notes
    )
    assert not any("max_train_steps" in n for n in dropped.notes)  # 0 means "unset" there anyway
    kept = import_kohya({"additional_parameters": "--max_grad_norm=0"})
    assert kept.values == {"max_grad_norm": 0.0}
    exported = export_kohya(kept)
    assert exported["additional_parameters"] == "--max_grad_norm=0.0"
    assert import_kohya(exported).values == {"max_grad_norm": 0.0}
    assert import_kohya({"max_data_loader_n_workers": 0}).values == {"max_data_loader_n_workers": 0}


def test_bucket_reso_steps_1_is_kept_and_validates():
    result = import_kohya(fixture("lora_lycoris_locon_sd15"))
    assert result.values["bucket_reso_steps"] == 1
    values = {**result.values, **RUN}
    values.pop("sample_prompts", None)
    assert config_from_values(values, "network").bucket_reso_steps == 1


def test_sdxl_full_bf16_and_accelerate_fields():
    result = import_kohya(fixture("lora_standard_sdxl_multi_gpu"))
    v = result.values
    assert v["cache_text_encoder_outputs"] is True and v["no_half_vae"] is True
    assert result.launch_args == [
        "--num_processes",
        "4",
        "--num_machines",
        "2",
        "--multi_gpu",
        "--gpu_ids",
        "0,1",
        "--main_process_port",
        "29501",
        "--dynamo_backend",
        "inductor",
        "--dynamo_mode",
        "max-autotune",
        "--dynamo_use_dynamic",
        "--same_network",
        "--num_cpu_threads_per_process",
        "4",
    ]
    assert "accelerate launch --num_processes 4" in result.message()
    assert "full_bf16" in result.unmapped and "mixed_precision" in result.skipped["full_bf16"]
    db = import_kohya(fixture("lora_standard_sdxl_multi_gpu"), "db")
    assert db.values["full_bf16"] is True and db.values["no_half_vae"] is True
    off = import_kohya(fixture("lora_standard_sdxl_multi_gpu", sdxl=False))
    assert "no_half_vae" not in off.values and "sdxl checkbox" in off.skipped["sdxl_no_half_vae"]
    single = import_kohya(
        {
            "num_processes": 1,
            "num_machines": 1,
            "num_cpu_threads_per_process": 2,
            "dynamo_backend": "no",
            "multi_gpu": False,
            "gpu_ids": "",
        }
    )
    assert single.launch_args == [] and set(single.mapped) == {
        "num_processes",
        "num_machines",
        "num_cpu_threads_per_process",
        "dynamo_backend",
        "multi_gpu",
        "gpu_ids",
    }


@pytest.mark.slow  # validates the form twice (family detection of the model): about 2 s
def test_accelerate_fields_reach_the_launch_command_the_gui_builds(tmp_path):
    from library.gui.jobs import JobRunner
    from library.gui.run_queue import TrainingQueue
    from library.gui.training_tab import TrainingForm

    data = fixture(
        "lora_standard_sdxl_multi_gpu",
        pretrained_model_name_or_path="builtin:tiny",
        output_dir=str(tmp_path / "out"),
        train_data_dir=TRAIN,
        sample_prompts="a red disc --s 2",
    )
    source = tmp_path / "kohya.json"
    source.write_text(json.dumps(data), encoding="utf-8")
    form = TrainingForm("network", JobRunner(tmp_path / "job"), TrainingQueue(tmp_path / "q", None, None))
    message, *values = form.import_kohya(str(source))
    assert "Launch: accelerate launch --num_processes 4" in message and "full_bf16" in message
    prompt_file = tmp_path / "out" / "sample" / "prompt.txt"  # where kohya_ss writes it
    assert prompt_file.read_text(encoding="utf-8") == "a red disc --s 2\n"
    assert values[form.names.index("sample_prompts")] == str(prompt_file)
    command = form.command(*values)
    assert (
        "-m accelerate.commands.launch --num_processes 4 --num_machines 2 --multi_gpu --gpu_ids 0,1"
        in command
    )
    assert "train_network.py --config_file" in command.split("accelerate.commands.launch", 1)[1]
    form.launch_args = []  # what loading a TOML config does
    assert "accelerate" not in form.command(*values).split("\n")[-1]


def test_every_kohya_ss_field_name_is_mapped_or_listed_with_a_reason():
    names = [
        n for n in (FIXTURES / "field_names.txt").read_text().splitlines() if n and not n.startswith("#")
    ]
    assert len(names) > 300 and {
        "LoRA_type",
        "conv_dim",
        "num_processes",
        "train_dir",
        "token_string",
    } <= set(names)
    samples: dict = {
        "LoRA_type": "LyCORIS/LoKr",
        "xformers": "sdpa",
        "noise_offset_type": "Multires",
        "use_latent_files": "Yes",
        "max_resolution": "512,512",
        "optimizer": "AdamW",
    }
    for tab_marker in ({}, {"train_dir": "/d"}):
        for value in ("", 1, True):
            data = {n: samples.get(n, value) for n in names} | tab_marker
            for trainer in ("network", "db"):
                result = import_kohya(data, trainer)
                message = result.message()
                for name in names:
                    assert name in result.mapped or name in result.skipped, (name, value, trainer)
                    if name in result.skipped:
                        assert name in message, name
                    assert result.skipped.get(name) != "", name
                if value is True:  # a set field that maps to no option must change nothing
                    silent = {n for n in names if result.mapped.get(n) == () and n not in result.skipped}
                    # the Flux.1 box only gates its fields; options at their default (True == 1)
                    assert silent <= {"flux1_checkbox", "train_text_encoder", "network_alpha",
                                      "num_vectors_per_token"}, silent


def test_legacy_fields_as_update_my_data_converts_them():
    result = import_kohya(
        {
            "use_wandb": "True",
            "use_8bit_adam": True,
            "LoRA_type": "LoCon",
            "lora_network_weights": "old.safetensors",
            "xformers": True,
        }
    )
    v = result.values
    assert (
        v["log_with"] == "wandb"
        and v["optimizer_type"] == "AdamW8bit"
        and v["network_weights"] == "old.safetensors"
    )
    assert v["network_module"] == "lycoris.kohya" and v["xformers"] is True and not result.unmapped
    assert import_kohya({"xformers": False}).values == {} and import_kohya({"xformers": "none"}).values == {}


def test_textual_inversion_config_imports_for_the_ti_trainer():
    data = fixture("ti_sd15")
    assert guess_trainer(data) == "ti"
    result = import_kohya(data, "ti")
    assert not result.refused and not result.unmapped, result.message()
    v = result.values
    assert (v["token_string"], v["init_word"], v["num_vectors_per_token"]) == ("sks", "*", 4)
    assert v["use_object_template"] is True and "use_style_template" not in v
    style = import_kohya({**data, "template": "style template"}, "ti").values
    assert style["use_style_template"] is True and "use_object_template" not in style
    assert not {"use_object_template", "use_style_template"} & set(import_kohya({**data, "template": "caption"},
                                                                                "ti").values)
    assert "train_textual_inversion.py" in import_kohya(data, "db").refused[0]


@pytest.mark.parametrize(
    "name,trainer",
    [
        ("lora_lycoris_locon_sd15", "network"),
        ("lora_standard_sdxl_multi_gpu", "network"),
        ("dreambooth_sd15", "db"),
        ("finetune_sd15", "db"),
    ],
)
def test_import_export_import_is_a_fixed_point(name, trainer):
    first = import_kohya(fixture(name), trainer)
    exported = export_kohya(first, trainer)
    second = import_kohya(exported, trainer)
    assert second.values == first.values and second.launch_args == first.launch_args
    assert second.sample_prompts_text == first.sample_prompts_text
    assert export_kohya(second, trainer) == exported


@pytest.mark.parametrize("lora_type", sorted(EXPECTED))
def test_every_lora_type_survives_export(lora_type):
    first = import_kohya({"LoRA_type": lora_type, **BASE})
    assert import_kohya(export_kohya(first)).values == first.values


def test_flux_t5_learning_rate_goes_into_text_encoder_lr_and_back():
    data = {
        "LoRA_type": "Flux1",
        "flux1_checkbox": True,
        "text_encoder_lr": 1e-4,
        "t5xxl_lr": 5e-5,
        "unet_lr": 1e-3,
    }
    first = import_kohya(data)
    assert first.values["text_encoder_lr"] == [1e-4, 5e-5] and first.mapped["t5xxl_lr"] == (
        "text_encoder_lr",
    )
    assert import_kohya(export_kohya(first)).values == first.values
    refused = import_kohya({**data, "text_encoder_lr": 0})
    assert "text_encoder_lr" not in refused.values and "t5xxl_lr" in refused.skipped


def test_cli_writes_toml_and_prompt_file_that_reload_to_the_same_options(tmp_path, capsys):
    from tools.import_kohya_config import main

    data = fixture("lora_lycoris_locon_sd15", train_data_dir=TRAIN, output_dir=str(tmp_path / "model"))
    source = tmp_path / "preset.json"
    source.write_text(json.dumps(data), encoding="utf-8")
    target = tmp_path / "configs" / "locon.toml"
    target.parent.mkdir()
    assert main([str(source), str(target)]) == 0
    report = capsys.readouterr().out
    prompts = tmp_path / "configs" / "locon_prompts.txt"
    assert prompts.read_text(encoding="utf-8").splitlines() == data["sample_prompts"].splitlines()
    assert f"wrote {target}" in report and "note:" not in report and "rank_dropout_scale" in report
    reloaded = read_toml(target, "network")
    expected = {**import_kohya(data).values, "sample_prompts": str(prompts)}
    assert (
        config_from_values(reloaded, "network").to_dict() == config_from_values(expected, "network").to_dict()
    )
    assert toml.loads(target.read_text())["sampling"]["sample_prompts"] == str(prompts)
    assert main([str(source), str(target)]) == 2 and "--overwrite" in capsys.readouterr().err
    assert main([str(source), str(target), "--overwrite"]) == 0


def test_cli_launch_line_and_bad_inputs(tmp_path, capsys):
    from tools.import_kohya_config import main

    source = tmp_path / "multi.json"
    source.write_text(json.dumps(fixture("lora_standard_sdxl_multi_gpu")), encoding="utf-8")
    assert main([str(source), str(tmp_path / "multi.toml")]) == 0
    out = capsys.readouterr().out
    assert "launch: accelerate launch --num_processes 4" in out and "train_network.py --config_file" in out
    assert (
        (tmp_path / "multi.toml")
        .read_text()
        .startswith("# imported from a kohya_ss GUI config; launch with: accelerate launch --num_processes 4")
    )
    assert "note: the config does not validate here yet" in out  # /path/to/img does not exist here
    broken = tmp_path / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    for args in (
        [str(broken), str(tmp_path / "a.toml")],
        [str(tmp_path / "missing.json"), str(tmp_path / "b.toml")],
        [str(source), str(tmp_path / "c.txt")],
    ):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_import_kohya_file_guesses_the_trainer_from_the_tab():
    assert (
        import_kohya_file(FIXTURES / "finetune_sd15.json", None).values["in_json"].endswith("meta_lat.json")
    )
    assert import_kohya_file(FIXTURES / "lora_lycoris_locon_sd15.json", None).values["network_module"]
