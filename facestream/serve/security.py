"""The service's rules: who may call it, which files and URLs a request may name, how big a request
may be, and what never leaves the process (credentials in URLs, tracebacks)."""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import re
import threading
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facestream.facelib.media.inputs import NETWORK_SCHEMES, redact_url

log = logging.getLogger("facestream.serve")

DRAIN_LIMIT = 64 * 2**20  # a body over the limit is read and dropped up to this much before the 413

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Refused(Exception):
    """A request breaks a rule: answered with ``status`` and a JSON body naming the rule."""

    def __init__(self, status: int, rule: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.rule = rule
        self.detail = detail


def error_body(rule: str, detail: str) -> dict[str, str]:
    """The JSON every refusal and error answers with."""
    return {"error": rule, "detail": detail}


# ---------------------------------------------------------------------------------------- binding


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (``127.0.0.1``, ``::1``, ``localhost``).

    Example:
        >>> is_loopback("127.0.0.1"), is_loopback("0.0.0.0"), is_loopback("localhost")
        (True, False, True)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_token(expected: str | None, header: str | None) -> None:
    """Raise :class:`Refused` (401) unless ``header`` is ``Bearer <expected>`` (no token configured:
    anything passes)."""
    if not expected:
        return
    scheme, _, given = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise Refused(401, "token_required", "this service needs 'Authorization: Bearer <token>' "
                                             "(the --token or FACESTREAM_TOKEN it was started with)")
    if not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise Refused(401, "token_invalid", "the bearer token is not the service's token")


# ------------------------------------------------------------------------------------------ paths


@dataclass(frozen=True)
class Folders:
    """The folders requests may read from (``inputs``) and write into (``output``)."""

    inputs: tuple[Path, ...]
    output: Path

    @classmethod
    def make(cls, inputs: Iterable[str | Path], output: str | Path) -> Folders:
        ins = tuple(Path(p).expanduser().resolve() for p in inputs)
        out = Path(output).expanduser().resolve()
        for p in (*ins, out):
            if not p.is_dir():
                from facestream.pipeline.errors import ConfigError

                raise ConfigError(f"folder not found: {p}")
        return cls(ins, out)

    def input_path(self, given: str, what: str = "input") -> Path:
        """The real path of an existing file (or folder) inside an input folder.

        Raises:
            Refused: ``..`` in the path (400), outside every input folder once links are followed
                (403), or missing (404).
        """
        return self._confine(given, self.inputs, what, "--input-dir", must_exist=True)

    def output_path(self, given: str, what: str = "output") -> Path:
        """The path to write inside the output folder (its parent folder must exist)."""
        return self._confine(given, (self.output,), what, "--output-dir", must_exist=False)

    def relative_output(self, path: Path) -> str:
        return str(path.relative_to(self.output))

    def _confine(self, given: str, roots: tuple[Path, ...], what: str, option: str, *, must_exist: bool) -> Path:
        if not given or "\x00" in given:
            raise Refused(400, "path_invalid", f"{what}: an empty path or a NUL byte")
        if ".." in re.split(r"[/\\]", given):
            raise Refused(400, "path_dotdot", f"{what} {given!r}: '..' is not allowed in paths")
        raw = Path(given).expanduser()
        candidates = [raw] if raw.is_absolute() else [root / raw for root in roots]
        for candidate in candidates:
            # Follow every link (the file's and its folders'): the real place must be inside a root.
            real = candidate.resolve() if must_exist else candidate.parent.resolve() / candidate.name
            if candidate.is_symlink() and not must_exist:
                real = candidate.resolve()
            root = next((r for r in roots if real == r or real.is_relative_to(r)), None)
            if root is None:
                if raw.is_absolute():
                    raise Refused(403, "path_outside_folder",
                                  f"{what} {given!r} is outside the {what} folder ({option})")
                raise Refused(403, "path_outside_folder",
                              f"{what} {given!r} leads outside the {what} folder through a symbolic link ({option})")
            if must_exist and not real.exists():
                continue
            if not must_exist and not real.parent.is_dir():
                raise Refused(404, "folder_not_found", f"{what} {given!r}: its folder does not exist in the output folder")
            return real
        raise Refused(404, "not_found", f"{what} {given!r} not found in the {what} folder ({option})")


# ------------------------------------------------------------------------------------------- URLs


def url_scheme(text: str) -> str | None:
    """The lower-case scheme of a URL, ``None`` for a path."""
    m = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", text)
    return m.group(1).lower() if m else None


def check_input_url(url: str) -> None:
    """Only the schemes the decoder reads (``file://`` is a path and goes through the folder rules)."""
    scheme = url_scheme(url)
    if scheme not in NETWORK_SCHEMES:
        raise Refused(400, "url_scheme", f"input URL scheme '{scheme}://' is not supported "
                                         f"(use {', '.join(s + '://' for s in NETWORK_SCHEMES)})")


# ------------------------------------------------------------------------------------- secrets


class Secrets:
    """URLs with credentials that requests brought in: never written to logs or answers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pairs: dict[str, str] = {}

    def add(self, url: str) -> str:
        """Remember ``url`` (if it holds credentials) and return it redacted."""
        safe = redact_url(url)
        if safe != url:
            scheme, _, rest = url.partition("://")
            userinfo = rest.split("/", 1)[0].rsplit("@", 1)[0]
            with self._lock:
                self._pairs[url] = safe
                self._pairs[userinfo + "@"] = "***@"
                password = userinfo.partition(":")[2]
                if len(password) >= 4:  # a password on its own (in a message that split the URL)
                    self._pairs[password] = "***"
        return safe

    def scrub(self, value: Any) -> Any:
        """``value`` (a string, or JSON-like data) with every known secret replaced."""
        if not self._pairs:
            return value
        if isinstance(value, str):
            with self._lock:
                pairs = sorted(self._pairs.items(), key=lambda kv: -len(kv[0]))
            for secret, safe in pairs:
                if secret in value:
                    value = value.replace(secret, safe)
            return value
        if isinstance(value, (dict, list)):
            text = json.dumps(value)
            cleaned = self.scrub(text)
            return value if cleaned == text else json.loads(cleaned)
        return value


class SecretFilter(logging.Filter):
    """Scrubs every log record (message and arguments) before any handler writes it."""

    def __init__(self, secrets: Secrets) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string: leave the record as it is
            return True
        cleaned = self.secrets.scrub(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            # The traceback, scrubbed, cached where the formatter looks for it first.
            record.exc_text = self.secrets.scrub(logging.Formatter().formatException(record.exc_info))
        return True


def install_log_filter(secrets: Secrets) -> Callable[[], None]:
    """Add the filter to every handler of the root logger (and uvicorn's); returns the undo."""
    filt = SecretFilter(secrets)
    handlers = {h for name in ("", "uvicorn", "uvicorn.error", "uvicorn.access")
                for h in logging.getLogger(name).handlers}
    for h in handlers:
        h.addFilter(filt)

    def undo() -> None:
        for h in handlers:
            h.removeFilter(filt)

    return undo


# ----------------------------------------------------------------------------------- middleware


class GuardMiddleware:
    """The outermost layer of the app: limits request bodies (413), answers anything unexpected
    with a clean JSON 500 (logged, with the traceback, but never sent), and writes an access log
    line without query strings.

    A pure ASGI middleware, so that it sees the body as it arrives and catches what Starlette's
    own error layer would pass on.
    """

    def __init__(self, app: ASGIApp, *, max_body: int, secrets: Secrets) -> None:
        self.app = app
        self.max_body = max_body
        self.secrets = secrets

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False
        status = 0

        async def tracked_send(message: Message) -> None:
            nonlocal started, status
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
            await send(message)

        try:
            body_receive = await self._read_body(scope, receive)
            if body_receive is None:
                await _json(tracked_send, 413, error_body(
                    "body_too_large", f"the request body is larger than {self.max_body} bytes (--max-body)"))
            else:
                await self.app(scope, body_receive, tracked_send)
        except Exception:  # noqa: BLE001 - never a traceback to the client
            log.exception("unexpected error answering %s %s", scope.get("method"), scope.get("path"))
            if not started:
                await _json(tracked_send, 500, error_body("internal_error",
                                                          "the service failed unexpectedly; the error is in its log"))
        finally:
            log.info("%s %s %s", scope.get("method"), self.secrets.scrub(scope.get("path", "")), status or "-")

    async def _read_body(self, scope: Scope, receive: Receive) -> Receive | None:
        """The whole body, read up to the limit, replayed to the app; ``None`` when over."""
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                if int(length) > self.max_body:
                    await self._drain(receive, int(length))
                    return None
            except ValueError:
                pass
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                chunks_message = message
                break
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_body:
                if message.get("more_body", False):
                    await self._drain(receive, None)
                return None
            chunks.append(body)
            if not message.get("more_body", False):
                chunks_message = None
                break
        data = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                if chunks_message is not None:
                    return chunks_message
                return {"type": "http.request", "body": data, "more_body": False}
            return await receive()

        return replay

    async def _drain(self, receive: Receive, length: int | None) -> None:
        """Read (and drop) the rest of a body that is too large, up to a bound, so that the client,
        still sending, reads the 413 rather than a reset connection."""
        if length is not None and length > DRAIN_LIMIT:
            return
        drained = 0
        while drained <= DRAIN_LIMIT:
            message = await receive()
            if message["type"] != "http.request":
                return
            drained += len(message.get("body", b""))
            if not message.get("more_body", False):
                return


async def _json(send: Send, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


def env_token() -> str | None:
    return os.environ.get("FACESTREAM_TOKEN") or None
