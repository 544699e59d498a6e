"""convert_model --fix_position_ids / --prune reset corrupted CLIP position_ids (issue 16, part 7)."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch

from library.tools.models.convert import fix_position_ids, position_ids_problems
from tests.tools_models.helpers import load_tool

KEY = "cond_stage_model.transformer.text_model.embeddings.position_ids"


def bad_ids() -> torch.Tensor:
    ids = torch.arange(77, dtype=torch.float32)[None].clone()
    ids[0, 40] = 39.9997  # a merge that averaged the buffer as a float
    ids[0, 76] = 75.5
    return ids


def test_problems_are_found_and_fixed_in_place():
    state = {KEY: bad_ids(), "x.weight": torch.ones(2)}
    (key, problem, n), = position_ids_problems(state)
    assert (key, n) == (KEY, 77)
    assert "float32" in problem and "2 positions off" in problem and "position 40 = 39.9997" in problem
    fixed = fix_position_ids(state)
    assert [k for k, _, _ in fixed] == [KEY]
    assert state[KEY].dtype == torch.int64 and torch.equal(state[KEY], torch.arange(77)[None])
    assert position_ids_problems(state) == []
    # intact ids, and ids stored as floats with intact values (reset to int64 only)
    assert position_ids_problems({KEY: torch.arange(77)[None]}) == []
    ((_, only_dtype, _),) = position_ids_problems({KEY: torch.arange(77, dtype=torch.float16)[None]})
    assert "values intact" in only_dtype


@pytest.mark.slow
@pytest.mark.parametrize("flag", ["--fix_position_ids", "--prune", None])
def test_cli_fixes_a_checkpoint_with_planted_bad_position_ids(tiny_model_files, tmp_path, capsys, flag):
    state = safetensors.torch.load_file(str(tiny_model_files["sd1"]["single"]))
    assert KEY in state and position_ids_problems(state) == []
    state[KEY] = bad_ids()
    src, dst = tmp_path / "merged.safetensors", tmp_path / "out.safetensors"
    safetensors.torch.save_file(state, str(src))
    argv = [str(src), str(dst)] + ([flag] if flag else [])
    assert load_tool("convert_model").main(argv) == 0
    out = capsys.readouterr().out
    got = safetensors.torch.load_file(str(dst))
    if flag is None:  # not asked: copied as it is, and the report says so
        assert torch.equal(got[KEY], bad_ids())
        assert f"warning: {KEY} is corrupted" in out and "--fix_position_ids" in out
        return
    assert torch.equal(got[KEY], torch.arange(77)[None]) and got[KEY].dtype == torch.int64
    assert f"fixed position_ids: {KEY} was stored as float32, 2 positions off" in out
    assert "reset to arange(77)" in out
    others = [k for k in state if k != KEY]
    assert all(torch.equal(got[k], state[k]) for k in others)
