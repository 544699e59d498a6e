"""The GUI cannot be driven from a web page or made to run code (issue 12 part 5): the Host check, no start
without a login when exposed, unsafe switches refused from forms, shell-quoted commands, paths kept to
``--allowed_paths`` and Convert not replacing a non-empty folder unasked."""

from __future__ import annotations

import http.client
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from library.errors import UserError
from library.gui import configs
from library.gui.app import main
from library.gui.jobs import JobRunner
from library.gui.run_queue import TrainingQueue
from library.gui.security import (
    GuiPolicy,
    HostPolicy,
    check_path_allowed,
    check_safe_args,
    host_name,
    shell_command,
    start_refusal,
    unsafe_flag,
)
from library.gui.tools_tabs import CAPTION_TOOLS, MODEL_TOOLS, check_tool_form, run_tool, tool_argv
from library.gui.training_tab import TrainingForm
from tests.gui.server import GuiServer

REPO = Path(__file__).resolve().parents[2]
CONVERT = next(s for s in MODEL_TOOLS if s.key == "convert")
WD14 = next(s for s in CAPTION_TOOLS if s.key == "wd14")


@pytest.mark.parametrize(
    "header, name",
    [
        ("127.0.0.1:7860", "127.0.0.1"),
        ("LocalHost:80", "localhost"),
        ("[::1]:7860", "::1"),
        ("example.com.", "example.com"),
        ("evil.example:7860", "evil.example"),
    ],
)
def test_host_name(header, name):
    assert host_name(header) == name


def test_host_policy_for_loopback_listen_name_and_extra_hosts():
    local = HostPolicy.for_listen("127.0.0.1")
    for ok in ("127.0.0.1:7860", "localhost:7860", "[::1]:7860", "localhost"):
        assert local.allows(ok), ok
    for bad in ("evil.example:7860", "127.0.0.1.evil.example", "192.168.1.5:7860", "", None):
        assert not local.allows(bad), bad
    named = HostPolicy.for_listen("gpu-box.lan", ["proxy.example"])
    assert named.allows("gpu-box.lan:7860") and named.allows("proxy.example") and named.allows("localhost")
    assert not named.allows("evil.example")
    wildcard = HostPolicy.for_listen("0.0.0.0")
    assert wildcard.allows("192.168.1.5:7860") and wildcard.allows("[fe80::1]:7860")  # IP literals
    assert not wildcard.allows("rebind.evil.example:7860")


def test_exposed_gui_without_login_refuses_to_start(capsys, tmp_path):
    assert start_refusal("127.0.0.1", False, False, False) is None
    assert start_refusal("::1", False, False, False) is None
    assert start_refusal("0.0.0.0", False, True, False) is None
    assert start_refusal("0.0.0.0", False, False, True) is None
    for listen, share in (("0.0.0.0", False), ("192.168.1.5", False), ("127.0.0.1", True)):
        message = start_refusal(listen, share, False, False)
        assert "--username" in message and "--insecure_no_auth" in message and "\n" not in message
    state = str(tmp_path / "state")
    assert main(["--listen", "0.0.0.0", "--state_dir", state]) == 2
    assert main(["--share", "--state_dir", state]) == 2
    err = capsys.readouterr().err
    assert err.count("error: the GUI would be served on") == 2
    assert not (tmp_path / "state").exists()  # refused before anything starts


@pytest.mark.parametrize(
    "token",
    [
        "--allow_unsafe_pickle",
        "--allow_unsafe_pickle=1",
        "--allow_unsafe",
        "--allow",
        " --ALLOW_UNSAFE_PICKLE ",
    ],
)
def test_unsafe_switch_and_its_abbreviations_are_refused(token):
    assert unsafe_flag(token) == "--allow_unsafe_pickle"
    with pytest.raises(UserError, match="allow_unsafe_pickle"):
        check_safe_args(["a.ckpt", token])


def test_safe_arguments_pass():
    for token in ("--al", "--batch_size", "4", "allow_unsafe_pickle", "-a", "--precision=fp16"):
        assert unsafe_flag(token) is None, token
    check_safe_args(["--batch_size", "4"])


@pytest.mark.slow  # a few seconds (subprocesses / imports): fast tier budget
def test_convert_with_unsafe_extra_argument_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    payload = tmp_path / "evil.ckpt"
    payload.write_bytes(b"not a model")
    values = [str(payload), str(marker), "", False]
    for extra, field_value in (("--allow_unsafe_pickle", str(marker)), ("", "--allow_unsafe_pickle")):
        output = run_tool(CONVERT, [str(payload), field_value, "", False], extra)
        assert output.startswith("❌") and "allow_unsafe_pickle" in output and "$ " not in output
    assert not marker.exists()
    # a fine form still runs (the tool refuses the fake file itself)
    assert run_tool(CONVERT, values, "").startswith("❌ exit code 2")


def test_printed_commands_are_shell_quoted_and_paste_as_exactly_the_arguments(tmp_path):
    hostile = ["x; touch pwned1", "$(touch pwned2)", "`touch pwned3`", "a'b\"c", "new\nline && touch pwned4"]
    argv = [sys.executable, "-c", "import json, sys; print(json.dumps(sys.argv[1:]))", *hostile]
    done = subprocess.run(["bash", "-c", shell_command(argv)], capture_output=True, text=True, cwd=tmp_path)
    assert json.loads(done.stdout) == hostile
    assert not list(tmp_path.glob("pwned*"))


def _form(tmp_path, policy=None):
    runner = JobRunner(tmp_path / "job")
    return TrainingForm(
        "network", runner, TrainingQueue(tmp_path / "q", runner, None), policy=policy or GuiPolicy()
    )


