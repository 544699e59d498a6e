"""Options of the flow-matching families (FLUX.1) and of the memory savers for big models, with sd-scripts'
names and defaults (flux_train_utils / train_util), declared once.

The objective options apply to families that train with flow matching; a config setting one for a DDPM
family (or a DDPM-only option such as ``min_snr_gamma`` for FLUX) is refused by the trainer, naming the
option and the family (:func:`library.training.objective.check_objective_options`).
"""

from __future__ import annotations

from library.config.schema import Option

TIMESTEP_SAMPLINGS = ("sigma", "uniform", "sigmoid", "shift", "flux_shift")
MODEL_PREDICTION_TYPES = ("raw", "additive", "sigma_scaled")
WEIGHTING_SCHEMES = ("sigma_sqrt", "logit_normal", "mode", "cosmap", "none", "uniform")

OPTIONS = [
    Option("clip_l", "file", None,
           "FLUX: the CLIP-L text encoder file (sd-scripts' separate files: clip_l.safetensors). Unset: from the "
           "diffusers folder of pretrained_model_name_or_path.", "model", must_exist=True),
    Option("t5xxl", "file", None,
           "FLUX: the T5-XXL text encoder file (t5xxl_fp16.safetensors or an fp8 one). Unset: from the diffusers "
           "folder.", "model", must_exist=True),
    Option("ae", "file", None,
           "FLUX: the autoencoder file (ae.safetensors, 16 latent channels). Unset: from the diffusers folder.",
           "model", must_exist=True),
    Option("model_type", "str", "flux",
           "Which transformer the FLUX family file holds: flux (FLUX.1 dev or schnell, told apart by the "
           "guidance embedding). sd-scripts' chroma is not supported yet.", "model", choices=("flux", "chroma")),
    Option("t5xxl_max_token_length", "int", None,
           "Tokens of T5-XXL text. Unset: 256 for schnell, 512 for dev.", "model", min=1, max=512, zero_is_off=True),
    Option("apply_t5_attn_mask", "bool", False,
           "Mask T5's padding tokens in the T5 encoder and in the transformer's attention.", "model"),
    Option("guidance_scale", "float", 3.5,
           "The guidance value fed to a guidance-distilled model (FLUX.1 dev) while training; 1.0 is common "
           "for LoRAs. Ignored by models without a guidance embedding (schnell).", "training", min=0.0,
           max=100.0),
    Option("timestep_sampling", "str", "sigma",
           "How σ is drawn: sigma (the scheduler's σ at weighting_scheme's density), uniform, sigmoid "
           "(sigmoid of sigmoid_scale·N(0,1)), shift (sigmoid then discrete_flow_shift), flux_shift "
           "(sigmoid then FLUX.1's resolution-dependent shift).", "noise", choices=TIMESTEP_SAMPLINGS),
    Option("sigmoid_scale", "float", 1.0,
           "Scale of the normal draw for sigmoid, shift and flux_shift timestep sampling (larger: more uniform).",
           "noise", min=0.0, min_exclusive=True, max=100.0),
    Option("model_prediction_type", "str", "sigma_scaled",
           "How the prediction meets the target: raw (velocity, sd-scripts' recommendation for FLUX), additive "
           "(prediction + noisy input), sigma_scaled (x_σ − σ·prediction against the picture, weighted by "
           "weighting_scheme, as SD3).", "noise", choices=MODEL_PREDICTION_TYPES),
    Option("discrete_flow_shift", "float", 3.0,
           "Shift of the flow-matching schedule for sigma and shift timestep sampling (3.1582 is common for "
           "FLUX LoRAs).", "noise", min=0.0, min_exclusive=True, max=100.0),
    Option("weighting_scheme", "str", "uniform",
           "diffusers' SD3 weighting: logit_normal / mode set the σ density of timestep_sampling = sigma; "
           "sigma_sqrt / cosmap weight the loss with model_prediction_type = sigma_scaled; none = uniform.",
           "noise", choices=WEIGHTING_SCHEMES),
    Option("logit_mean", "float", 0.0, "Mean of the logit_normal weighting scheme.", "noise",
           min=-10.0, max=10.0),
    Option("logit_std", "float", 1.0, "Standard deviation of the logit_normal weighting scheme.", "noise",
           min=0.0, min_exclusive=True, max=10.0),
    Option("mode_scale", "float", 1.29, "Scale of the mode weighting scheme.", "noise", min=-10.0, max=10.0),
    Option("fp8_base", "bool", False,
           "Store the frozen base model's Linear/Conv weights in float8_e4m3fn (half the memory of bf16), "
           "computed in the mixed-precision dtype; LoRA weights stay in full precision.", "model"),
    Option("fp8_base_unet", "bool", False,
           "Like fp8_base for the denoiser (UNet / FLUX transformer) only; the text encoders keep their dtype.",
           "model"),
    Option("blocks_to_swap", "int", None,
           "Keep the weights of this many transformer blocks in host memory and move each to the GPU just "
           "before it runs (slower, much less GPU memory: sd-scripts fits a FLUX LoRA in 12 GB with fp8_base "
           "and 16 blocks).", "model", min=0, max=200, zero_is_off=True),
    Option("cpu_offload_checkpointing", "bool", False,
           "With gradient_checkpointing, keep the checkpointed block inputs in host memory.", "model"),
    Option("mem_eff_save", "bool", False,
           "Accepted for sd-scripts configs: whole-model saves are always written one tensor at a time (no "
           "second copy of the model in memory), with or without it.", "saving"),
]
