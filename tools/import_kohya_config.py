"""Import a kohya_ss GUI config (.json) as an sdtrain TOML config, losing nothing without saying so.

python tools/import_kohya_config.py my_kohya_lora.json my_lora.toml
The prompt text of sample_prompts goes to my_lora_prompts.txt beside the TOML; the accelerate fields
become the launch command printed at the end (and written as a comment at the top of the TOML). Every
kohya_ss field that has no counterpart is listed with its reason. Exit code 2 for an unreadable file, a
LoRA type or model family that cannot be trained here, or an existing OUT.toml without --overwrite.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from library.cli import run_guarded  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", help="kohya_ss GUI config (.json) or preset")
    parser.add_argument("output", help="the TOML config to write (for --config_file)")
    parser.add_argument(
        "--trainer",
        choices=("network", "db", "ti"),
        default=None,
        help="network (train_network.py), db (train_db.py) or ti (train_textual_inversion.py); default: from "
        "the config's tab",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        from library.gui.kohya_convert import convert_file

        report = convert_file(args.input, args.output, args.trainer, overwrite=args.overwrite)
        print(report, flush=True)
        return 0

    return run_guarded(body)


if __name__ == "__main__":
    sys.exit(main())
