"""The headless job API (``library.gui.job_api``): its functions on a queue (fast), its HTTP face on its own
FastAPI app (fast), and the real GUI with a login running two tiny-model trainings driven only over HTTP
(slow): submit, follow the events stream, download the LoRA, stop a longer run."""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import time
from pathlib import Path

import pytest

import library.training.optimizers  # noqa: F401 - validation imports torch; at collection, not in a test
from library.gui.job_api import ApiError, JobService, build_api, check_config_text
from library.gui.run_queue import ROW_HEADERS, TrainingQueue, job_row
from library.gui.security import GuiPolicy

REPO = Path(__file__).resolve().parents[2]
USER, PASSWORD = "trainer", "s3cret-päss"

CONFIG = """
pretrained_model_name_or_path = "builtin:tiny"
train_data_dir = "data/train"
output_dir = "out/{name}"
output_name = "{name}"
resolution = "64"
max_train_steps = {steps}
network_dim = 4
"""


def toml_for(name: str, steps: int, extra: str = "") -> str:
    return CONFIG.format(name=name, steps=steps) + extra


class NoRunner:
    """A runner that is never asked to start (the fast tests do not tick the queue)."""

    def state(self):
        return None


@pytest.fixture
def service(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "train").mkdir(parents=True)
    queue = TrainingQueue(tmp_path / "queue", NoRunner(), lambda trainer, path: ["true"])
    return JobService(queue, GuiPolicy())


# --- the functions (what the endpoints and the Queue tab call) ----------------------------------------


@pytest.mark.parametrize(
    ("trainer", "text", "status", "words"),
    [
        ("network", toml_for("a", 2) + "network_dimm = 3\n", 400, ["network_dimm", "network_dim"]),
        ("network", "network_dim = [\n", 400, ["network_dim"]),
        ("network", 'output_dir = "x"\n[model\n', 400, ["the submitted TOML", "not valid TOML"]),
        ("network", toml_for("a", 2).replace("= 2", "= 0.5"), 400, ["max_train_steps"]),
        ("lora", toml_for("a", 2), 400, ["'lora'", "db", "network"]),
    ],
)
def test_submit_refuses_a_config_the_validate_button_refuses(service, trainer, text, status, words):
    with pytest.raises(ApiError if trainer == "lora" else Exception) as caught:
        service.submit(trainer, text)
    assert getattr(caught.value, "status", 400) == status
    assert all(w in str(caught.value) for w in words), str(caught.value)
    assert "sdtrain-submit-" not in str(caught.value)  # the message names the request, not a temp file
    assert service.jobs() == []


def test_submit_list_detail_and_stop_of_queued_jobs(service, tmp_path):
    first = service.submit("network", toml_for("a", 2), label="first")
    second = service.submit("network", toml_for("b", 3))
    assert (first["number"], first["label"], first["state"]) == (1, "first", "queued")
    assert second["label"] == "b"  # no label: the output name
    stored = Path(first["config"]).read_text(encoding="utf-8")
    assert check_config_text("network", stored, GuiPolicy()).max_train_steps == 2
    assert [j["number"] for j in service.jobs()] == [1, 2]
    assert service.job(2)["log"] == "" and service.job("2")["progress"] is None
    assert service.stop(1)["message"] == "removed entry 1 from the queue"
    assert [j["number"] for j in service.jobs()] == [2]
    for number, status in (("1", 404), ("x", 400), ("-1", 400), ("²", 400), ("99", 404)):
        with pytest.raises(ApiError) as caught:
            service.stop(number)
        assert caught.value.status == status


def test_allowed_paths_apply_to_submitted_configs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    queue = TrainingQueue(tmp_path / "queue", NoRunner(), lambda trainer, path: ["true"])
    inside = JobService(queue, GuiPolicy.for_gui(True, [str(tmp_path / "work")], []))
    with pytest.raises(Exception, match="outside the folders"):
        inside.submit("network", toml_for("a", 2).replace('"out/a"', '"/elsewhere/out"'))


