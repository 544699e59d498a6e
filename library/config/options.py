"""The declarations of every training option, in display order (sd-scripts' names).

Adding an option means adding one ``Option(...)`` here; the CLI, TOML, validation and GUI follow.
"""

from __future__ import annotations

from library.config.schema import Group, Option, Schema

NET = frozenset({"network"})
DB = frozenset({"db"})


def _optimizer_names() -> tuple:
    from library.training.optimizers import OPTIMIZERS

    return tuple(OPTIMIZERS.names())


def _scheduler_names() -> tuple:
    from library.training.schedulers import SCHEDULERS

    return tuple(SCHEDULERS.names())


def _check_optimizer(value: str) -> str | None:
    from library.training.optimizers import check_optimizer_name

    return check_optimizer_name(value)


def _network_module_names() -> tuple:
    from library.networks import network_module_names

    return tuple(network_module_names())


def _below_one(value: float) -> str | None:
    return None if value < 1.0 else "must be below 1"


def _thumbnail_problem(value: str) -> str | None:
    from library.training.metadata import thumbnail_problem

    return thumbnail_problem(value)


def _lora_weights_problem(values: list[str]) -> str | None:
    from library.training.sampling.prompts import lora_weights_problem

    return lora_weights_problem(values)


def _sampler_names() -> tuple:
    from library.training.sampling.samplers import SAMPLERS

    return tuple(SAMPLERS.names())


GROUPS = [
    Group("model", "Model", "Base model, its family and precision."),
    Group("folders", "Folders and output", "Where the pictures are and where results go."),
    Group("dataset", "Dataset", "Resolution, batches, buckets, augmentation and latent caching."),
    Group("captions", "Captions", "How captions are read and varied during training."),
    Group("training", "Training", "Steps, learning rates, optimizer and scheduler."),
    Group("network", "Network", "The LoRA network: type, rank, alpha and what it trains."),
    Group("noise", "Noise and loss", "Noise schedule tweaks and loss weighting."),
    Group("validation", "Validation loss",
          "Hold out part of the pictures and track the loss on them: it rises when the model overfits."),
    Group("sampling", "Sample images", "Pictures rendered during training to watch progress."),
    Group("saving", "Saving", "What is saved, how often, in which precision and with which metadata."),
    Group("logging", "Logging", "TensorBoard logs and console output."),
    Group("config", "Config files", "Reading and writing TOML configs."),
]

_SDPA_NOTE = "attention always uses PyTorch's scaled_dot_product_attention (memory-efficient); this flag has no extra effect"

