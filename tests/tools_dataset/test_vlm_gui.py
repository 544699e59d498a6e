"""The VLM captioning section of the GUI: the argument list it builds, the path policy, and a real run of
the tool from the section's Run handler against a local chat-completions server."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from library.gui.security import GuiPolicy
from library.gui.tools_tabs import tool_argv
from library.gui.vlm_tab import VLM_SPEC, form_values, model_placeholder, run_vlm, vlm_captioning_section
from tests.tools_dataset.helpers import solid
from tests.tools_dataset.test_vlm_api import server  # noqa: F401 - the fixture

ROOT = Path(__file__).resolve().parents[2]


def test_local_backend_argv_drops_the_api_fields():
    values = {
        "folder": "/data/pics",
        "--backend": "qwen2.5-vl",
        "--model_id": "Qwen/Qwen2.5-VL-3B-Instruct",
        "--task": "<CAPTION>",
        "--api_base": "http://h/v1",
        "--prompt_style": "tags",
        "--trigger_word": "sks",
        "--batch_size": 4,
        "--overwrite": True,
        "--recursive": False,
    }
    argv = tool_argv(VLM_SPEC, form_values(values))
    assert argv[:3] == [sys.executable, str(ROOT / "tools" / "caption_images_vlm.py"), "/data/pics"]
    assert argv[3:] == [
        "--backend",
        "qwen2.5-vl",
        "--model_id",
        "Qwen/Qwen2.5-VL-3B-Instruct",
        "--prompt_style",
        "tags",
        "--trigger_word",
        "sks",
        "--batch_size",
        "4",
        "--overwrite",
    ]


def test_api_backend_argv_keeps_the_key_variable_name_only():
    values = {
        "folder": "/p",
        "--backend": "openai",
        "--model_id": "ignored",
        "--task": "<CAPTION>",
        "--api_base": "http://localhost:8000/v1",
        "--model": "m",
        "--api_key_env": "MY_KEY",
    }
    assert tool_argv(VLM_SPEC, form_values(values))[2:] == [
        "/p",
        "--backend",
        "openai",
        "--api_base",
        "http://localhost:8000/v1",
        "--model",
        "m",
        "--api_key_env",
        "MY_KEY",
    ]
    florence = form_values({"folder": "/p", "--backend": "florence2", "--task": "<CAPTION>"})
    assert "<CAPTION>" in tool_argv(VLM_SPEC, florence)


def test_model_hint_follows_the_backend():
    assert model_placeholder("qwen3-vl")["placeholder"] == "default: Qwen/Qwen3-VL-8B-Instruct"
    assert "API model name" in model_placeholder("openai")["placeholder"]


def test_policy_refuses_folders_and_models_outside_the_allowed_ones(tmp_path):
    allowed = tmp_path / "ok"
    allowed.mkdir()
    policy = GuiPolicy((allowed.resolve(),))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    assert run_vlm({"folder": str(outside), "--backend": "florence2"}, policy).startswith("❌")
    message = run_vlm({"folder": str(allowed), "--backend": "florence2", "--model_id": str(outside)}, policy)
    assert message.startswith("❌") and "elsewhere" in message
    unsafe = run_vlm(
        {"folder": str(allowed), "--backend": "florence2", "extra": "--allow_unsafe_pickle"}, policy
    )
    assert unsafe.startswith("❌") and "allow_unsafe_pickle" in unsafe


@pytest.mark.slow
def test_run_button_handler_runs_the_tool(tmp_path, server):  # noqa: F811 - the fixture
    import gradio as gr

    folder = tmp_path / "pics"
    for i in range(2):
        solid(folder / f"{i}.png", (90 * i, 20, 20), (20 + i, 16))
    with gr.Blocks() as demo:
        vlm_captioning_section(GuiPolicy())
    handler = next(f for f in demo.fns.values() if f.api_name == "tool_vlm_captions").fn
    values = [
        str(folder),
        "openai",
        "",
        "<DETAILED_CAPTION>",
        server.base,
        "tiny-vl",
        "",
        "caption",
        "short",
        "",
        "sks",
        ".txt",
        2,
        32,
        False,
        False,
        "",
    ]
    message = handler(*values, progress=lambda *a, **k: None)
    assert message.startswith("✅ done"), message
    assert "captioned 2 of 2" in message and "--api_base" in message
    assert (folder / "1.txt").read_text(encoding="utf-8") == "sks, a picture 21 wide\n"
    assert server.requests[0][0]["max_tokens"] == 32
