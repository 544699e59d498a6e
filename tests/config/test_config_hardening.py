"""Bad configs are refused at the edge, before any model loads, with one clear ConfigError (issue 12)."""

from __future__ import annotations

import logging
import os
import sys

import pytest

from library.cli import run_guarded
from library.config.load import config_from_values, parse_config
from library.config.values import file_name_problem
from library.errors import ConfigError


@pytest.fixture
def base(tmp_path):
    data = tmp_path / "data"
    (data / "10_sks dog").mkdir(parents=True)
    return {"pretrained_model_name_or_path": "builtin:tiny", "output_dir": str(tmp_path / "out"),
            "train_data_dir": str(data)}


def _refused(values: dict, *words: str, trainer: str = "network") -> str:
    with pytest.raises(ConfigError) as info:
        config_from_values(values, trainer)
    message = str(info.value)
    for word in words:
        assert word in message, message
    return message


# --- finite numbers ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["learning_rate", "noise_offset", "unet_lr", "max_grad_norm", "text_encoder_lr"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), "nan", "inf", "-Infinity"])
def test_non_finite_floats_are_refused(base, name, value):
    _refused({**base, name: value}, name, "must be a finite number")


def test_non_finite_in_a_list_and_a_huge_int_are_refused(base):
    _refused({**base, "text_encoder_lr": [1e-4, float("nan")]}, "text_encoder_lr", "finite")
    _refused({**base, "learning_rate": 10**400}, "learning_rate", "finite")


@pytest.mark.parametrize("text", ["learning_rate = nan", "learning_rate = inf", "noise_offset = nan"])
def test_non_finite_in_toml_is_refused(tmp_path, base, text):
    path = tmp_path / "cfg.toml"
    path.write_text(text + "\n", encoding="utf-8")
    argv = ["--config_file", str(path)] + [x for k, v in base.items() for x in (f"--{k}", v)]
    with pytest.raises(ConfigError, match="must be a finite number") as info:
        parse_config(argv, "network")
    assert text.split(" = ")[0] in str(info.value)


def test_non_finite_on_the_command_line_exits_2(base, capsys):
    argv = [x for k, v in base.items() for x in (f"--{k}", v)] + ["--learning_rate", "nan"]
    assert run_guarded(lambda: parse_config(argv, "network")) == 2
    err = capsys.readouterr().err
    assert "learning_rate" in err and "finite" in err and "Traceback" not in err


# --- seeds and upper bounds ----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["seed", "validation_seed"])
@pytest.mark.parametrize("value", [2**70, 2**32, -1])
def test_seeds_out_of_range_are_refused(base, name, value):
    _refused({**base, name: value}, name, "out of range")


def test_largest_seed_is_accepted(base):
    assert config_from_values({**base, "seed": 2**32 - 1}, "network").seed == 2**32 - 1


def test_network_dim_has_an_upper_bound(base):
    _refused({**base, "network_dim": 1_000_000_000}, "network_dim", "at most 100000", "width")
    assert config_from_values({**base, "network_dim": 4096}, "network").network_dim == 4096
    # kohya_ss' LoKr presets: a dim above every width is LyCORIS' full-matrix mode
    lokr = {**base, "network_module": "lycoris.kohya", "network_args": ["algo=lokr", "conv_dim=100000"]}
    assert config_from_values({**lokr, "network_dim": 100000}, "network").network_dim == 100000


@pytest.mark.parametrize(
    ("arg", "words"),
    [
        ("conv_dim=1000000000", ("conv_dim", "at most 100000", "width")),
        ("conv_dim=-1", ("conv_dim", "negative")),
        ("conv_dim=abc", ("conv_dim", "whole number")),
        ("conv_alpha=nan", ("conv_alpha", "finite")),
        ("conv_alpha=inf", ("conv_alpha", "finite")),
        ("loraplus_lr_ratio=nan", ("loraplus_lr_ratio", "finite")),
        ("block_lr_zero_threshold=-inf", ("block_lr_zero_threshold", "finite")),
        ("block_dims=4,4,999999", ("block_dims", "'999999'", "at most 100000")),
        ("conv_block_alphas=1,nan", ("conv_block_alphas", "'nan'", "finite")),
        ("down_lr_weight=sine+nan", ("down_lr_weight", "finite")),
        ("rank_dropout=nan", ("rank_dropout", "[0, 1)")),
    ],
)
def test_numeric_network_args_have_the_bounds_of_network_dim(base, arg, words):
    _refused({**base, "network_args": [arg]}, "network_args", *words)


def test_lycoris_network_args_are_bounded_too(base):
    lycoris = {**base, "network_module": "lycoris.kohya"}
    _refused({**lycoris, "network_args": ["algo=locon", "conv_dim=999999"]}, "conv_dim", "at most 100000")
    _refused({**lycoris, "network_args": ["algo=locon", "constraint=nan"]}, "constraint", "finite")


def test_sane_network_args_are_accepted(base):
    args = ["conv_dim=4096", "conv_alpha=0.5", "down_lr_weight=sine+.5", "block_dims=" + ",".join(["8"] * 25)]
    assert config_from_values({**base, "network_args": args}, "network").network_args == args


