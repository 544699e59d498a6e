"""Print the webui's hashes of model files (checkpoints, VAEs, LoRAs, embeddings); find duplicates in a folder.

python tools/hash_model.py model.safetensors vae.pt
python tools/hash_model.py --folder models/VAE --duplicates
Per file: sha256 (full file), autov2 (its first 10 hex digits), legacy_hash (the webui's old 8-digit model
hash); for .safetensors also model_hash (sha256 of the tensor bytes: the LoRA hash, sshs_model_hash), autov3
(its first 12) and sshs_legacy_hash (additional-networks' legacy hash). --duplicates groups files with equal
hashes (exit 1 when some are found).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from library.tools.models.common import run_tool  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", help="model files (.safetensors, .ckpt, .pt, .pth, .bin)")
    parser.add_argument("--folder", help="also hash every model file under this folder (recursively)")
    parser.add_argument("--duplicates", action="store_true", help="list groups of files with equal hashes")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        from library.errors import ConfigError
        from library.tools.models.hashes import (
            duplicate_groups,
            duplicate_lines,
            hash_file,
            model_files,
            report_lines,
        )

        paths = [Path(p) for p in args.files] + (model_files(args.folder) if args.folder else [])
        if not paths:
            raise ConfigError(
                "hash_model.py: no model files to hash. Pass files (hash_model.py a.safetensors b.pt) or "
                "--folder DIR (a folder holding .safetensors / .ckpt / .pt files)."
            )
        results = []
        for path in paths:
            hashes = hash_file(path)
            results.append(hashes)
            print("\n".join(report_lines(hashes)), flush=True)
        if args.duplicates:
            groups = duplicate_groups(results)
            print("\n".join(duplicate_lines(groups)), flush=True)
            return 1 if groups else 0
        return 0

    return run_tool(body)


if __name__ == "__main__":
    sys.exit(main())