def test_rows_show_progress_and_eta_of_the_running_entry(service, tmp_path):
    service.submit("network", toml_for("a", 10))
    service.submit("network", toml_for("b", 10))
    progress = tmp_path / "progress.jsonl"
    events = [{"event": "start", "total": 10, "epochs": 1}]
    events += [
        {"event": "step", "step": s, "total": 10, "epoch": 1, "epochs": 1, "eta_s": 75.0}
        for s in (1, 2, 3, 4)
    ]
    progress.write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    entries = service.queue.entries()
    entries["1"].update(status="running", progress=str(progress), log=str(tmp_path / "log.txt"))
    service.queue._save(entries)
    rows = service.queue.rows()
    assert ROW_HEADERS[4:6] == ["progress", "ETA"]
    assert rows[0][3:6] == ["running", "4/10 (40%)", "1:15"]
    assert rows[1][3:6] == ["queued", "", ""]
    job = service.job(1)
    assert (job["step"], job["total"], job["progress"], job["eta_s"]) == (4, 10, 0.4, 75.0)
    with open(progress, "a", encoding="utf-8") as f:
        f.write(json.dumps({"event": "step", "step": 10, "total": 10, "eta_s": 0.0}) + "\n")
        f.write(json.dumps({"event": "phase", "phase": "sampling", "step": 10}) + "\n")
    assert job_row(service.job(1))[4:6] == ["10/10 (100%)", "rendering final samples"]
    assert service.events(1, since=5)["events"][0]["step"] == 10


def test_output_files_stay_inside_the_jobs_output_dir(service, tmp_path):
    service.submit("network", toml_for("a", 2))
    out = tmp_path / "out" / "a"
    (out / "sample").mkdir(parents=True)
    (out / "a.safetensors").write_bytes(b"weights")
    (out / "sample" / "s.png").write_bytes(b"png")
    (tmp_path / "secret.txt").write_text("no", encoding="utf-8")
    os.symlink(tmp_path / "secret.txt", out / "link.txt")
    listed = service.outputs(1)
    assert [f["name"] for f in listed["files"]] == ["a.safetensors", "sample/s.png"]  # the link out is not
    assert listed["output_dir"] == str(out)
    assert service.output_file(1, "sample/s.png").read_bytes() == b"png"
    for name, status in (("../../secret.txt", 400), ("/etc/passwd", 400), ("link.txt", 400), ("no.bin", 404)):
        with pytest.raises(ApiError) as caught:
            service.output_file(1, name)
        assert caught.value.status == status, name


# --- the HTTP face on its own app (no gradio) ------------------------------------------------------------


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_every_endpoint_needs_the_login(service):
    from fastapi.testclient import TestClient

    client = TestClient(build_api(service, (USER, PASSWORD)))
    calls = [
        ("get", "/jobs"),
        ("post", "/jobs"),
        ("get", "/jobs/1"),
        ("get", "/jobs/1/events"),
        ("post", "/jobs/1/stop"),
        ("get", "/jobs/1/outputs"),
        ("get", "/jobs/1/outputs/a.safetensors"),
    ]
    wrong = [
        basic(USER, "wrong"),
        basic("someone", PASSWORD),
        {"Authorization": "Basic !!!"},
        {"Authorization": "Bearer x"},
    ]
    for (method, path), headers in [*((call, {}) for call in calls), *((calls[0], h) for h in wrong)]:
        answer = client.request(method, path, headers=headers)
        assert answer.status_code == 401, (method, path, headers)
        assert "--username" in answer.json()["error"]
        assert answer.headers["www-authenticate"].startswith("Basic")
    ok = client.get("/jobs", headers=basic(USER, PASSWORD))
    assert ok.status_code == 200 and ok.json() == {"jobs": []}
    answer = client.post("/jobs?trainer=network", content=b"network_dimm = 1", headers=basic(USER, PASSWORD))
    assert answer.status_code == 400 and "network_dimm" in answer.json()["error"]
    answer = client.post("/jobs", content=toml_for("a", 2).encode(), headers=basic(USER, PASSWORD))
    assert answer.status_code == 400 and "?trainer=network" in answer.json()["error"]
    body = {"toml": toml_for("a", 2), "trainer": "network", "label": "from json"}
    answer = client.post("/jobs", json=body, headers=basic(USER, PASSWORD))
    assert answer.status_code == 201 and answer.headers["location"] == "/api/v1/jobs/1"
    assert answer.json()["label"] == "from json"
    polled = client.get("/jobs/1/events?since=0", headers=basic(USER, PASSWORD)).json()
    assert polled == {"number": 1, "state": "queued", "ended": False, "events": [], "next": 0}


