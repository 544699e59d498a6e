"""The OpenAI-compatible backend against a tiny chat-completions server in a thread: the request body
(model, prompt, the picture as a data URL), the key from --api_key_env, captions written; refusals (401,
404, no server) stop the run with one error naming the endpoint; a failed request fails that picture only.
Also two processes (RANK / WORLD_SIZE) sharing one folder: every picture done exactly once."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from tests.tools_dataset.helpers import solid
from tests.tools_dataset.test_vlm_cli import _tool

ROOT = Path(__file__).resolve().parents[2]


class ChatServer:
    """Answers each request with the picture's width ("a picture 23 wide"); records bodies and headers.
    ``status``: answer that HTTP status instead; ``fail_width``: a 500 for that picture; ``raw``: answer these
    bytes (not JSON)."""

    def __init__(self):
        self.requests: list[tuple[dict, dict]] = []
        self.status = 200
        self.fail_width: int | None = None
        self.raw: bytes | None = None
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append((body, dict(self.headers), self.path))
                url = body["messages"][0]["content"][1]["image_url"]["url"]
                width = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).width
                status = 500 if width == server.fail_width else server.status
                payload = (
                    server.raw
                    if server.raw is not None
                    else json.dumps(
                        {
                            "choices": [
                                {"message": {"role": "assistant", "content": f" a picture {width} wide "}}
                            ]
                        }
                        if status == 200
                        else {"error": {"message": "invalid api key"}}
                    ).encode()
                )
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def widths(self) -> list[int]:
        out = []
        for body, _, _ in self.requests:
            url = body["messages"][0]["content"][1]["image_url"]["url"]
            out.append(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).width)
        return sorted(out)


@pytest.fixture
def server():
    chat = ChatServer()
    chat.thread.start()
    yield chat
    chat.httpd.shutdown()
    chat.httpd.server_close()


@pytest.fixture
def pictures(tmp_path):
    folder = tmp_path / "pics"
    for i in range(4):
        solid(folder / f"{i}.png", (60 * i, 20, 20), (20 + i, 16))
    return folder


def _argv(pictures, server, *extra):
    return [str(pictures), "--backend", "openai", "--api_base", server.base, "--model", "tiny-vl", *extra]


def test_requests_carry_model_prompt_image_and_key(pictures, server, monkeypatch):
    monkeypatch.setenv("SDTRAIN_TEST_VLM_KEY", "secret-123")
    argv = _argv(
        pictures,
        server,
        "--api_key_env",
        "SDTRAIN_TEST_VLM_KEY",
        "--prompt",
        "Name the colour.",
        "--trigger_word",
        "sks",
        "--batch_size",
        "2",
        "--max_new_tokens",
        "40",
    )
    assert _tool().main(argv) == 0
    assert server.widths() == [20, 21, 22, 23]
    body, headers, path = server.requests[0]
    assert path == "/v1/chat/completions" and headers["Authorization"] == "Bearer secret-123"
    assert body["model"] == "tiny-vl" and body["max_tokens"] == 40 and body["temperature"] == 0
    text, image = body["messages"][0]["content"]
    assert body["messages"][0]["role"] == "user" and text == {"type": "text", "text": "Name the colour."}
    assert image["type"] == "image_url" and image["image_url"]["url"].startswith("data:image/png;base64,")
    assert (pictures / "2.txt").read_text(encoding="utf-8") == "sks, a picture 22 wide\n"
    assert "secret-123" not in " ".join(argv)


def test_prompt_style_reaches_the_server_and_no_key_sends_no_header(pictures, server):
    assert _tool().main(_argv(pictures, server, "--prompt_style", "tags", "--caption_length", "short")) == 0
    body, headers, _ = server.requests[0]
    assert "up to 10 comma-separated tags" in body["messages"][0]["content"][0]["text"]
    assert "Authorization" not in headers


@pytest.mark.parametrize(
    ("status", "words"),
    [(401, ("refused", "HTTP 401", "$SDTRAIN_TEST_VLM_KEY")), (404, ("404", "--api_base", "tiny-vl"))],
)
def test_refusal_stops_the_run_with_one_error(pictures, server, monkeypatch, capsys, status, words):
    monkeypatch.setenv("SDTRAIN_TEST_VLM_KEY", "wrong")
    server.status = status
    assert _tool().main(_argv(pictures, server, "--api_key_env", "SDTRAIN_TEST_VLM_KEY")) == 2
    err = capsys.readouterr().err
    assert server.base in err and all(w in err for w in words), err
    assert len(server.requests) == 1 and not list(pictures.glob("*.txt"))


def test_no_server_is_one_error_naming_the_endpoint(pictures, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [str(pictures), "--backend", "openai", "--api_base", f"http://127.0.0.1:{port}/v1", "--model", "m"]
    assert _tool().main(argv) == 2
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}/v1/chat/completions" in err and "cannot be reached" in err


def test_a_failed_request_fails_that_picture_only(pictures, server, capsys):
    server.fail_width = 21
    assert _tool().main(_argv(pictures, server, "--batch_size", "4")) == 1
    err = capsys.readouterr().err
    assert "1 pictures have no caption" in err and "1.png" in err and "HTTP 500" in err
    assert sorted(p.name for p in pictures.glob("*.txt")) == ["0.txt", "2.txt", "3.txt"]
    server.fail_width = None
    server.requests.clear()
    assert _tool().main(_argv(pictures, server)) == 0
    assert server.widths() == [21]


def test_an_answer_that_is_not_json_is_a_picture_failure(pictures, server, capsys):
    server.raw = b"<html>proxy error</html>"
    assert _tool().main(_argv(pictures, server)) == 1
    err = capsys.readouterr().err
    assert "did not answer chat-completions JSON" in err and "proxy error" in err
    assert not list(pictures.glob("*.txt"))


@pytest.mark.slow
def test_two_processes_share_the_folder(tmp_path, server):
    folder = tmp_path / "many"
    for i in range(7):
        solid(folder / f"{i}.png", (30 * i, 20, 20), (20 + i, 16))
    runs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "PYTHONPATH": str(ROOT)}
        argv = [sys.executable, str(ROOT / "tools" / "caption_images_vlm.py"), *_argv(folder, server)]
        runs.append(
            subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    outs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outs
    assert server.widths() == list(range(20, 27))  # each picture asked for exactly once
    assert "captioned 4 of 4" in outs[0][0] and "captioned 3 of 3" in outs[1][0]
    assert sorted(p.name for p in folder.glob("*.txt")) == [f"{i}.txt" for i in range(7)]


@pytest.mark.slow
def test_accelerate_launch_two_processes(tmp_path, server):
    """``accelerate launch --multi_gpu --num_processes 2`` (torchrun; on a machine without GPUs too): each
    process captions its share, no picture twice. (``--cpu`` makes accelerate 1.15 start one process.)"""
    folder = tmp_path / "many"
    for i in range(5):
        solid(folder / f"{i}.png", (40 * i, 20, 20), (20 + i, 16))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
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
        str(ROOT / "tools" / "caption_images_vlm.py"),
        *_argv(folder, server),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert server.widths() == list(range(20, 25))
    assert "captioned 3 of 3" in done.stdout and "captioned 2 of 2" in done.stdout
    assert sorted(p.name for p in folder.glob("*.txt")) == [f"{i}.txt" for i in range(5)]
