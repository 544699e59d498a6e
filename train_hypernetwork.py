"""Train an AUTOMATIC1111-style hypernetwork for SD 1.x, 2.x and SDXL: train_network.py with
``network_module = "networks.hypernetwork"`` as the default (network_args layer_structure, activation_func, …).
Options: --help; configs: --config_file."""

from library.cli import exit_now, run_trainer
from library.training.lora_target import LoRATarget

if __name__ == "__main__":
    exit_now(run_trainer("network", LoRATarget, defaults={"network_module": "networks.hypernetwork"}))
