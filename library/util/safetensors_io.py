"""Safetensors files: atomic save with the webui additional-networks hashes, metadata reading.

``sshs_model_hash`` / ``sshs_legacy_hash`` are the hashes kohya-ss/sd-webui-additional-networks
computes and sd-scripts writes: the file is serialised with only the ``ss_*`` metadata, then
model hash = sha256 of the bytes after the header (8-byte little-endian header length n, tensor
data from 8 + n), legacy hash = first 8 hex digits of sha256 of bytes [0x100000, 0x110000).
The tensor data does not depend on the metadata, so the model hash of the final file equals the
one computed here. The legacy hash does not equal the raw 64 KiB of the final file when other keys
(``modelspec.*``, the hashes themselves) lengthen its header: readers compute it as the extension does
(library.tools.models.hashes), not from the file's bytes.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import struct
from pathlib import Path

import safetensors.torch
import torch
from safetensors import SafetensorError

from library.errors import ModelLoadError
from library.util.atomic import atomic_path

MODEL_HASH_KEY = "sshs_model_hash"
LEGACY_HASH_KEY = "sshs_legacy_hash"
LEGACY_HASH_OFFSET = 0x100000
LEGACY_HASH_LENGTH = 0x10000


def header_length(data: bytes) -> int:
    """Length n of the JSON header of serialised safetensors ``data`` (tensor bytes start at 8 + n)."""
    if len(data) < 8:
        raise ValueError("not a safetensors payload: shorter than 8 bytes")
    return struct.unpack("<Q", data[:8])[0]


def hashes_of_bytes(data: bytes) -> tuple[str, str]:
    """(model hash, legacy hash) of a serialised safetensors file, as the webui extension computes them."""
    start = 8 + header_length(data)
    model_hash = hashlib.sha256(data[start:]).hexdigest()
    legacy = hashlib.sha256(data[LEGACY_HASH_OFFSET : LEGACY_HASH_OFFSET + LEGACY_HASH_LENGTH]).hexdigest()
    return model_hash, legacy[:8]


def _prepare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def precalculate_hashes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> tuple[str, str]:
    """(sshs_model_hash, sshs_legacy_hash) of ``tensors`` serialised with only the ``ss_*`` metadata."""
    ss_only = {k: v for k, v in (metadata or {}).items() if k.startswith("ss_")}
    return hashes_of_bytes(safetensors.torch.save(_prepare(tensors), ss_only))


def save_safetensors(
    path: str | os.PathLike,
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, str] | None = None,
    add_hashes: bool = True,
) -> Path:
    """Write ``tensors`` (moved to contiguous CPU memory) with string ``metadata``, atomically.

    With ``add_hashes`` the metadata gains ``sshs_model_hash`` and ``sshs_legacy_hash``.
    Non-string metadata values are rejected (the format only stores strings).
    """
    meta = dict(metadata or {})
    bad = {k: type(v).__name__ for k, v in meta.items() if not isinstance(v, str)}
    if bad:
        raise TypeError(f"safetensors metadata values must be strings; got {bad}")
    prepared = _prepare(tensors)
    if add_hashes:
        meta[MODEL_HASH_KEY], meta[LEGACY_HASH_KEY] = precalculate_hashes(prepared, meta)
    target = Path(path)
    with atomic_path(target) as tmp:
        safetensors.torch.save_file(prepared, str(tmp), metadata=meta)
    return target


#: safetensors' dtype names
_DTYPE_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2", torch.int64: "I64", torch.int32: "I32",
    torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}


def write_streamed(path: str | os.PathLike, tensors, metadata: dict[str, str] | None = None,
                   dtype: torch.dtype | None = None) -> None:
    """Write a safetensors file one tensor at a time: only one tensor's converted copy (``dtype`` casts the
    floating ones) is in memory at once, where ``safetensors.torch.save_file`` first builds the whole file
    (24 GB more host memory for a 12B-parameter transformer in bf16; sd-scripts' ``mem_eff_save``, always on
    here). ``tensors`` may be a model's own state dict; the layout is the reference writer's (tensors by
    element size, largest first, then by name, so each is aligned), readable by every safetensors reader."""

    def target(tensor: torch.Tensor) -> torch.dtype:
        return dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype

    def element_size(t: torch.Tensor) -> int:
        return torch.empty(0, dtype=target(t)).element_size()

    names = sorted(tensors, key=lambda k: (-element_size(tensors[k]), k))
    header: dict = {}
    offset = 0
    for name in names:
        tensor = tensors[name]
        kind = _DTYPE_NAMES.get(target(tensor))
        if kind is None:
            raise TypeError(f"{name}: safetensors cannot store dtype {target(tensor)}")
        size = tensor.numel() * element_size(tensor)
        header[name] = {"dtype": kind, "shape": list(tensor.shape), "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = dict(metadata)
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for name in names:
            tensor = tensors[name].detach()
            data = tensor.to("cpu", dtype=target(tensor)).contiguous().reshape(-1)
            if data.numel():
                f.write(memoryview(data.view(torch.uint8).numpy()))
            del data


def read_header(path: str | os.PathLike) -> dict:
    """The parsed JSON header of a safetensors file (tensor entries and ``__metadata__``)."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            if n > 100 * 1024 * 1024:
                raise ValueError(f"header length {n} is implausible")
            return json.loads(f.read(n))
    except (OSError, ValueError, struct.error) as exc:
        raise ModelLoadError(
            f"Cannot read the safetensors header of {path}: {exc}. Check that the file exists and is a "
            "complete .safetensors file (a download or copy may have been cut short)."
        ) from exc


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a safetensors file ({} when it has none)."""
    return dict(read_header(path).get("__metadata__") or {})


def load_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, on CPU."""
    try:
        return safetensors.torch.load_file(str(path), device="cpu")
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        raise ModelLoadError(
            f"Cannot load the safetensors file {path}: {exc}. Check that it exists and is a complete "
            ".safetensors file (a download or copy may have been cut short, or it is another kind of file)."
        ) from exc


