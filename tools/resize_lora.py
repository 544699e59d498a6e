"""Resize a LoRA to a lower rank by SVD (alpha rescaled so the effect is kept) and report what is retained.

python tools/resize_lora.py --model big.safetensors --new_rank 16 --save_to small.safetensors
python tools/resize_lora.py --model big.safetensors --new_rank 64 --dynamic_method sv_fro --dynamic_param 0.9 --save_to dyn.safetensors
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from library.tools.models.common import PRECISION_CHOICES, run_tool  # noqa: E402
from library.tools.models.lowrank import DYNAMIC_METHODS  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="LoRA file to resize")
    parser.add_argument(
        "--new_rank", type=int, default=4, help="target rank (the maximum with a dynamic method)"
    )
    parser.add_argument(
        "--new_conv_rank", type=int, help="target rank of 3x3 conv modules (default new_rank)"
    )
    parser.add_argument("--save_to", required=True, help="output LoRA file")
    parser.add_argument("--dynamic_method", choices=DYNAMIC_METHODS, help="choose the rank per module")
    parser.add_argument(
        "--dynamic_param",
        type=float,
        help="sv_ratio: max/min singular value ratio; sv_fro / sv_cumulative: fraction to keep (e.g. 0.9)",
    )
    parser.add_argument("--save_precision", choices=PRECISION_CHOICES, help="default: the input's precision")
    parser.add_argument("--device", help="device for the SVD, e.g. cuda")
    parser.add_argument("--verbose", action="store_true", help="report every module")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.dynamic_method and args.dynamic_param is None:
        parser.error("--dynamic_method needs --dynamic_param")

    def body() -> int:
        from library.tools.models.resize_lora import resize_lora_file, summary_lines

        path, rows = resize_lora_file(
            args.model,
            args.new_rank,
            args.save_to,
            new_conv_rank=args.new_conv_rank,
            dynamic_method=args.dynamic_method,
            dynamic_param=args.dynamic_param,
            save_precision=args.save_precision,
            device=args.device,
        )
        print("\n".join(summary_lines(rows, verbose=args.verbose)))
        print(f"saved {path}")
        return 0

    return run_tool(body)


if __name__ == "__main__":
    sys.exit(main())
