"""The fast tier's time limit, as a pytest plugin (imported by tests/conftest.py; usable with ``-p``)."""

from __future__ import annotations

import os

import pytest

#: seconds an unmarked (fast-tier) test may take, its setup and its call each; a longer one fails and asks to
#: be marked slow, so ``pytest -m "not slow"`` stays under two minutes. ``SDTRAIN_FAST_TEST_LIMIT`` changes it
#: (0: no limit), e.g. on a machine busy with other work.
FAST_TEST_LIMIT_S = float(os.environ.get("SDTRAIN_FAST_TEST_LIMIT", "5"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if (FAST_TEST_LIMIT_S and report.passed and report.when in ("setup", "call")
            and report.duration > FAST_TEST_LIMIT_S and item.get_closest_marker("slow") is None):
        report.outcome = "failed"
        report.longrepr = (
            f"{item.nodeid}: its {report.when} took {report.duration:.1f} s, more than the fast tier's "
            f"{FAST_TEST_LIMIT_S:g} s per test: mark it @pytest.mark.slow (or make it faster). A session-wide "
            "fixture that builds models counts in the first test that uses it: build it smaller or mark that test."
        )


def pytest_sessionstart(session):
    """Import the heavy libraries once before the first test, so their import time (several seconds on 2
    cores) does not count as that test's own time (``SDTRAIN_FAST_TIER_PRELOAD=0``: not, for the plugin's
    own test, whose tests import none of them)."""
    if FAST_TEST_LIMIT_S and os.environ.get("SDTRAIN_FAST_TIER_PRELOAD", "1") != "0":
        import diffusers  # noqa: F401
        import gradio  # noqa: F401 - the GUI's tests import it (4 s on a slow day), and run anywhere in a subset
        from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: F401
        from transformers import CLIPTextModel  # noqa: F401
