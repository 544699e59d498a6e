"""Test helper: ``train_db.py`` with accelerate's FSDP on CPU processes (gloo).

accelerate turns FSDP on only for GPUs (on a CPU it keeps plain gloo data parallel), while torch's FSDP
itself runs on the CPU. Launched by ``accelerate launch --config_file fsdp.yaml`` (which sets the FSDP_*
environment as for a GPU run), this script switches accelerate's state to FSDP with the plugin that
environment describes, just after the trainer makes its Accelerator: everything after that (prepare, the
steps, gathering for the save) is accelerate's and torch's FSDP code.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
from accelerate import PartialState  # noqa: E402
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin  # noqa: E402

import library.training.loop as loop  # noqa: E402
from library.cli import run_trainer  # noqa: E402
from library.training.db_target import DreamBoothTarget  # noqa: E402

_make_accelerator = loop.make_accelerator


def make_fsdp_accelerator(config, find_unused_parameters: bool = False):
    accelerator = _make_accelerator(config, find_unused_parameters)
    accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin()  # from the FSDP_* environment
    # every AcceleratorState() copies PartialState's values, so both learn the new mode; FSDP wants the device
    # "cpu" where accelerate's CPU mode says "cpu:0"
    for state in (PartialState(), accelerator.state):
        state.distributed_type = DistributedType.FSDP
        state.device = torch.device("cpu")
    return accelerator


loop.make_accelerator = make_fsdp_accelerator

if __name__ == "__main__":
    sys.exit(run_trainer("db", DreamBoothTarget))
