"""Optimizers by name (sd-scripts' ``optimizer_type``), each from its own package, and ``optimizer_args``."""

from __future__ import annotations

import ast
import importlib
import logging
from typing import Any, Iterable

import torch

from library.errors import ConfigError
from library.util.registry import Registry

logger = logging.getLogger(__name__)

OPTIMIZERS = Registry("optimizer")


def parse_key_value_args(entries: Iterable[str], option: str) -> dict[str, Any]:
    """Parse ``["key=value", ...]``: values as Python literals, "a,b" as a tuple, else the raw string.

    >>> parse_key_value_args(["weight_decay=0.01", "betas=0.9,0.99", "decouple=True"], "optimizer_args")
    {'weight_decay': 0.01, 'betas': (0.9, 0.99), 'decouple': True}
    """
    out: dict[str, Any] = {}
    for entry in entries:
        key, sep, text = entry.partition("=")
        key, text = key.strip(), text.strip()
        if not sep or not key or not text:
            raise ConfigError(
                f"option {option!r}: entry {entry!r} is not of the form key=value (e.g. \"weight_decay=0.01\")."
            )
        out[key] = _literal(text)
    return out


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    if "," in text:
        return tuple(_literal(part.strip()) for part in text.split(",") if part.strip())
    return text


def _import_optional(module: str, package: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(
            f"this optimizer needs the package {package!r}, which is not installed ({exc}). "
            f"Install it with: pip install {package}"
        ) from None


@OPTIMIZERS.register("AdamW", description="torch.optim.AdamW")
def _adamw(params, lr: float, **kwargs):
    return torch.optim.AdamW(params, lr=lr, **kwargs)


@OPTIMIZERS.register("AdamW8bit", package="bitsandbytes", description="8-bit AdamW from bitsandbytes")
def _adamw8bit(params, lr: float, **kwargs):
    bnb = _import_optional("bitsandbytes.optim", "bitsandbytes")
    return bnb.AdamW8bit(params, lr=lr, **kwargs)


def check_optimizer_name(name: str) -> str | None:
    """None if ``name`` is a registered optimizer or a dotted ``package.module.Class``; else the problem."""
    if OPTIMIZERS.find(name) or "." in name:
        return None
    return OPTIMIZERS.unknown_message(name)


def resolve_optimizer_name(optimizer_type: str, use_8bit_adam: bool) -> str:
    """The canonical optimizer name, honouring sd-scripts' legacy ``use_8bit_adam`` flag."""
    if use_8bit_adam:
        return "AdamW8bit"
    entry = OPTIMIZERS.find(optimizer_type)
    return entry.name if entry else optimizer_type


def build_optimizer(param_groups: list[dict], name: str, lr: float, args: list[str]) -> torch.optim.Optimizer:
    """Create the optimizer ``name`` over ``param_groups`` with ``optimizer_args`` strings ``args``."""
    kwargs = parse_key_value_args(args, "optimizer_args")
    entry = OPTIMIZERS.find(name)
    if entry is not None:
        factory = entry.factory
    else:
        module_name, _, class_name = name.rpartition(".")
        module = _import_optional(module_name, module_name.split(".")[0])
        factory = getattr(module, class_name, None)
        if factory is None:
            raise ConfigError(f"optimizer_type {name!r}: module {module_name!r} has no class {class_name!r}.")
    try:
        optimizer = factory(param_groups, lr=lr, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"optimizer {name!r} rejected optimizer_args {args!r}: {exc}") from None
    logger.info("optimizer: %s %s", name, kwargs or "")
    return optimizer
