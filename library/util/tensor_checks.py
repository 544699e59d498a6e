"""Checks that keep NaN and infinity out of what the tools read and write: tensors and user numbers."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch

from library.errors import ConfigError, ModelLoadError


def nonfinite_keys(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Keys of the floating tensors in ``tensors`` that hold a NaN or an infinity, in order."""
    return [
        key
        for key, value in tensors.items()
        if isinstance(value, torch.Tensor)
        and (value.is_floating_point() or value.is_complex())
        and value.numel()
        and not bool(torch.isfinite(value).all())
    ]


def examples(names: Iterable[str], n: int = 3) -> str:
    """ "a, b, c" or "a, b, c and 7 more"."""
    names = list(names)
    text = ", ".join(names[:n])
    return text + (f" and {len(names) - n} more" if len(names) > n else "")


def require_finite_tensors(tensors: Mapping[str, torch.Tensor], what: str, fix: str) -> None:
    """Raise ModelLoadError naming the first keys of ``tensors`` holding NaN/inf.

    ``what`` names the tensors ("/x/lora.safetensors", "the merged model"); ``fix`` says what to do.
    """
    bad = nonfinite_keys(tensors)
    if bad:
        raise ModelLoadError(
            f"{what} holds NaN or infinite values in {len(bad)} tensors ({examples(bad)}). {fix}"
        )


def require_finite_number(value, option: str, hint: str = "") -> float:
    """``value`` as a float; ConfigError naming ``option`` when it is not a finite number."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise ConfigError(f"{option} must be a finite number, got {value!r}.{' ' + hint if hint else ''}")
    return number
