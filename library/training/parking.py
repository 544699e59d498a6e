"""Frozen parts a fine-tune saves but does not use, kept on disk between saves instead of in memory.

A DreamBooth / fine-tune run that caches latents and text-encoder outputs (and renders no samples) never runs
the VAE or a frozen text encoder again, but its saved checkpoint holds them. Rather than keep them beside the
trained UNet, its gradients and its optimizer state for the whole run (0.8 GB for SD1.5, 1.7 GB for SDXL in
float32), each is written once to a safetensors file in the output folder and taken out of memory (the module
stays, on the meta device); :meth:`ParkedParts.restored` puts the very same tensors back around a save.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path

from torch import nn

logger = logging.getLogger(__name__)


def parking_folder(output_dir: str | Path, output_name: str) -> Path:
    """Where a run named ``output_name`` parks its parts (removed at the run's end, and by the next run of that
    name when a kill left it behind)."""
    return Path(output_dir) / f".{output_name}.parked"


def _entries(module: nn.Module) -> dict[int, dict]:
    """The module's tensors by identity: {id: {"tensor", "names": [(owner, leaf, kind)], "requires_grad"}}; a
    tensor reachable under several names (tied weights) is one entry."""
    entries: dict[int, dict] = {}
    for kind, named in (("param", module.named_parameters(remove_duplicate=False)),
                        ("buffer", module.named_buffers(remove_duplicate=False))):
        for name, tensor in named:
            prefix, _, leaf = name.rpartition(".")
            owner = module.get_submodule(prefix) if prefix else module
            entry = entries.setdefault(id(tensor), {"tensor": tensor, "names": [], "key": name,
                                                    "requires_grad": tensor.requires_grad})
            entry["names"].append((owner, leaf, kind))
    return entries


class ParkedParts:
    """Parts of ``model.parts`` moved to disk (see the module doc); :meth:`discard` removes the files."""

    def __init__(self, model, folder: Path):
        self.model, self.folder = model, Path(folder)
        self.parts: dict[str, list[tuple[str, list, bool]]] = {}

    def park(self, name: str) -> None:
        from safetensors.torch import save_file

        from library.util.atomic import atomic_path

        module = self.model.parts[name]
        self.folder.mkdir(parents=True, exist_ok=True)
        layout, tensors = [], {}
        for entry in _entries(module).values():
            tensor = entry["tensor"]
            tensors[entry["key"]] = tensor.detach().to("cpu").contiguous()
            layout.append((entry["key"], entry["names"], entry["requires_grad"]))
        path = self.folder / f"{name}.safetensors"
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp))
        del tensors
        module.to("meta")
        self.parts[name] = layout
        logger.info("%s parked in %s until the saves (it is frozen and its outputs are cached)", name, path)

    def _load(self, name: str) -> None:
        from library.util.safetensors_io import read_tensors

        # read into memory of their own: a memory map would count the file's pages too while it is read
        tensors, _ = read_tensors(self.folder / f"{name}.safetensors")
        for key, names, requires_grad in self.parts[name]:
            tensor = tensors.pop(key)  # host memory, wherever the part ran: the writers read every tensor from there
            param = None  # one Parameter for all the names of a tied weight
            for owner, leaf, kind in names:
                if kind == "param":
                    param = param if param is not None else nn.Parameter(tensor, requires_grad=requires_grad)
                    owner._parameters[leaf] = param
                else:
                    owner._buffers[leaf] = tensor

    @contextlib.contextmanager
    def restored(self):
        """The parked parts back in host memory, as they were, for the duration of a save. Host memory even when
        they had run on a GPU: the files are written from there, and on the GPU they would need room beside the
        trained model and its optimizer state (0.8 GB for SD1.5, 1.7 GB for SDXL in float32) at every save."""
        try:
            for name in self.parts:
                self._load(name)
            yield
        finally:
            for name in self.parts:
                self.model.parts[name].to("meta")
            from library.util.host_memory import give_back_free_memory

            give_back_free_memory()

    def discard(self) -> None:
        """Remove the parking folder (the run is over; the parts stay on the meta device)."""
        shutil.rmtree(self.folder, ignore_errors=True)
