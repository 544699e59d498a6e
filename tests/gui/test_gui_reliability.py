"""The GUI's remaining reliability items of issue 12: the WD14 form passes a local model folder as
``--model_dir``, sample pictures go through the decompression-bomb guard, every handler shows OS errors as
the command line's one paragraph, and a ``dataset_config`` keeps to ``--allowed_paths``."""

from __future__ import annotations

import errno
import logging
import struct
import zlib
from pathlib import Path

import gradio as gr
import pytest
from PIL import Image

from library.errors import UserError
from library.gui import configs
from library.gui.guard import GUARDED, guarded
from library.gui.jobs import JobRunner, RunView
from library.gui.run_queue import TrainingQueue
from library.gui.security import GuiPolicy
from library.gui.tools_tabs import CAPTION_TOOLS, check_rows, tag_rows_checked, tool_argv
from library.gui.training_tab import TrainingForm, newest_samples, pasteable_command

REPO = Path(__file__).resolve().parents[2]
WD14 = next(s for s in CAPTION_TOOLS if s.key == "wd14")


# --- 1. WD14 model field ------------------------------------------------------------------------------


def test_wd14_form_passes_a_local_folder_as_model_dir_and_a_hub_id_as_repo_id(tmp_path):
    model = tmp_path / "my tagger"
    model.mkdir()
    argv = tool_argv(WD14, [str(tmp_path), str(model), "", "", False])
    assert argv[2:] == [str(tmp_path), "--model_dir", str(model)]
    argv = tool_argv(WD14, [str(tmp_path), "SmilingWolf/wd-v1-4-moat-tagger-v2", "0.4", "", True])
    assert argv[2:] == [
        str(tmp_path),
        "--repo_id",
        "SmilingWolf/wd-v1-4-moat-tagger-v2",
        "--general_threshold",
        "0.4",
        "--remove_underscore",
    ]
    # a missing folder is not a local model: it stays a hub id (and the tagger then names it)
    assert tool_argv(WD14, [str(tmp_path), str(tmp_path / "absent"), "", "", False])[3] == "--repo_id"


# --- 3. sample pictures through the bomb guard --------------------------------------------------------


