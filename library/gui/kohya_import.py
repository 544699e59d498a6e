"""Import a bmaltais/kohya_ss GUI config (a JSON of its field names) into our option names, losing nothing.

kohya_ss turns its form into an sd-scripts TOML when training starts (``train_model`` in its
``*_gui.py``); this import does the same, field by field: the LoRA type becomes ``network_module`` /
``network_args`` (:mod:`library.gui.kohya_network`), the warmup percentage ``lr_warmup_steps``,
``noise_offset_type`` picks the noise options that apply, ``text_encoder_lr = 0`` trains the UNet only,
``additional_parameters`` goes through our own command-line parser, the accelerate fields become the
arguments of ``accelerate launch`` and ``sample_prompts`` (the prompt text itself) goes to a prompt file.
Every field is accounted for: set an option (``mapped``) or listed in the message with its reason
(``skipped``). Tables of field names: :mod:`library.gui.kohya_fields`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from library.config.known_elsewhere import SD_SCRIPTS_NAMES
from library.config.options import SCHEMA
from library.config.values import coerce
from library.errors import ConfigError
from library.gui import kohya_fields as kf
from library.gui.kohya_network import NETWORK_FIELDS, network_options

#: the trainer each kohya_ss tab's run goes to here.
SCRIPTS = {"network": "train_network.py", "db": "train_db.py", "ti": "train_textual_inversion.py"}

#: the reason shown for fields that are off and have no counterpart here (nothing is lost).
OFF_REASON = "off in this config, so nothing is lost (no counterpart here)"

#: options kohya_ss writes even when 0 (it adds them after its filter of empty values).
KEPT_ZEROS = frozenset({"max_data_loader_n_workers"})

#: fields kohya_ss passes only with its Flux.1 checkbox on.
FLUX_ONLY = frozenset(
    """ae clip_l t5xxl t5xxl_max_token_length guidance_scale apply_t5_attn_mask cpu_offload_checkpointing
    blocks_to_swap fp8_base_unet timestep_sampling discrete_flow_shift model_prediction_type model_type
    flux1_clip_l flux1_t5xxl flux_fused_backward_pass""".split()
)


@dataclass
class KohyaImport:
    """The result of an import: our option values and an account of every kohya_ss field."""

    values: dict[str, Any] = field(default_factory=dict)
    #: kohya field -> the options it set or decided (empty: it was off, our default applies)
    mapped: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: kohya field -> why it is not carried over (shown in the message)
    skipped: dict[str, str] = field(default_factory=dict)
    #: the skipped fields that were set (not off): name -> value
    unmapped: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: problems that make the config untrainable as it is (an unsupported LoRA type or family)
    refused: list[str] = field(default_factory=list)
    #: ``accelerate launch`` arguments (num_processes, multi_gpu, dynamo …); empty: a plain single process
    launch_args: list[str] = field(default_factory=list)
    #: the prompt text of ``sample_prompts`` (kohya_ss writes it to a file at start; see write_prompt_file)
    sample_prompts_text: str | None = None
    #: the entry point that trains it (fine_tune.py for kohya_ss' Finetune tab)
    script: str = "train_network.py"
    #: the kohya_ss family checkboxes we lack and whether each is on (for the family sections' reasons)
    family_boxes: dict[str, bool] = field(default_factory=dict)

    def map(self, kohya_field: str, *names: str) -> None:
        self.mapped[kohya_field] = names

    def skip(self, kohya_field: str, reason: str, value: Any = None) -> None:
        """List a field with its reason; ``value`` (not off) marks a setting that changes the run in kohya_ss
        and is lost here (``unmapped``). Pass no value for fields without effect there either."""
        self.skipped[kohya_field] = reason
        if not _is_off(value):
            self.unmapped[kohya_field] = value

    def write_prompt_file(self, path: str | Path) -> Path | None:
        """Write the sample prompt text to ``path`` (folders created) and point ``sample_prompts`` at it."""
        if self.sample_prompts_text is None:
            return None
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.sample_prompts_text.rstrip("\n") + "\n", encoding="utf-8")
        self.values["sample_prompts"] = str(path)
        return path

    def message(self) -> str:
        """One summary for the GUI and the CLI: what was imported, what is not carried over and why."""
        lines = [
            f"imported {len(self.values)} options from the kohya_ss config "
            f"({len(self.mapped)} fields mapped)."
        ]
        lines += [f"❌ cannot be trained as it is: {text}" for text in self.refused]
        if self.launch_args:
            lines.append(
                "Launch: accelerate launch " + " ".join(self.launch_args) + " (from the accelerate fields)."
            )
        if self.sample_prompts_text is not None and "sample_prompts" not in self.values:
            lines.append(
                "sample_prompts holds prompt text: it is written to a prompt file when the config is saved."
            )
        if self.unmapped:
            names = ", ".join(sorted(self.unmapped))
            lines.append(f"{len(self.unmapped)} fields could not be mapped and were left out: {names}.")
        by_reason: dict[str, list[str]] = {}
        for name, reason in self.skipped.items():
            by_reason.setdefault(reason, []).append(name)
        if by_reason:
            lines.append(f"Not carried over ({len(self.skipped)} fields):")
            lines += [
                f"- {', '.join(sorted(names))}: {reason}" for reason, names in sorted(by_reason.items())
            ]
        return "\n".join([*lines, *self.notes])


def _is_off(value: Any) -> bool:
    return value is None or value is False or value == "" or value == [] or as_number(value) == 0


def as_number(value: Any) -> float | None:
    """``value`` as a float (numbers saved as text too), or None for booleans and non-numbers."""
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _rate(data: dict[str, Any], key: str, out: KohyaImport) -> float:
    """A number field kohya_ss reads with float(), unset or unreadable as 0 (as its update_my_data does);
    an unreadable value is noted, since 0 changes what trains (text_encoder_lr = 0: UNet only)."""
    value = data.get(key)
    number = as_number(value)
    if number is None and value not in (None, ""):
        out.notes.append(f"Warning: {key} = {value!r} is not a number; it is read as 0, as kohya_ss does.")
    return number or 0.0


def _kohya_split(text: Any) -> list[str]:
    """kohya_ss' ``str(text).replace('"', "").split()`` for optimizer/scheduler args and extra parameters."""
    if isinstance(text, list):
        return [str(t) for t in text]
    return str(text or "").replace('"', "").split()


