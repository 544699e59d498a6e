"""SmilingWolf-style WD14 tagger files: ``model.onnx`` + ``selected_tags.csv``, local or from the hub.

Layout of both v2 and v3 taggers: input NHWC float32 BGR 0-255 (``(B, S, S, 3)``, S = 448 for the real
models), output ``(B, n_tags)`` sigmoid probabilities in the row order of ``selected_tags.csv``
(columns ``tag_id,name,category,count``). The category column holds danbooru numbers (SmilingWolf's
files use 9 = rating, 0 = general, 4 = character; 1 = artist, 3 = copyright, 5 = meta are danbooru's) or,
as in the v3-style ``tag_mapping.json`` categories, a name (``General``, ``Artist``, ``Copyright``,
``Character``, ``Meta``, ``Model``, ``Quality``, ``Rating``, any case). ``Model`` and ``Quality`` have no
danbooru number: they get the internal codes -1 and -2 (:data:`CATEGORY_BY_NAME` is the one mapping).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from library.errors import ModelLoadError

logger = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
TAGS_FILE = "selected_tags.csv"
DEFAULT_REPO_ID = "SmilingWolf/wd-v1-4-convnext-tagger-v2"
DEFAULT_MODEL_DIR = "wd14_tagger_model"

CATEGORY_GENERAL = 0
CATEGORY_ARTIST = 1
CATEGORY_COPYRIGHT = 3
CATEGORY_CHARACTER = 4
CATEGORY_META = 5
CATEGORY_RATING = 9
CATEGORY_MODEL = -1  # no danbooru number: only written by name
CATEGORY_QUALITY = -2  # no danbooru number: only written by name

#: category names (lower case) -> codes; a csv category is either one of these names or an integer.
CATEGORY_BY_NAME = {
    "general": CATEGORY_GENERAL,
    "artist": CATEGORY_ARTIST,
    "copyright": CATEGORY_COPYRIGHT,
    "character": CATEGORY_CHARACTER,
    "meta": CATEGORY_META,
    "rating": CATEGORY_RATING,
    "model": CATEGORY_MODEL,
    "quality": CATEGORY_QUALITY,
}

#: onnxruntime providers from most to least preferred; the available ones are used in this order.
PROVIDER_PREFERENCE = (
    "CUDAExecutionProvider",
    "ROCMExecutionProvider",
    "DmlExecutionProvider",
    "CoreMLExecutionProvider",
    "OpenVINOExecutionProvider",
    "CPUExecutionProvider",
)


@dataclass(frozen=True)
class TagTable:
    """The rows of ``selected_tags.csv``: ``names[i]`` and ``categories[i]`` describe output column i."""

    names: tuple[str, ...]
    categories: np.ndarray  # (n_tags,) int


def parse_category(value: str) -> int:
    """A csv category cell -> its code: ``"4"`` -> 4, ``"Quality"`` -> :data:`CATEGORY_QUALITY`.

    Raises ``ValueError`` for a word that is not a known category name.
    """
    text = value.strip()
    if text.lower() in CATEGORY_BY_NAME:
        return CATEGORY_BY_NAME[text.lower()]
    try:
        return int(text)
    except ValueError:
        raise ValueError(
            f"category {value!r} is neither a number nor one of {', '.join(CATEGORY_BY_NAME)}"
        ) from None


def load_tag_table(path: str | Path) -> TagTable:
    """Read ``selected_tags.csv``; :class:`ModelLoadError` naming the file when it is malformed."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
        names = tuple(row["name"] for row in rows)
        categories = np.array([parse_category(row["category"]) for row in rows], dtype=np.int64)
    except (OSError, KeyError, TypeError, AttributeError, ValueError, UnicodeDecodeError) as exc:
        raise ModelLoadError(
            f"Tag list '{path}' cannot be read ({exc!r}). It must be a CSV with the header "
            f"tag_id,name,category,count as in SmilingWolf's tagger repositories."
        ) from exc
    if not names:
        raise ModelLoadError(f"Tag list '{path}' has no rows.")
    return TagTable(names, categories)


#: seconds to wait for the hub's TCP connection before calling the machine offline
HUB_PROBE_TIMEOUT = 3.0


class HubUnreachable(ModelLoadError):
    """The hub cannot be reached (no network, DNS, a firewall): raised before any download is tried."""


def hub_unreachable_reason(endpoint: str | None = None, timeout: float = HUB_PROBE_TIMEOUT) -> str | None:
    """Why the hub at ``endpoint`` (default: huggingface_hub's, ``HF_ENDPOINT``) cannot be reached, or None.

    One TCP connection with a short timeout: huggingface_hub itself retries five times with back-off
    (about 25 s) before it gives up on a machine without network.
    """
    import socket
    from urllib.parse import urlparse
    from urllib.request import getproxies, proxy_bypass

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    url = urlparse(endpoint or constants.ENDPOINT)
    proxies = getproxies()
    proxy = proxies.get(url.scheme) or proxies.get("all")
    if proxy and not proxy_bypass(url.hostname or ""):  # behind a proxy only the proxy is reachable
        url = urlparse(proxy if "://" in proxy else f"http://{proxy}")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "", port), timeout=timeout).close()
    except OSError as exc:
        return f"{url.hostname}:{port}: {exc.strerror or exc}"
    return None


