"""The demo's speed on this machine, and what the CPU defaults give it: ``python -m bench.demo``.

Runs the demo preset on the demo clip in fresh processes, alternating two set-ups, ``--repeats`` times
each, and prints the pipeline's wall time and each stage's capacity (frames per second it could take
when busy), then the ratio of the medians:

- **baseline**: torch's intra-op threads on every core, the blender's colour matching through the
  torch Lab formulas, and dlib's HOG one frame after another (what ran before these changes);
- **facestream**: the defaults (half the cores for intra-op threads, OpenCV's Lab on the host, a
  batch's frames detected side by side).

The README's demo time is the ``facestream`` line, measured with the machine otherwise quiet.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import ROOT, machine

# One demo run in a child process; argv: output, stats, "baseline" or "facestream".
CHILD = """
import sys
from facestream.facelib.ops import lab
overrides = []
if sys.argv[3] == "baseline":
    import os
    from facestream.facelib.models.builtin_pack import DlibDetector
    lab.match_colour.__kwdefaults__["engine"] = "torch"
    DlibDetector.PARALLEL = False
    overrides.append(f"threads={os.cpu_count()}")
from facestream.demo import run_demo
sys.exit(run_demo(output=sys.argv[1], stats=sys.argv[2], overrides=overrides, quiet=True))
"""

STAGES = ("detector", "generator", "blender")


def one(kind: str, tmp: Path) -> dict:
    out, stats = tmp / f"{kind}.mp4", tmp / f"{kind}.json"
    t = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", CHILD, str(out), str(stats), kind], capture_output=True, text=True,
                          cwd=ROOT)
    whole = time.monotonic() - t
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    s = json.loads(stats.read_text())
    return {"whole_s": whole, "wall_s": s["wall_s"], "fps": s["fps"],
            **{k: s["stages"][k]["capacity_fps"] for k in STAGES}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(machine(), f"; load average {os.getloadavg()[0]:.2f} at the start")
    runs: dict[str, list[dict]] = {"baseline": [], "facestream": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for kind in runs:
                runs[kind].append(one(kind, Path(tmp)))
    print(f"{'':11} {'whole s':>8} {'pipeline s':>10} {'fps':>6} " + " ".join(f"{k + ' fps':>14}" for k in STAGES))
    med = {}
    for kind, rs in runs.items():
        med[kind] = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        m = med[kind]
        print(f"{kind:11} {m['whole_s']:8.1f} {m['wall_s']:10.1f} {m['fps']:6.1f} "
              + " ".join(f"{m[k]:14.1f}" for k in STAGES))
    b, f = med["baseline"], med["facestream"]
    print(f"median of {args.repeats}: pipeline {b['wall_s'] / f['wall_s']:.2f}x faster; blender capacity "
          f"{f['blender'] / b['blender']:.2f}x; slowest stage now {min(STAGES, key=lambda k: f[k])}")


if __name__ == "__main__":
    main()
