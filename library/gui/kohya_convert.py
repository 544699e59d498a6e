"""An imported kohya_ss config turned into files and commands: the sdtrain TOML (the logic of
tools/import_kohya_config.py), the prompt file, the ``accelerate launch`` command, and the way back to a
kohya_ss JSON (:func:`export_kohya`, so that import -> export -> import is a fixed point)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import toml

from library.config.options import SCHEMA
from library.errors import ConfigError, UserError
from library.gui import kohya_fields as kf
from library.gui.kohya_import import (
    FLUX_ONLY,
    KEPT_ZEROS,
    SCRIPTS,
    KohyaImport,
    as_number,
    guess_trainer,
    import_kohya,
    read_kohya_json,
)
from library.util.atomic import write_text_atomic


def prompt_file_for(output: Path) -> Path:
    """Where the sample prompt text goes: ``<output stem>_prompts.txt`` beside the TOML."""
    return output.with_name(f"{output.stem}_prompts.txt")


def launch_line(result: KohyaImport, trainer: str, output: Path) -> str:
    script = result.script or SCRIPTS[trainer]
    if result.launch_args:
        return f"accelerate launch {' '.join(result.launch_args)} {script} --config_file {output}"
    return f"python {script} --config_file {output}"


def toml_text(result: KohyaImport, trainer: str, output: Path) -> str:
    """The imported values as a TOML grouped by the schema's sections; names outside the schema (sd-scripts'
    in_json, dataset_repeats) first, at the top level, so that validation names them."""
    values = result.values
    lines = [
        f"# imported from a kohya_ss GUI config; launch with: {launch_line(result, trainer, output)}",
        "",
    ]
    outside = {k: v for k, v in values.items() if k not in SCHEMA}
    if outside:
        lines += [toml.dumps(outside).rstrip(), ""]
    for group in SCHEMA.groups:
        entries = {
            o.name: values[o.name] for o in SCHEMA.options if o.group == group.key and o.name in values
        }
        if entries:
            lines += [f"[{group.key}]", toml.dumps(entries).rstrip(), ""]
    return "\n".join(lines)


def convert_file(
    source: str | Path, output: str | Path, trainer: str | None = None, overwrite: bool = False
) -> str:
    """Import ``source`` and write ``output`` (+ the prompt file); returns the report to print."""
    output = Path(output)
    if output.suffix != ".toml":
        raise UserError(f"output {str(output)!r} must be a .toml file (the config for --config_file).")
    if output.exists() and not overwrite:
        raise UserError(
            f"output {str(output)!r} exists already; pass --overwrite to replace it or give a new name."
        )
    data = read_kohya_json(source)
    trainer = trainer or guess_trainer(data)
    result = import_kohya(data, trainer)
    if result.refused:
        raise ConfigError(
            f"kohya_ss config {str(source)!r} cannot be imported: "
            f"{' '.join(r if r.endswith('.') else r + '.' for r in result.refused)} Nothing was written."
        )
    prompt_path = result.write_prompt_file(prompt_file_for(output))
    write_text_atomic(output, toml_text(result, trainer, output))
    report = [
        f"wrote {output}" + (f" and the sample prompts to {prompt_path}" if prompt_path else ""),
        result.message(),
        f"launch: {launch_line(result, trainer, output)}",
    ]
    try:
        from library.config.load import config_from_values

        config_from_values(dict(result.values), trainer)
    except ConfigError as exc:
        report.append(f"note: the config does not validate here yet (fix it before training): {exc}")
    return "\n".join(report)


#: our option -> the kohya_ss field that carries it, where the names differ (the inverse of RENAMES).
_EXPORT_NAMES = {"max_train_epochs": "epoch", "optimizer_type": "optimizer", "resolution": "max_resolution"}


def export_kohya(result: KohyaImport, trainer: str = "network") -> dict[str, Any]:
    """A kohya_ss GUI config for an import result (values, launch arguments, prompt text): what kohya_ss
    would need to build the same run. ``import_kohya(export_kohya(r))`` gives ``r``'s values again."""
    from library.gui.kohya_network import ARG_NAMES, LORA_TYPES

    values = dict(result.values)
    data: dict[str, Any] = {}
    module, args = values.pop("network_module", None), list(values.pop("network_args", []))
    if trainer == "network" and module:
        pairs = dict(a.split("=", 1) for a in args)
        algo = pairs.pop("algo", None)
        names = {v: k for k, v in ARG_NAMES.items()}
        if module == "lycoris.kohya":
            by_algo = {t.algo: n for n, t in LORA_TYPES.items() if t.algo and "/" in n}
            data["LoRA_type"] = by_algo.get(algo or "locon", "LyCORIS/LoCon")
        elif module == "networks.lora_flux":
            data["LoRA_type"] = "Flux1"
            if pairs.pop("train_blocks", None) == "single":
                data["split_mode"] = True
        else:
            data["LoRA_type"] = "Kohya LoCon" if "conv_dim" in pairs else "Standard"
        for key, text in pairs.items():
            data[names.get(key, key)] = text
        te, unet = values.pop("text_encoder_lr", None), values.pop("unet_lr", None)
        if isinstance(te, (list, tuple)):  # [CLIP, T5]: kohya_ss' text_encoder_lr and t5xxl_lr
            te, data["t5xxl_lr"] = te[0], te[1] if len(te) > 1 else 0
        data["text_encoder_lr"] = 0 if te is None else te
        data["unet_lr"] = unet or 0
    if "lr_warmup_steps" in values:
        steps = values.pop("lr_warmup_steps")
        if isinstance(steps, str) and steps.endswith("%"):
            data["lr_warmup"], data["lr_warmup_steps"] = float(steps[:-1]), 0
        else:
            data["lr_warmup"], data["lr_warmup_steps"] = 0, steps
    multires = any(k in values for k in ("multires_noise_iterations", "multires_noise_discount"))
    data["noise_offset_type"] = "Multires" if multires else "Original"
    xformers, sdpa = values.pop("xformers", False), values.pop("sdpa", False)
    data["xformers"] = "sdpa" if sdpa else "xformers" if xformers else "none"
    for flag, name in kf.SDXL_FIELDS.items():
        if values.pop(name, None):
            data[flag], data["sdxl"] = True, True
    if "in_json" in values or "dataset_repeats" in values:  # a Finetune-tab run
        folder, _, name = str(values.pop("in_json", "")).rpartition("/")
        data["train_dir"], data["latent_metadata_filename"], data["use_latent_files"] = folder, name, "Yes"
        data["image_folder"] = values.pop("train_data_dir", "")
    if module == "networks.lora_flux" or FLUX_ONLY & set(values):
        data["flux1_checkbox"] = True
    if result.sample_prompts_text is not None or "sample_prompts" in values:
        path = values.pop("sample_prompts", None)
        text = result.sample_prompts_text
        data["sample_prompts"] = text if text is not None else Path(path).read_text(encoding="utf-8")
    flags = []
    for name, value in values.items():
        if as_number(value) == 0 and name not in KEPT_ZEROS:
            flags.append(f"--{name}={value}")  # kohya_ss drops zeros from its form; a flag keeps them
            continue
        if name in ("optimizer_args", "lr_scheduler_args"):
            value = " ".join(value)
        data[_EXPORT_NAMES.get(name, name)] = value
    if flags:
        data["additional_parameters"] = " ".join(flags)
    data.update(_accelerate_fields(result.launch_args))
    return dict(sorted(data.items()))


