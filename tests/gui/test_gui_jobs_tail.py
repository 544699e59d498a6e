"""The log box's ``tail`` (newest lines, tqdm's carriage-return updates collapsed, messages glued to a bar
split off) and what the run line shows after the last step (a phase instead of "ETA 0:00")."""

from __future__ import annotations

import io
import logging

import pytest
from tqdm import tqdm

from library.gui.jobs import (
    RUNNING,
    RunView,
    apply_events,
    format_duration,
    read_new_events,
    shown_lines,
    tail,
)

BAR = "steps: {p:3d}%|#   | {n}/10 [00:0{n}<00:05, 1.50it/s, loss=0.1]"


def bar(n: int) -> str:
    return BAR.format(p=n * 10, n=n)


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        ("INFO plain line", ["INFO plain line"]),
        ("", []),
        ("   ", []),
        (f"\r{bar(1)}\r{bar(2)}\r{bar(3)}", [bar(3)]),
        (f"\r{bar(1)}\r{bar(2)}INFO saved x.safetensors", [bar(2), "INFO saved x.safetensors"]),
        (f"loading\r{bar(1)}\r{bar(4)}", ["loading", bar(4)]),
        (f"\r{bar(5)}\r          \r", [bar(5)]),  # a bar cleared to blanks keeps its last state
        (f"{bar(2)}\r\n", [bar(2)]),  # Windows line end
        (
            "steps: 7it [00:03, 2.10it/s]WARNING low disk",
            ["steps: 7it [00:03, 2.10it/s]", "WARNING low disk"],
        ),
        ("done [see log]", ["done [see log]"]),  # brackets without a rate are not a bar
    ],
)
def test_shown_lines(line, shown):
    assert shown_lines(line) == shown


def test_tail_gives_the_newest_lines_with_the_bar_collapsed(tmp_path):
    log = tmp_path / "log.txt"
    lines = [f"INFO line {i}" for i in range(100)]
    log.write_text("\n".join(lines) + "\n" + "".join(f"\r{bar(n)}" for n in range(1, 8)), encoding="utf-8")
    assert tail(log, 3).splitlines() == ["INFO line 98", "INFO line 99", bar(7)]
    assert tail(tmp_path / "missing.txt") == ""


def test_tail_reads_back_past_a_huge_bar_line(tmp_path):
    """A long run's bar line alone is megabytes of updates: the lines before it are still shown."""
    log = tmp_path / "log.txt"
    updates = "".join(f"\r{bar(n % 10)}" for n in range(3000))  # ~180 KB on one line
    log.write_text("INFO before the bar\n" + updates + "INFO saved it\nINFO after\n", encoding="utf-8")
    assert tail(log, 4).splitlines() == ["INFO before the bar", bar(2999 % 10), "INFO saved it", "INFO after"]


def test_tail_of_real_tqdm_and_logging_output(tmp_path):
    """What tqdm and a logging handler write into one stream (as the trainer's stderr goes to log.txt)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("INFO %(message)s"))
    log = logging.getLogger("tail-test")
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.INFO)
    progress = tqdm(total=6, file=stream, mininterval=0, desc="steps", ascii=True, ncols=80)
    for step in range(1, 7):
        progress.update(1)
        if step == 3:
            log.info("saved step3.safetensors")
    progress.close()
    log.info("saved last.safetensors")
    path = tmp_path / "log.txt"
    path.write_text(stream.getvalue(), encoding="utf-8")
    shown = tail(path, 10).splitlines()
    assert shown[1] == "INFO saved step3.safetensors"
    assert shown[0].startswith("steps:  50%") and shown[2].startswith("steps: 100%|")
    assert shown[3] == "INFO saved last.safetensors" and len(shown) == 4


def test_read_new_events_waits_for_complete_lines(tmp_path):
    path = tmp_path / "progress.jsonl"
    path.write_text('{"event": "start", "total": 2}\n{"event": "st', encoding="utf-8")
    events, offset = read_new_events(path, 0)
    assert [e["event"] for e in events] == ["start"]
    with open(path, "a", encoding="utf-8") as f:
        f.write('ep", "step": 1}\nnot json\n')
    events, offset = read_new_events(path, offset)
    assert events == [{"event": "step", "step": 1}] and offset == path.stat().st_size
    assert read_new_events(tmp_path / "missing.jsonl", 5) == ([], 5)


def steps(n: int, total: int, eta: float) -> list[dict]:
    return [
        {"event": "step", "step": s, "total": total, "epoch": 1, "epochs": 1, "loss": 0.1, "eta_s": eta}
        for s in range(1, n + 1)
    ]


def test_eta_while_training_and_the_phase_after_the_last_step():
    events = [{"event": "start", "total": 10, "epochs": 1}, *steps(4, 10, 125.0)]
    view = apply_events(RunView(status=RUNNING), events)
    assert view.fraction == pytest.approx(0.4)
    assert view.eta_text() == "2:05" and "ETA 2:05" in view.summary()
    view = apply_events(view, [{"event": "phase", "phase": "sampling", "step": 4}])
    assert view.eta_text() == "rendering samples" and "ETA" not in view.summary()
    view = apply_events(view, [{"event": "sample", "paths": ["a.png"]}, *steps(10, 10, 0.0)[4:]])
    assert view.eta_text() == "finishing"  # the last step is done, the trainer has said nothing more yet
    view = apply_events(view, [{"event": "phase", "phase": "sampling", "step": 10}])
    assert "rendering final samples" in view.summary() and "ETA 0:00" not in view.summary()
    view = apply_events(
        view, [{"event": "sample", "paths": ["b.png"]}, {"event": "phase", "phase": "saving"}]
    )
    assert view.eta_text() == "saving"
    view = apply_events(view, [{"event": "saved", "path": "x.safetensors"}])
    assert view.eta_text() == "saving"  # a state save may follow the file; done ends the phase
    view = apply_events(view, [{"event": "done", "path": "x.safetensors"}])
    view.status = "done"
    assert view.phase is None and view.eta_text() == "" and view.output == "x.safetensors"


def test_a_mid_run_save_ends_with_the_next_step():
    view = apply_events(RunView(status=RUNNING), [*steps(5, 10, 50.0), {"event": "phase", "phase": "saving"}])
    assert view.activity() == "saving"
    view = apply_events(view, steps(6, 10, 40.0)[5:])
    assert view.activity() is None and view.eta_text() == "0:40"
    stopped = [{"event": "stopped", "step": 6}, {"event": "phase", "phase": "saving", "step": 6}]
    view = apply_events(view, stopped)
    assert view.eta_text() == "saving"
    view = apply_events(view, [{"event": "saved", "path": "x"}, {"event": "done", "path": "x"}])
    assert view.eta_text() == "finishing"  # the process has not ended yet: no ETA of the stopped steps


@pytest.mark.parametrize(("seconds", "text"), [(0, "0:00"), (59.9, "0:59"), (61, "1:01"), (3725, "1:02:05")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text
