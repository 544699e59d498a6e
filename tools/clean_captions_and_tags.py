"""Clean the captions and tags of sd-scripts' fine-tuning metadata JSON with sd-scripts' rules.

Tags: "_" -> " ", DeepDanbooru ratings cut, hair/eye features named for several people dropped, "shirt" dropped
beside "white shirt". Captions: "anime girl", "woman", "person" ... -> "girl" (sd-scripts' replacement list).

python tools/clean_captions_and_tags.py IN_JSON OUT_JSON
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from library.tools.dataset.cli_support import run_tool  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("in_json", help="metadata file to read")
    p.add_argument("out_json", help="metadata file to write")
    p.add_argument("--debug", action="store_true", help="log each change")
    return p


def parse(argv: list[str] | None) -> argparse.Namespace:
    """sd-scripts' older form ``TRAIN_DATA_DIR IN_JSON OUT_JSON`` still works (the folder is not needed)."""
    args, extra = build_parser().parse_known_args(argv)
    if len(extra) == 1 and not extra[0].startswith("-"):
        logging.getLogger(__name__).warning(
            "the train_data_dir argument is not needed any more; give IN_JSON OUT_JSON"
        )
        args.in_json, args.out_json = args.out_json, extra[0]
    elif extra:
        build_parser().error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def body(args: argparse.Namespace) -> int:
    from library.tools.dataset.finetune_metadata import clean_metadata

    tags, captions = clean_metadata(args.in_json, args.out_json)
    print(f"wrote {args.out_json}: {tags} tag lists and {captions} captions changed")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_tool(body, parse(argv))


if __name__ == "__main__":
    sys.exit(main())
