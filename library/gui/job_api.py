"""The headless job API: HTTP endpoints under ``/api/v1/`` on the GUI's own server, so a remote GPU box can
be driven with ``curl`` (submit a TOML, list and follow runs, stop one, download what it wrote).

``JobService`` holds what the endpoints do, as plain Python over the GUI's ``TrainingQueue``; the Queue tab
calls the same methods (its table is ``JobService.jobs``, its Stop button ``JobService.stop``, its upload
``JobService.submit``). ``api_mount`` puts the endpoints on the GUI's FastAPI app, behind HTTP Basic auth
with the GUI's ``--username``/``--password`` (none set: the GUI only serves this machine, or was started
with ``--insecure_no_auth``; ``security.start_refusal`` decides that at start). See ``docs/job_api.md``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import secrets
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException
from starlette.routing import Mount

from library.config.load import config_from_values, effective_toml, read_toml
from library.config.options import SCHEMA
from library.errors import ConfigError, UserError
from library.gui import configs
from library.gui.jobs import RUNNING, read_events, read_new_events, tail
from library.gui.run_queue import QUEUED, TrainingQueue
from library.gui.security import GuiPolicy

logger = logging.getLogger(__name__)

#: where the endpoints live on the GUI's server
PREFIX = "/api/v1"
#: the largest config a client may submit (a TOML of every option is a few KiB)
MAX_CONFIG_BYTES = 1024 * 1024
#: the most files ``outputs`` lists (an output_dir that is a big folder)
MAX_LISTED_FILES = 2000
#: longest label kept
MAX_LABEL_CHARS = 200


class ApiError(UserError):
    """A request the API refuses: ``status`` is the HTTP status, the message one paragraph with the fix."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _path_options(trainer: str) -> list[str]:
    return [o.name for o in SCHEMA.for_trainer(trainer) if o.kind in ("path", "dir", "file")]


def check_config_text(trainer: str, text: str, policy: GuiPolicy):
    """A submitted TOML config as a validated ``Config``: the schema check the GUI's Validate button runs
    (unknown keys, values, rules) and the GUI's path policy (``--allowed_paths``). Raises ``UserError``
    naming the key."""
    if trainer not in configs.SCRIPTS:
        raise ApiError(
            400, f"trainer {trainer!r} is unknown; use one of {', '.join(sorted(configs.SCRIPTS))}."
        )
    with tempfile.TemporaryDirectory(prefix="sdtrain-submit-") as folder:
        path = Path(folder) / "submitted.toml"
        path.write_text(text, encoding="utf-8")
        try:
            values = read_toml(path, trainer)
        except ConfigError as exc:  # name the request, not the temporary file
            raise ConfigError(str(exc).replace(f"config_file {str(path)!r}", "the submitted TOML")) from None
    values.pop("config_file", None)
    values.pop("output_config", None)
    policy.check_values(values, _path_options(trainer))
    return config_from_values(values, trainer)


def _clean_label(label: str) -> str:
    return "".join(c for c in label if c.isprintable()).strip()[:MAX_LABEL_CHARS]


