"""Any OpenAI-compatible chat-completions endpoint (vLLM, Ollama, LM Studio, llama.cpp server ...).

Each picture is one request, its image a base64 data URL in an ``image_url`` content part; ``batch_size``
requests run at once. A refused key (401/403), an unknown endpoint or model (404) or a server that cannot
be reached stops the run with one error (every other picture would fail the same way); a timeout, a server
error or an answer that is not chat-completions JSON fails that picture only.
"""

from __future__ import annotations

import base64
import io
import json
import os
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from PIL import Image

from library.errors import UserError
from library.tools.dataset.vlm.base import VlmSettings, register

#: pictures are sent at most this many pixels on their long side (the models resize below that anyway)
MAX_SIDE = 2048


class RequestFailed(Exception):
    """One picture's request failed; the run goes on."""


def completions_url(api_base: str) -> str:
    """``http://host:8000/v1`` -> ``http://host:8000/v1/chat/completions`` (a full URL is kept)."""
    base = api_base.strip().rstrip("/")
    return base if base.endswith("/chat/completions") else base + "/chat/completions"


def api_base_problem(api_base: str) -> str | None:
    """Why ``api_base`` is not an http(s) URL with a host, or None."""
    parts = urlsplit(api_base.strip())
    if parts.scheme not in ("http", "https"):
        return "is not an http:// or https:// URL"
    if not parts.hostname:
        return "has no host name"
    return None


def data_url(image: Image.Image) -> str:
    """The picture as a ``data:image/png;base64,...`` URL (long side at most ``MAX_SIDE``)."""
    if max(image.size) > MAX_SIDE:
        image = image.copy()
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def request_body(model: str, prompt: str, image: Image.Image, settings: VlmSettings) -> dict:
    """The chat-completions request of one picture."""
    content = [{"type": "text", "text": prompt}, {"type": "image_url", "image_url": {"url": data_url(image)}}]
    return {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": settings.max_new_tokens,
        "temperature": settings.temperature,
    }


def answer_text(payload: bytes, url: str) -> str:
    """The assistant's text of a chat-completions answer; ``RequestFailed`` naming ``url`` otherwise."""
    try:
        data = json.loads(payload)
        content = data["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        head = payload[:200].decode("utf-8", "replace")
        raise RequestFailed(f"'{url}' did not answer chat-completions JSON ({exc!r}): {head!r}") from None
    if isinstance(content, list):  # content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str):
        raise RequestFailed(f"'{url}' answered a message whose content is not text: {content!r}")
    return content.strip()


def _error_detail(exc: urllib.error.HTTPError) -> str:
    try:
        body = exc.read()[:300].decode("utf-8", "replace")
    except OSError:
        body = ""
    return f"HTTP {exc.code} {exc.reason}" + (f": {body}" if body else "")


class OpenAIBackend:
    fixed_prompt = False

    def __init__(self, settings: VlmSettings, api_key: str | None):
        self.settings = settings
        self.url = completions_url(settings.api_base or "")
        self.api_key = api_key

    def post(self, body: dict) -> str:
        """Send one request; the answer's text."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, json.dumps(body).encode("utf-8"), headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.settings.timeout) as response:
                return answer_text(response.read(), self.url)
        except urllib.error.HTTPError as exc:
            self._raise_http(exc)
        except TimeoutError as exc:
            raise RequestFailed(
                f"'{self.url}' gave no answer within {self.settings.timeout:g} s ({exc}); "
                "raise --timeout for a slow server."
            ) from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise RequestFailed(
                    f"'{self.url}' gave no answer within {self.settings.timeout:g} s; raise "
                    "--timeout for a slow server."
                ) from None
            raise UserError(
                f"the endpoint '{self.url}' cannot be reached ({exc.reason}). Start the server "
                "(vLLM, Ollama, LM Studio ...) or fix --api_base, e.g. http://localhost:8000/v1."
            ) from None

    def _raise_http(self, exc: urllib.error.HTTPError):
        detail = _error_detail(exc)
        if exc.code in (401, 403):
            env = self.settings.api_key_env
            how = (
                f"the key in ${env} was refused"
                if env
                else "it needs a key: give --api_key_env VARIABLE_NAME"
            )
            raise UserError(f"the endpoint '{self.url}' refused the request ({detail}): {how}.") from None
        if exc.code == 404:
            raise UserError(
                f"the endpoint '{self.url}' answered 404 ({detail}): check --api_base (it ends in /v1 "
                f"for most servers) and that the server serves --model '{self.settings.api_model}'."
            ) from None
        raise RequestFailed(f"'{self.url}' failed: {detail}") from None

    def caption(self, images: list[Image.Image], prompt: str) -> list[str | Exception]:
        bodies = [request_body(self.settings.api_model or "", prompt, im, self.settings) for im in images]

        def one(body: dict) -> str | Exception:
            try:
                return self.post(body)
            except RequestFailed as exc:
                return exc

        with ThreadPoolExecutor(max_workers=max(1, len(bodies)), thread_name_prefix="vlm-api") as pool:
            return list(pool.map(one, bodies))


def api_key(settings: VlmSettings) -> str | None:
    """The key from the environment variable named by ``--api_key_env`` (None when no variable is named)."""
    if not settings.api_key_env:
        return None
    value = os.environ.get(settings.api_key_env, "").strip()
    if not value:
        raise UserError(
            f"--api_key_env {settings.api_key_env}: that environment variable is not set or empty. "
            f"Set it first (export {settings.api_key_env}=...), or leave --api_key_env out for a "
            "server without a key."
        )
    return value


@register(
    "openai", None, "an OpenAI-compatible chat-completions endpoint (vLLM, Ollama, LM Studio)", None, True
)
def load_openai(settings: VlmSettings) -> OpenAIBackend:
    return OpenAIBackend(settings, api_key(settings))