OPTIONS = [
    # --- model -------------------------------------------------------------------------------
    Option("pretrained_model_name_or_path", "path", None,
           "Base model: a diffusers folder, a single-file .safetensors/.ckpt (original SD layout), a Hugging "
           "Face hub id, or builtin:tiny / builtin:tiny-sd2 (the built-in tiny demo model).",
           "model", common=True),
    Option("v2", "bool", False, "The base model is Stable Diffusion 2.x (detected from single files).", "model",
           common=True),
    Option("v_parameterization", "bool", False,
           "The model predicts v (SD 2.x 768-v models); the loss target becomes v.", "model", common=True),
    Option("vae", "path", None, "A replacement VAE: a diffusers folder or a single file.", "model",
           must_exist=True),
    Option("clip_skip", "int", None,
           "Use the output of the n-th last text-encoder layer (2 for most anime models). Unset: the last.",
           "model", min=1, max=12, common=True, zero_is_off=True),
    Option("max_token_length", "int", None,
           "Longest caption in tokens: 75 (unset), 150 or 225 (split into 75-token chunks).", "model",
           choices=(75, 150, 225), zero_is_off=True),
    Option("mixed_precision", "str", "no", "Mixed precision for the forward pass.", "model",
           choices=("no", "fp16", "bf16"), common=True),
    Option("allow_unsafe_pickle", "bool", False,
           "Allow pickles that hold more than tensors (unpickling them may run code: only for files you "
           "trust): .ckpt/.pt models, and the random_states/custom_checkpoint .pkl files of resume folders "
           "(states saved by earlier versions of this trainer).", "model"),
    Option("tokenizer_cache_dir", "dir", None, "Accepted for sd-scripts configs.", "model",
           compat_note="the CLIP tokenizer ships with this project and is never downloaded; tokenizer_cache_dir is not needed"),
    Option("xformers", "bool", False, "Accepted for sd-scripts configs.", "model", compat_note=_SDPA_NOTE),
    Option("sdpa", "bool", False, "Accepted for sd-scripts configs.", "model", compat_note=_SDPA_NOTE),
    Option("mem_eff_attn", "bool", False, "Accepted for sd-scripts configs.", "model", compat_note=_SDPA_NOTE),
    Option("lowram", "bool", False, "Accepted for sd-scripts configs.", "model",
           compat_note="models are read straight into their place here; lowram has no extra effect"),
    Option("highvram", "bool", False, "Accepted for sd-scripts configs.", "model",
           compat_note="models already stay on the device during training; highvram has no extra effect"),
    Option("skip_cache_check", "bool", False, "Accepted for sd-scripts configs.", "dataset",
           compat_note="cached latents are checked against their picture's size and modification time only, "
                       "which is cheap; skip_cache_check has no extra effect"),
    # --- folders -----------------------------------------------------------------------------
    Option("train_data_dir", "dir", None,
           "Folder holding one subfolder per concept, named <repeats>_<class tokens> (e.g. 10_sls 1girl).",
           "folders", common=True, must_exist=True),
    Option("reg_data_dir", "dir", None,
           "Regularisation (prior preservation) images, subfolders named like <repeats>_<class>.", "folders",
           common=True, must_exist=True),
    Option("dataset_config", "file", None,
           "An sd-scripts dataset TOML ([general], [[datasets]], [[datasets.subsets]]) instead of the folders.",
           "folders", must_exist=True),
    Option("output_dir", "path", None, "Where the trained files are written.", "folders", common=True),
    Option("output_name", "str", "last", "Base name of the output files.", "folders", common=True),
    Option("logging_dir", "path", None, "TensorBoard log folder (unset: no logs).", "folders"),
    # --- dataset -----------------------------------------------------------------------------
    Option("resolution", "resolution", "512", "Training resolution: \"512\" or \"width,height\".", "dataset",
           common=True),
    Option("train_batch_size", "int", 1, "Images per batch.", "dataset", min=1, common=True),
    Option("enable_bucket", "bool", False,
           "Aspect-ratio buckets: images keep their shape instead of being cropped square.", "dataset",
           common=True),
    # sd-scripts' bounds: any positive size; min/max are rounded to bucket_reso_steps (down / up, with a note)
    Option("min_bucket_reso", "int", 256, "Smallest bucket side in pixels (rounded down to bucket_reso_steps).",
           "dataset", min=1, zero_is_off=True),
    Option("max_bucket_reso", "int", 1024, "Largest bucket side in pixels (rounded up to bucket_reso_steps).",
           "dataset", min=1, zero_is_off=True),
    Option("bucket_reso_steps", "int", 64,
           "Bucket sides are multiples of this (64 is usual; 8 and less give many small buckets).", "dataset",
           min=1, zero_is_off=True),
    Option("bucket_no_upscale", "bool", False, "Never enlarge small images to fit a bucket.", "dataset"),
    Option("flip_aug", "bool", False, "Randomly flip images horizontally.", "dataset"),
    Option("color_aug", "bool", False, "Small random hue/brightness changes.", "dataset"),
    Option("random_crop", "bool", False, "Crop at a random position instead of the centre.", "dataset"),
    Option("resize_interpolation", "str", None,
           "How pictures are resized to their bucket: lanczos (unset), bicubic, bilinear, area/box, nearest.",
           "dataset", choices=("lanczos", "nearest", "bilinear", "linear", "bicubic", "cubic", "area", "box")),
    Option("conditioning_data_dir", "dir", None,
           "Mask pictures for masked_loss, named like the training pictures: the red channel is the mask "
           "(white learned, black ignored). Also per subset in a dataset config.", "dataset", must_exist=True),
    Option("alpha_mask", "bool", False,
           "Mask the loss with each picture's alpha channel: transparent parts are not learned (also per "
           "subset in a dataset config).", "dataset"),
    Option("cache_latents", "bool", False,
           "Encode every image with the VAE once before training (faster, less memory; no colour aug or "
           "random crop).", "dataset", common=True),
    Option("cache_latents_to_disk", "bool", False,
           "Keep the cached latents in .npz files beside the images and reuse them next time.", "dataset"),
    Option("vae_batch_size", "int", 1, "Images per VAE batch when caching latents.", "dataset", min=1, zero_is_off=True),
    Option("max_data_loader_n_workers", "int", 2, "Threads that load images while the model trains.",
           "dataset", min=0),
    Option("persistent_data_loader_workers", "bool", False, "Accepted for sd-scripts configs.", "dataset",
           compat_note="image loader threads always persist across epochs"),
    Option("prior_loss_weight", "float", 1.0, "Loss weight of regularisation images.", "dataset", min=0.0),
    # --- captions ----------------------------------------------------------------------------
    Option("caption_extension", "str", None,
           "Caption file extension. Unset: <image>.txt, else <image>.caption, else the folder's class tokens.",
           "captions", common=True, empty_is_value=True),
    Option("shuffle_caption", "bool", False, "Shuffle the comma-separated tags each time.", "captions",
           common=True),
    Option("keep_tokens", "int", 0, "Keep the first N tags in place when shuffling or dropping.", "captions",
           min=0, common=True),
    Option("keep_tokens_separator", "str", "",
           "Tags before this separator (e.g. |||) stay fixed; overrides keep_tokens.", "captions"),
    Option("secondary_separator", "str", None,
           "A separator that groups tags into one unit for shuffling, replaced by ', ' afterwards.",
           "captions"),
    Option("caption_separator", "str", ",", "The separator between tags.", "captions"),
    Option("enable_wildcard", "bool", False,
           "Wildcards in captions: {a|b|c} becomes one of a, b, c, and a caption file's lines are alternatives; "
           "a new pick each time a picture is used (seeded, so a resumed run picks the same).", "captions"),
    Option("token_warmup_min", "int", 1, "Token warm-up: the tags (after the kept ones) a caption starts with.",
           "captions", min=0),
    Option("token_warmup_step", "float", 0.0,
           "Token warm-up: the step by which captions reach all their tags, growing from token_warmup_min "
           "(below 1: a share of all steps; 0: off).", "captions", min=0.0),
    Option("caption_prefix", "str", None, "Text put before every caption.", "captions"),
    Option("caption_suffix", "str", None, "Text put after every caption.", "captions"),
    Option("caption_dropout_rate", "float", 0.0, "Probability that a whole caption is left empty.", "captions",
           min=0.0, max=1.0),
    Option("caption_dropout_every_n_epochs", "int", None, "Every n-th epoch all captions are empty.",
           "captions", min=0, zero_is_off=True),
    Option("caption_tag_dropout_rate", "float", 0.0, "Probability that each (non-kept) tag is dropped.",
           "captions", min=0.0, max=1.0),
    Option("weighted_captions", "bool", False,
           "Read captions in the webui's attention syntax: (tag) x1.1, (tag:1.3), [tag] /1.1, \\( for a literal "
           "bracket; the tags' text-encoder states are weighted and their mean restored. Keep commas out of "
           "brackets when tags are shuffled or dropped.", "captions"),
    # --- training ----------------------------------------------------------------------------
    Option("max_train_steps", "int", 1600, "Training length in optimizer steps.", "training", min=1,
           common=True, zero_is_off=True),
    Option("max_train_epochs", "int", None, "Training length in epochs (overrides max_train_steps).",
           "training", min=1, common=True, zero_is_off=True),
    Option("learning_rate", "float", 1e-4, "Learning rate (for groups without their own).", "training",
           min=0.0, common=True),
    Option("unet_lr", "float", None, "Learning rate of the UNet's LoRA modules.", "training", min=0.0,
           trainers=NET, common=True),
    Option("text_encoder_lr", "float_or_floats", None, "Learning rate of the text encoder's LoRA modules.",
           "training", min=0.0, trainers=NET, common=True),
    Option("optimizer_type", "str", "AdamW", "Optimizer (case-insensitive) or a dotted class name.",
           "training", choices=_optimizer_names, check=_check_optimizer, common=True),
    Option("optimizer_args", "strs", [], "Extra optimizer arguments as key=value strings.", "training"),
    Option("use_8bit_adam", "bool", False, "Legacy flag: same as optimizer_type = AdamW8bit.", "training"),
    Option("lr_scheduler", "str", "constant", "Learning-rate schedule.", "training",
           choices=_scheduler_names, common=True),
    Option("lr_warmup_steps", "steps", 0,
           "Warm-up length: a step count, a ratio below 1 of all steps, or \"N%\".", "training"),
    Option("lr_scheduler_num_cycles", "int", 1, "Restarts of cosine_with_restarts.", "training", min=1, zero_is_off=True),
    Option("lr_scheduler_power", "float", 1.0, "Power of the polynomial schedule.", "training"),
    Option("gradient_accumulation_steps", "int", 1, "Batches per optimizer step.", "training", min=1, zero_is_off=True),
    Option("gradient_checkpointing", "bool", False, "Recompute activations in backward: less memory, slower.",
           "training"),
    Option("max_grad_norm", "float", 1.0, "Clip the gradient norm to this (0: no clipping).", "training",
           min=0.0),
    Option("ema_decay", "float", None,
           "Keep an exponential moving average of the trained weights with this decay (e.g. 0.999) and save, "
           "sample and validate with it (unset: off).", "training", min=0.0, min_exclusive=True,
           check=_below_one, zero_is_off=True),
    Option("ema_update_every_n_steps", "int", 1, "Update the moving average every n optimizer steps.",
           "training", min=1, zero_is_off=True),
    Option("seed", "int", None, "Random seed (unset: a random one, written to the metadata).", "training",
           min=0, max=2**32 - 1, common=True),
    # --- network -----------------------------------------------------------------------------
    Option("network_module", "str", "networks.lora", "Network type.", "network", trainers=NET,
           choices=_network_module_names, common=True),
    Option("network_dim", "int", None, "LoRA rank (4 when unset).", "network", min=1, trainers=NET,
           common=True),
    Option("network_alpha", "float", 1.0, "LoRA alpha: the update is scaled by alpha / dim.", "network",
           min=0.0, min_exclusive=True, trainers=NET, common=True),
    Option("network_args", "strs", [],
           "Extra network arguments as key=value strings, e.g. conv_dim=4, conv_alpha=1 (LoCon).", "network",
           trainers=NET),
    Option("network_dropout", "float", None, "Dropout on the LoRA down projection's output.", "network",
           min=0.0, max=1.0, trainers=NET, zero_is_off=True),
    Option("network_weights", "file", None, "Continue training from this LoRA file.", "network",
           must_exist=True, trainers=NET),
    Option("dim_from_weights", "bool", False, "Take ranks and alphas from network_weights.", "network",
           trainers=NET),
    Option("scale_weight_norms", "float", None,
           "Max-norm regularisation: scale each LoRA module's update down to this norm (about 1; the "
           "number of scaled modules is logged).", "network", min=0.0, min_exclusive=True, trainers=NET, zero_is_off=True),
    Option("network_train_unet_only", "bool", False, "Train only the UNet's LoRA modules.", "network",
           trainers=NET),
    Option("network_train_text_encoder_only", "bool", False, "Train only the text encoder's LoRA modules.",
           "network", trainers=NET),
    # --- noise and loss ----------------------------------------------------------------------
    Option("noise_offset", "float", None, "Offset noise strength (about 0.05-0.1 for darker/brighter images).",
           "noise", min=0.0, common=True, zero_is_off=True),
    Option("min_snr_gamma", "float", None, "Min-SNR loss weighting (5 is the paper's value).", "noise",
           min=0.0, min_exclusive=True, zero_is_off=True),
    Option("noise_offset_random_strength", "bool", False,
           "Draw the offset strength uniformly between 0 and noise_offset for each sample.", "noise"),
    Option("adaptive_noise_scale", "float", None,
           "Add |mean of the latents| x this to the noise offset (needs noise_offset).", "noise", zero_is_off=True),
    Option("multires_noise_iterations", "int", None,
           "Pyramid (multi-resolution) noise levels, about 6-10 (better contrast).", "noise", min=1, zero_is_off=True),
    Option("multires_noise_discount", "float", 0.3, "Weight decay per pyramid noise level.", "noise",
           min=0.0, max=1.0),
    Option("ip_noise_gamma", "float", None, "Input perturbation noise strength (about 0.1).", "noise",
           min=0.0, zero_is_off=True),
    Option("ip_noise_gamma_random_strength", "bool", False,
           "Draw the input perturbation strength uniformly between 0 and ip_noise_gamma.", "noise"),
    Option("min_timestep", "int", None, "Lowest timestep trained (0 when unset).", "noise", min=0, max=999),
    Option("max_timestep", "int", None, "Timesteps are drawn below this (1000 when unset).", "noise", min=1,
           max=1000, zero_is_off=True),
    Option("zero_terminal_snr", "bool", False,
           "Rescale the noise schedule so the last step is pure noise (Lin et al. 2023; for v-prediction).",
           "noise"),
    Option("scale_v_pred_loss_like_noise_pred", "bool", False,
           "Weight the v-prediction loss by SNR/(SNR+1), like an ε-prediction loss.", "noise"),
    Option("v_pred_like_loss", "float", None,
           "Add this much of a v-prediction-like loss to an ε-prediction loss (sd-scripts' v_pred_like_loss).",
           "noise", min=0.0, min_exclusive=True, zero_is_off=True),
    Option("debiased_estimation_loss", "bool", False,
           "Weight the loss by 1/sqrt(SNR) (1/(SNR+1) for v-prediction).", "noise"),
    Option("loss_type", "str", "l2", "Loss function.", "noise", choices=("l2", "l1", "huber", "smooth_l1")),
    Option("masked_loss", "bool", False,
           "Mask the loss with the mask pictures of conditioning_data_dir, or with the alpha channel "
           "(alpha_mask).", "noise"),
    Option("huber_schedule", "str", "snr", "How the Huber parameter c varies with the timestep.", "noise",
           choices=("constant", "exponential", "snr")),
    Option("huber_c", "float", 0.1, "The Huber loss parameter c.", "noise", min=0.0, min_exclusive=True,
           max=1.0),
    Option("huber_scale", "float", 1.0, "Scale of the Huber parameter c.", "noise", min=0.0,
           min_exclusive=True),
    # --- validation --------------------------------------------------------------------------
    Option("validation_split", "float", 0.0,
           "Share of each training folder's pictures held out for the validation loss (e.g. 0.1; 0 = none). "
           "Regularisation pictures are never held out.", "validation", min=0.0, check=_below_one),
    Option("validation_seed", "int", None, "Seed of the held-out draw and the validation noise (unset: seed).",
           "validation", min=0, max=2**32 - 1),
    Option("validate_every_n_steps", "int", None, "Also compute the validation loss every n steps.",
           "validation", min=1, zero_is_off=True),
    Option("validate_every_n_epochs", "int", None,
           "Compute the validation loss every n epochs (unset: every epoch, when pictures are held out).",
           "validation", min=1, zero_is_off=True),
    Option("max_validation_steps", "int", None, "Use at most this many validation batches (unset: all).",
           "validation", min=1, zero_is_off=True),
    # --- sampling ----------------------------------------------------------------------------
    Option("sample_prompts", "file", None,
           "Prompt file (.txt lines with --n --w --h --s --l --d --ss options, or .toml/.json).", "sampling",
           must_exist=True, common=True),
    Option("sample_every_n_steps", "int", None, "Render samples every n steps.", "sampling", min=1, zero_is_off=True),
    Option("sample_every_n_epochs", "int", None, "Render samples every n epochs (wins over steps).",
           "sampling", min=1, common=True, zero_is_off=True),
    Option("sample_at_first", "bool", False, "Render samples before the first step.", "sampling"),
    Option("sample_sampler", "str", "ddim", "Sampler for sample images.", "sampling",
           choices=_sampler_names),
    Option("sample_lora_weights", "strs", None,
           "Render every sample prompt at each of these LoRA weights (e.g. [0.6, 1.0]; file names end in "
           "_am<weight>); a prompt's own --am wins. Unset: at the weight being trained (1).", "sampling",
           trainers=NET, check=_lora_weights_problem),
    # --- saving ------------------------------------------------------------------------------
    Option("save_model_as", "str", "safetensors",
           "File format: safetensors, ckpt or pt for networks; safetensors, ckpt, diffusers or "
           "diffusers_safetensors for DreamBooth models.", "saving",
           choices=("safetensors", "ckpt", "pt", "diffusers", "diffusers_safetensors")),
    Option("save_precision", "str", None, "Precision of saved weights (unset: float).", "saving",
           choices=("float", "fp16", "bf16"), common=True),
    Option("save_every_n_epochs", "int", None, "Save every n epochs.", "saving", min=1, common=True, zero_is_off=True),
    Option("save_every_n_steps", "int", None, "Save every n steps.", "saving", min=1, zero_is_off=True),
    Option("save_last_n_epochs", "int", None, "Keep only the last n epoch saves.", "saving", min=1, zero_is_off=True),
    Option("save_last_n_steps", "int", None, "Keep only the step saves of the last n steps.", "saving", min=1, zero_is_off=True),
    Option("save_state", "bool", False,
           "Also save the training state (optimizer, scheduler, RNG, position) with every save, to resume "
           "exactly.", "saving"),
    Option("save_state_on_train_end", "bool", False, "Save the training state when training ends.", "saving"),
    Option("save_last_n_epochs_state", "int", None, "Keep only the last n epoch states (default: as files).",
           "saving", min=1, zero_is_off=True),
    Option("save_last_n_steps_state", "int", None, "Keep only the states of the last n steps.", "saving", min=1, zero_is_off=True),
    Option("resume", "dir", None, "Continue a run from a state folder (<output_name>-...-state).", "saving",
           must_exist=True),
    Option("no_metadata", "bool", False, "Write only the minimal metadata into the network file.", "saving"),
    Option("training_comment", "str", None, "A comment stored in the metadata.", "saving"),
    Option("metadata_title", "str", None, "modelspec title (default: output_name).", "saving"),
    Option("metadata_author", "str", None, "modelspec author.", "saving"),
    Option("metadata_description", "str", None, "modelspec description.", "saving"),
    Option("metadata_license", "str", None, "modelspec license.", "saving"),
    Option("metadata_tags", "str", None, "modelspec tags (comma-separated).", "saving"),
    Option("metadata_trigger_phrase", "str", None,
           "modelspec trigger phrase: the words that call up what was trained (model sites show it).", "saving"),
    Option("metadata_usage_hint", "str", None, "modelspec usage hint (a short note on how to use the model).",
           "saving"),
    Option("metadata_thumbnail", "str", None,
           "modelspec thumbnail: a picture file or a data: URL (default: the first sample image, shrunk).",
           "saving", check=_thumbnail_problem),
    # --- logging -----------------------------------------------------------------------------
    Option("log_prefix", "str", None, "Prefix of the TensorBoard run folder name.", "logging", empty_is_value=True),
    Option("log_with", "str", None, "Logger: tensorboard (default when logging_dir is set), wandb or all.",
           "logging", choices=("tensorboard", "wandb", "all")),
    Option("log_tracker_name", "str", None, "Run name in the logger (default network_train / dreambooth).",
           "logging"),
    Option("wandb_run_name", "str", None, "The run's name in Weights & Biases.", "logging"),
    Option("wandb_api_key", "str", None,
           "Weights & Biases API key (never written to saved configs; prefer `wandb login`).", "logging",
           transient=True),
    Option("console_log_level", "str", "INFO", "Console log level.", "logging",
           choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")),
    Option("console_log_file", "path", None, "Also write the log to this file (appended).", "logging"),
    Option("console_log_simple", "bool", False, "Accepted for sd-scripts configs.", "logging",
           compat_note="the console log is already plain text; console_log_simple has no extra effect"),
    # --- config ------------------------------------------------------------------------------
    Option("config_file", "file", None, "Read options from this TOML (\".toml\" added if missing).", "config",
           transient=True),
    Option("output_config", "path", None, "Write the effective config to this TOML and exit.", "config",
           transient=True),
    Option("estimate", "bool", False,
           "Print the memory and time this config needs on this machine's device, then exit (nothing is trained).",
           "config", transient=True),
    Option("schema_version", "int", 1, "Version of the config format.", "config", min=1, max=1),
]

def _area_options() -> list[Option]:
    """Options declared beside the feature that owns them (one module per area, see AREA_MODULES)."""
    import importlib

    extra: list[Option] = []
    for module in AREA_MODULES:
        extra.extend(importlib.import_module(module).OPTIONS)
    return extra


#: modules holding an ``OPTIONS`` list of further declarations (DreamBooth, sampling, state, ...).
AREA_MODULES: tuple[str, ...] = ("library.config.options_db", "library.config.options_optim",
                                  "library.config.options_families", "library.config.options_resume",
                                  "library.config.options_flux", "library.config.options_finetune",
                                  "library.config.options_distributed", "library.config.options_ti")

OPTIONS = OPTIONS + _area_options()

#: Old or misspelt names that sd-scripts accepts: alias -> current name.
ALIASES = {"caption_extention": "caption_extension"}

SCHEMA = Schema(groups=GROUPS, options=OPTIONS, aliases=ALIASES)
