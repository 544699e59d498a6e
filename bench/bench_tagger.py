"""Benchmark of the WD14 tagging pipeline with the tiny tagger: throughput and time spent outside the model.

python bench/bench_tagger.py [--images 500] [--picture_size 768x512] [--input_size 448]

Generates the pictures (smooth random JPEGs) and the tiny tagger in a temporary folder, then tags the
folder with several batch sizes / loader thread counts. The tiny model costs almost nothing, so the
figures measure our side: decoding, padding, resizing, batching and caption writing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def make_pictures(folder: Path, count: int, size: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    for i in range(count):
        grid = Image.fromarray((rng.random((8, 12, 3)) * 255).astype("uint8"))
        grid.resize(size, Image.Resampling.BICUBIC).save(folder / f"{i:04d}.jpg", quality=90)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--picture_size", default="768x512", help="WxH of the generated pictures")
    parser.add_argument(
        "--input_size", type=int, default=448, help="tagger input side (448 as the real ones)"
    )
    parser.add_argument("--configs", default="1:1,8:1,8:2,16:4", help="batch:threads pairs to measure")
    args = parser.parse_args(argv)
    from library.tools.dataset.tiny_tagger import build_tiny_tagger
    from library.tools.dataset.wd14 import TaggingRun, TagSelection, tag_folder
    from library.tools.dataset.wd14_model import WD14Model

    width, height = (int(v) for v in args.picture_size.lower().split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pictures = root / "pictures"
        pictures.mkdir()
        t0 = time.perf_counter()
        make_pictures(pictures, args.images, (width, height))
        print(f"generated {args.images} pictures {width}x{height} in {time.perf_counter() - t0:.1f} s")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model_dir = build_tiny_tagger(root / "tagger", args.input_size)
        model = WD14Model(model_dir / "model.onnx", model_dir / "selected_tags.csv")
        print(
            f"{'batch':>5} {'threads':>7} {'images/s':>9} {'total s':>8} {'model s':>8} {'outside model':>14}"
        )
        for config in args.configs.split(","):
            batch, threads = (int(v) for v in config.split(":"))
            run = TaggingRun(batch_size=batch, workers=threads, overwrite=True)
            report = tag_folder(pictures, model, TagSelection(), run)
            outside = 1.0 - report.seconds_model / report.seconds_total
            print(
                f"{batch:>5} {threads:>7} {report.images / report.seconds_total:>9.1f} "
                f"{report.seconds_total:>8.2f} {report.seconds_model:>8.2f} {outside:>13.1%}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
