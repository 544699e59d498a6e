"""Tables of kohya_ss GUI field names: what each one becomes in sd-scripts' options, or why it has no
counterpart here. Read with :mod:`library.gui.kohya_import`.

Source: bmaltais/kohya_ss ``kohya_gui/{lora,dreambooth,finetune,textual_inversion}_gui.py`` (the dict each
``train_model`` writes as the sd-scripts TOML, 2026 snapshot) and ``common_gui.update_my_data``
(legacy fields).
"""

from __future__ import annotations

#: kohya_ss field -> sd-scripts option of the same meaning and value form.
RENAMES = {
    "epoch": "max_train_epochs",  # kohya_ss turns epochs into max_train_steps; sd-scripts' epochs do the same
    "optimizer": "optimizer_type",
    "max_resolution": "resolution",
    "v_param": "v_parameterization",
    "lora_network_weights": "network_weights",  # update_my_data's legacy rename
    "image_folder": "train_data_dir",  # Finetune tab
    "dataset_repeats": "dataset_repeats",
    "learning_rate_te": "learning_rate_te",
    "sd3_fused_backward_pass": "fused_backward_pass",
    "flux_fused_backward_pass": "fused_backward_pass",
    "flux1_clip_l": "clip_l",
    "flux1_t5xxl": "t5xxl",
}

#: the sdxl_* checkboxes and the option each one sets (only when the sdxl checkbox is on, as kohya_ss does).
SDXL_FIELDS = {
    "sdxl_cache_text_encoder_outputs": "cache_text_encoder_outputs",
    "sdxl_no_half_vae": "no_half_vae",
}
#: the same for the Flux.1 checkbox.
FLUX_FIELDS = {
    "flux1_cache_text_encoder_outputs": "cache_text_encoder_outputs",
    "flux1_cache_text_encoder_outputs_to_disk": "cache_text_encoder_outputs_to_disk",
}

#: accelerate launch fields (kohya_gui/class_accelerate_launch.py): flag -> kind.
ACCELERATE_FIELDS = {
    "num_processes": "count",
    "num_machines": "count",
    "num_cpu_threads_per_process": "count",
    "multi_gpu": "switch",
    "gpu_ids": "text",
    "main_process_port": "count",
    "dynamo_backend": "text",
    "dynamo_mode": "text",
    "dynamo_use_fullgraph": "switch",
    "dynamo_use_dynamic": "switch",
    "extra_accelerate_launch_args": "args",
}

_GUI = "describes the kohya_ss GUI itself, not the training run"
_FINETUNE_PREP = (
    "a kohya_ss Finetune preparation step (run tools/merge_captions_to_metadata.py / "
    "prepare_buckets_latents.py before training; the import only reads where their JSON is)"
)
_HUB = "uploading to or resuming from the Hugging Face Hub is not built in; upload the saved files yourself"

