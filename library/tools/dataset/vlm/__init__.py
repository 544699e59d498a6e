"""Captioning with vision-language models: Florence-2, JoyCaption, Qwen2.5-VL / Qwen3-VL through transformers,
or any OpenAI-compatible chat-completions endpoint (vLLM, Ollama, LM Studio).

``base`` holds the backend registry, ``prompts`` the prompt templates, ``run`` the resumable folder run and
``cli`` the command line of ``tools/caption_images_vlm.py``; one module per backend registers itself.
"""
