"""The Dataset tab's caption review: a folder's pictures as a gallery, one picture large with its tags as
chips, tag edits for it or for a selection, Undo and Save (atomic, with backups). The logic is
:mod:`library.tools.dataset.caption_review`; this module only lays it out and keeps one review per browser
session in a ``gr.State``.

Thumbnails and previews are JPEG copies in the system temp folder (keyed by path, size and time), so that
Gradio serves them without the dataset folder being one of its allowed paths.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
from PIL import Image

from library.errors import UserError
from library.gui.guard import bind
from library.gui.security import GuiPolicy
from library.tools.dataset.caption_review import CaptionReview
from library.tools.dataset.tags import join_caption
from library.util.atomic import atomic_path

THUMB_DIR = Path(tempfile.gettempdir()) / "sdtrain-caption-thumbs"
THUMB_SIDE = 256
PREVIEW_SIDE = 1024
ACTIONS = ("add", "remove", "replace")
#: the single-picture buttons: (action of CaptionReview.apply, label)
SINGLE_ACTIONS = (("add", "Add"), ("remove", "Remove"), ("replace", "Replace"), ("left", "◀ Move left"),
                  ("right", "Move right ▶"), ("move", "Move to position"))  # fmt: skip

HELP = (
    "Load a folder, click a picture to edit its tags. Keys: **←/→** previous/next picture (outside text "
    "boxes), **Alt+←/→** anywhere. Chips: type a tag and press Enter to add it, × removes one; pick a tag "
    "below to move it. With a trigger word it stays first in every caption you edit. Edits stay here until "
    "**Save**, which writes only the changed files and copies each old one to `.caption_backups/<time>/` in "
    "the folder."
)

#: Alt+Left/Right anywhere, plain Left/Right outside text fields: click Previous/Next when they are shown
KEYS_JS = """
if (!window.__sdtrainCaptionKeys) {
  window.__sdtrainCaptionKeys = true;
  document.addEventListener('keydown', (e) => {
    if (e.key !== 'ArrowLeft' && e.key !== 'ArrowRight') return;
    const t = e.target;
    const typing = t && (t.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName));
    if ((typing && !e.altKey) || e.ctrlKey || e.metaKey || e.shiftKey) return;
    const button = document.getElementById(e.key === 'ArrowLeft' ? 'caption-prev' : 'caption-next');
    if (!button || button.offsetParent === null) return;
    e.preventDefault();
    button.click();
  });
}
"""


@dataclass
class EditorView:
    """One session's review: the pictures shown (filter), the one open, the names ticked for bulk edits."""

    review: CaptionReview | None = None
    shown: list[int] = field(default_factory=list)
    current: int | None = None
    selected: list[str] = field(default_factory=list)

    def need(self) -> CaptionReview:
        if self.review is None:
            raise UserError("load a folder first: give its path and press Load.")
        return self.review

    def need_current(self) -> int:
        self.need()
        if self.current is None:
            raise UserError("no picture is open: the filter hides them all, or none is picked.")
        return self.current


def cached_picture(image: Path, side: int) -> str:
    """A JPEG of ``image`` at most ``side`` pixels on its long side, in :data:`THUMB_DIR` (made once per
    file version); a grey square for a picture that cannot be read."""
    from library.data.images import load_image

    try:
        stat = image.stat()
        key = f"{image.resolve()}|{stat.st_mtime_ns}|{stat.st_size}|{side}"
    except OSError:
        key = f"missing|{side}"
    out = THUMB_DIR / f"{hashlib.sha1(key.encode()).hexdigest()}.jpg"
    if not out.is_file():
        try:
            picture = load_image(image)
            picture.thumbnail((side, side))
        except (OSError, UserError):
            picture = Image.new("RGB", (side, side), (128, 128, 128))
        with atomic_path(out) as tmp:
            picture.save(tmp, format="JPEG", quality=85)
    return str(out)


def _gallery(view: EditorView) -> list[tuple[str, str]]:
    review = view.review
    items = []
    for i in view.shown:
        c = review.captions[i]
        text = join_caption(c.tags)
        label = f"{'● ' if c.dirty else ''}{c.name}: {text[:90]}{'…' if len(text) > 90 else ''}"
        items.append((cached_picture(c.image, THUMB_SIDE), label))
    return items


