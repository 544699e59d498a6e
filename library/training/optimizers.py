"""Optimizers by name (sd-scripts' ``optimizer_type``), each from its own package, and ``optimizer_args``.

One registry entry per optimizer: its name, its pip package (for the "pip install X" error) and a factory
``(params, lr, **kwargs) -> Optimizer`` that imports its package inside. Names are case-insensitive.
Anything else is sd-scripts' escape hatch: a dotted ``package.module.Class`` is imported, and a plain name
that ``torch.optim`` has (``SGD``, ``Adam`` ...) is taken from there.

Helpers the training loop calls: :func:`optimizer_train_mode` / :func:`optimizer_eval_mode` (schedule-free
optimizers keep two sets of weights and must be switched to eval mode around sampling and saving; no-ops for
the others) and :func:`effective_lrs` (d·lr of the D-Adaptation / Prodigy optimizers, the lr users expect to
see logged).
"""

from __future__ import annotations

import ast
import importlib
import logging
from collections.abc import Iterable
from typing import Any

import torch

from library.errors import ConfigError
from library.util.registry import Registry

logger = logging.getLogger(__name__)

OPTIMIZERS = Registry("optimizer")

#: sd-scripts' default momentum for the SGDNesterov optimizers when optimizer_args has none.
NESTEROV_MOMENTUM = 0.9


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
                f'option {option!r}: entry {entry!r} is not of the form key=value (e.g. "weight_decay=0.01").'
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


def _from_package(module: str, package: str, class_name: str, same_lr: bool = False, **defaults):
    """A factory for ``module.class_name`` (from pip ``package``), with ``defaults`` under the user's args.

    ``same_lr``: the optimizer refuses param groups with different lrs (it raises at its first step), so
    that is checked here, before any training.
    """

    def factory(params, lr: float, **kwargs):
        cls = getattr(_import_optional(module, package), class_name)
        if same_lr:
            _check_same_lr(class_name, params, lr)
        if package == "bitsandbytes":
            params = [dict(g, params=list(g["params"])) if isinstance(g, dict) else g for g in params]
            from library.training import bnb_cpu

            if bnb_cpu.uses_cpu(params):
                bnb_cpu.install()  # the 8-bit update slice by slice: no weight-sized temporaries
            return bnb_cpu.free_grads_as_applied(cls(params, lr=lr, **{**defaults, **kwargs}))
        return cls(params, lr=lr, **{**defaults, **kwargs})

    return factory


def _check_same_lr(name: str, params, lr: float) -> None:
    lrs = {g.get("lr", lr) for g in params if isinstance(g, dict)} - {0}
    if len(lrs) > 1:
        raise ConfigError(
            f"{name} needs one learning rate for all parameters, but the groups have {sorted(lrs)}: set "
            "unet_lr and text_encoder_lr to the same value (1.0 is usual) or leave them unset, and use no "
            "LoRA+ ratio (loraplus_*_lr_ratio) with this optimizer."
        )


#: optimizers that refuse param groups with different learning rates (checked when the config is read)
ONE_LR_OPTIMIZERS: set[str] = set()


def needs_one_lr(name: str) -> bool:
    """True when optimizer ``name`` allows only one learning rate for all parameter groups."""
    entry = OPTIMIZERS.find(name)
    return entry is not None and entry.name in ONE_LR_OPTIMIZERS


def _register(name: str, module: str, package: str | None, class_name: str, description: str, **defaults):
    if defaults.get("same_lr"):
        ONE_LR_OPTIMIZERS.add(name)
    factory = _from_package(module, package or module.split(".")[0], class_name, **defaults)
    OPTIMIZERS.register(name, package=package, description=description)(factory)


# --- torch -------------------------------------------------------------------------------------------
#: devices torch's fused AdamW kernel runs on (one kernel per weight instead of a dozen ops: on CPU the whole step
#: of a LoRA's 240 small weights takes 2 ms instead of 8; on CUDA it is faster than the default foreach path)
FUSED_ADAMW_DEVICES = ("cpu", "cuda")


def _adamw(params, lr: float, **kwargs):
    """torch.optim.AdamW, fused where every weight is a floating tensor on a device of
    ``FUSED_ADAMW_DEVICES``, unless ``optimizer_args`` choose (``fused`` / ``foreach``). The update is AdamW's
    (results differ from the unfused loop only in rounding)."""
    params = [dict(g, params=list(g["params"])) if isinstance(g, dict) else g for g in params]
    if "fused" not in kwargs and "foreach" not in kwargs and _fusable(params):
        kwargs["fused"] = True
    return torch.optim.AdamW(params, lr=lr, **kwargs)


def _fusable(params) -> bool:
    tensors = [p for group in params for p in (group["params"] if isinstance(group, dict) else [group])]
    return bool(tensors) and all(
        isinstance(t, torch.Tensor) and t.is_floating_point() and t.device.type in FUSED_ADAMW_DEVICES for t in tensors
    )


