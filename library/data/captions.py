"""Caption reading and per-step caption processing (pure functions with an explicit RNG).

The processing order follows sd-scripts' ``process_caption``: prefix/suffix (joined with a space),
whole-caption dropout, tag split + keep/shuffle/tag dropout, secondary separator replacement.
"""

from __future__ import annotations

import logging
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path

from library.errors import DatasetError

logger = logging.getLogger(__name__)

DEFAULT_CAPTION_EXTENSIONS: tuple[str, ...] = (".txt", ".caption")


@dataclass(frozen=True)
class CaptionOptions:
    """Caption options of one subset (sd-scripts names). "Off" is ``None``/``0``/``False``."""

    caption_prefix: str | None = None
    caption_suffix: str | None = None
    caption_dropout_rate: float = 0.0
    caption_dropout_every_n_epochs: int = 0
    shuffle_caption: bool = False
    keep_tokens: int = 0
    keep_tokens_separator: str | None = None
    caption_tag_dropout_rate: float = 0.0
    caption_separator: str = ","
    secondary_separator: str | None = None
    #: ``{a|b}`` picks one alternative each time, and a caption file's lines are alternatives too
    enable_wildcard: bool = False
    #: token warm-up (sd-scripts): the flexible tags grow from ``token_warmup_min`` to all of them over
    #: ``token_warmup_step`` optimizer steps (a value below 1 is a share of the run's steps; 0: off)
    token_warmup_min: int = 1
    token_warmup_step: float = 0


_WILDCARD = re.compile(r"\{([^}]+)\}")


def resolve_wildcards(caption: str, rng: random.Random) -> str:
    """sd-scripts' ``enable_wildcard``: one random line of a multi-line caption, then each ``{a|b|c}`` replaced
    by one of its alternatives; ``{{`` and ``}}`` stand for literal braces. Draws from ``rng`` only."""
    if "\n" in caption:
        caption = rng.choice(caption.split("\n"))
    open_mark, close_mark = "\u2985", "\u2986"  # sd-scripts' placeholders, lengthened until unused
    while open_mark in caption or close_mark in caption:
        open_mark, close_mark = open_mark + "\u2985", close_mark + "\u2986"
    caption = caption.replace("{{", open_mark).replace("}}", close_mark)
    caption = _WILDCARD.sub(lambda match: rng.choice(match.group(1).split("|")), caption)
    return caption.replace(open_mark, "{").replace(close_mark, "}")


def token_warmup_length(num_flex: int, opts: CaptionOptions, step: int | None, total_steps: int) -> int | None:
    """How many flexible tags token warm-up keeps at optimizer step ``step`` (0-based), or None for all (also
    when ``step`` is None: a caption outside training, e.g. for the validation loss).

    sd-scripts: ``floor(step * (n - token_warmup_min) / warmup_steps) + token_warmup_min`` while ``step`` is
    below ``warmup_steps``; a ``token_warmup_step`` below 1 is ``floor(share * total_steps)`` steps.
    """
    warmup = opts.token_warmup_step
    if step is None:
        return None
    if warmup and warmup < 1:
        warmup = math.floor(warmup * total_steps)
    if not warmup or step >= warmup:
        return None
    return math.floor(step * ((num_flex - opts.token_warmup_min) / warmup)) + opts.token_warmup_min


def split_tags(caption: str, separator: str = ",") -> list[str]:
    """Split a caption into stripped, non-empty tags."""
    return [t.strip() for t in caption.split(separator) if t.strip()]


def _split_fixed_flex(caption: str, opts: CaptionOptions) -> tuple[list[str], list[str], list[str]]:
    """Return (fixed prefix tags, flexible tags, fixed suffix tags)."""
    sep = opts.caption_separator
    keep_sep = opts.keep_tokens_separator
    if keep_sep and keep_sep in caption:
        fixed_part, flex_part = caption.split(keep_sep, 1)
        suffix_part = ""
        if keep_sep in flex_part:
            flex_part, suffix_part = flex_part.split(keep_sep, 1)
        return split_tags(fixed_part, sep), split_tags(flex_part, sep), split_tags(suffix_part, sep)
    tags = split_tags(caption, sep)
    keep = max(0, opts.keep_tokens)
    return tags[:keep], tags[keep:], []


