"""``load_base_model``: one entry point for every base-model source.

Sources: ``builtin:tiny`` / ``builtin:tiny-sd2``; a diffusers folder; an LDM single file
(``.safetensors`` / ``.ckpt``); a Hugging Face hub id (``org/name``, needs internet).
The tokenizer of a single file is always built offline (:mod:`library.models.tokenizer`).
"""

from __future__ import annotations

import importlib
import logging
import re
import sys
import threading
from concurrent.futures import Future
from pathlib import Path

import torch

from library.errors import ModelLoadError
from library.models.base_model import BaseModel
from library.models.family import (
    ModelFamily,
    all_families,
    family_of_diffusers,
    family_of_single_file,
    get_model_family,
)
from library.models.safe_load import PICKLE_SUFFIXES, load_state_dict_file

logger = logging.getLogger(__name__)

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
SINGLE_FILE_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)


def load_base_model(
    name_or_path: str,
    *,
    v2: bool | None = None,
    v_parameterization: bool = False,
    vae: str | None = None,
    allow_unsafe_pickle: bool = False,
    components: dict[str, str | None] | None = None,
) -> BaseModel:
    """Load a base model's modules in eval mode; its family is detected from its layout. SD-family models
    come as float32; FLUX's parts keep their files' dtypes (bf16, fp8: 12B parameters in float32 would take
    48 GB of host memory), and ``place_model`` casts each part once to the run's dtype.

    ``v2`` is a hint: if the detected family disagrees, a warning is logged and the detected family
    wins. ``v_parameterization`` selects the noise scheduler's prediction type. ``vae`` replaces the
    model's VAE (a diffusers folder or a single VAE file). ``components`` names separate files of further
    parts for a family whose single file holds only its denoiser (FLUX: ``clip_l``, ``t5xxl``, ``ae``).
    Raises ModelLoadError with what was found.
    """
    components = {k: v for k, v in (components or {}).items() if v}
    parts, family, name = _load_parts(str(name_or_path), allow_unsafe_pickle, components)
    _check_v2_hint(v2, family, name)
    tokenizers = parts.pop("tokenizers")
    if vae:
        from library.models.vae_loading import load_vae

        parts["vae"] = load_vae(vae, parts["vae"].config, allow_unsafe_pickle=allow_unsafe_pickle)
    for module in parts.values():
        _own_aligned_storage(module)
        module.eval()
    return BaseModel(
        family=family,
        parts=parts,
        tokenizers=tokenizers,
        noise_scheduler=get_model_family(family).noise_scheduler(v_parameterization),
        v_parameterization=v_parameterization,
        name=name,
    )


def _own_aligned_storage(module: torch.nn.Module) -> None:
    """Give every parameter/buffer that shares or misaligns its storage a freshly allocated copy.

    Weights read from a mapped safetensors file sit at unaligned addresses inside one file buffer; BLAS then
    takes other code paths and results differ in the last bits between sources. Fresh copies make the same
    weights give bit-identical outputs whatever the source, and detach them from the file. Tensors that own
    aligned memory already (read into memory, or converted) are left as they are: no transient second copy.
    """
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            data = tensor.data
            storage = data.untyped_storage()
            # torch's own allocations are resizable; views of a mapped file or of a bytes buffer are not
            owned = (storage.resizable() and storage.data_ptr() == data.data_ptr() and data.data_ptr() % 64 == 0
                     and storage.nbytes() == data.numel() * data.element_size() and data.is_contiguous())
            if not owned:
                tensor.data = data.clone()


def _check_v2_hint(v2: bool | None, family: str, name: str) -> None:
    if v2 is None or get_model_family(family).v2 == bool(v2):
        return
    logger.warning(
        "v2=%s was given but %s is a %s model (detected from its layout); using %s.",
        v2,
        name,
        family,
        family,
    )


