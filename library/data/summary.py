"""The dataset table printed before training."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from library.data.dataset import TrainDataset


def _folder_rows(ds: TrainDataset, d: int, is_reg: bool) -> list[str]:
    groups: dict[tuple[int, str], list[int]] = {}
    for ref, it in enumerate(ds.items):
        if it.dataset_index == d and it.is_reg == is_reg:
            groups.setdefault((it.subset_index, it.folder), []).append(ref)
    rows = []
    for (s, folder), refs in sorted(groups.items()):
        repeats = ds.specs[d].subsets[s].num_repeats
        used = sum(ds.items[r].repeats for r in refs)
        sources = ", ".join(
            f"{k} {v}"
            for k, v in sorted(ds.caption_source_counts(refs).items(), key=lambda kv: (-kv[1], kv[0]))
        )
        label = f"reg: {folder}" if is_reg else folder
        rows.append(f"  {label[:34]:<34} {len(refs):>7} {repeats:>8} {used:>15}  {sources}")
    return rows


def format_summary(ds: TrainDataset, num_processes: int = 1, grad_accum: int = 1) -> str:
    """Per dataset: folders (images, repeats, images×repeats, caption sources), reg folders, buckets,
    batch size; then totals and the steps per epoch counted from the batch plan."""
    lines: list[str] = []
    counts = ds.bucket_counts()
    for d, spec in enumerate(ds.specs):
        mode = (
            f"buckets {spec.min_bucket_reso}-{spec.max_bucket_reso} step {spec.bucket_reso_steps}"
            + (", no upscale" if spec.bucket_no_upscale else "")
            if spec.enable_bucket
            else "no buckets"
        )
        lines.append(
            f"Dataset {d + 1}: resolution {spec.resolution[0]}x{spec.resolution[1]}, "
            f"batch size {spec.batch_size}, {mode}"
        )
        lines.append(f"  {'folder':<34} {'images':>7} {'repeats':>8} {'images×repeats':>15}  captions")
        lines.extend(_folder_rows(ds, d, False))
        lines.extend(_folder_rows(ds, d, True))
        lines.append(f"  {'bucket':<12} {'images':>7} {'samples/epoch':>14}")
        for (bd, bucket), n in counts.items():
            if bd != d:
                continue
            images = sum(1 for it in ds.items if it.dataset_index == d and it.bucket == bucket and it.repeats)
            lines.append(f"  {f'{bucket[0]}x{bucket[1]}':<12} {images:>7} {n:>14}")
    lines.append(
        f"num_train_images {ds.num_train_images}, reg samples per epoch {ds.num_reg_items_per_epoch}, "
        f"batches per epoch {ds.num_batches()}, steps per epoch {ds.steps_per_epoch(num_processes, grad_accum)}"
        f" (processes {num_processes}, gradient accumulation {grad_accum})"
    )
    return "\n".join(lines)
