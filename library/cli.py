"""The shared entry-point runner: parse and validate, run, turn user errors into one clear message."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from library.errors import UserError

logger = logging.getLogger("sdtrain")


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=getattr(logging, level, logging.INFO), format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr, force=True)
    for noisy in ("httpx", "urllib3", "PIL", "matplotlib", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # bitsandbytes warns about optional CPU kernels on every import; its errors still show.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    # transformers warns that torchvision is missing whenever a pipeline module is imported; we never use it.
    logging.getLogger("transformers").setLevel(logging.ERROR)


def add_log_file(path: str) -> None:
    """``console_log_file``: the run's log lines also go to ``path`` (appended, folders created)."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(target, encoding="utf-8")
    except OSError as exc:
        raise UserError(f"console_log_file '{path}' cannot be written ({exc}); give a writable file path.") from None
    handler.setFormatter(OneLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)


def escape_control(text: str) -> str:
    """``text`` with every non-printable character written as its Python escape (``\\n``, ``\\x1b``,
    ``\\u2028``); printable text, spaces included, is unchanged."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class OneLineFormatter(logging.Formatter):
    """The ``console_log_file`` format: one record is always one line. Control characters in a message (a
    newline in a file name, output_name or caption) or in a traceback are written escaped, so nothing
    logged can forge a line of its own."""

    def format(self, record: logging.LogRecord) -> str:
        return escape_control(super().format(record))


def write_output_config(config) -> Path:
    """``--output_config PATH``: write the effective config (reloadable with --config_file) and stop."""
    from library.config.load import effective_toml
    from library.util.atomic import write_text_atomic

    path = Path(config.output_config)
    if path.suffix != ".toml":
        path = path.with_suffix(path.suffix + ".toml")
    write_text_atomic(path, effective_toml(config))
    logger.info("wrote the effective config to %s", path)
    return path


#: what to do about the usual OS errors, by errno name
_OS_ERROR_FIXES = {
    "ENOSPC": "the disk is full: free space there or choose another folder",
    "EDQUOT": "the disk quota is used up: free space there or choose another folder",
    "EROFS": "the file system is read-only: choose a writable folder",
    "EACCES": "permission denied: choose a folder you may write to, or fix its permissions",
    "EPERM": "the operation is not permitted there: choose another folder or fix its permissions",
    "EISDIR": "a folder is where a file was expected: give a file name, not a folder",
    "ENOTDIR": "a file is where a folder was expected: check the path",
    "ENOENT": "it does not exist: check the path",
}


def os_error_message(exc: OSError) -> str:
    """One paragraph for an OS error: what failed, on which file, and the fix."""
    import errno

    name = errno.errorcode.get(exc.errno or 0, "")
    where = f" ({exc.filename})" if exc.filename else ""
    fix = _OS_ERROR_FIXES.get(name, "check the path and the disk")
    return f"{exc.strerror or exc}{where}: {fix}."


def run_guarded(body: Callable[[], int | None], log_level: str = "INFO") -> int:
    """Run a command's body: a ``UserError`` prints one ``error:`` paragraph and returns its exit code (2),
    never a traceback; Ctrl-C returns 130. Shared by the trainers and every tool."""
    setup_logging(log_level)
    try:
        return body() or 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # output piped into head/less that closed early
        sys.stderr.close()
        return 0
    except OSError as exc:  # disk full, read-only, permission, a folder where a file should be …
        print(f"error: {os_error_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def run_trainer(trainer: str, make_target: Callable, argv: Sequence[str] | None = None,
                family: str | None = None, defaults: dict | None = None) -> int:
    """Parse the command line for ``trainer`` ("network"/"db"), then train. Returns the exit code.

    ``family`` (sd-scripts' per-family entry names such as ``sdxl_train_network.py``): the run refuses a base
    model of another family, as those scripts do. ``defaults``: option name -> the default this entry point
    uses instead of the schema's (sd-scripts' ``fine_tune.py`` leaves the text encoder frozen unless asked).
    """
    if family is not None:
        from library.training.target import require_family

        make_target = require_family(make_target, family)

    def body() -> int:
        from library.config.load import parse_config
        from library.config.options_finetune import schema_with_defaults

        config = parse_config(argv, trainer, schema_with_defaults(defaults))
        setup_logging(config.console_log_level)
        if config.console_log_file:
            add_log_file(config.console_log_file)
        if config.output_config:
            write_output_config(config)
            return 0
        if not config.estimate and config.pretrained_model_name_or_path:
            from library.models.loading import read_ahead

            read_ahead(str(config.pretrained_model_name_or_path))  # the file is read while the rest imports
        from library.util.lean_imports import skip_diffusers_extras

        skip_diffusers_extras()  # two seconds of start-up the trainers never use
        if config.estimate:
            from library.training.estimate import estimate_run

            estimate = estimate_run(config, make_target(config))
            script = Path(sys.argv[0]).resolve()
            if script.parent == Path(__file__).resolve().parent.parent:  # one of ours: fine_tune.py, flux_…
                estimate.script = script.name
            print(estimate.report())
            return 0
        from library.training.loop import run_training

        run_training(config, make_target(config))
        return 0

    return run_guarded(body)


def exit_now(code: int) -> NoReturn:
    """End a trainer's process with ``code`` once the run is over: logs and streams flushed, then ``os._exit``.

    The interpreter's own teardown (thousands of modules, the model's tensors) takes seconds on 2 cores and
    half a minute with a big model, while the run's files are all written and closed already; the GUI's queue
    saw a finished run as still running all that time. Only for the entry scripts' ``__main__``: code that
    calls :func:`run_trainer` (the tests) keeps its process.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more to say
            pass
    os._exit(code)
