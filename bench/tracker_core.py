"""Time one tracker update at N faces: ours against Roboflow's ``trackers.ByteTrackTracker``.

Run ``python -m bench.tracker_core`` from the repository root (``--help`` for options). Both
trackers see the same synthetic sequence (``tests.facelib.tracking.synthetic.crowd``); Roboflow's
``sv.Detections`` are built before the clock starts, so only the trackers' own work is timed. Each
replay resets the tracker and runs the whole sequence; replays of the two alternate, and the best
and median replays are reported (the best is the least disturbed by other processes). With
``--metrics`` it also prints MOT metrics for both trackers on every test scenario.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from facestream.facelib.tracking import ByteTracker, mot_metrics
from tests.facelib.tracking import synthetic

METRICS = ("num_switches", "num_fragmentations", "idf1", "mota", "motp", "precision", "recall")


def time_replay(step: Callable[[int], object], reset: Callable[[], None], n_frames: int) -> float:
    """Mean seconds per ``step(frame_index)`` over one replay of ``n_frames`` frames."""
    reset()
    start = time.perf_counter()
    for index in range(n_frames):
        step(index)
    return (time.perf_counter() - start) / n_frames


def ours_replay(sequence: synthetic.SyntheticSequence) -> Callable[[], float]:
    """A function that replays the sequence through ``ByteTracker.update`` and times it."""
    tracker = ByteTracker()
    frames = sequence.frames
    return lambda: time_replay(
        lambda i: tracker.update(frames[i].boxes, frames[i].scores), tracker.reset, len(frames)
    )


def roboflow_replay(sequence: synthetic.SyntheticSequence) -> Callable[[], float]:
    """A function that replays the sequence through Roboflow's tracker and times it."""
    import supervision as sv

    tracker = synthetic.roboflow_tracker(sequence.frame_rate)
    detections = [
        sv.Detections(
            xyxy=frame.boxes.astype(np.float64),
            confidence=frame.scores.astype(np.float64),
            class_id=np.zeros(len(frame.scores), dtype=int),
        )
        for frame in sequence.frames
    ]
    return lambda: time_replay(
        lambda i: tracker.update(detections[i]), tracker.reset, len(detections)
    )


def print_metrics() -> None:
    """MOT metrics of both trackers (and ours detecting every third frame) on every scenario."""
    print(f"{'scenario':16s} {'tracker':16s} " + " ".join(f"{name:>18s}" for name in METRICS))
    for name, make in synthetic.SCENARIOS.items():
        sequence = make(0)
        runs = {
            "ours": synthetic.run_bytetracker(sequence),
            "roboflow": synthetic.run_roboflow(sequence),
            "ours, detect/3": synthetic.run_bytetracker(sequence, detect_every=3, report="tracks"),
        }
        for label, run in runs.items():
            metrics = mot_metrics(run.mot_frames(sequence))
            print(f"{name:16s} {label:16s} " + " ".join(f"{metrics[key]:18.3f}" for key in METRICS))


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, run the benchmark, print the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=20, help="faces per frame (default 20)")
    parser.add_argument("--frames", type=int, default=100, help="frames per replay (default 100)")
    parser.add_argument(
        "--repeats", type=int, default=15, help="replays of each tracker (default 15)"
    )
    parser.add_argument(
        "--metrics", action="store_true", help="also print MOT metrics per scenario"
    )
    args = parser.parse_args(argv)

    sequence = synthetic.crowd(args.faces, args.frames)
    replays = {"ours": ours_replay(sequence), "roboflow": roboflow_replay(sequence)}
    times: dict[str, list[float]] = {name: [] for name in replays}
    for _ in range(args.repeats):  # interleaved, so load from other processes hits both alike
        for name, replay in replays.items():
            times[name].append(replay())
    detections = np.mean([len(frame.scores) for frame in sequence.frames])
    print(
        f"{args.faces} faces ({detections:.1f} detections per frame), "
        f"{args.frames} frames, {args.repeats} replays"
    )
    labels = {
        "ours": "ours (stages.tracking.ByteTracker)",
        "roboflow": "Roboflow (trackers.ByteTrackTracker)",
    }
    for name, label in labels.items():
        best, median = min(times[name]) * 1e3, statistics.median(times[name]) * 1e3
        print(f"{label:38s} best {best:.3f} ms, median {median:.3f} ms per update")
    ratio = min(times["roboflow"]) / min(times["ours"])
    print(f"Roboflow / ours (best): {ratio:.1f}x")
    if args.metrics:
        print()
        print_metrics()


if __name__ == "__main__":
    main()