def header_bomb(path: Path, width: int = 20000, height: int = 20000) -> Path:
    """A PNG of a few bytes whose IHDR claims ``width`` x ``height`` (over twice PIL's bomb limit)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def test_sample_preview_skips_a_decompression_bomb_with_a_warning(tmp_path, caplog):
    good = tmp_path / "step_2.png"
    Image.new("RGB", (8, 6), (200, 10, 10)).save(good)
    bomb = header_bomb(tmp_path / "step_1.png")
    view = RunView(samples=[str(bomb), str(good), str(tmp_path / "gone.png")])
    with caplog.at_level(logging.WARNING):
        images = newest_samples(view)
    assert [(name, img.size, img.mode) for img, name in images] == [("step_2.png", (8, 6), "RGB")]
    assert "step_1.png" in caplog.text and "decompression-bomb" in caplog.text
    assert "gone.png" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # the page refreshes every second: warned once, not reopened
        assert [name for _, name in newest_samples(view)] == ["step_2.png"]
    assert "step_1.png" not in caplog.text


def test_previews_at_lora_weights_show_side_by_side(tmp_path):
    """sample_lora_weights / --am: one prompt's renders at each weight sit next to each other, lowest weight
    first, captioned with the weight; other pictures keep their order and names."""
    names = ["run_000002_00_x_1_am1.png", "plain_000002.png", "run_000002_00_x_1_am0.6.png",
             "run_000002_01_x_1_am1.png", "run_000002_01_x_1_am0.6.png"]
    for name in names:
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    captions = [c for _, c in newest_samples(RunView(samples=[str(tmp_path / n) for n in names]))]
    assert captions == ["LoRA weight 0.6 · run_000002_00_x_1_am0.6.png", "LoRA weight 1 · run_000002_00_x_1_am1.png",
                        "plain_000002.png", "LoRA weight 0.6 · run_000002_01_x_1_am0.6.png",
                        "LoRA weight 1 · run_000002_01_x_1_am1.png"]


# --- 4. the OS-error boundary -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "exc, words",
    [
        (OSError(errno.ENOSPC, "No space left on device", "/data/out/a.toml"), "the disk is full"),
        (OSError(errno.EROFS, "Read-only file system", "/ro/a.toml"), "read-only"),
        (PermissionError(errno.EACCES, "Permission denied", "/root/a.toml"), "permission denied"),
        (IsADirectoryError(errno.EISDIR, "Is a directory", "/data/folder"), "give a file name"),
        (UserError("option 'x': bad."), "option 'x': bad."),
    ],
)
def test_guarded_handler_shows_the_one_paragraph_beside_its_button(exc, words):
    def handler(a, b):
        raise exc

    single = guarded(handler, 1)("a", "b")
    assert single.startswith("❌ ") and words in single and "\n" not in single
    if isinstance(exc, OSError):
        assert exc.filename in single
    several = guarded(handler, 3)("a", "b")
    assert several[0] == single and all(isinstance(v, type(gr.skip())) for v in several[1:])
    assert getattr(guarded(handler, 1), GUARDED)


def test_guarded_handler_passes_results_and_keeps_the_signature():
    def run(a, b=2, progress=None):
        return a + b

    wrapped = guarded(run, 1)
    assert wrapped(1) == 3 and wrapped.__name__ == "run"
    import inspect

    assert list(inspect.signature(wrapped).parameters) == ["a", "b", "progress"]  # gradio injects progress


def _form(tmp_path, policy=None):
    runner = JobRunner(tmp_path / "job")
    return TrainingForm(
        "network", runner, TrainingQueue(tmp_path / "q", runner, None), policy=policy or GuiPolicy()
    )


def test_tag_frequencies_of_a_missing_folder_is_a_message_not_a_toast(tmp_path):
    with pytest.raises(UserError, match="is not a folder"):
        tag_rows_checked(str(tmp_path / "absent"), ".txt", GuiPolicy())
    shown = guarded(lambda f, e: tag_rows_checked(f, e, GuiPolicy()), 2)(str(tmp_path / "absent"), ".txt")
    assert shown[0].startswith("❌") and "absent" in shown[0]
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "a.txt").write_text("red, blue", encoding="utf-8")
    assert tag_rows_checked(str(tmp_path), ".txt", GuiPolicy()) == ("2 tags", [["red", 1], ["blue", 1]])


# --- 5. dataset_config keeps to --allowed_paths ---------------------------------------------------------


def _dataset_toml(path: Path, image_dir: Path, conditioning: Path | None = None) -> Path:
    extra = f"conditioning_data_dir = '{conditioning}'\n" if conditioning else ""
    path.write_text(
        f"[general]\nresolution = 64\n\n[[datasets]]\n\n[[datasets.subsets]]\nimage_dir = '{image_dir}'\n"
        f"num_repeats = 1\n{extra}",
        encoding="utf-8",
    )
    return path


def test_dataset_config_paths_must_stay_inside_allowed_paths(tmp_path):
    work, outside = tmp_path / "work", tmp_path / "secret"
    (work / "pics").mkdir(parents=True)
    outside.mkdir()
    policy = GuiPolicy.for_gui(True, [str(work)], [])
    good = _dataset_toml(work / "good.toml", work / "pics")
    bad = _dataset_toml(work / "bad.toml", outside)
    sneaky = _dataset_toml(work / "sneaky.toml", work / "pics", conditioning=work / ".." / "secret")
    policy.check_config_file(good)
    with pytest.raises(UserError, match=r"image_dir in '.*bad.toml': '.*secret' is outside"):
        policy.check_config_file(bad)
    with pytest.raises(UserError, match="conditioning_data_dir in .*is outside"):
        policy.check_config_file(sneaky)
    # a training config naming the dataset config: its paths are followed too
    config = work / "run.toml"
    config.write_text(f"[folders]\ndataset_config = '{bad}'\noutput_dir = '{work}/out'\n", encoding="utf-8")
    with pytest.raises(UserError, match="image_dir in .*bad.toml"):
        policy.check_config_file(config)
    GuiPolicy().check_config_file(bad)  # a GUI serving only this machine: no restriction

    form = _form(tmp_path, policy)
    fields = configs.load_config("network", configs.preset_path("quickstart"))
    fields.update(train_data_dir="", reg_data_dir="", output_dir=str(work / "out"), logging_dir="")
    for name, expected in ((str(bad), "image_dir in"), (str(good), None)):
        fields["dataset_config"] = name
        shown = form.validate(*[fields[n] for n in form.names])
        if expected:
            assert shown.startswith("❌ image_dir in") and "outside" in shown, shown
        else:
            assert "outside" not in shown, shown
    summary, rows = check_rows(str(bad), "", 64, policy)
    assert summary.startswith("❌ image_dir in") and rows == []
    assert "outside" not in check_rows(str(good), "", 64, policy)[0]


# --- printed commands ---------------------------------------------------------------------------------


def test_printed_text_shows_the_config_as_comments_that_cannot_end(tmp_path):
    text = pasteable_command(
        ["python", "train.py"], Path("/o/x\ntouch pwned"), 'output_name = "a\\nb"\nc = 1\n'
    )
    lines = text.splitlines()
    assert lines[0] == "python train.py" and lines[1] == ""
    assert all(line.startswith("# ") for line in lines[2:]), lines
    assert lines[2] == "# /o/x\\ntouch pwned:"


def test_hub_ids_and_builtin_models_are_not_local_paths(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    policy = GuiPolicy.for_gui(True, [str(work)], [])
    names = ["pretrained_model_name_or_path", "vae", "output_dir"]
    policy.check_values(
        {"pretrained_model_name_or_path": "builtin:tiny", "vae": "stabilityai/sd-vae-ft-mse"}, names
    )
    for model in ("../secret/model", "/etc/model.safetensors", "~/model.ckpt"):
        with pytest.raises(UserError, match="is outside"):
            policy.check_values({"pretrained_model_name_or_path": model}, names)
    with pytest.raises(UserError, match="is outside"):  # hub-shaped, but not a model option
        policy.check_values({"output_dir": "owner/name"}, names)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "owner" / "name").mkdir(parents=True)  # exists here: a local folder, so it is checked
    with pytest.raises(UserError, match="is outside"):
        policy.check_values({"pretrained_model_name_or_path": "owner/name"}, names)
