"""FLUX.1 in a real browser: a FLUX preset picked from the list (its label says the card size) fills the form
and shows the FLUX group, hiding SD-only fields; a FLUX transformer file typed in says which separate files
it still needs; an SD model hides the FLUX group again."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from tests.gui.server import field, need_browser, set_field, training_page
from tests.gui.test_gui_browser_sdxl import family_line, open_folds, shown, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    need_browser()
    root = tmp_path_factory.mktemp("gui_browser_flux")
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(1)}, str(root / "flux1-dev.safetensors"))
    (root / "clip_l.safetensors").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def page(workspace, shared_gui):
    with training_page(shared_gui.url) as page:
        yield page


def test_a_flux_preset_shows_the_flux_group(page, workspace):
    open_folds(page, "network-section-noise_loss", "network-section-performance")
    assert not shown(page, "network-family-flux") and shown(page, "network-noise_offset")
    page.locator("#network-preset input").first.click()
    labels = page.locator("li[role='option']").all_inner_texts()
    for card in ("12", "16", "24"):
        assert any(f"flux_lora_{card}gb" in t and f"{card} GB card" in t for t in labels), labels
    page.locator("li[role='option'][aria-label^='flux_lora_12gb — ']").first.click()
    page.click("#network-load-preset")
    assert wait_until(lambda: shown(page, "network-family-flux")), family_line(page, "network")
    assert wait_until(lambda: "options, so the form shows" in family_line(page, "network"))
    assert field(page, "network-blocks_to_swap").input_value() == "16"
    assert field(page, "network-clip_l").input_value() == "models/clip_l.safetensors"
    assert shown(page, "network-timestep_sampling") and not shown(page, "network-noise_offset")
    assert not shown(page, "network-min_snr_gamma")
    # a real FLUX transformer file: the line says which separate files are still missing
    set_field(page, "network-pretrained_model_name_or_path", workspace / "flux1-dev.safetensors")
    line = lambda: family_line(page, "network")  # noqa: E731
    assert wait_until(lambda: "no such file: clip_l = models/clip_l.safetensors, t5xxl = " in line()), line()
    set_field(page, "network-clip_l", workspace / "clip_l.safetensors")
    set_field(page, "network-t5xxl", "")
    set_field(page, "network-ae", "")
    assert wait_until(lambda: "(separate files; missing: t5xxl and ae)" in line()), line()
    assert "FLUX — " in family_line(page, "network")
    # an SD1 model: the FLUX group goes away unless its options are set; the SD options come back
    set_field(page, "network-pretrained_model_name_or_path", "builtin:tiny")
    assert wait_until(lambda: "SD1 — " in family_line(page, "network"))
    assert wait_until(lambda: shown(page, "network-noise_offset") and shown(page, "network-min_snr_gamma"))
    assert "set but do not apply to SD1 models" in family_line(page, "network")  # the preset's FLUX options
