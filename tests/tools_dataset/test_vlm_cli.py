"""VLM captioning without a model: prompts, trigger word, shares, argument errors before any load, and the
resumable folder run (skip / overwrite, per-picture failures, a killed run resumed) on a fake backend."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from library.tools.dataset.vlm import base
from library.tools.dataset.vlm.prompts import build_prompt, clean_caption, with_trigger
from library.tools.dataset.vlm.run import Share, VlmRun, caption_folder_vlm, process_share
from library.util.registry import Entry
from tests.tools_dataset.helpers import solid

ROOT = Path(__file__).resolve().parents[2]


def _tool():
    spec = importlib.util.spec_from_file_location(
        "caption_images_vlm", ROOT / "tools" / "caption_images_vlm.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeBackend:
    """Answers "caption of <width>" per picture (pictures differ in width); counts the pictures it saw;
    ``fail_width``: that picture's answer is an error; ``stop_after``: raise KeyboardInterrupt (a kill) once
    that many pictures are captioned."""

    fixed_prompt = False

    def __init__(self, fail_width: int | None = None, stop_after: int | None = None):
        self.seen: list[int] = []
        self.prompts: list[str] = []
        self.fail_width = fail_width
        self.stop_after = stop_after

    def caption(self, images, prompt):
        if self.stop_after is not None and len(self.seen) >= self.stop_after:
            raise KeyboardInterrupt
        self.prompts.append(prompt)
        self.seen += [im.width for im in images]
        return [
            RuntimeError("server said no") if im.width == self.fail_width else f"  caption of {im.width}\n"
            for im in images
        ]


@pytest.fixture
def fake(monkeypatch):
    """Register a "fake" backend (removed afterwards); ``fake.backend`` is the instance the tool gets."""
    holder = type("Holder", (), {"backend": FakeBackend()})()
    base.backend_names()
    monkeypatch.setitem(base.BACKENDS._entries, "fake", Entry("fake", lambda settings: holder.backend))
    monkeypatch.setitem(base.BACKEND_INFO, "fake", base.BackendInfo("none/none"))
    return holder


@pytest.fixture
def pictures(tmp_path):
    folder = tmp_path / "pics"
    for i in range(5):
        solid(folder / f"{i}.png", (40 * i, 10, 10), (20 + i, 16))
    return folder


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8").strip()


@pytest.mark.parametrize(
    ("style", "length", "custom", "words"),
    [
        ("caption", "short", None, ("short one-sentence caption",)),
        ("caption", "long", None, ("long, detailed",)),
        ("tags", "medium", None, ("about 20 comma-separated tags",)),
        ("both", "short", None, ("up to 10", "tags", "short one-sentence caption")),
        ("tags", "long", "  Describe the cat.  ", ("Describe the cat.",)),
    ],
)
def test_build_prompt(style, length, custom, words):
    prompt = build_prompt(style, length, custom)
    assert all(w in prompt for w in words), prompt
    if custom:
        assert prompt == custom.strip()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  a red\n\ndisc  ", "a red disc"),
        ('"a red disc"', "a red disc"),
        ("Here is a caption for the image: a red disc", "a red disc"),
        ("Tags: red, disc", "red, disc"),
        ("Sure! a cat", "a cat"),
        ("", ""),
    ],
)
def test_clean_caption(raw, expected):
    assert clean_caption(raw) == expected


@pytest.mark.parametrize(
    ("text", "trigger", "expected"),
    [
        ("a photo of a man", "sks", "sks, a photo of a man"),
        ("sks, a photo of a man", "sks", "sks, a photo of a man"),
        ("SKS man", "sks", "sks, man"),
        ("sksman standing", "sks", "sks, sksman standing"),
        ("a photo", None, "a photo"),
        ("a photo", "  ", "a photo"),
        ("", "sks", "sks"),
    ],
)
def test_with_trigger(text, trigger, expected):
    assert with_trigger(text, trigger) == expected


def test_shares_split_the_list_without_overlap():
    paths = [Path(f"{i}.png") for i in range(7)]
    shares = [Share(i, 3).take(paths) for i in range(3)]
    assert sorted(p for s in shares for p in s) == sorted(paths)
    assert [len(s) for s in shares] == [3, 2, 2]
    assert process_share({"RANK": "1", "WORLD_SIZE": "2"}) == Share(1, 2)
    assert process_share({}) == Share(0, 1)
    for env in ({"RANK": "2", "WORLD_SIZE": "2"}, {"RANK": "x", "WORLD_SIZE": "2"}):
        with pytest.raises(Exception, match="RANK"):
            process_share(env)


def test_run_writes_trigger_first_and_skips_existing(pictures):
    (pictures / "0.txt").write_text("mine\n", encoding="utf-8")
    backend = FakeBackend()
    report = caption_folder_vlm(pictures, backend, "p", VlmRun(trigger_word="sks", batch_size=2, workers=1))
    assert _text(pictures / "0.txt") == "mine"
    assert sorted(backend.seen) == [21, 22, 23, 24] and backend.prompts == ["p", "p"]
    assert _text(pictures / "3.txt") == "sks, caption of 23"
    assert (report.todo, report.kept_existing, len(report.written), report.failed) == (4, 1, 4, [])
    again = FakeBackend()
    caption_folder_vlm(pictures, again, "p", VlmRun(overwrite=True, caption_extension=".caption"))
    assert sorted(again.seen) == [20, 21, 22, 23, 24]
    assert _text(pictures / "0.caption") == "caption of 20"


def test_tool_failures_listed_exit_1_and_retried_on_rerun(pictures, fake, capsys):
    (pictures / "broken.png").write_bytes(b"\x89PNG broken")
    fake.backend = FakeBackend(fail_width=22)
    assert _tool().main([str(pictures), "--backend", "fake", "--batch_size", "3"]) == 1
    err = capsys.readouterr().err
    assert "2 pictures have no caption" in err and "2.png: server said no" in err and "broken.png" in err
    assert not (pictures / "2.txt").exists() and _text(pictures / "4.txt") == "caption of 24"
    fake.backend = FakeBackend()
    assert _tool().main([str(pictures), "--backend", "fake"]) == 1  # broken.png still fails
    assert fake.backend.seen == [22]


def test_a_killed_run_resumes_without_redoing_pictures(pictures, fake):
    fake.backend = FakeBackend(stop_after=2)
    assert _tool().main([str(pictures), "--backend", "fake"]) == 130
    done = sorted(p.name for p in pictures.glob("*.txt"))
    assert done == ["0.txt", "1.txt"]
    stamps = {name: (pictures / name).stat().st_mtime_ns for name in done}
    fake.backend = FakeBackend()
    assert _tool().main([str(pictures), "--backend", "fake", "--trigger_word", "sks"]) == 0
    assert fake.backend.seen == [22, 23, 24]
    assert {name: (pictures / name).stat().st_mtime_ns for name in done} == stamps
    assert _text(pictures / "4.txt") == "sks, caption of 24" and _text(pictures / "0.txt") == "caption of 20"


def test_empty_answer_is_a_failure_not_an_empty_file(pictures):
    class Empty(FakeBackend):
        def caption(self, images, prompt):
            return ["  "] * len(images)

    report = caption_folder_vlm(pictures, Empty(), "p", VlmRun())
    assert len(report.failed) == 5 and "empty caption" in report.failed[0][1]
    assert not list(pictures.glob("*.txt"))


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["{missing}"], ("does not exist",)),
        (["{file}"], ("is a file",)),
        (["{pics}", "--backend", "llava9"], ("--backend", "llava9", "florence2")),
        (["{pics}", "--backend", "qwen2.5vl"], ("Did you mean 'qwen2.5-vl'",)),
        (["{pics}", "--batch_size", "0"], ("--batch_size 0",)),
        (["{pics}", "--max_new_tokens", "-1"], ("--max_new_tokens",)),
        (["{pics}", "--prompt_style", "poem"], ("--prompt_style", "caption, tags, both")),
        (["{pics}", "--caption_length", "huge"], ("--caption_length",)),
        (["{pics}", "--dtype", "int3"], ("--dtype",)),
        (["{pics}", "--device", "gpu0"], ("--device",)),
        (["{pics}", "--temperature", "nan"], ("--temperature",)),
        (["{pics}", "--task", "<OD>"], ("--task", "<MORE_DETAILED_CAPTION>")),
        (["{pics}", "--caption_extension", "../x"], ("--caption_extension",)),
        (["{pics}", "--backend", "qwen3-vl", "--task", "<CAPTION>"], ("--task is Florence-2's",)),
        (
            ["{pics}", "--backend", "joycaption", "--api_base", "http://h/v1"],
            ("--api_base", "only --backend openai"),
        ),
        (["{pics}", "--model", "gpt-4o"], ("--model", "florence2 loads --model_id")),
        (
            [
                "{pics}",
                "--backend",
                "openai",
                "--api_base",
                "http://h/v1",
                "--model",
                "m",
                "--model_id",
                "x/y",
            ],
            ("--model_id", "--model instead"),
        ),
        (["{pics}", "--model_id", "./no/such/folder"], ("--model_id", "does not exist")),
        (["{pics}", "--backend", "openai", "--model", "m"], ("--api_base",)),
        (
            ["{pics}", "--backend", "openai", "--api_base", "ftp://h/v1", "--model", "m"],
            ("--api_base", "http"),
        ),
        (["{pics}", "--backend", "openai", "--api_base", "http:///v1", "--model", "m"], ("no host",)),
        (["{pics}", "--backend", "openai", "--api_base", "http://h/v1"], ("--model",)),
        (
            [
                "{pics}",
                "--backend",
                "openai",
                "--api_base",
                "http://h/v1",
                "--model",
                "m",
                "--api_key_env",
                "SDTRAIN_TEST_UNSET_KEY",
            ],
            ("SDTRAIN_TEST_UNSET_KEY", "not set"),
        ),
        (
            [
                "{pics}",
                "--backend",
                "openai",
                "--api_base",
                "http://h/v1",
                "--model",
                "m",
                "--api_key_env",
                "sk-abc123",
            ],
            ("NAME of an environment variable", "not the key"),
        ),
        (
            ["{pics}", "--backend", "openai", "--api_base", "http://h/v1", "--model", "m", "--timeout", "0"],
            ("--timeout",),
        ),
    ],
)
def test_argument_errors_exit_2_before_any_model_loads(pictures, tmp_path, monkeypatch, capsys, argv, words):
    base.backend_names()
    for entry in list(base.BACKENDS._entries.values()):
        monkeypatch.setitem(
            base.BACKENDS._entries,
            entry.name.lower(),
            Entry(entry.name, lambda settings: pytest.fail("a model was loaded")),
        )
    monkeypatch.delenv("SDTRAIN_TEST_UNSET_KEY", raising=False)
    (tmp_path / "a_file").write_text("x", encoding="utf-8")
    values = {"missing": str(tmp_path / "none"), "file": str(tmp_path / "a_file"), "pics": str(pictures)}
    assert _tool().main([a.format(**values) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert all(w in err for w in words), err
    assert not list(pictures.glob("*.txt"))


def test_render_puts_the_image_token_first_when_the_template_leaves_it_out():
    from library.tools.dataset.vlm.base import VlmSettings
    from library.tools.dataset.vlm.hf import ChatTemplateBackend

    class Processor:
        image_token = "<image>"
        tokenizer = type("Tok", (), {})()

        def apply_chat_template(self, messages, add_generation_prompt, tokenize):
            user = messages[-1]["content"]
            return f"[{messages[0]['content']}] USER: {user} ASSISTANT:"

    class Model:
        def to(self, device):
            return self

        def eval(self):
            return self

    backend = ChatTemplateBackend(
        Model(), Processor(), VlmSettings(device="cpu"), "be brief", text_content=True
    )
    assert backend.render("Describe it.") == "[be brief] USER: <image>\nDescribe it. ASSISTANT:"
    assert backend.processor.tokenizer.padding_side == "left"


@pytest.mark.parametrize(
    ("task", "expected"),
    [("<CAPTION>", "<CAPTION>"), ("detailed_caption", "<DETAILED_CAPTION>"), ("<OD>", None), ("", None)],
)
def test_florence_tasks(task, expected):
    from library.tools.dataset.vlm.florence2 import normalise_task

    assert normalise_task(task) == expected


def test_endpoint_helpers():
    from library.tools.dataset.vlm.openai_api import (
        RequestFailed,
        answer_text,
        api_base_problem,
        completions_url,
    )

    assert completions_url("http://h:8000/v1/") == "http://h:8000/v1/chat/completions"
    assert completions_url("http://h/v1/chat/completions") == "http://h/v1/chat/completions"
    assert api_base_problem("https://h/v1") is None and "http" in api_base_problem("h:8000")
    parts = b'{"choices": [{"message": {"content": [{"type": "text", "text": "a "}, {"type": "text", "text": "cat"}]}}]}'
    assert answer_text(parts, "u") == "a cat"
    with pytest.raises(RequestFailed, match="'u' did not answer"):
        answer_text(b'{"choices": []}', "u")
