"""The command line of ``tools/caption_images_vlm.py``: parse, check every argument before a model loads,
caption the folder (this process's share of it), print the failures; exit 0 all done, 1 some failed, 2 bad
arguments."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from library.errors import UserError
from library.tools.dataset.cli_support import add_folder_arguments, run_tool
from library.tools.dataset.vlm.base import BACKENDS, DTYPES, VlmSettings, backend_info, backend_names
from library.tools.dataset.vlm.prompts import CAPTION_LENGTHS, PROMPT_STYLES, build_prompt

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DEVICE = re.compile(r"auto|cpu|mps|xpu(:\d+)?|cuda(:\d+)?")
MAX_NEW_TOKENS = 8192


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Caption pictures with a vision-language model (one file each).")
    add_folder_arguments(p, ".txt")
    names = ", ".join(backend_names())
    p.add_argument("--backend", default="florence2", help=f"one of {names} (default florence2)")
    p.add_argument("--model_id", default=None, help="hub id or local model folder (default: the backend's)")
    p.add_argument(
        "--task",
        default=None,
        help="Florence-2 task: <CAPTION>, <DETAILED_CAPTION> (default) or <MORE_DETAILED_CAPTION>",
    )
    p.add_argument(
        "--api_base",
        default=None,
        help="openai backend: the server's base URL, e.g. http://localhost:8000/v1",
    )
    p.add_argument(
        "--api_key_env",
        default=None,
        help="openai backend: the NAME of the environment variable that holds the key (never the key)",
    )
    p.add_argument("--model", default=None, help="openai backend: the model name the server serves")
    p.add_argument("--timeout", type=float, default=120.0, help="openai backend: seconds to wait per request")
    p.add_argument("--prompt_style", default="caption", help=f"{' | '.join(PROMPT_STYLES)} (default caption)")
    p.add_argument(
        "--caption_length", default="medium", help=f"{' | '.join(CAPTION_LENGTHS)} (default medium)"
    )
    p.add_argument(
        "--prompt", default=None, help="your own instruction (replaces the prompt style and length)"
    )
    p.add_argument("--trigger_word", default=None, help="put first in every caption, e.g. 'sks'")
    p.add_argument(
        "--batch_size", type=int, default=1, help="pictures per model call (parallel requests for openai)"
    )
    p.add_argument("--max_new_tokens", type=int, default=256, help="longest answer, in tokens")
    p.add_argument(
        "--temperature", type=float, default=0.0, help="0: greedy decoding (default); above: sampling"
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument(
        "--dtype", default="auto", help="auto, fp32, fp16 or bf16 (auto: bf16 on a GPU, else fp32)"
    )
    return p


def check_arguments(args: argparse.Namespace) -> None:
    """``UserError`` for a folder or option the run cannot use, before any model loads (or downloads)."""
    from library.tools.dataset.files import normalise_extension

    folder = Path(args.train_data_dir)
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise UserError(
            f"image folder '{folder}' {what}. Give the folder that holds the pictures to caption."
        )
    normalise_extension(args.caption_extension)
    entry = BACKENDS.find(args.backend) if backend_names() else None
    if entry is None:
        raise UserError(f"--backend: {BACKENDS.unknown_message(args.backend)}")
    check_values(args)
    check_backend_options(args, entry.name)


def check_values(args: argparse.Namespace) -> None:
    """Choices and ranges of the options every backend takes."""
    for flag, value, choices in (
        ("--prompt_style", args.prompt_style, PROMPT_STYLES),
        ("--caption_length", args.caption_length, CAPTION_LENGTHS),
        ("--dtype", args.dtype.lower(), tuple(DTYPES)),
    ):
        if value not in choices:
            raise UserError(f"{flag} {value!r} is not one of {', '.join(choices)}.")
    for flag, value, low, high in (
        ("--batch_size", args.batch_size, 1, 1024),
        ("--max_new_tokens", args.max_new_tokens, 1, MAX_NEW_TOKENS),
        ("--max_data_loader_n_workers", args.max_data_loader_n_workers, 0, 256),
    ):
        if not low <= value <= high:
            raise UserError(f"{flag} {value} is out of range: give a whole number from {low} to {high}.")
    if not 0 <= args.temperature <= 5:  # also refuses NaN
        raise UserError(
            f"--temperature {args.temperature} is out of range: give 0 (greedy) up to 5, e.g. 0.6."
        )
    if args.device and not _DEVICE.fullmatch(args.device):
        raise UserError(f"--device {args.device!r} is not a device: give cpu, cuda, cuda:1, mps or auto.")


def check_backend_options(args: argparse.Namespace, name: str) -> None:
    """The options of backend ``name``; an option that only another backend uses is an error, not ignored."""
    from library.tools.dataset.captioners import looks_like_local_path
    from library.tools.dataset.vlm.florence2 import FLORENCE_TASKS, normalise_task

    if args.task is not None and name != "florence2":
        raise UserError(
            f"--task is Florence-2's; {name} follows --prompt_style / --caption_length or your --prompt."
        )
    if name == "florence2" and args.task is not None and normalise_task(args.task) is None:
        raise UserError(
            f"--task {args.task!r} is not a Florence-2 caption task: give one of {', '.join(FLORENCE_TASKS)}."
        )
    info = backend_info(name)
    if info.remote:
        if args.model_id:
            raise UserError(
                "--model_id names a local or hub model; the openai backend asks a server, so give the name it "
                "serves the model by with --model instead."
            )
        check_api_arguments(args)
        return
    given = [
        f
        for f, v in (
            ("--api_base", args.api_base),
            ("--model", args.model),
            ("--api_key_env", args.api_key_env),
        )
        if v
    ]
    if given:
        raise UserError(
            f"{', '.join(given)}: only --backend openai uses these; {name} loads --model_id (a hub id or a "
            f"local folder, default {info.default_model})."
        )
    if (
        args.model_id
        and looks_like_local_path(args.model_id)
        and not Path(args.model_id).expanduser().exists()
    ):
        raise UserError(
            f"--model_id: the model folder '{args.model_id}' does not exist. Give a transformers model "
            f"folder or a hub id such as {info.default_model}."
        )


def check_api_arguments(args: argparse.Namespace) -> None:
    """The openai backend's endpoint, model name and key variable."""
    import os

    from library.tools.dataset.vlm.openai_api import api_base_problem

    if not args.api_base:
        raise UserError(
            "--backend openai needs --api_base, the server's URL, e.g. http://localhost:8000/v1 (vLLM), "
            "http://localhost:11434/v1 (Ollama) or http://localhost:1234/v1 (LM Studio)."
        )
    problem = api_base_problem(args.api_base)
    if problem:
        raise UserError(
            f"--api_base {args.api_base!r} {problem}: give the server's URL, e.g. http://localhost:8000/v1."
        )
    if not args.model:
        raise UserError(
            "--backend openai needs --model, the name the server knows the model by "
            "(e.g. Qwen/Qwen2.5-VL-7B-Instruct for vLLM, qwen2.5vl:7b for Ollama)."
        )
    if not 0 < args.timeout <= 3600:
        raise UserError(f"--timeout {args.timeout} is out of range: give seconds above 0, up to 3600.")
    if args.api_key_env is not None:
        if not _ENV_NAME.fullmatch(args.api_key_env):
            raise UserError(
                "--api_key_env takes the NAME of an environment variable that holds the key (e.g. "
                "OPENAI_API_KEY), not the key itself: a key on the command line ends up in shell "
                "histories and process lists."
            )
        if not os.environ.get(args.api_key_env, "").strip():
            raise UserError(
                f"--api_key_env {args.api_key_env}: that environment variable is not set or empty. "
                f"Set it first (export {args.api_key_env}=...), or leave --api_key_env out for a "
                "server without a key."
            )


