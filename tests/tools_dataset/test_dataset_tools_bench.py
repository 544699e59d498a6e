"""The tagger benchmark script runs and prints its table."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_bench_tagger_prints_throughput(capsys):
    pytest.importorskip("onnx")
    spec = importlib.util.spec_from_file_location("bench_tagger", ROOT / "bench" / "bench_tagger.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (
        module.main(
            ["--images", "12", "--picture_size", "96x64", "--input_size", "64", "--configs", "1:1,4:2"]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert "images/s" in lines[1] and "outside model" in lines[1]
    rows = [line.split() for line in lines[2:]]
    assert [r[:2] for r in rows] == [["1", "1"], ["4", "2"]]
    assert all(float(r[2]) > 0 and r[5].endswith("%") for r in rows)
