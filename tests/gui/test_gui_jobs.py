"""The job runner and the queue without a browser, driving a fake trainer (a tiny Python script that
writes progress events and saves on SIGTERM like the real one)."""

from __future__ import annotations

import json
import os
import sys
import textwrap

import pytest

from library.gui.jobs import DONE, FAILED, RUNNING, STOPPED, JobRunner, RunView, apply_events
from library.gui.run_queue import TrainingQueue

FAKE = textwrap.dedent("""
    import json, os, signal, sys, time
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    path, steps, delay = os.environ["SDTRAIN_PROGRESS_FILE"], int(sys.argv[1]), float(sys.argv[2])
    def emit(**e):
        with open(path, "a") as f:
            f.write(json.dumps(e) + "\\n")
    emit(event="start", total=steps, epochs=1)
    for s in range(1, steps + 1):
        time.sleep(delay)
        emit(event="step", step=s, total=steps, epoch=1, epochs=1, loss=1.0 / s, avg_loss=1.0, lr=0.1,
             it_s=10.0, eta_s=0.1)
        if stop:
            emit(event="stopped", step=s); sys.exit(0)
    print("trained")
    emit(event="done", path="out.safetensors")
    sys.exit(int(sys.argv[3]) if len(sys.argv) > 3 else 0)
""")


@pytest.fixture
def fake(tmp_path):
    path = tmp_path / "fake_trainer.py"
    path.write_text(FAKE)
    return lambda steps, delay=0.0, code=0: [sys.executable, str(path), str(steps), str(delay), str(code)]


def test_run_to_end_shows_progress_and_log(tmp_path, fake):
    runner = JobRunner(tmp_path / "job")
    runner.start(fake(5))
    state = runner.wait(30)
    assert state["status"] == DONE and state["returncode"] == 0
    view = runner.view()
    assert (view.step, view.total) == (5, 5)
    assert [s for s, *_ in view.losses] == [1, 2, 3, 4, 5]
    assert view.losses[1][1] == pytest.approx(0.5)
    assert view.output == "out.safetensors"
    assert "trained" in view.log_tail
    assert "step 5/5" in view.summary()


def test_failed_run_and_one_run_at_a_time(tmp_path, fake):
    runner = JobRunner(tmp_path / "job")
    runner.start(fake(200, 0.05))
    with pytest.raises(RuntimeError, match="already going"):
        runner.start(fake(1))
    runner.stop(timeout=20)
    runner.start(fake(1, 0.0, 3))
    assert runner.wait(30)["status"] == FAILED and runner.state()["returncode"] == 3


def test_stop_ends_the_process_group_cleanly(tmp_path, fake):
    runner = JobRunner(tmp_path / "job")
    state = runner.start(fake(1000, 0.02))
    while runner.view().step < 2:
        pass
    assert runner.stop()
    state = runner.wait(30)
    assert state["status"] == STOPPED and state["returncode"] == 0
    with pytest.raises(ProcessLookupError):
        os.kill(state["pid"], 0)


def test_a_new_runner_reattaches_to_a_running_job(tmp_path, fake):
    first = JobRunner(tmp_path / "job")
    state = first.start(fake(1000, 0.02))
    second = JobRunner(tmp_path / "job")  # a restarted GUI: no Popen object, only the files
    assert second.busy() and second.state()["pid"] == state["pid"]
    assert second.stop()
    first._proc.wait(30)  # reap the child (the real GUI's Popen would)
    assert second.wait(30)["status"] == STOPPED


def test_apply_events_ignores_unknown_and_collects_samples():
    view = apply_events(
        RunView(),
        [
            {"event": "start", "total": 4, "epochs": 2},
            {"event": "sample", "paths": ["a.png", "b.png"]},
            {"event": "weird"},
            {"event": "saved", "path": "x.safetensors"},
        ],
    )
    assert (view.total, view.epochs, view.samples, view.saved) == (
        4,
        2,
        ["a.png", "b.png"],
        ["x.safetensors"],
    )


def test_queue_continues_after_a_failure_and_survives_restart(tmp_path, fake):
    runner = JobRunner(tmp_path / "job")
    commands = {"fail": fake(2, 0.0, 2), "ok": fake(3)}
    queue = TrainingQueue(
        tmp_path / "queue", runner, lambda trainer, path: commands[open(path).read().strip()]
    )
    assert queue.add("network", "fail", "first") == "1"
    assert queue.add("network", "ok", "second") == "2"
    queue.tick()
    assert queue.entries()["1"]["status"] == RUNNING
    runner.wait(30)
    queue = TrainingQueue(tmp_path / "queue", runner, queue.command_for)  # the GUI restarted
    queue.tick()
    entries = queue.entries()
    assert entries["1"]["status"] == FAILED and entries["1"]["returncode"] == 2
    assert entries["2"]["status"] == RUNNING
    runner.wait(30)
    queue.tick()
    entries = queue.entries()
    assert entries["2"]["status"] == DONE and entries["2"]["output"] == "out.safetensors"
    assert json.loads((tmp_path / "queue" / "state.json").read_text())["2"]["status"] == DONE
    assert [r[3] for r in queue.rows()] == [FAILED, DONE]


def test_queue_entry_can_be_stopped_or_removed(tmp_path, fake):
    runner = JobRunner(tmp_path / "job")
    commands = {"slow": fake(400, 0.05), "ok": fake(2), "later": fake(2)}
    queue = TrainingQueue(
        tmp_path / "queue", runner, lambda trainer, path: commands[open(path).read().strip()]
    )
    queue.add("network", "slow", "first")
    queue.add("network", "later", "second")
    queue.add("network", "ok", "third")
    queue.tick()
    assert "removed" in queue.cancel("2") and "2" not in queue.entries()  # a waiting entry is dropped
    assert "stopping" in queue.cancel("1")  # the running one is stopped; it saves, the queue goes on
    runner.wait(30)
    queue.tick()
    entries = queue.entries()
    assert entries["1"]["status"] == STOPPED and entries["3"]["status"] == RUNNING
    runner.wait(30)
    queue.tick()
    assert queue.entries()["3"]["status"] == DONE
    assert "already ended" in queue.cancel("1") and "no entry" in queue.cancel("9")
