from __future__ import annotations

import os
import subprocess
import sys
import time

from library.models.tokenizer import bytes_to_unicode, clip_tokenizer, read_merges


def test_known_ids_sd1():
    tok = clip_tokenizer()
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tok.pad_token_id == 49407
    assert tok.model_max_length == 77


def test_vocab_layout():
    tok = clip_tokenizer()
    assert len(tok) == 49408
    # First 256 ids: printable bytes first ("!" = 0), then the same symbols with </w> ("a</w>" = 320).
    assert tok.convert_ids_to_tokens([0, 64, 256, 320]) == ["!", "a", "!</w>", "a</w>"]
    assert tok.convert_tokens_to_ids(["<|startoftext|>", "<|endoftext|>"]) == [49406, 49407]
    assert len(read_merges()) == 48894
    assert len(set(bytes_to_unicode().values())) == 256


def test_sd2_pads_with_exclamation_mark():
    tok = clip_tokenizer("!")
    assert tok.pad_token_id == 0
    ids = tok("a cat", padding="max_length", max_length=77).input_ids
    assert ids[:4] == [49406, 320, 2368, 49407]
    assert ids[4:] == [0] * 73


def test_cached_and_fast():
    clip_tokenizer.cache_clear()
    start = time.perf_counter()
    first = clip_tokenizer()
    assert time.perf_counter() - start < 2.0
    assert clip_tokenizer() is first


def test_works_offline():
    code = (
        "from library.models.tokenizer import clip_tokenizer;"
        "print(clip_tokenizer()('a photo of a cat').input_ids)"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME="/nonexistent-hf-home")
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=os.getcwd(), check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[49406, 320, 1125, 539, 320, 2368, 49407]"
