"""What every benchmark shares: test clips, the machine's description, and the result table."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / ".cache"


def machine() -> str:
    """One line: CPU cores, GPU if any, and the library versions that matter."""
    import av

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{os.cpu_count()} CPU cores, {gpu}; python {platform.python_version()}, torch {torch.__version__}, "
        f"PyAV {av.__version__}"
    )


def cached(name: str, make: Any) -> Path:
    """A generated input, made once and kept in bench/.cache."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / name
    if not path.exists():
        tmp = path.with_name(f".tmp-{path.name}")
        make(tmp)
        tmp.rename(path)
    return path


def run_facestream(*args: str, stats: Path) -> tuple[dict[str, Any], float]:
    """Run ``facestream run ARGS --stats STATS`` as a user would; returns its statistics and the
    command's wall-clock time (start-up included)."""
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "facestream", "run", *args, "--stats", str(stats), "-q", "-y"],
        capture_output=True, text=True, cwd=ROOT,
    )
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"facestream failed ({proc.returncode}):\n{proc.stderr}")
    return json.loads(stats.read_text()), wall


def table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows)
