"""The model-family seam: what differs between SD1, SD2, SDXL and FLUX, behind one interface.

A family is one :class:`ModelFamily` subclass in its own module (``sd.py``, ``sdxl.py``, ``flux.py``) registered in
:data:`MODEL_FAMILIES`. The trainer, its targets, the network layer and the tools ask the family for
its named parts, how to detect and load a model, how to turn captions into a :class:`Conditioning`, how
to call the denoiser, how to sample, save and name LoRA keys, and which metadata to write. Nothing
outside the family modules compares a family's name.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from library.errors import ConfigError
from library.util.registry import Registry

#: the part names a UNet family always has besides its text encoders
UNET_PART = "unet"
VAE_PART = "vae"


@dataclass
class Conditioning:
    """What a family's text encoders give the denoiser for a batch of captions.

    ``hidden`` (B, L, D): the cross-attention states (SDXL: both encoders' states concatenated on D);
    ``pooled`` (B, P) or None: the pooled/projected output some families also condition on (SDXL's
    second encoder, FLUX's CLIP-L); ``mask`` (B, L) or None: 1 for real tokens where the denoiser masks
    padding (FLUX with ``apply_t5_attn_mask``).
    """

    hidden: torch.Tensor
    pooled: torch.Tensor | None = None
    mask: torch.Tensor | None = None

    def to(self, dtype: torch.dtype) -> Conditioning:
        pooled = None if self.pooled is None else self.pooled.to(dtype)
        return Conditioning(self.hidden.to(dtype), pooled, self.mask)


@dataclass(frozen=True)
class BlockLayout:
    """How a family's denoiser is numbered for block weights (sd-scripts' and the webui's numbering).

    ``names``: one label per block (``IN00`` … ``M00`` … ``OUT11``); ``index_of(lora_name)``: the block
    of a UNet module's LoRA name, or None outside the numbered blocks; ``per_path``: blocks on one side
    of the middle (12 for SD1/SD2, 9 for SDXL); ``mid_count``: middle blocks (1; SDXL 3); ``leading``:
    blocks before the down path that lr weights do not address (SDXL's BASE: the time/label embedding).
    """

    names: tuple[str, ...]
    per_path: int
    index_of: Callable[[str], int | None]
    mid_count: int = 1
    leading: int = 0

    @property
    def total(self) -> int:
        return len(self.names)


#: the model code of the families built from a diffusers UNet and VAE and transformers' CLIP text models (SD 1/2,
#: SDXL): their :attr:`ModelFamily.single_file_imports`
UNET_VAE_CLIP_CODE = ("diffusers.models.unets.unet_2d_condition", "diffusers.models.autoencoders.autoencoder_kl",
                      "transformers.models.clip.modeling_clip")


class ModelFamily(ABC):
    """One model family. Subclasses set the class data and implement the abstract hooks.

    Class data:
        name: "sd1", "sd2", "sdxl", …
        text_parts: the text encoders' part names in key / parameter-group order.
        lora_prefixes: part -> LoRA key prefix (``lora_unet``, ``lora_te`` or ``lora_te1``/``lora_te2``).
        base_model_version: sd-scripts' ``ss_base_model_version``.
        default_resolution: the training resolution a run uses when none is given.
        latent_cache_suffix: sd-scripts' latent cache file suffix (``sd`` / ``sdxl``).
        v2: the ``ss_v2`` value sd-scripts writes for the family.
    """

    name: str = ""
    text_parts: tuple[str, ...] = ()
    lora_prefixes: Mapping[str, str] = {}
    base_model_version: str = ""
    default_resolution: int = 512
    latent_cache_suffix: str = "sd"
    #: the prediction type of a checkpoint of this family when nothing says otherwise
    default_prediction_type: str = "epsilon"
    #: the largest bucket side a run uses when ``max_bucket_reso`` is not set
    default_max_bucket_reso: int = 1024
    #: whether a single .safetensors file of this family is read into memory of its own (each tensor copied
    #: once, no memory map left behind: the SD families convert every tensor to float32 anyway) rather than
    #: mapped (FLUX: 24 GB of bf16 a host may not hold twice; mapped pages can be dropped under pressure)
    single_file_in_memory: bool = True
    #: the modules a single-file load of this family builds its parts from (diffusers', transformers' model code):
    #: imported while the file's read-ahead (:func:`library.models.loading.read_ahead`) is still reading it,
    #: rather than after the read, where their second or two of imports would wait on it
    single_file_imports: tuple[str, ...] = ()
    v2: bool = False
    description: str = ""
    #: whether train_db.py trains the text encoder(s) when train_text_encoder is not set
    trains_text_encoder_by_default: bool = True
    #: how this family's LoRA files name UNet modules (``lora_unet_`` + one of these)
    lora_unet_markers: tuple[str, ...] = ()
    #: the options only some families use that this one takes (its objective's, its files'); an option
    #: another family takes but this one does not is refused by :func:`check_family_options`
    accepted_options: frozenset[str] = frozenset()
    #: network_args only some families use (FLUX's train_blocks, train_t5xxl); see :meth:`network_parts`
    network_args: frozenset[str] = frozenset()
    #: class names of the denoiser's blocks whose Linear / 1x1 Conv children get a LoRA
    unet_target_blocks: tuple[str, ...] = ("Transformer2DModel",)
    #: blocks searched too when a network trains convolutions (LoCon's conv_dim)
    unet_conv_target_blocks: tuple[str, ...] = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
    #: class names (or base class names) of the text encoders' blocks whose Linear children get a LoRA
    text_target_blocks: tuple[str, ...] = ("CLIPAttention", "CLIPSdpaAttention", "CLIPMLP")
    #: sd-scripts' ``network_module`` of this family's LoRA (the ``ss_network_module`` the LoRA tools write)
    lora_network_module: str = "networks.lora"
    #: part -> the sd-scripts option naming that part's own file, for families whose checkpoints come as
    #: separate part files (FLUX.1: ``flux_model`` the transformer, ``clip_l``, ``t5xxl``); the LoRA tools merge
    #: into and extract from such files key by key (:meth:`part_file_key_path`). Empty: a checkpoint holds the
    #: whole model and the tools load it whole.
    part_file_options: Mapping[str, str] = {}
    #: trainer ("network", "db") -> sd-scripts' entry script of the family's own (flux_train_network.py), which
    #: the GUI launches; empty: train_network.py / train_db.py, which take every family
    scripts: Mapping[str, str] = {}
    #: what the kohya_ss GUI's ``sdxl`` checkbox (its choice of sd-scripts' sdxl_* scripts) says for this family
    kohya_sdxl_checkbox: bool = False
    #: text part -> the key of its vectors in an embedding file (SD: ``emb_params``; SDXL: ``clip_l`` / ``clip_g``),
    #: for the parts that take new tokens (textual inversion, pivotal tuning); empty: the family takes none
    embedding_keys: Mapping[str, str] = {}

    @property
    def label(self) -> str:
        """The short name people know the family by ("SD1", "SDXL", "FLUX.1")."""
        return self.name.upper()

    def part_file_key_path(self, part: str, key: str) -> str | None:
        """The module path LoRA keys name a weight of ``part``'s own file by (see :attr:`part_file_options`),
        e.g. ``double_blocks.0.img_attn.qkv`` for FLUX's ``model.diffusion_model.double_blocks.0.img_attn.qkv.weight``;
        None for a key that is no module weight (a bias, a norm scale) and for families without part files."""
        return None

    def part_file_module(self, part: str, state_dict: Mapping[str, torch.Tensor]) -> torch.nn.Module | None:
        """``part`` built on the meta device from the shapes in its own file (module paths as
        :meth:`part_file_key_path` names them), to choose the layers a trainer adapts; None: not supported."""
        return None

    @property
    def parts(self) -> tuple[str, ...]:
        """Every named module part: text encoders, the denoiser, the VAE."""
        return (*self.text_parts, UNET_PART, VAE_PART)

    @property
    def trainable_parts(self) -> tuple[str, ...]:
        """Parts a network or a fine-tune can train, in key order (text encoders first, as sd-scripts)."""
        return (*self.text_parts, UNET_PART)

    def lora_layout(self) -> tuple:
        """What tells this family's LoRA files apart: the key prefixes and the UNet naming."""
        return tuple(sorted(self.lora_prefixes.values())), self.lora_unet_markers

    def matches_lora_names(self, names) -> bool:
        """Whether LoRA module names (``lora_te1_…``, ``lora_unet_input_blocks_…``) are in this family's layout."""
        text = tuple(f"{prefix}_" for part, prefix in self.lora_prefixes.items() if part != UNET_PART)
        unet = tuple(f"{self.lora_prefixes[UNET_PART]}_{marker}" for marker in self.lora_unet_markers)
        return any(name.startswith(text) or (unet and name.startswith(unet)) for name in names)

    # --- detection and loading ------------------------------------------------------------------------
    @abstractmethod
    def detects_diffusers(self, info: dict) -> bool:
        """Whether a diffusers folder is this family's, from :func:`library.models.loading.diffusers_info`
        (pipeline class, whether it has a second text encoder, the text encoder's activation)."""

    @abstractmethod
    def detects_single_file(self, state_dict: Mapping[str, torch.Tensor]) -> bool:
        """Whether a single file's keys are in this family's original layout."""

    @abstractmethod
    def load_diffusers(self, source: str, local: bool) -> dict:
        """{part: module} plus {"tokenizers": {text part: tokenizer}} from a diffusers folder or hub id."""

    @abstractmethod
    def load_single_file(self, state_dict: dict, metadata: dict | None, source: str,
                         components: dict | None = None) -> dict:
        """{part: module} plus {"tokenizers": …} from a single file in the family's original layout;
        ``components`` names separate files of further parts (FLUX's ``clip_l``, ``t5xxl``, ``ae``)."""

    def noise_scheduler(self, v_parameterization: bool):
        """The training noise scheduler of a loaded model (DDPM for the UNet families)."""
        from library.models.families import make_noise_scheduler

        return make_noise_scheduler("v_prediction" if v_parameterization else "epsilon")

    def configure(self, model, config) -> None:
        """Take the run's family-specific options into ``model.extras`` (after loading; default: none)."""
        return None

    def network_parts(self, parts: list, args: dict) -> list:
        """The network parts (:func:`library.networks.keys.model_parts`) a network trains, given its parsed
        network_args; a family's own network_args (:attr:`network_args`) act here. Default: all parts."""
        return parts

    def text_signature(self, model) -> str:
        """What besides clip_skip / max_token_length changes the text encoders' outputs (for caches)."""
        return ""

    def swappable_blocks(self, unet) -> list[torch.nn.Module] | None:
        """The denoiser's block stack in run order for ``blocks_to_swap`` (None: the family has none)."""
        return None

    def blocks_to_swap(self, unet, count: int) -> list[torch.nn.Module]:
        """The blocks ``blocks_to_swap = count`` keeps in host memory, in run order (default: the first
        ``count`` swappable blocks); a ConfigError when the family has none or ``count`` is too many."""
        blocks = self.swappable_blocks(unet) or []
        if count >= len(blocks):
            raise ConfigError(
                f"blocks_to_swap = {count}: this {self.name} model has {len(blocks)} swappable blocks; give at "
                f"most {max(len(blocks) - 1, 0)} (at least one block stays on the device)."
            )
        return blocks[:count]

    def text_key_path(self, part: str) -> Callable[[str], str] | None:
        """Module path in a text encoder -> the path its LoRA keys are named by; None: CLIP's naming, rooted
        at ``text_model.`` (:func:`library.networks.keys.text_encoder_key_path`)."""
        return None

    def unet_key_path(self, unet: torch.nn.Module) -> Callable[[str], str]:
        """Module path in the denoiser -> the path LoRA keys are named by (identity for diffusers names)."""
        return lambda path: path

    # --- text -----------------------------------------------------------------------------------------
    @abstractmethod
    def tokenize(self, model, captions: list[str], max_token_length: int | None,
                 pad: bool = True) -> dict[str, torch.Tensor]:
        """Token ids per text part, LongTensor (B, n_chunks * 77) each."""

    @abstractmethod
    def encode(self, model, tokens: dict[str, torch.Tensor], clip_skip: int | None,
               weights: dict[str, torch.Tensor] | None = None) -> Conditioning:
        """The conditioning of tokens from :meth:`tokenize`; with ``weights`` from :meth:`tokenize_weighted`,
        each weighted part's hidden states multiplied per token, their mean restored
        (:func:`library.text.weighting.apply_token_weights`)."""

    def tokenize_weighted(self, model, captions: list[str],
                          max_token_length: int | None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Token ids per text part, and per-token weights (FloatTensor, the same shape) for the parts whose
        states take them, of captions in the webui's attention syntax (``(tag:1.3)``, ``[tag]``, ``BREAK``;
        :mod:`library.text.attention`). Default: this family does not take prompt weights."""
        raise ConfigError(f"prompt weights (weighted_captions, (tag:1.2) in sample prompts) are not supported "
                          f"for {self.description or self.name} models.")

    def add_tokens(self, model, tokens: list[str], init_word: str | None) -> dict[str, torch.nn.Parameter]:
        """Add ``tokens`` to the tokenizers of the :attr:`embedding_keys` parts, with new embedding rows in their
        text encoders (the base rows stay as they are); returns {part: rows (len(tokens), D) float32}.
        See :func:`library.models.added_tokens.add_clip_tokens`."""
        if not self.embedding_keys:
            raise ConfigError(
                f"token_string: new tokens (textual inversion, pivotal tuning) are not supported for "
                f"{self.description or self.name} models. Use an SD 1.x, SD 2.x or SDXL base model."
            )
        from library.models.added_tokens import add_clip_tokens

        return add_clip_tokens(model, tuple(self.embedding_keys), tokens, init_word)

    # --- the denoiser ---------------------------------------------------------------------------------
    def compute_dtype(self, denoiser: torch.nn.Module) -> torch.dtype:
        """The dtype the denoiser computes in: that of its first floating parameter wider than a byte, so
        weights stored in fp8 (``fp8_base``) do not make it cast its inputs to fp8. A few parameters are
        looked at, not the whole model (diffusers' ``.dtype`` walks every module, twice a step)."""
        for param in denoiser.parameters():
            if param.is_floating_point() and param.element_size() > 1:
                return param.dtype
        return torch.float32

    @abstractmethod
    def predict(self, model, noisy: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning,
                batch: dict) -> torch.Tensor:
        """The denoiser's output (B, C, h, w) for noisy latents; ``batch`` carries per-sample extras
        (SDXL: the size and crop fields)."""

    def objective(self, model):
        """The training objective of this family's models (DDPM ε / v for the UNet families)."""
        from library.training.objective import DDPMObjective

        return DDPMObjective(model.noise_scheduler, model.v_parameterization)

    # --- sampling and saving --------------------------------------------------------------------------
    def pipeline(self, model, scheduler):
        """A diffusers pipeline over the model's own modules (no copies) for sample images."""
        return self.diffusers_pipeline(model.parts, model.tokenizers, scheduler)

    @abstractmethod
    def pipeline_inputs(self, positive: Conditioning, negative: Conditioning) -> dict:
        """Keyword arguments that hand precomputed conditionings to :meth:`pipeline`'s ``__call__``."""

    @abstractmethod
    def save_single_file(self, model, path: str | os.PathLike, dtype: torch.dtype | None,
                         metadata: dict[str, str] | None) -> Path:
        """One file in the family's original layout (atomic)."""

    @abstractmethod
    def diffusers_pipeline(self, modules: dict, tokenizers: dict, scheduler):
        """A diffusers pipeline object over ``modules`` for ``save_pretrained``."""

    # --- metadata and layout --------------------------------------------------------------------------
    @abstractmethod
    def architecture(self, v_prediction: bool, model=None) -> str:
        """``modelspec.architecture`` of a checkpoint of this family (add ``/lora`` for a LoRA); ``model``
        tells variants apart where the family has them (FLUX dev / schnell)."""

    @property
    @abstractmethod
    def block_layout(self) -> BlockLayout:
        """The block numbering of this family's denoiser for block weights (sd-scripts' numbering)."""


MODEL_FAMILIES = Registry("model family")


def register_family(family: ModelFamily) -> ModelFamily:
    MODEL_FAMILIES.register(family.name, description=family.description)(family)
    return family


#: the family modules, in the order detection asks their families (whatever order a program imported them in)
FAMILY_MODULES = ("library.models.sd", "library.models.sdxl", "library.models.flux")


def _load_family_modules() -> None:
    # imported here: the family modules import this one for the base class
    import importlib

    for module in FAMILY_MODULES:
        importlib.import_module(module)


def get_model_family(name: str) -> ModelFamily:
    """The registered family ``name``; unknown -> ConfigError listing the known ones."""
    _load_family_modules()
    entry = MODEL_FAMILIES.find(name)
    if entry is None:
        raise ConfigError(f"Unknown model family: {MODEL_FAMILIES.unknown_message(name)}")
    return entry.factory


def all_families() -> list[ModelFamily]:
    """Every family in :data:`FAMILY_MODULES` order (within a module, its registration order: sd1, sd2)."""
    _load_family_modules()
    families = [MODEL_FAMILIES.find(n).factory for n in MODEL_FAMILIES.names()]
    order = {module: i for i, module in enumerate(FAMILY_MODULES)}
    return sorted(families, key=lambda family: order.get(type(family).__module__, len(order)))


def check_family_options(config, family: ModelFamily) -> None:
    """Refuse options set in ``config`` that other families use and ``family`` does not (DDPM's
    ``min_snr_gamma`` for a flow-matching model, FLUX's ``timestep_sampling`` for SD1 …) — never ignore
    them. An "off" value (unset, false, 0 or the default) is accepted: copied configs carry those."""
    from library.config.options import SCHEMA

    universe = frozenset().union(*(f.accepted_options for f in all_families()))
    refused = []
    for name in sorted((set(config.explicit) & universe) - family.accepted_options):
        value = getattr(config, name, None)
        if value is None or value is False or value == 0 or (name in SCHEMA and value == SCHEMA[name].default):
            continue
        refused.append(f"{name} = {value!r}")
    if refused:
        users = sorted({f.name for f in all_families() for r in refused if r.split(" = ")[0] in f.accepted_options})
        raise ConfigError(
            f"{', '.join(refused)}: {'this option does' if len(refused) == 1 else 'these options do'} not apply "
            f"to {family.description or family.name} models (the base model is {family.name}; "
            f"{'it is' if len(refused) == 1 else 'they are'} for {', '.join(users)}). Remove "
            f"{'it' if len(refused) == 1 else 'them'} from the config, or choose a base model of that family."
        )


def check_family_network_args(args: dict, family: ModelFamily) -> None:
    """Refuse network_args that other families use and ``family`` does not (FLUX's ``train_blocks`` on SDXL)."""
    universe = frozenset().union(*(f.network_args for f in all_families()))
    refused = sorted(k for k in (set(args) & universe) - family.network_args if args[k] not in (None, False))
    if refused:
        users = sorted({f.name for f in all_families() if set(refused) & f.network_args})
        raise ConfigError(
            f"network_args {', '.join(refused)}: for {', '.join(users)} models, but the base model is "
            f"{family.name} ({family.description}). Remove {'it' if len(refused) == 1 else 'them'}."
        )


def family_of_diffusers(info: dict) -> ModelFamily | None:
    """The family whose detection accepts a diffusers folder's :func:`~library.models.loading.diffusers_info`."""
    for family in all_families():
        if family.detects_diffusers(info):
            return family
    return None


def family_of_single_file(state_dict: Mapping[str, torch.Tensor]) -> ModelFamily | None:
    """The family whose original layout a single file's keys are in, or None."""
    for family in all_families():
        if family.detects_single_file(state_dict):
            return family
    return None


def family_of_lora_names(names) -> ModelFamily | None:
    """The first family whose LoRA key layout the module names are in (SD1 and SD2 share one), or None.

    The denoiser's naming decides first (SDXL and FLUX share the ``lora_te1_`` prefix); a text-only LoRA
    goes by its text prefixes."""
    names = list(names)
    families = all_families()
    for family in families:
        unet = tuple(f"{family.lora_prefixes[UNET_PART]}_{marker}" for marker in family.lora_unet_markers)
        if unet and any(name.startswith(unet) for name in names):
            return family
    text_matches = [family for family in families if family.matches_lora_names(names)]
    for family in text_matches:  # the family whose prefixes cover every name (lora_te3_ is FLUX's, not SDXL's)
        prefixes = tuple(f"{prefix}_" for prefix in family.lora_prefixes.values())
        if all(name.startswith(prefixes) for name in names):
            return family
    return text_matches[0] if text_matches else None