def _frequency_rows(review: CaptionReview) -> list[list]:
    stats = review.stats()
    ranked = sorted(stats.frequency.items(), key=lambda kv: (-kv[1], kv[0]))
    return [[tag, n, f"{n / stats.images:.0%}"] for tag, n in ranked]


#: what :func:`views` returns, in order (after the message of each event)
OUTPUTS = ("state", "gallery", "picture", "title", "chips", "owner", "tag", "selection", "frequency", "hints")


def views(view: EditorView) -> list:
    """The :data:`OUTPUTS` after :data:`EditorView` changed (``owner``: the name of the picture the chips
    show)."""
    review = view.review
    if review is None:
        return [
            view,
            [],
            None,
            "",
            gr.Dropdown(choices=[], value=[], multiselect=True),
            "",
            gr.Dropdown(choices=[]),
            gr.CheckboxGroup(choices=[], value=[]),
            [],
            "",
        ]
    names = [review.captions[i].name for i in view.shown]
    view.selected = [n for n in view.selected if n in names]
    folder_tags = list(review.stats().frequency)
    if view.current is None:
        picture, title, tags, owner = (
            None,
            f"no picture matches the filter ({len(review.captions)} loaded)",
            [],
            "",
        )
    else:
        c = review.captions[view.current]
        owner = c.name
        tags = c.tags
        where = view.shown.index(view.current) + 1 if view.current in view.shown else "-"
        state = "unsaved changes" if c.dirty else "no unsaved change"
        title = f"**{where} / {len(view.shown)}** · `{c.name}` · {len(tags)} tags · {state}"
        picture = cached_picture(c.image, PREVIEW_SIDE)
    hints = review.hints()
    dirty = len(review.dirty())
    hint_text = "\n".join(f"- {h}" for h in hints) or "- no tag is in almost every picture"
    summary = (
        f"{len(review.captions)} pictures, {dirty} with unsaved changes, {len(review.undo_stack)} undo steps"
    )
    return [
        view,
        _gallery(view),
        picture,
        title,
        gr.Dropdown(choices=list(dict.fromkeys([*tags, *folder_tags])), value=list(tags), multiselect=True),
        owner,
        gr.Dropdown(choices=list(tags), value=None),
        gr.CheckboxGroup(choices=names, value=view.selected),
        _frequency_rows(review),
        f"**{summary}**\n\n{hint_text}",
    ]


def _open(view: EditorView, position: int) -> None:
    """Open the shown picture at ``position`` (wrapping around)."""
    view.current = view.shown[position % len(view.shown)] if view.shown else None


def _step(view: EditorView, step: int) -> None:
    view.need()
    if not view.shown:
        return
    at = view.shown.index(view.current) if view.current in view.shown else -step
    _open(view, at + step)


def _refilter(view: EditorView, has: str, lacks: str) -> None:
    view.shown = view.need().filtered(has, lacks)
    if view.current not in view.shown:
        _open(view, 0)


def _changed(n: int, what: str) -> str:
    return f"✅ {what}: {n} picture{'s' if n != 1 else ''} changed" if n else f"no change ({what})"


