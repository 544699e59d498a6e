"""Options of the model families beyond SD1/SD2 (sd-scripts' SDXL names), declared once.

They apply to families that have what they name (two text encoders, a VAE that NaNs in fp16); the
trainer checks against the loaded family and says so when an option does not apply.
"""

from __future__ import annotations

from library.config.schema import Option

DB = frozenset({"db"})

OPTIONS = [
    Option(
        "cache_text_encoder_outputs",
        "bool",
        False,
        "Encode every caption once before training and keep the text encoders' outputs (hidden states and "
        "pooled output) in memory; the text encoders then leave the GPU. Needs fixed captions: no "
        "shuffle_caption, caption dropout or tag dropout, and the text encoders are not trained.",
        "dataset",
    ),
    Option(
        "cache_text_encoder_outputs_to_disk",
        "bool",
        False,
        "Like cache_text_encoder_outputs, and keep the outputs beside the pictures "
        "(<stem>_te_outputs.npz, sd-scripts' name) for the next run.",
        "dataset",
    ),
    Option(
        "no_half_vae",
        "bool",
        False,
        "Run the VAE in float32 (SDXL's VAE makes NaNs in fp16). This trainer always keeps the VAE in "
        "float32, so this is on in effect; accepted for sd-scripts configs.",
        "model",
    ),
    Option(
        "learning_rate_te1",
        "float",
        None,
        "SDXL full fine-tune: learning rate of the first text encoder (CLIP ViT-L). Unset: learning_rate_te, "
        "else learning_rate; 0: not trained.",
        "training",
        min=0.0,
        trainers=DB,
    ),
    Option(
        "learning_rate_te2",
        "float",
        None,
        "SDXL full fine-tune: learning rate of the second text encoder (OpenCLIP ViT-bigG). Unset: "
        "learning_rate_te, else learning_rate; 0: not trained.",
        "training",
        min=0.0,
        trainers=DB,
    ),
    Option(
        "fused_backward_pass",
        "bool",
        False,
        "Update each weight as soon as its gradient is ready and free the gradient (with AdaFactor): a full "
        "fine-tune then never holds all gradients, sd-scripts' way to fit SDXL in 24 GB. Needs "
        "gradient_accumulation_steps = 1; max_grad_norm clips each gradient on its own.",
        "training",
        trainers=DB,
    ),
    Option(
        "blockwise_fused_optimizers",
        "bool",
        False,
        "sd-scripts' FLUX fine-tune option: step the weights during backward as their gradients are ready and "
        "free the gradients, with any optimizer whose update of a weight depends on that weight alone (AdamW, "
        "AdamW8bit, Lion, SGDNesterov, AdaFactor): each weight is stepped on its own, which gives the update of "
        "sd-scripts' one-optimizer-per-block. Needs gradient_accumulation_steps = 1.",
        "training",
        trainers=DB,
    ),
]
