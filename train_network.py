"""Train a LoRA (LoCon, LyCORIS) network for SD 1.x, 2.x and SDXL (detected from the model). Options: --help;
configs: --config_file."""

from library.cli import exit_now, run_trainer
from library.training.lora_target import LoRATarget

if __name__ == "__main__":
    exit_now(run_trainer("network", LoRATarget))