def test_repeats_that_cannot_fit_are_refused(base, tmp_path):
    (tmp_path / "data" / "1000000000_x").mkdir()
    _refused(base, "1000000000_x", "repeats", "at most 10000")


def test_repeats_in_reg_folder_are_checked(base, tmp_path):
    (tmp_path / "reg" / "99999_person").mkdir(parents=True)
    _refused({**base, "reg_data_dir": str(tmp_path / "reg")}, "reg_data_dir", "99999_person")


# --- names that stay inside their folder ---------------------------------------------------------

@pytest.mark.parametrize("value", ["", "../../escape", "a/b", "a\\b", "..", ".", "bad\nname", "tab\tname",
                                   "nul\x00", "line\u2028sep"])
def test_bad_output_names_are_refused(base, value):
    _refused({**base, "output_name": value}, "output_name")


@pytest.mark.parametrize("value", ["", "/txt", ".t/xt", "\\txt", "..", ".txt\n"])
def test_bad_caption_extensions_are_refused(base, value):
    _refused({**base, "caption_extension": value}, "caption_extension")


def test_bad_log_prefix_is_refused_and_empty_one_is_fine(base):
    _refused({**base, "log_prefix": "../x"}, "log_prefix", "separator")
    assert config_from_values({**base, "log_prefix": ""}, "network").log_prefix == ""


@pytest.mark.parametrize("value", ["last", "my lora v1.2", "a..b", "café_ドラゴン", "x-y_z"])
def test_plain_names_are_accepted(base, value):
    assert config_from_values({**base, "output_name": value}, "network").output_name == value
    assert file_name_problem(value) is None


def test_normal_caption_extensions_are_accepted(base):
    for value in (".txt", ".caption", "txt", ".tags.txt"):
        assert config_from_values({**base, "caption_extension": value}, "network").caption_extension == value


def test_bad_output_name_is_refused_with_output_config_too(base, tmp_path):
    _refused({**base, "output_name": "../x", "output_config": str(tmp_path / "c.toml")}, "output_name")


# --- TOML files ----------------------------------------------------------------------------------

@pytest.mark.slow  # a few seconds (subprocesses / imports): fast tier budget
def test_deeply_nested_toml_is_a_clear_error(tmp_path):
    path = tmp_path / "deep.toml"
    path.write_text("network_args = " + "[" * 10_000 + "]" * 10_000 + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="nested too deeply") as info:
        parse_config(["--config_file", str(path)], "network")
    assert str(path) in str(info.value)


@pytest.mark.parametrize("text", ["network_dim = {a = 1}", "[network_arguments]\nnetwork_dim = {a = 1}",
                                  "[network_dim]\na = 1"])
def test_a_table_as_a_value_names_the_option(tmp_path, base, text):
    path = tmp_path / "cfg.toml"
    path.write_text(text + "\n", encoding="utf-8")
    argv = ["--config_file", str(path)] + [x for k, v in base.items() for x in (f"--{k}", v)]
    with pytest.raises(ConfigError) as info:
        parse_config(argv, "network")
    message = str(info.value)
    assert "'network_dim' must be a whole number, not a table" in message, message
    assert "unknown option" not in message


def test_table_value_from_the_gui_names_the_option(base):
    _refused({**base, "learning_rate": {"a": 1}}, "'learning_rate' must be a number, not a table")


def test_config_with_a_utf8_bom_loads(tmp_path, base):
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + b"[training]\nlearning_rate = 3e-4\n")
    argv = ["--config_file", str(path)] + [x for k, v in base.items() for x in (f"--{k}", v)]
    assert parse_config(argv, "network").learning_rate == pytest.approx(3e-4)


