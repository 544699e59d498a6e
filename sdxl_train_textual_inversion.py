"""sd-scripts' name for textual inversion on SDXL: the same trainer as train_textual_inversion.py, refusing other
model families as sd-scripts' script does. Writes ``clip_l`` + ``clip_g`` embeddings."""

from library.cli import exit_now, run_trainer
from library.training.ti_target import TextualInversionTarget

if __name__ == "__main__":
    exit_now(run_trainer("ti", TextualInversionTarget, family="sdxl"))
