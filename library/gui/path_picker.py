"""A server-side file browser for the path fields: a small "browse" button beside each field opens the
form's picker (a panel floating at the right of the window) (one ``gr.FileExplorer`` per folder the GUI may use, :class:`~library.gui.security.GuiPolicy`),
and "Use" writes the chosen path into the field. The explorer cannot list outside its root, and the chosen
path is checked against the policy again before it is written (a request crafted by hand is refused too).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from library.config.options import SCHEMA
from library.errors import UserError
from library.gui.form_language import Labels, option_label, ui
from library.gui.guard import bind
from library.gui.security import GuiPolicy

#: the panel floats at the right of the window, so it is in view wherever the browse button was pressed
PICKER_STYLE = (
    "<style>.sd-picker{position:fixed;top:4.5rem;right:1rem;width:min(30rem,45vw);max-height:85vh;"
    "overflow:auto;z-index:1000;padding:0.75rem;border-radius:0.5rem;"
    "background:var(--background-fill-primary);box-shadow:0 4px 24px rgba(0,0,0,.25);}</style>"
)


def picker_roots(policy: GuiPolicy, cwd: str | Path | None = None) -> list[Path]:
    """The folders the picker shows: the policy's allowed folders (those inside another one left out, only
    existing ones), or the working folder and the home folder for a GUI that serves only this machine."""
    cwd = Path(cwd or os.getcwd()).resolve()
    candidates = list(policy.allowed) if policy.allowed is not None else [cwd, Path.home().resolve()]
    roots: list[Path] = []
    for root in candidates:
        root = Path(root).resolve()
        if not root.is_dir() or root in roots:
            continue
        if any(root.is_relative_to(other) for other in candidates if Path(other).resolve() != root):
            continue
        roots.append(root)
    return roots or [cwd]


def picked_path(chosen: str | None, kind: str, policy: GuiPolicy) -> str:
    """The value a field of ``kind`` ("path", "dir", "file") gets for the explorer's ``chosen`` path: a
    file picked for a folder option gives its folder. Raises ``UserError`` when nothing is chosen, for a
    folder picked for a file option, and for a path outside the allowed folders."""
    if not chosen:
        raise UserError("choose a file or folder in the browser first (click its name), then press Use.")
    path = Path(chosen)
    if kind == "dir" and path.is_file():
        path = path.parent
    if kind == "file" and path.is_dir():
        raise UserError(
            f"{str(path)!r} is a folder; this option takes a file: open the folder and click a file."
        )
    policy.check(str(path))
    return str(path)


@dataclass
class PathPicker:
    """One section's browser panel and the path fields it serves."""

    trainer: str
    key: str
    policy: GuiPolicy
    labels: Labels
    fields: dict[str, gr.components.Component] = field(default_factory=dict)

    def build(self) -> None:
        """The (hidden) panel; call where it should appear, before :meth:`button`."""
        lang = self.labels.lang
        gr.HTML(PICKER_STYLE, padding=False, container=False)
        with gr.Column(
            visible=False, elem_id=f"{self.trainer}-picker-{self.key}", elem_classes=["sd-picker"]
        ) as self.panel:
            self.title = gr.Markdown("")
            self.target = gr.State(None)
            self.explorers = [
                gr.FileExplorer(
                    file_count="single",
                    root_dir=str(root),
                    label=str(root),
                    height=260,
                    elem_id=f"{self.trainer}-picker-{self.key}-{i}",
                )
                for i, root in enumerate(picker_roots(self.policy))
            ]
            with gr.Row():
                self.use = self.labels.value(
                    gr.Button(
                        ui("gui.picker.use", lang),
                        variant="primary",
                        elem_id=f"{self.trainer}-picker-{self.key}-use",
                    ),
                    "gui.picker.use",
                )
                self.cancel = self.labels.value(gr.Button(ui("gui.picker.cancel", lang)), "gui.picker.cancel")
            self.message = gr.Markdown("", elem_id=f"{self.trainer}-picker-{self.key}-message")

    def button(self, name: str, component) -> gr.Button:
        """The browse button of the field ``name`` (call beside the field)."""
        lang = self.labels.lang
        self.fields[name] = component
        button = self.labels.value(
            gr.Button(
                ui("gui.picker.browse", lang),
                size="sm",
                scale=0,
                min_width=80,
                elem_id=f"{self.trainer}-{name}-browse",
                elem_classes=["sd-browse"],
            ),
            "gui.picker.browse",
        )

        def open_for(lang_now: str = lang) -> list:
            title = ui("gui.picker.title", lang_now, label=option_label(name, lang_now), name=name)
            return [gr.update(visible=True), title, name, ""]

        bind(
            button.click,
            open_for,
            None,
            [self.panel, self.title, self.target, self.message],
            scroll_to_output=True,
        )
        return button

    def wire(self) -> None:
        """Register Use and Cancel (after every field's :meth:`button`)."""
        names = list(self.fields)
        outputs = [self.message, self.panel, *self.fields.values()]

        def use(target: str | None, *chosen) -> list:
            if target not in self.fields:
                raise UserError("press a browse button beside a path field first.")
            picked = next((c for c in chosen if c), None)
            value = picked_path(picked, SCHEMA[target].kind, self.policy)
            return ["", gr.update(visible=False), *[value if n == target else gr.skip() for n in names]]

        bind(self.use.click, use, [self.target, *self.explorers], outputs)
        bind(self.cancel.click, lambda: ["", gr.update(visible=False)], None, [self.message, self.panel])
