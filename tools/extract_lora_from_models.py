"""Extract a LoRA from the difference of two checkpoints (tuned - original) by truncated SVD.

python tools/extract_lora_from_models.py --model_org base.safetensors --model_tuned tuned.safetensors --dim 32 --save_to diff.safetensors
FLUX.1: give two transformer files in BFL's layout (flux1-dev.safetensors and a fine-tune of it); the LoRA has the
trainer's lora_unet_double_blocks_… / single_blocks_… modules and FLUX metadata (as sd-scripts' flux_extract_lora.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from library.tools.models.common import PRECISION_CHOICES, run_tool  # noqa: E402
from library.tools.models.extract_lora import DEFAULT_CLAMP_QUANTILE, DEFAULT_MIN_DIFF  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_org", required=True, help="the original model (file, diffusers folder)")
    parser.add_argument("--model_tuned", required=True, help="the fine-tuned model")
    parser.add_argument("--save_to", required=True, help="output LoRA file")
    parser.add_argument("--dim", type=int, default=4, help="rank of Linear / 1x1 modules")
    parser.add_argument(
        "--conv_dim", type=int, help="rank of 3x3 conv modules (LoCon); omitted: no conv modules"
    )
    parser.add_argument(
        "--clamp_quantile",
        type=float,
        default=DEFAULT_CLAMP_QUANTILE,
        help="clip outliers: factor entries beyond 4x this quantile of their magnitudes (1 = no clipping); each clipped module is reported",
    )
    parser.add_argument(
        "--min_diff",
        type=float,
        default=DEFAULT_MIN_DIFF,
        help="text encoder skipped when no weight differs by more than this",
    )
    parser.add_argument("--v2", action="store_true", default=None, help="SD 2.x models (detected if omitted)")
    parser.add_argument("--v_parameterization", action="store_true", default=None, help="v-prediction models")
    parser.add_argument("--save_precision", choices=PRECISION_CHOICES, default="float")
    parser.add_argument("--device", help="device for the SVD, e.g. cuda")
    parser.add_argument(
        "--allow_unsafe_pickle", action="store_true", help="load .ckpt models that need full pickle"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        from library.tools.models.extract_lora import extract_lora_file

        path, report = extract_lora_file(
            args.model_org,
            args.model_tuned,
            args.save_to,
            dim=args.dim,
            conv_dim=args.conv_dim,
            clamp_quantile=args.clamp_quantile,
            min_diff=args.min_diff,
            v2=args.v2,
            v_parameterization=args.v_parameterization,
            save_precision=args.save_precision,
            device=args.device,
            allow_unsafe_pickle=args.allow_unsafe_pickle,
        )
        print("\n".join(report.lines()))
        print(f"saved {path}")
        return 0

    return run_tool(body)


if __name__ == "__main__":
    sys.exit(main())