class Handlers:
    """The section's event handlers: each takes the view and the ticked names first and returns a message
    and :func:`views`. ``step``, ``single`` and ``select`` make the handler of one button."""

    def __init__(self, policy: GuiPolicy) -> None:
        self.policy = policy

    def load(self, view, selected, folder, ext, trigger, has, lacks):
        self.policy.check(folder.strip())
        review = CaptionReview.load(folder.strip(), ext.strip() or ".txt", trigger)
        view = EditorView(review)
        _refilter(view, has, lacks)
        missing = sum(1 for c in review.captions if c.disk is None)
        return [f"✅ {len(review.captions)} pictures loaded, {missing} without a caption file", *views(view)]

    @staticmethod
    def refilter(view, selected, has, lacks):
        view.selected = selected or []
        _refilter(view, has, lacks)
        return [f"{len(view.shown)} of {len(view.need().captions)} pictures shown", *views(view)]

    @staticmethod
    def pick(view, selected, evt: gr.SelectData):
        view.selected = selected or []
        view.need()
        _open(view, evt.index)
        return ["", *views(view)]

    @staticmethod
    def step(offset: int):
        def move(view, selected):
            view.selected = selected or []
            _step(view, offset)
            return ["", *views(view)]

        return move

    @staticmethod
    def chips(view, selected, tags, owner):
        # .change also fires after the page itself set the chips (another picture opened, an edit shown):
        # nothing to do then, and chips that belong to a picture no longer open are not applied to this one
        review = view.review
        if review is None or view.current is None or review.captions[view.current].name != owner:
            return [gr.skip()] * (1 + len(OUTPUTS))
        view.selected = selected or []
        n = review.set_tags(view.current, tags or [])
        return [_changed(n, "tags"), *views(view)] if n else [gr.skip()] * (1 + len(OUTPUTS))

    @staticmethod
    def single(action: str):
        def run(view, selected, tag, new, position):
            view.selected = selected or []
            n = view.need().apply([view.need_current()], action, tag or "", new or "", _position(position))
            return [_changed(n, f"{action} '{tag}'"), *views(view)]

        return run

    @staticmethod
    def bulk(view, selected, action, tag, new):
        view.selected = selected or []
        if not view.selected:
            raise UserError("tick the pictures to edit first (or press 'Select all shown').")
        review = view.need()
        n = review.apply(review.indices(view.selected), action, tag or "", new or "")
        return [_changed(n, f"{action} '{tag}' on {len(view.selected)} selected"), *views(view)]

    @staticmethod
    def select(all_shown: bool):
        def run(view, selected):
            review = view.need()
            view.selected = [review.captions[i].name for i in view.shown] if all_shown else []
            return [f"{len(view.selected)} selected", *views(view)]

        return run

    @staticmethod
    def undo(view, selected):
        view.selected = selected or []
        names = view.need().undo()
        return [f"↩ undone: {', '.join(names)}" if names else "nothing to undo", *views(view)]

    @staticmethod
    def save(view, selected):
        view.selected = selected or []
        report = view.need().save()
        if not report.written:
            return ["nothing to save", *views(view)]
        where = f"; old texts in {report.backup_dir}" if report.backup_dir else ""
        return [f"✅ saved {len(report.written)} caption files{where}", *views(view)]


def _position(value) -> int | None:
    """The position box: a 1-based number (as shown to people) -> a 0-based index; empty or 0 -> None (Add: at
    the end)."""
    if value in (None, "") or int(value) < 1:
        return None
    return int(value) - 1


def _browser(c: SimpleNamespace) -> None:
    """Folder, trigger and Load; the filter; the gallery beside the frequency table and the hints."""
    with gr.Row():
        c.folder = gr.Textbox(label="Picture folder", elem_id="caption-folder", scale=4)
        c.ext = gr.Textbox(label="Caption extension", value=".txt", scale=1, elem_id="caption-ext")
        c.trigger = gr.Textbox(label="Trigger word (kept first)", scale=2, elem_id="caption-trigger")
        c.load = gr.Button("Load", elem_id="caption-load", scale=1)
        c.load_message = gr.Markdown(elem_id="caption-load-message")
    with gr.Row():
        c.has = gr.Textbox(label="Filter: has tags", elem_id="caption-has", scale=2)
        c.lacks = gr.Textbox(label="Filter: lacks tags", elem_id="caption-lacks", scale=2)
        c.filter = gr.Button("Filter", elem_id="caption-filter", scale=1)
    with gr.Row():
        with gr.Column(scale=3):
            c.gallery = gr.Gallery(label="Pictures", elem_id="caption-gallery", columns=6, height=420,
                                   allow_preview=False, object_fit="contain")  # fmt: skip
        with gr.Column(scale=2):
            c.hints = gr.Markdown(elem_id="caption-hints")
            c.freq = gr.Dataframe(headers=["tag", "pictures", "share"], elem_id="caption-frequency",
                                  interactive=False, wrap=True, max_height=360)  # fmt: skip


