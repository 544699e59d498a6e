"""Every sd-scripts dataset TOML form (issue 14): top-level options, per-subset validation_split, wildcards,
token warm-up, resize interpolation, separators; each doc TOML loads and trains 2 steps on the tiny model."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
from data_helpers import make_concept

from library.data.captions import CaptionOptions, process_caption, resolve_wildcards, token_warmup_length
from library.data.dataset import TrainDataset
from library.data.dataset_config import specs_from_dataset_config
from library.data.validation_split import split_validation
from library.errors import DatasetError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sdscripts"


def _folders(tmp_path: Path) -> dict[str, Path]:
    dirs = {"IMAGE_DIR": tmp_path / "train", "SECOND_DIR": tmp_path / "second", "VAL_DIR": tmp_path / "val"}
    for i, folder in enumerate(dirs.values()):
        make_concept(folder, [(64, 64), (96, 64)],
                     ["sks, {red|green|blue} disc ||| a, b, c, d, e ||| best", f"disc {i}, x, y, z"])
    return dirs


def _doc_toml(tmp_path: Path, name: str) -> Path:
    text = (FIXTURES / name).read_text(encoding="utf-8")
    for key, folder in _folders(tmp_path).items():
        text = text.replace(key, folder.as_posix())
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- pure caption functions ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("caption", "choices"),
    [
        ("a {b|c} d", {"a b d", "a c d"}),
        ("{x|y}, {1|2}", {"x, 1", "x, 2", "y, 1", "y, 2"}),
        ("{{literal}} {p|q}", {"{literal} p", "{literal} q"}),
        ("line one\nline {two|2}", {"line one", "line two", "line 2"}),
        ("no wildcard", {"no wildcard"}),
    ],
)
def test_wildcards_pick_one_alternative(caption, choices):
    picks = {resolve_wildcards(caption, random.Random(seed)) for seed in range(60)}
    assert picks == choices


def test_wildcards_off_use_the_first_line_and_keep_braces():
    opts = CaptionOptions()
    assert process_caption("a {b|c}\nsecond", opts, random.Random(0), 1) == "a {b|c}"


def test_keep_tokens_separator_with_wildcards_and_secondary_separator():
    opts = CaptionOptions(enable_wildcard=True, shuffle_caption=True, keep_tokens_separator="|||",
                          secondary_separator=";;;")
    for seed in range(20):
        out = process_caption("sks, {red|blue} disc ||| a, b;;;c, d ||| best", opts, random.Random(seed), 1)
        head, *middle, tail = out.split(", ")
        assert head == "sks" and middle[0] in ("red disc", "blue disc") and tail == "best"
        assert sorted(middle[1:]) == ["a", "b,c", "d"]  # b;;;c shuffled as one tag, then ;;; -> caption_separator


@pytest.mark.parametrize(
    ("warmup_min", "warmup_step", "step", "total", "expected"),
    [
        (1, 10, 0, 100, 1), (1, 10, 5, 100, 5), (1, 10, 9, 100, 9), (1, 10, 10, 100, None),
        (2, 0.5, 25, 100, 6), (2, 0.5, 50, 100, None), (1, 0, 0, 100, None), (1, 10, None, 100, None),
    ],
)
def test_token_warmup_length_follows_sd_scripts(warmup_min, warmup_step, step, total, expected):
    opts = CaptionOptions(token_warmup_min=warmup_min, token_warmup_step=warmup_step)
    assert token_warmup_length(10, opts, step, total) == expected


def test_token_warmup_keeps_the_fixed_tags():
    opts = CaptionOptions(keep_tokens=1, token_warmup_min=1, token_warmup_step=4)
    caption = "sks, a, b, c, d, e"
    assert [process_caption(caption, opts, random.Random(0), 1, step, 8) for step in (0, 2, 4)] == [
        "sks, a", "sks, a, b, c", caption]


# --- the dataset TOML forms ------------------------------------------------------------------------------------

def test_top_level_options_read_as_general(tmp_path):
    specs = specs_from_dataset_config(_doc_toml(tmp_path, "flux_top_level.toml"), {})
    assert [s.validation_split for s in specs] == [0.0, 0.5, 1.0]
    assert {s.validation_seed for s in specs} == {42}
    assert all(s.enable_bucket and s.resolution == (64, 64) and s.bucket_reso_steps == 32 for s in specs)
    assert specs[0].subsets[0].resize_interpolation == "lanczos"  # the docs' interpolation_type


def test_top_level_and_general_together_is_an_error(tmp_path):
    path = tmp_path / "d.toml"
    path.write_text("resolution = 64\n[general]\nresolution = 128\n[[datasets]]\n[[datasets.subsets]]\n"
                    "image_dir = 'a'\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="resolution is set both at the top level and in \\[general\\]"):
        specs_from_dataset_config(path, {})
    path.write_text("resoluton = 64\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'a'\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="unknown top-level key 'resoluton'. Did you mean 'resolution'"):
        specs_from_dataset_config(path, {})


def test_validation_split_per_subset_holds_out_the_whole_folder(tmp_path):
    specs = specs_from_dataset_config(_doc_toml(tmp_path, "validation_subsets.toml"), {})
    assert [s.validation_split for s in specs[0].subsets] == [0.0, 1.0]
    dataset = TrainDataset(specs, max_workers=1)
    train, held_out = split_validation(dataset.items, specs, training_seed=0)
    assert {it.folder for it in held_out} == {"val"} and len(held_out) == 2
    assert {it.folder for it in train} == {"train"}


def test_validation_split_of_every_training_subset_is_refused(tmp_path):
    path = _doc_toml(tmp_path, "validation_subsets.toml")
    text = path.read_text(encoding="utf-8").replace("num_repeats = 2", "validation_split = 1.0")
    path.write_text(text, encoding="utf-8")
    specs = specs_from_dataset_config(path, {})
    with pytest.raises(DatasetError, match="holds out every training picture"):
        split_validation(TrainDataset(specs, max_workers=1).items, specs, training_seed=0)


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("face_crop_aug_range = [2.0, 4.0]", ("face_crop_aug_range", "not supported", "random_crop")),
        ("resize_interpolation = 'sinc'", ("resize_interpolation", "'sinc'", "lanczos")),
        ("validation_split = 1.5", ("validation_split", "between 0 and 1")),
        ("token_warmup_step = -1", ("token_warmup_step", ">= 0")),
        ("caption_separator = ''", ("caption_separator", "empty")),
    ],
)
def test_bad_forms_are_named(tmp_path, line, words):
    path = tmp_path / "d.toml"
    path.write_text(f"[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'a'\n{line}\n", encoding="utf-8")
    with pytest.raises(DatasetError) as info:
        specs_from_dataset_config(path, {})
    for word in words:
        assert word in str(info.value)


def test_bucket_range_is_rounded_to_the_steps(tmp_path):
    path = tmp_path / "d.toml"
    path.write_text("[[datasets]]\nenable_bucket = true\nresolution = 256\nmin_bucket_reso = 100\n"
                    "max_bucket_reso = 300\n[[datasets.subsets]]\nimage_dir = 'a'\n", encoding="utf-8")
    spec = specs_from_dataset_config(path, {})[0]
    assert (spec.min_bucket_reso, spec.max_bucket_reso) == (64, 320)
    path.write_text("[[datasets]]\nenable_bucket = true\nresolution = 64\nmin_bucket_reso = 32\n"
                    "bucket_reso_steps = 64\n[[datasets.subsets]]\nimage_dir = 'a'\n", encoding="utf-8")
    assert specs_from_dataset_config(path, {})[0].min_bucket_reso == 64  # never 0 (sd-scripts divides by it)


def test_resize_interpolation_changes_the_resampling(tmp_path):
    """nearest keeps only the picture's own colours when enlarging; the default (Lanczos) blends them."""
    from PIL import Image

    from library.data.specs import DatasetSpec, SubsetSpec

    folder = tmp_path / "tiny"
    folder.mkdir()
    img = Image.new("RGB", (8, 8), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 3, 8))
    img.save(folder / "a.png")

    def pixels(interpolation):
        spec = DatasetSpec([SubsetSpec(folder, resize_interpolation=interpolation)], resolution=(64, 64))
        return TrainDataset([spec], max_workers=1).load_pixels(0, None, False)[0]

    nearest, lanczos = pixels("nearest"), pixels(None)
    assert {tuple(v) for v in nearest.reshape(3, -1).T.tolist()} == {(-1.0, -1.0, 1.0), (1.0, -1.0, -1.0)}
    assert len({tuple(v) for v in lanczos.reshape(3, -1).T.tolist()}) > 2


