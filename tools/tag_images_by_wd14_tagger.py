"""Tag pictures with a SmilingWolf WD14 tagger (ONNX) and write the tags as captions.

python tools/tag_images_by_wd14_tagger.py DIR --repo_id SmilingWolf/wd-v1-4-convnext-tagger-v2 --batch_size 8
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from library.tools.dataset.cli_support import add_folder_arguments, run_tool  # noqa: E402
from library.tools.dataset.wd14_model import DEFAULT_MODEL_DIR, DEFAULT_REPO_ID  # noqa: E402

#: the v3 categories with a --<name>_threshold option (unset = --thresh).
CATEGORY_OPTIONS = ("copyright", "artist", "meta", "model")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_folder_arguments(p, ".txt")
    p.add_argument(
        "--repo_id", default=DEFAULT_REPO_ID, help="hub repository with model.onnx + selected_tags.csv"
    )
    p.add_argument(
        "--model_dir", default=DEFAULT_MODEL_DIR, help="local folder with (or for) the model files"
    )
    p.add_argument("--force_download", action="store_true", help="download the model files again")
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--thresh", type=float, default=0.35, help="default threshold of every category")
    p.add_argument("--general_threshold", type=float, help="threshold of general tags (default --thresh)")
    p.add_argument("--character_threshold", type=float, help="threshold of character tags (default --thresh)")
    for category in CATEGORY_OPTIONS:
        p.add_argument(
            f"--{category}_threshold",
            type=float,
            help=f"threshold of {category} tags of v3 tag tables (default --thresh; above 1 disables them)",
        )
    p.add_argument(
        "--output_path",
        type=Path,
        help="write all tags to this one .json ({path: {tags, image_size}}) or .jsonl file, no caption files",
    )
    p.add_argument("--caption_separator", default=", ")
    p.add_argument("--remove_underscore", action="store_true", help="'long_hair' -> 'long hair'")
    p.add_argument("--undesired_tags", default="", help="comma-separated tags never written")
    p.add_argument("--always_first_tags", default="", help="comma-separated tags put first when present")
    p.add_argument("--character_tags_first", action="store_true")
    p.add_argument(
        "--tag_replacement", default="", help="'source,target;source2,target2' (\\, and \\; escape)"
    )
    p.add_argument("--use_rating_tags", action="store_true", help="put the rating tag first")
    p.add_argument("--use_rating_tags_as_last_tag", action="store_true", help="put the rating tag last")
    p.add_argument("--use_quality_tags", action="store_true", help="put the quality tag first (v3 tables)")
    p.add_argument("--use_quality_tags_as_last_tag", action="store_true", help="put the quality tag last")
    p.add_argument(
        "--character_tag_expand", action="store_true", help="'chara_name_(series)' -> 'chara_name, series'"
    )
    p.add_argument("--append_tags", action="store_true", help="add new tags to existing captions")
    p.add_argument("--frequency_tags", action="store_true", help="print a tag count table")
    return p


def body(args: argparse.Namespace) -> int:
    from library.errors import UserError
    from library.tools.dataset.files import normalise_extension
    from library.tools.dataset.tags import parse_tag_list, parse_tag_replacement
    from library.tools.dataset.wd14 import TaggingRun, TagSelection, format_frequency, tag_folder
    from library.tools.dataset.wd14_model import WD14Model, resolve_model_files

    folder = Path(args.train_data_dir)
    if not folder.is_dir():  # before any model download: minutes lost to a typo otherwise
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise UserError(f"image folder '{folder}' {what}. Give the folder that holds the pictures to tag.")
    normalise_extension(args.caption_extension)  # refused before any model download, not at the first write
    for flag, value, low in (("--batch_size", args.batch_size, 1),
                             ("--max_data_loader_n_workers", args.max_data_loader_n_workers, 0)):
        if value < low:
            raise UserError(f"{flag} {value} is out of range: it must be at least {low}.")
    try:
        replacement = tuple(parse_tag_replacement(args.tag_replacement))
    except ValueError as exc:
        raise UserError(f"--tag_replacement: {exc}; write 'source,target;source2,target2'.") from None
    given = {
        f"{n}_threshold": getattr(args, f"{n}_threshold") for n in ("general", "character", *CATEGORY_OPTIONS)
    }
    thresholds = {key: args.thresh if value is None else value for key, value in given.items()}
    for key, value in {"thresh": args.thresh, **thresholds}.items():
        if not math.isfinite(value):  # NaN would silently select no tag at all
            raise UserError(f"--{key} {value} is not a number: give a threshold such as 0.35.")
    if args.output_path is not None and args.output_path.is_dir():
        raise UserError(f"--output_path {args.output_path} is a folder; give a .json or .jsonl file name.")
    selection = TagSelection(
        **thresholds,
        remove_underscore=args.remove_underscore,
        undesired_tags=tuple(parse_tag_list(args.undesired_tags, args.caption_separator)),
        always_first_tags=tuple(parse_tag_list(args.always_first_tags, args.caption_separator)),
        character_tags_first=args.character_tags_first,
        tag_replacement=replacement,
        use_rating_tags=args.use_rating_tags,
        use_rating_tags_as_last_tag=args.use_rating_tags_as_last_tag,
        use_quality_tags=args.use_quality_tags,
        use_quality_tags_as_last_tag=args.use_quality_tags_as_last_tag,
        character_tag_expand=args.character_tag_expand,
    )
    run = TaggingRun(
        args.caption_extension,
        args.caption_separator,
        args.append_tags,
        args.overwrite,
        args.batch_size,
        args.max_data_loader_n_workers,
        args.recursive,
        args.output_path,
    )
    onnx_path, tags_path = resolve_model_files(args.model_dir, args.repo_id, args.force_download)
    model = WD14Model(onnx_path, tags_path)
    show = (lambda path, tags: print(f"{path}: {', '.join(tags)}")) if args.debug else None
    report = tag_folder(args.train_data_dir, model, selection, run, on_image=show)
    if args.frequency_tags:
        print(format_frequency(report.frequency))
    written = (
        f"tags written to {args.output_path}"
        if args.output_path
        else f"{len(report.written)} captions written, {len(report.kept_existing)} kept"
    )
    print(
        f"tagged {report.images - len(report.unreadable)} of {report.images} pictures: {written}, "
        f"{len(report.unreadable)} unreadable, {report.seconds_total:.1f} s"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_tool(body, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