def _editor(c: SimpleNamespace) -> None:
    """The open picture, large, with its tag chips, the single-picture edits, navigation, Undo and Save."""
    with gr.Row():
        with gr.Column(scale=2):
            c.picture = gr.Image(label="Picture", type="filepath", interactive=False, elem_id="caption-image",
                                 height=420)  # fmt: skip
        with gr.Column(scale=3):
            c.title = gr.Markdown(elem_id="caption-title")
            c.chips = gr.Dropdown(label="Tags (in order)", multiselect=True, allow_custom_value=True,
                                  elem_id="caption-tags", choices=[])  # fmt: skip
            c.owner = gr.Textbox(visible=False)
            with gr.Row():
                c.tag = gr.Dropdown(
                    label="Tag", allow_custom_value=True, choices=[], elem_id="caption-tag", scale=2
                )
                c.new = gr.Textbox(label="Replace with", elem_id="caption-new", scale=2)
                c.position = gr.Number(None, label="Position (1 = first; 0: Add at the end)", precision=0, elem_id="caption-position",
                                       scale=1)  # fmt: skip
            with gr.Row():
                c.buttons = {
                    action: gr.Button(label, elem_id=f"caption-{action}", size="sm")
                    for action, label in SINGLE_ACTIONS
                }
            with gr.Row():
                c.prev = gr.Button("◀ Previous", elem_id="caption-prev")
                c.next = gr.Button("Next ▶", elem_id="caption-next")
                c.undo = gr.Button("Undo", elem_id="caption-undo")
                c.save = gr.Button("Save", variant="primary", elem_id="caption-save")
                c.message = gr.Markdown(elem_id="caption-message")


def _bulk(c: SimpleNamespace) -> None:
    """The ticked pictures and the edit applied to all of them."""
    with gr.Accordion("Bulk edit: the ticked pictures", open=True):
        c.selection = gr.CheckboxGroup(label="Pictures", choices=[], elem_id="caption-selection")
        with gr.Row():
            c.select_all = gr.Button("Select all shown", elem_id="caption-select-all", size="sm")
            c.select_none = gr.Button("Select none", elem_id="caption-select-none", size="sm")
            c.action = gr.Radio(list(ACTIONS), value="add", label="Action", elem_id="caption-bulk-action")
            c.bulk_tag = gr.Textbox(label="Tag", elem_id="caption-bulk-tag")
            c.bulk_new = gr.Textbox(label="Replace with", elem_id="caption-bulk-new")
            c.apply = gr.Button("Apply to selection", elem_id="caption-bulk-apply")
            c.bulk_message = gr.Markdown(elem_id="caption-bulk-message")


def _wire(c: SimpleNamespace, h: Handlers) -> None:
    """Every event through :func:`bind`, one at a time (they change the session's review in place)."""
    outs = [c.state, c.gallery, c.picture, c.title, c.chips, c.owner, c.tag, c.selection, c.freq, c.hints]
    base = [c.state, c.selection]
    on = dict(concurrency_id="caption-editor", concurrency_limit=1)
    bind(
        c.load.click,
        h.load,
        [*base, c.folder, c.ext, c.trigger, c.has, c.lacks],
        [c.load_message, *outs],
        **on,
    )
    for event in (c.filter.click, c.has.submit, c.lacks.submit):
        bind(event, h.refilter, [*base, c.has, c.lacks], [c.load_message, *outs], **on)
    bind(c.gallery.select, h.pick, base, [c.message, *outs], **on)
    bind(c.prev.click, h.step(-1), base, [c.message, *outs], **on)
    bind(c.next.click, h.step(1), base, [c.message, *outs], **on)
    # .change, not .input: a chip typed in and confirmed with Enter sends only select and change events
    bind(
        c.chips.change,
        h.chips,
        [*base, c.chips, c.owner],
        [c.message, *outs],
        show_progress="hidden",
        **on,
    )
    for action, button in c.buttons.items():
        bind(button.click, h.single(action), [*base, c.tag, c.new, c.position], [c.message, *outs], **on)
    bind(c.undo.click, h.undo, base, [c.message, *outs], **on)
    bind(c.save.click, h.save, base, [c.message, *outs], **on)
    bind(c.apply.click, h.bulk, [*base, c.action, c.bulk_tag, c.bulk_new], [c.bulk_message, *outs], **on)
    bind(c.select_all.click, h.select(True), base, [c.bulk_message, *outs], **on)
    bind(c.select_none.click, h.select(False), base, [c.bulk_message, *outs], **on)


def caption_editor_section(policy: GuiPolicy | None = None) -> None:
    """The caption review accordion (see the module docstring)."""
    c = SimpleNamespace()
    with gr.Accordion("Caption review (picture by picture)", open=True, elem_id="caption-review"):
        gr.Markdown(HELP, elem_id="caption-help")
        gr.HTML("", js_on_load=KEYS_JS, elem_id="caption-keys")
        c.state = gr.State(EditorView())
        _browser(c)
        _editor(c)
        _bulk(c)
    _wire(c, Handlers(policy or GuiPolicy()))
