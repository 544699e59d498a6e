"""sd-scripts option names this trainer does not support (yet).

A config that sets one of them gets an error saying so, instead of the generic "unknown key" with a
spelling suggestion, and never has it silently ignored.
"""

from __future__ import annotations

SD_SCRIPTS_NAMES = frozenset(
    """
    dataset_class cache_info debug_dataset face_crop_aug_range
    skip_cache_check
    noise_offset_random_strength adaptive_noise_scale multires_noise_iterations multires_noise_discount
    ip_noise_gamma ip_noise_gamma_random_strength zero_terminal_snr min_timestep max_timestep
    scale_v_pred_loss_like_noise_pred debiased_estimation_loss loss_type huber_schedule
    huber_c huber_scale use_lion_optimizer lr_scheduler_type lr_scheduler_args
    lr_decay_steps lr_scheduler_timescale lr_scheduler_min_lr_ratio save_n_epoch_ratio
    save_last_n_epochs_state save_last_n_steps_state save_state save_state_on_train_end resume
    initial_epoch initial_step skip_until_initial_step huggingface_repo_id huggingface_repo_type
    huggingface_path_in_repo huggingface_token huggingface_repo_visibility save_state_to_huggingface
    resume_from_huggingface async_upload metadata_merged_from
    metadata_preprocessor metadata_is_negative_embedding sample_every_n_steps
    sample_every_n_epochs sample_at_first sample_prompts sample_sampler log_tracker_name
    log_tracker_config wandb_run_name wandb_api_key log_config console_log_file console_log_simple
    full_fp16 full_bf16 fp8_base fp8_base_unet torch_compile dynamo_backend
    cpu_offload_checkpointing lowram highvram ddp_timeout ddp_gradient_as_bucket_view ddp_static_graph
    base_weights base_weights_multiplier learning_rate_te no_token_padding
    stop_text_encoder_training train_text_encoder use_safetensors split_mode
    """.split()
)
