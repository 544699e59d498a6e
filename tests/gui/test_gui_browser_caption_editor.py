"""The Dataset tab in a real headless browser: the dataset check's summary as Markdown, and the caption review
(load, open a picture, edit its tags, bulk-edit a selection, keyboard navigation, undo, save with backups).

With ``SDTRAIN_SCREENSHOTS=1`` the editor's screenshot is written to docs/screenshots/caption_editor.png.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.gui.server import CHROMIUM, CHROMIUM_ARGS, REPO, choose, need_browser, set_field

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CAPTIONS = {
    "a": "sks, 1girl, solo\n",
    "b": "sks, 1girl, smile, outdoors\n",
    "c": "1girl, solo, indoors\n",
    "d": "sks, 1girl, night\n",
}
COLOURS = [(200, 40, 40), (40, 160, 60), (40, 60, 200), (220, 200, 40)]


@pytest.fixture(scope="module")
def gui(tmp_path_factory, shared_gui):
    need_browser()
    root = tmp_path_factory.mktemp("gui_captions")
    folder = root / "train" / "10_sks girl"
    folder.mkdir(parents=True)
    for (name, text), rgb in zip(CAPTIONS.items(), COLOURS, strict=True):
        Image.new("RGB", (96, 64), rgb).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(text, encoding="utf-8")
    return shared_gui, root, folder


@pytest.fixture(scope="module")
def page(gui):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        page.set_default_timeout(90_000)  # the machine may be busy: a slow page is no failure
        page.goto(gui[0].url)
        page.get_by_role("tab", name="Dataset").click()
        page.wait_for_selector("#caption-load")
        yield page
        browser.close()


def wait_text(page, elem_id: str, pattern: str, timeout: float = 60) -> str:
    """The text of ``#elem_id`` once it matches ``pattern``."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = page.inner_text(f"#{elem_id}").strip()
        if re.search(pattern, text):
            return text
        time.sleep(0.2)
    raise AssertionError(f"#{elem_id} never matched {pattern!r}; last: {text!r}")


def chips(page) -> list[str]:
    """The tag chips of the open picture, in order."""
    return [t.strip() for t in page.locator("#caption-tags .token > span").all_inner_texts()]


def wait_chips(page, expected: list[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while chips(page) != expected and time.monotonic() < deadline:
        time.sleep(0.2)
    assert chips(page) == expected


def test_dataset_check_summary_is_markdown(gui, page):
    _, root, _ = gui
    set_field(page, "check-source", root / "train")
    page.click("#check-run")
    text = wait_text(page, "check-summary", r"Training pictures")
    assert "{" not in text and "'train_images'" not in text  # not the report's dict
    assert "Training pictures: 4 pictures" in text and "Steps per epoch:" in text
    assert re.search(r"Resolution: 512×512 pixels", text)


def test_review_edit_bulk_undo_save(gui, page):
    _, _, folder = gui
    set_field(page, "caption-folder", folder)
    set_field(page, "caption-trigger", "sks")
    page.click("#caption-load")
    wait_text(page, "caption-load-message", r"4 pictures loaded")
    assert page.locator("#caption-gallery button.thumbnail-item").count() == 4
    assert "'1girl' is in 100%" in wait_text(page, "caption-hints", "1girl")

    page.locator("#caption-gallery button.thumbnail-item").nth(1).click()  # b.png
    wait_text(page, "caption-title", r"2 / 4 · b\.png")
    wait_chips(page, ["sks", "1girl", "smile", "outdoors"])
    choose(page, "caption-tag", "smile")  # 1: replace smile by grin
    set_field(page, "caption-new", "grin")
    page.click("#caption-replace")
    wait_chips(page, ["sks", "1girl", "grin", "outdoors"])
    box = page.locator("#caption-tags input").first  # 2: a chip typed in
    box.fill("hat")
    box.press("Enter")
    wait_chips(page, ["sks", "1girl", "grin", "outdoors", "hat"])
    wait_text(page, "caption-message", r"tags: 1 picture changed")  # the chips sent their edit

    page.locator("#caption-selection label", has_text="a.png").click()  # 3: bulk add to a and c
    page.locator("#caption-selection label", has_text="c.png").click()
    set_field(page, "caption-bulk-tag", "night")
    page.click("#caption-bulk-apply")
    assert "2 pictures changed" in wait_text(page, "caption-bulk-message", "changed")

    choose(page, "caption-tag", "hat")  # 4: move hat left, then undo that move only
    page.click("#caption-left")
    wait_chips(page, ["sks", "1girl", "grin", "hat", "outdoors"])
    page.click("#caption-undo")
    wait_text(page, "caption-message", r"undone: b\.png")
    wait_chips(page, ["sks", "1girl", "grin", "outdoors", "hat"])

    page.locator("#caption-title").click()  # keyboard: focus outside text boxes, then arrows
    page.keyboard.press("ArrowRight")
    wait_text(page, "caption-title", r"3 / 4 · c\.png")
    wait_chips(page, ["sks", "1girl", "solo", "indoors", "night"])  # the bulk edit pinned the trigger
    page.locator("#caption-bulk-tag input, #caption-bulk-tag textarea").first.focus()
    page.keyboard.press("Alt+ArrowLeft")
    wait_text(page, "caption-title", r"2 / 4 · b\.png")

    if os.environ.get("SDTRAIN_SCREENSHOTS") == "1":
        shots = REPO / "docs" / "screenshots"
        shots.mkdir(parents=True, exist_ok=True)
        page.locator("#caption-review").screenshot(path=str(shots / "caption_editor.png"))

    before = {p.name: p.read_text(encoding="utf-8") for p in folder.glob("*.txt")}
    assert before == {f"{k}.txt": v for k, v in CAPTIONS.items()}  # nothing written before Save
    page.click("#caption-save")
    wait_text(page, "caption-message", r"saved 3 caption files")
    after = {p.name: p.read_text(encoding="utf-8") for p in folder.glob("*.txt")}
    assert after == {
        "a.txt": "sks, 1girl, solo, night\n",
        "b.txt": "sks, 1girl, grin, outdoors, hat\n",
        "c.txt": "sks, 1girl, solo, indoors, night\n",
        "d.txt": CAPTIONS["d"],
    }
    backups = list((folder / ".caption_backups").iterdir())
    assert len(backups) == 1
    assert {p.name: p.read_text(encoding="utf-8") for p in backups[0].iterdir()} == {
        n: CAPTIONS[n[0]] for n in ("a.txt", "b.txt", "c.txt")
    }
    assert not list(Path(folder).glob(".*.tmp"))
