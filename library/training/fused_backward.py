"""``fused_backward_pass`` (sd-scripts' SDXL fine-tune option): each parameter is updated the moment its
gradient is complete, and the gradient is freed right after, so a step never holds every gradient at once.

sd-scripts' way to fit an SDXL full fine-tune in 24 GB (with AdaFactor, whose update of a parameter depends
on that parameter alone, so stepping one parameter at a time gives exactly the update of one whole step).
With ``max_grad_norm`` each gradient is clipped on its own, as sd-scripts does (there is no global norm
when gradients never coexist).
"""

from __future__ import annotations

import torch

from library.errors import ConfigError

#: optimizers whose per-parameter update depends only on that parameter's gradient and state
FUSABLE_OPTIMIZERS = ("adafactor",)


def check_fused_backward(config, optimizer_name: str, num_processes: int) -> None:
    """The settings fused_backward_pass cannot work with, as a clear error before training."""
    problems = []
    if optimizer_name.lower() not in FUSABLE_OPTIMIZERS:
        problems.append(f"optimizer_type is {optimizer_name!r} (it works with AdaFactor)")
    if config.gradient_accumulation_steps > 1:
        problems.append(f"gradient_accumulation_steps is {config.gradient_accumulation_steps} (it needs 1)")
    if config.mixed_precision == "fp16":
        problems.append('mixed_precision is "fp16" (the loss scaler needs all gradients: use bf16 / full_bf16)')
    if num_processes > 1:
        problems.append(f"{num_processes} processes (gradients are averaged across processes after backward)")
    if problems:
        raise ConfigError("fused_backward_pass cannot be used here: " + "; ".join(problems) + ".")


def step_one(optimizer: torch.optim.Optimizer, param: torch.nn.Parameter, group: dict) -> None:
    """Run ``optimizer.step()`` for ``param`` alone (its group temporarily holds only it), then free its grad."""
    params = group["params"]
    group["params"] = [param]
    try:
        optimizer.step()
    finally:
        group["params"] = params
    param.grad = None


def install_fused_backward(optimizer: torch.optim.Optimizer, max_grad_norm: float | None) -> list:
    """Hook every trained parameter of ``optimizer`` (the unwrapped one) so backward steps it; returns the
    hook handles (``handle.remove()`` undoes it)."""
    handles = []
    for group in optimizer.param_groups:
        for param in group["params"]:
            def hook(tensor, group=group):
                if max_grad_norm:
                    torch.nn.utils.clip_grad_norm_([tensor], max_grad_norm)
                step_one(optimizer, tensor, group)

            handles.append(param.register_post_accumulate_grad_hook(hook))
    return handles