def _load_parts(source: str, allow_unsafe_pickle: bool, components: dict) -> tuple[dict, str, str]:
    from library.models.tiny import BUILTIN_NAMES, builtin_components

    if source in BUILTIN_NAMES:
        family = BUILTIN_NAMES[source]
        return builtin_components(family), family, source
    if source.startswith("builtin:"):
        raise ModelLoadError(
            f"Unknown built-in model {source!r}. Built-in models: {', '.join(sorted(BUILTIN_NAMES))}."
        )
    path = Path(source).expanduser()
    if components and not path.is_file():
        raise ModelLoadError(
            f"{', '.join(sorted(components))} name separate files for a model given as one denoiser file (a "
            f"FLUX transformer .safetensors), but {source} is not a file: a diffusers folder brings its own "
            "text encoders and autoencoder. Remove those options or give the transformer file."
        )
    if path.is_dir():
        parts, family = _load_diffusers(str(path), local=True)
        return parts, family, path.name
    if path.is_file():
        return _load_single_file(path, allow_unsafe_pickle, components)
    if HUB_ID.match(source) and not source.startswith((".", "~")):
        parts, family = _load_diffusers(source, local=False)
        return parts, family, source.split("/")[-1]
    raise ModelLoadError(
        f"Base model {source!r} not found: it is not an existing file or folder, not a Hugging Face "
        f"hub id (org/name) and not a built-in model ({', '.join(sorted(BUILTIN_NAMES))}). "
        "Check pretrained_model_name_or_path."
    )


def peek_family(source: str) -> str | None:
    """The family name of a base model without loading its weights (see :mod:`library.models.peek`), or None
    when that cannot tell (``.ckpt``, hub ids not in the cache, bad paths): the load then decides."""
    from library.models.peek import UnknownFamily, detect_family

    try:
        return detect_family(source).name
    except UnknownFamily:
        return None
    except (OSError, ValueError, RuntimeError) as error:  # unreadable headers: the real load will say why
        logger.debug("could not peek at %s: %s", source, error)
        return None


def diffusers_info(source: str, local: bool) -> dict:
    """What family detection reads from a diffusers folder or hub repo: the pipeline class, whether it has
    a second text encoder and a UNet, and the (first) text encoder's activation."""
    info: dict = {}
    index = _read_json(source, "model_index.json", local)
    if index:
        info["class_name"] = index.get("_class_name")
        info["has_text_encoder_2"] = bool(index.get("text_encoder_2") and index["text_encoder_2"][0])
        info["has_unet"] = bool(index.get("unet") and index["unet"][0])
    elif local:
        info["has_text_encoder_2"] = (Path(source) / "text_encoder_2").is_dir()
        info["has_unet"] = (Path(source) / "unet").is_dir()
    text_config = _read_json(source, "text_encoder/config.json", local) or {}
    info["text_hidden_act"] = text_config.get("hidden_act", "quick_gelu")
    return info


def _read_json(source: str, name: str, local: bool) -> dict | None:
    import json

    try:
        if local:
            path = Path(source) / name
            return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(source, name)).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        logger.debug("could not read %s of %s: %s", name, source, error)
        return None


def _load_diffusers(source: str, local: bool) -> tuple[dict, str]:
    """Load a diffusers folder / hub repo with the detected family's ``load_diffusers``; (parts, family)."""
    if local:
        root = Path(source)
        if not (root / "model_index.json").is_file() and not (root / "unet").is_dir():
            found = sorted(p.name for p in root.iterdir())[:10]
            raise ModelLoadError(
                f"{root} is not a diffusers model folder: no model_index.json and no unet/ folder "
                f"(found: {', '.join(found) or 'nothing'}). Give the folder that holds model_index.json, "
                "or a .safetensors/.ckpt single file."
            )
    info = diffusers_info(source, local)
    family = family_of_diffusers(info)
    if family is None:
        raise ModelLoadError(
            f"{source}: a diffusers {info.get('class_name') or 'model'} that no supported model family "
            f"matches (supported: {', '.join(f.name for f in all_families())})."
        )
    try:
        parts = family.load_diffusers(source, local)
    except (OSError, ValueError) as error:
        where = "folder" if local else "hub repository (needs internet)"
        raise ModelLoadError(f"Could not load the diffusers {where} {source}: {error}") from error
    return parts, family.name


