"""Writing a corpus case's files into its folder: the recipes of ``make_corpus.Case.files`` (configs, broken
pictures, odd captions, fake models, damaged LoRAs, broken resume folders, pickles that would run code)."""

from __future__ import annotations

import math
from pathlib import Path

from make_corpus import MARKER, PLANTED, TE, UNET, Case


def _substitute(text: str, box: Path, assets: Path) -> str:
    return text.replace("{box}", str(box)).replace("{assets}", str(assets))


def _random_bytes(n: int, seed: int) -> bytes:
    import random

    return random.Random(seed).randbytes(n)


def _png(path: Path, w: int, h: int, color=(200, 40, 40)) -> None:
    from PIL import Image

    Image.new("RGB", (w, h), color).save(path, format="PNG")


def _header_bomb(width: int = 20000, height: int = 20000) -> bytes:
    """A PNG of a few bytes whose IHDR claims ``width`` x ``height`` (the pixel data is not there)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def _dataset(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        _png(folder / f"{i}.png", 64, 64, (40 * i % 255, 90, 200))
        (folder / f"{i}.txt").write_text(f"sks, picture {i}", encoding="utf-8")


class _Payload:
    """Unpickling this creates ``marker``: stands in for the code a crafted file would run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _payload(path: Path, kind: str, marker: Path) -> None:
    import pickle

    if kind == "torch_zip":
        import torch

        torch.save({"state_dict": _Payload(marker), "random_state": _Payload(marker)}, path)
    else:
        path.write_bytes(pickle.dumps({"state_dict": _Payload(marker), "base_lrs": _Payload(marker)}))


def lora_tensors(kind: str) -> dict:
    """A one- or two-module sd-scripts LoRA over the tiny SD1 text encoder, damaged as ``kind`` says."""
    import torch

    gen = torch.Generator().manual_seed(0)
    down, up = torch.randn(4, 32, generator=gen) * 0.1, torch.randn(32, 4, generator=gen) * 0.1
    alpha = torch.tensor(2.0)

    def module(name, d, u, a):
        out = {f"{name}.lora_down.weight": d.contiguous(), f"{name}.lora_up.weight": u.contiguous()}
        if a is not None:
            out[f"{name}.alpha"] = a
        return out

    if kind == "good":
        return module(TE, down, up, alpha)
    if kind == "nan":
        down = down.clone()
        down[0, 0] = math.nan
        return module(TE, down, up, alpha)
    if kind == "inf":
        up = up.clone()
        up[1, 1] = math.inf
        return {**module(TE, down.clone(), up * 0 + 0.01, alpha.clone()), **module(UNET, down, up, alpha)}
    if kind == "nan_alpha":
        return module(TE, down, up, torch.tensor(math.nan))
    if kind == "rank_mismatch":
        return module(TE, down, torch.randn(32, 3, generator=gen), alpha)
    if kind == "vector_alpha":
        return module(TE, down, up, torch.tensor([1.0, 2.0]))
    if kind == "int":
        return module(TE, down.to(torch.int64), up.to(torch.int64), torch.tensor(2))
    if kind == "one_dim":
        return module(TE, torch.ones(4), up, None)
    if kind == "no_lora_keys":
        return {"model.weight": torch.ones(3, 3), "foo.bias": torch.zeros(3)}
    raise ValueError(f"unknown LoRA kind {kind}")


def _lora(path: Path, kind: str) -> None:
    import safetensors.torch

    if kind == "truncated":
        safetensors.torch.save_file(lora_tensors("good"), str(path))
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return
    safetensors.torch.save_file(lora_tensors(kind), str(path))


def _model_variant(path: Path, assets: Path, kind: str) -> None:
    """The tiny SD1 single file with half its keys dropped, or with a NaN in one UNet weight."""
    import safetensors.torch
    from safetensors import safe_open

    source = assets / "tiny_sd1.safetensors"
    tensors = safetensors.torch.load_file(str(source))
    with safe_open(str(source), "pt") as f:
        metadata = f.metadata()
    if kind == "missing_keys":
        tensors = {k: v for i, (k, v) in enumerate(sorted(tensors.items())) if i % 2 == 0}
    else:
        key = next(k for k in sorted(tensors) if k.startswith("model.diffusion_model.") and k.endswith("weight"))
        tensors[key] = tensors[key].clone()
        tensors[key].view(-1)[0] = math.nan
    safetensors.torch.save_file(tensors, str(path), metadata=metadata)


