"""Options of textual inversion (``train_textual_inversion.py``, trainer "ti") and of pivotal tuning (a LoRA run of
``train_network.py`` that also learns new token embeddings).

The token options are sd-scripts' names from its ``train_textual_inversion.py``; pivotal tuning (which sd-scripts
does not have) reuses them in the LoRA trainer — ``token_string`` set there turns it on — plus ``embedding_lr`` and
``embedding_stop_step`` (named like ``unet_lr`` / ``text_encoder_lr`` and DreamBooth's stop step).
"""

from __future__ import annotations

from library.config.schema import Option
from library.errors import ConfigError

TI = frozenset({"ti"})
NET = frozenset({"network"})
TI_AND_NET = TI | NET

OPTIONS = [
    Option("token_string", "str", None,
           "The new token to learn (a made-up word such as 'sksdog', not already in the tokenizer); captions and "
           "sample prompts use it. Textual inversion needs it; in a LoRA run it turns pivotal tuning on (the "
           "LoRA and the token's embedding are trained together and saved in one file).", "network",
           trainers=TI_AND_NET, common=True),
    Option("init_word", "str", None,
           "The word(s) whose embeddings the new token's vectors start from (repeated or cut to "
           "num_vectors_per_token). Unset: the mean of all token embeddings.", "network", trainers=TI_AND_NET),
    Option("num_vectors_per_token", "int", 1,
           "Vectors the new token stands for (token_string is written as token_string, token_string1, … "
           "internally; more vectors hold more detail, but take more of the 75-token prompt).", "network",
           min=1, max=75, trainers=TI_AND_NET),
    Option("weights", "file", None,
           "Continue from this embedding file (.safetensors emb_params / clip_l + clip_g, or a webui .pt); its "
           "vector count must equal num_vectors_per_token.", "network", must_exist=True, trainers=TI),
    Option("use_object_template", "bool", False,
           "Ignore the captions and train on sd-scripts' object templates ('a photo of a {token}', …).",
           "captions", trainers=TI),
    Option("use_style_template", "bool", False,
           "Ignore the captions and train on sd-scripts' style templates ('a painting in the style of {token}', …).",
           "captions", trainers=TI),
    Option("embedding_lr", "float", None,
           "Pivotal tuning: the learning rate of the new token's embedding (unset: learning_rate; embeddings "
           "usually want more than the LoRA, e.g. 5e-3 with AdamW).", "training", min=0.0, trainers=NET),
    Option("embedding_stop_step", "int", None,
           "Pivotal tuning: stop training the embedding after this many optimizer steps (the LoRA goes on; "
           "unset: the whole run).", "training", min=0, trainers=NET),
]


def token_strings(token_string: str, num_vectors: int) -> list[str]:
    """The tokens added to the tokenizers, as sd-scripts names them: ``tok``, ``tok1``, ``tok2``, …"""
    return [token_string] + [f"{token_string}{i}" for i in range(1, num_vectors)]


def check_token_rules(config, required: bool) -> None:
    """The token options of ``config`` (textual inversion: ``required``; LoRA: pivotal tuning when set)."""
    token = config.token_string
    if token is None:
        if required:
            raise ConfigError(
                "option 'token_string' is missing: textual inversion learns one new token; give a made-up word "
                "such as token_string = \"sksdog\" and use it in the captions (or use_object_template)."
            )
        others = [n for n in ("init_word", "embedding_lr", "embedding_stop_step")
                  if getattr(config, n, None) is not None] + (
            ["num_vectors_per_token"] if config.num_vectors_per_token != 1 else [])
        if others:
            raise ConfigError(
                f"{', '.join(others)} set without token_string: these are for pivotal tuning. Set token_string "
                f"(the new token) too, or remove them."
            )
        return
    if not token.strip() or any(c.isspace() for c in token):
        raise ConfigError(
            f"option 'token_string': {token!r} must be one word without spaces (e.g. \"sksdog\"), since it "
            f"becomes one token of the tokenizer."
        )
    if "." in token:
        raise ConfigError(
            f"option 'token_string': {token!r} must not hold a '.': LoRA files name bundled embeddings "
            f"bundle_emb.<token>.…, which a dot would cut. Use letters, digits, '_' or '-'."
        )
    if getattr(config, "use_object_template", False) and getattr(config, "use_style_template", False):
        raise ConfigError(
            "'use_object_template' and 'use_style_template' are both set; choose one (objects: 'a photo of a …', "
            "styles: 'a painting in the style of …')."
        )
