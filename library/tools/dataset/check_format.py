"""The dataset doctor's text report."""

from __future__ import annotations

from library.tools.dataset.check import CheckReport
from library.tools.dataset.stats import format_stats

MAX_PATHS = 10


def format_report(report: CheckReport) -> str:
    """Folders, figures, buckets, tag statistics, then the findings (errors first) and a verdict."""
    lines = ["Folders:"]
    for f in report.folders:
        kind = "reg  " if f["is_reg"] else "train"
        lines.append(f"  {kind} {f['images']:>6} pictures x {f['repeats']:>3} repeats  {f['folder']}")
    s = report.summary
    if "train_images" in s:
        lines.append(
            f"Training pictures {s['train_images']}, reg pictures {s['reg_images']}, samples per epoch "
            f"{s['samples_per_epoch']}, batch size {s['batch_size']}: {s['steps_per_epoch']} steps per epoch"
        )
    if "caption_tokens" in s:
        t = s["caption_tokens"]
        lines.append(f"Caption tokens: max {t['max']}, mean {t['mean']}, {t['over_limit']} over max_token_length "
                     f"{t['limit']}")
    if report.buckets:
        lines.append("Buckets (samples per epoch):")
        lines.extend(f"  {b['bucket'][0]}x{b['bucket'][1]}: {b['samples']}" for b in report.buckets)
    if report.tag_stats:
        lines.append("Tags:")
        lines.extend("  " + line for line in format_stats(report.tag_stats, top=10).splitlines())
    for severity in ("error", "warning"):
        for f in (x for x in report.findings if x.severity == severity):
            lines.append(f"{severity.upper()} [{f.code}] {f.message}")
            lines.extend(f"    {p}" for p in f.paths[:MAX_PATHS])
            if len(f.paths) > MAX_PATHS:
                lines.append(f"    ... and {len(f.paths) - MAX_PATHS} more")
    verdict = "FAILED" if report.errors else "OK"
    lines.append(f"{verdict}: {len(report.errors)} errors, {len(report.warnings)} warnings")
    return "\n".join(lines)
