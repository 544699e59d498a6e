"""Import a bmaltais/kohya_ss GUI config (JSON of its field names) into our option names.

The kohya_ss GUI saves every field, most of them off; fields equal to sd-scripts names map directly,
renamed fields go through ``RENAMES``/``CONVERTERS`` (one entry each), and everything else is reported.
Source of the field names: /work/shared/reference/field-notes.md §3.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from library.config.options import SCHEMA
from library.errors import ConfigError

#: kohya_ss field -> our option (same meaning, same value).
RENAMES = {
    "epoch": "max_train_epochs",
    "optimizer": "optimizer_type",
    "lr_scheduler_args": "lr_scheduler_args",
    "num_cpu_threads_per_process": None,  # accelerate setting, not a trainer option
    "v_param": "v_parameterization",
    "train_dir": "output_dir",
    "model_list": None,
    "sdxl_cache_text_encoder_outputs": "cache_text_encoder_outputs",
    "sdxl_no_half_vae": "no_half_vae",
    # the family is detected from the model; the flag is checked against it (see _check_family)
    "sdxl": None,
}

#: kohya_ss LoRA_type -> (network_module, extra network_args).
LORA_TYPES = {
    "Standard": ("networks.lora", []),
    "Kohya LoCon": ("networks.lora", ["conv"]),
    "LyCORIS/LoCon": ("lycoris.kohya", ["algo=locon"]),
    "LyCORIS/LoHa": ("lycoris.kohya", ["algo=loha"]),
    "LyCORIS/LoKr": ("lycoris.kohya", ["algo=lokr"]),
    "LyCORIS/iA3": ("lycoris.kohya", ["algo=ia3"]),
    "LyCORIS/DyLoRA": ("lycoris.kohya", ["algo=dylora"]),
    "LyCORIS/GLoRA": ("lycoris.kohya", ["algo=glora"]),
    "LyCORIS/BOFT": ("lycoris.kohya", ["algo=boft"]),
    "LyCORIS/Diag-OFT": ("lycoris.kohya", ["algo=diag-oft"]),
    "LyCORIS/Native Fine-Tuning": ("lycoris.kohya", ["algo=full"]),
}

#: fields that describe the GUI itself, never a training option (dropped silently).
GUI_ONLY = {
    "additional_parameters",
    "save_as_bool",
    "LyCORIS_preset",
    "use_shell",
    "headless",
    "num_processes",
    "num_machines",
    "multi_gpu",
    "gpu_ids",
    "main_process_port",
    "dynamo_backend",
    "dynamo_mode",
    "dynamo_use_fullgraph",
    "dynamo_use_dynamic",
    "extra_accelerate_launch_args",
    "mixed_precision_accelerate",
    "conv_dim",
    "conv_alpha",
    "max_resolution",
    "lr_warmup",
    "optimizer_args",
    "network_args",
    "LoRA_type",
    "lora_type",
}


def _split_args(text: Any) -> list[str]:
    """kohya_ss keeps optimizer/network args as one string "a=1 b=2" (shell-like quoting)."""
    if isinstance(text, list):
        return [str(t) for t in text]
    return shlex.split(str(text or ""))


def _resolution(value: Any) -> str:
    return ",".join(p.strip() for p in str(value).split(",") if p.strip())


CONVERTERS: dict[str, Callable[[Any], tuple[str, Any]]] = {
    "max_resolution": lambda v: ("resolution", _resolution(v)),
    "lr_warmup": lambda v: ("lr_warmup_steps", f"{float(v):g}%"),
    "optimizer_args": lambda v: ("optimizer_args", _split_args(v)),
    # kohya_ss keeps the attention choice in one dropdown: "xformers", "sdpa" or "none"
    "xformers": lambda v: ("sdpa", True) if v == "sdpa" else ("xformers", v in (True, "xformers")),
}


@dataclass
class KohyaImport:
    """Our option values, and the kohya_ss fields that were not mapped (name -> value)."""

    values: dict[str, Any] = field(default_factory=dict)
    unmapped: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def message(self) -> str:
        text = f"imported {len(self.values)} options from the kohya_ss config"
        if self.unmapped:
            names = ", ".join(sorted(self.unmapped))
            text += f"; {len(self.unmapped)} fields could not be mapped and were left out: {names}"
        return " ".join([text + ".", *self.notes]) if self.notes else text


def _is_off(value: Any) -> bool:
    return value in (None, "", False, 0, [], "0")


def _network(data: dict[str, Any], out: KohyaImport) -> None:
    lora_type = data.get("LoRA_type") or data.get("lora_type")
    args = _split_args(data.get("network_args"))
    if lora_type:
        if lora_type not in LORA_TYPES:
            out.unmapped["LoRA_type"] = lora_type
            return
        module, extra = LORA_TYPES[lora_type]
        out.values["network_module"] = module
        for item in extra:
            if item == "conv":
                if not _is_off(data.get("conv_dim")):
                    args += [f"conv_dim={data['conv_dim']}", f"conv_alpha={data.get('conv_alpha', 1)}"]
            else:
                args.append(item)
    if args:
        out.values["network_args"] = args


def import_kohya(data: dict[str, Any], trainer: str = "network") -> KohyaImport:
    """Map a kohya_ss GUI config dict to our option values for ``trainer``."""
    out = KohyaImport()
    known = {o.name for o in SCHEMA.for_trainer(trainer)}
    for key, value in data.items():
        if key in CONVERTERS:
            if not _is_off(value):
                name, converted = CONVERTERS[key](value)
                out.values[name] = converted
            continue
        name = RENAMES.get(key, key)
        if key in RENAMES and name is None or key in GUI_ONLY:
            continue
        if name in known and not (o := SCHEMA[name]).transient:
            if _is_off(value) and value != o.default and o.kind != "bool":
                continue  # kohya_ss writes "" / 0 for unset fields
            out.values[name] = value
        elif not _is_off(value):
            out.unmapped[key] = value
    if trainer == "network":
        _network(data, out)
    _check_family(data, out)
    return out


def _check_family(data: dict[str, Any], out: KohyaImport) -> None:
    """kohya_ss's ``sdxl`` checkbox picks its SDXL scripts; ours detect the family from the model, so the
    checkbox is only compared with what the model is (two text encoders or one) and a mismatch is noted."""
    if "sdxl" not in data:
        return
    from library.gui.family_hint import family_hint

    says_sdxl = not _is_off(data["sdxl"])
    model = out.values.get("pretrained_model_name_or_path")
    hint = family_hint(model)
    if hint.family is None:
        if says_sdxl:
            out.notes.append(
                f"Note: the kohya_ss config says sdxl = true; the model family is detected from "
                f"pretrained_model_name_or_path when training starts ({hint.text or 'no model given'})."
            )
        return
    if says_sdxl != hint.multi_text_encoder:
        out.notes.append(
            f"Warning: the kohya_ss config says sdxl = {str(says_sdxl).lower()}, but the model {model} is "
            f"detected as {hint.text}; training uses the detected family."
        )


def import_kohya_file(path: str | Path, trainer: str = "network") -> KohyaImport:
    """Read a kohya_ss GUI JSON file; raises ``ConfigError`` for an unreadable file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"kohya_ss config {str(path)!r} could not be read as JSON: {exc}.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"kohya_ss config {str(path)!r} is not a JSON object of GUI fields.")
    return import_kohya(data, trainer)
