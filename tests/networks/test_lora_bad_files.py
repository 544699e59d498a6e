"""network_weights that are not a usable LoRA (pickles that need more than tensors, random bytes, text
under a .safetensors name): one clear paragraph naming the file and the fix, no code run (issue 12)."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from library.errors import ModelLoadError
from library.networks.network import read_state_dict


class _Payload:
    """A pickle that creates ``marker`` when it is unpickled with full pickle."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _write(path, how, marker):
    if how == "torch_payload":
        torch.save({"lora_unet_x.alpha": torch.tensor(1.0), "x": _Payload(marker)}, path)
    elif how == "pickle_payload":
        with open(path, "wb") as f:
            pickle.dump({"x": _Payload(marker)}, f, protocol=2)
    elif how == "pickle4":
        with open(path, "wb") as f:
            pickle.dump({"x": _Payload(marker)}, f, protocol=4)
    elif how == "random":
        path.write_bytes(os.urandom(4096).replace(b"\x80", b"\x00").replace(b"PK", b"pk"))
    elif how == "text":
        path.write_text("<html><body>404 Not Found</body></html>\n", encoding="utf-8")
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        torch.save({"lora_unet_x.alpha": torch.ones(1000)}, path)
        path.write_bytes(path.read_bytes()[:600])
    elif how == "torch_as_safetensors":
        torch.save({"lora_unet_x.alpha": torch.tensor(1.0)}, path)
    elif how == "list":
        torch.save([torch.zeros(1)], path)
    elif how == "mixed":
        torch.save({"lora_unet_x.alpha": torch.tensor(1.0), "epoch": 3}, path)


CASES = [
    (
        "lora.pt",
        "torch_payload",
        (
            "Refused to load",
            "pickle",
            "io.open",
            "could run code",
            "weights-only",
            "allow_unsafe_pickle is for base models",
            ".safetensors",
            "weights_only=False",
        ),
    ),
    ("lora.ckpt", "pickle_payload", ("Refused to load", "open", "could run code")),
    ("lora.pt", "pickle4", ("Refused to load", "not written by torch.save", "could run code")),
    ("lora.pt", "random", ("not a readable PyTorch tensor file", "download it again")),
    ("lora.ckpt", "text", ("text file", "404 Not Found")),
    ("lora.pt", "empty", ("it is empty",)),
    ("lora.pt", "truncated", ("not a readable PyTorch tensor file", "truncated")),
    ("lora.safetensors", "random", ("safetensors", "complete")),
    ("lora.safetensors", "text", ("text file", "404 Not Found", "not a safetensors file")),
    ("lora.safetensors", "empty", ("safetensors", "header")),
    ("lora.safetensors", "torch_as_safetensors", ("PyTorch pickle", "Rename it to .pt")),
    ("lora.pt", "list", ("holds a list", "not a LoRA file")),
    ("lora.pt", "mixed", ("'epoch'", "not a tensor")),
]


@pytest.mark.parametrize(("name", "how", "words"), CASES, ids=[f"{n}-{h}" for n, h, _ in CASES])
def test_bad_lora_files_are_one_clear_paragraph(tmp_path, name, how, words):
    path, marker = tmp_path / name, tmp_path / "code_ran"
    _write(path, how, marker)
    with pytest.raises(ModelLoadError) as info:
        read_state_dict(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message and len(message) < 700, message
    for word in words:
        assert word in message, message
    assert not marker.exists()


def test_plain_tensor_pickles_still_load(tmp_path):
    torch.save({"lora_unet_x.alpha": torch.tensor(2.0)}, tmp_path / "flat.pt")
    torch.save({"state_dict": {"lora_unet_x.alpha": torch.tensor(3.0)}}, tmp_path / "wrapped.ckpt")
    assert read_state_dict(tmp_path / "flat.pt")[0]["lora_unet_x.alpha"].item() == 2.0
    assert read_state_dict(tmp_path / "wrapped.ckpt")[0]["lora_unet_x.alpha"].item() == 3.0


@pytest.mark.slow  # a (tiny) training run up to the point where network_weights is read
def test_trainer_refuses_a_pickle_lora_with_exit_2(tmp_path, tiny_dataset, capsys):
    from tests.training.helpers import base_options, train

    lora, marker = tmp_path / "lora.pt", tmp_path / "code_ran"
    _write(lora, "torch_payload", marker)
    options = base_options(tiny_dataset, tmp_path / "out", network_weights=str(lora))
    assert train(tmp_path, options, extra_argv=["--allow_unsafe_pickle"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error: Refused to load" in err and str(lora) in err
    assert not marker.exists() and not (tmp_path / "out" / "lora.safetensors").exists()
