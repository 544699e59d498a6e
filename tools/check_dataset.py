"""Check a dataset before training: captions, unreadable pictures, duplicates (also across train and reg),
small pictures, buckets, steps per epoch and tag statistics. Exit 1 on errors, 0 when only warnings.

python tools/check_dataset.py TRAIN_DIR --reg_data_dir REG_DIR --resolution 512 --batch_size 2
python tools/check_dataset.py my_dataset.toml --json
python tools/check_dataset.py TRAIN_DIR --family sdxl --max_bucket_reso 2048   (SDXL: buckets at 1024)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from library.tools.dataset.cli_support import run_tool  # noqa: E402


def _family_names() -> list[str]:
    from library.models.family import all_families

    return sorted(f.name for f in all_families())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", help="train_data_dir, an sd-scripts dataset TOML, or a training config TOML")
    p.add_argument("--reg_data_dir", help="regularisation folder (with a train_data_dir)")
    p.add_argument(
        "--resolution", type=int, help="override the resolution (default: config, else --family's, else 512)"
    )
    p.add_argument(
        "--family",
        choices=_family_names(),
        help="model family the data is for: its default resolution (sdxl 1024) when --resolution is not given",
    )
    p.add_argument("--max_bucket_reso", type=int, help="override the largest bucket side (SDXL: 2048)")
    p.add_argument("--batch_size", type=int, help="override the batch size used for the steps per epoch")
    p.add_argument(
        "--max_phash_distance", type=int, default=8, help="near duplicates: pHash bits that may differ"
    )
    p.add_argument(
        "--min_share", type=float, default=0.8, help="report tags in at least this share of a folder"
    )
    p.add_argument("--pair_share", type=float, default=0.9, help="report tag pairs together this often")
    p.add_argument("--max_data_loader_n_workers", type=int, default=4)
    p.add_argument("--max_token_length", type=int, choices=(75, 150, 225),
                   help="the run's max_token_length: captions with more CLIP tokens get a warning (default 75)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--debug", action="store_true")
    return p


def body(args: argparse.Namespace) -> int:
    from library.tools.dataset.check import CheckOptions, check_dataset
    from library.tools.dataset.check_format import format_report

    opts = CheckOptions(
        resolution=args.resolution,
        batch_size=args.batch_size,
        family=args.family,
        max_bucket_reso=args.max_bucket_reso,
        workers=args.max_data_loader_n_workers,
        max_phash=args.max_phash_distance,
        min_share=args.min_share,
        pair_share=args.pair_share,
        max_token_length=args.max_token_length,
    )
    report = check_dataset(args.source, args.reg_data_dir, opts)
    print(json.dumps(report.to_json(), indent=2, ensure_ascii=False) if args.json else format_report(report))
    return 1 if report.errors else 0


def main(argv: list[str] | None = None) -> int:
    return run_tool(body, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