class JobService:
    """What the endpoints (and the Queue tab) do with the queue; numbers are the queue's entry numbers."""

    def __init__(self, queue: TrainingQueue, policy: GuiPolicy | None = None):
        self.queue = queue
        self.policy = policy or GuiPolicy()

    def entry(self, number: str | int) -> tuple[str, dict[str, Any]]:
        """(queue key, entry) of job ``number``; 400 for a number that is not one, 404 for no such job."""
        key = str(number).strip()
        if not (key.isascii() and key.isdigit()):
            raise ApiError(
                400,
                f"job number {key!r} is not a whole number; GET {PREFIX}/jobs lists the jobs and numbers.",
            )
        key = str(int(key))
        entry = self.queue.entries().get(key)
        if entry is None:
            raise ApiError(404, f"there is no job {key}; GET {PREFIX}/jobs lists the jobs there are.")
        return key, entry

    def submit(self, trainer: str, toml_text: str, label: str = "") -> dict[str, Any]:
        """Validate a TOML config and queue it; returns the new job. Raises ``UserError`` (400)."""
        config = check_config_text(trainer.strip(), toml_text, self.policy)
        label = _clean_label(label) or (config.output_name or "")
        number = self.queue.add(trainer.strip(), effective_toml(config), label=label)
        logger.info("job %s queued (%s, %s)", number, trainer, label)
        return self.queue.job(number)

    def jobs(self) -> list[dict[str, Any]]:
        """Every job (queue order), as ``TrainingQueue.job`` gives it."""
        return self.queue.jobs()

    def job(self, number: str | int, log_lines: int = 40) -> dict[str, Any]:
        """One job with the newest lines of its log (``log``, "" before it starts)."""
        key, entry = self.entry(number)
        job = self.queue.job(key)
        job["log"] = tail(entry["log"], log_lines) if entry.get("log") else ""
        return job

    def stop(self, number: str | int) -> dict[str, Any]:
        """Stop a running job (the trainer finishes its step and saves) or drop a queued one; 409 for a job
        that has ended. Returns {"message", "job"} (job None once dropped)."""
        key, entry = self.entry(number)
        if entry["status"] not in (QUEUED, RUNNING):
            raise ApiError(409, f"job {key} has already ended ({entry['status']}); there is nothing to stop.")
        message = self.queue.cancel(key)
        return {"message": message, "job": self.queue.job(key)}

    def events(self, number: str | int, since: int = 0) -> dict[str, Any]:
        """The progress events after the first ``since`` (JSON polling): {"events", "next" (the ``since`` of
        the next poll), "state", "ended"}."""
        if since < 0:
            raise ApiError(400, f"since={since} is negative; give the 'next' of the previous answer (or 0).")
        key, entry = self.entry(number)
        events = read_events(entry["progress"]) if entry.get("progress") else []
        return {
            "number": int(key),
            "state": entry["status"],
            "ended": entry["status"] not in (QUEUED, RUNNING),
            "events": events[since:],
            "next": len(events),
        }

    def output_dir(self, number: str | int) -> Path:
        """The job's ``output_dir`` (relative ones from the GUI's working folder, where runs start)."""
        key, entry = self.entry(number)
        try:
            folder = read_toml(entry["config"], entry["trainer"]).get("output_dir")
        except UserError as exc:
            raise ApiError(404, f"job {key}'s config cannot be read: {exc}") from None
        if not folder:
            raise ApiError(404, f"job {key}'s config names no output_dir.")
        return Path(folder).expanduser().absolute()

    def outputs(self, number: str | int) -> dict[str, Any]:
        """The files in the job's output_dir (names relative to it, with "/"; size in bytes, mtime)."""
        root = self.output_dir(number)
        resolved = root.resolve()
        files = []
        for path in sorted(root.rglob("*")) if root.is_dir() else []:
            if not path.is_file() or not path.resolve().is_relative_to(resolved):
                continue
            stat = path.stat()
            name = path.relative_to(root).as_posix()
            files.append({"name": name, "size": stat.st_size, "modified": stat.st_mtime})
            if len(files) >= MAX_LISTED_FILES:
                break
        return {"number": int(self.entry(number)[0]), "output_dir": str(root), "files": files}

    def output_file(self, number: str | int, name: str) -> Path:
        """The file ``name`` inside the job's output_dir; 400 for a name that leads outside it (``..``, an
        absolute path, a link out), 404 when there is no such file."""
        root = self.output_dir(number)
        target = (root / name).resolve()
        if Path(name).is_absolute() or not target.is_relative_to(root.resolve()):
            raise ApiError(
                400,
                f"{name!r} is outside job {number}'s output_dir; name a file as "
                f"GET {PREFIX}/jobs/{number}/outputs lists it.",
            )
        if not target.is_file():
            raise ApiError(404, f"job {number}'s output_dir {str(root)!r} has no file {name!r}.")
        return target


# --- HTTP ----------------------------------------------------------------------------------------------


def basic_auth(auth: tuple[str, str] | None):
    """A dependency that lets a request through only with HTTP Basic ``auth`` (user, password), compared in
    constant time; ``auth`` None: every request (the start policy only allows that on this machine)."""
    want_user, want_password = (auth[0].encode(), auth[1].encode()) if auth else (b"", b"")

    def check(request: Request) -> None:
        if auth is None:
            return
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        user, password = b"", None
        if scheme.lower() == "basic":
            try:
                user, sep, password = base64.b64decode(value.strip(), validate=True).partition(b":")
            except (binascii.Error, ValueError):
                sep = b""
            password = password if sep else None
        ok = secrets.compare_digest(user, want_user) & secrets.compare_digest(password or b"", want_password)
        if password is None or not ok:
            raise ApiError(
                401,
                "this API needs the GUI's login: send it as HTTP Basic auth (curl -u USER:PASSWORD), the "
                "--username and --password the GUI was started with.",
            )

    return check


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _install_errors(api: FastAPI) -> None:
    async def api_error(_request, exc: ApiError):
        headers = {"WWW-Authenticate": 'Basic realm="sdtrain"'} if exc.status == 401 else None
        return _error(exc.status, str(exc), headers)

    async def user_error(_request, exc: UserError):
        return _error(400, str(exc))

    async def http_error(_request, exc: HTTPException):
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    async def invalid(_request, exc: RequestValidationError):
        where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return _error(400, f"the request is not valid ({where}).")

    api.add_exception_handler(ApiError, api_error)
    api.add_exception_handler(UserError, user_error)
    api.add_exception_handler(HTTPException, http_error)
    api.add_exception_handler(RequestValidationError, invalid)


