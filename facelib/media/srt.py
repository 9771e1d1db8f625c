"""SRT through Debian's ``srt-live-transmit``: the FFmpeg inside PyAV's wheels has no ``srt`` protocol.

A bridge runs ``srt-live-transmit`` between the SRT URL and a UDP port on 127.0.0.1, where FFmpeg
writes (outputs) or reads (inputs) MPEG-TS. The child process is supervised: restarted with backoff
when it dies, killed when the run ends (and with the run's process, whatever kills it), its messages
summarised in one-line warnings with the passphrase hidden.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from typing import Literal
from urllib.parse import urlsplit

from .inputs import redact_url

log = logging.getLogger(__name__)

BINARY = "srt-live-transmit"
INSTALL_HINT = "srt:// needs srt-live-transmit (Debian/Ubuntu: apt install srt-tools)"
# One SRT payload carries 7 MPEG-TS packets: FFmpeg's datagrams must fit one.
TS_PACKET = 188 * 7
Direction = Literal["send", "receive"]

_LOG_PREFIX = re.compile(r"^\d\d:\d\d:\d\d\.\d+/\S+?[!*]?[A-Z]?:\s*\S+:\s*")


class SrtBridge:
    """``srt-live-transmit`` between an SRT URL and a local UDP port, supervised.

    ``send``: what FFmpeg writes to :attr:`local_url` goes out to ``url`` (caller, or listener with
    ``?mode=listener``, as the URL says). ``receive``: what arrives from ``url`` is written to
    :attr:`local_url`, where FFmpeg reads it.

    Args:
        url: The SRT URL, e.g. ``srt://host:9000?streamid=cam&passphrase=...``.
        direction: ``send`` (an output) or ``receive`` (an input).
        backoff_s: First and longest wait before restarting a child that died.
        error: The exception class for a bridge that cannot start (the caller's input or output error).

    Example:
        >>> bridge = SrtBridge("srt://127.0.0.1:9000?passphrase=0123456789", direction="send")
        >>> bridge.name, bridge.local_url.startswith("udp://127.0.0.1:")
        ('srt://127.0.0.1:9000?passphrase=***', True)
    """

    def __init__(self, url: str, *, direction: Direction, backoff_s: tuple[float, float] = (0.5, 8.0),
                 error: type[Exception] = RuntimeError) -> None:
        if direction not in ("send", "receive"):
            raise ValueError(f"direction must be send or receive, got {direction!r}")
        self.url = url
        self.name = redact_srt(url)
        self.direction = direction
        self.backoff_s = backoff_s
        self.error = error
        self.port = _free_udp_port()
        self.restarts = 0
        self.connects = 0
        self.losses = 0  # links lost (a reconnection in between may be too quick to see as a state)
        self.last_message: str | None = None
        self._connected = threading.Event()
        self._stopping = threading.Event()
        self._proc: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._warned: dict[str, float] = {}

    @property
    def local_url(self) -> str:
        """Where FFmpeg writes (``send``) or reads (``receive``) MPEG-TS."""
        if self.direction == "send":
            return f"udp://127.0.0.1:{self.port}?pkt_size={TS_PACKET}"
        return f"udp://127.0.0.1:{self.port}?fifo_size=100000&overrun_nonfatal=1"

    @property
    def connected(self) -> bool:
        """The SRT link is up (as far as the child has said)."""
        return self._connected.is_set()

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    def start(self) -> None:
        """Start the child and its supervisor.

        Raises:
            the ``error`` class: ``srt-live-transmit`` is not installed, or the URL is not SRT.
        """
        if urlsplit(self.url).scheme.lower() != "srt":
            raise self.error(f"not an SRT URL: {self.name}")
        if shutil.which(BINARY) is None:
            raise self.error(INSTALL_HINT)
        # The supervisor starts the child: the kernel kills it when the thread that started it ends
        # (PR_SET_PDEATHSIG follows the thread), so that thread must live as long as the bridge.
        started: list[BaseException | None] = []
        ready = threading.Event()
        self._thread = threading.Thread(target=self._supervise, args=(started, ready), name=f"srt-{self.port}",
                                        daemon=True)
        self._thread.start()
        ready.wait()
        if started[0] is not None:
            raise self.error(f"cannot start {BINARY}: {started[0]}")

    def close(self, *, linger_s: float = 0.0) -> None:
        """Stop the child: after ``linger_s`` (what was written last still has to go out), SIGTERM,
        then SIGKILL if it does not exit within a second."""
        if self._stopping.is_set():
            return
        if linger_s > 0 and self.connected:
            time.sleep(linger_s)
        self._stopping.set()
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(1.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._thread is not None:
            self._thread.join(5.0)
        self._connected.clear()

    def report(self) -> dict[str, object]:
        return {"bridge": BINARY, "restarts": self.restarts, "connects": self.connects, "losses": self.losses,
                "last_message": self.last_message}

    # ------------------------------------------------------------------ the child

    def _command(self) -> list[str]:
        local = f"udp://127.0.0.1:{self.port}"
        ends = [local, self.url] if self.direction == "send" else [self.url, local]
        return [BINARY, "-autoreconnect:yes", "-chunk:1456", *ends]

    def _spawn(self) -> None:
        proc = subprocess.Popen(self._command(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True,
                                preexec_fn=_die_with_parent)
        with self._lock:
            self._proc = proc

    def _supervise(self, started: list[BaseException | None], ready: threading.Event) -> None:
        try:
            self._spawn()
        except OSError as exc:
            started.append(exc)
            return
        finally:
            if not started:
                started.append(None)
            ready.set()
        wait = self.backoff_s[0]
        while True:
            with self._lock:
                proc = self._proc
            assert proc is not None and proc.stdout is not None
            started = time.monotonic()
            for line in proc.stdout:
                self._on_line(line.strip())
            code = proc.wait()
            self._connected.clear()
            if self._stopping.is_set():
                return
            if time.monotonic() - started > 10 * self.backoff_s[1]:
                wait = self.backoff_s[0]  # it had been running well: start again soon
            why = f": {self.last_message}" if self.last_message else ""
            log.warning("srt: %s for %s exited with status %s%s; restarting in %.1f s", BINARY, self.name, code,
                        why, wait)
            if self._stopping.wait(wait):
                return
            wait = min(wait * 2, self.backoff_s[1])
            self.restarts += 1
            try:
                self._spawn()
            except OSError as exc:
                log.warning("srt: cannot restart %s: %s", BINARY, exc)
                if self._stopping.wait(wait):
                    return

    def _on_line(self, line: str) -> None:
        if not line or line.startswith("Media path:"):
            return
        message = redact_srt(_LOG_PREFIX.sub("", line))
        low = message.lower()
        if "disconnected" in low:
            self._connected.clear()
            self.losses += 1
            log.info("srt: %s: link lost", self.name)
        elif re.search(r"\bconnected\b|^accepted srt", low):
            self.connects += 1
            self._connected.set()
            log.info("srt: %s: %s", self.name, message)
        elif _LOG_PREFIX.match(line) or re.search(r"error|fail|refus|reject|cannot|unable", low):
            self.last_message = message
            self._warn(f"srt: {self.name}: {message}")
        else:  # the tool's own notes (e.g. the byte counts of a connection that ended)
            log.info("srt: %s: %s", self.name, message)

    def _warn(self, text: str, every_s: float = 10.0) -> None:
        """Each distinct message at most once every ``every_s`` (the child repeats itself fast)."""
        now = time.monotonic()
        if now - self._warned.get(text, -every_s) >= every_s:
            self._warned[text] = now
            log.warning("%s", text)


def redact_srt(url: str) -> str:
    """An SRT URL with its credentials hidden (:func:`redact_url`: the passphrase too).

    Example:
        >>> redact_srt("srt://host:9000?mode=caller&passphrase=topsecret123")
        'srt://host:9000?mode=caller&passphrase=***'
    """
    return redact_url(url)


def _free_udp_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """In the child: get SIGKILL when the parent dies (even by kill -9)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
