"""``fused_backward_pass`` (sd-scripts' SDXL fine-tune option) and ``blockwise_fused_optimizers`` (its FLUX
one): each parameter is updated the moment its gradient is complete, and the gradient is freed right after,
so a step never holds every gradient at once.

sd-scripts' way to fit an SDXL full fine-tune in 24 GB (with AdaFactor, whose update of a parameter depends
on that parameter alone, so stepping one parameter at a time gives exactly the update of one whole step).
With ``max_grad_norm`` each gradient is clipped on its own, as sd-scripts does (there is no global norm
when gradients never coexist).
"""

from __future__ import annotations

import torch

from library.errors import ConfigError

#: optimizers whose per-parameter update depends only on that parameter's gradient and state (sd-scripts'
#: fused_backward_pass takes AdaFactor only)
FUSABLE_OPTIMIZERS = ("adafactor",)
#: ``blockwise_fused_optimizers`` (sd-scripts' FLUX fine-tune: one optimizer per block, stepped when the
#: block's gradients are ready): any optimizer whose update of a weight depends on that weight alone, so that
#: stepping each weight as soon as its gradient is ready (what this trainer does, finer than per block, the
#: same update) equals one whole step. Not the learning-rate-free ones (D-Adaptation, Prodigy: one estimate
#: over all weights) nor schedule-free ones (their train/eval swap covers every weight together).
PER_WEIGHT_OPTIMIZERS = (
    "adafactor", "adamw", "adamw8bit", "pagedadamw", "pagedadamw8bit", "pagedadamw32bit", "lion", "lion8bit",
    "pagedlion8bit", "sgdnesterov", "sgdnesterov8bit", "torch.optim.adamw", "torch.optim.adam", "torch.optim.sgd",
)


def fused_backward_wanted(config) -> bool:
    """``fused_backward_pass`` or ``blockwise_fused_optimizers`` (train_db.py options)."""
    return bool(getattr(config, "fused_backward_pass", False) or getattr(config, "blockwise_fused_optimizers", False))


def check_fused_backward(config, optimizer_name: str, num_processes: int) -> None:
    """The settings fused_backward_pass / blockwise_fused_optimizers cannot work with, as a clear error."""
    problems = []
    blockwise = getattr(config, "blockwise_fused_optimizers", False)
    option = "blockwise_fused_optimizers" if blockwise else "fused_backward_pass"
    allowed = PER_WEIGHT_OPTIMIZERS if blockwise else FUSABLE_OPTIMIZERS
    if optimizer_name.lower() not in allowed:
        problems.append(
            f"optimizer_type is {optimizer_name!r} (blockwise_fused_optimizers works with AdamW, AdamW8bit, Lion, "
            "SGDNesterov, AdaFactor and their paged / 8-bit forms)" if blockwise else
            f"optimizer_type is {optimizer_name!r} (it works with AdaFactor; blockwise_fused_optimizers also "
            "takes AdamW, AdamW8bit and Lion)")
    if config.gradient_accumulation_steps > 1:
        problems.append(f"gradient_accumulation_steps is {config.gradient_accumulation_steps} (it needs 1)")
    if config.mixed_precision == "fp16":
        problems.append('mixed_precision is "fp16" (the loss scaler needs all gradients: use bf16 / full_bf16)')
    if num_processes > 1:
        problems.append(f"{num_processes} processes (gradients are averaged across processes after backward)")
    if problems:
        raise ConfigError(f"{option} cannot be used here: " + "; ".join(problems) + ".")


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
