"""Options of the DreamBooth trainer (``train_db.py``): sd-scripts' names, declared once.

``check_db_rules`` holds the rules between these options and others (sd-scripts' asserts); it runs
before any model is loaded.
"""

from __future__ import annotations

import logging

from library.config.schema import Option
from library.errors import ConfigError

logger = logging.getLogger(__name__)

DB = frozenset({"db"})

#: ``stop_text_encoder_training`` value that means "never train the text encoder" (sd-scripts).
NEVER_TRAIN_TEXT_ENCODER = -1

OPTIONS = [
    Option(
        "train_text_encoder",
        "bool",
        True,
        "Fine-tune the text encoder together with the UNet (sd-scripts' train_db.py always does; turn off "
        "or set stop_text_encoder_training = -1 to train the UNet only, which needs less memory).",
        "training",
        trainers=DB,
        common=True,
    ),
    Option(
        "learning_rate_te",
        "float",
        None,
        "Learning rate of the text encoder (unset: learning_rate; 0: the text encoder is not trained).",
        "training",
        min=0.0,
        trainers=DB,
        common=True,
    ),
    Option(
        "stop_text_encoder_training",
        "int",
        None,
        "Freeze the text encoder after this many optimizer steps and train only the UNet from then on "
        "(unset: train it to the end; -1 or 0: never train it).",
        "training",
        min=NEVER_TRAIN_TEXT_ENCODER,
        trainers=DB,
    ),
    Option(
        "no_token_padding",
        "bool",
        False,
        "Do not pad captions to 77 tokens: each batch is padded only to its longest caption (the old "
        "diffusers DreamBooth behaviour).",
        "captions",
        trainers=DB,
    ),
    Option(
        "full_fp16",
        "bool",
        False,
        'Keep the trained weights themselves in float16 (needs mixed_precision = "fp16"): less memory, '
        "less precise updates.",
        "model",
        trainers=DB,
    ),
    Option(
        "full_bf16",
        "bool",
        False,
        'Keep the trained weights themselves in bfloat16 (needs mixed_precision = "bf16"): less memory, '
        "less precise updates.",
        "model",
        trainers=DB,
    ),
    Option(
        "use_safetensors",
        "bool",
        False,
        "sd-scripts' older switch: save ckpt as .safetensors and diffusers folders with safetensors weights.",
        "saving",
        trainers=DB,
    ),
]


def text_encoder_steps(config) -> int | None:
    """How many optimizer steps train the text encoder: None = all of them, 0 = none.

    ``train_text_encoder`` off, ``learning_rate_te`` 0 or ``stop_text_encoder_training`` -1/0 give 0.
    """
    stop = config.stop_text_encoder_training
    if not config.train_text_encoder or config.learning_rate_te == 0 or stop == NEVER_TRAIN_TEXT_ENCODER:
        return 0
    return stop


def check_db_rules(config) -> None:
    """Rules between DreamBooth options (sd-scripts' checks); raises ``ConfigError``.

    For the lead: call from ``rules.check_rules`` when ``config.trainer == "db"``.
    """
    if config.full_fp16 and config.full_bf16:
        raise ConfigError("'full_fp16' and 'full_bf16' are both set; keep at most one of them.")
    for name, precision in (("full_fp16", "fp16"), ("full_bf16", "bf16")):
        if getattr(config, name) and config.mixed_precision != precision:
            raise ConfigError(
                f'\'{name}\' needs mixed_precision = "{precision}" (it is "{config.mixed_precision}"): the '
                f"weights are kept in {precision}, so the forward pass must run in it too. Set "
                f'mixed_precision = "{precision}" or turn {name} off.'
            )
    if config.no_token_padding and config.max_token_length not in (None, 75):
        raise ConfigError(
            f"'no_token_padding' works with 75-token captions only, but max_token_length = "
            f"{config.max_token_length}. Remove one of the two."
        )
    if config.learning_rate_te and text_encoder_steps(config) == 0:
        logger.warning(
            "learning_rate_te is set but the text encoder is not trained (train_text_encoder = false "
            "or stop_text_encoder_training = %s)",
            config.stop_text_encoder_training,
        )
