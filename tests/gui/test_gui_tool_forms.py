"""The tools tabs build command lines the tools accept: every flag exists, and a form runs end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from library.gui.tools_tabs import CAPTION_TOOLS, DATASET_TOOLS, MODEL_TOOLS, run_tool, tool_argv

ROOT = Path(__file__).resolve().parents[2]
SPECS = (*CAPTION_TOOLS, *DATASET_TOOLS, *MODEL_TOOLS)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.key)
@pytest.mark.slow  # a few seconds (subprocesses / imports): fast tier budget
def test_every_form_flag_is_a_flag_of_its_tool(spec):
    help_text = subprocess.run(
        [sys.executable, str(ROOT / "tools" / spec.script), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert help_text.startswith("usage:")
    for arg in spec.args:
        for flag in (arg.flag, arg.folder_flag):
            if flag:
                assert flag in help_text, (spec.script, flag)


def test_caption_edit_form_runs_the_tool(tmp_path):
    folder = tmp_path / "10_smith man"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"")
    caption = folder / "a.txt"
    caption.write_text("1boy, facial hair, beard, smith_group, apron", encoding="utf-8")
    spec = next(s for s in CAPTION_TOOLS if s.key == "edit")
    values = [str(folder), "fold\nSmith\n1boy\nfacial hair\nbeard", False]
    assert tool_argv(spec, values)[2:] == [str(folder), "fold", "Smith", "1boy", "facial hair", "beard"]
    output = run_tool(spec, values, "")
    assert output.startswith("✅ done"), output
    assert caption.read_text(encoding="utf-8").strip() == "Smith, smith_group, apron"


def test_dataset_check_table_tag_frequencies_and_inspect(tmp_path):
    from library.gui.tools_tabs import check_rows, inspect_text, tag_frequency_rows
    from library.models.tiny import tiny_components
    from library.networks.lora import create_network

    root = tmp_path / "train"
    folder = root / "5_sks dog"
    folder.mkdir(parents=True)
    from PIL import Image

    for i, caption in enumerate(["sks dog, grass", "sks dog, beach", None]):
        Image.new("RGB", (96, 64), (40 * i, 90, 20)).save(folder / f"{i}.png")
        if caption:
            (folder / f"{i}.txt").write_text(caption, encoding="utf-8")
    summary, rows = check_rows(str(root), "", 64)
    assert "warnings" in summary
    assert any(r[0] == "warning" and "caption" in r[1] for r in rows), rows  # the image without a caption
    assert tag_frequency_rows(str(root))[0] == ["sks dog", 2]
    parts = tiny_components("sd1")
    lora = create_network(parts["unet"], parts["text_encoder"], dim=4, alpha=2).save(
        tmp_path / "l.safetensors"
    )
    text = inspect_text(str(lora), "")
    assert "rank" in text.lower() and "4" in text
    assert inspect_text(str(tmp_path / "missing.safetensors"), "").startswith("❌")


@pytest.mark.slow  # three tool subprocesses
def test_finetune_metadata_forms_run_the_preparation_tools(tmp_path):
    """kohya_ss' Finetune workflow from the Dataset tab: captions, then tags, then cleaning, into one JSON."""
    import json

    from PIL import Image

    folder = tmp_path / "pictures"
    folder.mkdir()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(folder / "a.png")
    (folder / "a.caption").write_text("a red square", encoding="utf-8")
    (folder / "a.txt").write_text("red, square,  red", encoding="utf-8")
    meta = tmp_path / "meta.json"
    clean = tmp_path / "meta_clean.json"
    forms = {s.key: s for s in DATASET_TOOLS}
    assert run_tool(forms["merge_captions"], [str(folder), str(meta), "", False, False], "").startswith("✅")
    assert run_tool(forms["merge_tags"], [str(folder), str(meta), "", "", False, False], "").startswith("✅")
    assert run_tool(forms["clean_metadata"], [str(meta), str(clean)], "").startswith("✅")
    entry = json.loads(clean.read_text(encoding="utf-8"))["a"]
    assert entry["caption"] == "a red square" and entry["tags"].startswith("red, square")
