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
def test_every_form_flag_is_a_flag_of_its_tool(spec):
    help_text = subprocess.run([sys.executable, str(ROOT / "tools" / spec.script), "--help"], capture_output=True,
                               text=True, timeout=120).stdout
    assert help_text.startswith("usage:")
    for arg in spec.args:
        if arg.flag:
            assert arg.flag in help_text, (spec.script, arg.flag)


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
