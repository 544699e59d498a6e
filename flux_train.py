"""sd-scripts' name for the FLUX.1 full fine-tune: the same trainer as ``train_db.py`` restricted to FLUX base
models (the transformer is trained; the file saved is the transformer in BFL's layout), so
``accelerate launch flux_train.py --config_file …`` keeps working."""

from library.cli import exit_now, run_trainer
from library.training.db_target import DreamBoothTarget

if __name__ == "__main__":
    exit_now(run_trainer("db", DreamBoothTarget, family="flux"))
