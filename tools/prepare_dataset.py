"""Build OUT/train/<repeats>_<trigger> <class>/ (and OUT/reg/<repeats>_<class>/) from folders of raw pictures.

python tools/prepare_dataset.py RAW_DIR OUT --trigger sks --class_name dog --repeats 10 --reg_dir RAW_REG --resolution 512
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from library.tools.dataset.cli_support import run_tool  # noqa: E402
from library.tools.dataset.prepare import LINK_MODES, RESIZE_MODES  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("images_dir", help="folder of raw training pictures (with optional caption files)")
    p.add_argument("out_dir", help="where train/ (and reg/) are created")
    p.add_argument("--trigger", default="", help="trigger word, e.g. sks")
    p.add_argument("--class_name", required=True, help="class word, e.g. dog")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--reg_dir", help="folder of raw regularisation pictures")
    p.add_argument("--reg_repeats", type=int, default=1)
    p.add_argument("--caption_extension", default=".txt")
    p.add_argument("--link", choices=LINK_MODES, default="copy", help="copy the pictures or link them")
    p.add_argument("--resolution", type=int, help="resize to about this resolution (area resolution²)")
    p.add_argument(
        "--resize_mode",
        choices=RESIZE_MODES,
        default="keep",
        help="keep the aspect ratio (never enlarge) or center-crop to a square",
    )
    p.add_argument("--group_size", type=int, help="crop groups of this many pictures to one aspect ratio")
    p.add_argument(
        "--bucket_reso_steps", type=int, default=64, help="sides of grouped pictures are multiples"
    )
    p.add_argument("--overwrite", action="store_true", help="write into output folders that hold files")
    p.add_argument(
        "--recursive",
        action="store_true",
        help="also take pictures from subfolders (placed as <subfolder>_<name>)",
    )
    p.add_argument("--debug", action="store_true")
    return p


def body(args: argparse.Namespace) -> int:
    from library.tools.dataset.prepare import PrepareOptions, prepare_dataset

    opts = PrepareOptions(
        args.trigger,
        args.class_name,
        args.repeats,
        args.reg_repeats,
        args.caption_extension,
        args.link,
        args.resolution,
        args.resize_mode,
        args.group_size,
        args.bucket_reso_steps,
        args.overwrite,
        args.recursive,
    )
    report = prepare_dataset(args.images_dir, args.out_dir, opts, args.reg_dir)
    print(
        f"placed {len(report.placed)} pictures in {report.train_dir}"
        + (f" and {report.reg_dir}" if report.reg_dir else "")
        + (f"; skipped {len(report.skipped)} unreadable" if report.skipped else "")
    )
    print(
        f"train with: --train_data_dir {report.train_dir.parent}"
        + (f" --reg_data_dir {report.reg_dir.parent}" if report.reg_dir else "")
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_tool(body, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