def _resolution(value: Any) -> str:
    return ",".join(p.strip() for p in str(value).split(",") if p.strip())


def _tab(data: dict[str, Any]) -> str:
    if any(k in data for k in ("token_string", "init_word", "num_vectors_per_token")):
        return "ti"
    if any(k in data for k in ("train_dir", "image_folder", "caption_metadata_filename", "use_latent_files")):
        return "finetune"
    return "lora" if ("LoRA_type" in data or "lora_type" in data) else "dreambooth"


def guess_trainer(data: dict[str, Any]) -> str:
    """The trainer a kohya_ss config is for: its LoRA tab -> "network", Textual Inversion -> "ti", DreamBooth /
    Finetune -> "db"."""
    return {"lora": "network", "ti": "ti"}.get(_tab(data), "db")


def import_kohya(data: dict[str, Any], trainer: str = "network") -> KohyaImport:
    """Map a kohya_ss GUI config dict to our option values for ``trainer`` ("network" or "db")."""
    out = KohyaImport()
    data = _legacy(dict(data), out)
    tab = _tab(data)
    out.script = "fine_tune.py" if tab == "finetune" and trainer == "db" else SCRIPTS.get(trainer, trainer)
    is_flux = bool(data.get("flux1_checkbox"))
    out.family_boxes = {k: bool(data.get(k)) for k in kf.FAMILY_CHECKBOXES}
    for handler in _HANDLERS:
        handler(data, out, trainer, tab)
    for key, value in data.items():
        if key in out.mapped or key in out.skipped or key == "additional_parameters":
            continue
        if key in FLUX_ONLY and not is_flux:
            out.skip(key, "kohya_ss passes it only with the Flux.1 checkbox on (it is off)")
            continue
        _plain(key, value, out, trainer)
    _additional(data, out, trainer, tab)  # after the form's fields: its flags override them
    _check_family(data, out)
    return out


