"""A network = a set of adapter modules over a UNet and a text encoder, keyed by the file contract.

Modules are registered under their contract names (``lora_unet_…``), so ``state_dict()`` has exactly
the keys of a LoRA file. Loading, saving, optimizer groups and multipliers live here and are shared
by every algorithm built on :class:`~library.networks.base.NetworkModule`.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from library.errors import ConfigError, ModelLoadError
from library.networks import keys
from library.networks.base import NetworkModule
from library.networks.functional import max_norm_factors
from library.util.atomic import atomic_path
from library.util.safetensors_io import load_safetensors, save_safetensors

logger = logging.getLogger(__name__)


@dataclass
class LoadReport:
    """What :meth:`Network.load_weights` did, by module (contract) name."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    alpha_defaulted: list[str] = field(default_factory=list)
    #: the webui's bundled embeddings in the file (``bundle_emb.<token>…``): read by pivotal tuning, not a module
    bundled: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{len(self.loaded)} modules loaded from {self.source}"]
        if self.missing:
            parts.append(
                f"{len(self.missing)} network modules not in the file (kept as initialised), "
                f"e.g. {', '.join(self.missing[:3])}"
            )
        if self.unexpected:
            parts.append(
                f"{len(self.unexpected)} file modules not in the network (ignored), "
                f"e.g. {', '.join(self.unexpected[:3])}"
            )
        if self.alpha_defaulted:
            parts.append(f"{len(self.alpha_defaulted)} modules had no alpha in the file (alpha = rank used)")
        if self.bundled:
            parts.append(f"bundled embeddings {', '.join(self.bundled)} (loaded by pivotal tuning: token_string)")
        return "; ".join(parts)


#: how a file begins: a zip archive (``torch.save``'s format) or a raw pickle (protocol 2 and up)
_ZIP_MAGIC, _PICKLE_MAGIC = b"PK\x03\x04", b"\x80"
_CONVERT_HINT = (
    "Use the .safetensors version of this LoRA, or, only if you trust the file, convert it once with "
    "python -c \"import torch, safetensors.torch as st; st.save_file(torch.load('IN.pt', weights_only=False), "
    "'OUT.safetensors')\""
)


def read_state_dict(source) -> tuple[dict[str, torch.Tensor], str]:
    """(tensors, description) from a path (.safetensors, or .ckpt/.pt/.bin loaded weights-only) or a dict.

    Pickles are only ever read with ``torch.load(weights_only=True)``: one that needs more than tensors is
    refused. Every failure is a one-paragraph :class:`ModelLoadError` naming the file, what it is and the
    fix.
    """
    if isinstance(source, dict):
        return dict(source), "a state dict"
    path = Path(source)
    if not path.is_file():
        raise ModelLoadError(f"Network weights file {path} does not exist. Check network_weights.")
    if path.suffix.lower() == ".safetensors":
        try:
            return load_safetensors(path), str(path)
        except ModelLoadError as error:
            raise _safetensors_error(path, error) from None
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols it then reads fine
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- random bytes raise EOFError, KeyError, RuntimeError, UnpicklingError …
        raise _pickle_error(path, exc) from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise ModelLoadError(
            f"Cannot use {path} as LoRA weights: it holds a {type(data).__name__}, not a dict of tensors, so it is "
            "not a LoRA file. Check network_weights."
        )
    foreign = next((k for k, v in data.items() if not isinstance(v, torch.Tensor)), None)
    if foreign is not None:
        raise ModelLoadError(
            f"Cannot use {path} as LoRA weights: its entry {str(foreign)!r} is a {type(data[foreign]).__name__}, "
            "not a tensor, so it is not a LoRA file (a LoRA holds only .lora_down/.lora_up/.alpha tensors). "
            "Check network_weights."
        )
    return data, str(path)


def _file_start(path: Path, size: int = 64) -> bytes:
    try:
        with path.open("rb") as file:
            return file.read(size)
    except OSError:
        return b""


