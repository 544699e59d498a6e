"""New token embeddings: textual inversion (``ti_target.py``) and pivotal tuning (``lora_target.py``).

``tokens.py`` adds the tokens to a loaded model and rewrites prompts; ``files.py`` holds the file formats the
webui, ComfyUI and diffusers load (``emb_params``; ``clip_l`` + ``clip_g``; the webui's ``.pt``; the
``bundle_emb.*`` keys of a LoRA file); ``templates.py`` sd-scripts' caption templates.
"""
