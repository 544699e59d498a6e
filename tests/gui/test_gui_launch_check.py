"""gui.py's launch check waits for a busy machine: gradio's own ended the GUI when one HEAD took over 3 s."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from gradio import networking

from library.gui import app
from tests.gui.server import free_port


class Ok(BaseHTTPRequestHandler):
    """Answers 200 to every HEAD."""

    def do_HEAD(self):
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


class SlowFirst(Ok):
    """Answers 200, the first request only after a second (a page served by a busy machine)."""

    seen = 0

    def do_HEAD(self):
        type(self).seen += 1
        if type(self).seen == 1:
            time.sleep(1.0)
        super().do_HEAD()


def serve(handler):
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_a_slow_first_answer_is_waited_for():
    SlowFirst.seen = 0
    server = serve(SlowFirst)
    try:
        url = f"http://127.0.0.1:{server.server_port}/"
        assert app.patient_url_ok(url, wait_s=10, request_timeout=0.3)
        assert SlowFirst.seen >= 2  # the first request timed out and was asked again
    finally:
        server.shutdown()


def test_a_server_that_starts_listening_late_is_waited_for():
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    assert not networking.url_ok(url)  # gradio's own check gives up at once on a refused connection

    def start_late(box):
        time.sleep(0.8)
        box.append(ThreadingHTTPServer(("127.0.0.1", port), Ok))
        box[0].serve_forever()

    box: list = []
    threading.Thread(target=start_late, args=(box,), daemon=True).start()
    try:
        start = time.monotonic()
        assert app.patient_url_ok(url, wait_s=10, request_timeout=1)
        assert time.monotonic() - start >= 0.7
    finally:
        if box:
            box[0].shutdown()


def test_nothing_answering_is_refused_after_the_wait():
    url = f"http://127.0.0.1:{free_port()}/"
    start = time.monotonic()
    assert not app.patient_url_ok(url, wait_s=0.6, request_timeout=0.2)
    assert 0.5 <= time.monotonic() - start < 5


def test_gui_main_installs_the_patient_check(monkeypatch, tmp_path):
    """main() puts the patient check in place before gradio's launch() looks it up."""
    seen = {}

    def fake_launch(self, **kwargs):
        seen["url_ok"] = networking.url_ok
        raise SystemExit(0)

    monkeypatch.setattr(app.gr.Blocks, "launch", fake_launch)
    monkeypatch.setattr(networking, "url_ok", networking.url_ok)  # restored after the test
    monkeypatch.setattr(app, "start_worker", lambda queue: None)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        app.main(["--state_dir", str(tmp_path / "state")])
    assert seen["url_ok"] is app.patient_url_ok
