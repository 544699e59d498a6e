"""The hashes the webui, its additional-networks extension and model sites show for a model file.

For every file (checkpoint, VAE, LoRA, embedding; any format):

- ``sha256``: SHA-256 of the whole file (the webui's checkpoint / embedding / VAE hash);
- ``autov2``: its first 10 hex digits (the webui's checkpoint short hash, Civitai's "AutoV2");
- ``legacy_hash``: the webui's old ``model_hash``: first 8 hex digits of SHA-256 of the 0x10000 bytes
  from offset 0x100000 (of nothing for files under 1 MiB, as the webui reads them).

For ``.safetensors`` files also (kohya-ss/sd-webui-additional-networks, ``scripts/safetensors_hack.py``):

- ``model_hash``: SHA-256 of the bytes after the header (``sshs_model_hash``; the webui's LoRA hash);
- ``autov3``: its first 12 hex digits (the webui's LoRA short hash, Civitai's "AutoV3");
- ``sshs_legacy_hash``: the extension's legacy hash. A file whose metadata has keys other than ``ss_*``
  (``modelspec.*``, ``sshs_*``, user notes) is hashed as if re-saved with only its ``ss_*`` metadata: the
  header is shorter then, so the 64 KiB window at 0x100000 covers other tensor bytes than in the file itself.
  Otherwise it equals ``legacy_hash``. The re-serialised file is not built: its header is made here as
  safetensors writes it, and the 64 KiB are read from the file's tensors placed in safetensors' order (which
  safetensors itself is asked for), so a 7 GB checkpoint costs no memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from library.errors import ModelLoadError
from library.util.safetensors_io import LEGACY_HASH_LENGTH, LEGACY_HASH_OFFSET

#: file kinds the folder scan hashes
MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ModelHashes:
    """The hashes of one file (``model_hash``, ``autov3`` and ``sshs_legacy_hash`` only for safetensors)."""

    path: str
    size: int
    sha256: str
    legacy_hash: str
    model_hash: str | None = None
    sshs_legacy_hash: str | None = None

    @property
    def autov2(self) -> str:
        return self.sha256[:10].upper()

    @property
    def autov3(self) -> str | None:
        return self.model_hash[:12].upper() if self.model_hash else None

    def as_dict(self) -> dict[str, str]:
        """{"sha256", "autov2", "legacy_hash"[, "model_hash", "autov3", "sshs_legacy_hash"]} (no None values)."""
        out = {"sha256": self.sha256, "autov2": self.autov2, "legacy_hash": self.legacy_hash}
        if self.model_hash is not None:
            out.update(model_hash=self.model_hash, autov3=self.autov3, sshs_legacy_hash=self.sshs_legacy_hash)
        return out


def _header_length(head: bytes, path: Path, size: int) -> int:
    if len(head) < 8:
        raise _bad(path, "shorter than 8 bytes")
    n = struct.unpack("<Q", head[:8])[0]
    if 8 + n > size:
        raise _bad(path, f"its header claims {n} bytes but the file has {size}")
    return n


def _bad(path: Path, why: str) -> ModelLoadError:
    return ModelLoadError(
        f"Cannot hash {path} as a .safetensors file: {why}. The file is incomplete (a cut download or copy) or "
        "not a safetensors file; download it again, or rename it to its real extension (.ckpt / .pt)."
    )


def hash_file(path: str | os.PathLike) -> ModelHashes:
    """All hashes of ``path`` in one streamed pass (plus one 64 KiB read), as the module docstring defines."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(
            f"{path} is not a file. Pass model files (.safetensors, .ckpt, .pt) or --folder DIR for a folder."
        )
    size = path.stat().st_size
    is_safetensors = path.suffix.lower() == ".safetensors"
    full = hashlib.sha256()
    tensors = hashlib.sha256() if is_safetensors else None
    with path.open("rb") as f:
        if tensors is not None:
            head = f.read(8)
            n = _header_length(head, path, size)
            header = f.read(n)
            full.update(head)
            full.update(header)
        while chunk := f.read(_CHUNK):
            full.update(chunk)
            if tensors is not None:
                tensors.update(chunk)
        f.seek(LEGACY_HASH_OFFSET)
        legacy = hashlib.sha256(f.read(LEGACY_HASH_LENGTH)).hexdigest()[:8]
    if tensors is None:
        return ModelHashes(str(path), size, full.hexdigest(), legacy)
    try:
        parsed = json.loads(header)
    except ValueError as exc:
        raise _bad(path, f"its header is not JSON ({exc})") from None
    try:
        sshs_legacy = addnet_legacy_hash(path, parsed, legacy, 8 + n)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise _bad(path, f"its header does not describe tensors as safetensors does ({exc!r})") from None
    return ModelHashes(str(path), size, full.hexdigest(), legacy, tensors.hexdigest(), sshs_legacy)


