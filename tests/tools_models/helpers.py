"""Helpers for the model-tool tests, written without the code under test: sd-scripts-layout files,
perturbed tiny models, UNet inputs."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import safetensors.torch
import torch

from library.models.tiny import tiny_components


def perturbed_components(family: str = "sd1", seed: int = 0, std: float = 0.05) -> dict:
    """The tiny model with random changes in every floating weight of UNet and text encoder (a "fine-tune")."""
    parts = tiny_components(family)
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for module in (parts["unet"], parts["text_encoder"]):
            for param in module.parameters():
                param.add_(torch.randn(param.shape, generator=gen) * std)
    return parts


def unet_inputs(seed: int = 0, width: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(latents (2, 4, 16, 16), timesteps (2,), text states (2, 77, width))."""
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(2, 4, 16, 16, generator=gen),
        torch.tensor([10, 500]),
        torch.randn(2, 77, width, generator=gen),
    )


def sd_scripts_lora(
    path: Path,
    modules: dict,
    *,
    dtype=torch.float16,
    metadata: dict | None = None,
    no_alpha: tuple[str, ...] = (),
) -> Path:
    """Write a LoRA the way sd-scripts lays it out: ``name.lora_down.weight`` / ``lora_up`` / ``alpha``,
    fp16 tensors, optional modules without alpha. ``modules``: {name: (down, up, alpha)}."""
    tensors = {}
    for name, (down, up, alpha) in modules.items():
        tensors[f"{name}.lora_down.weight"] = down.to(dtype).contiguous()
        tensors[f"{name}.lora_up.weight"] = up.to(dtype).contiguous()
        if name not in no_alpha:
            tensors[f"{name}.alpha"] = torch.tensor(float(alpha)).to(dtype)
    safetensors.torch.save_file(tensors, str(path), metadata=metadata or {})
    return path


def sd_scripts_metadata() -> dict[str, str]:
    """A typical sd-scripts training metadata subset."""
    return {
        "ss_network_module": "networks.lora",
        "ss_network_dim": "8",
        "ss_network_alpha": "4.0",
        "ss_network_args": json.dumps({"conv_dim": "4", "conv_alpha": "1"}),
        "ss_v2": "False",
        "ss_base_model_version": "sd_v1",
        "ss_training_started_at": "1700000000.0",
        "ss_output_name": "sks_disc",
        "ss_tag_frequency": json.dumps({"2_sks disc": {"sks disc": 4, "red": 3, "picture": 1}}),
        "ss_learning_rate": "0.0001",
    }


def module_layers(unet, text_encoder) -> dict[str, torch.nn.Module]:
    """{kohya name: layer} computed independently: prefix + path with "." -> "_", TE rooted at text_model."""
    out = {}
    for path, module in unet.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            out["lora_unet_" + path.replace(".", "_")] = module
    for path, module in text_encoder.named_modules():
        if isinstance(module, torch.nn.Linear):
            out["lora_te_text_model_" + path.replace(".", "_")] = module
    return out


def copy_of(module):
    return copy.deepcopy(module).eval()


def load_tool(name: str):
    """Import ``tools/<name>.py`` as a module without putting tools/ on sys.path."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "tools" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"tools_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def one_error_line(capsys) -> str:
    """The one ``error: …`` line a refused tool run printed (no traceback)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]
