"""Start-up: keep diffusers from importing what this trainer never uses.

diffusers imports bitsandbytes as soon as its model code loads, whenever bitsandbytes is installed, for its
quantized model loading (``BitsAndBytesConfig``), which the trainers do not use: about 1 s of every start on 2
cores (and a "Failed to load CPU gemm_4bit_forward from kernels-community" line on CPU). The trainers' own 8-bit
optimizers import bitsandbytes themselves when chosen, so telling diffusers it is absent changes nothing else.
"""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger(__name__)


def skip_diffusers_bitsandbytes() -> bool:
    """Before diffusers' model code is imported: mark bitsandbytes unavailable to diffusers. True when done;
    False when diffusers' models are loaded already (nothing to gain) or its internals are not as expected."""
    if "diffusers.models.modeling_utils" in sys.modules:
        return False
    try:
        import diffusers.utils.import_utils as import_utils
    except ImportError:
        return False
    if not hasattr(import_utils, "_bitsandbytes_available"):
        logger.debug("diffusers has no _bitsandbytes_available flag: left as it is")
        return False
    import_utils._bitsandbytes_available = False
    return True
