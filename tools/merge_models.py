"""Merge checkpoints: weighted sum A*(1-M)+B*M, add difference A+(B-C)*M, optional per-block weights.

python tools/merge_models.py --models a.safetensors b.safetensors --ratio 0.3 --save_to ab.safetensors
python tools/merge_models.py --models a.safetensors b.safetensors c.safetensors --ratio 1 --save_to a+b-c.safetensors
python tools/merge_models.py --models a.safetensors b.safetensors --block_weights 0,0,0,0,0,0,0,0,0,0,0,0,0.5,1,1,1,1,1,1,1,1,1,1,1,1 --save_to ab.safetensors
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from library.tools.models.common import PRECISION_CHOICES, run_tool  # noqa: E402
from library.tools.models.merge_models import MODE_MODELS  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", required=True, help="A B (weighted sum) or A B C (add difference)"
    )
    parser.add_argument("--save_to", required=True, help="output .safetensors/.ckpt file or diffusers folder")
    parser.add_argument("--mode", choices=sorted(MODE_MODELS), help="default: by the number of models")
    parser.add_argument("--ratio", type=float, default=0.5, help="the multiplier M")
    parser.add_argument(
        "--block_weights",
        help="comma-separated UNet block weights replacing M inside those blocks: 25 for SD1/SD2 "
        "(IN00..IN11,M00,OUT00..OUT11), 23 for SDXL (BASE,IN00..IN08,M00..M02,OUT00..OUT08,OUT)",
    )
    parser.add_argument(
        "--text_encoder_ratio", type=float, help="M for the text encoder(s) (default --ratio)"
    )
    parser.add_argument(
        "--unet_only", action="store_true", help="merge only the UNet; text encoder and VAE from A"
    )
    parser.add_argument("--save_precision", choices=PRECISION_CHOICES, help="default: model A's precision")
    parser.add_argument("--v2", action="store_true", default=None, help="SD 2.x models (detected if omitted)")
    parser.add_argument(
        "--allow_unsafe_pickle", action="store_true", help="load .ckpt models that need full pickle"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        from library.tools.models.merge_models import merge_checkpoints

        report = merge_checkpoints(
            args.models,
            args.save_to,
            mode=args.mode,
            ratio=args.ratio,
            block_weights=args.block_weights,
            text_encoder_ratio=args.text_encoder_ratio,
            unet_only=args.unet_only,
            save_precision=args.save_precision,
            v2=args.v2,
            allow_unsafe_pickle=args.allow_unsafe_pickle,
        )
        print("\n".join(report.lines()))
        print(f"saved {args.save_to}")
        return 0

    return run_tool(body)


if __name__ == "__main__":
    sys.exit(main())
