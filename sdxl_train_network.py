"""sd-scripts' name for SDXL LoRA training: the same trainer as ``train_network.py`` (the family is detected
from the model), so ``accelerate launch sdxl_train_network.py --config_file …`` keeps working."""

import sys

from library.cli import run_trainer
from library.training.lora_target import LoRATarget

if __name__ == "__main__":
    sys.exit(run_trainer("network", LoRATarget))
