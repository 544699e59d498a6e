"""Issue 12 at the HTTP level and in bash: a GUI started with ``--listen`` and a login refuses, through
its real API, loads, saves, imports, dataset folders and dataset_config paths outside ``--allowed_paths``;
every registered handler sits behind the OS-error boundary; and the printed command, pasted into bash,
runs exactly the trainer with a crafted output_name."""

from __future__ import annotations

import errno
import json
import subprocess
from pathlib import Path

import pytest
import tomllib

from library.config.i18n import label as i18n_label
from library.gui import configs
from library.gui.app import GuiContext, build_app
from library.gui.guard import GUARDED
from library.gui.jobs import JobRunner
from library.gui.run_queue import TrainingQueue
from library.gui.security import GuiPolicy
from library.gui.training_tab import TrainingForm
from tests.gui.server import GuiServer

pytestmark = pytest.mark.slow  # starts a GUI process / a trainer, builds the whole page

REPO = Path(__file__).resolve().parents[2]
#: the field's label (the endpoints' parameters are named by it): the catalogue's, not the option name
DATASET_CONFIG = i18n_label("dataset_config", "en")
USER, PASSWORD = "trainer", "s3cret-pass"


@pytest.fixture(scope="module")
def listening(tmp_path_factory):
    """(client, work folder, outside folder, endpoint parameter names by label) of a GUI on 0.0.0.0 with a
    login and ``--allowed_paths work``."""
    from gradio_client import Client

    root = tmp_path_factory.mktemp("listening")
    work, outside = root / "work", root / "outside"
    (work / "pics").mkdir(parents=True)
    (outside / "pics").mkdir(parents=True)
    server = GuiServer(
        root,
        state_dir=work / "gui_state",
        extra=[
            "--listen",
            "0.0.0.0",
            "--username",
            USER,
            "--password",
            PASSWORD,
            "--allowed_paths",
            str(work),
        ],
    )
    try:
        client = Client(server.url, auth=(USER, PASSWORD), verbose=False)
        info = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
        params = {
            name: {p["label"]: p["parameter_name"] for p in ep["parameters"]} for name, ep in info.items()
        }
        yield client, work, outside, params
    finally:
        server.close()


def test_login_is_required(listening):
    from gradio_client import Client
    from gradio_client.exceptions import AuthenticationError

    client, *_ = listening
    with pytest.raises(AuthenticationError):
        Client(client.src, verbose=False)


def test_config_load_save_and_import_outside_allowed_paths_are_refused(listening):
    client, work, outside, _ = listening
    secret = outside / "secret.toml"
    secret.write_text('output_name = "secret"\n', encoding="utf-8")
    kohya = outside / "kohya.json"
    kohya.write_text(json.dumps({"learning_rate": 0.5}), encoding="utf-8")

    loaded = client.predict(str(secret), api_name="/network_load")
    assert loaded[0].startswith(f"❌ '{secret}' is outside") and "--allowed_paths" in loaded[0]
    assert "secret" not in json.dumps(loaded[1:])  # no field got the file's values
    for api in ("/network_save", "/network_save_as", "/db_save"):
        target = outside / f"written{api.replace('/', '_')}.toml"
        shown = client.predict(str(target), api_name=api)
        assert shown.startswith(f"❌ '{target}' is outside"), shown
        assert not target.exists()
    shown = client.predict(str(outside / ".." / "outside" / "dotdot.toml"), api_name="/network_save")
    assert shown.startswith("❌") and not (outside / "dotdot.toml").exists()
    imported = client.predict(str(kohya), api_name="/network_import_kohya")
    assert imported[0].startswith(f"❌ '{kohya}' is outside")
    # inside the allowed folder the same calls work
    assert client.predict(str(work / "mine.toml"), api_name="/network_save").startswith("saved")
    assert client.predict(str(work / "mine.toml"), api_name="/network_load")[0].startswith("loaded")


def test_dataset_folders_outside_allowed_paths_are_refused(listening):
    client, work, outside, _ = listening
    (outside / "pics" / "a.txt").write_text("private, words", encoding="utf-8")
    summary, table = client.predict(str(outside / "pics"), "", 512, api_name="/check_dataset")
    assert summary.startswith(f"❌ '{outside / 'pics'}' is outside") and table["data"] == []
    message, _ = client.predict(str(outside / "pics"), ".txt", api_name="/tag_frequencies")
    assert message.startswith("❌") and "is outside" in message
    shown = client.predict(
        str(work / "pics"), str(outside / "prepared"), "sks", "dog", "", "", api_name="/tool_prepare"
    )
    assert shown.startswith(f"❌ '{outside / 'prepared'}' is outside") and not (outside / "prepared").exists()
    shown = client.predict(str(outside / "pics"), "", "", "", False, "", api_name="/tool_wd14")
    assert shown.startswith("❌") and "is outside" in shown and "$ " not in shown  # nothing ran


