"""What keeps the GUI from being driven by a web page or made to run code (no gradio here, tested directly):
the ``Host`` check against DNS rebinding, the refusal to serve other machines without a login, unsafe
switches refused from forms, printed commands shell-quoted, and paths kept to ``--allowed_paths``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from library.errors import UserError

#: names under which this machine's loopback interface is always reachable.
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
#: bind addresses that mean "every interface".
WILDCARD_ADDRESSES = frozenset({"0.0.0.0", "::", ""})

#: switches that let a tool run code from a file: never taken from a form (the CLI offers them).
UNSAFE_FLAGS = ("--allow_unsafe_pickle",)
#: shortest prefix argparse would still expand to an unsafe flag (``--allow`` -> ``--allow_unsafe_pickle``).
_MIN_ABBREVIATION = 3


def is_loopback(listen: str) -> bool:
    """True when the bind address only serves this machine."""
    name = listen.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def shell_command(argv: Sequence[str]) -> str:
    """``argv`` as one line a POSIX shell runs as exactly these arguments (no injected commands)."""
    return shlex.join(str(a) for a in argv)


# --- Host header (DNS rebinding) ------------------------------------------------------------------------


def host_name(header: str) -> str:
    """The host name of a ``Host`` header, lowercased, without port, brackets or a trailing dot."""
    header = header.strip().lower()
    if header.startswith("["):  # [::1]:7860
        return header[1:].split("]", 1)[0]
    if header.count(":") == 1:
        header = header.split(":", 1)[0]
    return header.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@dataclass
class HostPolicy:
    """The host names the GUI answers to. ``any_ip``: also any IP address literal (a wildcard bind, reached
    by the machine's addresses; a page cannot rebind an IP literal, only a name)."""

    names: set[str] = field(default_factory=lambda: set(LOOPBACK_NAMES))
    any_ip: bool = False

    @classmethod
    def for_listen(cls, listen: str, extra: Iterable[str] = ()) -> HostPolicy:
        names = set(LOOPBACK_NAMES) | {host_name(h) for h in extra if h.strip()}
        wildcard = listen.strip() in WILDCARD_ADDRESSES
        if wildcard:
            names.add(socket.gethostname().lower())
        else:
            names.add(host_name(listen))
        return cls(names, any_ip=wildcard)

    def allows(self, header: str | None) -> bool:
        if not header:
            return False
        name = host_name(header)
        return name in self.names or (self.any_ip and _is_ip(name))


class HostCheckMiddleware:
    """ASGI middleware: a request whose ``Host`` is not one the GUI serves gets 403 (DNS rebinding: a page
    whose name re-resolves to this machine must not reach the GUI's endpoints)."""

    def __init__(self, app, policy: HostPolicy):
        self.app = app
        self.policy = policy

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] in ("http", "websocket"):
            host = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"host"), None)
            if not self.policy.allows(host):
                await self._refuse(scope, send, host)
                return
        await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(scope, send, host) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = (
            f"403: host {host!r} is not an address this GUI serves; start it with --allowed_hosts NAME to "
            "allow a name.\n"
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 403,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", b"%d" % len(body)),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


# --- exposure -------------------------------------------------------------------------------------------


def exposed(listen: str, share: bool) -> bool:
    """True when other machines can reach the GUI."""
    return share or not is_loopback(listen)


def start_refusal(listen: str, share: bool, auth: bool, insecure_no_auth: bool) -> str | None:
    """Why the GUI must not start (one paragraph), or None: reachable from other machines without a login."""
    if auth or insecure_no_auth or not exposed(listen, share):
        return None
    where = "a public share link (--share)" if share else f"--listen {listen}, which other machines can reach"
    return (
        f"error: the GUI would be served on {where} without a login: anyone who can reach it could start "
        "runs, run tools and read or write files as you. Give --username and --password, or serve it on "
        "127.0.0.1 only (the default) and reach it through an SSH tunnel; --insecure_no_auth starts it "
        "without a login anyway."
    )


# --- form values ----------------------------------------------------------------------------------------


def unsafe_flag(token: str) -> str | None:
    """The unsafe flag that ``token`` would set (exact, ``--flag=value`` or an argparse abbreviation)."""
    name = token.strip().split("=", 1)[0].lower()
    if not name.startswith("--") or len(name) < 2 + _MIN_ABBREVIATION:
        return None
    return next((flag for flag in UNSAFE_FLAGS if flag.startswith(name)), None)


def check_safe_args(args: Iterable[str]) -> None:
    """Raise ``UserError`` when an argument from a form would switch on code execution."""
    for token in args:
        flag = unsafe_flag(str(token))
        if flag:
            raise UserError(
                f"{token.strip()!r} is refused from the GUI: {flag} lets a file run code on this machine. "
                "Convert or load such a file with the command-line tool yourself, and only if you trust it."
            )


# --- paths ----------------------------------------------------------------------------------------------


def _resolved(path: str | os.PathLike) -> Path:
    return Path(os.path.expanduser(str(path))).resolve(strict=False)


def check_path_allowed(path: str | os.PathLike, allowed: Sequence[str | os.PathLike] | None) -> None:
    """Raise ``UserError`` unless ``path`` (symlinks and ``..`` resolved, relative to the working folder) is
    inside one of the ``allowed`` folders. ``allowed`` None: no restriction (the GUI serves only this
    machine)."""
    if allowed is None or str(path).strip() == "":
        return
    target = _resolved(str(path).strip())
    roots = [_resolved(a) for a in allowed]
    if any(target == root or target.is_relative_to(root) for root in roots):
        return
    raise UserError(
        f"{str(path).strip()!r} is outside the folders this GUI may use ({', '.join(map(str, roots))}); "
        "start the GUI with --allowed_paths FOLDER to add one."
    )


def looks_like_path(token: str) -> bool:
    """A free-form argument that names a file (a separator, ``~`` or ``..``): checked like a path field."""
    value = free_form_value(token)
    if value.startswith("-"):
        return False
    return "/" in value or "\\" in value or value.startswith("~") or value in (".", "..")


def free_form_value(token: str) -> str:
    """The value part of a free-form argument (``--flag=value`` -> ``value``)."""
    return token.split("=", 1)[1] if token.startswith("-") and "=" in token else token


#: keys of a dataset config (sd-scripts' ``--dataset_config``) that name files or folders.
DATASET_PATH_KEYS = frozenset({"image_dir", "conditioning_data_dir", "metadata_file"})
#: keys whose file is read in turn (a config naming its dataset config).
NESTED_CONFIG_KEYS = frozenset({"dataset_config", "config_file"})
#: how deep configs may name other configs before the check gives up (a loop, or a crafted chain).
_MAX_CONFIG_DEPTH = 4


def _config_path_keys() -> frozenset[str]:
    """Keys of a training or dataset config whose values are paths (the schema's path options)."""
    from library.config.options import SCHEMA

    return DATASET_PATH_KEYS | {o.name for o in SCHEMA.options if o.kind in ("path", "dir", "file")}


def _read_config_data(path: Path):
    """The parsed TOML/JSON of ``path``, or None when it is not readable as one (the trainer's own
    validation reports that)."""
    import json

    import tomllib

    try:
        text = path.read_text(encoding="utf-8-sig")
        return json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None


def config_path_values(data, path_keys: frozenset[str]) -> list[tuple[str, str]]:
    """(key, path) for every string (or list of strings) under a path key anywhere in ``data`` (nested
    tables such as ``[[datasets.subsets]]`` included)."""
    found: list[tuple[str, str]] = []
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                values = value if isinstance(value, list) else [value]
                if key in path_keys:
                    found += [(key, v) for v in values if isinstance(v, str) and v.strip()]
                stack += [v for v in values if isinstance(v, dict | list)]
        elif isinstance(item, list):
            stack += [v for v in item if isinstance(v, dict | list)]
    return found


#: options whose value may name a model on the hub (``owner/name``) or built in (``builtin:tiny``).
MODEL_SOURCE_OPTIONS = frozenset({"pretrained_model_name_or_path", "vae"})
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def is_remote_model(value: str) -> bool:
    """True for a built-in model name or a hub id that is not also a local path (no local file is read)."""
    value = value.strip()
    if value.startswith("builtin:"):
        return True
    return bool(_HUB_ID.fullmatch(value)) and ".." not in value and not Path(value).exists()


@dataclass(frozen=True)
class GuiPolicy:
    """What the GUI's handlers allow: ``allowed`` the folders path fields may name (None: any, the GUI serves
    only this machine); ``exposed``: other machines can reach it (then the training form's
    ``allow_unsafe_pickle`` is refused too)."""

    allowed: tuple[Path, ...] | None = None
    exposed: bool = False

    @classmethod
    def for_gui(cls, exposed_: bool, allowed_paths: Sequence[str] | None, defaults: Sequence[str | Path]):
        if not exposed_ and not allowed_paths:
            return cls(None, False)
        return cls(tuple(_resolved(p) for p in (allowed_paths or defaults)), exposed_)

    def check(self, *paths: str | os.PathLike | None) -> None:
        """Raise ``UserError`` for the first path outside the allowed folders (empty ones are skipped)."""
        for path in paths:
            if path not in (None, ""):
                check_path_allowed(path, self.allowed)

    def check_args(self, args: Iterable[str]) -> None:
        """Free-form arguments: no unsafe switch; those that look like paths inside the allowed folders."""
        args = [str(a) for a in args]
        check_safe_args(args)
        if self.allowed is None:
            return
        for token in args:
            if looks_like_path(token):
                check_path_allowed(free_form_value(token), self.allowed)

    def check_config_file(self, path: str | os.PathLike, depth: int = 0) -> None:
        """A training or dataset config named in a form: every path it holds (``image_dir`` of each subset,
        ``train_data_dir``, ``output_dir``, a nested ``dataset_config`` and its paths ...) inside the
        allowed folders. A file that is not valid TOML/JSON is left to the trainer's validation."""
        if self.allowed is None:
            return
        target = Path(os.path.expanduser(str(path).strip()))
        check_path_allowed(target, self.allowed)
        data = _read_config_data(target) if target.is_file() else None
        if data is None:
            return
        for key, value in config_path_values(data, _config_path_keys()):
            try:
                check_path_allowed(value, self.allowed)
            except UserError as exc:
                raise UserError(f"{key} in '{target}': {exc}") from None
            if key in NESTED_CONFIG_KEYS:
                if depth >= _MAX_CONFIG_DEPTH:
                    raise UserError(
                        f"'{target}' names configs inside configs more than {_MAX_CONFIG_DEPTH} levels deep "
                        f"({key} = {value!r}); name the dataset config directly."
                    )
                self.check_config_file(value, depth + 1)

    def check_values(self, values: dict, path_names: Iterable[str]) -> None:
        """A training form's option values: its path options inside the allowed folders; no
        ``allow_unsafe_pickle`` from a client on another machine."""
        if self.exposed and values.get("allow_unsafe_pickle"):
            raise UserError(
                "allow_unsafe_pickle is refused from a GUI that other machines can reach: such a file can "
                "run code on this machine. Run the trainer from the command line for a .ckpt you trust."
            )
        for name in path_names:
            value = values.get(name)
            for item in value if isinstance(value, list | tuple) else [value]:
                if isinstance(item, str) and not (name in MODEL_SOURCE_OPTIONS and is_remote_model(item)):
                    self.check(item.strip())
        dataset_config = values.get("dataset_config")
        if isinstance(dataset_config, str) and dataset_config.strip():
            self.check_config_file(dataset_config)