def test_wildcard_picks_are_seeded_and_resume_exact(tmp_path):
    """Captions are a pure function of (seed, epoch, batch): a second run (or a resumed one, which builds its
    dataset afresh) picks the same alternatives at the same batches, and other seeds pick others."""
    path = _doc_toml(tmp_path, "caption_forms.toml")

    def captions(seed: int, epochs=(1, 2, 3)) -> list[str]:
        dataset = TrainDataset(specs_from_dataset_config(path, {}), max_workers=1)
        out = []
        for epoch in epochs:
            for i, batch in enumerate(dataset.epoch_batches(epoch, seed)):
                out += dataset.load_batch(batch, epoch=epoch, seed=seed, step=i)["captions"]
        return out

    first = captions(7)
    assert first == captions(7)
    assert first[-4:] == captions(7, epochs=(3,))  # the resumed run continues the same sequence
    assert first != captions(8)
    colours = {c.split(", ")[1] for c in first if c.startswith("sks")}
    assert colours <= {"red disc", "green disc", "blue disc"} and len(colours) > 1


def test_token_warmup_follows_the_optimizer_step(tmp_path):
    path = _doc_toml(tmp_path, "caption_forms.toml")
    dataset = TrainDataset(specs_from_dataset_config(path, {}), max_workers=1)
    dataset.set_step_clock(num_processes=1, grad_accum=1, max_train_steps=8, max_train_epochs=None)
    assert dataset.optimizer_step_of(2, 1) == (dataset.steps_per_epoch() + 1, 8)
    def tag_counts(epoch: int) -> list[int]:  # 0.5 x 8 steps = 4 warm-up steps, 2 steps per epoch
        batches = dataset.epoch_batches(epoch, 0)
        captions = [c for i, b in enumerate(batches) for c in dataset.load_batch(b, epoch, 0, i)["captions"]]
        return sorted({len(c.split(", ")) for c in captions})

    # fixed "sks, <colour> disc" + 1 flexible tag + the fixed suffix "best"; "disc 0, x, y, z" keeps 1 tag
    assert tag_counts(1) == [1, 4]
    assert tag_counts(3) == [4, 8]  # steps 4 and 5: warm-up is over, every tag is back


