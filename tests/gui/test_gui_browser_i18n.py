"""The LoRA form for people, in a real browser: Chinese labels with the option names as hints (from
``--lang zh-CN`` and from a zh-CN browser), only the chosen family's options (an SD2 and an SDXL checkpoint),
the search box, the LoRA-type selector, and a config saved from the form equal to the one the CLI writes for
the same values. With SDTRAIN_SCREENSHOTS=1 it saves docs/screenshots/lora_tab_en.png / lora_tab_zh.png."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from library.config.i18n import has_cjk
from library.config.i18n import text as catalogue_text
from library.config.load import read_toml
from tests.gui.server import CHROMIUM, CHROMIUM_ARGS, REPO, GuiServer, choose, field, need_browser, set_field
from tests.gui.test_gui_browser_sdxl import family_line, open_folds, shown, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SCREENSHOTS = REPO / "docs" / "screenshots"


@pytest.fixture(scope="module")
def browser():
    need_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def servers(tmp_path_factory, shared_gui):
    """An English GUI (no --lang: it follows the browser): the session's shared one."""
    need_browser()
    return {"plain": shared_gui, "root": tmp_path_factory.mktemp("gui_browser_i18n")}


@pytest.fixture()
def zh_server(tmp_path):
    """A ``--lang zh-CN`` GUI, for one test (one server at a time keeps the start fast)."""
    need_browser()
    server = GuiServer(tmp_path, tmp_path / "state", ["--lang", "zh-CN"])
    yield server
    server.close()


def open_page(browser, url: str, locale: str = "en-US"):
    context = browser.new_context(locale=locale, viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(url)
    page.wait_for_selector("#network-start")
    return page


def field_text(page, name: str) -> str:
    """The label and info line of a LoRA-tab field."""
    return page.locator(f"#network-{name}").first.inner_text()


def screenshot(page, name: str) -> None:
    if os.environ.get("SDTRAIN_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / name), full_page=True)


def test_lang_flag_gives_chinese_labels_with_option_names(browser, zh_server):
    page = open_page(browser, zh_server.url)
    text = field_text(page, "pretrained_model_name_or_path")
    assert has_cjk(text) and "pretrained_model_name_or_path" in text, text
    assert has_cjk(page.inner_text("#network-start")), page.inner_text("#network-start")
    assert page.locator("#network-preset input").first.input_value() == ""  # nothing loaded yet
    queue_tab = page.get_by_role("tab", name=catalogue_text("tab.queue", "zh-CN"))  # the tab titles too
    queue_tab.click()
    assert wait_until(lambda: catalogue_text("button.queue_cancel", "zh-CN") in page.inner_text("#queue-cancel"))
    page.get_by_role("tab", name=catalogue_text("tab.tools", "zh-CN")).click()  # and the tool forms
    assert wait_until(lambda: catalogue_text("accordion.inspect", "zh-CN") in page.inner_text("#tab-tools"))
    screenshot(page, "lora_tab_zh.png")
    page.context.close()


def test_a_chinese_browser_gets_chinese_labels(browser, servers):
    page = open_page(browser, servers["plain"].url, locale="zh-CN")
    assert wait_until(lambda: has_cjk(field_text(page, "pretrained_model_name_or_path")))
    assert "pretrained_model_name_or_path" in field_text(page, "pretrained_model_name_or_path")
    assert wait_until(lambda: has_cjk(page.inner_text("#network-start")))
    # the messages follow the browser too (nothing runs, so Stop says so)
    page.click("#network-stop")
    assert wait_until(lambda: catalogue_text("msg.no_run", "zh-CN") in page.inner_text("#network-message"))
    page.context.close()
    english = open_page(browser, servers["plain"].url)
    english.click("#network-stop")
    assert wait_until(lambda: catalogue_text("msg.no_run", "en") in english.inner_text("#network-message"))
    english.context.close()


def test_the_model_family_decides_the_options(browser, servers, tiny_model_files, tiny_sdxl_files):
    page = open_page(browser, servers["plain"].url)
    assert not has_cjk(field_text(page, "pretrained_model_name_or_path"))
    screenshot(page, "lora_tab_en.png")
    open_folds(page, "network-section-performance", "network-more-performance")
    set_field(page, "network-pretrained_model_name_or_path", tiny_model_files["sd2"]["folder"])
    assert wait_until(lambda: "SD2" in family_line(page, "network")), family_line(page, "network")
    assert wait_until(lambda: not shown(page, "network-cache_text_encoder_outputs"))
    assert not shown(page, "network-family-flux")
    set_field(page, "network-pretrained_model_name_or_path", tiny_sdxl_files["single"])
    assert wait_until(lambda: "SDXL" in family_line(page, "network")), family_line(page, "network")
    assert wait_until(lambda: shown(page, "network-cache_text_encoder_outputs"))
    assert not shown(page, "network-family-flux")
    page.context.close()


def test_search_finds_noise_offset_and_opens_its_section(browser, servers):
    page = open_page(browser, servers["plain"].url)
    assert not shown(page, "network-noise_offset")  # its section starts closed
    box = page.locator("#network-search input, #network-search textarea").first
    box.fill("noise")
    assert wait_until(lambda: shown(page, "network-noise_offset"))
    assert not shown(page, "network-learning_rate") and not shown(page, "network-output_dir")
    box.fill("")
    assert wait_until(lambda: shown(page, "network-learning_rate"))
    page.context.close()


def test_lora_type_sets_module_and_args(browser, servers):
    page = open_page(browser, servers["plain"].url)
    open_folds(page, "network-section-network")
    choose(page, "network-lora-type", "LyCORIS/LoHa")
    assert wait_until(lambda: field(page, "network-network_module").input_value() == "lycoris.kohya")
    assert "algo=loha" in field(page, "network-network_args").input_value()
    page.context.close()


def test_a_saved_config_equals_the_cli_output_config(browser, servers):
    root = servers["root"]
    values = {
        "pretrained_model_name_or_path": "builtin:tiny",
        "train_data_dir": str(REPO / "dataset_examples" / "train"),
        "output_dir": str(root / "out"),
        "output_name": "same",
        "network_dim": "8",
        "learning_rate": "0.0005",
    }
    page = open_page(browser, servers["plain"].url)
    open_folds(page, "network-section-network", "network-section-optimizer")
    for name, value in values.items():
        set_field(page, f"network-{name}", value)
    saved = root / "from_gui.toml"
    set_field(page, "network-config-path", saved)
    page.click("#network-save")
    assert wait_until(lambda: "saved" in page.inner_text("#network-config-message")), page.inner_text(
        "#network-config-message"
    )
    cli = root / "from_cli.toml"
    argv = [sys.executable, str(REPO / "train_network.py"), "--output_config", str(cli)]
    for name, value in values.items():
        argv += [f"--{name}", value]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=root, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert read_toml(saved, "network") == read_toml(cli, "network")
    page.context.close()
