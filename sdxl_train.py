"""sd-scripts' name for the SDXL full fine-tune: the same trainer as ``train_db.py`` restricted to SDXL base
models (sd-scripts' script refuses others too), so ``accelerate launch sdxl_train.py --config_file …`` keeps working."""

from library.cli import exit_now, run_trainer
from library.training.db_target import DreamBoothTarget

if __name__ == "__main__":
    exit_now(run_trainer("db", DreamBoothTarget, family="sdxl"))
