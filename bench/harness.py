"""Run one benchmark process and measure it: wall time, its progress events, and the peak memory of its whole
process tree (RSS summed over the process and its children, sampled every 20 ms, PSS every 200 ms, plus the
kernel's own peak RSS of the main process from ``wait4``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

GIB = 1024**3


def _children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += _children(p)
    return pids


PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss(pid: int) -> int:
    """Resident bytes from /proc/<pid>/statm (cheap enough to read every 20 ms); 0 when the process is gone."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _pss(pid: int) -> int:
    """Proportional set size in bytes from /proc/<pid>/smaps_rollup (costly for big processes: sampled less
    often); 0 when the process is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class MemoryPoller:
    """Samples the tree's summed RSS and PSS every ``interval`` seconds in a thread; keeps the peaks."""

    def __init__(self, pid: int, interval: float = 0.02):
        self.pid, self.interval = pid, interval
        self.peak_rss = self.peak_pss = 0
        self.peak_time = 0.0  # when the sampled RSS peaked (time.time())
        self.peak_workers = 0  # the most processes seen at once
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    #: PSS is read at most this share of the time: the kernel walks every page of a process to sum it (about
    #: 30 ms for a 5 GB trainer), which at a fixed 200 ms took ~15 % of a core from the run being measured
    PSS_SHARE = 0.04

    def _run(self) -> None:
        next_pss = 0.0
        while not self._stop.is_set():
            pids = _tree(self.pid)
            rss = sum(_rss(p) for p in pids)
            if rss > self.peak_rss:
                self.peak_rss, self.peak_time = rss, time.time()
            now = time.monotonic()
            if now >= next_pss:  # at least every 200 ms, less often for big processes
                self.peak_pss = max(self.peak_pss, sum(_pss(p) for p in pids))
                cost = time.monotonic() - now
                next_pss = now + max(10 * self.interval, cost / self.PSS_SHARE)
            self.peak_workers = max(self.peak_workers, len(pids))
            self._stop.wait(self.interval)

    def __enter__(self) -> MemoryPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class ProcessResult:
    argv: list[str]
    returncode: int
    launched: float  # time.time() just before the process started
    wall_s: float
    peak_rss: int  # bytes: max of the sampled tree sum and the kernel's peak RSS of the main process
    peak_pss: int
    peak_time: float = 0.0  # when the sampled peak was seen (time.time())
    events: list[dict] = field(default_factory=list)
    output: dict | None = None  # the JSON a worker script printed as its last line
    log: str = ""

    def step_times(self) -> list[float]:
        """Seconds between consecutive step events (the first step's own time is not included)."""
        times = [e["time"] for e in self.events if e.get("event") == "step"]
        return [b - a for a, b in zip(times, times[1:], strict=False)]

    def peak_phase(self) -> str:
        """Where the sampled memory peak fell: before the loop ("loading and caching"), in training, or after
        the last step ("saving")."""
        start, done = self.first("start"), self.first("done")
        steps = [e["time"] for e in self.events if e.get("event") == "step"]
        if start is None or self.peak_time < start["time"]:
            return "loading and caching"
        if steps and self.peak_time > steps[-1] or done and self.peak_time > done["time"]:
            return "saving"
        return "training"

    def first(self, event: str) -> dict | None:
        return next((e for e in self.events if e.get("event") == event), None)

    def failed(self) -> str | None:
        if self.returncode == 0:
            return None
        return f"exit code {self.returncode}: {' '.join(self.argv[-3:])}\n" + self.log[-3000:]


def run_measured(argv: list[str], cwd: Path, env: dict | None = None, timeout: float = 1800) -> ProcessResult:
    """Run ``argv`` (a Python script and its arguments) with a progress-events file, measure it, collect its
    events, its last stdout line as JSON (worker scripts print one) and the tail of its log."""
    with tempfile.TemporaryDirectory(prefix="sdtrain-bench-") as tmp:
        events_path = Path(tmp) / "events.jsonl"
        log_path = Path(tmp) / "log.txt"
        full_env = {**os.environ, **(env or {}), "SDTRAIN_PROGRESS_FILE": str(events_path),
                    "PYTHONUNBUFFERED": "1"}
        with open(log_path, "wb") as log:
            launched = time.time()
            proc = subprocess.Popen([sys.executable, *argv], cwd=cwd, env=full_env, stdout=log,
                                    stderr=subprocess.STDOUT)
            with MemoryPoller(proc.pid) as poller:
                deadline = time.monotonic() + timeout
                status = None
                while status is None:
                    pid, st, usage = os.wait4(proc.pid, os.WNOHANG)
                    if pid:
                        status = st
                        break
                    if time.monotonic() > deadline:
                        proc.kill()
                        _, status, usage = os.wait4(proc.pid, 0)
                        break
                    time.sleep(0.01)
            wall = time.time() - launched
        proc.returncode = os.waitstatus_to_exitcode(status)
        text = log_path.read_text(encoding="utf-8", errors="replace")
        events = []
        if events_path.is_file():
            events = [json.loads(line) for line in events_path.read_text().splitlines() if line.strip()]
    output = None
    lines = [ln for ln in text.splitlines() if ln.startswith("{")]
    if lines:
        try:
            output = json.loads(lines[-1])
        except json.JSONDecodeError:
            output = None
    return ProcessResult(
        argv=argv, returncode=proc.returncode, launched=launched, wall_s=wall,
        peak_rss=max(poller.peak_rss, usage.ru_maxrss * 1024), peak_pss=poller.peak_pss,
        peak_time=poller.peak_time, events=events,
        output=output, log=text,
    )