def _hub_download(repo_id: str, filename: str, local_dir: Path, force: bool) -> Path:
    import logging as _logging

    from huggingface_hub import hf_hub_download

    reason = hub_unreachable_reason()
    if reason:
        raise HubUnreachable(f"the hub cannot be reached ({reason})")
    # huggingface_hub has a handler of its own and also passes its records on to ours: without this each
    # retry message would show twice
    hub_logger = _logging.getLogger("huggingface_hub")
    own_handlers = list(hub_logger.handlers)
    for handler in own_handlers:
        hub_logger.removeHandler(handler)
    try:
        return Path(hf_hub_download(repo_id, filename, local_dir=local_dir, force_download=force))
    finally:
        for handler in own_handlers:
            hub_logger.addHandler(handler)


def resolve_model_files(
    model_dir: str | Path,
    repo_id: str | None,
    force_download: bool = False,
    download: Callable[[str, str, Path, bool], Path] = _hub_download,
) -> tuple[Path, Path]:
    """Find ``model.onnx`` and ``selected_tags.csv``; download them from ``repo_id`` when absent.

    Looked for, in order: ``model_dir`` itself, then ``model_dir/<repo_id with "/" -> "_">`` (where
    downloads go, as sd-scripts does). A ``repo_id`` that is an existing local folder is used as the model
    folder (nothing is downloaded). When the hub cannot be reached the error says so at once (no retries)
    and names ``--model_dir``. Returns ``(onnx path, csv path)``.
    """
    model_dir = Path(model_dir)
    if repo_id and Path(repo_id).expanduser().is_dir():  # a local folder given as the repo id
        model_dir, repo_id = Path(repo_id).expanduser(), None
    places = [model_dir] + ([model_dir / repo_id.replace("/", "_")] if repo_id else [])
    if not force_download:
        for place in places:
            if (place / MODEL_FILE).is_file() and (place / TAGS_FILE).is_file():
                return place / MODEL_FILE, place / TAGS_FILE
    looked = " and ".join(f"'{p}'" for p in places)
    if not repo_id:
        raise ModelLoadError(
            f"No tagger model found: looked for {MODEL_FILE} and {TAGS_FILE} in {looked}. Put both files "
            f"in --model_dir or give --repo_id (e.g. {DEFAULT_REPO_ID}) to download them."
        )
    target = places[-1]
    try:
        files = tuple(download(repo_id, name, target, force_download) for name in (MODEL_FILE, TAGS_FILE))
    except HubUnreachable as exc:
        raise ModelLoadError(
            f"No tagger model found locally: looked for {MODEL_FILE} and {TAGS_FILE} in {looked}, and {exc}, "
            f"so they cannot be downloaded from '{repo_id}'. Without network, download the two files from "
            f"https://huggingface.co/{repo_id} on another machine into a folder and pass it with --model_dir "
            f"FOLDER (or copy them into '{target}')."
        ) from None
    except Exception as exc:  # network, auth or missing-file errors all end the same way
        raise ModelLoadError(
            f"No tagger model found: looked for {MODEL_FILE} and {TAGS_FILE} in {looked}, and downloading "
            f"them from the hub repository '{repo_id}' failed ({type(exc).__name__}: {exc}). Check the "
            f"repo id and the network, or download the two files by hand into '{target}'."
        ) from exc
    return files[0], files[1]


def best_providers(available: list[str]) -> list[str]:
    """The available onnxruntime providers in :data:`PROVIDER_PREFERENCE` order (CPU always last)."""
    chosen = [p for p in PROVIDER_PREFERENCE if p in available]
    return chosen or ["CPUExecutionProvider"]


class WD14Model:
    """An onnxruntime session of a WD14 tagger plus its tag table.

    ``predict(batch)`` takes ``(B, S, S, 3)`` float32 BGR 0-255 and returns ``(B, n_tags)`` probabilities.
    """

    def __init__(self, onnx_path: str | Path, tags_path: str | Path, providers: list[str] | None = None):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ModelLoadError(
                "The WD14 tagger needs onnxruntime: pip install onnxruntime (or onnxruntime-gpu for CUDA)."
            ) from exc
        self.tags = load_tag_table(tags_path)
        chosen = providers or best_providers(ort.get_available_providers())
        options = ort.SessionOptions()
        # no busy-waiting between runs: the loader threads need those cores while the model is idle
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=chosen)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelLoadError(
                f"Tagger model '{onnx_path}' cannot be loaded by onnxruntime: {exc}"
            ) from exc
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        shape = model_input.shape
        if len(shape) != 4 or not isinstance(shape[1], int) or shape[1] != shape[2] or shape[3] != 3:
            raise ModelLoadError(
                f"Tagger model '{onnx_path}' has input shape {shape}; a WD14 tagger takes (batch, size, size, 3)."
            )
        self.input_size = int(shape[1])
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        n_out = self.session.get_outputs()[0].shape[-1]
        if isinstance(n_out, int) and n_out != len(self.tags.names):
            raise ModelLoadError(
                f"Tagger model '{onnx_path}' outputs {n_out} tags but '{tags_path}' lists "
                f"{len(self.tags.names)}; use the selected_tags.csv that belongs to this model."
            )
        logger.info(
            "WD14 tagger %s on %s, input %dx%d",
            onnx_path,
            self.session.get_providers(),
            self.input_size,
            self.input_size,
        )

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """``(B, S, S, 3)`` float32 -> ``(B, n_tags)`` float32 probabilities."""
        step = self.fixed_batch or len(batch)
        outputs = [
            self.session.run(None, {self.input_name: batch[i : i + step]})[0]
            for i in range(0, len(batch), step)
        ]
        return np.concatenate(outputs, axis=0).astype(np.float32)