def _accelerate_fields(args: list[str]) -> dict[str, Any]:
    """``accelerate launch`` arguments back to kohya_ss' accelerate fields."""
    fields: dict[str, Any] = {}
    extra: list[str] = []
    i = 0
    while i < len(args):
        key = args[i][2:] if args[i].startswith("--") else None
        kind = kf.ACCELERATE_FIELDS.get(key or "")
        if kind == "switch":
            fields[key] = True
        elif kind in ("count", "text") and i + 1 < len(args):
            fields[key] = int(args[i + 1]) if kind == "count" else args[i + 1]
            i += 1
        else:
            extra.append(args[i])
        i += 1
    if extra:
        fields["extra_accelerate_launch_args"] = " ".join(extra)
    return fields


def with_launch_args(argv: list[str], launch_args: list[str]) -> list[str]:
    """A trainer command (``python script.py …`` or ``accelerate launch script.py …``) run through
    ``accelerate launch`` with the imported accelerate arguments; unchanged when there are none."""
    if not launch_args:
        return list(argv)
    script = next(i for i, part in enumerate(argv) if part.endswith(".py"))
    launcher = (
        ["accelerate", "launch"]
        if argv[0] == "accelerate"
        else [sys.executable, "-m", "accelerate.commands.launch"]
    )
    return [*launcher, *launch_args, *argv[script:]]


def gui_prompt_file(result: KohyaImport, source: str | Path) -> Path:
    """Where the GUI writes the prompt text: ``output_dir/sample/prompt.txt`` as kohya_ss does at start, or
    ``<config stem>_prompts.txt`` beside the kohya_ss file when the config has no output_dir."""
    output_dir = str(result.values.get("output_dir") or "").strip()
    if output_dir:
        return Path(output_dir) / "sample" / "prompt.txt"
    source = Path(source)
    return source.with_name(f"{source.stem}_prompts.txt")


def import_for_form(path: str, trainer: str, form_names: list[str], check_path) -> tuple[KohyaImport, str]:
    """The GUI's Import button: import ``path``, write the prompt text where kohya_ss would (``check_path``
    refuses a path outside ``--allowed_paths``), and the message the form shows — with the options a form of
    this trainer has no field for named, as the CLI would keep them."""
    from library.gui.kohya_import import import_kohya_file

    check_path(path)
    result = import_kohya_file(path, trainer)
    if result.sample_prompts_text is not None:
        prompt_file = gui_prompt_file(result, path)
        check_path(str(prompt_file))
        result.write_prompt_file(prompt_file)
    message = result.message()
    outside = sorted(set(result.values) - set(form_names))
    if outside:
        message += (
            f"\nNot in this form (use tools/import_kohya_config.py to keep them in a TOML): "
            f"{', '.join(outside)}."
        )
    return result, message
