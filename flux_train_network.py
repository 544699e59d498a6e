"""sd-scripts' name for FLUX.1 LoRA training: the same trainer as ``train_network.py`` restricted to FLUX base
models (sd-scripts' script refuses others too), so ``accelerate launch flux_train_network.py --config_file …``
keeps working."""

from library.cli import exit_now, run_trainer
from library.training.lora_target import LoRATarget

if __name__ == "__main__":
    exit_now(run_trainer("network", LoRATarget, family="flux"))