def test_config_that_is_not_utf8_is_a_clear_error(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes("output_name = \"caf\xe9\"\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        parse_config(["--config_file", str(path)], "network")


# --- output and logging folders ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["output_dir", "logging_dir"])
def test_folder_option_that_is_a_file_is_refused(base, tmp_path, name):
    file = tmp_path / "a_file"
    file.write_text("x", encoding="utf-8")
    _refused({**base, name: str(file)}, name, "is a file", str(file))


@pytest.mark.parametrize("name", ["output_dir", "logging_dir"])
def test_folder_below_a_file_cannot_be_written(base, tmp_path, name):
    file = tmp_path / "a_file"
    file.write_text("x", encoding="utf-8")
    _refused({**base, name: str(file / "sub")}, name, "cannot be written", str(file / "sub"))


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_dir_is_refused(base, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        _refused({**base, "output_dir": str(locked / "out")}, "output_dir", "cannot be written")
        _refused({**base, "output_dir": str(locked)}, "output_dir", "cannot be written")
    finally:
        locked.chmod(0o700)


def test_unwritable_folder_is_refused(base, tmp_path, monkeypatch):
    """Simulates a read-only disk (the tests may run as root, which writes anywhere)."""
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    message = _refused({**base, "logging_dir": str(tmp_path / "logs")}, "cannot be written", "Read-only")
    assert "output_dir" in message  # output_dir is checked first and names itself
    assert not (tmp_path / "out").exists()


def test_probe_leaves_no_trace(base, tmp_path):
    out = tmp_path / "new" / "deeper" / "out"
    config_from_values({**base, "output_dir": str(out), "logging_dir": str(tmp_path / "logs")}, "network")
    assert not (tmp_path / "new").exists() and not (tmp_path / "logs").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    config_from_values({**base, "output_dir": str(existing)}, "network")
    assert list(existing.iterdir()) == []


# --- learning rate warning -----------------------------------------------------------------------

def test_learning_rate_unused_with_part_rates_warns(base, caplog):
    with caplog.at_level(logging.WARNING):
        config_from_values({**base, "learning_rate": 1e-3, "unet_lr": 5e-4, "text_encoder_lr": 5e-5}, "network")
    text = caplog.text
    assert "learning_rate = 0.001 has no effect" in text
    assert "unet_lr = 0.0005" in text and "text_encoder_lr = 5e-05" in text


def test_no_lr_warning_without_part_rates(base, caplog):
    with caplog.at_level(logging.WARNING):
        config_from_values({**base, "learning_rate": 1e-3}, "network")
        config_from_values({**base, "unet_lr": 1e-3, "network_train_text_encoder_only": True}, "network")
    assert "has no effect" not in caplog.text


def test_db_learning_rate_te_warns(base, caplog):
    with caplog.at_level(logging.WARNING):
        config_from_values({**base, "train_text_encoder": True, "learning_rate_te": 1e-6}, "db")
    assert "learning_rate_te = 1e-06" in caplog.text


@pytest.mark.parametrize("trainer", ["network", "db"])
def test_allow_unsafe_pickle_help_names_models_and_resume_folders(trainer):
    from library.config.load import build_parser

    text = " ".join(build_parser(trainer).format_help().split())
    at = text.index("--no-allow_unsafe_pickle ")  # the option's entry, not the usage line
    help_text = text[at : text.index(" --", at + 5)]
    for words in (".ckpt", "resume folders", "random_states", "earlier versions", "may run code"):
        assert words in help_text, help_text


# --- cached text-encoder outputs need fixed captions ---------------------------------------------

@pytest.mark.parametrize("cache", ["cache_text_encoder_outputs", "cache_text_encoder_outputs_to_disk"])
@pytest.mark.parametrize(("name", "value"), [("shuffle_caption", True), ("caption_dropout_rate", 0.1),
                                             ("caption_dropout_every_n_epochs", 2), ("caption_tag_dropout_rate", 0.2)])
def test_cached_text_encoder_outputs_refuse_caption_augmentations(base, cache, name, value):
    message = _refused({**base, cache: True, name: value, "network_train_unet_only": True}, f"'{cache}'",
                       f"'{name}'", "sd-scripts refuses this too")
    assert message.index(cache) < message.index(name)
    assert config_from_values({**base, name: value}, "network")  # either alone is fine
    assert config_from_values({**base, cache: True, "network_train_unet_only": True}, "network")


def test_cached_text_encoder_outputs_refuse_a_shuffling_dataset_config_subset(base, tmp_path):
    images = tmp_path / "data" / "10_sks dog"
    path = tmp_path / "datasets.toml"
    path.write_text(f"[[datasets]]\nresolution = 64\n[[datasets.subsets]]\nimage_dir = '{images.as_posix()}'\n"
                    f"[[datasets.subsets]]\nimage_dir = '{images.as_posix()}'\nshuffle_caption = true\n",
                    encoding="utf-8")
    values = {**base, "train_data_dir": None, "dataset_config": str(path), "cache_text_encoder_outputs": True,
              "network_train_unet_only": True}
    _refused(values, "'cache_text_encoder_outputs'", "'shuffle_caption'", "datasets.toml", "10_sks dog")
    path.write_text(path.read_text(encoding="utf-8").replace("shuffle_caption = true\n", ""), encoding="utf-8")
    assert config_from_values(values, "network").dataset_config == str(path)


# --- console_log_file: one record, one line --------------------------------------------------------

def test_console_log_file_escapes_control_characters(tmp_path):
    from library.cli import OneLineFormatter, add_log_file

    log = tmp_path / "logs" / "run.log"
    root = logging.getLogger()
    before = list(root.handlers)
    add_log_file(str(log))
    (handler,) = [h for h in root.handlers if h not in before]
    try:
        assert isinstance(handler.formatter, OneLineFormatter)
        logger = logging.getLogger("sdtrain.test")
        logger.warning("skipping %s", "evil\n[INFO] forged\r\x1b[2K\u2028café ドラ")
        try:
            raise ValueError("bad\nvalue")
        except ValueError:
            logger.exception("step failed for %s", "name\n")
    finally:
        root.removeHandler(handler)
        handler.close()
    lines = log.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2, lines
    assert lines[0].endswith(r"WARNING sdtrain.test: skipping evil\n[INFO] forged\r\x1b[2K\u2028café ドラ")
    assert "ERROR sdtrain.test: step failed for name\\nTraceback (most recent call last):" in lines[1]
    assert lines[1].endswith(r"ValueError: bad\nvalue")
    assert not any(line.startswith("[INFO]") for line in lines)