def _pickle_error(path: Path, exc: Exception) -> ModelLoadError:
    """The message for a .pt/.ckpt file that ``torch.load(weights_only=True)`` could not read."""
    start = _file_start(path)
    wanted = re.search(r"(?:Unsupported global: |unsupported )GLOBAL ([\w.]+)", str(exc))
    if wanted or (isinstance(exc, pickle.UnpicklingError) and start.startswith((_ZIP_MAGIC, _PICKLE_MAGIC))):
        what = (
            f"it holds more than tensors (it asks for {wanted.group(1)})"
            if wanted
            else "it holds more than tensors and plain containers, or was not written by torch.save"
        )
        return ModelLoadError(
            f"Refused to load {path} as LoRA weights: it is a pickle that the safe (weights-only) reader cannot "
            f"read, as {what}, and unpickling it fully could run code from the file. LoRA pickles are only "
            f"read weights-only (allow_unsafe_pickle is for base models and resume folders, not LoRAs). "
            f"{_CONVERT_HINT}."
        )
    if not start:
        what = "it is empty"
    elif _as_text(start):
        what = f"it is a text file (it begins {_as_text(start).strip()[:40]!r})"
    else:
        first = str(exc).strip().split("\n")[0].split(". ")[0][:100]
        what = (
            f"it is not a readable PyTorch tensor file ({type(exc).__name__}{': ' + first if first else ''})"
        )
    return ModelLoadError(
        f"Cannot load {path} as LoRA weights: {what}; it may be truncated or another kind of file. Copy or "
        "download it again, or use the .safetensors version of this LoRA."
    )


def _as_text(start: bytes) -> str | None:
    """``start`` as text when it is printable UTF-8 (a character cut at the end allowed), else None."""
    try:
        text = start.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.start < len(start) - 3:
            return None
        text = start[: error.start].decode("utf-8")
    if not text.strip() or not all(c.isprintable() or c in "\r\n\t" for c in text):
        return None
    return text


def _safetensors_error(path: Path, error: ModelLoadError) -> ModelLoadError:
    """A clearer message than the reader's when the file is plainly something else."""
    start = _file_start(path)
    if start.startswith((_ZIP_MAGIC, _PICKLE_MAGIC)):
        return ModelLoadError(
            f"Cannot load {path}: it is named .safetensors but is a PyTorch pickle file. Rename it to .pt (its "
            "tensors are then read weights-only), or convert it to a real .safetensors file."
        )
    text = _as_text(start)
    if text:
        return ModelLoadError(
            f"Cannot load {path}: it is a text file (it begins {text.strip()[:40]!r}), not a safetensors file. "
            "Check network_weights; a download that failed may have saved an error page under the model's name."
        )
    return error


