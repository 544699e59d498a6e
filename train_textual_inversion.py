"""Textual inversion: learn one new token (``token_string``) for SD 1.x, 2.x or SDXL (detected from the model).

Options: --help; configs: --config_file. Writes an embedding the webui, ComfyUI and diffusers load (SD:
``emb_params``; SDXL: ``clip_l`` + ``clip_g``; ``save_model_as = "pt"``: the webui's .pt layout).
"""

from library.cli import exit_now, run_trainer
from library.training.ti_target import TextualInversionTarget

if __name__ == "__main__":
    exit_now(run_trainer("ti", TextualInversionTarget))
