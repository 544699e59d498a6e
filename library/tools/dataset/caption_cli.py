"""The shared command line of ``tools/make_captions.py`` (BLIP) and ``tools/make_captions_by_git.py`` (GIT)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from library.errors import UserError
from library.tools.dataset.cli_support import add_folder_arguments, run_tool


@dataclass(frozen=True)
class CaptionToolDefaults:
    """sd-scripts' defaults of one captioning script."""

    kind: str
    model_flag: str
    model_alias: str
    model: str
    max_length: int
    min_length: int


BLIP_DEFAULTS = CaptionToolDefaults(
    "blip", "caption_weights", "model_id", "Salesforce/blip-image-captioning-large", 75, 5
)
GIT_DEFAULTS = CaptionToolDefaults(
    "git", "model_id", "caption_weights", "microsoft/git-large-textcaps", 50, 5
)


def build_parser(defaults: CaptionToolDefaults, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    add_folder_arguments(p, ".caption")
    p.add_argument(
        f"--{defaults.model_flag}",
        f"--{defaults.model_alias}",
        dest="model",
        default=defaults.model,
        help=f"transformers model folder or hub id (default {defaults.model})",
    )
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--beam_search", action="store_true", help="beam search instead of nucleus sampling")
    p.add_argument("--num_beams", type=int, default=1, help="beams of the beam search")
    p.add_argument("--top_p", type=float, default=0.9, help="nucleus sampling probability mass")
    p.add_argument("--max_length", type=int, default=defaults.max_length, help="maximum caption tokens")
    p.add_argument("--min_length", type=int, default=defaults.min_length, help="minimum caption tokens")
    p.add_argument("--caption_prefix", "--prefix", default="", help="text put before every caption")
    p.add_argument("--caption_suffix", "--postfix", default="", help="text put after every caption")
    p.add_argument("--seed", type=int, default=42, help="seed of nucleus sampling")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    if defaults.kind == "git":
        p.add_argument(
            "--remove_words",
            action="store_true",
            help="remove phrases such as 'with the words ...' that quote text in the picture",
        )
    return p


def check_arguments(args: argparse.Namespace) -> None:
    """``UserError`` for a folder or option the run cannot use, before the model loads (or downloads)."""
    from pathlib import Path

    from library.tools.dataset.files import normalise_extension

    folder = Path(args.train_data_dir)
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise UserError(f"image folder '{folder}' {what}. Give the folder that holds the pictures to caption.")
    normalise_extension(args.caption_extension)
    for flag, value, low in (("--batch_size", args.batch_size, 1), ("--num_beams", args.num_beams, 1),
                             ("--max_length", args.max_length, 1), ("--min_length", args.min_length, 0),
                             ("--max_data_loader_n_workers", args.max_data_loader_n_workers, 0)):
        if value < low:
            raise UserError(f"{flag} {value} is out of range: it must be at least {low}.")
    if args.min_length > args.max_length:
        raise UserError(f"--min_length {args.min_length} is above --max_length {args.max_length}; lower it.")
    if not 0 < args.top_p <= 1:  # also refuses NaN
        raise UserError(f"--top_p {args.top_p} is out of range: give a probability mass in (0, 1], e.g. 0.9.")
    if not 0 <= args.seed < 2**64:
        raise UserError(f"--seed {args.seed} is out of range: give a whole number from 0 to 2**64 - 1.")


def _body(kind: str):
    def body(args: argparse.Namespace) -> int:
        import torch

        from library.tools.dataset.captioners import (
            CaptionRun,
            GenerationOptions,
            caption_folder,
            load_captioner,
            remove_text_phrases,
        )

        check_arguments(args)
        torch.manual_seed(args.seed)
        options = GenerationOptions(
            args.beam_search, args.num_beams, args.top_p, args.max_length, args.min_length
        )
        postprocess = remove_text_phrases if getattr(args, "remove_words", False) else None
        run = CaptionRun(
            args.caption_extension,
            args.caption_prefix,
            args.caption_suffix,
            args.overwrite,
            args.batch_size,
            args.max_data_loader_n_workers,
            args.recursive,
            postprocess,
        )
        captioner = load_captioner(kind, args.model, args.device)
        show = (lambda path, text: print(f"{path}: {text}")) if args.debug else None
        report = caption_folder(args.train_data_dir, captioner, options, run, on_image=show)
        print(
            f"captioned {len(report.written)} of {report.images} pictures ({len(report.kept_existing)} kept, "
            f"{len(report.unreadable)} unreadable)"
        )
        return 0

    return body


def main(defaults: CaptionToolDefaults, description: str, argv: list[str] | None = None) -> int:
    """Parse ``argv`` and caption the folder; returns the exit code."""
    return run_tool(_body(defaults.kind), build_parser(defaults, description).parse_args(argv))