def _legacy(data: dict[str, Any], out: KohyaImport) -> dict[str, Any]:
    """kohya_ss' ``update_my_data``: old field forms it converts on load."""
    if "use_wandb" in data:
        if data["use_wandb"] in (True, "True") and not data.get("log_with"):
            data["log_with"] = "wandb"
        out.map("use_wandb", "log_with")
        data.pop("use_wandb")
    if "use_8bit_adam" in data:
        if data["use_8bit_adam"] in (True, "True") and not data.get("optimizer"):
            data["optimizer"] = "AdamW8bit"
        out.map("use_8bit_adam", "optimizer_type")
        data.pop("use_8bit_adam")
    return data


def _plain(key: str, value: Any, out: KohyaImport, trainer: str) -> None:
    """A field whose name (or renamed name) is an sd-scripts option: kohya_ss' off rule, then our value."""
    if key in kf.NO_COUNTERPART:
        reason = kf.NO_COUNTERPART[key]
        if reason in kf.WITHOUT_EFFECT:
            out.skip(key, reason)
        else:
            out.skip(key, OFF_REASON if _is_off(value) else reason, value)
        return
    for prefix, family in kf.UNSUPPORTED_FAMILIES.items():
        if key.startswith(prefix):
            on = any(
                data_on for name, data_on in out.family_boxes.items() if kf.FAMILY_CHECKBOXES[name] == family
            )
            out.skip(
                key,
                f"a {family} setting; the {family} family is not supported here"
                + ("" if on else " (its checkbox is off, so kohya_ss does not pass it)"),
                value if on else None,
            )
            return
    name = kf.RENAMES.get(key, key)
    if name not in SCHEMA:
        if _is_off(value):
            out.skip(key, OFF_REASON)
        elif name in SD_SCRIPTS_NAMES:
            out.skip(key, "an sd-scripts option sdtrain does not support yet", value)
        else:
            out.skip(key, "an unknown kohya_ss field with no counterpart here", value)
        return
    option = SCHEMA[name]
    if trainer not in option.trainers:
        if _is_off(value) or value == option.default:
            out.map(key)
        elif trainer == "network" and key in kf.IGNORED_FOR_LORA:
            out.skip(key, kf.IGNORED_FOR_LORA[key])
        else:
            script = SCRIPTS.get(trainer, trainer)
            out.skip(key, kf.NOT_FOR_TRAINER.get(key, f"not an option of {script} here"), value)
        return
    _set(out, key, name, _kohya_value(key, name, value))
    default, zero_allowed = option.default, option.min is None or option.min <= 0
    meaningful = zero_allowed and not getattr(option, "zero_is_off", False)  # 0 is a value, not "unset"
    dropped_zero = as_number(value) == 0 and name not in KEPT_ZEROS
    if dropped_zero and as_number(default) not in (None, 0) and meaningful:
        out.notes.append(
            f"Note: {key} = 0 is dropped by kohya_ss (it writes no zero values), so the default {default} "
            f"applies, as there; put --{name}=0 in additional_parameters to train with 0."
        )


def _kohya_value(key: str, name: str, value: Any) -> Any:
    """What kohya_ss writes into the sd-scripts TOML for this value (None: it writes nothing)."""
    kept_zero = name in KEPT_ZEROS and as_number(value) == 0
    if not kept_zero and (value in ("", None, False) or as_number(value) == 0):
        return None  # kohya_ss' filter: `value not in ["", False, None]`, which drops 0 and 0.0 too
    kind = SCHEMA[name].kind
    if kind == "strs":
        return _kohya_split(value)
    if kind == "resolution":
        return _resolution(value)
    if kind == "bool" and as_number(value) is not None:
        return bool(as_number(value))  # persistent_data_loader_workers is saved as 0/1
    if kind == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _set(out: KohyaImport, key: str, name: str, value: Any) -> None:
    """Set ``name`` unless ``value`` is its default (``None``: sd-scripts' default, ours too)."""
    out.map(key, name)
    if value is None:
        out.values.pop(name, None)
        return
    option = SCHEMA[name]
    try:
        typed = coerce(option, value)
        same = typed == coerce(option, option.default)
        if option.kind in ("int", "float", "bool"):
            value = typed  # kohya_ss presets often keep numbers as text ("12345")
    except ConfigError:
        same = False  # validation names the bad value later
    if same:
        out.values.pop(name, None)
    else:
        out.values[name] = value