def test_dataset_config_paths_outside_allowed_paths_are_refused(listening):
    client, work, outside, params = listening
    bad, good = work / "bad_dataset.toml", work / "good_dataset.toml"
    for path, image_dir in ((bad, outside / "pics"), (good, work / "pics")):
        path.write_text(f"[[datasets]]\n[[datasets.subsets]]\nimage_dir = '{image_dir}'\n", encoding="utf-8")
    for api in ("/network_validate", "/network_command", "/network_start", "/network_enqueue"):
        field = params[api][DATASET_CONFIG]
        shown = client.predict(api_name=api, **{field: str(bad)})
        assert shown.startswith(f"❌ image_dir in '{bad}': '{outside / 'pics'}' is outside"), (api, shown)
    summary, _ = client.predict(str(bad), "", 512, api_name="/check_dataset")
    assert summary.startswith("❌ image_dir in") and "is outside" in summary
    shown = client.predict(
        api_name="/network_validate", **{params["/network_validate"][DATASET_CONFIG]: str(good)}
    )
    assert "is outside" not in shown, shown


def test_every_registered_handler_is_behind_the_os_error_boundary(tmp_path, monkeypatch):
    app = build_app(GuiContext(tmp_path / "state"))
    unguarded = [f.name for f in app.fns.values() if not getattr(f.fn, GUARDED, False)]
    assert unguarded == []
    by_name = {f.api_name: f.fn for f in app.fns.values()}
    runner = JobRunner(tmp_path / "job")
    form = TrainingForm("network", runner, TrainingQueue(tmp_path / "q", runner, None))
    fields = configs.load_config("network", configs.preset_path("quickstart"))
    fields.update(output_dir=str(tmp_path / "out"), train_data_dir=str(REPO / "dataset_examples" / "train"))
    values = [fields[n] for n in form.names]

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "quickstart_lora.toml"))

    monkeypatch.setattr(configs, "write_run_config", disk_full)
    shown = by_name["network_start"](*values)
    assert shown == (
        f"❌ No space left on device ({tmp_path / 'out' / 'quickstart_lora.toml'}): the disk is full: free space "
        "there or choose another folder."
    )

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", "/mnt/ro/a.toml")

    monkeypatch.setattr(configs, "save_config", read_only)
    shown = by_name["network_save"]("/mnt/ro/a.toml", *values)
    assert (
        shown
        == "❌ Read-only file system (/mnt/ro/a.toml): the file system is read-only: choose a writable folder."
    )

    def a_folder(*args, **kwargs):
        raise IsADirectoryError(errno.EISDIR, "Is a directory", "/x")

    monkeypatch.setattr(configs, "load_config", a_folder)
    loaded = by_name["network_load"]("/x")
    assert (
        loaded[0]
        == "❌ Is a directory (/x): a folder is where a file was expected: give a file name, not a folder."
    )
    assert len(loaded) == 1 + len(form.names)


def test_printed_command_pasted_into_bash_runs_exactly_the_trainer(tmp_path):
    crafted = "run; touch pwned1 $(touch pwned2) `touch pwned3` 'q\" && touch pwned4 #"
    out = tmp_path / "out $(touch pwned5)\ntouch pwned6"
    runner = JobRunner(tmp_path / "job")
    form = TrainingForm("network", runner, TrainingQueue(tmp_path / "q", runner, None), policy=GuiPolicy())
    fields = configs.load_config("network", configs.preset_path("quickstart"))
    fields.update(
        train_data_dir=str(REPO / "dataset_examples" / "train"),
        reg_data_dir=str(REPO / "dataset_examples" / "reg"),
        output_dir=str(out),
        logging_dir="",
        output_name=crafted,
    )
    values = [fields[n] for n in form.names]
    printed = form.command(*values)
    assert not printed.startswith("❌"), printed
    written = configs.write_run_config("network", form._checked(values))  # what Start writes
    effective = tmp_path / "effective.toml"
    # the whole printed text (command + commented config), plus a switch that makes the trainer stop after
    # writing its effective config
    script = printed.replace("\n\n#", f" --output_config '{effective}'\n\n#", 1)
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    config = tomllib.loads(effective.read_text(encoding="utf-8"))
    flat = {k: v for section in config.values() if isinstance(section, dict) for k, v in section.items()}
    flat.update({k: v for k, v in config.items() if not isinstance(v, dict)})
    assert flat["output_name"] == crafted and flat["output_dir"] == str(out)
    assert written == out / f"{crafted}.toml"
    assert not list(tmp_path.rglob("pwned*")) and not list(Path.cwd().glob("pwned*"))


def test_wd14_form_with_a_local_model_folder_tags_the_pictures(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from PIL import Image

    from library.gui.tools_tabs import CAPTION_TOOLS, run_tool
    from library.tools.dataset.tiny_tagger import build_tiny_tagger

    model = build_tiny_tagger(tmp_path / "tiny tagger")
    Image.new("RGB", (64, 64), (255, 0, 0)).save(tmp_path / "red.png")
    wd14 = next(s for s in CAPTION_TOOLS if s.key == "wd14")
    output = run_tool(wd14, [str(tmp_path), str(model), "", "", False], "")
    assert output.startswith("✅ done"), output
    assert f"--model_dir '{model}'" in output and "HFValidationError" not in output
    assert (tmp_path / "red.txt").read_text(encoding="utf-8").startswith("solo, red")
