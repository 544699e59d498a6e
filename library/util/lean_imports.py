"""Start-up: keep diffusers from importing what this trainer never uses.

diffusers imports two optional packages as soon as its model code loads, whenever they are installed:
- bitsandbytes, for its quantized model loading (``BitsAndBytesConfig``): about 1 s of every start on 2 cores
  (and a "Failed to load CPU gemm_4bit_forward from kernels-community" line on CPU). The trainers' own 8-bit
  optimizers import bitsandbytes themselves when chosen.
- peft, for its own LoRA adapters (``load_lora_weights``, layerwise casting of peft layers): about 1.2 s more
  (peft imports bitsandbytes again). Our networks are our own modules and our LoRA files are read by our own
  code, so the trainers never call into diffusers' peft integration. diffusers decides ``USE_PEFT_BACKEND`` when
  ``diffusers.utils`` is first imported, before the flag above can be turned off; left True, every model's first
  forward (``apply_lora_scale``) imports peft: 2 s of the tiny model's first step on 2 cores.

Telling diffusers both are absent changes nothing else in a trainer's process.
"""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger(__name__)

#: diffusers' availability flags that a trainer turns off (``diffusers.utils.import_utils``).
SKIPPED = ("_bitsandbytes_available", "_peft_available")


def skip_diffusers_extras() -> bool:
    """Before diffusers' model code is imported: mark bitsandbytes and peft unavailable to diffusers. True when
    done; False when diffusers' models are loaded already (nothing to gain) or its internals are not as expected
    (then nothing is changed)."""
    if "diffusers.models.modeling_utils" in sys.modules:
        return False
    try:
        import diffusers.utils.import_utils as import_utils
    except ImportError:
        return False
    missing = [flag for flag in SKIPPED if not hasattr(import_utils, flag)]
    if missing:
        logger.debug("diffusers has no %s flag: left as it is", ", ".join(missing))
        return False
    for flag in SKIPPED:
        setattr(import_utils, flag, False)
    import diffusers.utils as utils
    import diffusers.utils.constants as constants

    # read at call time (``from . import USE_PEFT_BACKEND`` in diffusers' forward wrapper) and at the import of
    # the model modules, which come after this
    utils.USE_PEFT_BACKEND = constants.USE_PEFT_BACKEND = False
    return True