def describe_foreign_keys(state_dict: dict) -> str:
    """Say what a state dict that is not an SD checkpoint looks like (for error messages)."""
    keys = list(state_dict)
    if any(k.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")) for k in keys):
        return "it looks like a LoRA (lora_unet_* keys); give it as network_weights, not as the base model"
    if any(k.startswith("encoder.down.") or k.startswith("decoder.up.") for k in keys):
        return "it looks like a standalone VAE; give it as vae, not as the base model"
    if any(k.startswith(("down_blocks.", "conv_in.")) for k in keys):
        return "it looks like a diffusers UNet weight file; give the whole diffusers folder instead"
    prefixes = sorted({k.split(".")[0] for k in keys})[:5]
    return f"its keys start with {', '.join(prefixes) or '(no keys)'}"


#: resolved path -> (the Future of its read, the family its header shows) (:func:`read_ahead`), taken by the load
#: that needs it
_READ_AHEAD: dict[Path, tuple[Future, ModelFamily]] = {}


def _read_in_memory(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    # the families that read single files into memory build float32 modules: cast as the file is read
    return load_state_dict_file(path, in_memory=True, float_dtype=torch.float32)


def read_ahead(source: str) -> bool:
    """Start reading the base model's single file in a thread, so the read (which waits on the disk and the
    float32 casts, both outside the GIL) overlaps the imports and dataset work before the model is built;
    :func:`load_base_model` takes the result (or its error) where it would have read the file. Only for a
    ``.safetensors`` file of a family that reads its files into memory (SD 1/2, SDXL; not FLUX's memory map).
    True when started."""
    path = Path(source).expanduser()
    if path.suffix.lower() != ".safetensors" or not path.is_file():  # built-in names are neither
        return False
    family = _header_family(path)
    if family is None or not family.single_file_in_memory:
        return False
    key = path.resolve()
    if key not in _READ_AHEAD:
        future: Future = Future()

        def run() -> None:
            try:
                future.set_result(_read_in_memory(path))
            except BaseException as error:  # noqa: BLE001 - handed to the load, raised there
                future.set_exception(error)
            finally:
                sys.setswitchinterval(interval)

        # the reader needs the GIL briefly between tensors; the imports beside it hold it for the whole switch
        # interval (5 ms) each time, which starved the read to twice its time: hand it over more often meanwhile
        interval = sys.getswitchinterval()
        sys.setswitchinterval(min(interval, 0.0005))

        threading.Thread(target=run, name="read-ahead", daemon=True).start()
        _READ_AHEAD[key] = (future, family)
    return True


def _load_single_file(path: Path, allow_unsafe_pickle: bool, components: dict) -> tuple[dict, str, str]:
    if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        raise ModelLoadError(
            f"{path} is not a model file: expected a diffusers folder or one of {', '.join(SINGLE_FILE_SUFFIXES)}."
        )
    pending = _READ_AHEAD.pop(path.resolve(), None)
    if pending is not None:
        future, header_family = pending
        if not future.done():
            # the model code the family builds its parts from, imported while the read still runs: on 2 cores
            # the read casts on one core, the imports run on the other
            for name in header_family.single_file_imports:
                importlib.import_module(name)
        state, metadata = future.result()
    elif path.suffix.lower() == ".safetensors" and _reads_into_memory(path):
        state, metadata = _read_in_memory(path)
    else:
        state, metadata = load_state_dict_file(path, allow_unsafe_pickle=allow_unsafe_pickle)
    family = family_of_single_file(state)
    if family is None and not any(k.startswith("model.diffusion_model.") for k in state):
        kind = "safetensors" if path.suffix.lower() == ".safetensors" else "checkpoint"
        raise ModelLoadError(
            f"{path}: {kind} file has no model.diffusion_model.* keys: {describe_foreign_keys(state)}."
        )
    if family is None:
        raise ModelLoadError(f"{path}: the file's layout matches no supported model family "
                             f"({', '.join(f.name for f in all_families())}).")
    parts = family.load_single_file(state, metadata, str(path), components=components)
    return parts, family.name, path.name


def _header_family(path: Path) -> ModelFamily | None:
    """The family a .safetensors file's header shows (keys and shapes, as meta tensors); None for none, or an
    unreadable header (the real read reports it)."""
    from library.util.safetensors_io import DTYPES, read_header

    try:
        header = read_header(path)
        shapes = {k: torch.empty(v["shape"], dtype=DTYPES.get(v["dtype"], torch.uint8), device="meta")
                  for k, v in header.items() if k != "__metadata__"}
    except (ModelLoadError, KeyError, TypeError, ValueError, RuntimeError):
        return None
    return family_of_single_file(shapes)


def _reads_into_memory(path: Path) -> bool:
    """Whether the family of a .safetensors file reads single files into memory of their own
    (:attr:`ModelFamily.single_file_in_memory`)."""
    family = _header_family(path)
    return family is not None and family.single_file_in_memory