def _diffusers_without_unet(folder: Path, assets: Path) -> None:
    import shutil

    shutil.copytree(assets / "tiny_sd1", folder)
    shutil.rmtree(folder / "unet")


def _state(folder: Path, assets: Path, kind: str, marker: Path) -> None:
    """A copy of the real resume state in ``assets/state``, broken as ``kind`` says."""
    import json
    import shutil

    shutil.copytree(assets / "state", folder)
    info_path = folder / "train_state.json"

    def truncate(name):
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])

    if kind == "intact":
        return
    if kind == "broken-json":
        info_path.write_text("{not json", encoding="utf-8")
    elif kind == "json-array":
        info_path.write_text("[1, 2, 3]", encoding="utf-8")
    elif kind in ("missing-step", "step-text"):
        info = json.loads(info_path.read_text(encoding="utf-8"))
        if kind == "missing-step":
            del info["step"]
        else:
            info["step"] = "abc"
        info_path.write_text(json.dumps(info), encoding="utf-8")
    elif kind == "json-is-a-folder":
        info_path.unlink()
        info_path.mkdir()
    elif kind.startswith("no-"):
        name = {"no-optimizer": "optimizer.safetensors", "no-scheduler": "custom_checkpoint_0.safetensors",
                "no-model": "model.safetensors"}[kind]
        (folder / name).unlink()
    elif kind.startswith("truncated-"):
        truncate({"truncated-optimizer": "optimizer.safetensors", "truncated-rng": "random_states_0.safetensors",
                  "truncated-model": "model.safetensors"}[kind])
    elif kind == "random-model":
        (folder / "model.safetensors").write_bytes(_random_bytes(5000, 9))
    elif kind in PLANTED:
        name, how = PLANTED[kind]
        ours = {"random_states_0.pkl": "random_states_0.safetensors",
                "custom_checkpoint_0.pkl": "custom_checkpoint_0.safetensors",
                "optimizer.bin": "optimizer.safetensors"}[name]
        (folder / ours).unlink()
        _payload(folder / name, how, marker)
    elif kind == "beside":
        for name in ("random_states_0.pkl", "custom_checkpoint_0.pkl", "optimizer.bin", "scheduler.bin"):
            _payload(folder / name, "torch_zip", marker)
    else:
        raise ValueError(f"unknown state break {kind}")


def materialize(case: Case, box: Path, assets: Path) -> None:
    """Create ``case``'s files under ``box`` (``assets``: the folder of shared assets)."""
    marker = box / MARKER
    for rel, recipe, *params in case.files:
        path = box / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if recipe == "text":
            path.write_text(_substitute(params[0], box, assets), encoding="utf-8", newline="")
        elif recipe == "bytes":
            path.write_bytes(_substitute(params[0].decode("latin-1"), box, assets).encode("latin-1"))
        elif recipe == "random":
            path.write_bytes(_random_bytes(*params))
        elif recipe == "mkdir":
            path.mkdir(parents=True, exist_ok=True)
        elif recipe == "png":
            _png(path, *params)
        elif recipe == "truncated_png":
            _png(path, 64, 64)
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2])
        elif recipe == "header_bomb":
            path.write_bytes(_header_bomb())
        elif recipe == "dataset":
            _dataset(path, *params)
        elif recipe == "lora":
            _lora(path, *params)
        elif recipe == "payload":
            _payload(path, params[0], marker)
        elif recipe == "model_missing_keys":
            _model_variant(path, assets, "missing_keys")
        elif recipe == "model_nan":
            _model_variant(path, assets, "nan")
        elif recipe == "diffusers_without_unet":
            _diffusers_without_unet(path, assets)
        elif recipe == "state":
            _state(path, assets, params[0], marker)
        else:
            raise ValueError(f"case {case.id}: unknown recipe {recipe}")