def process_caption(caption: str, opts: CaptionOptions, rng: random.Random, epoch: int, step: int | None = None,
                    total_steps: int = 0) -> str:
    """Apply the per-step caption transforms to one caption.

    Args:
        caption: the raw caption (first line of the caption file, or the class tokens).
        opts: the subset's caption options.
        rng: the only source of randomness (draw order: dropout, wildcards, shuffle, tag dropout).
        epoch: the 1-based epoch number (as sd-scripts' ``current_epoch``), used by
            ``caption_dropout_every_n_epochs``: epochs n, 2n, ... get empty captions.
        step, total_steps: the optimizer step the caption is used at (0-based; None: no token warm-up) and
            the run's length in steps, for token warm-up.

    Returns:
        The processed caption; tags are re-joined with ``", "``. A ``keep_tokens_separator`` found in
        the caption is always removed, even without shuffling, so it never reaches the text encoder.
    """
    if opts.caption_prefix:
        caption = f"{opts.caption_prefix} {caption}"
    if opts.caption_suffix:
        caption = f"{caption} {opts.caption_suffix}"
    if opts.caption_dropout_rate > 0 and rng.random() < opts.caption_dropout_rate:
        return ""
    every_n = opts.caption_dropout_every_n_epochs
    if every_n and every_n > 0 and epoch % every_n == 0:
        return ""
    caption = resolve_wildcards(caption, rng) if opts.enable_wildcard else caption.split("\n")[0]
    has_keep_sep = bool(opts.keep_tokens_separator) and opts.keep_tokens_separator in caption
    if opts.shuffle_caption or opts.caption_tag_dropout_rate > 0 or has_keep_sep or opts.token_warmup_step:
        fixed, flex, fixed_suffix = _split_fixed_flex(caption, opts)
        keep = token_warmup_length(len(flex), opts, step, total_steps)
        if keep is not None:
            flex = flex[:keep]
        if opts.shuffle_caption:
            rng.shuffle(flex)
        if opts.caption_tag_dropout_rate > 0:
            flex = [t for t in flex if rng.random() >= opts.caption_tag_dropout_rate]
        caption = ", ".join(fixed + flex + fixed_suffix)
    if opts.secondary_separator:
        caption = caption.replace(opts.secondary_separator, opts.caption_separator)
    return caption


def _caption_text(path: Path, all_lines: bool = False) -> str:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(
            f"Caption file '{path}' is not valid UTF-8 (byte {exc.start}: {exc.reason}). Re-save it "
            f"as UTF-8 (most editors offer 'Save with encoding' -> UTF-8)."
        ) from exc
    except OSError as exc:
        raise DatasetError(f"Caption file '{path}' cannot be read: {exc}. Check its permissions.") from exc
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if all_lines:  # enable_wildcard: each line is an alternative, one is picked per use
        return "\n".join(lines)
    return lines[0] if lines else ""


def _normalise_extension(ext: str) -> str:
    return ext if ext.startswith(".") else "." + ext


def read_caption(
    image_path: str | Path, caption_extension: str | None, class_tokens: str | None, all_lines: bool = False
) -> tuple[str, str]:
    """Read the caption of one image.

    ``caption_extension`` None means ``<stem>.txt`` if present, else ``<stem>.caption``. Only the first
    non-empty line is used, or every non-empty line (joined by newlines) with ``all_lines``
    (``enable_wildcard``). Without a caption file (or with an empty one, which logs a warning) the
    class tokens are the caption.

    Returns:
        ``(text, source)`` where source is the extension without its dot (``"txt"``, ``"caption"``,
        ...), ``"class tokens"`` or ``"none"`` (no file and no class tokens: empty caption).
    """
    image_path = Path(image_path)
    extensions = (
        DEFAULT_CAPTION_EXTENSIONS
        if caption_extension is None
        else (_normalise_extension(caption_extension),)
    )
    for ext in extensions:
        candidate = image_path.with_suffix(ext)
        if candidate.is_file():
            text = _caption_text(candidate, all_lines)
            if text:
                return text, ext[1:]
            logger.warning(
                "Caption file '%s' is empty; using the class tokens %r instead.",
                candidate,
                class_tokens or "",
            )
            break
    if class_tokens:
        return class_tokens, "class tokens"
    return "", "none"
