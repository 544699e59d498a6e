"""Small fine-tuning datasets on disk: pictures with caption (.caption) and tag (.txt) files, and tool runners."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def make_pictures(
    folder: Path, sizes: list[tuple[int, int]], captions: bool = True, tags: bool = True
) -> list[Path]:
    """``img<i>.png`` of the given (width, height) sizes, with ``img<i>.caption`` and ``img<i>.txt`` beside them."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, size in enumerate(sizes):
        path = folder / f"img{i}.png"
        Image.new("RGB", size, (40 * i % 255, 200, 90)).save(path)
        if captions:
            path.with_suffix(".caption").write_text(f"a photo of a disc {i}\n", encoding="utf-8")
        if tags:
            path.with_suffix(".txt").write_text(f"red_disc, white_shirt, shirt, tag_{i}", encoding="utf-8")
        paths.append(path)
    return paths


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def read_json(path: Path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def tool_main(name: str):
    """The ``main(argv)`` of ``tools/<name>.py``."""
    spec = importlib.util.spec_from_file_location(f"tool_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def fine_tune(tmp_path: Path, options: dict) -> tuple[int, object]:
    """Run fine_tune.py's trainer in this process on ``options`` (written to a TOML); returns (exit code, target)."""
    import toml
    from accelerate.state import AcceleratorState

    from library.cli import run_trainer
    from library.config.options_finetune import FINE_TUNE_DEFAULTS
    from library.training.db_target import DreamBoothTarget

    AcceleratorState._reset_state(True)
    made = []

    def make_target(config):
        made.append(DreamBoothTarget(config))
        return made[-1]

    path = tmp_path / f"ft_{len(list(tmp_path.glob('ft_*.toml')))}.toml"
    path.write_text(toml.dumps(options), encoding="utf-8")
    code = run_trainer("db", make_target, ["--config_file", str(path)], defaults=FINE_TUNE_DEFAULTS)
    return code, (made[-1] if made else None)