OPTIMIZERS.register("AdamW", package=None, description="torch.optim.AdamW (fused kernel on CPU and CUDA)")(_adamw)
_register(
    "SGDNesterov",
    "torch.optim",
    None,
    "SGD",
    "SGD with Nesterov momentum (momentum 0.9 by default)",
    momentum=NESTEROV_MOMENTUM,
    nesterov=True,
)

# --- bitsandbytes (8-bit and paged) ------------------------------------------------------------------
for _name, _cls, _extra in (
    ("AdamW8bit", "AdamW8bit", {}),
    ("PagedAdamW", "PagedAdamW", {}),
    ("PagedAdamW8bit", "PagedAdamW8bit", {}),
    ("PagedAdamW32bit", "PagedAdamW32bit", {}),
    ("Lion8bit", "Lion8bit", {}),
    ("PagedLion8bit", "PagedLion8bit", {}),
    ("SGDNesterov8bit", "SGD8bit", {"momentum": NESTEROV_MOMENTUM, "nesterov": True}),
):
    _register(_name, "bitsandbytes.optim", "bitsandbytes", _cls, f"bitsandbytes.optim.{_cls}", **_extra)

# --- lion-pytorch ------------------------------------------------------------------------------------
_register("Lion", "lion_pytorch", "lion-pytorch", "Lion", "Lion (Chen et al. 2023) from lion-pytorch")

# --- dadaptation (learning-rate free: use learning_rate = 1.0) ---------------------------------------
for _name, _module, _cls, _same_lr in (
    ("DAdaptation", "dadaptation.experimental", "DAdaptAdamPreprint", True),
    ("DAdaptAdamPreprint", "dadaptation.experimental", "DAdaptAdamPreprint", True),
    ("DAdaptAdaGrad", "dadaptation", "DAdaptAdaGrad", False),
    ("DAdaptAdam", "dadaptation", "DAdaptAdam", True),
    ("DAdaptAdan", "dadaptation", "DAdaptAdan", False),
    ("DAdaptAdanIP", "dadaptation.experimental", "DAdaptAdanIP", False),
    ("DAdaptLion", "dadaptation", "DAdaptLion", True),
    ("DAdaptSGD", "dadaptation", "DAdaptSGD", True),
):
    _register(
        _name,
        _module,
        "dadaptation",
        _cls,
        f"D-Adaptation {_cls} (learning_rate 1.0 recommended)",
        same_lr=_same_lr,
    )

# --- prodigyopt --------------------------------------------------------------------------------------
_register(
    "Prodigy", "prodigyopt", "prodigyopt", "Prodigy", "Prodigy (learning_rate 1.0 recommended)", same_lr=True
)

# --- schedulefree (no lr schedule; train/eval mode) --------------------------------------------------
for _cls in ("RAdamScheduleFree", "AdamWScheduleFree", "SGDScheduleFree"):
    _register(_cls, "schedulefree", "schedulefree", _cls, f"schedule-free {_cls[:-12]} (no lr scheduler)")


@OPTIMIZERS.register("AdaFactor", package="transformers", description="transformers' Adafactor")
def _adafactor(params, lr: float, **kwargs):
    """Adafactor (Shazeer & Stern 2018). ``relative_step`` (default True, as sd-scripts) computes its own lr.

    With relative_step the groups' lrs are dropped (transformers refuses a manual lr) and ``lr`` is kept as
    the initial lr the ``adafactor`` schedule reports until the first step.
    """
    module = _import_optional("transformers.optimization", "transformers")
    kwargs.setdefault("relative_step", True)
    if kwargs.get("warmup_init") and not kwargs["relative_step"]:
        logger.warning("Adafactor: warmup_init needs relative_step; relative_step=True is used")
        kwargs["relative_step"] = True
    if not kwargs["relative_step"]:
        return module.Adafactor(params, lr=lr, **kwargs)
    params = list(params)
    group_lrs = [g.pop("lr", None) for g in params if isinstance(g, dict)]
    if any(x is not None and x != lr for x in group_lrs):
        logger.warning(
            "Adafactor with relative_step=True computes its own lr: unet_lr and text_encoder_lr are ignored"
        )
    logger.info(
        "Adafactor with relative_step=True: learning_rate %s is only the initial lr of the adafactor "
        "schedule",
        lr,
    )
    optimizer = module.Adafactor(params, lr=None, **kwargs)
    optimizer.initial_lr_for_schedule = lr
    return optimizer


def check_optimizer_name(name: str) -> str | None:
    """None if ``name`` is registered, a dotted ``package.module.Class`` or in ``torch.optim``; else the problem."""
    if not name or OPTIMIZERS.find(name) or "." in name or _torch_optim_class(name) is not None:
        return None
    return OPTIMIZERS.unknown_message(name)


def _torch_optim_class(name: str):
    cls = getattr(torch.optim, name, None)
    return cls if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer) else None


