"""Helpers for tests/test_serve.py: the service in a real subprocess, a plain urllib client, and a
small HTTP server (with basic auth) that serves a clip as a network input."""

from __future__ import annotations

import base64
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.conftest import ROOT, free_port

ACTIVE = ("queued", "starting", "running", "stopping")


class ServeProcess:
    """``facestream -v serve ...`` in a subprocess on a free 127.0.0.1 port; its log in a file."""

    def __init__(self, *, input_dir: Path, output_dir: Path, state_dir: Path, args: tuple[str, ...] = (),
                 host: str = "127.0.0.1", env: dict[str, str] | None = None, log: Path | None = None) -> None:
        self.port = free_port()
        self.host = host
        self.args = ["--host", host, "--port", str(self.port), "--input-dir", str(input_dir), "--output-dir",
                     str(output_dir), "--state-dir", str(state_dir), *args]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.log = log or state_dir.parent / f"serve-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.token: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> ServeProcess:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "facestream", "-v", "serve", *self.args], cwd=ROOT,
                                         env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the service exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"the service did not answer in {timeout_s} s:\n{self.log.read_text()}")

    def kill(self, sig: int = signal.SIGKILL, timeout_s: float = 60.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout_s)
        finally:
            self.proc = None

    def stop(self) -> int | None:
        """SIGTERM: the service stops its runs (finalising outputs) and exits."""
        return self.kill(signal.SIGTERM)

    def call(self, method: str, path: str, body: Any = None, *, token: str | None = None, raw: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """One request; returns the status and the decoded JSON (or the text when it is not JSON)."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        h = {"Content-Type": "application/json", **(headers or {})}
        token = token if token is not None else self.token
        if token:
            h["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                status, text = r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read().decode()
        try:
            return status, json.loads(text)
        except json.JSONDecodeError:
            return status, text

    def fetch(self, path: str) -> tuple[int, str, bytes]:
        """``GET path``: the status, content type and body as bytes."""
        h = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            with urllib.request.urlopen(urllib.request.Request(self.url + path, headers=h), timeout=30) as r:
                return r.status, r.headers.get("Content-Type", ""), r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("Content-Type", ""), e.read()

    def ok(self, method: str, path: str, body: Any = None, expect: int | tuple[int, ...] = (200, 202)) -> Any:
        status, answer = self.call(method, path, body)
        expected = (expect,) if isinstance(expect, int) else expect
        assert status in expected, (status, answer)
        return answer

    def wait(self, kind: str, run_id: str, until: Any = None, timeout_s: float = 90.0) -> dict[str, Any]:
        """Poll ``GET /v1/{kind}s/{id}`` until ``until(run)`` (default: finished)."""
        until = until or (lambda r: r["state"] not in ACTIVE)
        deadline = time.monotonic() + timeout_s
        while True:
            run = self.ok("GET", f"/v1/{kind}s/{run_id}")
            if until(run):
                return run
            assert time.monotonic() < deadline, f"timed out waiting for {kind} {run_id}: {run}"
            time.sleep(0.1)


def running_with_frames(run: dict[str, Any]) -> bool:
    return run["state"] == "running" and bool(run.get("report")) and run["report"].get("frames_out", 0) > 0


class ClipServer:
    """Serves files of a folder over HTTP on 127.0.0.1, asking for basic auth when given credentials."""

    def __init__(self, folder: Path, user: str | None = None, password: str | None = None) -> None:
        expected = base64.b64encode(f"{user}:{password}".encode()).decode() if user else None
        root = folder

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a: Any, **kw: Any) -> None:
                super().__init__(*a, directory=str(root), **kw)

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if expected and self.headers.get("Authorization") != f"Basic {expected}":
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="clips"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                super().do_GET()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str, user: str | None = None, password: str | None = None) -> str:
        auth = f"{user}:{password}@" if user else ""
        return f"http://{auth}127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