# --- 2-step trainings on the tiny model --------------------------------------------------------------------------

def test_config_readme_example_keeps_prefix_and_suffix_fixed(tmp_path):
    """The docs' example: ``|||`` in caption_prefix / caption_suffix fixes them around the shuffled tags."""
    path = _doc_toml(tmp_path, "config_readme_wildcards.toml")
    subset = specs_from_dataset_config(path, {})[0].subsets[0]
    caption = "upper body, looking at viewer, sky;;;cloud;;;day, {simple|white} background"
    seen = set()
    for seed in range(30):
        out = process_caption(caption, subset.caption_options(), random.Random(seed), 1)
        assert out.startswith("1girl, hatsune miku, vocaloid, ") and out.endswith(", masterpiece, rating: general")
        assert "{" not in out and "|" not in out and ";;;" not in out
        seen.update(tag for tag in out.split(", ") if tag.endswith("background"))
    assert seen == {"simple background", "white background"}


@pytest.mark.parametrize("name", ["validation_subsets.toml", "flux_top_level.toml", "caption_forms.toml",
                                  "dataset_config.toml", "all_forms.toml", "config_readme_wildcards.toml"])
def test_doc_tomls_load_and_scan(tmp_path, name):
    """Each doc TOML validates and its pictures scan (the reg folder of dataset_config.toml included)."""
    path = _doc_toml(tmp_path, name).read_text(encoding="utf-8").replace("REG_DIR", (tmp_path / "val").as_posix())
    (tmp_path / name).write_text(path, encoding="utf-8")
    specs = specs_from_dataset_config(tmp_path / name, {})
    dataset = TrainDataset(specs, max_workers=1)
    assert dataset.num_train_images > 0 and dataset.num_batches() > 0


@pytest.mark.slow
def test_all_forms_train_two_steps(tmp_path):
    """One short training over every form at once (one run keeps the slow tier short): it trains, and the
    validation-only folder gives the validation loss."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
    from helpers import base_options, read_lora, train

    options = base_options(tmp_path, tmp_path / "out", train_data_dir=None, max_train_steps=2,
                           dataset_config=str(_doc_toml(tmp_path, "all_forms.toml")), max_validation_steps=1,
                           logging_dir=str(tmp_path / "logs"))
    assert train(tmp_path, options) == 0
    tensors, metadata = read_lora(tmp_path / "out" / "lora.safetensors")
    assert metadata["ss_steps"] == "2" and tensors
    assert list((tmp_path / "logs").rglob("events.out.tfevents.*"))
