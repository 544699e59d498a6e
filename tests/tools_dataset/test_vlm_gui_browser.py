"""The VLM captioning section in a real headless browser: fill the form for an OpenAI-compatible server (a
tiny one in this test), press Run, read the result beside the button, find the captions on disk."""

from __future__ import annotations

import re
import time

import pytest

from tests.gui.server import CHROMIUM, CHROMIUM_ARGS, choose, need_browser, set_field
from tests.tools_dataset.helpers import solid
from tests.tools_dataset.test_vlm_api import server  # noqa: F401 - the fixture

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _wait_text(page, selector: str, pattern: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = page.locator(selector).first.input_value()
        if re.search(pattern, text):
            return text
        time.sleep(0.3)
    raise AssertionError(f"{selector} never matched {pattern!r}; last: {text!r}")


def test_vlm_form_runs_the_tool_and_shows_the_result_beside_run(tmp_path, server, shared_gui):  # noqa: F811
    need_browser()
    from playwright.sync_api import sync_playwright

    folder = tmp_path / "pics"
    for i in range(3):
        solid(folder / f"{i}.png", (70 * i, 20, 20), (20 + i, 16))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        page.goto(shared_gui.url)
        page.get_by_role("tab", name="Captioning").click()
        page.get_by_text("VLM captioning (Florence-2").click()
        page.wait_for_selector("#vlm-run")
        set_field(page, "vlm-folder", folder)
        choose(page, "vlm-backend", "openai")
        set_field(page, "vlm-api-base", server.base)
        set_field(page, "vlm-api-model", "tiny-vl")
        set_field(page, "vlm-trigger", "sks")
        page.click("#vlm-run")
        text = _wait_text(page, "#vlm-message textarea", r"✅ done|❌")
        assert text.startswith("✅ done") and "captioned 3 of 3" in text, text
        button, message = (
            page.locator("#vlm-run").bounding_box(),
            page.locator("#vlm-message").bounding_box(),
        )
        assert message["x"] >= button["x"] + button["width"] - 1  # to the right of the button
        assert (
            message["y"] < button["y"] + button["height"]
            and button["y"] < message["y"] + message["height"]
        )
        browser.close()
    assert (folder / "2.txt").read_text(encoding="utf-8") == "sks, a picture 22 wide\n"
    assert {body["model"] for body, _, _ in server.requests} == {"tiny-vl"}