#: safetensors dtype names -> torch dtypes (the ones torch has).
DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


def read_tensors(path: str | os.PathLike, float_dtype: torch.dtype | None = None,
                 ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file, each tensor read into its own freshly allocated (aligned)
    memory with ``readinto``: no memory map stays behind, so the file's pages never count as the process's
    memory, and the tensors need no copy to be independent of the file (``safe_open`` hands out unaligned views
    of a mapped file). Raises ModelLoadError for a damaged file (bad header, offsets outside the data, sizes
    that do not match the shapes, unknown dtypes).

    ``float_dtype``: floating tensors of another dtype are cast to it as they are read (an fp16 checkpoint
    loaded as fp32): each is read into a staging buffer that is reused, and cast from there, so the file's
    dtype never takes memory of its own, and the next tensor is read while this one is cast."""
    path = Path(path)

    def bad(why: str) -> ModelLoadError:
        return ModelLoadError(
            f"Could not read {path} as safetensors ({why}). The file may be truncated or not a safetensors "
            "file; download it again."
        )

    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise bad("shorter than 8 bytes")
            n = struct.unpack("<Q", head)[0]
            if n > min(100 * 1024 * 1024, size - 8):
                raise bad(f"header length {n} is implausible for a file of {size} bytes")
            try:
                header = json.loads(f.read(n))
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                raise bad(f"its header is not JSON: {error}") from None
            if not isinstance(header, dict):
                raise bad("its header is not a JSON object")
            metadata = header.pop("__metadata__", None) or {}
            if not isinstance(metadata, dict):
                raise bad("__metadata__ is not an object")
            data_start, data_size = 8 + n, size - 8 - n
            entries = []
            for key, entry in header.items():
                try:
                    dtype = DTYPES[entry["dtype"]]
                    shape = [int(s) for s in entry["shape"]]
                    begin, end = (int(o) for o in entry["data_offsets"])
                except (KeyError, TypeError, ValueError):
                    raise bad(f"tensor {key!r} has an unknown dtype or a bad shape/offsets entry") from None
                numel = 1
                for s in shape:
                    numel *= s
                itemsize = torch.empty((), dtype=dtype).element_size()
                if min(shape, default=0) < 0 or not 0 <= begin <= end <= data_size or end - begin != numel * itemsize:
                    raise bad(f"tensor {key!r}: offsets {begin}..{end} do not hold {shape} {entry['dtype']} "
                              f"inside {data_size} data bytes")
                entries.append((begin, key, dtype, shape, end - begin))
            tensors = _read_entries(f, sorted(entries), data_start, float_dtype, bad)
    except OSError as error:
        raise bad(str(error)) from error
    return {k: tensors[k] for k in header}, {str(k): str(v) for k, v in metadata.items()}


def _casts(dtype: torch.dtype, float_dtype: torch.dtype | None) -> bool:
    return float_dtype is not None and dtype.is_floating_point and dtype != float_dtype


def _read_entries(f, entries: list, data_start: int, float_dtype: torch.dtype | None, bad) -> dict:
    """The tensors of ``entries`` ((begin, key, dtype, shape, nbytes), in file order) read from ``f``. Without a
    cast, each into its own memory; with one, into one of two staging buffers in turn, the next read (in a
    thread: ``readinto`` and the cast both release the GIL) while the previous one is cast."""

    def read_into(buffer: torch.Tensor, begin: int, key: str, nbytes: int) -> None:
        if nbytes:
            f.seek(data_start + begin)
            # the tensor's own memory as a writable buffer (not through numpy, which would pin it)
            target = (ctypes.c_char * nbytes).from_address(buffer.data_ptr())
            if f.readinto(target) != nbytes:
                raise bad(f"tensor {key!r} is cut short")

    largest = max((n for _, _, dtype, _, n in entries if _casts(dtype, float_dtype)), default=0)
    if not largest:
        tensors = {}
        for begin, key, dtype, shape, nbytes in entries:
            buffer = torch.empty(nbytes, dtype=torch.uint8)
            read_into(buffer, begin, key, nbytes)
            tensors[key] = buffer.view(dtype).reshape(shape)
        return tensors
    from concurrent.futures import ThreadPoolExecutor

    staging = [torch.empty(largest, dtype=torch.uint8), torch.empty(largest, dtype=torch.uint8)]
    tensors: dict[str, torch.Tensor] = {}

    def read(i: int) -> torch.Tensor:
        begin, key, dtype, shape, nbytes = entries[i]
        buffer = staging[i % 2][:nbytes] if _casts(dtype, float_dtype) else torch.empty(nbytes, dtype=torch.uint8)
        read_into(buffer, begin, key, nbytes)
        return buffer.view(dtype).reshape(shape)

    with ThreadPoolExecutor(max_workers=1) as reader:
        pending = reader.submit(read, 0)
        for i, (_, key, dtype, _, _) in enumerate(entries):
            tensor = pending.result()
            if i + 1 < len(entries):
                pending = reader.submit(read, i + 1)  # into the other staging buffer
            tensors[key] = tensor.to(float_dtype) if _casts(dtype, float_dtype) else tensor
    return tensors
