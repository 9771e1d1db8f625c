"""``facestream demo``: the whole job on a clip built from photos that ship in packages, offline."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import json

from .app import prepare_job
from .scenes import demo_scene, photo_path
from .settings import load_settings


def run_demo(*, output: str, stats: str | None, overrides: list[str], quiet: bool = False) -> int:
    """Build the demo clip (the group photo panned, the astronaut's portrait crossing it) and swap the
    astronaut's face (scikit-image's public-domain NASA portrait) onto every face in it."""
    source = str(photo_path("astronaut"))
    settings = load_settings(
        preset="demo",
        overrides=[f"swap.source={json.dumps([source])}", *overrides, *(["stats.progress=none"] if quiet else [])],
    )
    with tempfile.TemporaryDirectory(prefix="facestream-demo-") as tmp:
        clip = Path(tmp) / "demo-input.mp4"
        print("facestream: building the demo clip from packaged photos", file=sys.stderr)
        demo_scene(clip)
        from .cli import run_interruptible

        # The demo replaces its own output from an earlier demo run.
        report = run_interruptible(prepare_job(settings, source=str(clip), output=output, stats_path=stats,
                                               overwrite=True))
    if report.error is not None:
        print(f"facestream: error: {report.error}", file=sys.stderr)
        return report.exit_code
    s = report.stats
    print(
        f"facestream: demo written to {output} ({s['frames_out']} frames, {s['fps']:.1f} fps)"
        + (f"; statistics in {stats}" if stats else ""),
        file=sys.stderr,
    )
    return report.exit_code