def settings_of(args: argparse.Namespace) -> VlmSettings:
    return VlmSettings(
        args.model_id,
        args.device,
        args.dtype.lower(),
        args.max_new_tokens,
        args.temperature,
        args.task or VlmSettings.task,
        args.api_base,
        args.model,
        args.api_key_env,
        args.timeout,
    )


def body(args: argparse.Namespace) -> int:
    from library.tools.dataset.vlm.run import VlmRun, caption_folder_vlm, process_share

    check_arguments(args)
    share = process_share()
    name = BACKENDS.find(args.backend).name
    settings = settings_of(args)
    backend = BACKENDS.find(name).factory(settings)
    if backend.fixed_prompt and (
        args.prompt or args.prompt_style != "caption" or args.caption_length != "medium"
    ):
        print(
            f"note: {name} uses --task {settings.task}; --prompt, --prompt_style and --caption_length are ignored",
            file=sys.stderr,
        )
    run = VlmRun(
        args.caption_extension,
        args.overwrite,
        args.recursive,
        args.batch_size,
        args.max_data_loader_n_workers,
        args.trigger_word,
    )
    show = (lambda path, text: print(f"{path}: {text}")) if args.debug else None
    prompt = build_prompt(args.prompt_style, args.caption_length, args.prompt)
    report = caption_folder_vlm(args.train_data_dir, backend, prompt, run, share, on_caption=show)
    print(report.summary())
    if report.failed:
        print(f"{len(report.failed)} pictures have no caption (run again to retry them):", file=sys.stderr)
        for path, reason in report.failed:
            print(f"  {path}: {reason}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and caption the folder; returns the exit code."""
    return run_tool(body, build_parser().parse_args(argv))
