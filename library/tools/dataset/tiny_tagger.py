"""A tiny WD14-layout tagger for tests, demos and the benchmark (needs torch and the onnx package).

Same I/O as SmilingWolf's models: input ``"input_1:0"`` ``(B, S, S, 3)`` float32 BGR 0-255, output
``"predictions_sigmoid"`` ``(B, n_tags)`` probabilities. Each probability is a fixed affine function of
the picture's mean colour, clamped to [0, 1]: ``p = clamp(bias + wb*B + wg*G + wr*R)`` with B, G, R
the channel means in [0, 1]; so a test knows the exact output for a solid-colour picture.
"""

from __future__ import annotations

import csv
from pathlib import Path

from library.util.atomic import atomic_path

#: (name, category, (wb, wg, wr, bias)) in output order; category 9 = rating, 0 = general, 4 = character.
TINY_TAGS: tuple[tuple[str, int, tuple[float, float, float, float]], ...] = (
    ("general", 9, (0.0, 0.0, 0.0, 0.5)),
    ("sensitive", 9, (0.0, 0.0, 0.9, 0.0)),
    ("questionable", 9, (0.0, 0.9, 0.0, 0.0)),
    ("explicit", 9, (0.0, 0.0, 0.0, 0.1)),
    ("solo", 0, (0.0, 0.0, 0.0, 0.9)),
    ("red", 0, (0.0, 0.0, 1.0, 0.0)),
    ("green", 0, (0.0, 1.0, 0.0, 0.0)),
    ("blue", 0, (1.0, 0.0, 0.0, 0.0)),
    ("long_hair", 0, (0.0, 0.5, 0.5, 0.0)),
    ("^_^", 0, (0.0, 0.0, 0.8, 0.0)),
    ("simple_background", 0, (0.0, 0.0, 0.0, 0.6)),
    ("hatsune_miku", 4, (0.0, 0.7, 0.0, 0.0)),
    ("red_hood", 4, (0.0, 0.0, 0.8, 0.0)),
)


def tiny_probabilities(rgb: tuple[float, float, float]) -> dict[str, float]:
    """The exact output of the tiny tagger for a picture of mean colour ``rgb`` (0-255)."""
    r, g, b = (c / 255.0 for c in rgb)
    return {
        name: min(1.0, max(0.0, bias + wb * b + wg * g + wr * r)) for name, _, (wb, wg, wr, bias) in TINY_TAGS
    }


def _write_tags_csv(path: Path) -> None:
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["tag_id", "name", "category", "count"])
        for i, (name, category, _) in enumerate(TINY_TAGS):
            writer.writerow([1000 + i, name, category, 100 - i])


def build_tiny_tagger(folder: str | Path, size: int = 64) -> Path:
    """Write ``model.onnx`` and ``selected_tags.csv`` of the tiny tagger into ``folder``; return it."""
    import torch

    class MeanColourTagger(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(3, len(TINY_TAGS))
            with torch.no_grad():
                self.linear.weight.copy_(torch.tensor([w[:3] for _, _, w in TINY_TAGS]))
                self.linear.bias.copy_(torch.tensor([w[3] for _, _, w in TINY_TAGS]))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.linear(x.mean(dim=(1, 2)) / 255.0).clamp(0.0, 1.0)

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(1, size, size, 3)
    with atomic_path(folder / "model.onnx") as tmp:
        torch.onnx.export(
            MeanColourTagger().eval(),
            (example,),
            str(tmp),
            input_names=["input_1:0"],
            output_names=["predictions_sigmoid"],
            dynamic_axes={"input_1:0": {0: "batch"}},
            dynamo=False,
        )
    _write_tags_csv(folder / "selected_tags.csv")
    return folder
