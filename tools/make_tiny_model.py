"""Write the built-in tiny Stable Diffusion model (random weights) as a diffusers folder and/or single file.

python tools/make_tiny_model.py --out tiny_sd1 --single_file tiny_sd1.safetensors --family sd1
python tools/make_tiny_model.py --out tiny_sdxl --single_file tiny_sdxl.safetensors --family sdxl
SD1/SD2 single files are in the LDM layout, SDXL ones in Stability's SGM layout.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from library.errors import UserError  # noqa: E402
from library.models.tiny import TINY_BUILDERS  # noqa: E402


def _writers(family: str):
    """(write diffusers folder, write single file) of the tiny model of ``family``, each (path, seed) -> Path."""
    from library.models import tiny, tiny_sdxl

    special = {"sdxl": (tiny_sdxl.save_tiny_sdxl_diffusers, tiny_sdxl.save_tiny_sdxl_single_file)}
    if family in special:
        return special[family]
    return (
        lambda out, seed: tiny.save_tiny_diffusers(out, family, seed),
        lambda path, seed: tiny.save_tiny_single_file(path, family, seed),
    )


def _check_targets(out: str | None, single_file: str | None) -> None:
    """UserError before anything is written: --out must not be a file, --single_file not a folder."""
    if out and Path(out).exists() and not Path(out).is_dir():
        raise UserError(
            f"--out {out} is an existing file; --out names the diffusers folder to write. Give a "
            "folder path (or --single_file for a single file)."
        )
    if single_file and Path(single_file).is_dir():
        raise UserError(
            f"--single_file {single_file} is an existing folder; give a file path such as "
            f"{Path(single_file) / 'tiny.safetensors'}."
        )
    for path in (out, single_file):
        blocker = (
            next((p for p in Path(path).parents if p.exists() and not p.is_dir()), None) if path else None
        )
        if blocker is not None:
            raise UserError(f"Cannot write {path}: {blocker} is a file, not a folder. Choose another path.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="diffusers folder to write")
    parser.add_argument("--single_file", help="single .safetensors (or .ckpt) file to write")
    parser.add_argument("--family", choices=sorted(TINY_BUILDERS), default="sd1")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.out and not args.single_file:
        parser.error("give --out and/or --single_file")
    if not 0 <= args.seed < 2**64:
        parser.error(f"--seed {args.seed} is out of range: give a whole number from 0 to 2**64 - 1")
    write_folder, write_file = _writers(args.family)
    try:
        _check_targets(args.out, args.single_file)
        if args.out:
            print(f"wrote diffusers folder {write_folder(args.out, args.seed)}")
        if args.single_file:
            print(f"wrote single file {write_file(args.single_file, args.seed)}")
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
