"""The dataset table printed before training, and the caption-length report (tokens per caption).

Captions longer than ``max_token_length`` CLIP tokens (75 by default; 150 / 225 when set) are cut when
they are encoded; :func:`caption_lengths` counts them with the model's tokenizer (the built-in CLIP
tokenizer, :func:`library.models.tokenizer.clip_tokenizer`, by default: SD1, SD2 and SDXL share its BPE) so
the training start and the dataset check can say so instead of cutting in silence.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
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


DEFAULT_MAX_TOKENS = 75  # sd-scripts' max_token_length default: one 77-token window less BOS and EOS


@dataclass
class CaptionLengths:
    """Tokens per caption (without BOS / EOS) and the limit they are cut at."""

    limit: int
    counts: list[tuple[str, int]] = field(default_factory=list)  # (picture path, tokens)

    @property
    def over(self) -> list[tuple[str, int]]:
        """The captions longer than the limit, longest first."""
        return sorted(((p, n) for p, n in self.counts if n > self.limit), key=lambda pn: (-pn[1], pn[0]))

    def lines(self, show: int = 5) -> list[str]:
        """One info line; with long captions a warning line naming the longest and the fix."""
        if not self.counts:
            return []
        numbers = [n for _, n in self.counts]
        out = [f"caption tokens: max {max(numbers)}, mean {sum(numbers) / len(numbers):.1f} "
               f"over {len(numbers)} captions (max_token_length {self.limit})"]
        over = self.over
        if over:
            longest = ", ".join(f"{p} ({n} tokens)" for p, n in over[:show])
            more = f" and {len(over) - show} more" if len(over) > show else ""
            fix = ("shorten them, or set max_token_length = " + (" or ".join(str(v) for v in (150, 225) if v > self.limit))
                   if self.limit < 225 else "shorten them (225 is the longest max_token_length)")
            out.append(f"warning: {len(over)} of {len(numbers)} captions are longer than max_token_length "
                       f"{self.limit} tokens and are cut there in training: {longest}{more}; {fix}.")
        return out


def count_caption_tokens(captions: list[str], tokenizer=None) -> list[int]:
    """The number of tokens of each caption, without BOS / EOS (``tokenizer``: a transformers tokenizer;
    default the built-in CLIP tokenizer). Each distinct caption is tokenized once."""
    if tokenizer is None:
        from library.models.tokenizer import clip_tokenizer

        tokenizer = clip_tokenizer()
    distinct = sorted(set(captions))
    ids = tokenizer(distinct, add_special_tokens=False, truncation=False, verbose=False)["input_ids"] if distinct else []
    lengths = {c: len(i) for c, i in zip(distinct, ids, strict=True)}
    return [lengths[c] for c in captions]


def caption_lengths(items: Iterable[tuple[str, str]], max_token_length: int | None = None,
                    tokenizer=None) -> CaptionLengths:
    """:class:`CaptionLengths` of (path, caption) pairs at ``max_token_length`` (None: 75)."""
    pairs = list(items)
    counts = count_caption_tokens([c for _, c in pairs], tokenizer)
    return CaptionLengths(max_token_length or DEFAULT_MAX_TOKENS,
                          [(str(p), n) for (p, _), n in zip(pairs, counts, strict=True)])


def dataset_caption_lengths(ds: TrainDataset, max_token_length: int | None = None, tokenizer=None) -> CaptionLengths:
    """:func:`caption_lengths` of a dataset's captions as read (before shuffling / dropout), each picture once."""
    return caption_lengths(((it.path, it.caption) for it in ds.items), max_token_length, tokenizer)