def resolve_optimizer_name(optimizer_type: str, use_8bit_adam: bool, use_lion_optimizer: bool = False) -> str:
    """The canonical optimizer name, honouring sd-scripts' legacy ``use_8bit_adam`` / ``use_lion_optimizer``.

    An empty ``optimizer_type`` is AdamW (sd-scripts' default).
    """
    if use_8bit_adam and use_lion_optimizer:
        raise ConfigError(
            "'use_8bit_adam' and 'use_lion_optimizer' are both set: keep one (or set "
            'optimizer_type = "AdamW8bit" or "Lion" instead).'
        )
    if use_8bit_adam:
        return "AdamW8bit"
    if use_lion_optimizer:
        return "Lion"
    if not optimizer_type:
        return "AdamW"
    entry = OPTIMIZERS.find(optimizer_type)
    return entry.name if entry else optimizer_type


def _factory_for(name: str):
    entry = OPTIMIZERS.find(name)
    if entry is not None:
        return entry.factory
    if "." not in name:
        cls = _torch_optim_class(name)
        if cls is None:
            raise ConfigError(f"option 'optimizer_type': {OPTIMIZERS.unknown_message(name)}")
        return cls
    module_name, _, class_name = name.rpartition(".")
    module = _import_optional(module_name, module_name.split(".")[0])
    factory = getattr(module, class_name, None)
    if factory is None:
        raise ConfigError(f"optimizer_type {name!r}: module {module_name!r} has no class {class_name!r}.")
    return factory


def build_optimizer(param_groups: list[dict], name: str, lr: float, args: list[str]) -> torch.optim.Optimizer:
    """Create the optimizer ``name`` over ``param_groups`` with ``optimizer_args`` strings ``args``.

    Schedule-free optimizers are returned in train mode.
    """
    kwargs = parse_key_value_args(args, "optimizer_args")
    factory = _factory_for(name)
    _warn_adaptive(name, lr, param_groups)
    try:
        optimizer = factory(param_groups, lr=lr, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"optimizer {name!r} rejected optimizer_args {args!r}: {exc}") from None
    if is_schedule_free(optimizer):
        optimizer.train()
    logger.info("optimizer: %s %s", name, kwargs or "")
    return optimizer


def _warn_adaptive(name: str, lr: float, param_groups: list[dict]) -> None:
    """sd-scripts' advice for the learning-rate free optimizers (D-Adaptation, Prodigy)."""
    lower = name.lower()
    if not (lower.startswith("dadapt") or lower == "prodigy" or lower.endswith(".prodigy")):
        return
    lrs = [g.get("lr", lr) for g in param_groups if isinstance(g, dict)] or [lr]
    if min(lrs) <= 0.1:
        logger.warning(
            "%s adapts the learning rate itself: learning_rate = 1.0 is recommended (now %s)", name, min(lrs)
        )
    if len(set(lrs)) > 1:
        logger.warning(
            "%s with different learning rates per group (unet_lr / text_encoder_lr %s): they scale "
            "the adapted step; the usual setting is 1.0 for all",
            name,
            sorted(set(lrs)),
        )


def unwrap_optimizer(optimizer) -> torch.optim.Optimizer:
    """The optimizer inside accelerate's ``AcceleratedOptimizer`` (or the optimizer itself)."""
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


def is_schedule_free(optimizer) -> bool:
    """Whether ``optimizer`` is schedule-free (has train()/eval() modes, like the ``schedulefree`` package)."""
    inner = unwrap_optimizer(optimizer)
    return callable(getattr(inner, "train", None)) and callable(getattr(inner, "eval", None))


def optimizer_train_mode(optimizer) -> None:
    """Switch a schedule-free optimizer (and so the weights) to training mode; no-op for the others."""
    if is_schedule_free(optimizer):
        unwrap_optimizer(optimizer).train()


def optimizer_eval_mode(optimizer) -> None:
    """Switch a schedule-free optimizer to eval mode (weights = the averaged x) before sampling or saving."""
    if is_schedule_free(optimizer):
        unwrap_optimizer(optimizer).eval()


def effective_lrs(optimizer) -> list[float] | None:
    """The learning rate each param group really uses, for optimizers that adapt it; None for the others.

    D-Adaptation and Prodigy keep their estimate ``d`` in every group: the step is ``d · lr``. Adafactor with
    relative_step has no group lr; its lr is computed from the step count and the weights' RMS
    (transformers' ``Adafactor._get_lr``), so 0.0 is reported before the first step. Optimizers that apply
    the scheduled ``lr`` as it is return None (the scheduler's lrs are the effective ones).
    """
    inner = unwrap_optimizer(optimizer)
    groups = inner.param_groups
    if not any("d" in g or g.get("lr") is None for g in groups):
        return None
    lrs = []
    for group in groups:
        lr = group.get("lr")
        if lr is None:
            lr = _adafactor_lr(inner, group)
        lrs.append(float(group["d"] * lr) if "d" in group else float(lr))
    return lrs


def _adafactor_lr(optimizer, group: dict) -> float:
    get_lr = getattr(type(optimizer), "_get_lr", None)
    for p in group["params"]:
        state = optimizer.state.get(p)
        if state and get_lr is not None:
            return float(get_lr(group, state))
    return 0.0
