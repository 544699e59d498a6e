"""Tokens per caption: the dataset check and the training summary warn about captions longer than
max_token_length, which training cuts (issue 16, part 9)."""

from __future__ import annotations

import pytest

from library.data.summary import caption_lengths, count_caption_tokens, dataset_caption_lengths
from library.tools.dataset.check import CheckOptions, check_dataset
from tests.tools_dataset.helpers import doctor, textured

LONG = ", ".join(["dog"] * 40)  # 40 one-token words + 39 commas = 79 CLIP tokens


@pytest.fixture
def dataset(tmp_path):
    train = tmp_path / "train" / "2_sks dog"
    for i in range(3):
        textured(train / f"t{i}.png", i)
        (train / f"t{i}.txt").write_text("sks dog, brown fur" if i else LONG, encoding="utf-8")
    return tmp_path / "train", train / "t0.png"


@pytest.mark.slow  # builds the CLIP tokenizer (about a second)
def test_tokens_are_counted_without_bos_and_eos():
    assert count_caption_tokens(["dog", "sks dog, brown fur", LONG, "dog"]) == [1, 5, 79, 1]
    lengths = caption_lengths([("a.png", LONG), ("b.png", "dog")])
    assert lengths.limit == 75 and lengths.over == [("a.png", 79)]
    info, warning = lengths.lines()
    assert info.startswith("caption tokens: max 79, mean 40.0 over 2 captions (max_token_length 75)")
    assert "1 of 2 captions are longer than max_token_length 75" in warning and "a.png (79 tokens)" in warning
    assert "max_token_length = 150 or 225" in warning
    assert caption_lengths([("a.png", LONG)], 150).over == []
    assert len(caption_lengths([("a.png", LONG)], 150).lines()) == 1


@pytest.mark.slow
def test_dataset_check_warns_about_the_long_caption(dataset, capsys):
    folder, long_picture = dataset
    report = check_dataset(folder, opts=CheckOptions(resolution=64))
    (finding,) = [f for f in report.findings if f.code == "long_caption"]
    assert finding.severity == "warning" and finding.paths == (str(long_picture),)
    assert "longer than max_token_length 75 tokens (the longest: 79 tokens)" in finding.message
    assert report.summary["caption_tokens"] == {"max": 79, "mean": 29.7, "limit": 75, "over_limit": 1}
    assert doctor(folder, "--resolution", "64") == 0  # a warning, not an error
    out = capsys.readouterr().out
    assert "WARNING [long_caption]" in out and "Caption tokens: max 79" in out
    relaxed = check_dataset(folder, opts=CheckOptions(resolution=64, max_token_length=150))
    assert "long_caption" not in {f.code for f in relaxed.findings}
    with pytest.raises(SystemExit) as exit_info:  # argparse: only 75 / 150 / 225
        doctor(folder, "--max_token_length", "100")
    assert exit_info.value.code == 2


@pytest.mark.slow
def test_training_summary_names_the_long_caption(dataset):
    from library.data.dataset import TrainDataset
    from library.tools.dataset.check_sources import load_specs

    folder, long_picture = dataset
    ds = TrainDataset(load_specs(folder, None))
    lines = dataset_caption_lengths(ds).lines()
    assert len(lines) == 2 and f"{long_picture} (79 tokens)" in lines[1]
    assert len(dataset_caption_lengths(ds, 225).lines()) == 1
