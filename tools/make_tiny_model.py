"""Write the built-in tiny Stable Diffusion model (random weights) as a diffusers folder and/or single file.

python tools/make_tiny_model.py --out tiny_sd1 --single_file tiny_sd1.safetensors --family sd1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from library.errors import UserError  # noqa: E402
from library.models.families import FAMILIES  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="diffusers folder to write")
    parser.add_argument("--single_file", help="LDM-layout .safetensors (or .ckpt) file to write")
    parser.add_argument("--family", choices=sorted(FAMILIES), default="sd1")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.out and not args.single_file:
        parser.error("give --out and/or --single_file")
    from library.models.tiny import save_tiny_diffusers, save_tiny_single_file

    try:
        if args.out:
            print(f"wrote diffusers folder {save_tiny_diffusers(args.out, args.family, args.seed)}")
        if args.single_file:
            print(f"wrote single file {save_tiny_single_file(args.single_file, args.family, args.seed)}")
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
