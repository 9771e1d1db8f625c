"""Batches: a folder of clips one process per file, through ``facestream batch`` (one and several at
once), through Ray with two local nodes; and one long clip in 1, 2 and 4 segments.

    python -m bench.batch [--clips 6] [--seconds 4] [--long-seconds 20] [--preset anonymize] [--no-ray]

Every configuration processes the same files with the same preset, as a user would run it (a
subprocess each, start-up and model loading included); the ratios are against the first row of
each table, measured in the same run.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, cached, machine, table
from facestream.scenes import people_scene


def _facestream(*args: str) -> float:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "facestream", *args, "-q"], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"facestream {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--long-seconds", type=float, default=20.0)
    ap.add_argument("--preset", default="anonymize")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--no-ray", action="store_true")
    args = ap.parse_args()

    clip = cached(f"batch-people-{args.seconds:g}s.mp4", lambda p: people_scene(p, seconds=args.seconds))
    long = cached(f"batch-people-{args.long_seconds:g}s.mp4", lambda p: people_scene(p, seconds=args.long_seconds))
    preset = ["--preset", args.preset]
    print(f"machine: {machine()}")
    print(f"folder: {args.clips} clips of {args.seconds:g} s, 640x360 25 fps, three moving faces; preset {args.preset}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        for i in range(args.clips):
            shutil.copy(clip, folder / f"clip{i}.mp4")
        frames = args.clips * round(args.seconds * 25)
        rows = [("configuration", "wall s", "frames/s", "ratio")]
        results: list[tuple[str, float]] = []

        def record(name: str, wall: float) -> None:
            results.append((name, wall))
            rows.append((name, f"{wall:.1f}", f"{frames / wall:.1f}", f"{results[0][1] / wall:.2f}x"))

        out = Path(tmp) / "seq"
        out.mkdir()
        t = time.perf_counter()
        for p in sorted(folder.iterdir()):
            _facestream("run", str(p), "-o", str(out / p.name), *preset)
        record("one process per file, in turn", time.perf_counter() - t)
        record("facestream batch -j 1", _facestream("batch", str(folder), "-o", str(Path(tmp) / "b1"), *preset))
        record(f"facestream batch -j {args.jobs}",
               _facestream("batch", str(folder), "-o", str(Path(tmp) / "bj"), "-j", str(args.jobs), *preset))
        if not args.no_ray:
            from ray.cluster_utils import Cluster

            node = {"num_cpus": 1, "object_store_memory": 100 * 2**20}
            cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
            cluster.add_node(**node)
            cluster.wait_for_nodes()
            try:
                record("Ray, two local nodes of 1 CPU",
                       _facestream("batch", str(folder), "-o", str(Path(tmp) / "ray"), *preset, "--backend", "ray",
                                   "--address", cluster.address))
            finally:
                cluster.shutdown()
        print(table(rows))

        print(f"\nlong clip: {args.long_seconds:g} s, 640x360 25 fps ({round(args.long_seconds * 25)} frames), "
              f"preset {args.preset}; segments run {args.jobs} at a time")
        rows = [("segments", "wall s", "frames/s", "ratio")]
        base = 0.0
        n = round(args.long_seconds * 25)
        for segments in (1, 2, 4):
            extra = ["--segments", str(segments), "-j", str(args.jobs)] if segments > 1 else []
            wall = _facestream("batch", str(long), "-o", str(Path(tmp) / f"seg{segments}"), *preset, *extra)
            base = base or wall
            rows.append((str(segments), f"{wall:.1f}", f"{n / wall:.1f}", f"{base / wall:.2f}x"))
        print(table(rows))


if __name__ == "__main__":
    main()
