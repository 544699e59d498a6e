"""Assign each fine-tuning picture its aspect-ratio bucket (train_resolution in the metadata JSON) and cache its
VAE latents beside it (<stem>_<WWWW>x<HHHH>_sd.npz, sd-scripts' layout), as sd-scripts' tool does.

python tools/prepare_buckets_latents.py TRAIN_DATA_DIR IN_JSON OUT_JSON MODEL [--max_resolution 512,512] [--flip_aug]
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
    p.add_argument("in_json", help="metadata file to read")
    p.add_argument("out_json", help="metadata file to write")
    p.add_argument(
        "model_name_or_path",
        help="model whose VAE encodes the latents (file, diffusers folder, builtin:tiny)",
    )
    p.add_argument(
        "--v2",
        action="store_true",
        help="not used (the model's family is detected); kept for sd-scripts' commands",
    )
    p.add_argument("--batch_size", type=int, default=1, help="pictures per VAE call")
    p.add_argument(
        "--max_data_loader_n_workers", type=int, default=None, help="accepted for sd-scripts' commands"
    )
    p.add_argument(
        "--max_resolution", default="512,512", help="training resolution 'width,height' (bucket area)"
    )
    p.add_argument("--min_bucket_reso", type=int, default=256)
    p.add_argument("--max_bucket_reso", type=int, default=1024)
    p.add_argument("--bucket_reso_steps", type=int, default=64)
    p.add_argument(
        "--bucket_no_upscale", action="store_true", help="one bucket per picture size, never enlarged"
    )
    p.add_argument(
        "--mixed_precision", choices=("no", "fp16", "bf16"), default="no", help="VAE precision on a GPU"
    )
    p.add_argument("--full_path", action="store_true", help="keys are the pictures' paths")
    p.add_argument("--flip_aug", action="store_true", help="also store the latents of the mirrored pictures")
    p.add_argument(
        "--alpha_mask", default="", help="not supported: the trainer takes alpha masks from the pictures"
    )
    p.add_argument(
        "--skip_existing", action="store_true", help="keep latent files that already fit their bucket"
    )
    p.add_argument(
        "--recursive", action="store_true", help="also the pictures in subfolders (needs --full_path)"
    )
    p.add_argument("--debug", action="store_true")
    return p


def body(args: argparse.Namespace) -> int:
    from library.errors import UserError
    from library.tools.dataset.finetune_metadata import (
        BucketOptions,
        parse_max_resolution,
        prepare_buckets_latents,
    )

    if args.alpha_mask:
        raise UserError(
            "--alpha_mask is not supported by this tool: the trainer reads the alpha masks from the "
            "pictures themselves (alpha_mask = true in the training config). Leave --alpha_mask out."
        )
    opts = BucketOptions(
        parse_max_resolution(args.max_resolution),
        args.min_bucket_reso,
        args.max_bucket_reso,
        args.bucket_reso_steps,
        args.bucket_no_upscale,
    )
    report = prepare_buckets_latents(
        args.train_data_dir,
        args.in_json,
        args.out_json,
        args.model_name_or_path,
        opts,
        args.batch_size,
        args.mixed_precision,
        args.full_path,
        args.flip_aug,
        args.skip_existing,
        args.recursive,
    )
    print(
        f"wrote {args.out_json}: {report.encoded} latents encoded, {report.skipped_existing} kept, "
        f"{len(report.buckets)} buckets"
        + (f", {len(report.unreadable)} unreadable pictures skipped" if report.unreadable else "")
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_tool(body, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
