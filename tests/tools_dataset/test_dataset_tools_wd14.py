"""WD14 tagger: preprocessing by hand, tag selection, every CLI option, batching and bad input."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from library.errors import ModelLoadError
from library.tools.dataset.tiny_tagger import tiny_probabilities
from library.tools.dataset.wd14 import preprocess_image
from library.tools.dataset.wd14_model import best_providers, resolve_model_files
from tests.tools_dataset.helpers import load_wd14_tool, solid

ROOT = Path(__file__).resolve().parents[2]
RED, GREEN = (255, 0, 0), (0, 255, 0)
RED_TAGS = "solo, red, long_hair, ^_^, simple_background, red_hood"


def _tool():
    return load_wd14_tool("wd14_tool")


def tag(folder: Path, model_dir: Path, *options: str) -> int:
    return _tool().main([str(folder), "--model_dir", str(model_dir), "--repo_id", "", *options])


def caption(folder: Path, name: str, ext: str = ".txt") -> str:
    return (folder / name).with_suffix(ext).read_text(encoding="utf-8").strip()


def test_preprocess_matches_hand_computation():
    # 4x2 picture: left half A, right half B; padded to 4x4 with one white row above and below,
    # then area-resized to 2x2: each output pixel is the mean of a white row and a colour row.
    a, b = (1, 51, 101), (11, 31, 201)
    img = Image.new("RGB", (4, 2))
    for x in range(4):
        for y in range(2):
            img.putpixel((x, y), a if x < 2 else b)
    out = preprocess_image(img, 2)
    mean_a = [(255 + c) / 2 for c in a][::-1]  # BGR
    mean_b = [(255 + c) / 2 for c in b][::-1]
    expected = np.array([[mean_a, mean_b], [mean_a, mean_b]], dtype=np.float32)
    assert out.dtype == np.float32 and out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out, expected)


def test_preprocess_pads_tall_pictures_left_and_right_and_enlarges():
    img = Image.new("RGB", (1, 3), (0, 0, 0))
    out = preprocess_image(img, 3)  # same size: padding only, no resize
    assert out[:, 0].tolist() == [[255.0] * 3] * 3 and out[:, 2].tolist() == [[255.0] * 3] * 3
    assert out[:, 1].tolist() == [[0.0] * 3] * 3
    assert preprocess_image(img, 8).shape == (8, 8, 3)


def test_tiny_tagger_outputs_the_documented_probabilities(tiny_tagger_dir):
    from library.tools.dataset.wd14_model import WD14Model

    model = WD14Model(tiny_tagger_dir / "model.onnx", tiny_tagger_dir / "selected_tags.csv")
    batch = np.stack([preprocess_image(Image.new("RGB", (64, 64), c), 64) for c in (RED, (10, 200, 90))])
    probs = model.predict(batch)
    for row, colour in zip(probs, (RED, (10, 200, 90)), strict=True):
        np.testing.assert_allclose(row, list(tiny_probabilities(colour).values()), atol=1e-6)


@pytest.fixture
def red_green(tmp_path):
    folder = tmp_path / "pics"
    solid(folder / "a_red.png", RED)
    solid(folder / "b_green.png", GREEN)
    return folder


def test_default_thresholds_and_order(red_green, tiny_tagger_dir):
    assert tag(red_green, tiny_tagger_dir) == 0
    assert caption(red_green, "a_red") == RED_TAGS
    # green: solo .9, green 1, long_hair .5, simple_background .6, hatsune_miku .7
    assert caption(red_green, "b_green") == "solo, green, long_hair, simple_background, hatsune_miku"


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--thresh", "0.7"], "solo, red, ^_^, red_hood"),
        (["--general_threshold", "0.7"], "solo, red, ^_^, red_hood"),
        (["--general_threshold", "0.7", "--character_threshold", "0.85"], "solo, red, ^_^"),
        (["--character_threshold", "1.5"], "solo, red, long_hair, ^_^, simple_background"),
        (["--character_tags_first"], "red_hood, solo, red, long_hair, ^_^, simple_background"),
        (["--remove_underscore"], "solo, red, long hair, ^_^, simple background, red hood"),
        (["--undesired_tags", "solo, red_hood"], "red, long_hair, ^_^, simple_background"),
        (
            ["--always_first_tags", "simple_background,red,absent"],
            "simple_background, red, solo, long_hair, ^_^, red_hood",
        ),
        (
            ["--tag_replacement", "red,crimson;long_hair,long\\,hair"],
            "solo, crimson, long,hair, ^_^, simple_background, red_hood",
        ),
        (["--use_rating_tags"], "sensitive, " + RED_TAGS),
        (["--use_rating_tags_as_last_tag"], RED_TAGS + ", sensitive"),
        (["--caption_separator", " | "], RED_TAGS.replace(", ", " | ")),
    ],
)
def test_tag_options(red_green, tiny_tagger_dir, options, expected):
    assert tag(red_green, tiny_tagger_dir, *options) == 0
    assert caption(red_green, "a_red") == expected


def test_rating_is_the_argmax_of_the_rating_columns(red_green, tiny_tagger_dir):
    assert tag(red_green, tiny_tagger_dir, "--use_rating_tags", "--thresh", "0.95") == 0
    assert caption(red_green, "a_red") == "sensitive, red"
    assert caption(red_green, "b_green") == "questionable, green"


def test_existing_captions_are_kept_appended_or_overwritten(red_green, tiny_tagger_dir):
    (red_green / "a_red.txt").write_text("my own words, red\n", encoding="utf-8")
    assert tag(red_green, tiny_tagger_dir) == 0
    assert caption(red_green, "a_red") == "my own words, red"
    assert tag(red_green, tiny_tagger_dir, "--append_tags") == 0
    assert (
        caption(red_green, "a_red") == "my own words, red, solo, long_hair, ^_^, simple_background, red_hood"
    )
    assert tag(red_green, tiny_tagger_dir, "--overwrite") == 0
    assert caption(red_green, "a_red") == RED_TAGS


def test_caption_extension_recursive_frequency_and_debug(red_green, tiny_tagger_dir, capsys):
    solid(red_green / "sub" / "c_red.png", RED)
    assert tag(red_green, tiny_tagger_dir, "--caption_extension", ".caption") == 0
    assert caption(red_green, "a_red", ".caption") == RED_TAGS
    assert not (red_green / "sub" / "c_red.caption").exists()
    capsys.readouterr()
    assert tag(red_green, tiny_tagger_dir, "--recursive", "--frequency_tags", "--debug", "--overwrite") == 0
    assert caption(red_green / "sub", "c_red") == RED_TAGS
    out = capsys.readouterr().out
    lines = [line.split() for line in out.splitlines()]
    assert ["solo", "3"] in lines and ["red", "2"] in lines and ["hatsune_miku", "1"] in lines
    assert lines.index(["solo", "3"]) < lines.index(["hatsune_miku", "1"])
    assert f"{red_green / 'b_green.png'}: solo, green" in out


def test_batches_and_unreadable_files(tmp_path, tiny_tagger_dir, caplog):
    from library.tools.dataset.wd14 import TaggingRun, TagSelection, tag_folder
    from library.tools.dataset.wd14_model import WD14Model

    folder = tmp_path / "many"
    for i in range(5):
        solid(folder / f"{i}.png", RED if i % 2 else GREEN)
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    (folder / "notes.pdf").write_bytes(b"%PDF")
    model = WD14Model(tiny_tagger_dir / "model.onnx", tiny_tagger_dir / "selected_tags.csv")
    sizes = []
    predict = model.predict
    model.predict = lambda batch: sizes.append(len(batch)) or predict(batch)
    report = tag_folder(folder, model, TagSelection(), TaggingRun(batch_size=2))
    assert sizes == [2, 2, 1]
    assert report.images == 6 and report.unreadable == [folder / "broken.png"]
    assert len(report.written) == 5 and not (folder / "broken.txt").exists()
    assert "broken.png" in caplog.text and "notes.pdf" in caplog.text
    assert report.seconds_model > 0 and report.seconds_total >= report.seconds_model


def test_missing_model_is_a_clear_error(tmp_path, red_green, capsys):
    assert tag(red_green, tmp_path / "nowhere") == 2
    err = capsys.readouterr().err
    assert "model.onnx" in err and "selected_tags.csv" in err and "nowhere" in err
    assert "Traceback" not in err


def test_hub_download_failure_names_the_repo(tmp_path):
    def offline(repo_id, filename, local_dir, force):
        raise ConnectionError("no network")

    with pytest.raises(ModelLoadError, match="SmilingWolf/x.*no network"):
        resolve_model_files(tmp_path, "SmilingWolf/x", download=offline)


def test_hub_download_goes_to_the_repo_folder(tmp_path, tiny_tagger_dir):
    calls = []

    def fake(repo_id, filename, local_dir, force):
        calls.append((repo_id, filename, local_dir, force))
        local_dir.mkdir(parents=True, exist_ok=True)
        (local_dir / filename).write_bytes((tiny_tagger_dir / filename).read_bytes())
        return local_dir / filename

    onnx, csv = resolve_model_files(tmp_path, "Owner/tagger-v3", download=fake)
    assert onnx == tmp_path / "Owner_tagger-v3" / "model.onnx" and csv.name == "selected_tags.csv"
    assert [c[1] for c in calls] == ["model.onnx", "selected_tags.csv"]
    assert resolve_model_files(tmp_path, "Owner/tagger-v3", download=fake) == (onnx, csv)
    assert len(calls) == 2  # second call finds the files: no download


def test_provider_preference():
    assert best_providers(["AzureExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert best_providers(["CPUExecutionProvider", "CUDAExecutionProvider"]) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]


def test_cli_runs_as_a_script(red_green, tiny_tagger_dir):
    import subprocess

    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "tag_images_by_wd14_tagger.py"),
            str(red_green),
            "--model_dir",
            str(tiny_tagger_dir),
            "--batch_size",
            "2",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert caption(red_green, "a_red") == RED_TAGS
