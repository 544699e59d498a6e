"""Bytes of optimizer state, measured by running the configured optimizer on small stand-in tensors.

Every optimizer keeps its own kind of state (AdamW two float32 moments, AdamW8bit two 8-bit moments plus
block scales, Prodigy four tensors, Adafactor row and column factors...), and dotted-name optimizers are
unknown in advance. Instead of a table, one optimizer step on CPU stand-ins with the trained parameters'
shapes gives the real figure; tensors too big to copy cheaply are measured on a 1024 x 1024 stand-in and
scaled per element (exact for element-wise state, a close figure for factored state).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections import Counter
from dataclasses import dataclass

import torch

from library.errors import UserError
from library.training import optimizers as optim_lib

#: stand-ins larger than this many elements are measured as a 1024 x 1024 matrix, scaled per element
MAX_STAND_IN = 1 << 20


@dataclass
class OptimizerState:
    bytes: int
    #: how the figure was obtained, for the report
    basis: str


def _stand_in(shape: tuple[int, ...], dtype: torch.dtype) -> tuple[torch.nn.Parameter, float]:
    numel = math.prod(shape)
    if numel <= MAX_STAND_IN:
        return torch.nn.Parameter(torch.randn(shape, dtype=dtype) * 0.01), 1.0
    return torch.nn.Parameter(torch.randn(1024, 1024, dtype=dtype) * 0.01), numel / MAX_STAND_IN


def _state_bytes(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> int:
    state = optimizer.state.get(param, {})
    return sum(v.numel() * v.element_size() for v in state.values() if torch.is_tensor(v))


def measure_optimizer_state(params: list[torch.Tensor], optimizer_name: str, args: list[str],
                            learning_rate: float) -> OptimizerState:
    """State bytes the optimizer will hold for ``params`` (any device, meta included; only shapes are read)."""
    shapes = Counter((tuple(p.shape), p.dtype) for p in params)
    if not shapes:
        return OptimizerState(0, "nothing to train")
    for dtype in dict.fromkeys([*(d for _, d in shapes), torch.float32]):
        try:
            return OptimizerState(_measure(shapes, optimizer_name, args, learning_rate, dtype),
                                  f"measured: one {optimizer_name} step on stand-ins of the trained shapes"
                                  + ("" if all(d == dtype for _, d in shapes) else f" in {str(dtype)[6:]}"))
        except UserError:
            raise  # a bad optimizer_args entry: the run would fail the same way
        except Exception:  # noqa: BLE001 - an optimizer that cannot run on the CPU: try float32, then assume
            continue
    numel = sum(n * math.prod(shape) for (shape, _), n in shapes.items())
    return OptimizerState(8 * numel, f"assumed two float32 moments (AdamW-like): {optimizer_name} does not "
                                     "run on this machine's CPU")


def _measure(shapes: Counter, optimizer_name: str, args: list[str], learning_rate: float,
             dtype: torch.dtype) -> int:
    stand_ins = [(_stand_in(shape, dtype), count) for (shape, _), count in shapes.items()]
    params = [p for (p, _), _ in stand_ins]
    quiet = logging.getLogger(optim_lib.__name__)
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # lr advice for D-Adaptation/Prodigy is for the run, not for the stand-ins
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optimizer = optim_lib.build_optimizer([{"params": params, "lr": learning_rate}], optimizer_name,
                                                  learning_rate, args)
            optim_lib.optimizer_train_mode(optimizer)
            for p in params:
                p.grad = torch.randn_like(p) * 0.01
            optimizer.step()
    finally:
        quiet.setLevel(level)
    inner = optim_lib.unwrap_optimizer(optimizer)
    return int(sum(_state_bytes(inner, p) * scale * count for (p, scale), count in stand_ins))
