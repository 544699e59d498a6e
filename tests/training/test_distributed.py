"""Distributed DreamBooth: DeepSpeed ZeRO through accelerate, FSDP from an accelerate config (issue 12 part 8).

Fast: the DeepSpeed plugin our options build (against what sd-scripts' ``prepare_deepspeed_plugin`` builds) and
the rules checked before any model loads. Slow: 2-process runs on the CPU (gloo) whose saved model is compared
with the same run under plain DDP; a 1-process DeepSpeed run against the plain single-process run.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import toml
import torch
from safetensors.torch import load_file

from library.cli import run_trainer
from library.config import options_distributed
from library.config.load import config_from_values
from library.errors import ConfigError
from library.training.db_target import DreamBoothTarget
from library.training.distributed import deepspeed_plugin, part_states
from tests.db.db_helpers import db_options

ROOT = Path(__file__).resolve().parents[2]
HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
needs_deepspeed = pytest.mark.skipif(
    not HAS_DEEPSPEED,
    reason="deepspeed is not installed: it is optional, as for sd-scripts, and not in requirements-test.txt (its "
           "first CPU run compiles a communication op for ~5 minutes, beyond CI's budget); `pip install "
           "deepspeed==0.19.8` runs this test on 2 CPU processes",
)
FSDP_CONFIG = """\
compute_environment: LOCAL_MACHINE
distributed_type: FSDP
num_processes: 2
num_machines: 1
machine_rank: 0
mixed_precision: 'no'
main_process_port: {port}
fsdp_config:
  fsdp_version: 1
  fsdp_sharding_strategy: FULL_SHARD
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_transformer_layer_cls_to_wrap: BasicTransformerBlock,ResnetBlock2D,CLIPEncoderLayer
  fsdp_state_dict_type: FULL_STATE_DICT
  fsdp_use_orig_params: true
  fsdp_offload_params: false
  fsdp_sync_module_states: false
  fsdp_cpu_ram_efficient_loading: false
  fsdp_backward_prefetch: BACKWARD_PRE
