"""The page: training tabs (LoRA, DreamBooth), Queue, Captioning, Dataset and Tools, one job runner and one
queue per GUI, a timer that refreshes the run panels, and the launcher (``gui.py``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import gradio as gr
from starlette.middleware import Middleware

from library.config.i18n import DEFAULT_LANG, normalize_lang, translate
from library.gui import configs
from library.gui.form_language import request_lang, ui
from library.gui.guard import bind
from library.gui.job_api import JobService, api_mount
from library.gui.jobs import JobRunner
from library.gui.run_queue import ROW_HEADERS, TrainingQueue, job_row, start_worker
from library.gui.security import GuiPolicy, HostCheckMiddleware, HostPolicy, exposed, start_refusal
from library.gui.tools_tabs import captioning_tab, dataset_tab, tools_tab
from library.gui.training_tab import panel_values, training_tab

logger = logging.getLogger(__name__)

LOCALHOST = "127.0.0.1"

#: how long the launch check waits for the page to answer before gui.py gives up
LAUNCH_CHECK_S = 120.0


def patient_url_ok(url: str, wait_s: float = LAUNCH_CHECK_S, request_timeout: float = 10.0) -> bool:
    """gradio's launch check (``gradio.networking.url_ok``), patient: gradio's own gives up after one HEAD
    that takes over 3 s, and ``launch()`` then raises, so gui.py ended at start on a busy machine (a training
    or a test suite running beside it) even though the page was being served. This one asks again until
    ``wait_s`` has passed, with a longer timeout per request."""
    import httpx

    deadline = time.monotonic() + wait_s
    while True:
        try:
            status = httpx.head(url, timeout=request_timeout, verify=False).status_code
            if status in (200, 401, 301, 302, 303, 307, 308):  # the answers gradio's own check accepts
                return True
        except (httpx.TransportError, OSError):
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)


@dataclass
class GuiContext:
    """What one GUI owns: its state folder (job + queue files), the runner, the queue, the launcher and the
    folders its path fields may name."""

    state_dir: Path
    launcher: str = "python"
    paths: GuiPolicy = field(default_factory=GuiPolicy)
    #: the page's language (``--lang``); None: English, re-worded on load in the browser's language
    lang: str | None = None

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir)
        self.runner = JobRunner(self.state_dir / "job")
        self.queue = TrainingQueue(
            self.state_dir / "queue",
            self.runner,
            lambda trainer, path: configs.config_command(trainer, path, self.launcher),
        )
        #: the job API's functions (library/gui/job_api.py); the Queue tab calls them too
        self.jobs = JobService(self.queue, self.paths)


def queue_rows(ctx: GuiContext) -> list[list]:
    """The Queue table: the job API's list (GET /api/v1/jobs), one row per job."""
    return [job_row(job) for job in ctx.jobs.jobs()]


def queue_stop(ctx: GuiContext, number: str) -> str:
    """The Stop button: POST /api/v1/jobs/{n}/stop's function (a ``UserError`` is shown by ``bind``)."""
    return ctx.jobs.stop(number)["message"]


def queue_submit(ctx: GuiContext, file, trainer: str, label: str) -> str:
    """The upload's Add button: POST /api/v1/jobs's function, on the uploaded TOML."""
    if not file:
        return "❌ choose a TOML config file to add first."
    try:
        text = Path(file).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        return f"❌ {Path(file).name} is not UTF-8 text ({exc}); save it as UTF-8."
    return f"added to the queue as entry {ctx.jobs.submit(trainer, text, label)['number']}"


def queue_tab(ctx: GuiContext) -> gr.Dataframe:
    lang = ctx.lang or DEFAULT_LANG
    gr.Markdown(f"{ui('queue.intro', lang, folder=ctx.queue.root)} {ui('gui.queue.http', lang)}")
    table = gr.Dataframe(
        headers=ROW_HEADERS,
        interactive=False,
        elem_id="queue-table",
        value=queue_rows(ctx),
    )
    with gr.Row():
        number = gr.Textbox(label=translate("Entry #", lang), scale=1, elem_id="queue-number")
        cancel = gr.Button(translate("Stop or remove entry", lang), scale=1, elem_id="queue-cancel")
    with gr.Accordion(translate("Add a TOML config file", lang), open=False):
        with gr.Row():
            upload = gr.File(label=translate("Config (.toml)", lang), file_types=[".toml"], type="filepath", scale=2)
            trainer = gr.Dropdown(choices=sorted(configs.SCRIPTS), value="network", label=translate("Trainer", lang), scale=1)
            label = gr.Textbox(label=translate("Label (optional)", lang), scale=1)
            add = gr.Button(translate("Add to queue", lang), scale=1, elem_id="queue-add")
    message = gr.Markdown("", elem_id="queue-message")
    bind(
        cancel.click,
        lambda n: (queue_stop(ctx, n), queue_rows(ctx)),
        [number],
        [message, table],
        api_name="queue_cancel",
    )
    bind(
        add.click,
        lambda f, t, lbl: (queue_submit(ctx, f, t, lbl), queue_rows(ctx)),
        [upload, trainer, label],
        [message, table],
        api_name="queue_add",
    )
    return table


