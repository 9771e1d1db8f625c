"""Shared fixtures: generated media, CLI runs in subprocesses, the RTSP server, device parameters."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from tests.media import make_clip

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = "/usr/bin/python3"


def all_supported_devices() -> tuple:
    """CPU always; CUDA marked, and skipped where no GPU exists."""
    return ("cpu", pytest.param("cuda", marks=pytest.mark.needs_cuda))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "needs_cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def clip(media_dir: Path) -> Callable[..., Path]:
    """``clip(name, **make_clip_kwargs)``: a generated clip, made once per session per name."""
    made: dict[str, Path] = {}

    def get(name: str, **kwargs) -> Path:
        if name not in made:
            made[name] = make_clip(media_dir / name, **kwargs)
        return made[name]

    return get


def run_cli(*args: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``facestream ARGS`` in a subprocess, as a user would."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "facestream", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=full_env,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def has_rtsp_server() -> bool:
    if not Path(SYSTEM_PYTHON).exists():
        return False
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0'); "
         "from gi.repository import GstRtspServer"],
        capture_output=True,
    )
    return probe.returncode == 0 and shutil.which("gst-inspect-1.0") is not None


class RtspServer:
    """GStreamer's RTSP server on 127.0.0.1, in a process of its own that can be killed and restarted."""

    def __init__(self, launch: str, port: int | None = None, mount: str = "/live") -> None:
        self.launch = launch
        self.port = port or free_port()
        self.mount = mount
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}{self.mount}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [SYSTEM_PYTHON, str(ROOT / "tests" / "rtsp_server.py"), str(self.port), self.mount, self.launch],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            self.kill()
            raise RuntimeError(f"RTSP server did not start: {line!r}")
        # The port accepts connections once "ready" is printed; give GStreamer a moment more.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def rtsp_server() -> Iterator[Callable[[str], RtspServer]]:
    if not has_rtsp_server():
        pytest.skip("GStreamer's RTSP server is not installed (.ci/run installs it)")
    servers: list[RtspServer] = []

    def start(launch: str) -> RtspServer:
        server = RtspServer(launch)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.kill()