def test_without_credentials_the_api_is_open(service):
    """No --username: the GUI only serves this machine (an exposed one without a login does not start)."""
    from fastapi.testclient import TestClient

    client = TestClient(build_api(service, None))
    assert client.get("/jobs").status_code == 200


# --- the real GUI, driven only over HTTP -----------------------------------------------------------------


class Api:
    """HTTP calls to the GUI's job API with (or without) the login."""

    def __init__(self, port: int, auth: tuple[str, str] | None = (USER, PASSWORD)):
        self.port, self.auth = port, auth

    def call(self, method: str, path: str, body: bytes | None = None, auth=True, timeout: float = 30):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        if auth is True:  # the login given to Api, or none
            auth = basic(*self.auth) if self.auth else {}
        conn.request(method, "/api/v1" + path, body=body, headers=auth)
        answer = conn.getresponse()
        data = answer.read()
        conn.close()
        return answer.status, data

    def json(self, method: str, path: str, body: bytes | None = None):
        status, data = self.call(method, path, body)
        assert status in (200, 201), (status, data)
        return json.loads(data)

    def stream(self, path: str, timeout: float = 300) -> list[tuple[str, dict]]:
        """(event name, data) of a Server-Sent Events stream until it ends."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        conn.request("GET", "/api/v1" + path, headers=basic(*self.auth) if self.auth else {})
        answer = conn.getresponse()
        assert answer.status == 200 and answer.getheader("content-type").startswith("text/event-stream")
        received, name = [], "message"
        for raw in answer:
            line = raw.decode("utf-8").rstrip("\n")
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                received.append((name, json.loads(line[len("data: ") :])))
                if name == "end":
                    break
                name = "message"
        conn.close()
        return received


@pytest.fixture(scope="module")
def gui(tmp_path_factory):
    from tests.gui.server import GuiServer

    root = tmp_path_factory.mktemp("job_api")
    shutil.copytree(REPO / "dataset_examples" / "train", root / "data" / "train")
    (root / "data" / "train" / "5_sks circle").rename(root / "data" / "train" / "1_sks circle")
    (root / "prompts.txt").write_text("sks circle --w 64 --h 64 --s 2\n", encoding="utf-8")
    server = GuiServer(root, extra=["--username", USER, "--password", PASSWORD])
    try:
        yield Api(server.port), root
    finally:
        server.close()


@pytest.mark.slow
def test_login_and_bad_requests_on_the_real_gui(gui):
    api, _ = gui
    assert api.call("GET", "/jobs", auth={})[0] == 401
    assert api.call("GET", "/jobs", auth=basic(USER, "nope"))[0] == 401
    status, data = api.call("POST", "/jobs?trainer=network", b'output_dir = "out/x"\nnetwork_dimm = 2\n')
    assert status == 400 and "'network_dimm'" in json.loads(data)["error"]
    status, data = api.call("POST", "/jobs?trainer=network", b"[[[not toml")
    assert status == 400 and "not valid TOML" in json.loads(data)["error"]
    assert api.call("GET", "/jobs/12345")[0] == 404
    assert api.call("GET", "/jobs/abc/events?since=0")[0] == 400
    assert api.call("POST", "/jobs/777/stop")[0] == 404


@pytest.mark.slow
def test_submit_follow_download_then_stop_a_longer_run(gui):
    api, root = gui
    sampled = f'sample_prompts = "{root / "prompts.txt"}"\nsample_every_n_steps = 2\n'
    job = api.json("POST", "/jobs?trainer=network&label=quick", toml_for("quick", 2, sampled).encode())
    number = job["number"]
    received = api.stream(f"/jobs/{number}/events")
    kinds = [data.get("event") for name, data in received if name == "message"]
    assert kinds[0] == "start" and kinds.count("step") == 2 and kinds[-1] == "done"
    assert kinds.index("phase") < kinds.index("sample") < kinds.index("saved")  # the phases are announced
    end = received[-1]
    assert end[0] == "end" and end[1]["state"] == "done" and end[1]["exit_code"] == 0
    assert (end[1]["step"], end[1]["total"], end[1]["progress"]) == (2, 2, 1.0)
    listed = api.json("GET", f"/jobs/{number}/outputs")
    assert "quick.safetensors" in [f["name"] for f in listed["files"]]
    status, weights = api.call("GET", f"/jobs/{number}/outputs/quick.safetensors")
    assert status == 200 and weights == (root / "out" / "quick" / "quick.safetensors").read_bytes()
    assert api.call("GET", f"/jobs/{number}/outputs/../../../gui_state/queue/state.json")[0] == 400
    assert api.call("GET", f"/jobs/{number}/outputs/..%2F..%2Fprompts.txt")[0] == 400
    assert api.call("GET", f"/jobs/{number}/outputs/missing.bin")[0] == 404
    replay = api.stream(f"/jobs/{number}/events")  # an ended job replays its events, then ends
    assert [d.get("event") for n, d in replay if n == "message"] == kinds

    long = api.json("POST", "/jobs?trainer=network&label=long", toml_for("long", 400).encode())["number"]
    since, deadline = 0, time.monotonic() + 240
    while time.monotonic() < deadline:
        polled = api.json("GET", f"/jobs/{long}/events?since={since}")
        since = polled["next"]
        if any(e.get("event") == "step" for e in polled["events"]) or polled["ended"]:
            break
        time.sleep(0.5)
    assert not polled["ended"], api.json("GET", f"/jobs/{long}")["log"]
    stopped = api.json("POST", f"/jobs/{long}/stop")
    assert "stopping entry" in stopped["message"]
    end = api.stream(f"/jobs/{long}/events")[-1][1]
    assert end["state"] == "stopped" and end["exit_code"] == 0 and 1 <= end["step"] < 400
    assert end["output"] and Path(root / end["output"]).name == "long.safetensors"
    names = [f["name"] for f in api.json("GET", f"/jobs/{long}/outputs")["files"]]
    assert "long.safetensors" in names
    listing = api.json("GET", "/jobs")["jobs"]
    assert [(j["number"], j["state"]) for j in listing] == [(number, "done"), (long, "stopped")]
    assert api.call("POST", f"/jobs/{long}/stop")[0] == 409


@pytest.mark.slow
@pytest.mark.browser
def test_queue_tab_shows_the_running_jobs_progress_and_stops_it(tmp_path):
    """A job submitted over HTTP (a GUI on 127.0.0.1 without a login: the API is open there too) shows
    step/total, percent and ETA in the Queue tab; the tab's Stop button stops it (the stop endpoint's
    function) and the API then says stopped."""
    import re

    from playwright.sync_api import sync_playwright

    from tests.gui.server import CHROMIUM, CHROMIUM_ARGS, GuiServer, need_browser

    need_browser()
    shutil.copytree(REPO / "dataset_examples" / "train", tmp_path / "data" / "train")
    server = GuiServer(tmp_path)
    try:
        api = Api(server.port, auth=None)
        number = api.json("POST", "/jobs?trainer=network&label=browser", toml_for("web", 400).encode())[
            "number"
        ]
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(server.url)
            page.wait_for_selector("#network-start", timeout=120_000)
            page.click("#tab-queue-button", timeout=120_000)
            # the row as the table shows it: number, label, trainer, state, step/total (percent), ETA
            row = re.compile(
                rf"\n{number}\nbrowser\nnetwork\nrunning\n([1-9]\d*)/400 \((\d+)%\)\n(\d+:\d\d(?::\d\d)?)(?:\n|$)"
            )
            text, deadline = "", time.monotonic() + 240
            while time.monotonic() < deadline and not row.search(text):
                page.wait_for_timeout(500)
                text = page.inner_text("#queue-table")
            shown = row.search(text)
            assert shown, text
            assert abs(int(shown[2]) - int(shown[1]) / 4) <= 1  # percent of 400 steps
            page.locator("#queue-table").scroll_into_view_if_needed()
            page.locator("#queue-number input, #queue-number textarea").first.fill(str(number))
            page.click("#queue-cancel")
            page.wait_for_selector("#queue-message:has-text('stopping entry')", timeout=60_000)
            browser.close()
        end = api.stream(f"/jobs/{number}/events")[-1][1]
        assert end["state"] == "stopped" and end["exit_code"] == 0
    finally:
        server.close()
