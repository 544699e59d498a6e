"""The FLUX.1 family (dev and schnell): a flow-matching transformer in BFL's layout, CLIP-L's pooled output
and T5-XXL's hidden states, a 16-channel VAE with a shift factor.

Sources: a diffusers ``FluxPipeline`` folder (or hub id), or sd-scripts' separate files —
``pretrained_model_name_or_path`` the transformer file in BFL's key layout (``flux1-dev.safetensors``), with
``clip_l``, ``t5xxl`` and ``ae``. dev and schnell are told apart by the guidance embedding. The denoiser
part is still called ``unet`` (sd-scripts' ``lora_unet_`` prefix), the text parts are CLIP-L
(``lora_te1_``) and T5 (``lora_te3_``, trained only with the network arg ``train_t5xxl``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from library.errors import ConfigError, ModelLoadError
from library.models.family import BlockLayout, Conditioning, ModelFamily, register_family
from library.models.flux_keys import BFL_PREFIX, CLIP_L_CONFIG
from library.models.flux_keys import FLUX_AE_CONFIG as AE_CONFIG
from library.models.flux_keys import T5XXL_CONFIG as T5_XXL_CONFIG
from library.models.flux_model import image_ids, pack_latents, text_ids, unpack_latents
from library.networks.flux_plan import FLUX_PLAN_ARGS, FluxModulePlan
from library.training.flow_matching import FlowMatchingObjective, FlowSettings, flux_time_shift_mu, time_shift

logger = logging.getLogger(__name__)

TE_CLIP = "text_encoder_1"
TE_T5 = "text_encoder_2"
MODEL_VERSION = "flux1"  # sd-scripts' ss_base_model_version for FLUX.1
ARCH_DEV = "flux-1-dev"
ARCH_SCHNELL = "flux-1-schnell"
CLIP_LENGTH = 77
#: the T5 tokenizer sd-scripts uses for FLUX (fetched once from the hub, then from its cache)
T5_TOKENIZER_ID = "google/t5-v1_1-xxl"
#: metadata keys of our own separate files (the tiny model's): module config and tokenizer as JSON
META_CONFIG = "sdtrain.config"
META_TOKENIZER = "sdtrain.tokenizer"
FILE_OPTIONS = ("clip_l", "t5xxl", "ae")
#: embedded guidance of sample images when a prompt gives no --g (sd-scripts' default)
SAMPLE_GUIDANCE = 3.5

# The fixed configs of the real separate files (they carry none): CLIP_L_CONFIG, AE_CONFIG, T5_XXL_CONFIG.


@dataclass(frozen=True)
class FluxRunSettings:
    """What a run sets on a FLUX model (:meth:`FluxFamily.configure`)."""

    guidance_scale: float = 1.0
    t5_max_length: int | None = None
    apply_t5_attn_mask: bool = False
    flow: FlowSettings = FlowSettings()


def _settings(model) -> FluxRunSettings:
    return model.extras.get("flux_settings") or FluxRunSettings()


def _is_dev(transformer) -> bool:
    return bool(transformer.params.guidance_embed)


def _config_from(metadata: dict | None, default: dict) -> dict:
    if metadata and META_CONFIG in metadata:
        return json.loads(metadata[META_CONFIG])
    return dict(default)


def _load_file(path, what: str):
    from library.models.safe_load import load_state_dict_file

    if not path:
        raise ConfigError(
            f"A FLUX transformer file needs its text encoders and autoencoder as separate files, as sd-scripts "
            f"takes them: set {what} (clip_l = clip_l.safetensors, t5xxl = t5xxl_fp16.safetensors, ae = "
            "ae.safetensors), or give a diffusers FLUX folder as pretrained_model_name_or_path."
        )
    return load_state_dict_file(path)


def _assign(module_factory, state: dict, what: str, path, tied: dict[str, str] | None = None) -> torch.nn.Module:
    with torch.device("meta"):
        module = module_factory()
    state = dict(state)
    for key, source in (tied or {}).items():
        if key not in state and source in state:
            state[key] = state[source]
    expected = set(module.state_dict())
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing:
        raise ModelLoadError(
            f"{path}: not a {what} file: {len(missing)} of its weights are missing (e.g. {missing[:3]}); "
            f"unexpected keys: {unexpected[:3]}. Check that {what} points at the right file."
        )
    module.load_state_dict({k: state[k] for k in expected}, strict=True, assign=True)
    _materialise_buffers(module)
    return module.eval()  # in the file's dtype: place_model casts once, to the run's


#: FLUX packs 2x2 patches of the 8x-downsampled latents: picture sides must be multiples of 16
SIDE_MULTIPLE = 16


def _check_sizes(config) -> None:
    """Resolutions and bucket steps that give latents FLUX cannot pack, refused before training (sd-scripts
    asks for multiples of 16 as well)."""
    problems = []
    sides = tuple(config.resolution or ())
    if any(side % SIDE_MULTIPLE for side in sides):
        problems.append(f"resolution = {'x'.join(map(str, sides))}")
    if config.enable_bucket and config.bucket_reso_steps and config.bucket_reso_steps % SIDE_MULTIPLE:
        problems.append(f"bucket_reso_steps = {config.bucket_reso_steps}")
    if problems:
        raise ConfigError(
            f"{' and '.join(problems)}: FLUX packs 2x2 patches of latents 8 times smaller than the picture, so "
            f"picture sides must be multiples of {SIDE_MULTIPLE}. Use e.g. resolution = 1024 and "
            "bucket_reso_steps = 64 (or 16, 32)."
        )


def _stored_dtype(source: str, subfolder: str, local: bool) -> torch.dtype:
    """The floating dtype a diffusers folder's (or cached hub repo's) part is stored in, read from the first
    safetensors header; float32 when that cannot be read (a .bin part, an unusual layout)."""
    from safetensors import safe_open

    folder = Path(source) / subfolder
    if not folder.is_dir():
        try:
            from huggingface_hub import snapshot_download

            # the part's files, which from_pretrained would fetch next anyway
            folder = Path(snapshot_download(source, allow_patterns=[f"{subfolder}/*"],
                                            local_files_only=local)) / subfolder
        except Exception:  # noqa: BLE001 - any hub trouble: fall back to float32, from_pretrained reports it
            return torch.float32
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return torch.float32
    try:
        with safe_open(str(files[0]), "pt") as f:
            for key in f.keys():
                dtype = f.get_slice(key).get_dtype()
                found = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}.get(dtype)
                if found is not None:
                    return found
    except (OSError, ValueError, RuntimeError):
        pass
    return torch.float32


def _materialise_buffers(module: torch.nn.Module) -> None:
    """Non-persistent buffers of a module built on the meta device are not in its file; rebuild them
    (CLIP's ``position_ids`` = 0 … n−1)."""
    for name, buffer in list(module.named_buffers()):
        if not buffer.is_meta:
            continue
        owner_path, _, leaf = name.rpartition(".")
        owner = module.get_submodule(owner_path) if owner_path else module
        if leaf != "position_ids":
            raise ModelLoadError(f"internal: buffer {name} of {type(module).__name__} has no value after loading")
        positions = torch.arange(buffer.shape[-1], dtype=buffer.dtype).expand(buffer.shape).clone()
        owner.register_buffer(leaf, positions, persistent=False)


def _t5_tokenizer(metadata: dict | None, local_hint: str | None = None):
    from transformers import AutoTokenizer

    if metadata and META_TOKENIZER in metadata:
        from tokenizers import Tokenizer
        from transformers import PreTrainedTokenizerFast

        spec = json.loads(metadata[META_TOKENIZER])
        return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(spec["tokenizer"]),
                                       model_max_length=spec.get("model_max_length", 512), eos_token="</s>",
                                       pad_token="<pad>", unk_token="<unk>")
    for local in (True, False):
        try:
            return AutoTokenizer.from_pretrained(T5_TOKENIZER_ID, local_files_only=local)
        except (OSError, ValueError) as error:
            last = error
    raise ModelLoadError(
        f"The T5-XXL tokenizer ({T5_TOKENIZER_ID}, as sd-scripts uses) is not in the Hugging Face cache and "
        f"could not be downloaded ({last}). Run once with internet access, or give a diffusers FLUX folder "
        "(its tokenizer_2/ folder is used)."
    )


