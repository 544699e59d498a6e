"""The GUI's error boundary: a handler that hits an OS error (read-only, disk full, permission, a folder
where a file should be) or a user error shows the one-paragraph message of the command line beside its
button, never a Gradio "Error" toast or a traceback. Applied where handlers are registered (:func:`bind`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any

import gradio as gr

from library.cli import os_error_message
from library.errors import UserError

logger = logging.getLogger(__name__)

#: attribute set on wrapped handlers (tests check that every registered handler has it)
GUARDED = "__gui_guarded__"


def error_text(exc: BaseException) -> str:
    """The paragraph shown for ``exc`` (an ``OSError`` or a ``UserError``), after a ❌."""
    return f"❌ {os_error_message(exc) if isinstance(exc, OSError) else exc}"


def guarded(handler: Callable, outputs: int, message_at: int = 0) -> Callable:
    """``handler`` that returns the error paragraph in output ``message_at`` (the others unchanged) instead
    of raising an ``OSError`` or ``UserError``. ``outputs``: how many components the event updates."""

    @functools.wraps(handler)  # keeps the signature: gradio still injects gr.Progress() parameters
    def wrapper(*args: Any, **kwargs: Any):
        try:
            return handler(*args, **kwargs)
        except (OSError, UserError) as exc:
            logger.warning("%s: %s", getattr(handler, "__name__", "handler"), exc)
            text = error_text(exc)
        if outputs <= 1:
            return text
        return [text if i == message_at else gr.skip() for i in range(outputs)]

    setattr(wrapper, GUARDED, True)
    return wrapper


def bind(event: Callable, handler: Callable, inputs: Any, outputs: Sequence | None, **kwargs: Any):
    """Register ``handler`` on ``event`` (e.g. ``button.click``) behind :func:`guarded`; the message goes
    to the first output."""
    return event(guarded(handler, len(outputs or [])), inputs, outputs, **kwargs)
