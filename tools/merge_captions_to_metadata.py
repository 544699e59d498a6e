"""Merge caption files into sd-scripts' fine-tuning metadata JSON (the "caption" of each picture's entry).

python tools/merge_captions_to_metadata.py TRAIN_DATA_DIR OUT_JSON [--in_json IN_JSON] [--caption_extension .caption]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from library.tools.dataset.cli_support import run_tool  # noqa: E402
from library.tools.dataset.finetune_metadata import merge_main, merge_parser  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    args = merge_parser("caption", __doc__.splitlines()[0]).parse_args(argv)
    return run_tool(lambda parsed: merge_main("caption", parsed), args)


if __name__ == "__main__":
    sys.exit(main())
