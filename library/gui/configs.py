"""Config files as the GUI uses them: validate form values with the CLI's validation, save/load TOML, list
presets, build the trainer command line. No gradio here."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import toml

from library.config.load import config_from_values, effective_toml, read_toml
from library.config.options import SCHEMA
from library.errors import ConfigError, UserError
from library.gui.fields import field_values, form_options, form_values
from library.util.atomic import write_text_atomic

#: the repository root (where train_network.py, train_db.py and presets/ live).
REPO_ROOT = Path(__file__).resolve().parents[2]

#: trainer -> entry-point script.
SCRIPTS = {"network": "train_network.py", "db": "train_db.py"}
#: launcher name -> argument list placed before the script (``python`` is this interpreter).
LAUNCHERS = {"python": lambda: [sys.executable], "accelerate": lambda: ["accelerate", "launch"]}


def validate(trainer: str, fields: dict[str, Any]):
    """The form's values as a validated ``Config`` (raises ``ConfigError``, the CLI's message)."""
    return config_from_values(form_values(trainer, fields), trainer)


def config_toml(trainer: str, fields: dict[str, Any]) -> tuple[str, str | None]:
    """(TOML text, error or None). A valid form gives the effective config; an invalid one is still written
    (so unfinished work can be saved) as the raw values, grouped like the schema, with the error noted."""
    try:
        return effective_toml(validate(trainer, fields)), None
    except ConfigError as exc:
        return raw_toml(trainer, form_values(trainer, fields), str(exc)), str(exc)


def raw_toml(trainer: str, values: dict[str, Any], note: str = "") -> str:
    """Raw option values as a TOML grouped by the schema's sections."""
    lines = [f"# {trainer} config saved by the GUI; it did not validate: {note}".replace("\n", " "), ""]
    for group in SCHEMA.groups:
        entries = {
            o.name: values[o.name] for o in form_options(trainer) if o.group == group.key and o.name in values
        }
        entries = {k: v for k, v in entries.items() if v is not None}
        if entries:
            lines += [f"[{group.key}]", toml.dumps(entries).rstrip(), ""]
    return "\n".join(lines)


def save_config(trainer: str, fields: dict[str, Any], path: str | Path) -> tuple[Path, str | None]:
    """Write the form as a TOML config (atomically); returns (path, validation error or None)."""
    path = Path(path)
    if path.suffix != ".toml":
        path = path.with_suffix(path.suffix + ".toml")
    text, error = config_toml(trainer, fields)
    write_text_atomic(path, text)
    return path, error


def load_config(trainer: str, path: str | Path) -> dict[str, Any]:
    """Field values for every form option from a TOML config (unset options get their defaults)."""
    values = read_toml(path, trainer)
    values.pop("config_file", None)
    values.pop("output_config", None)
    return field_values(trainer, values)


def preset_dir() -> Path:
    return REPO_ROOT / "presets"


def preset_label(path: Path) -> str:
    """The name a preset shows in the list: its file stem, then the first clause of its header comment
    ("flux_lora_12gb — A FLUX.1-dev LoRA for a 12 GB card …"), which says what it is for."""
    header = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        header.append(line.lstrip("#").strip())
    text = " ".join(header)
    clause = re.split(r":|\s\(|\.\s|;", text, maxsplit=1)[0].strip().rstrip(".")
    if len(clause) > PRESET_LABEL_CHARS:
        clause = clause[:PRESET_LABEL_CHARS].rsplit(" ", 1)[0] + " …"
    return f"{path.stem} — {clause}" if clause else path.stem


#: longest description a preset label shows
PRESET_LABEL_CHARS = 80


def preset_choices(trainer: str, folder: Path | None = None) -> list[tuple[str, str]]:
    """(label, name) per preset of ``trainer``, for the preset dropdown."""
    return [(preset_label(preset_path(name, folder)), name) for name in list_presets(trainer, folder)]


def list_presets(trainer: str, folder: Path | None = None) -> list[str]:
    """Names (file stems) of the presets in ``presets/`` that this trainer accepts."""
    names = []
    for path in sorted((folder or preset_dir()).glob("*.toml")):
        try:
            read_toml(path, trainer)
        except UserError:
            continue
        names.append(path.stem)
    return names


def preset_path(name: str, folder: Path | None = None) -> Path:
    return (folder or preset_dir()) / f"{name}.toml"


def run_config_path(config) -> Path:
    """Where Start writes the run's config: ``output_dir/<output_name>.toml``."""
    return Path(config.output_dir) / f"{config.output_name or 'last'}.toml"


def entry_script(trainer: str, model: str | None = None) -> str:
    """The script that runs ``trainer`` for the base model ``model``: the detected family's own (sd-scripts'
    name, ``ModelFamily.scripts``), else train_network.py / train_db.py (which take every family, also a
    model that cannot be told yet)."""
    from library.gui.family_hint import family_hint

    family = family_hint(model).family if model else None
    return (family.scripts if family else {}).get(trainer, SCRIPTS[trainer])


def trainer_command(
    trainer: str, config_path: str | Path, launcher: str = "python", model: str | None = None
) -> list[str]:
    """The argument list that runs ``trainer`` on ``config_path`` (never a shell string); ``model``: the
    config's base model, which picks the script (:func:`entry_script`)."""
    if launcher not in LAUNCHERS:
        raise UserError(f"launcher {launcher!r} is unknown; use one of {', '.join(LAUNCHERS)}.")
    script = str(REPO_ROOT / entry_script(trainer, model))
    return [*LAUNCHERS[launcher](), script, "--config_file", str(config_path)]


def config_command(trainer: str, config_path: str | Path, launcher: str = "python") -> list[str]:
    """:func:`trainer_command` for a config file already written (a queue entry): its base model picks the
    script; a file that cannot be read runs the generic script (which then reports the problem)."""
    try:
        model = read_toml(config_path, trainer).get("pretrained_model_name_or_path")
    except (UserError, OSError):
        model = None
    return trainer_command(trainer, config_path, launcher, model)


def write_run_config(trainer: str, fields: dict[str, Any]) -> Path:
    """Validate the form and write ``output_dir/<output_name>.toml``; raises ``ConfigError`` when invalid."""
    config = validate(trainer, fields)
    path = run_config_path(config)
    write_text_atomic(path, effective_toml(config))
    return path


#: an estimate loads the base model (a few seconds for SD1.5, longer from a slow disk)
ESTIMATE_TIMEOUT = 900


def estimate_report(trainer: str, fields: dict[str, Any]) -> str:
    """The trainer's ``--estimate`` report for the form's config, run as a subprocess (the model it loads
    is freed with it). Raises ``UserError`` with the trainer's message when the config cannot be estimated."""
    import subprocess
    import tempfile

    config = validate(trainer, fields)
    with tempfile.TemporaryDirectory(prefix="sdtrain-estimate-") as folder:
        path = Path(folder) / "estimate.toml"
        path.write_text(effective_toml(config), encoding="utf-8")
        argv = trainer_command(trainer, path, "python", config.pretrained_model_name_or_path)
        command = [*argv, "--estimate"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=ESTIMATE_TIMEOUT,
                                  cwd=Path.cwd(), check=False)
        except subprocess.TimeoutExpired:
            raise UserError(f"the estimate took longer than {ESTIMATE_TIMEOUT} s (loading the base model?)") from None
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        raise UserError(errors[-1][len("error: "):] if errors else done.stderr.strip()[-2000:] or "no output")
    return done.stdout.strip()
