"""Offline CLIP tokenizer built from the bundled BPE merges (no network, no cache folder).

The vocabulary is derived from ``bpe_simple_vocab_16e6.txt.gz`` exactly as OpenAI's CLIP
``SimpleTokenizer`` derives it: the 256 byte-to-unicode symbols, the same symbols with ``</w>``,
the first 48,894 merges joined, then ``<|startoftext|>`` and ``<|endoftext|>`` (49,408 tokens).
SD1 uses it with ``<|endoftext|>`` as padding, SD2 (OpenCLIP) pads with ``!`` (id 0).
"""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

BPE_PATH = Path(__file__).with_name("bpe_simple_vocab_16e6.txt.gz")
VOCAB_SIZE = 49408
MODEL_MAX_LENGTH = 77
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
# 49408 tokens = 2 * 256 byte symbols + merges + 2 special tokens.
NUM_MERGES = VOCAB_SIZE - 2 * 256 - 2


def bytes_to_unicode() -> dict[int, str]:
    """Map every byte 0..255 to a printable unicode character (GPT-2 / CLIP byte-level BPE).

    Printable latin-1 bytes map to themselves; the others map to code points 256, 257, ...
    in byte order. The dict keeps OpenAI's insertion order (printable bytes first), which is the
    order of the first 256 vocabulary ids, so ``"!"`` is id 0.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def read_merges(path: Path = BPE_PATH, count: int = NUM_MERGES) -> list[tuple[str, str]]:
    """Return the first ``count`` merge pairs of the BPE file (the version line is skipped)."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    pairs = [tuple(line.split()) for line in lines[1 : count + 1]]
    return [(a, b) for a, b in pairs]


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """Build the token -> id table in SimpleTokenizer order (ids 0..len-1)."""
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols]
    tokens += ["".join(pair) for pair in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return {tok: i for i, tok in enumerate(tokens)}


@functools.lru_cache(maxsize=1)
def _vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    merges = read_merges()
    return build_vocab(merges), merges


@functools.lru_cache(maxsize=4)
def clip_tokenizer(pad_token: str = EOS_TOKEN):
    """Return the CLIP ViT-L/14 tokenizer (SD1 and SD2 text encoders), built in memory.

    ``pad_token`` is ``"<|endoftext|>"`` for SD1 and ``"!"`` for SD2 (OpenCLIP pads with id 0).
    ``model_max_length`` is 77 (BOS + 75 tokens + EOS). The object is cached: treat it as read-only.
    """
    vocab, merges = _vocab_and_merges()
    from transformers import CLIPTokenizer  # here: transformers takes a second to import (the GUI's start)

    tokenizer = CLIPTokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        unk_token=EOS_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=pad_token,
        model_max_length=MODEL_MAX_LENGTH,
    )
    return tokenizer