class FluxFamily(ModelFamily):
    name = "flux"
    description = "FLUX.1 dev / schnell (flow-matching transformer, CLIP-L + T5-XXL)"
    text_parts = (TE_CLIP, TE_T5)
    lora_prefixes = {TE_CLIP: "lora_te1", TE_T5: "lora_te3", "unet": "lora_unet"}
    base_model_version = MODEL_VERSION
    default_resolution = 1024
    default_max_bucket_reso = 2048
    default_prediction_type = "flow"
    latent_cache_suffix = "flux"
    trains_text_encoder_by_default = False
    single_file_in_memory = False
    lora_unet_markers = ("double_blocks_", "single_blocks_")
    accepted_options = FlowMatchingObjective.OPTIONS | {
        *FILE_OPTIONS, "model_type", "t5xxl_max_token_length", "apply_t5_attn_mask", "guidance_scale",
        "blocks_to_swap", "cpu_offload_checkpointing",
    }
    network_args = frozenset({"train_blocks", "train_t5xxl"}) | FLUX_PLAN_ARGS
    unet_target_blocks = ("DoubleStreamBlock", "SingleStreamBlock")
    unet_conv_target_blocks = ()
    text_target_blocks = ("CLIPAttention", "CLIPSdpaAttention", "CLIPMLP", "T5Attention", "T5DenseGatedActDense")
    # the LoRA tools (merge into / extract from sd-scripts' separate files, as its flux_merge_lora.py)
    label = "FLUX.1"
    lora_network_module = "networks.lora_flux"
    scripts = {"network": "flux_train_network.py", "db": "flux_train.py"}
    part_file_options = {"unet": "flux_model", TE_CLIP: "clip_l", TE_T5: "t5xxl"}

    # --- detection and loading ---
    def detects_diffusers(self, info: dict) -> bool:
        return str(info.get("class_name") or "").startswith("Flux")

    def detects_single_file(self, state_dict) -> bool:
        from library.models.flux_keys import is_bfl_flux

        return is_bfl_flux(state_dict)

    def load_diffusers(self, source: str, local: bool) -> dict:
        from diffusers import AutoencoderKL, FluxTransformer2DModel
        from transformers import AutoTokenizer, CLIPTextModel, T5EncoderModel

        from library.models.flux_keys import from_diffusers_transformer
        from library.models.tokenizer import clip_tokenizer

        kwargs = {"local_files_only": local, "torch_dtype": torch.float32}

        def stored(subfolder: str) -> dict:  # the big parts in their stored dtype (see load_single_file)
            return {**kwargs, "torch_dtype": _stored_dtype(source, subfolder, local)}

        transformer = from_diffusers_transformer(
            FluxTransformer2DModel.from_pretrained(source, subfolder="transformer", **stored("transformer")))
        parts = {
            "unet": transformer,
            "vae": AutoencoderKL.from_pretrained(source, subfolder="vae", **kwargs),
            TE_CLIP: CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **kwargs),
            TE_T5: T5EncoderModel.from_pretrained(source, subfolder="text_encoder_2", **stored("text_encoder_2")),
        }
        try:
            clip = AutoTokenizer.from_pretrained(source, subfolder="tokenizer", local_files_only=local)
        except (OSError, ValueError, TypeError):
            clip = clip_tokenizer()
        t5 = AutoTokenizer.from_pretrained(source, subfolder="tokenizer_2", local_files_only=local)
        return {**parts, "tokenizers": {TE_CLIP: clip, TE_T5: t5}}

    def load_single_file(self, state_dict: dict, metadata: dict | None, source: str,
                         components: dict | None = None) -> dict:
        from diffusers import AutoencoderKL
        from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

        from library.models.flux_keys import (
            ae_from_file,
            clip_l_from_file,
            load_bfl_transformer,
            t5_from_file,
        )
        from library.models.tokenizer import clip_tokenizer

        components = components or {}
        missing = [name for name in FILE_OPTIONS if not components.get(name)]
        if missing:
            _load_file(None, " and ".join(missing))
        # kept in the files' dtypes (bf16, or fp8 for flux1-dev-fp8 files): a float32 copy of FLUX.1-dev would
        # take 48 GB of host memory; place_model casts each part once, to the run's dtype
        transformer = load_bfl_transformer(state_dict).eval()
        clip_state, clip_meta = _load_file(components["clip_l"], "clip_l")
        t5_state, t5_meta = _load_file(components["t5xxl"], "t5xxl")
        ae_state, ae_meta = _load_file(components["ae"], "ae")
        clip_config = _config_from(clip_meta, CLIP_L_CONFIG)
        t5_config = _config_from(t5_meta, T5_XXL_CONFIG)
        ae_config = _config_from(ae_meta, AE_CONFIG)
        clip = _assign(lambda: CLIPTextModel(CLIPTextConfig(**clip_config)), clip_l_from_file(clip_state),
                       "CLIP-L", components["clip_l"])
        t5 = _assign(lambda: T5EncoderModel(T5Config(**t5_config)), t5_from_file(t5_state), "T5-XXL",
                     components["t5xxl"], tied={"encoder.embed_tokens.weight": "shared.weight"})
        t5.encoder.embed_tokens = t5.shared
        with torch.device("meta"):
            vae = AutoencoderKL(**ae_config)
        vae.load_state_dict(ae_from_file(ae_state, vae.config), strict=True, assign=True)
        return {"unet": transformer, "vae": vae.float().eval(), TE_CLIP: clip, TE_T5: t5,
                "tokenizers": {TE_CLIP: clip_tokenizer(), TE_T5: _t5_tokenizer(t5_meta)}}

    def configure(self, model, config) -> None:
        model.extras["flux_settings"] = FluxRunSettings(
            guidance_scale=float(config.guidance_scale), t5_max_length=config.t5xxl_max_token_length,
            apply_t5_attn_mask=bool(config.apply_t5_attn_mask), flow=FlowSettings.from_config(config))
        if config.model_type != "flux":
            raise ConfigError(f"model_type = {config.model_type!r}: only FLUX.1 (model_type = \"flux\") is "
                              "supported; Chroma's transformer is not yet.")
        _check_sizes(config)

    def network_parts(self, parts: list, args: dict) -> list:
        """sd-scripts' lora_flux: T5 gets a LoRA only with ``train_t5xxl``; ``train_blocks`` = all (default),
        single or double picks the transformer blocks; the per-layer ranks, block indices, ``in_dims``,
        ``split_qkv`` and pattern ranks / lrs act through :class:`FluxModulePlan`."""
        blocks = {"single": ("SingleStreamBlock",), "double": ("DoubleStreamBlock",)}.get(
            args.get("train_blocks") or "all", self.unet_target_blocks)
        unet = next((part.module for part in parts if part.is_unet), None)
        plan = FluxModulePlan.from_args(args, unet)
        chosen = []
        for part in parts:
            if part.name == TE_T5 and not args.get("train_t5xxl"):
                continue
            extra = {"blocks": blocks, "extra_paths": plan.extra_paths} if part.is_unet else {}
            chosen.append(dataclasses.replace(part, plan=plan, **extra))
        return chosen

    def swappable_blocks(self, unet) -> list[torch.nn.Module]:
        return [*unet.double_blocks, *unet.single_blocks]

    def blocks_to_swap(self, unet, count: int) -> list[torch.nn.Module]:
        """sd-scripts' count: ``count // 2`` double blocks and twice the rest in single blocks (a double block
        weighs about two single ones), the last ones of each stack, two of each staying on the device, so
        FLUX.1 takes at most 35 (16 -> 8 double + 16 single, 28 -> 14 + 28)."""
        doubles, singles = list(unet.double_blocks), list(unet.single_blocks)

        def split(n: int) -> tuple[int, int]:
            return n // 2, (n - n // 2) * 2

        def fits(n: int) -> bool:
            double, single = split(n)
            return double <= len(doubles) - 2 and single <= len(singles) - 2

        if not fits(count):
            most = max((n for n in range(count) if fits(n)), default=0)
            double, single = split(count)
            raise ConfigError(
                f"blocks_to_swap = {count} would swap {double} of the {len(doubles)} double blocks and {single} of "
                f"the {len(singles)} single blocks (sd-scripts' counting: half the number in double blocks, twice "
                f"the rest in single ones), and two of each must stay on the device: give at most {most}."
            )
        double, single = split(count)
        return [*doubles[len(doubles) - double:], *singles[len(singles) - single:]]

    # --- text ---
    def t5_length(self, model) -> int:
        return _settings(model).t5_max_length or (512 if _is_dev(model.unet) else 256)

    def text_signature(self, model) -> str:
        return f"|t5_length={self.t5_length(model)}|t5_mask={_settings(model).apply_t5_attn_mask}"

    def tokenize(self, model, captions, max_token_length, pad=True) -> dict[str, torch.Tensor]:
        clip = model.tokenizers[TE_CLIP](captions, max_length=CLIP_LENGTH, padding="max_length",
                                         truncation=True, return_tensors="pt")
        t5 = model.tokenizers[TE_T5](captions, max_length=self.t5_length(model), padding="max_length",
                                     truncation=True, return_tensors="pt")
        return {TE_CLIP: clip.input_ids, TE_T5: t5.input_ids}

    def tokenize_weighted(self, model, captions, max_token_length):
        """T5's tokens take the weights (as Forge weights FLUX prompts); CLIP-L gives only the pooled vector,
        which is never weighted, so it reads the captions without their markup."""
        from library.text.attention import plain_text
        from library.text.weighting import sequence_weighted_rows

        tokens = self.tokenize(model, [plain_text(c) for c in captions], max_token_length)
        ids, weights = sequence_weighted_rows(model.tokenizers[TE_T5], captions, self.t5_length(model))
        return {**tokens, TE_T5: ids}, {TE_T5: weights}

    def encode(self, model, tokens, clip_skip, weights=None) -> Conditioning:
        from library.text.weighting import apply_token_weights

        clip, t5 = model.parts[TE_CLIP], model.parts[TE_T5]
        pooled = clip(tokens[TE_CLIP].to(clip.device)).pooler_output
        ids = tokens[TE_T5].to(t5.device)
        mask = (ids != model.tokenizers[TE_T5].pad_token_id).long() if _settings(model).apply_t5_attn_mask else None
        hidden = t5(input_ids=ids, attention_mask=mask).last_hidden_state
        return Conditioning(apply_token_weights(hidden, (weights or {}).get(TE_T5)), pooled, mask)

    # --- the denoiser ---
    def compute_dtype(self, unet) -> torch.dtype:
        return unet.final_layer.linear.bias.dtype

    def predict(self, model, noisy, timesteps, cond, batch) -> torch.Tensor:
        transformer = model.unet
        dtype = self.compute_dtype(transformer)
        b, _, h, w = noisy.shape
        device = noisy.device
        guidance = None
        if _is_dev(transformer):  # the run's guidance_scale; a sample's own (--g) comes in the batch
            value = batch.get("guidance", _settings(model).guidance_scale)
            guidance = torch.full((b,), value, device=device, dtype=dtype)
        out = transformer(
            pack_latents(noisy).to(dtype), image_ids(b, h, w, device, dtype), cond.hidden.to(device, dtype),
            text_ids(b, cond.hidden.shape[1], device, dtype), (timesteps.to(torch.float32) / 1000).to(device, dtype),
            cond.pooled.to(device, dtype), guidance,
            None if cond.mask is None else cond.mask.to(device),
        )
        return unpack_latents(out, h, w).to(noisy.dtype)

    def objective(self, model):
        return FlowMatchingObjective(_settings(model).flow)

    def noise_scheduler(self, v_parameterization: bool):
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)

    # --- sampling and saving ---
    def pipeline(self, model, scheduler):
        return FluxSampler(self, model)

    def pipeline_inputs(self, positive: Conditioning, negative: Conditioning) -> dict:
        return {"positive": positive}

    def diffusers_pipeline(self, modules: dict, tokenizers: dict, scheduler):
        from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

        from library.models.flux_keys import to_diffusers_transformer

        transformer = modules["unet"]
        shift = {"shift": 3.0, "use_dynamic_shifting": True} if _is_dev(transformer) else {"shift": 1.0}
        return FluxPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(
                num_train_timesteps=1000, base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096,
                max_shift=1.15, **shift),
            vae=modules["vae"], text_encoder=modules[TE_CLIP], tokenizer=tokenizers[TE_CLIP],
            text_encoder_2=modules[TE_T5], tokenizer_2=tokenizers[TE_T5],
            transformer=to_diffusers_transformer(transformer),
        )

    def save_single_file(self, model, path, dtype, metadata) -> Path:
        """The transformer alone in BFL's layout (what sd-scripts' flux_train.py saves)."""
        from library.models.single_file import write_checkpoint

        meta = {"modelspec.architecture": self.architecture(False, model), **(metadata or {})}
        return write_checkpoint(path, model.unet.state_dict(), meta, dtype=dtype)

    # --- metadata and layout ---
    def architecture(self, v_prediction: bool, model=None) -> str:
        if model is not None and not _is_dev(model.unet):
            return ARCH_SCHNELL
        return ARCH_DEV

    def unet_key_path(self, unet):
        return lambda path: path

    def text_key_path(self, part: str):
        """T5 is named by its own paths (sd-scripts' ``lora_te3_encoder_block_0_…``); CLIP-L as usual."""
        return (lambda path: path) if part == TE_T5 else None

    def part_file_key_path(self, part: str, key: str) -> str | None:
        """sd-scripts' flux_merge_lora naming: a ``.weight`` key minus ``.weight`` (the transformer file's
        ``model.diffusion_model.`` dropped); clip_l's keys keep their ``text_model.`` root, T5's are T5's own."""
        if not key.endswith(".weight"):
            return None
        path = key.removesuffix(".weight")
        return path.removeprefix(BFL_PREFIX) if part == "unet" else path

    def part_file_module(self, part: str, state_dict) -> torch.nn.Module | None:
        """The transformer on the meta device, sized from its BFL file; text parts: None."""
        from library.models.flux_keys import params_from_bfl_state
        from library.models.flux_model import FluxTransformer

        if part != "unet":
            return None
        with torch.device("meta"):
            return FluxTransformer(params_from_bfl_state(state_dict))

    @property
    def block_layout(self) -> BlockLayout:
        return BlockLayout(FLUX_BLOCK_NAMES, 0, flux_block_index, mid_count=0)


