"""The trainers' --help: choices and defaults of each option, and the Chinese help with --help_lang zh-CN."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from library.config import load
from library.config.i18n.cli_help import choices_and_default, help_lang_from_argv
from library.config.load import build_parser, parse_config
from library.config.schema import Group, Option, Schema

REPO = Path(__file__).resolve().parents[2]


def _flat(text: str) -> str:
    """The help with argparse's line wrapping undone."""
    return " ".join(text.split())


def _small_schema() -> Schema:
    """A schema with a fixed choice list, a lazy (registry-style) one and plain defaults; the group keys are
    the real schema's, so their Chinese titles exist."""
    return Schema(
        groups=[Group("model", "Model", "Base model."), Group("training", "Training", "Steps.")],
        options=[
            Option(
                "mixed_precision", "str", "no", "Mixed precision.", "model", choices=("no", "fp16", "bf16")
            ),
            Option(
                "optimizer_type", "str", "AdamW", "Optimizer.", "training", choices=lambda: ("AdamW", "Lion")
            ),
            Option("max_train_steps", "int", 1600, "Steps (100% is all).", "training"),
            Option("seed", "int", None, "Random seed.", "training"),
            Option("gradient_checkpointing", "bool", False, "Recompute.", "training"),
            Option("train_text_encoder", "bool", True, "Train the TE.", "training"),
        ],
    )


def test_help_lists_choices_and_defaults():
    text = _flat(build_parser("network", schema=_small_schema()).format_help())
    assert "Mixed precision. (choices: no, fp16, bf16; default: no)" in text
    assert "Optimizer. (choices: AdamW, Lion; default: AdamW)" in text
    assert "Steps (100% is all). (default: 1600)" in text
    assert "Random seed. --gradient_checkpointing" in text  # unset and off: nothing added
    assert "Recompute. --train_text_encoder" in text
    assert "Train the TE. (default: true)" in text


def test_lazy_choices_are_resolved_only_when_help_prints():
    calls = []

    def names():
        calls.append(1)
        return ("AdamW",)

    schema = Schema(
        groups=[Group("training", "Training")],
        options=[Option("optimizer_type", "str", "AdamW", "Optimizer.", "training", choices=names)],
    )
    parser = build_parser("network", schema=schema)
    parser.parse_known_args(["--optimizer_type", "AdamW"])
    assert calls == []
    parser.format_help()
    assert calls == [1]


def test_chinese_help():
    text = _flat(build_parser("network", schema=_small_schema(), lang="zh-CN").format_help())
    assert "混合精度 — 前向计算使用的混合精度。 (可选值: no, fp16, bf16; 默认: no)" in text
    assert "优化器 — 优化器 (不区分大小写) 或带点号的类名。 (可选值: AdamW, Lion; 默认: AdamW)" in text
    assert "模型: 底模、模型家族与精度。" in text  # the group's title and description
    assert "--help 的语言" in text


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], "en"),
        (["--help"], "en"),
        (["--help_lang", "zh-CN", "--help"], "zh-CN"),
        (["--help", "--help_lang=zh_CN.UTF-8"], "zh-CN"),
        (["--help_lang", "zh"], "zh-CN"),
        (["--help_lang", "fr"], "en"),
        (["--help_lang"], "en"),
    ],
)
def test_help_lang_from_argv(argv, expected):
    assert help_lang_from_argv(argv) == expected


def test_help_lang_is_not_an_option_of_the_config(monkeypatch):
    seen = {}
    monkeypatch.setattr(load, "config_from_values", lambda values, trainer, schema: seen.update(values))
    parse_config(["--help_lang", "zh-CN", "--seed", "3"], "network", _small_schema())
    assert seen == {"seed": "3"}


def test_help_exits_with_the_chinese_text(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(["--help_lang", "zh-CN", "--help"], "network", _small_schema())
    assert exit_info.value.code == 0
    assert "优化器" in capsys.readouterr().out


def test_choices_and_default_of_list_and_float_defaults():
    assert choices_and_default(Option("x", "strs", ["a", "b"], "", "model"), "en") == "default: a, b"
    assert choices_and_default(Option("x", "strs", [], "", "model"), "en") == ""
    assert choices_and_default(Option("x", "float", 1e-4, "", "model"), "zh-CN") == "默认: 0.0001"


@pytest.mark.slow
def test_real_help_lists_every_optimizer_and_scheduler():
    from library.training.optimizers import OPTIMIZERS
    from library.training.schedulers import SCHEDULERS

    text = _flat(build_parser("network").format_help())
    assert f"(choices: {', '.join(OPTIMIZERS.names())}; default: AdamW)" in text
    assert f"(choices: {', '.join(SCHEDULERS.names())}; default: constant)" in text
    assert "(choices: no, fp16, bf16; default: no)" in text


@pytest.mark.slow
def test_train_network_help_in_english_and_chinese():
    def run(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "train_network.py", *args], cwd=REPO, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return _flat(done.stdout)

    english = run("--help")
    assert (
        "--optimizer_type STR Optimizer (case-insensitive) or a dotted class name. (choices: AdamW,"
        in english
    )
    assert "default: AdamW)" in english
    assert "Prodigy" in english and "AdaFactor" in english
    chinese = run("--help_lang", "zh-CN", "--help")
    assert "优化器 — 优化器 (不区分大小写) 或带点号的类名。 (可选值: AdamW," in chinese
    assert "默认: AdamW)" in chinese
    assert "网络维度 (rank)" in chinese


@pytest.mark.slow
def test_building_the_parser_imports_neither_torch_nor_gradio():
    code = (
        "import sys; from library.config.load import build_parser; build_parser('network', lang='zh-CN'); "
        "print(sorted(m for m in ('torch', 'gradio') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
