"""Inspect a LoRA file: type, rank/alpha, target architecture, metadata, hashes; --check BASE for key fit.

python tools/inspect_lora.py my_lora.safetensors --check base.safetensors
Exit code 1 when --check finds modules that do not fit the base model; 2 when the file is damaged
(NaN/inf weights, rank mismatches, ...: the report lists them under "problems:").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from library.tools.models.common import run_tool  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", help="LoRA file (.safetensors, .ckpt, .pt)")
    parser.add_argument("--check", metavar="BASE_MODEL", help="base model to check the keys against")
    parser.add_argument("--no_metadata", action="store_true", help="do not print the metadata")
    parser.add_argument(
        "--allow_unsafe_pickle", action="store_true", help="load a .ckpt base model that needs full pickle"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        from library.tools.models.inspect_lora import (
            check_failed,
            inspect_lora,
            raise_if_damaged,
            report_lines,
        )

        insp = inspect_lora(args.file, args.check, allow_unsafe_pickle=args.allow_unsafe_pickle)
        print("\n".join(report_lines(insp, show_metadata=not args.no_metadata)), flush=True)
        raise_if_damaged(insp)
        return 1 if check_failed(insp) else 0

    return run_tool(body)


if __name__ == "__main__":
    sys.exit(main())
