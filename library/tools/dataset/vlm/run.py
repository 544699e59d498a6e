"""The resumable folder run: each process takes its share of the pictures, pictures load in the background
while the model works, and every caption is written (atomically) as soon as it is produced, so a run that is
killed and started again skips what is done. A picture that cannot be read or captioned is listed at the end;
the others go on."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from library.data.images import load_image
from library.errors import UserError
from library.tools.dataset.files import caption_path, find_images, write_caption
from library.tools.dataset.pipeline import iter_loaded_batches
from library.tools.dataset.vlm.base import Backend
from library.tools.dataset.vlm.prompts import clean_caption, with_trigger

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VlmRun:
    """Where captions go and what is added to them."""

    caption_extension: str = ".txt"
    overwrite: bool = False
    recursive: bool = False
    batch_size: int = 1
    workers: int = 4
    trigger_word: str | None = None


@dataclass(frozen=True)
class Share:
    """This process's part of the work: pictures ``index``, ``index + count``, ... of the sorted list."""

    index: int = 0
    count: int = 1

    def take(self, paths: Sequence[Path]) -> list[Path]:
        return list(paths[self.index :: self.count])


def process_share(environ: dict | None = None) -> Share:
    """The share of this process under ``accelerate launch`` / ``torchrun`` (``RANK`` of ``WORLD_SIZE``,
    which both set), or the whole list in a plain run."""
    env = os.environ if environ is None else environ
    try:
        count = int(env.get("WORLD_SIZE", "1"))
        index = int(env.get("RANK", env.get("LOCAL_RANK", "0")))
    except ValueError:
        raise UserError(
            f"RANK={env.get('RANK')!r} / WORLD_SIZE={env.get('WORLD_SIZE')!r} are not whole numbers; start "
            "several processes with accelerate launch, which sets them."
        ) from None
    if count < 1 or not 0 <= index < count:
        raise UserError(
            f"RANK {index} is outside WORLD_SIZE {count}; start the processes with accelerate launch."
        )
    return Share(index, count)


@dataclass
class VlmReport:
    """What one process's run did; ``failed`` holds (picture, reason) for each picture left without caption."""

    images: int = 0
    todo: int = 0
    written: list[Path] = field(default_factory=list)
    kept_existing: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"captioned {len(self.written)} of {self.todo} pictures to do ({self.images} in this share, "
            f"{self.kept_existing} already captioned, {len(self.failed)} failed)"
        )


def pictures_to_do(folder: str | Path, run: VlmRun, share: Share) -> tuple[list[Path], int, int]:
    """(pictures of this share without a caption, or all with ``overwrite``; share size; kept count)."""
    mine = share.take(find_images(folder, run.recursive))
    todo = [p for p in mine if run.overwrite or not caption_path(p, run.caption_extension).exists()]
    return todo, len(mine), len(mine) - len(todo)


def _progress(total: int, share: Share):
    from tqdm import tqdm

    label = "captioning" if share.count == 1 else f"captioning [{share.index + 1}/{share.count}]"
    return tqdm(total=total, desc=label, unit="pic", mininterval=1.0, position=share.index)


def caption_folder_vlm(
    folder: str | Path,
    backend: Backend,
    prompt: str,
    run: VlmRun,
    share: Share = Share(),  # noqa: B008 - frozen dataclass
    on_caption: Callable[[Path, str], None] | None = None,
) -> VlmReport:
    """Caption this share's pictures of ``folder`` that have no caption yet (all with ``run.overwrite``)."""
    todo, mine, kept = pictures_to_do(folder, run, share)
    report = VlmReport(images=mine, todo=len(todo), kept_existing=kept)
    unreadable: list[Path] = []
    with _progress(len(todo), share) as bar:
        for batch in iter_loaded_batches(todo, load_image, run.batch_size, run.workers, unreadable):
            paths = [path for path, _ in batch]
            try:
                results = backend.caption([image for _, image in batch], prompt)
            except UserError:
                raise
            except Exception as exc:  # noqa: BLE001 - e.g. CUDA out of memory: this batch fails, the run goes on
                logger.warning("captioning %d pictures failed: %r", len(paths), exc)
                results = [exc] * len(paths)
            for path, result in zip(paths, results, strict=True):
                _finish(path, result, run, report, on_caption)
            bar.update(len(paths))
        for path in unreadable:
            report.failed.append((path, "the picture cannot be read (named in a warning above)"))
            bar.update(1)
    return report


def _finish(path: Path, result, run: VlmRun, report: VlmReport, on_caption) -> None:
    """Write one picture's caption now (so a killed run keeps it), or record why it has none."""
    if isinstance(result, Exception):
        report.failed.append((path, str(result) or type(result).__name__))
        return
    text = clean_caption(result)
    if not text:
        report.failed.append((path, "the model answered an empty caption"))
        return
    text = with_trigger(text, run.trigger_word)
    write_caption(caption_path(path, run.caption_extension), text, overwrite=True)
    report.written.append(caption_path(path, run.caption_extension))
    if on_caption is not None:
        on_caption(path, text)