def addnet_legacy_hash(path: Path, header: dict, raw_legacy: str, data_start: int) -> str:
    """The extension's ``legacy_hash_file``: ``raw_legacy`` when every metadata key is ``ss_*``, else the legacy
    hash of the file as safetensors re-serialises it with only its ``ss_*`` metadata (built here from the file's
    own bytes: the new header, then its tensors in safetensors' order; nothing is loaded)."""
    metadata = header.get("__metadata__") or {}
    if all(k.startswith("ss_") for k in metadata):
        return raw_legacy
    ss_only = {k: v for k, v in metadata.items() if k.startswith("ss_")}
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    order = canonical_order(entries)
    new_header = canonical_header(entries, order, ss_only)
    prefix = struct.pack("<Q", len(new_header)) + new_header
    end = LEGACY_HASH_OFFSET + LEGACY_HASH_LENGTH
    window = prefix[LEGACY_HASH_OFFSET:end]
    position = len(prefix)  # where the next tensor lands in the re-serialised file
    with path.open("rb") as f:
        for name in order:
            start, stop = entries[name]["data_offsets"]
            lo, hi = max(position, LEGACY_HASH_OFFSET), min(position + stop - start, end)
            if lo < hi:
                f.seek(data_start + start + lo - position)
                window += f.read(hi - lo)
            position += stop - start
            if position >= end:
                break
    return hashlib.sha256(window).hexdigest()[:8]


def canonical_order(entries: dict) -> list[str]:
    """Tensor names in the order safetensors writes them (asked of safetensors itself, with empty tensors)."""
    import safetensors.torch
    import torch

    from library.util.safetensors_io import _DTYPE_NAMES

    dtypes = {name: dtype for dtype, name in _DTYPE_NAMES.items()}
    empties = {name: torch.empty(0, dtype=dtypes[info["dtype"]]) for name, info in entries.items()}
    data = safetensors.torch.save(empties)
    n = struct.unpack("<Q", data[:8])[0]
    return [k for k in json.loads(data[8 : 8 + n]) if k != "__metadata__"]


def canonical_header(entries: dict, order: list[str], metadata: dict[str, str]) -> bytes:
    """The header safetensors writes for these tensors in ``order`` with ``metadata``: compact JSON, metadata
    first, then each tensor with its new data offsets, padded with spaces to a multiple of 8 bytes."""
    body: dict = {"__metadata__": metadata}
    offset = 0
    for name in order:
        info = entries[name]
        size = info["data_offsets"][1] - info["data_offsets"][0]
        body[name] = {"dtype": info["dtype"], "shape": info["shape"], "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return encoded + b" " * (-len(encoded) % 8)


def model_files(folder: str | os.PathLike) -> list[Path]:
    """Model files under ``folder`` (recursively), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelLoadError(f"--folder {folder} is not a folder. Pass the folder that holds the model files.")
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in MODEL_SUFFIXES)


def duplicate_groups(hashes: list[ModelHashes]) -> list[tuple[str, str, list[ModelHashes]]]:
    """Groups of two or more files with an equal hash: ("sha256", hash, files) for identical files, then
    ("model_hash", hash, files) for safetensors files with the same tensor bytes whose headers (metadata)
    differ."""
    by_sha: dict[str, list[ModelHashes]] = defaultdict(list)
    for h in hashes:
        by_sha[h.sha256].append(h)
    groups = [("sha256", key, files) for key, files in by_sha.items() if len(files) > 1]
    by_tensors: dict[str, list[ModelHashes]] = defaultdict(list)
    for files in by_sha.values():
        if files[0].model_hash is not None:
            by_tensors[files[0].model_hash].append(files[0])
    for key, firsts in by_tensors.items():
        if len(firsts) > 1:
            groups.append(("model_hash", key, [h for first in firsts for h in by_sha[first.sha256]]))
    return groups


def report_lines(hashes: ModelHashes) -> list[str]:
    """The printed hashes of one file."""
    lines = [f"{hashes.path}"]
    lines += [f"  {name}: {value}" for name, value in hashes.as_dict().items()]
    return lines


def duplicate_lines(groups) -> list[str]:
    if not groups:
        return ["duplicates: none"]
    lines = []
    for kind, key, files in groups:
        what = "identical files" if kind == "sha256" else "same tensors, different metadata"
        lines.append(f"duplicates ({what}, {kind} {key[:12]}):")
        lines += [f"  {h.path}" for h in files]
    return lines