FLUX_DOUBLE_BLOCKS = 19
FLUX_SINGLE_BLOCKS = 38
FLUX_BLOCK_NAMES = tuple([f"D{i:02d}" for i in range(FLUX_DOUBLE_BLOCKS)]
                         + [f"S{i:02d}" for i in range(FLUX_SINGLE_BLOCKS)])


def flux_block_index(lora_name: str) -> int | None:
    """Block of a FLUX LoRA module name: double block i -> i, single block j -> 19 + j."""
    name = lora_name.removeprefix("lora_unet_")
    for marker, offset in (("double_blocks_", 0), ("single_blocks_", FLUX_DOUBLE_BLOCKS)):
        if name.startswith(marker):
            digits = name[len(marker):].split("_", 1)[0]
            return offset + int(digits) if digits.isdigit() else None
    return None


class FluxSampler:
    """Sample images with the model being trained (its LoRA in effect): FLUX.1's Euler flow sampler on our
    transformer — σ from 1 to 0, shifted by the image's token count for dev (BFL's ``get_schedule``),
    the prompt's ``--g`` embedded for dev (3.5 when not given, sd-scripts' default), no classifier-free
    guidance (the CFG scale and negative prompt are not used) — then the VAE decode."""

    #: takes ``guidance`` (sd-scripts' --g) besides the CFG scale
    takes_guidance = True
    #: what ``callback_on_step_end`` may replace between steps (diffusers' convention): the conditioning
    _callback_tensor_inputs = ("positive",)

    def __init__(self, family: FluxFamily, model):
        self.family = family
        self.model = model

    def set_progress_bar_config(self, **kwargs) -> None:
        pass

    def __call__(self, positive: Conditioning, width: int, height: int, num_inference_steps: int,
                 guidance_scale: float, generator: torch.Generator, output_type: str = "pil",
                 guidance: float | None = None, callback_on_step_end=None, **_):
        from PIL import Image

        model = self.model
        transformer = model.unet
        h, w = 2 * math.ceil(height / 16), 2 * math.ceil(width / 16)
        channels = transformer.in_channels // 4
        x = torch.randn((1, channels, h, w), generator=generator, dtype=torch.float32)
        device = transformer.device  # the final layer's: swapped blocks may sit on the host
        x = x.to(device)
        sigmas = torch.linspace(1.0, 0.0, num_inference_steps + 1)
        if _is_dev(transformer):
            sigmas = torch.cat([time_shift(flux_time_shift_mu((h // 2) * (w // 2)), sigmas[:-1]), sigmas[-1:]])
        extras = {"guidance": SAMPLE_GUIDANCE if guidance is None else float(guidance)}
        for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:], strict=True)):
            t = torch.full((1,), float(sigma) * 1000, device=device)
            v = self.family.predict(model, x, t, positive, extras)
            x = x + (float(sigma_next) - float(sigma)) * v.float()
            if callback_on_step_end is not None:  # prompt editing: the next step's conditioning
                positive = callback_on_step_end(self, i, t, {"positive": positive}).get("positive", positive)
        vae = model.vae
        latents = x / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)
        pixels = vae.decode(latents.to(vae.device, vae.dtype)).sample[:, :, :height, :width]
        array = ((pixels[0].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
        return _Output([Image.fromarray(array)])


@dataclass
class _Output:
    images: list


FLUX = register_family(FluxFamily())