def _network(data, out: KohyaImport, trainer: str, tab: str) -> None:
    present = [k for k in NETWORK_FIELDS if k in data]
    if tab != "lora" or trainer != "network":
        for key in present:
            out.skip(key, "a LoRA-tab field; kohya_ss does not pass it for a run without a network")
        return
    lora_type = data.get("LoRA_type") or data.get("lora_type") or "Standard"
    result = network_options(data, lora_type)
    if result.refused:
        out.refused.append(result.refused)
        out.skip("LoRA_type" if "LoRA_type" in data else "lora_type", result.refused, lora_type)
        for key in present:
            out.skipped.setdefault(key, f"read by LoRA_type {lora_type!r}, which cannot be trained here")
        return
    out.values["network_module"] = result.module
    if result.args:
        out.values["network_args"] = result.args
    for key in present:
        if key in result.skipped:
            out.skip(key, result.skipped[key])
        else:
            out.map(key, "network_module" if key in ("LoRA_type", "lora_type") else "network_args")


def _learning_rates(data, out: KohyaImport, trainer: str, tab: str) -> None:
    """LoRA tab: ``text_encoder_lr``/``unet_lr`` of 0 mean "do not train that part" (kohya_ss'
    resolve_network_train_flags); the rates themselves are written only when non-zero."""
    if tab != "lora" or trainer != "network":
        return
    te, unet = _rate(data, "text_encoder_lr", out), _rate(data, "unet_lr", out)
    if "text_encoder_lr" not in data and "unet_lr" not in data:
        return
    t5 = _rate(data, "t5xxl_lr", out)
    if te > 0:
        _set(out, "text_encoder_lr", "text_encoder_lr", [te, t5] if t5 > 0 else te)
    else:
        out.map("text_encoder_lr", "network_train_unet_only")
    if "t5xxl_lr" in data:
        if t5 > 0 and te > 0:
            out.map("t5xxl_lr", "text_encoder_lr")
        elif t5 > 0:
            out.skip("t5xxl_lr", "kohya_ss refuses a T5 learning rate without text_encoder_lr")
        else:
            out.map("t5xxl_lr")
    _set(out, "unet_lr", "unet_lr", unet if unet != 0 else None)
    unet_only = (te == 0 and unet != 0) or data.get("network_train_unet_only") is True
    te_only = (te != 0 and unet == 0) or data.get("network_train_text_encoder_only") is True
    for key, name, flag in (
        ("network_train_unet_only", "network_train_unet_only", unet_only),
        ("network_train_text_encoder_only", "network_train_text_encoder_only", te_only),
    ):
        _set(out, key, name, flag or None)


def _warmup(data, out: KohyaImport, trainer: str, tab: str) -> None:
    """kohya_ss' resolve_lr_warmup_steps: an absolute lr_warmup_steps > 0 wins, else lr_warmup percent."""
    if "lr_warmup" not in data and "lr_warmup_steps" not in data:
        return
    pct, steps = _rate(data, "lr_warmup", out), _rate(data, "lr_warmup_steps", out)
    if steps > 0:
        _set(out, "lr_warmup_steps", "lr_warmup_steps", int(steps))
        if "lr_warmup" in data:
            if pct > 0:
                out.skip("lr_warmup", "lr_warmup_steps is set and wins over the percentage, as in kohya_ss")
            else:
                out.map("lr_warmup", "lr_warmup_steps")
        return
    _set(out, "lr_warmup_steps", "lr_warmup_steps", f"{pct:g}%" if pct > 0 else None)
    if "lr_warmup" in data:
        out.map("lr_warmup", "lr_warmup_steps")


