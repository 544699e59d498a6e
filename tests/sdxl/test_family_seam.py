"""The model-family seam stays honest: nothing in library/ outside the family modules branches on a family's name."""

from __future__ import annotations

import re
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[2] / "library"
#: the family modules (and their own single-file layouts and tiny models) may name their families
FAMILY_MODULES = {"models/sd.py", "models/sdxl.py", "models/families.py", "models/tiny.py", "models/tiny_sdxl.py",
                  "models/sgm.py", "models/ldm_convert.py", "models/ldm_keys.py", "models/ldm_text.py",
                  "models/ldm_infer.py", "models/flux.py", "models/flux_model.py", "models/flux_keys.py",
                  "models/tiny_flux.py"}
NAMES = r"""["'](?:sd1|sd2|sdxl|flux)["']"""
COMPARISON = re.compile(r"(?:==|!=)\s*" + NAMES + "|" + NAMES + r"\s*(?:==|!=|in\b)|\bin\s*[(\[{]\s*" + NAMES)


def offending_lines() -> list[str]:
    found = []
    for path in sorted(LIBRARY.rglob("*.py")):
        relative = path.relative_to(LIBRARY).as_posix()
        if relative in FAMILY_MODULES:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            code = line.split("#", 1)[0]
            if COMPARISON.search(code):
                found.append(f"library/{relative}:{number}: {line.strip()}")
    return found


def test_no_family_name_comparisons_outside_the_family_modules():
    assert offending_lines() == []


def test_the_check_catches_a_branch(tmp_path):
    samples = ['if model.family == "sd2":', "v2 = family == 'sd2'", 'if "sdxl" in name:', "x = f in ('sd1', 'sd2')"]
    assert all(COMPARISON.search(s) for s in samples)
    assert not COMPARISON.search('FAMILIES = {"sd1": spec}')
