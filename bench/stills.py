"""Before/after stills of the demo, for the README: ``python -m bench.stills [--out PATH]``.

Builds the demo clip (as ``facestream demo`` does), runs the demo preset on it through the command
line, and lays chosen frames side by side, input on the left and output on the right, in one JPEG.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import av
import cv2
import numpy as np

from .common import ROOT

FRAMES = (20, 100, 150)


def frames(path: Path, wanted: tuple[int, ...]) -> dict[int, np.ndarray]:
    out = {}
    with av.open(str(path)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i in wanted:
                out[i] = f.to_ndarray(format="bgr24")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "demo-stills.jpg"))
    args = ap.parse_args()
    from facestream.scenes import demo_scene, photo_path

    with tempfile.TemporaryDirectory() as tmp:
        clip, out = Path(tmp) / "in.mp4", Path(tmp) / "out.mp4"
        demo_scene(clip)
        proc = subprocess.run(
            [sys.executable, "-m", "facestream", "run", str(clip), "-o", str(out), "--preset", "demo",
             "--source", str(photo_path("astronaut")), "-q"],
            capture_output=True, text=True, cwd=ROOT,
        )
        if proc.returncode != 0:
            raise SystemExit(proc.stderr)
        before, after = frames(clip, FRAMES), frames(out, FRAMES)
    rows = []
    for i in FRAMES:
        pair = np.concatenate([before[i], np.full((before[i].shape[0], 8, 3), 255, np.uint8), after[i]], axis=1)
        cv2.putText(pair, f"frame {i}: input | output", (10, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2)
        rows.append(pair)
        rows.append(np.full((8, pair.shape[1], 3), 255, np.uint8))
    sheet = np.concatenate(rows[:-1], axis=0)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(args.out, sheet, [cv2.IMWRITE_JPEG_QUALITY, 85])
    print(f"wrote {args.out} ({sheet.shape[1]}x{sheet.shape[0]})")


if __name__ == "__main__":
    main()
