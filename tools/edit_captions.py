"""Edit the captions of a folder: add, replace, remove, fold tags into a trigger word, dedupe, stats.

python tools/edit_captions.py DIR fold Smith 1boy "facial hair" beard --dry-run
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from library.tools.dataset.cli_support import run_tool  # noqa: E402
from library.tools.dataset.edit import EDITS  # noqa: E402


def _add_common(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """The options allowed before or after the subcommand (set only once: the subcommand's win)."""
    kw = {} if defaults else {"default": argparse.SUPPRESS}
    parser.add_argument("--caption_extension", **({"default": ".txt"} if defaults else kw))
    parser.add_argument("--recursive", action="store_true", help="also the captions in subfolders", **kw)
    parser.add_argument(
        "--dry-run",
        "--dry_run",
        dest="dry_run",
        action="store_true",
        help="show the diff, change nothing",
        **kw,
    )
    parser.add_argument(
        "--no-backup",
        "--no_backup",
        dest="no_backup",
        action="store_true",
        help="do not keep a copy of the changed files in .caption_backups/",
        **kw,
    )
    parser.add_argument("--debug", action="store_true", **kw)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("train_data_dir", help="folder of pictures and their captions")
    _add_common(parser, defaults=True)
    common = argparse.ArgumentParser(add_help=False)
    _add_common(common, defaults=False)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in EDITS.names():
        entry = EDITS.find(name)
        entry.factory.add_arguments(commands.add_parser(name, help=entry.description, parents=[common]))
    stats = commands.add_parser(
        "stats", help="tag frequency, common tags and co-occurring pairs per folder", parents=[common]
    )
    stats.add_argument("--min_share", type=float, default=0.8, help="report tags in at least this share")
    stats.add_argument(
        "--pair_share", type=float, default=0.9, help="report pairs together at least this often"
    )
    stats.add_argument("--min_pair_count", type=int, default=3)
    stats.add_argument("--top", type=int, default=20, help="most frequent tags shown per folder")
    stats.add_argument("--json", action="store_true", help="print JSON")
    return parser


def run_stats(args: argparse.Namespace) -> int:
    from library.errors import UserError
    from library.tools.dataset.stats import format_stats, read_folder_captions, tag_stats

    for flag, share in (("--min_share", args.min_share), ("--pair_share", args.pair_share)):
        if not 0 < share <= 1:  # also refuses NaN
            raise UserError(f"{flag} {share} is out of range: give a share in (0, 1], e.g. 0.8.")
    for flag, count, low in (("--top", args.top, 0), ("--min_pair_count", args.min_pair_count, 1)):
        if count < low:
            raise UserError(f"{flag} {count} is out of range: it must be at least {low}.")
    captions = read_folder_captions(args.train_data_dir, args.caption_extension)
    stats = {
        folder: tag_stats(c, args.min_share, args.pair_share, args.min_pair_count)
        for folder, c in sorted(captions.items())
    }
    print(
        json.dumps({f: s.to_json() for f, s in stats.items()}, indent=2, ensure_ascii=False)
        if args.json
        else format_stats(stats, args.top)
    )
    return 0


def body(args: argparse.Namespace) -> int:
    from library.tools.dataset.edit import edit_folder, format_diff

    if args.command == "stats":
        return run_stats(args)
    edit = EDITS.find(args.command).factory.build(args)
    report = edit_folder(
        args.train_data_dir, edit, args.caption_extension, args.recursive, args.dry_run, not args.no_backup
    )
    if args.dry_run and report.changes:
        print(format_diff(report.changes, Path(args.train_data_dir)))
    verb = "would change" if args.dry_run else "changed"
    print(
        f"{verb} {len(report.changes)} of {report.captions} caption files"
        + (f"; {len(report.missing)} pictures have no caption file" if report.missing else "")
        + (f"; backups in {report.backup_dir}" if report.backup_dir else "")
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_tool(body, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
