"""The VLM backend registry and what every backend is given.

A backend turns a batch of RGB pictures and one instruction into one caption per picture. An entry in
``BACKENDS`` is a factory ``(settings) -> Backend``; it imports its optional packages (transformers, httpx)
inside, so the registry (and the CLI's argument checks) load without them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from PIL import Image

from library.util.registry import Registry

BACKENDS = Registry("VLM backend")

#: ``--dtype`` names -> torch dtype attribute names ("auto": bfloat16 on a GPU that has it, else float32)
DTYPES = {
    "auto": None,
    "fp32": "float32",
    "float32": "float32",
    "fp16": "float16",
    "float16": "float16",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
}


@dataclass(frozen=True)
class VlmSettings:
    """How to reach the model. ``model_id``: hub id or local folder (transformers backends); ``api_base``,
    ``api_model``, ``api_key_env`` (the NAME of the variable that holds the key) and ``timeout`` (seconds):
    the OpenAI-compatible endpoint; ``task``: Florence-2's caption task; ``temperature`` 0 is greedy."""

    model_id: str | None = None
    device: str | None = None
    dtype: str = "auto"
    max_new_tokens: int = 256
    temperature: float = 0.0
    task: str = "<DETAILED_CAPTION>"
    api_base: str | None = None
    api_model: str | None = None
    api_key_env: str | None = None
    timeout: float = 120.0


class Backend(Protocol):
    """One loaded model or endpoint."""

    #: True when the backend ignores the instruction (Florence-2 uses its task token instead)
    fixed_prompt: bool

    def caption(self, images: list[Image.Image], prompt: str) -> list[str | Exception]:
        """One caption per picture, or the exception of a picture that failed (the others still count)."""
        ...


@dataclass(frozen=True)
class BackendInfo:
    """What the CLI and GUI show for a backend: its default model and whether it is a remote endpoint."""

    default_model: str | None
    remote: bool = False


#: backend name -> its defaults (filled in by each backend module next to its registration)
BACKEND_INFO: dict[str, BackendInfo] = {}


def register(
    name: str, package: str | None, description: str, default_model: str | None, remote: bool = False
):
    """Register a backend factory under ``name`` with the model it loads when ``--model_id`` is not given."""
    BACKEND_INFO[name] = BackendInfo(default_model, remote)
    return BACKENDS.register(name, package=package, description=description)


def backend_names() -> list[str]:
    """Every registered backend (the modules register on import)."""
    from library.tools.dataset.vlm import backends  # noqa: F401 - registers them

    return BACKENDS.names()


def backend_info(name: str) -> BackendInfo | None:
    """The defaults of backend ``name`` (None for an unknown name)."""
    entry = BACKENDS.find(name) if backend_names() else None
    return BACKEND_INFO.get(entry.name) if entry else None