def _noise(data, out: KohyaImport, trainer: str, tab: str) -> None:
    """noise_offset_type picks Original (noise_offset, adaptive_noise_scale, noise_offset_random_strength) or
    Multires (multires_noise_iterations, multires_noise_discount); the other kind's fields do not apply."""
    kinds = {
        "Original": ("noise_offset", "adaptive_noise_scale", "noise_offset_random_strength"),
        "Multires": ("multires_noise_iterations", "multires_noise_discount"),
    }
    chosen = data.get("noise_offset_type") or "Original"
    if chosen not in kinds:
        out.skip(
            "noise_offset_type",
            f"unknown noise_offset_type {chosen!r} (kohya_ss has Original and Multires); "
            "no noise option is carried over",
            chosen,
        )
        chosen = None
    elif "noise_offset_type" in data:
        out.map("noise_offset_type", *kinds[chosen])
    for kind, names in kinds.items():
        for key in names:
            if key not in data:
                continue
            if kind == chosen:
                _plain(key, data[key], out, trainer)
            else:
                out.skip(
                    key, f"noise_offset_type is {chosen}: kohya_ss does not pass the {kind} noise options"
                )


def _attention(data, out: KohyaImport, trainer: str, tab: str) -> None:
    """kohya_ss keeps the attention choice in one dropdown: "xformers", "sdpa" or "none" (old: a bool)."""
    if "xformers" not in data:
        return
    choice = data["xformers"]
    _set(out, "xformers", "xformers", True if choice in (True, "xformers") else None)
    if choice == "sdpa":
        _set(out, "xformers", "sdpa", True)
    out.map("xformers", "xformers", "sdpa")


def _epochs(data, out: KohyaImport, trainer: str, tab: str) -> None:
    """``epoch`` is what kohya_ss turns into max_train_steps, unless max_train_steps or max_train_epochs is
    set (max_train_epochs overrides both in sd-scripts)."""
    if "epoch" not in data:
        return
    for key in ("max_train_epochs", "lr_scheduler_num_cycles"):
        if key in data and (_is_off(data[key]) or data[key] == ""):
            out.map(key, key)  # off: epoch (below) decides
    epochs = as_number(data.get("max_train_epochs")) or 0
    steps = as_number(data.get("max_train_steps")) or 0
    if epochs:
        out.skip("epoch", "max_train_epochs is set and overrides it, as in sd-scripts")
    elif steps:
        out.skip("epoch", "max_train_steps is set: kohya_ss uses epoch only to compute max_train_steps")
    elif data.get("dataset_config"):
        out.skip(
            "epoch",
            "with a dataset_config kohya_ss does not turn epoch into steps (sd-scripts' default "
            "max_train_steps applies); set max_train_epochs to train by epochs",
        )
    else:
        _plain("epoch", data["epoch"], out, trainer)
    if data.get("lr_scheduler_num_cycles") == "" and not _is_off(data["epoch"]):
        _set(out, "lr_scheduler_num_cycles", "lr_scheduler_num_cycles", int(float(data["epoch"])))


def _prompts(data, out: KohyaImport, trainer: str, tab: str) -> None:
    """``sample_prompts`` is the prompt text itself; one line naming an existing file is kept as a path."""
    if "sample_prompts" not in data:
        return
    text = str(data["sample_prompts"] or "")
    out.map("sample_prompts", "sample_prompts")
    if not text.strip():
        return
    if "\n" not in text.strip() and Path(text.strip()).expanduser().is_file():
        out.values["sample_prompts"] = text.strip()
        return
    out.sample_prompts_text = text


def _additional(data, out: KohyaImport, trainer: str, tab: str) -> None:
    """``additional_parameters``: sd-scripts flags kohya_ss appends to the command line; parsed by our own
    parser, they override the form's values as flags override the TOML."""
    if "additional_parameters" not in data:
        return
    tokens = _kohya_split(data["additional_parameters"])
    if not tokens:
        out.map("additional_parameters")
        return
    from library.config.load import build_parser

    try:
        namespace, unknown = build_parser(trainer).parse_known_args(tokens)
    except ConfigError as exc:
        out.skip(
            "additional_parameters",
            f"cannot be read as sd-scripts flags ({exc})",
            data["additional_parameters"],
        )
        return
    parsed = {k: v for k, v in vars(namespace).items() if k in SCHEMA and not SCHEMA[k].transient}
    for name, value in parsed.items():
        if SCHEMA[name].kind in ("int", "float", "bool"):
            with contextlib.suppress(ConfigError):  # a bad number stays text: validation names it
                value = coerce(SCHEMA[name], value)
        _set(out, "additional_parameters", name, value)
    out.map("additional_parameters", *parsed)
    flags = [t for t in unknown if t.startswith("-")]
    if unknown:
        names = " ".join(flags or unknown)
        out.skip(
            "additional_parameters",
            f"its {names} are not sd-scripts options sdtrain supports for "
            f"{SCRIPTS.get(trainer, trainer)}; the rest ({', '.join(parsed) or 'nothing'}) is imported",
            " ".join(unknown),
        )
    if parsed:
        shown = ", ".join(f"{k} = {out.values.get(k, SCHEMA[k].default)!r}" for k in parsed)
        out.notes.append(f"additional_parameters imported (they override the form's values): {shown}")


