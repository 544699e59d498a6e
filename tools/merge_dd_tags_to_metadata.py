"""Merge tag files (WD14 / DeepDanbooru) into sd-scripts' fine-tuning metadata JSON (the "tags" of each entry).

python tools/merge_dd_tags_to_metadata.py TRAIN_DATA_DIR OUT_JSON [--in_json IN_JSON] [--caption_extension .txt]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from library.tools.dataset.cli_support import run_tool  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("train_data_dir", help="folder of the training pictures")
    p.add_argument("out_json", help="metadata file to write")
    p.add_argument(
        "--in_json", help="metadata file to read (unset: OUT_JSON when it exists); its tags are replaced"
    )
    p.add_argument("--caption_extension", default=".txt", help="extension of the tag files (default .txt)")
    p.add_argument(
        "--full_path", action="store_true", help="keys are the pictures' paths (several folders in one file)"
    )
    p.add_argument(
        "--recursive", action="store_true", help="also the pictures in subfolders (needs --full_path)"
    )
    p.add_argument("--debug", action="store_true")
    return p


def body(args: argparse.Namespace) -> int:
    from library.tools.dataset.finetune_metadata import merge_texts

    report = merge_texts(
        args.train_data_dir,
        args.out_json,
        "tags",
        args.caption_extension,
        args.in_json,
        args.full_path,
        args.recursive,
    )
    print(
        f"merged {report.merged} tag lists into {args.out_json}"
        + (
            f"; {len(report.without_file)} pictures have no {args.caption_extension} file"
            if report.without_file
            else ""
        )
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_tool(body, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
