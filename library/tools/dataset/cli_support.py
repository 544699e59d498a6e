"""What every dataset-tool CLI shares: logging setup and turning user errors into exit code 2."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from library.cli import run_guarded


def run_tool(body: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run ``body(args)`` with the shared error handling of library.cli (user errors exit 2)."""
    return run_guarded(lambda: body(args), "DEBUG" if getattr(args, "debug", False) else "INFO")


def add_folder_arguments(parser: argparse.ArgumentParser, caption_extension: str) -> None:
    """The positional folder, ``--recursive``, ``--caption_extension``, ``--overwrite``, ``--debug``."""
    parser.add_argument("train_data_dir", help="folder of pictures")
    parser.add_argument("--recursive", action="store_true", help="also the pictures in subfolders")
    parser.add_argument(
        "--caption_extension",
        default=caption_extension,
        help=f"extension of the caption files (default {caption_extension})",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace captions that already exist")
    parser.add_argument(
        "--max_data_loader_n_workers",
        type=int,
        default=4,
        help="threads that load pictures while the model runs",
    )
    parser.add_argument("--debug", action="store_true", help="print each picture's caption")
