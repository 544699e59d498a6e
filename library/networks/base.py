"""Shared base for network modules (LoRA now; LoHa / LoKr later) that wrap one original layer.

A module keeps a reference to the original ``nn.Linear`` / ``nn.Conv2d`` (not registered as a
child, so the network's state dict holds only its own weights), replaces the layer's ``forward``
on :meth:`apply_to` and restores it on :meth:`remove`. The original weights are never changed.
Subclasses implement :meth:`delta_forward` (the added output) and :meth:`delta_weight` (the same
change as a weight, for merging and tests).
"""

from __future__ import annotations

import abc

import torch
from torch import nn


class NetworkModule(nn.Module, abc.ABC):
    """One trainable adapter around one frozen original layer.

    forward(x) = org(x) + multiplier · delta_forward(x); in train mode the whole adapter path is
    skipped with probability ``module_dropout`` (sd-scripts' module dropout).
    """

    def __init__(
        self,
        lora_name: str,
        org_module: nn.Module,
        multiplier: float = 1.0,
        module_dropout: float | None = None,
    ):
        super().__init__()
        self.lora_name = lora_name
        self._org_holder = [org_module]  # a list so nn.Module does not register it as a child
        self.multiplier = multiplier
        self.module_dropout = module_dropout
        self._org_forward = None
        self._had_instance_forward = False

    @property
    def org_module(self) -> nn.Module:
        return self._org_holder[0]

    @property
    def is_applied(self) -> bool:
        return self._org_forward is not None

    def apply_to(self) -> None:
        """Route the original layer's forward through this module (idempotent)."""
        if self.is_applied:
            return
        org = self.org_module
        self._had_instance_forward = "forward" in org.__dict__
        self._org_forward = org.forward
        org.forward = self.forward

    def remove(self) -> None:
        """Restore the original layer's own forward (idempotent)."""
        if not self.is_applied:
            return
        org = self.org_module
        if self._had_instance_forward:
            org.forward = self._org_forward
        else:
            del org.forward
        self._org_forward = None

    def _skip_delta(self) -> bool:
        if self.multiplier == 0:
            return True
        if self.training and self.module_dropout and torch.rand(()) < self.module_dropout:
            return True
        return False

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self._org_forward is None:
            raise RuntimeError(f"{self.lora_name}: call apply_to() before running the model")
        out = self._org_forward(x, *args, **kwargs)
        if self._skip_delta():
            return out
        delta, factor = self.delta_and_factor(x)
        # one fused op: out + delta · factor · multiplier (no separate products on activation-sized tensors)
        return torch.add(out, delta.to(out.dtype), alpha=factor * self.multiplier)

    def delta_and_factor(self, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        """The added output as (tensor, scalar factor) with ``delta_forward(x) == tensor * factor``, so the
        factor can be applied inside the final addition; modules that cannot split it return factor 1."""
        return self.delta_forward(x), 1.0

    def on_weights_loaded(self) -> None:
        """Hook called after weights (and buffers such as alpha) were copied in from a file."""

    @abc.abstractmethod
    def delta_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The adapter's added output for input ``x`` (before the multiplier)."""

    @abc.abstractmethod
    def delta_weight(self) -> torch.Tensor:
        """The change of the original weight this adapter stands for (float32, before the multiplier)."""
