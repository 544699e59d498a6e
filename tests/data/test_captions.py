from __future__ import annotations

import logging
import random

import pytest
from data_helpers import write_caption

from library.data.captions import CaptionOptions, process_caption, read_caption, split_tags
from library.errors import DatasetError

TAGS = "a, b, c, d, e, f"


def run(caption, epoch=1, seed=0, **opts):
    return process_caption(caption, CaptionOptions(**opts), random.Random(seed), epoch)


@pytest.mark.parametrize(
    ("caption", "opts", "expected"),
    [
        ("a, b", {}, "a, b"),
        ("a,b", {}, "a,b"),  # untouched without shuffle/dropout
        ("a, b", {"caption_prefix": "sks"}, "sks a, b"),
        ("a, b", {"caption_suffix": "style"}, "a, b style"),
        ("a, b", {"caption_prefix": "p,", "caption_suffix": ", s"}, "p, a, b , s"),
        ("a, b", {"caption_dropout_rate": 1.0}, ""),
        ("a, b", {"caption_dropout_rate": 0.0}, "a, b"),
        ("a;;;b, c", {"secondary_separator": ";;;"}, "a,b, c"),
        ("x ||| a, b", {"keep_tokens_separator": "|||"}, "x, a, b"),
        ("x ||| a,, b ||| y", {"keep_tokens_separator": "|||"}, "x, a, b, y"),
        ("a;b, c", {"caption_separator": ";"}, "a;b, c"),
    ],
)
def test_deterministic_cases(caption, opts, expected):
    assert run(caption, **opts) == expected


@pytest.mark.parametrize(("epoch", "dropped"), [(1, False), (2, False), (3, True), (6, True), (7, False)])
def test_dropout_every_n_epochs(epoch, dropped):
    out = run(TAGS, epoch=epoch, caption_dropout_every_n_epochs=3)
    assert (out == "") == dropped


def test_shuffle_keeps_first_tokens_and_is_seeded():
    outs = {run(TAGS, seed=s, shuffle_caption=True, keep_tokens=2) for s in range(30)}
    assert len(outs) > 10
    for out in outs:
        tags = out.split(", ")
        assert tags[:2] == ["a", "b"] and sorted(tags) == ["a", "b", "c", "d", "e", "f"]
    assert run(TAGS, seed=5, shuffle_caption=True) == run(TAGS, seed=5, shuffle_caption=True)


def test_shuffle_matches_random_shuffle_of_flex_part():
    rng = random.Random(11)
    flex = ["c", "d", "e", "f"]
    rng.shuffle(flex)
    assert run(TAGS, seed=11, shuffle_caption=True, keep_tokens=2) == ", ".join(["a", "b"] + flex)


def test_keep_tokens_separator_with_fixed_suffix():
    caption = "sks, 1girl ||| smile, hat, red eyes ||| best quality, hi-res"
    for seed in range(20):
        out = run(caption, seed=seed, shuffle_caption=True, keep_tokens=5, keep_tokens_separator="|||")
        tags = out.split(", ")
        assert tags[:2] == ["sks", "1girl"] and tags[-2:] == ["best quality", "hi-res"]
        assert sorted(tags[2:5]) == ["hat", "red eyes", "smile"]


def test_tag_dropout_only_drops_flex_tags():
    out = run(TAGS, caption_tag_dropout_rate=1.0, keep_tokens=1)
    assert out == "a"
    kept = [len(run(TAGS, seed=s, caption_tag_dropout_rate=0.5).split(", ")) for s in range(200)]
    assert 2.0 < sum(kept) / len(kept) < 4.0  # expected 3 of 6


def test_tag_dropout_matches_rng_draws():
    rng = random.Random(3)
    expected = [t for t in ["a", "b", "c", "d", "e", "f"] if rng.random() >= 0.4]
    assert run(TAGS, seed=3, caption_tag_dropout_rate=0.4) == ", ".join(expected)


def test_dropout_rate_uses_first_draw():
    seeds = [s for s in range(50) if random.Random(s).random() < 0.3]
    for s in range(50):
        assert (run("a", seed=s, caption_dropout_rate=0.3) == "") == (s in seeds)


def test_prefix_is_kept_with_keep_tokens_and_shuffle():
    out = run("a, b, c", seed=1, caption_prefix="sks,", shuffle_caption=True, keep_tokens=1)
    assert out.split(", ")[0] == "sks" and sorted(out.split(", ")) == ["a", "b", "c", "sks"]


def test_secondary_separator_after_shuffle_keeps_groups_together():
    for s in range(10):
        out = run("a;;;b, c, d", seed=s, shuffle_caption=True, secondary_separator=";;;")
        assert "a,b" in out


def test_split_tags():
    assert split_tags(" a , ,b,  c ") == ["a", "b", "c"]


# --- read_caption ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("files", "extension", "class_tokens", "expected"),
    [
        ({".txt": "from txt"}, None, "sks", ("from txt", "txt")),
        ({".caption": "from caption"}, None, "sks", ("from caption", "caption")),
        ({".txt": "t", ".caption": "c"}, None, "sks", ("t", "txt")),
        ({".txt": "t", ".caption": "c"}, ".caption", "sks", ("c", "caption")),
        ({".txt": "t"}, "caption", "sks", ("sks", "class tokens")),
        ({}, None, "sks dog", ("sks dog", "class tokens")),
        ({}, None, "", ("", "none")),
        ({".txt": "\n\n  first line  \nsecond"}, None, "sks", ("first line", "txt")),
        ({".txt": "\ufeffbom caption"}, None, "sks", ("bom caption", "txt")),
    ],
)
def test_read_caption(tmp_path, files, extension, class_tokens, expected):
    image = tmp_path / "img.01.png"
    image.write_bytes(b"")
    for ext, text in files.items():
        write_caption(tmp_path / f"img.01{ext}", text)
    assert read_caption(image, extension, class_tokens) == expected


def test_empty_caption_falls_back_with_warning(tmp_path, caplog):
    image = tmp_path / "a.png"
    write_caption(tmp_path / "a.txt", "  \n\n")
    with caplog.at_level(logging.WARNING):
        assert read_caption(image, ".txt", "sks") == ("sks", "class tokens")
    assert "a.txt" in caplog.text and "empty" in caplog.text


def test_non_utf8_caption_names_file(tmp_path):
    write_caption(tmp_path / "a.txt", "caf\xe9, ni\xf1o".encode("latin-1"))
    with pytest.raises(DatasetError) as err:
        read_caption(tmp_path / "a.png", None, "sks")
    assert "a.txt" in str(err.value) and "UTF-8" in str(err.value)
