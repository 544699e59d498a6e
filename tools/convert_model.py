"""Convert a Stable Diffusion checkpoint: single file (.safetensors/.ckpt) <-> diffusers folder, precision, prune.

python tools/convert_model.py model.safetensors model_diffusers --precision fp16
python tools/convert_model.py model.ckpt model-pruned.safetensors --prune --precision fp16
python tools/convert_model.py merged.safetensors fixed.safetensors --fix_position_ids
SD1/SD2 single files are in the LDM layout, SDXL ones in Stability's SGM layout (both encoders); the
family is detected from the layout, and single file -> diffusers -> single file is exact.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from library.tools.models.checkpoint import FORMATS  # noqa: E402
from library.tools.models.common import PRECISION_CHOICES, run_tool  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", help="source: diffusers folder, .safetensors or .ckpt single file")
    parser.add_argument("dst", help="destination: a folder (diffusers) or a .safetensors/.ckpt file")
    parser.add_argument("--to", choices=FORMATS, help="output format (default: from the destination name)")
    parser.add_argument(
        "--precision", choices=PRECISION_CHOICES, help="save precision (default: the source's)"
    )
    parser.add_argument(
        "--prune", action="store_true",
        help="drop EMA weights and everything not part of the model (also resets corrupted CLIP position_ids)",
    )
    parser.add_argument(
        "--fix_position_ids", action="store_true",
        help="reset corrupted CLIP position_ids (floats, or not 0..76: merged SD1 checkpoints) to arange(77), "
        "with a report line per key",
    )
    parser.add_argument(
        "--v2", action="store_true", default=None, help="the model is SD 2.x (detected if omitted)"
    )
    parser.add_argument(
        "--v_parameterization",
        action="store_true",
        default=None,
        help="v-prediction model (detected if omitted)",
    )
    parser.add_argument(
        "--allow_unsafe_pickle", action="store_true", help="load .ckpt files that need full pickle"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a destination folder that holds other files than a diffusers model (all of it is deleted)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        from library.tools.models.convert import convert_model

        report = convert_model(
            args.src,
            args.dst,
            to=args.to,
            precision=args.precision,
            prune=args.prune,
            v2=args.v2,
            v_parameterization=args.v_parameterization,
            allow_unsafe_pickle=args.allow_unsafe_pickle,
            overwrite=args.overwrite,
            fix_position_ids=args.fix_position_ids,
        )
        print("\n".join(report.lines()))
        return 0

    return run_tool(body)


if __name__ == "__main__":
    sys.exit(main())