def _accelerate(data, out: KohyaImport, trainer: str, tab: str) -> None:
    """kohya_ss' AccelerateLaunch.run_cmd: the accelerate fields become ``accelerate launch`` arguments. A
    single-process run (1 process, 1 machine, no dynamo) needs none."""
    args: list[str] = []
    for key, kind in kf.ACCELERATE_FIELDS.items():
        if key not in data:
            continue
        value = data[key]
        out.map(key, "accelerate launch")
        if key == "num_cpu_threads_per_process":
            continue  # passed along when accelerate launch is needed anyway (below)
        if kind == "switch" and value:
            args.append(f"--{key}")
        elif kind == "count" and (as_number(value) or 0) > (1 if key != "main_process_port" else 0):
            args += [f"--{key}", str(int(float(value)))]
        elif kind == "text" and str(value or "").strip() and str(value).strip() != "no":
            if key == "dynamo_mode" and str(data.get("dynamo_backend") or "no") == "no":
                continue
            args += [f"--{key}", str(value).strip()]
        elif kind == "args":
            args += _kohya_split(value)
    if (
        args
        and "--num_cpu_threads_per_process" not in args
        and (as_number(data.get("num_cpu_threads_per_process")) or 0) > 0
    ):
        args += ["--num_cpu_threads_per_process", str(int(float(data["num_cpu_threads_per_process"])))]
    out.launch_args = args


#: kohya_ss' TI "template" choice -> the sd-scripts option it passes
TI_TEMPLATES = {"object template": "use_object_template", "style template": "use_style_template", "caption": None}


def _textual_inversion(data, out: KohyaImport, trainer: str, tab: str) -> None:
    """TI tab: ``template`` picks sd-scripts' object or style captions (or the caption files); token_string,
    init_word, num_vectors_per_token and weights are sd-scripts' own options and map as they are."""
    if "template" not in data:
        return
    choice = str(data.get("template") or "caption").strip().lower()
    if choice not in TI_TEMPLATES:
        out.skip("template", f"an unknown kohya_ss template {data['template']!r} (object template, style template "
                             "or caption); the caption files are used", data["template"])
        return
    option = TI_TEMPLATES[choice]
    if option and trainer == "ti":
        out.values[option] = True
    out.map("template", option or "template")


def _finetune(data, out: KohyaImport, trainer: str, tab: str) -> None:
    """Finetune tab: ``train_dir`` holds the metadata JSON (in_json), ``image_folder`` the pictures; the model
    goes to output_dir as usual (train_dir never replaces it)."""
    if tab != "finetune":
        return
    train_dir = str(data.get("train_dir") or "").strip()
    if "train_dir" in data:
        latent = data.get("use_latent_files", "Yes") == "Yes"
        name = data.get("latent_metadata_filename" if latent else "caption_metadata_filename") or (
            "meta_lat.json" if latent else "meta_cap.json"
        )
        if train_dir:
            out.values["in_json"] = f"{train_dir}/{name}"
        out.map("train_dir", "in_json")
        for key in ("use_latent_files", "latent_metadata_filename", "caption_metadata_filename"):
            if key in data:
                out.map(key, "in_json")
    if not _is_off(data.get("dataset_repeats")):
        out.values["dataset_repeats"] = int(float(data["dataset_repeats"]))
    if "dataset_repeats" in data:
        out.map("dataset_repeats", "dataset_repeats")
    _set(out, "enable_bucket", "enable_bucket", True)  # kohya_ss' Finetune tab always buckets
    if "train_text_encoder" in data:  # explicit: fine_tune.py's own default is False, train_db.py's True
        out.values["train_text_encoder"] = bool(data["train_text_encoder"])
        out.map("train_text_encoder", "train_text_encoder")


