"""Sample prompt files in sd-scripts' formats: .txt lines with inline options, .toml and .json lists.

A .txt line is ``prompt text --n negative --w 512 --h 768 --s 30 --l 7.5 --d 42 --ss euler_a --am 0.6``;
lines starting with ``#`` and empty lines are skipped. The file is re-read at every sampling event, so edits
made during training apply to the next samples. ``--am`` (sd-scripts' gen_img name) renders the prompt with
the LoRA at that weight, or at each of several (``--am 0.4,0.8``); prompt texts take the webui's attention
and prompt-editing syntax (:mod:`library.text`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

import toml

from library.errors import UserError


@dataclass(frozen=True)
class SamplePrompt:
    prompt: str
    negative_prompt: str = ""
    width: int | None = None
    height: int | None = None
    steps: int = 30
    scale: float = 7.5
    seed: int | None = None
    sampler: str | None = None
    #: the embedded guidance of a guidance-distilled model (FLUX.1 dev, sd-scripts' --g); None: the family's
    guidance: float | None = None
    #: the LoRA weights to render this prompt at (``--am``); None: the run's ``sample_lora_weights``
    lora_weights: tuple[float, ...] | None = None


def _weights(value) -> tuple[float, ...]:
    """``0.6`` / ``"0.4,0.8"`` / ``[0.4, 0.8]`` -> (0.4, 0.8); ValueError for anything else."""
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, (list, tuple)) else [value]
    if not items or isinstance(value, bool) or any(isinstance(v, bool) for v in items):
        raise ValueError(value)
    weights = tuple(float(v) for v in items)
    if any(w != w or abs(w) == float("inf") for w in weights):
        raise ValueError(value)
    return weights


_weights.__name__ = "number or comma-separated list of numbers"


def lora_weights_problem(values) -> str | None:
    """The problem with a ``sample_lora_weights`` list, or None (an empty list is "off")."""
    if not values:
        return None
    try:
        _weights(list(values))
    except (TypeError, ValueError):
        return f"{list(values)!r} must be numbers, e.g. [0.6, 1.0] (the LoRA weights each sample is rendered at)."
    return None


#: inline option -> (field, converter)
_INLINE = {
    "n": ("negative_prompt", str),
    "w": ("width", int),
    "h": ("height", int),
    "s": ("steps", int),
    "l": ("scale", float),
    "d": ("seed", int),
    "ss": ("sampler", str),
    "g": ("guidance", float),
    "am": ("lora_weights", _weights),
}

#: .toml / .json keys (sd-scripts' names) -> field
_KEYS = {
    "prompt": "prompt", "negative_prompt": "negative_prompt", "width": "width", "height": "height",
    "sample_steps": "steps", "steps": "steps", "scale": "scale", "cfg_scale": "scale", "seed": "seed",
    "sample_sampler": "sampler", "sampler": "sampler", "guidance_scale": "guidance",
    "network_multiplier": "lora_weights", "am": "lora_weights",
}


class PromptFileError(UserError):
    """A sample prompt file that cannot be read."""


def parse_prompt_line(line: str, where: str) -> SamplePrompt | None:
    """One .txt line -> a SamplePrompt (None for comments and blank lines)."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    parts = re.split(r"\s--(?=\w)", text)
    values: dict = {"prompt": parts[0].strip()}
    for part in parts[1:]:
        key, _, value = part.partition(" ")
        if key not in _INLINE:
            raise PromptFileError(
                f"{where}: unknown option --{key}. Sample prompt options are --n (negative prompt), --w, --h, "
                f"--s (steps), --l (CFG scale), --g (embedded guidance, FLUX.1 dev), --d (seed), --ss (sampler) "
                f"and --am (LoRA weight)."
            )
        field, convert = _INLINE[key]
        try:
            values[field] = convert(value.strip())
        except ValueError:
            raise PromptFileError(f"{where}: --{key} {value.strip()!r} is not a valid {convert.__name__}.") from None
    return _checked(SamplePrompt(**values), where)


def _checked(prompt: SamplePrompt, where: str) -> SamplePrompt:
    steps = min(max(prompt.steps, 1), 1000)
    for name in ("width", "height"):
        size = getattr(prompt, name)
        if size is not None and (size < 64 or size % 8):
            raise PromptFileError(f"{where}: {name} {size} must be at least 64 and a multiple of 8.")
    return replace(prompt, steps=steps)


def _from_mapping(entry: dict, where: str, defaults: dict | None = None) -> SamplePrompt:
    values = {}
    for key, value in {**(defaults or {}), **entry}.items():
        if key not in _KEYS:
            raise PromptFileError(f"{where}: unknown key {key!r}; known keys: {', '.join(sorted(_KEYS))}.")
        values[_KEYS[key]] = value
    if values.get("lora_weights") is not None:
        try:
            values["lora_weights"] = _weights(values["lora_weights"])
        except (TypeError, ValueError):
            raise PromptFileError(f"{where}: LoRA weight {values['lora_weights']!r} is not a number or a list of "
                                  f"numbers.") from None
    if not values.get("prompt"):
        raise PromptFileError(f"{where}: an entry has no 'prompt'.")
    try:
        return _checked(SamplePrompt(**values), where)
    except TypeError as exc:
        raise PromptFileError(f"{where}: {exc}") from None


def read_prompts(path: str | Path) -> list[SamplePrompt]:
    """All prompts of a .txt, .toml or .json prompt file."""
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"sample_prompts file {str(path)!r} does not exist.")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    if suffix == ".toml":
        data = toml.loads(text).get("prompt", {})
        defaults = {k: v for k, v in data.items() if k != "subset"}
        return [_from_mapping(e, f"{path}: [[prompt.subset]] {i + 1}", defaults)
                for i, e in enumerate(data.get("subset", []))]
    if suffix == ".json":
        data = json.loads(text)
        return [parse_prompt_line(e, f"{path}: entry {i + 1}") if isinstance(e, str)
                else _from_mapping(e, f"{path}: entry {i + 1}") for i, e in enumerate(data)]
    prompts = [parse_prompt_line(line, f"{path}: line {i + 1}") for i, line in enumerate(text.splitlines())]
    return [p for p in prompts if p is not None]