def build_app(ctx: GuiContext) -> gr.Blocks:
    """The whole page."""
    with gr.Blocks(title="SD LoRA / DreamBooth trainer", analytics_enabled=False) as app:
        lang = ctx.lang or DEFAULT_LANG
        gr.Markdown(f"## {ui('app.heading', lang)}")
        panels = []
        with gr.Tabs():
            for trainer, key in (("network", "tab.lora"), ("db", "tab.dreambooth")):
                with gr.Tab(ui(key, lang), id=trainer, elem_id=f"tab-{trainer}"):
                    panels.append(
                        training_tab(trainer, ctx.runner, ctx.queue, ctx.launcher, ctx.paths, ctx.lang)
                    )
            with gr.Tab(ui("tab.queue", lang), id="queue", elem_id="tab-queue"):
                table = queue_tab(ctx)
            with gr.Tab(ui("tab.captioning", lang), id="captioning", elem_id="tab-captioning"):
                captioning_tab(ctx.paths, lang)
            with gr.Tab(ui("tab.dataset", lang), id="dataset", elem_id="tab-dataset"):
                dataset_tab(ctx.paths, lang)
            with gr.Tab(ui("tab.tools", lang), id="tools", elem_id="tab-tools"):
                tools_tab(ctx.paths, lang)
        timer = gr.Timer(1.0)
        outputs = [c for p in panels for c in p.outputs()] + [table]

        def refresh():
            values = panel_values(ctx.runner.view())
            return values * len(panels) + [queue_rows(ctx)]

        bind(timer.tick, refresh, None, outputs, show_progress="hidden")
        bind(app.load, refresh, None, outputs, show_progress="hidden")
        if ctx.lang is None:
            follow_browser_language(app, panels)
    return app


def follow_browser_language(app: gr.Blocks, panels: list) -> None:
    """Without ``--lang`` the page is built in English; a browser that asks for another catalogue language
    (``Accept-Language``) gets its labels re-worded on load. The language goes through a state whose change
    event does the re-wording, so an English browser costs nothing (no change, no event)."""
    page_lang = gr.State(DEFAULT_LANG)
    for panel in panels:
        panel.relabel(page_lang)
    bind(app.load, request_lang, None, [page_lang], show_progress="hidden")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="The training GUI (Gradio).")
    p.add_argument("--listen", default=LOCALHOST, help="address to bind (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true", help="a public gradio.live link (off by default)")
    p.add_argument("--username", help="login name (with --password)")
    p.add_argument("--password", help="login password (with --username)")
    p.add_argument(
        "--insecure_no_auth",
        action="store_true",
        help="serve other machines (--listen, --share) without --username/--password (anyone may use it)",
    )
    p.add_argument(
        "--allowed_hosts",
        nargs="*",
        default=[],
        metavar="NAME",
        help="more host names the page may be reached by (e.g. a proxy's); other Host headers get 403",
    )
    p.add_argument(
        "--allowed_paths",
        nargs="*",
        default=None,
        metavar="FOLDER",
        help="folders the path fields and tools may use (with --listen/--share; default: the working "
        "folder and --state_dir)",
    )
    p.add_argument("--inbrowser", action="store_true", help="open the page in the browser")
    p.add_argument(
        "--lang",
        type=normalize_lang,
        default=None,
        metavar="en|zh-CN",
        help="the training forms' language (default: the browser's, from its Accept-Language)",
    )
    p.add_argument("--state_dir", default="output/gui", help="where the job and queue files live")
    p.add_argument(
        "--launcher",
        choices=sorted(configs.LAUNCHERS),
        default="python",
        help="how trainers start: python (this interpreter) or accelerate launch",
    )
    return p


def exposure_warning(listen: str, share: bool, auth: bool) -> str | None:
    """The warning printed when the GUI is reachable from other machines without a login."""
    if auth or not exposed(listen, share):
        return None
    where = "a public share link" if share else f"{listen} (other machines can reach it)"
    return (
        f"WARNING: the GUI is served on {where} without --username/--password: anyone who can reach it "
        f"can start runs and read or write files. Set --username and --password."
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if bool(args.username) != bool(args.password):
        print("error: give both --username and --password, or neither.")
        return 2
    auth = (args.username, args.password) if args.username else None
    refusal = start_refusal(args.listen, args.share, auth is not None, args.insecure_no_auth)
    if refusal:
        print(refusal, file=sys.stderr)
        return 2
    warning = exposure_warning(args.listen, args.share, auth is not None)
    if warning:
        print(warning)
    paths = GuiPolicy.for_gui(
        exposed(args.listen, args.share), args.allowed_paths, [os.getcwd(), args.state_dir]
    )
    ctx = GuiContext(Path(args.state_dir), args.launcher, paths, args.lang)
    start_worker(ctx.queue)
    app = build_app(ctx)
    app.queue(default_concurrency_limit=4)
    hosts = HostPolicy.for_listen(args.listen, args.allowed_hosts)
    from gradio import networking

    networking.url_ok = patient_url_ok  # launch() looks it up on the module at call time
    app.launch(
        server_name=args.listen,
        server_port=args.port,
        share=args.share,
        auth=auth,
        inbrowser=args.inbrowser,
        footer_links=["settings"],
        app_kwargs={
            "middleware": [Middleware(HostCheckMiddleware, policy=hosts)],
            "routes": [api_mount(ctx.jobs, auth)],  # the job API, behind the same login
        },
        prevent_thread_lock=True,
    )
    if app.share_url:  # the share tunnel forwards requests under its own name
        hosts.names.add(urlparse(app.share_url).hostname or "")
    app.block_thread()
    return 0
