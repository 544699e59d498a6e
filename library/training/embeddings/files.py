"""Embedding files as the webui, ComfyUI and diffusers load them.

- SD 1.x / 2.x ``.safetensors``: ``{"emb_params": (n, D)}`` (sd-scripts' layout);
- SDXL ``.safetensors``: ``{"clip_l": (n, 768), "clip_g": (n, 1280)}``;
- ``.pt`` / ``.ckpt`` (``save_model_as = "pt"``): the webui's own layout ``{"string_to_token": {"*": 265},
  "string_to_param": {"*": (n, D)}, "name": ..., "step": ...}`` for SD, ``{"clip_l", "clip_g"}`` for SDXL — plain
  tensors, numbers and strings, so ``torch.load(weights_only=True)`` reads them;
- inside a LoRA file (pivotal tuning), the webui's bundled embeddings: ``bundle_emb.<token>.string_to_param.*``
  (SD) or ``bundle_emb.<token>.clip_l`` / ``.clip_g`` (SDXL).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from library.errors import ModelLoadError
from library.util.atomic import atomic_path

BUNDLE_PREFIX = "bundle_emb"
#: the webui writes this token id into string_to_token (a placeholder; it reads the vectors only)
WEBUI_PLACEHOLDER_ID = 265


def file_tensors(embedding_keys: dict[str, str], rows: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{file key: (n, D) tensor} from {text part: rows} (``emb_params`` or ``clip_l`` / ``clip_g``)."""
    return {embedding_keys[part]: tensor for part, tensor in rows.items()}


def save_embedding(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str], name: str,
                   step: int) -> Path:
    """Write an embedding file (atomic); the suffix chooses safetensors or the webui's ``.pt`` layout."""
    from library.util.safetensors_io import save_safetensors

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        return save_safetensors(path, tensors, metadata, add_hashes=False)
    if list(tensors) == ["emb_params"]:
        data = {"string_to_token": {"*": WEBUI_PLACEHOLDER_ID}, "string_to_param": {"*": tensors["emb_params"]},
                "name": name, "step": int(step)}
    else:
        data = dict(tensors)
    with atomic_path(path) as tmp:
        torch.save(data, tmp)
    return path


def read_embedding(path: str | Path, embedding_keys: dict[str, str]) -> dict[str, torch.Tensor]:
    """{text part: (n, D) float32} from an embedding file of any layout above (or diffusers' ``{token: (D,)}``
    ``learned_embeds``); ``embedding_keys`` is the family's. A file for another family or of no known layout is
    a ``ModelLoadError`` naming it."""
    path = Path(path)
    data = _load(path)
    if isinstance(data.get("string_to_param"), dict):
        data = data["string_to_param"]
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    keys = list(embedding_keys.values())
    if all(k in tensors for k in keys):
        found = {part: tensors[key] for part, key in embedding_keys.items()}
    elif len(keys) == 1 and len(tensors) == 1:
        found = {next(iter(embedding_keys)): next(iter(tensors.values()))}
    else:
        wanted = " + ".join(keys)
        raise ModelLoadError(
            f"weights {str(path)!r} is not an embedding for this model: it holds {sorted(tensors) or 'no tensors'}, "
            f"but this model's embeddings are {wanted} (SD 1.x/2.x: emb_params or a webui .pt; SDXL: clip_l + "
            f"clip_g). Give an embedding trained on this model family."
        )
    return {part: (t.unsqueeze(0) if t.ndim == 1 else t).to(torch.float32) for part, t in found.items()}


def _load(path: Path) -> dict:
    if not path.is_file():
        raise ModelLoadError(f"embedding file {str(path)!r} does not exist. Check the path (option 'weights').")
    if path.suffix.lower() == ".safetensors":
        from library.models.safe_load import load_state_dict_file

        return load_state_dict_file(path)[0]
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - random bytes raise EOFError, UnpicklingError, RuntimeError …
        raise ModelLoadError(
            f"embedding file {str(path)!r} cannot be read as a tensors-only pickle ({str(exc).splitlines()[0]}). "
            f"It may be damaged, or hold more than tensors (refused: unpickling it could run code); use its "
            f".safetensors version."
        ) from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"embedding file {str(path)!r} holds a {type(data).__name__}, not an embedding.")
    return data


def bundle_tensors(token: str, embedding_keys: dict[str, str],
                   rows: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The bundled-embedding keys of a LoRA file: ``bundle_emb.<token>.string_to_param.*`` for a one-encoder
    family, ``bundle_emb.<token>.clip_l`` / ``.clip_g`` for SDXL (the webui's Lora extension reads both)."""
    if len(embedding_keys) == 1:
        (part,) = embedding_keys
        return {f"{BUNDLE_PREFIX}.{token}.string_to_param.*": rows[part]}
    return {f"{BUNDLE_PREFIX}.{token}.{embedding_keys[part]}": tensor for part, tensor in rows.items()}


def read_bundle(state_dict: dict[str, torch.Tensor], token: str,
                embedding_keys: dict[str, str]) -> dict[str, torch.Tensor] | None:
    """{text part: (n, D) float32} of ``token``'s bundled embedding in a LoRA state dict, or None if absent."""
    wanted = bundle_tensors(token, embedding_keys, dict.fromkeys(embedding_keys, None))
    if not any(key in state_dict for key in wanted):
        return None
    missing = [key for key in wanted if key not in state_dict]
    if missing:
        raise ModelLoadError(f"the LoRA file's bundled embedding of {token!r} lacks {', '.join(missing)}.")
    parts = list(embedding_keys)
    return {part: state_dict[key].to(torch.float32) for part, key in zip(parts, wanted, strict=True)}


def bundled_tokens(keys) -> list[str]:
    """The tokens of the bundled embeddings among a LoRA file's keys."""
    return sorted({key.split(".")[1] for key in keys if key.startswith(BUNDLE_PREFIX + ".") and key.count(".") >= 2})
