"""DreamBooth: fine-tune the whole UNet (and the text encoder) of SD 1.x, 2.x or SDXL (detected from the model).

Options: --help; configs: --config_file. Writes a single-file checkpoint or a diffusers folder.
"""

from library.cli import exit_now, run_trainer
from library.training.db_target import DreamBoothTarget

if __name__ == "__main__":
    exit_now(run_trainer("db", DreamBoothTarget))
