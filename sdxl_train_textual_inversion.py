"""sd-scripts' name for textual inversion on SDXL: the same trainer as train_textual_inversion.py, refusing other
model families as sd-scripts' script does. Writes ``clip_l`` + ``clip_g`` embeddings."""

import sys

from library.cli import run_trainer
from library.training.ti_target import TextualInversionTarget

if __name__ == "__main__":
    sys.exit(run_trainer("ti", TextualInversionTarget, family="sdxl"))