def _families(data, out: KohyaImport, trainer: str, tab: str) -> None:
    """Family checkboxes: SDXL / FLUX are detected from the model; the families we lack are refused."""
    sdxl = bool(data.get("sdxl") or data.get("sdxl_checkbox"))
    for key, name in kf.SDXL_FIELDS.items():
        if key in data:
            if sdxl:
                _set(out, key, name, True if data[key] else None)
            else:
                out.skip(key, "kohya_ss passes it only with the sdxl checkbox on (it is off)", None)
    flux = bool(data.get("flux1_checkbox"))
    for key, name in kf.FLUX_FIELDS.items():
        if key in data:
            if flux:
                _set(out, key, name, True if data[key] else None)
            else:
                out.skip(key, "kohya_ss passes it only with the Flux.1 checkbox on (it is off)", None)
    if "flux1_checkbox" in data:
        out.map("flux1_checkbox")
    for key, family in kf.FAMILY_CHECKBOXES.items():
        if key not in data:
            continue
        if data[key]:
            out.refused.append(f"{key} is on: the {family} family is not supported here.")
            out.skip(key, f"the {family} family is not supported here", data[key])
        else:
            out.map(key)
    if tab == "dreambooth" and "train_text_encoder" in data:
        if sdxl:  # explicit: sdxl_train.py's own default is False, train_db.py's True
            out.values["train_text_encoder"] = bool(data["train_text_encoder"])
            out.map("train_text_encoder", "train_text_encoder")
        else:
            out.skip(
                "train_text_encoder",
                "kohya_ss passes it only for SDXL; train_db.py always trains the "
                "text encoder of SD 1.x/2.x (unless stop_text_encoder_training)",
                None,
            )
    if tab == "ti" and trainer != "ti":
        out.refused.append(
            "this is a kohya_ss Textual Inversion config: import it for train_textual_inversion.py (trainer ti)."
        )


_HANDLERS: list[Callable[..., None]] = [
    _families,
    _network,
    _learning_rates,
    _warmup,
    _noise,
    _attention,
    _epochs,
    _prompts,
    _accelerate,
    _finetune,
    _textual_inversion,
]


def _check_family(data: dict[str, Any], out: KohyaImport) -> None:
    """kohya_ss's ``sdxl`` checkbox picks its SDXL scripts; ours detect the family from the model, so the
    checkbox is only compared with what the model is (SDXL or not: FLUX also has two text encoders) and a
    mismatch is noted."""
    if "sdxl" not in data:
        return
    from library.gui.family_hint import family_hint

    says_sdxl = not _is_off(data["sdxl"])
    model = out.values.get("pretrained_model_name_or_path")
    hint = family_hint(model if isinstance(model, str) else None)
    if hint.family is None:
        if says_sdxl:
            out.notes.append(
                f"Note: the kohya_ss config says sdxl = true; the model family is detected from "
                f"pretrained_model_name_or_path when training starts ({hint.text or 'no model given'})."
            )
        return
    if says_sdxl != hint.family.kohya_sdxl_checkbox:
        out.notes.append(
            f"Warning: the kohya_ss config says sdxl = {str(says_sdxl).lower()}, but the model {model} is "
            f"detected as {hint.text}; training uses the detected family."
        )


def read_kohya_json(path: str | Path) -> dict[str, Any]:
    """A kohya_ss GUI JSON file as a dict; raises ``ConfigError`` naming the file when it is not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise ConfigError(
            f"kohya_ss config {str(path)!r} does not exist. Give the path of a kohya_ss GUI config (.json)."
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"kohya_ss config {str(path)!r} could not be read as JSON: {exc}.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"kohya_ss config {str(path)!r} is not a JSON object of GUI fields.")
    return data


def import_kohya_file(path: str | Path, trainer: str | None = "network") -> KohyaImport:
    """Read a kohya_ss GUI JSON file and import it (``trainer=None``: the trainer its tab trains with)."""
    data = read_kohya_json(path)
    return import_kohya(data, trainer or guess_trainer(data))