async def _submission(request: Request) -> tuple[str, str, str]:
    """(trainer, TOML text, label) of a POST: a JSON body {"toml", "trainer", "label"}, or the TOML itself
    as the body with ``?trainer=`` and ``&label=``."""
    body = await request.body()
    if len(body) > MAX_CONFIG_BYTES:
        raise ApiError(413, f"the config is {len(body)} bytes; the API takes at most {MAX_CONFIG_BYTES}.")
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"the body is not UTF-8 text ({exc}); send the TOML file as UTF-8.") from None
    query = request.query_params
    if request.headers.get("content-type", "").split(";")[0].strip() == "application/json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ApiError(400, f"the JSON body is not valid JSON: {exc}.") from None
        if not isinstance(data, dict) or not isinstance(data.get("toml"), str):
            raise ApiError(
                400, 'a JSON body needs {"toml": "<config text>", "trainer": "network", "label": ""}.'
            )
        values = [data.get("trainer", query.get("trainer", "")), data["toml"], data.get("label", "")]
        if not all(isinstance(v, str) for v in values):
            raise ApiError(400, "trainer, toml and label in the JSON body must be strings.")
        return values[0], values[1], values[2]
    return query.get("trainer", ""), text, query.get("label", "")


def _require_trainer(trainer: str) -> str:
    if not trainer.strip():
        raise ApiError(
            400,
            f"say which trainer runs the config: ?trainer=network (LoRA) or ?trainer=db (DreamBooth); one of "
            f"{', '.join(sorted(configs.SCRIPTS))}.",
        )
    return trainer


def _sse(data: Any, event: str | None = None, event_id: int | None = None) -> str:
    head = (f"event: {event}\n" if event else "") + (f"id: {event_id}\n" if event_id is not None else "")
    return f"{head}data: {json.dumps(data)}\n\n"


async def event_stream(
    service: JobService, number: str, skip: int = 0, poll_s: float = 0.5, keepalive_s: float = 15.0
) -> AsyncIterator[str]:
    """Server-Sent Events of a job: each progress event (``id`` its 1-based number) as the trainer writes
    it, then ``event: end`` with the job once it has ended (or been dropped from the queue). A queued job
    is waited for; a comment line every ``keepalive_s`` keeps proxies from closing the stream."""
    offset, count, quiet = 0, 0, 0.0
    while True:
        entry = service.queue.entries().get(number)
        if entry is None:
            yield _sse({"number": int(number), "state": "removed"}, event="end")
            return
        ended = entry["status"] not in (QUEUED, RUNNING)
        sent = False
        if entry.get("progress"):
            events, offset = read_new_events(entry["progress"], offset)
            for ev in events:
                count += 1
                if count > skip:
                    sent = True
                    yield _sse(ev, event_id=count)
        if ended:
            yield _sse(service.queue.job(number), event="end")
            return
        quiet = 0.0 if sent else quiet + poll_s
        if quiet >= keepalive_s:
            quiet = 0.0
            yield ": keep-alive\n\n"
        await asyncio.sleep(poll_s)


def build_api(service: JobService, auth: tuple[str, str] | None) -> FastAPI:
    """The endpoints as their own FastAPI app (mounted at ``PREFIX``), every one behind ``basic_auth``."""
    api = FastAPI(
        title="sdtrain job API", docs_url=None, redoc_url=None, dependencies=[Depends(basic_auth(auth))]
    )
    _install_errors(api)

    @api.post("/jobs", status_code=201)
    async def submit(request: Request):
        trainer, text, label = await _submission(request)
        job = await asyncio.to_thread(service.submit, _require_trainer(trainer), text, label)
        return JSONResponse(job, status_code=201, headers={"Location": f"{PREFIX}/jobs/{job['number']}"})

    @api.get("/jobs")
    def jobs():
        return {"jobs": service.jobs()}

    @api.get("/jobs/{number}")
    def job(number: str):
        return service.job(number)

    @api.get("/jobs/{number}/events")
    def events(number: str, request: Request, since: int | None = None):
        if since is not None:
            return service.events(number, since)
        key, _ = service.entry(number)
        last = request.headers.get("last-event-id", "0").strip()
        skip = int(last) if last.isascii() and last.isdigit() else 0
        return StreamingResponse(
            event_stream(service, key, skip),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @api.post("/jobs/{number}/stop")
    def stop(number: str):
        return service.stop(number)

    @api.get("/jobs/{number}/outputs")
    def outputs(number: str):
        return service.outputs(number)

    @api.get("/jobs/{number}/outputs/{name:path}")
    def output(number: str, name: str):
        path = service.output_file(number, name)
        return FileResponse(path, filename=path.name)

    return api


def api_mount(service: JobService, auth: tuple[str, str] | None) -> Mount:
    """The route to give the GUI's app (``launch(app_kwargs={"routes": [api_mount(...)]})``): it is in place
    before the server answers its first request, ahead of gradio's own routes."""
    return Mount(PREFIX, app=build_api(service, auth))