"""


@pytest.fixture(autouse=True)
def deepspeed_importable(monkeypatch):
    """The plugin and the rules need no deepspeed import: these tests run where it is not installed too."""
    monkeypatch.setattr(options_distributed, "deepspeed_installed", lambda: True)


def ds_config(tiny_dataset, tmp_path, trainer="db", **overrides):
    opts = db_options(tiny_dataset, tmp_path / "out", **overrides)
    if trainer == "network":
        opts.pop("reg_data_dir")
    return config_from_values(opts, trainer)


# --- the plugin: what sd-scripts' deepspeed_utils.prepare_deepspeed_plugin builds -----------------------------


def test_zero2_plugin_matches_sd_scripts(tiny_dataset, tmp_path):
    config = ds_config(
        tiny_dataset,
        tmp_path,
        deepspeed=True,
        gradient_accumulation_steps=2,
        train_batch_size=3,
        mixed_precision="fp16",
        max_grad_norm=0.5,
    )
    plugin = deepspeed_plugin(config, world_size=4)
    ds = plugin.deepspeed_config
    assert plugin.zero_stage == 2 and plugin.gradient_accumulation_steps == 2
    assert ds["train_micro_batch_size_per_gpu"] == 3
    assert ds["train_batch_size"] == 3 * 2 * 4  # batch x accumulation x WORLD_SIZE
    assert ds["gradient_accumulation_steps"] == 2 and ds["gradient_clipping"] == 0.5
    assert ds["zero_optimization"]["stage"] == 2
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "none"
    assert ds["zero_optimization"]["offload_param"]["device"] == "none"
    assert ds["fp16"] == {"enabled": True, "auto_cast": True, "initial_scale_power": 0}
    assert ds["bf16"] == {"enabled": False}
    assert "optimizer" not in ds and "aio" not in ds  # our optimizer_type is used, not a DeepSpeed one


def test_offload_and_zero3_plugins(tiny_dataset, tmp_path):
    config = ds_config(
        tiny_dataset,
        tmp_path,
        deepspeed=True,
        mixed_precision="fp16",
        offload_optimizer_device="cpu",
        fp16_master_weights_and_gradients=True,
        max_grad_norm=0.0,
    )
    ds = deepspeed_plugin(config, world_size=2).deepspeed_config
    assert ds["fp16"]["fp16_master_weights_and_grads"] is True
    assert ds["zero_optimization"]["offload_optimizer"] == {
        "device": "cpu",
        "nvme_path": None,
        "pin_memory": True,
    }
    assert ds["zero_force_ds_cpu_optimizer"] is False
    assert "gradient_clipping" not in ds  # max_grad_norm = 0: no clipping

    config = ds_config(
        tiny_dataset,
        tmp_path,
        deepspeed=True,
        zero_stage=3,
        mixed_precision="bf16",
        offload_param_device="nvme",
        offload_param_nvme_path=str(tmp_path),
        zero3_init_flag=True,
        zero3_save_16bit_model=True,
    )
    plugin = deepspeed_plugin(config, world_size=8)
    ds = plugin.deepspeed_config
    assert plugin.zero3_init_flag is True
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert ds["zero_optimization"]["offload_param"] == {
        "device": "nvme",
        "nvme_path": str(tmp_path),
        "pin_memory": True,
    }
    assert ds["aio"] == {
        "single_submit": False,
        "overlap_events": True,
        "thread_count": 1,
        "queue_depth": 128,
        "block_size": 8388608,
    }
    assert ds["bf16"] == {"enabled": True} and ds["train_batch_size"] == 2 * 8


def test_no_plugin_without_deepspeed(tiny_dataset, tmp_path):
    assert deepspeed_plugin(ds_config(tiny_dataset, tmp_path)) is None


def test_part_states_splits_gathered_weights():
    full = {"trainable.0.a.weight": torch.ones(1), "trainable.1.b.bias": torch.zeros(2)}
    parts = part_states(full, ["text_encoder", "unet"])
    assert list(parts) == ["text_encoder", "unet"]
    assert list(parts["text_encoder"]) == ["a.weight"] and list(parts["unet"]) == ["b.bias"]


# --- rules, before any model loads ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"deepspeed": True, "zero_stage": 4}, "option 'zero_stage': 4 is not one of 0, 1, 2, 3"),
        (
            {"deepspeed": True, "offload_optimizer_device": "gpu"},
            "'offload_optimizer_device': 'gpu' is not one of",
        ),
        (
            {"deepspeed": True, "zero_stage": 1, "offload_optimizer_device": "cpu"},
            'offload_optimizer_device = "cpu" needs zero_stage = 2 or 3 (it is 1)',
        ),
        (
            {"deepspeed": True, "offload_param_device": "cpu"},
            'offload_param_device = "cpu" needs zero_stage = 3',
        ),
        (
            {
                "deepspeed": True,
                "zero_stage": 3,
                "zero3_save_16bit_model": True,
                "offload_param_device": "nvme",
            },
            "needs offload_param_nvme_path",
        ),
        ({"deepspeed": True, "zero_stage": 3}, "set zero3_save_16bit_model = true"),
        ({"deepspeed": True, "zero3_init_flag": True}, "zero3_init_flag is for zero_stage = 3 (it is 2)"),
        (
            {"deepspeed": True, "fp16_master_weights_and_gradients": True},
            'fp16_master_weights_and_gradients works only with mixed_precision = "fp16", zero_stage = 2 and '
            'offload_optimizer_device = "cpu"',
        ),
        (
            {"deepspeed": True, "fused_backward_pass": True, "optimizer_type": "AdaFactor"},
            "fused_backward_pass / blockwise_fused_optimizers cannot be combined with deepspeed",
        ),
        (
            {"deepspeed": True, "zero_stage": 3, "zero3_save_16bit_model": True, "validation_split": 0.25},
            "validation_split cannot be used with DeepSpeed ZeRO-3",
        ),
        (
            {"offload_optimizer_device": "cpu"},
            "offload_optimizer_device is a DeepSpeed option, but deepspeed is not set",
        ),
    ],
)
def test_deepspeed_rules(tiny_dataset, tmp_path, overrides, message):
    with pytest.raises(ConfigError) as err:
        ds_config(tiny_dataset, tmp_path, **overrides)
    assert message in str(err.value)


def test_deepspeed_off_values_are_accepted(tiny_dataset, tmp_path):
    """kohya_ss writes every option, most of them off: that is no DeepSpeed run and no error."""
    config = ds_config(
        tiny_dataset,
        tmp_path,
        deepspeed=False,
        zero_stage=2,
        offload_optimizer_device="none",
        zero3_init_flag=False,
        fp16_master_weights_and_gradients=False,
    )
    assert config.deepspeed is False and deepspeed_plugin(config) is None


def test_missing_deepspeed_is_a_clear_error_before_the_model_loads(
    tiny_dataset, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(options_distributed, "deepspeed_installed", lambda: False)
    opts = db_options(
        tiny_dataset, tmp_path / "out", deepspeed=True, pretrained_model_name_or_path=str(tmp_path / "x")
    )
    path = tmp_path / "ds.toml"
    path.write_text(toml.dumps(opts), encoding="utf-8")
    code = run_trainer("db", DreamBoothTarget, ["--config_file", str(path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "deepspeed = true needs the deepspeed package, which is not installed" in err
    assert "DS_BUILD_OPS=0 pip install deepspeed" in err
    assert "Traceback" not in err and "pretrained_model_name_or_path" not in err  # refused before the model


def test_fsdp_rules(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ConfigError, match="supports for train_db.py"):
        ds_config(tiny_dataset, tmp_path, trainer="network")
    with pytest.raises(ConfigError, match="choose one engine"):
        ds_config(tiny_dataset, tmp_path, deepspeed=True)
    with pytest.raises(ConfigError, match="ema_decay cannot be used with FSDP"):
        ds_config(tiny_dataset, tmp_path, ema_decay=0.99)
    assert ds_config(tiny_dataset, tmp_path).trainer == "db"


# --- runs on 2 CPU processes ----------------------------------------------------------------------------------

#: Two steps of plain SGD keep the comparison tight. The tiny random model is chaotic: its first gradient norm is
#: ~380 (clipped to max_grad_norm), the next ~3.6, the third ~150, so the last-bit differences of another
#: reduction order (or of DeepSpeed's flat buffers) grow to a few percent of the update from the third step on,
#: and Adam (which divides by the gradient's root mean square) amplifies them for near-zero gradients. Measured:
#: after 1-2 steps every engine matches DDP / the plain run to ~1e-7.
RUN = {
    "optimizer_type": "torch.optim.SGD",
    "optimizer_args": ["momentum=0"],
    "learning_rate": 0.02,
    "max_train_steps": 2,
}


def _accelerate() -> str:
    return shutil.which("accelerate") or str(Path(sys.executable).with_name("accelerate"))


def _launch(args: list[str], config: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [_accelerate(), "launch", *args, "--config_file", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def _write(tmp_path: Path, name: str, opts: dict) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(toml.dumps(opts), encoding="utf-8")
    return path


def _two_processes(port: int) -> list[str]:
    return [
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(port),
    ]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, tiny_dataset) -> dict[str, torch.Tensor]:
    """The reference: the same 2-process run with plain DDP."""
    tmp = tmp_path_factory.mktemp("ddp")
    opts = db_options(tiny_dataset, tmp / "out", **RUN)
    result = _launch([*_two_processes(29531), "train_db.py"], _write(tmp, "ddp", opts))
    assert "training on data parallel (DDP) over 2 processes" in result.stderr
    return load_file(str(tmp / "out" / "db.safetensors"))


def _assert_same_model(
    saved: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], atol: float
) -> None:
    """Same keys and dtypes, values within ``atol`` (two training steps move the weights by up to ~1e-2, so a
    run that trained differently, or a save of unsynchronised shards, is far outside)."""
    assert saved.keys() == reference.keys()
    assert all(saved[k].dtype == reference[k].dtype for k in saved)
    worst = max((saved[k].float() - reference[k].float()).abs().max().item() for k in saved)
    assert worst <= atol, worst


@pytest.mark.slow
@needs_deepspeed
def test_deepspeed_zero2_two_cpu_processes_save_the_ddp_model(tmp_path, tiny_dataset, ddp_run):
    opts = db_options(tiny_dataset, tmp_path / "out", deepspeed=True, zero_stage=2, **RUN)
    result = _launch([*_two_processes(29532), "train_db.py"], _write(tmp_path, "ds", opts))
    assert "training on DeepSpeed ZeRO-2 over 2 processes" in result.stderr
    assert "weights identical on all 2 processes" in result.stderr
    saved = load_file(str(tmp_path / "out" / "db.safetensors"))
    _assert_same_model(saved, ddp_run, atol=1e-5)


@pytest.mark.slow
def test_fsdp_two_cpu_processes_save_the_ddp_model(tmp_path, tiny_dataset, ddp_run):
    """accelerate turns FSDP on only for GPUs; ``fsdp_cpu_launch.py`` switches its state to FSDP on the CPU, the
    rest (wrapping, sharded steps, gathering the full state dict for the save) is accelerate's and torch's."""
    fsdp_yaml = tmp_path / "fsdp.yaml"
    fsdp_yaml.write_text(FSDP_CONFIG.format(port=29533), encoding="utf-8")
    opts = db_options(tiny_dataset, tmp_path / "out", **RUN)
    result = _launch(
        ["--config_file", str(fsdp_yaml), "tests/training/fsdp_cpu_launch.py"], _write(tmp_path, "fsdp", opts)
    )
    assert "training on FSDP (FULL_SHARD) over 2 processes" in result.stderr
    saved = load_file(str(tmp_path / "out" / "db.safetensors"))
    _assert_same_model(saved, ddp_run, atol=1e-5)


@pytest.mark.slow
@needs_deepspeed
def test_deepspeed_one_process_saves_the_plain_model(tmp_path, tiny_dataset):
    """Without a launcher DeepSpeed gets a one-process group (no MPI needed) and trains as a plain run does."""
    files = {}
    for name, extra in (("plain", {}), ("ds", {"deepspeed": True})):
        opts = db_options(tiny_dataset, tmp_path / name, **RUN, **extra)
        result = subprocess.run(
            [sys.executable, "train_db.py", "--config_file", str(_write(tmp_path, name, opts))],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr[-4000:]
        files[name] = load_file(str(tmp_path / name / "db.safetensors"))
    assert "training on DeepSpeed ZeRO-2 over 1 process" in result.stderr
    _assert_same_model(files["ds"], files["plain"], atol=1e-6)