#: fields with no counterpart here: field -> the reason shown in the import message.
NO_COUNTERPART = {
    "model_list": _GUI,
    "save_as_bool": _GUI,
    "file_path": _GUI,
    "use_shell": _GUI,
    "headless": _GUI,
    "print_only": _GUI,
    "lowvram": "removed from sd-scripts; kohya_ss no longer passes it",
    "stop_text_encoder_training_pct": "an old kohya_ss field it no longer reads",
    "conv_dims": "an old kohya_ss field it no longer reads (conv_dim replaced it)",
    "conv_alphas": "an old kohya_ss field it no longer reads (conv_alpha replaced it)",
    "create_caption": _FINETUNE_PREP,
    "create_buckets": _FINETUNE_PREP,
    "generate_caption_database": _FINETUNE_PREP,
    "generate_image_buckets": _FINETUNE_PREP,
    "full_path": _FINETUNE_PREP,
    "batch_size": _FINETUNE_PREP + " (the VAE batch size of prepare_buckets_latents.py)",
    "caption_metadata_filename": "read to find in_json (train_dir/<this file>)",
    "latent_metadata_filename": "read to find in_json (train_dir/<this file>)",
    "use_latent_files": "read to pick in_json (the latent metadata file or the caption one)",
    "huggingface_repo_id": _HUB,
    "huggingface_token": _HUB,
    "huggingface_repo_type": _HUB,
    "huggingface_repo_visibility": _HUB,
    "huggingface_path_in_repo": _HUB,
    "save_state_to_huggingface": _HUB,
    "resume_from_huggingface": _HUB,
    "async_upload": _HUB,
    "log_config": "sd-scripts' log_config (the config logged to the tracker) is not supported",
    "log_tracker_config": "sd-scripts' log_tracker_config (a tracker init TOML) is not supported",
    "train_inpainting": "inpainting training (random masks) is not supported",
    "block_lr": "the Finetune tab's per-block learning rates (block_lr) are not supported",
    "fused_optimizer_groups": "fused optimizer groups are not supported (fused_backward_pass is)",
    "disable_mmap_load_safetensors": "SD3 loading option; the SD3 family is not supported",
    "show_timesteps": "sd-scripts' timestep debug plot is not supported",
    "show_timesteps_resolution": "sd-scripts' timestep debug plot is not supported",
    "single_blocks_to_swap": "deprecated in sd-scripts (blocks_to_swap replaced it)",
    "double_blocks_to_swap": "deprecated in sd-scripts (blocks_to_swap replaced it)",
    "t5xxl_lr": "a T5 learning rate; the T5 text encoder is not trained here",
    "noise_offset_type": "chooses which noise options apply (Original: noise_offset…, Multires: "
    "multires_noise_*); read by the import",
    "lr_warmup": "read by the import as lr_warmup_steps (a percentage of the steps)",
    "sdxl": "the model family is detected from pretrained_model_name_or_path; the checkbox is checked "
    "against it",
    "sdxl_checkbox": "the model family is detected from pretrained_model_name_or_path",
}

#: options of train_db.py only here, with the reason a LoRA run cannot use them.
NOT_FOR_TRAINER = {
    "full_bf16": "train_network.py here has no full_bf16 (all-bf16 weights and gradients): the LoRA weights "
    "train in float32 under mixed_precision; use mixed_precision = bf16",
    "full_fp16": "train_network.py here has no full_fp16 (all-fp16 weights and gradients): the LoRA weights "
    "train in float32 under mixed_precision; use mixed_precision = fp16",
}

#: fields kohya_ss' LoRA tab has but ignores (it logs "not yet supported" and passes nothing).
IGNORED_FOR_LORA = {
    "stop_text_encoder_training": 'kohya_ss ignores it for LoRA ("not yet supported") and passes nothing',
}

#: reasons of fields that change nothing in kohya_ss either (they are listed, not counted as lost).
WITHOUT_EFFECT = frozenset(
    {_GUI, _FINETUNE_PREP, _FINETUNE_PREP + " (the VAE batch size of prepare_buckets_latents.py)"}
    | {
        v
        for k, v in NO_COUNTERPART.items()
        if k
        in (
            "lowvram",
            "stop_text_encoder_training_pct",
            "conv_dims",
            "conv_alphas",
            "caption_metadata_filename",
            "latent_metadata_filename",
            "use_latent_files",
            "noise_offset_type",
            "lr_warmup",
            "sdxl",
            "sdxl_checkbox",
        )
    }
)

#: prefixes of the model-family sections kohya_ss has and sdtrain does not.
UNSUPPORTED_FAMILIES = {
    "sd3_": "SD3",
    "clip_g": "SD3",
    "t5xxl_device": "SD3",
    "t5xxl_dtype": "SD3",
    "save_clip": "SD3",
    "save_t5xxl": "SD3",
    "pos_emb_random_crop_rate": "SD3",
    "hunyuan": "HunyuanImage-2.1",
    "anima_": "Anima",
    "lumina_": "Lumina",
}

#: family checkboxes: field -> family name (on: refused; off: nothing to do).
FAMILY_CHECKBOXES = {
    "sd3_checkbox": "SD3",
    "hunyuan_image_checkbox": "HunyuanImage-2.1",
    "anima_checkbox": "Anima",
    "lumina_checkbox": "Lumina",
}
