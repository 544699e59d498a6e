"""The model-family line and the SDXL-only options in a real browser: hidden for SD1 and for no model,
shown once an SDXL model is typed in or an SDXL preset is loaded."""

from __future__ import annotations

import time

import pytest

from tests.gui.server import choose, need_browser, set_field, training_page

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def page(shared_gui):
    need_browser()
    with training_page(shared_gui.url) as page:
        yield page


def open_accordion(page, tab: str, title: str) -> None:
    """Open the accordion ``title`` of a training tab (a no-op when it is open)."""
    button = page.locator(f"#tab-{tab} button.label-wrap", has_text=title).first
    if "open" not in (button.get_attribute("class") or ""):
        button.click()


def open_folds(page, *elem_ids: str) -> None:
    """Open the form's accordions by element id, outermost first (``network-section-performance``,
    ``network-more-performance``, ``network-no-effect``); a no-op for those already open."""
    for elem_id in elem_ids:
        button = page.locator(f"#{elem_id} button.label-wrap").first
        if "open" not in (button.get_attribute("class") or ""):
            button.click()


def wait_until(check, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return check()


def shown(page, elem_id: str) -> bool:
    box = page.locator(f"#{elem_id}")
    return box.count() > 0 and box.first.is_visible()


def family_line(page, tab: str) -> str:
    box = page.locator(f"#{tab}-model-family")
    return box.inner_text() if box.count() else ""


def test_sdxl_options_follow_the_typed_model(page):
    open_folds(page, "network-no-effect")  # no_half_vae: accepted for sd-scripts configs, no effect here
    assert not shown(page, "network-no_half_vae")
    set_field(page, "network-pretrained_model_name_or_path", "builtin:tiny-sdxl")
    assert wait_until(lambda: "SDXL — Stable Diffusion XL" in family_line(page, "network")), family_line(
        page, "network"
    )
    assert wait_until(lambda: shown(page, "network-no_half_vae"))
    set_field(page, "network-pretrained_model_name_or_path", "builtin:tiny")
    assert wait_until(lambda: "SD1 — " in family_line(page, "network"))
    assert wait_until(lambda: not shown(page, "network-no_half_vae"))
    set_field(page, "network-pretrained_model_name_or_path", "/no/such/model.safetensors")
    assert wait_until(lambda: "unknown: " in family_line(page, "network"))
    assert not shown(page, "network-no_half_vae")


def test_an_sdxl_preset_shows_the_sdxl_options(page):
    open_folds(page, "network-section-performance", "network-more-performance")
    set_field(page, "network-pretrained_model_name_or_path", "builtin:tiny")
    assert wait_until(lambda: not shown(page, "network-cache_text_encoder_outputs"))
    choose(page, "network-preset", "sdxl_quickstart")
    page.click("#network-load-preset")
    assert wait_until(lambda: "SDXL — " in family_line(page, "network")), family_line(page, "network")
    assert wait_until(lambda: shown(page, "network-cache_text_encoder_outputs"))
    # a preset whose model is a placeholder path: unknown family, the options it sets stay shown
    choose(page, "network-preset", "sdxl_style_lora_prodigy")
    page.click("#network-load-preset")
    assert wait_until(lambda: "unknown: no such file" in family_line(page, "network"))
    assert shown(page, "network-cache_text_encoder_outputs")
    assert page.locator("#network-cache_text_encoder_outputs input").first.is_checked()


def test_dreambooth_shows_the_text_encoder_rates_for_sdxl(page):
    page.get_by_role("tab", name="DreamBooth").click()
    page.wait_for_selector("#db-start")
    open_folds(page, "db-section-optimizer", "db-more-optimizer")
    assert not shown(page, "db-learning_rate_te1")
    set_field(page, "db-pretrained_model_name_or_path", "builtin:tiny-sdxl")
    assert wait_until(lambda: "SDXL" in family_line(page, "db")), family_line(page, "db")
    assert wait_until(lambda: shown(page, "db-learning_rate_te1") and shown(page, "db-learning_rate_te2"))
    page.get_by_role("tab", name="LoRA").click()
