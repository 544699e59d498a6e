"""The Dataset tab's check summary as Markdown: the verdict, then one line per figure (with its unit), per
folder and per finding, instead of the report's raw dict. No gradio here: the formatting is tested on its own.
"""

from __future__ import annotations

#: the dataset check's figures: summary key -> (label, unit)
CHECK_FIGURES = {
    "train_images": ("Training pictures", "pictures"),
    "reg_images": ("Regularisation pictures", "pictures"),
    "samples_per_epoch": ("Samples per epoch (pictures × repeats)", "samples"),
    "batch_size": ("Batch size", "samples per step"),
    "steps_per_epoch": ("Steps per epoch", "steps"),
}


def _figure(value) -> str:
    """``[2, 2]`` (one per dataset) -> ``"2"``; ``[[512, 768]]`` -> ``"512×768"``."""
    if isinstance(value, list | tuple):
        parts = ["×".join(map(str, v)) if isinstance(v, list | tuple) else str(v) for v in value]
        return ", ".join(dict.fromkeys(parts))
    return str(value)


def check_summary_markdown(report: dict) -> str:
    """The dataset check's ``to_json()`` as Markdown: the verdict, then one line per figure (with its unit),
    per folder and per finding."""
    verdict = "✅ OK" if report["ok"] else "❌ problems found"
    lines = [f"**{verdict}**: {report['errors']} errors, {report['warnings']} warnings", ""]
    summary = dict(report.get("summary", {}))
    for key, (label, unit) in CHECK_FIGURES.items():
        if key in summary:
            lines.append(f"- {label}: {_figure(summary.pop(key))} {unit}")
    if "resolution" in summary:
        lines.append(f"- Resolution: {_figure(summary.pop('resolution'))} pixels (width × height)")
    tokens = summary.pop("caption_tokens", None)
    if tokens:
        lines.append(
            f"- Caption length: longest {tokens['max']} tokens, mean {tokens['mean']} tokens; "
            f"{tokens['over_limit']} captions over the {tokens['limit']}-token limit"
        )
    lines += [f"- {key.replace('_', ' ')}: {_figure(value)}" for key, value in summary.items()]
    for f in report.get("folders", []):
        kind = "reg" if f["is_reg"] else "train"
        lines.append(f"- Folder `{f['folder']}` ({kind}): {f['images']} pictures × {f['repeats']} repeats")
    for f in report.get("findings", []):
        mark = "❌" if f["severity"] == "error" else "⚠️"
        files = f" ({len(f['paths'])} files)" if f["paths"] else ""
        lines.append(f"- {mark} **{f['code']}**: {f['message']}{files}")
    return "\n".join(lines)
