"""The bad-input corpus (issue 12): every case of ``make_corpus.py`` run in-process through the entry point's
own guard. Each must exit 2 naming the problem (``findings``: 1, a checker's report), or 0 where the input is
valid but odd; never a traceback, no file outside its folder, no NaN/inf saved, no planted pickle run.

About 60 validation-only cases (``make_corpus.fast_tier``) run in the fast tier; the rest are marked slow.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import sys
import traceback
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import corpus_files  # noqa: E402
import make_corpus  # noqa: E402
from corpus_files import materialize  # noqa: E402
from make_corpus import MARKER, TRAINERS, build_cases, fast_tier, needed_assets  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CASES = build_cases()
FAST = fast_tier(CASES)


def _load_tool(relative: str):
    name = "corpus_" + Path(relative).stem
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / relative)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


def _entry(entry: str):
    """A callable argv -> exit code for ``entry``, as its script's ``__main__`` runs it."""
    if entry in TRAINERS:
        from accelerate.state import AcceleratorState

        from library.cli import run_trainer
        from library.training.db_target import DreamBoothTarget
        from library.training.lora_target import LoRATarget

        trainer, family = TRAINERS[entry]
        target = LoRATarget if trainer == "network" else DreamBoothTarget

        def run(argv):
            AcceleratorState._reset_state(True)
            return run_trainer(trainer, target, argv, family=family)

        return run
    return _load_tool(entry).main


class Assets:
    """The shared assets, each built on first use: the tiny SD1 model (single file and diffusers folder), a
    good LoRA over it and a real resume state (a one-step LoRA run with ``save_state``)."""

    def __init__(self, root: Path):
        self.root = root
        self.built: set[str] = set()

    def need(self, names: set[str]) -> None:
        for name in sorted(names - self.built):
            getattr(self, "_build_" + name)()
            self.built.add(name)

    def _build_tiny_sd1_file(self) -> None:
        from library.models.tiny import save_tiny_single_file

        save_tiny_single_file(self.root / "tiny_sd1.safetensors", "sd1")

    def _build_tiny_sd1_folder(self) -> None:
        from library.models.tiny import save_tiny_diffusers

        save_tiny_diffusers(self.root / "tiny_sd1", "sd1")

    def _build_good_lora(self) -> None:
        import safetensors.torch

        safetensors.torch.save_file(corpus_files.lora_tensors("good"), str(self.root / "good_lora.safetensors"))

    def _build_state(self) -> None:
        run_dir = self.root / "state_run"
        corpus_files._dataset(run_dir / "data" / "2_sks", 2)
        values = {**make_corpus.BASE, "train_data_dir": str(run_dir / "data"), "output_dir": str(run_dir / "out"),
                  "save_state": True}
        (run_dir / "config.toml").write_text(make_corpus.config_text(values), encoding="utf-8")
        with contextlib.redirect_stderr(io.StringIO()) as err, contextlib.redirect_stdout(io.StringIO()):
            code = _entry(make_corpus.NETWORK)(["--config_file", str(run_dir / "config.toml")])
        assert code == 0, err.getvalue()
        (run_dir / "out" / "lora-state").rename(self.root / "state")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return Assets(tmp_path_factory.mktemp("corpus_assets"))


def _tree(folder: Path, skip: Path | None = None) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime_ns)} of every entry under ``folder`` except those under ``skip``."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        if skip is not None and (here == skip or skip in here.parents):
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            path = here / name
            if skip is not None and path == skip:
                continue
            st = path.lstat()
            out[str(path.relative_to(folder))] = (st.st_size if name in filenames else 0, st.st_mtime_ns)
    return out


def _non_finite_saves(box: Path, before: dict[str, tuple[int, int]]) -> list[str]:
    """Safetensors files written or changed by the run that hold NaN or inf values."""
    import torch
    from safetensors import safe_open

    bad = []
    for path in sorted(box.rglob("*.safetensors")):
        rel = str(path.relative_to(box))
        if not path.is_file() or before.get(rel) == (path.stat().st_size, path.stat().st_mtime_ns):
            continue
        with safe_open(str(path), "pt") as f:
            for key in f.keys():
                tensor = f.get_tensor(key)
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    bad.append(f"{rel}:{key}")
    return bad


def _params():
    slow = pytest.mark.slow
    return [pytest.param(case, id=case.id, marks=() if case.id in FAST else (slow,)) for case in CASES]


def test_the_corpus_is_large_and_covers_every_area():
    categories = {c.category for c in CASES}
    assert len(CASES) >= 300 and categories == {"configs", "datasets", "images", "captions", "models", "loras",
                                                "resume", "tools"}
    tools = {p.name for p in (ROOT / "tools").glob("*.py")}
    assert tools <= {Path(c.entry).name for c in CASES}, "every tool has cases"
    assert {"error", "ok", "findings"} == {c.expect for c in CASES}
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", _params())
def test_case(case, tmp_path, assets, monkeypatch):
    assets.need(needed_assets(case))
    box = tmp_path / "outer" / "inner" / "box"  # "../../x" from a folder in the box stays in tmp_path
    box.mkdir(parents=True)
    materialize(case, box, assets.root)
    argv = [corpus_files._substitute(a, box, assets.root) for a in case.argv]
    monkeypatch.chdir(box)
    outside_before, assets_before, repo_before = _tree(tmp_path, box), _tree(assets.root), sorted(os.listdir(ROOT))
    box_before = _tree(box)
    run = _entry(case.entry)
    out, err = io.StringIO(), io.StringIO()
    crashed = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        logging.basicConfig(stream=sys.stderr, force=True, level=logging.INFO)
        try:
            code = run(argv)
        except SystemExit as exc:  # argparse: usage + "error: ..." and exit 2
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        except BaseException:  # noqa: BLE001 - a crash is what the corpus looks for
            crashed = traceback.format_exc()
            code = None
    logging.basicConfig(stream=sys.__stderr__, force=True, level=logging.WARNING)
    text = out.getvalue() + err.getvalue()
    last = (err.getvalue().strip().splitlines() or [""])[-1][:300]

    def report(reason: str) -> str:
        return (f"{case.id}: {reason} (exit {code}: {last})\n--- stdout\n{out.getvalue()[-3000:]}\n"
                f"--- stderr\n{err.getvalue()[-4000:]}")

    assert crashed is None, report("uncaught exception") + f"\n--- uncaught\n{crashed}"
    assert "Traceback" not in text, report("a traceback was printed")
    assert not (box / MARKER).exists() and not (tmp_path / MARKER).exists(), report("the planted pickle ran")
    assert _tree(tmp_path, box) == outside_before, report("files written outside the case's folder")
    assert _tree(assets.root) == assets_before, report("the shared assets changed")
    # only new visible entries count: other work in the checkout may remove files or write tool caches meanwhile
    new_in_repo = {name for name in set(os.listdir(ROOT)) - set(repo_before) if not name.startswith(".")}
    assert not new_in_repo, report(f"files written into the repository: {sorted(new_in_repo)}")
    assert _non_finite_saves(box, box_before) == [], report("NaN/inf saved")
    expected = {"error": 2, "findings": 1, "ok": 0}[case.expect]
    assert code == expected, report(f"expected exit {expected}")
    if case.expect == "error":
        assert "error" in err.getvalue(), report("no error line")
    for word in case.words:
        assert word in text, report(f"'{word}' is not in the output")
    for rel in case.creates:
        assert (box / rel).exists(), report(f"{rel} was not written")
    for rel in case.absent:
        assert not (box / rel).exists(), report(f"{rel} was written")