def group_by_module(state_dict: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """{lora_name: {suffix: tensor}}; keys without a known suffix are grouped under their full name."""
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        name, suffix = keys.split_key(key)
        grouped.setdefault(name, {})[suffix or key] = value
    return grouped


class Network(nn.Module):
    """Adapter modules over named model parts; ``state_dict()`` follows the file contract.

    ``text_encoder_modules`` is a list (one text encoder, part ``text_encoder``) or a dict
    {part name: modules} (SDXL: ``text_encoder_1``, ``text_encoder_2``); ``unet_modules`` are the UNet's.
    """

    def __init__(
        self,
        text_encoder_modules: list[NetworkModule] | dict[str, list[NetworkModule]],
        unet_modules: list[NetworkModule],
        multiplier: float = 1.0,
        info: dict | None = None,
    ):
        super().__init__()
        if not isinstance(text_encoder_modules, dict):
            text_encoder_modules = {"text_encoder": list(text_encoder_modules)}
        #: part name -> module names, text encoders first, then the UNet
        self.part_names: dict[str, list[str]] = {
            part: [m.lora_name for m in modules] for part, modules in text_encoder_modules.items()
        }
        self.part_names["unet"] = [m.lora_name for m in unet_modules]
        for module in [*(m for ms in text_encoder_modules.values() for m in ms), *unet_modules]:
            if module.lora_name in self._modules:
                raise ValueError(f"duplicate network module {module.lora_name}")
            self.add_module(module.lora_name, module)
        self.multiplier = multiplier
        #: creation options (dim, alpha, conv_dim, …) for metadata and logs.
        self.info = dict(info or {})
        self.set_multiplier(multiplier)

    @property
    def text_encoder_names(self) -> list[str]:
        return [n for part, names in self.part_names.items() if part != "unet" for n in names]

    @property
    def unet_names(self) -> list[str]:
        return self.part_names["unet"]

    @property
    def text_encoder_modules(self) -> list[NetworkModule]:
        return [self._modules[n] for n in self.text_encoder_names]

    @property
    def unet_modules(self) -> list[NetworkModule]:
        return [self._modules[n] for n in self.unet_names]

    def part_modules(self, part: str) -> list[NetworkModule]:
        return [self._modules[n] for n in self.part_names.get(part, [])]

    def network_modules(self) -> list[NetworkModule]:
        return self.text_encoder_modules + self.unet_modules

    def apply_to(self) -> None:
        """Hook every module into its original layer."""
        for module in self.network_modules():
            module.apply_to()

    def remove(self) -> None:
        """Restore every original layer's forward."""
        for module in self.network_modules():
            module.remove()

    def set_multiplier(self, multiplier: float) -> None:
        """Strength of the whole network (0 = the base model, 1 = as trained)."""
        self.multiplier = multiplier
        for module in self.network_modules():
            module.multiplier = multiplier

    def param_groups(
        self,
        unet_lr: float | None,
        text_encoder_lr: float | list[float] | tuple[float, ...] | None,
        default_lr: float,
        loraplus_unet_ratio: float | None = None,
        loraplus_text_encoder_ratio: float | None = None,
    ) -> list[dict]:
        """Optimizer parameter groups: one per text encoder, one for the UNet.

        ``text_encoder_lr`` is one lr for every text encoder or one per text encoder in part order (SDXL:
        te1, te2, as sd-scripts' two-value ``text_encoder_lr``). A None lr falls back to ``default_lr``; lr 0
        freezes that part (requires_grad off, no group). With a LoRA+ ratio (Hayou et al. 2024) the
        ``lora_up`` weights get their own group at lr × ratio. Each group carries a ``name`` for logging.
        """
        text_parts = [p for p in self.part_names if p != "unet"]
        te_lrs = _per_part(text_encoder_lr, text_parts)
        parts = [(p, self.part_modules(p), te_lrs[p], loraplus_text_encoder_ratio) for p in text_parts]
        parts.append(("unet", self.unet_modules, unet_lr, loraplus_unet_ratio))
        groups: list[dict] = []
        for name, modules, lr, plus_ratio in parts:
            lr = default_lr if lr is None else lr
            by_lr: dict[tuple[str, float], list] = {}
            for m in modules:
                # block-wise lr weights (down/mid/up_lr_weight) split a part into groups; a module's own lr
                # (FLUX's network_reg_lrs, as sd-scripts: even where the part's lr is 0) gets a group of its own
                own = getattr(m, "plan_lr", None)
                weight = getattr(m, "lr_weight", 1.0)
                if own is not None:
                    label, group_lr = f"{name}_lr{own:g}", own
                else:
                    label, group_lr = (name if weight == 1.0 else f"{name}_w{weight:g}"), lr * weight
                for _, p in m.named_parameters():
                    p.requires_grad_(group_lr != 0 and (own is not None or lr != 0))
                if group_lr == 0 or (own is None and lr == 0):
                    continue
                by_lr.setdefault((label, group_lr), []).extend(m.named_parameters())
            for (label, group_lr), named in by_lr.items():
                groups.extend(_groups(label, named, group_lr, plus_ratio))
        return groups

    @torch.no_grad()
    def apply_max_norm(self, max_norm: float) -> tuple[int, float, float]:
        """Scale down every module whose ΔW norm exceeds ``max_norm``; returns (modules scaled, mean norm,
        max norm) measured before scaling. Modules without up/down (LyCORIS) are left alone."""
        norms, scaled = [], 0
        for module in self.network_modules():
            up, down = getattr(module, "lora_up", None), getattr(module, "lora_down", None)
            if up is None or down is None:
                continue
            norm = module.delta_weight().float().norm()
            factor = max_norm_factors(norm, max_norm)
            if factor < 1.0:
                # a split_qkv module holds a list of ups and downs: each pair is scaled alike
                for layer in [*(up if isinstance(up, nn.ModuleList) else [up]),
                              *(down if isinstance(down, nn.ModuleList) else [down])]:
                    layer.weight.mul_(factor.sqrt().to(layer.weight.dtype))
                scaled += 1
            norms.append(norm.item())
        if not norms:
            return 0, 0.0, 0.0
        return scaled, sum(norms) / len(norms), max(norms)

    def file_state_dict(self) -> dict[str, torch.Tensor]:
        """``state_dict()`` as the file contract has it: a module trained per part (``split_qkv``) in its fused
        form (:meth:`~library.networks.lora.SplitLoRAModule.file_entries`)."""
        state = self.state_dict()
        for module in self.network_modules():
            fused = getattr(module, "file_entries", None)
            if fused is None:
                continue
            prefix = module.lora_name + "."
            for key in [k for k in state if k.startswith(prefix)]:
                del state[key]
            state.update({prefix + key: value for key, value in fused().items()})
        return state

    def load_weights(self, source, strict: bool = False) -> LoadReport:
        """Copy weights from a file or state dict into this network (continue training).

        Shapes must match (a rank mismatch raises :class:`ModelLoadError` naming the key and both
        shapes). Modules missing from the file keep their initial weights; file modules unknown to
        the network are ignored; both are listed in the report (and raise with ``strict``).
        A module with no ``alpha`` in the file gets alpha = rank, as sd-scripts does.
        """
        from library.networks.foreign import to_contract

        state_dict, description = read_state_dict(source)
        widths = {m.lora_name: m.org_module.out_features for m in self.network_modules()
                  if isinstance(getattr(m, "org_module", None), nn.Linear)}
        state_dict = to_contract(state_dict, description, widths, source=source)
        grouped = group_by_module(state_dict)
        report = LoadReport(source=description)
        own = self.state_dict()
        mismatches = []
        for name in self.text_encoder_names + self.unet_names:
            if name not in grouped:
                report.missing.append(name)
                continue
            for key, value in _module_entries(self._modules[name], grouped[name], report).items():
                if key not in own:
                    continue
                if tuple(own[key].shape) != tuple(value.shape):
                    mismatches.append((key, tuple(value.shape), tuple(own[key].shape)))
            report.loaded.append(name)
        extra = set(grouped) - set(self._modules)
        bundled = {n for n in extra if n.startswith("bundle_emb.")}  # bundle_emb.<token>...: whole keys
        report.bundled = sorted({n.split(".")[1] for n in bundled})
        report.unexpected = sorted(extra - bundled)
        if mismatches:
            raise ModelLoadError(_mismatch_message(description, mismatches, self.info))
        not_float = sorted(k for k, v in state_dict.items() if not v.is_floating_point())
        if not_float:  # a LoRA of whole numbers is damaged; copying it in would train from rounded weights
            raise ModelLoadError(
                f"{description} holds {len(not_float)} tensors that are not floating point (e.g. {not_float[0]}: "
                f"{state_dict[not_float[0]].dtype}): it is damaged or not a LoRA. Check network_weights."
            )
        if not report.loaded and not any(name.startswith("lora_") for name in grouped):
            raise ModelLoadError(
                f"None of the modules in {description} fit the network being trained ({report.summary()}): it is "
                "not a LoRA of this model. Check network_weights."
            )
        if strict and (report.missing or report.unexpected):
            raise ModelLoadError(f"network weights do not match the network exactly: {report.summary()}")
        self._copy_in(grouped, report.loaded, report)
        logger.info("network weights: %s", report.summary())
        return report

    def _copy_in(self, grouped: dict, names: list[str], report: LoadReport) -> None:
        with torch.no_grad():
            for name in names:
                module = self._modules[name]
                entries = _module_entries(module, grouped[name], report, record=False)
                targets = dict(module.named_parameters()) | dict(module.named_buffers())
                for key, value in entries.items():
                    local = key[len(name) + 1 :]
                    if local in targets:
                        targets[local].copy_(value.to(targets[local].dtype))
                module.on_weights_loaded()

    def save(
        self,
        path: str | os.PathLike,
        dtype: torch.dtype | None = None,
        metadata: dict[str, str] | None = None,
        extra: dict[str, torch.Tensor] | None = None,
    ) -> Path:
        """Save the weights by the contract; ``.safetensors`` gets metadata and the sshs hashes.

        ``dtype`` (e.g. torch.float16 for save_precision fp16) applies to every tensor, alpha
        included, as sd-scripts does. Other suffixes (.ckpt/.pt) are a plain torch tensor dict
        (metadata is not stored there). ``extra`` tensors are stored beside the network's keys as they are.
        The write is atomic.
        """
        tensors = {
            k: v.detach().to("cpu", dtype or v.dtype).contiguous() for k, v in self.file_state_dict().items()
        }
        tensors.update(extra or {})  # e.g. pivotal tuning's bundled embedding (bundle_emb.*), as given
        path = Path(path)
        if path.suffix.lower() == ".safetensors":
            return save_safetensors(path, tensors, metadata)
        with atomic_path(path) as tmp:
            torch.save(tensors, tmp)
        return path


def _per_part(lr, parts: list[str]) -> dict[str, float | None]:
    """One lr per text part from a single value or a list (a one-value list applies to all)."""
    if not isinstance(lr, (list, tuple)):
        return dict.fromkeys(parts, lr)
    if len(lr) == 1:
        return dict.fromkeys(parts, lr[0])
    if len(lr) != len(parts):
        raise ConfigError(
            f"text_encoder_lr has {len(lr)} values but this model has {len(parts)} text encoder(s) "
            f"({', '.join(parts)}): give one value, or one per text encoder."
        )
    return dict(zip(parts, lr, strict=True))


def _groups(name: str, named: list, lr: float, plus_ratio: float | None) -> list[dict]:
    """One group, or two with LoRA+ (Hayou et al. 2024: the ``lora_up`` weights at lr × ratio)."""
    if not plus_ratio:
        return [{"name": name, "params": [p for _, p in named], "lr": lr}]
    plain = [p for n, p in named if not n.startswith("lora_up")]
    ups = [p for n, p in named if n.startswith("lora_up")]
    return [
        {"name": name, "params": plain, "lr": lr},
        {"name": f"{name}_plus", "params": ups, "lr": lr * plus_ratio},
    ]


def _module_entries(
    module: NetworkModule, entries: dict[str, torch.Tensor], report: LoadReport, record: bool = True
) -> dict[str, torch.Tensor]:
    """State-dict entries (full keys) for one module from the file, alpha defaulted to rank when absent."""
    name = module.lora_name
    out = {name + suffix: value for suffix, value in entries.items() if suffix in keys.SUFFIXES}
    alpha_key = name + keys.ALPHA_SUFFIX
    down = entries.get(keys.DOWN_SUFFIX)
    if alpha_key not in out and down is not None and hasattr(module, "alpha"):
        out[alpha_key] = torch.tensor(float(down.shape[0]))
        if record:
            report.alpha_defaulted.append(name)
    from_file = getattr(module, "entries_from_file", None)  # a module stored in another form (split_qkv)
    if from_file is not None:
        local = from_file({key[len(name) + 1 :]: value for key, value in out.items()})
        out = {f"{name}.{key}": value for key, value in local.items()}
    return out


def _mismatch_message(description: str, mismatches: list, info: dict) -> str:
    shown = "; ".join(f"{k}: file {f} vs network {n}" for k, f, n in mismatches[:4])
    more = f" (and {len(mismatches) - 4} more)" if len(mismatches) > 4 else ""
    return (
        f"The network weights in {description} do not fit the network being trained "
        f"(network_dim={info.get('dim')}, conv_dim={info.get('conv_dim')}): {shown}{more}. "
        "The first dimension of lora_down is the file's rank. Set network_dim (and conv_dim in "
        "network_args) to the file's ranks, or set dim_from_weights = true to size the network from the file."
    )


def check_positive_int(name: str, value) -> int:
    """Validate a rank-like option (helper shared by network factories)."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
    return value