def _quickstart(tmp_path, output_dir):
    fields = configs.load_config("network", configs.preset_path("quickstart"))
    fields.update(
        train_data_dir=str(REPO / "dataset_examples" / "train"),
        reg_data_dir=str(REPO / "dataset_examples" / "reg"),
        output_dir=str(output_dir),
    )
    return fields


def test_print_command_quotes_a_crafted_output_folder(tmp_path):
    form = _form(tmp_path)
    fields = _quickstart(tmp_path, tmp_path / "out $(touch pwned)")
    printed = form.command(*[fields[n] for n in form.names])
    line = printed.splitlines()[0]
    assert shlex.split(line)[-1] == str(tmp_path / "out $(touch pwned)" / "quickstart_lora.toml"), line


def test_check_path_allowed_resolves_dotdot_and_symlinks(tmp_path):
    inside, outside = tmp_path / "work", tmp_path / "secret"
    inside.mkdir()
    outside.mkdir()
    (inside / "link").symlink_to(outside)
    check_path_allowed(inside / "a.toml", [inside])
    check_path_allowed(inside, [inside])
    check_path_allowed(inside / "new" / "deeper.toml", [inside])
    check_path_allowed("/anywhere", None)  # not listening: no restriction
    for bad in (
        outside / "a.toml",
        inside / ".." / "secret" / "a.toml",
        inside / "link" / "a.toml",
        "/etc/passwd",
    ):
        with pytest.raises(UserError, match="--allowed_paths"):
            check_path_allowed(bad, [inside])
    with pytest.raises(UserError):
        check_path_allowed(str(tmp_path / "work-other"), [inside])  # a prefix is not a parent
    old = os.getcwd()
    os.chdir(inside)
    try:
        check_path_allowed("configs/a.toml", [inside])
        with pytest.raises(UserError):
            check_path_allowed("../secret/a.toml", [inside])
    finally:
        os.chdir(old)


def test_listening_gui_keeps_forms_and_tools_inside_allowed_paths(tmp_path):
    allowed = tmp_path / "work"
    allowed.mkdir()
    policy = GuiPolicy.for_gui(True, [str(allowed)], [])
    form = _form(tmp_path, policy)
    outside = tmp_path / "elsewhere.toml"
    fields = _quickstart(tmp_path, allowed / "out")
    values = [fields[n] for n in form.names]
    assert form.save(str(outside), *values).startswith("❌") and not outside.exists()
    assert form.save(str(allowed / "a.toml"), *values).startswith("saved")
    assert form.load(str(outside))[0].startswith("❌")
    assert form.load(str(allowed / "a.toml"))[0].startswith("loaded")
    assert form.import_kohya("/etc/passwd")[0].startswith("❌ '/etc/passwd' is outside")
    assert form.load_preset("../../etc/passwd")[0].startswith("❌")
    assert form.load_preset("quickstart")[0].startswith("loaded")  # presets live in the repository
    assert "--allowed_paths" in form.validate(*values)  # the dataset folders are outside `work`
    unsafe = {**_quickstart(tmp_path, allowed / "out"), "allow_unsafe_pickle": True}
    assert "allow_unsafe_pickle is refused" in form.enqueue(*[unsafe[n] for n in form.names])
    output = run_tool(WD14, [str(tmp_path), "", "", "", False], "", policy=policy)
    assert output.startswith("❌") and "outside" in output
    output = run_tool(WD14, [str(allowed), "", "", "", False], "--model_dir\n/etc", policy=policy)
    assert output.startswith("❌") and "'/etc' is outside" in output


def test_convert_refuses_a_non_empty_destination_folder_unless_ticked(tmp_path):
    source = tmp_path / "model.safetensors"
    full, empty = tmp_path / "full", tmp_path / "empty"
    full.mkdir()
    empty.mkdir()
    (full / "keep.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(UserError, match="not empty"):
        check_tool_form(CONVERT, [str(source), str(full), "", False], "", GuiPolicy())
    check_tool_form(CONVERT, [str(source), str(full), "", True], "", GuiPolicy())
    check_tool_form(CONVERT, [str(source), str(empty), "", False], "", GuiPolicy())
    check_tool_form(CONVERT, [str(source), str(tmp_path / "new"), "", False], "", GuiPolicy())
    assert run_tool(CONVERT, [str(source), str(full), "", False], "").startswith("❌ the destination")
    assert (full / "keep.txt").read_text(encoding="utf-8") == "mine"
    # the ticked box reaches the tool as its --overwrite switch (the CLI refuses the folder without it)
    assert tool_argv(CONVERT, [str(source), str(full), "", True])[-1] == "--overwrite"
    assert "--overwrite" not in tool_argv(CONVERT, [str(source), str(full), "", False])


def _get(port: int, host: str, path: str = "/", method: str = "GET", body: bytes | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers={"Host": host, "Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.mark.slow  # starts a whole process / traces a 1024 px step: kept out of the fast tier
def test_served_gui_refuses_forged_host_headers(tmp_path):
    server = GuiServer(tmp_path, extra=["--allowed_hosts", "trainer.example"])
    try:
        port = server.port
        assert _get(port, f"127.0.0.1:{port}")[0] == 200
        assert _get(port, f"localhost:{port}")[0] == 200
        assert _get(port, "trainer.example")[0] == 200
        status, body = _get(port, f"rebind.evil.example:{port}")
        assert status == 403 and b"--allowed_hosts" in body
        assert _get(port, f"rebind.evil.example:{port}", "/config")[0] == 403
        status, _ = _get(port, "rebind.evil.example", "/gradio_api/queue/join", "POST", b"{}")
        assert status == 403
        assert _get(port, f"127.0.0.1:{port}", "/config")[0] == 200
    finally:
        server.close()
