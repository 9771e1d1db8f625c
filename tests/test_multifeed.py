"""Several live feeds on one pipeline, through the command line: `facestream run IN1 IN2 ... -o OUT1 -o OUT2 ...`."""

import json
import subprocess
import sys
import time
from collections import defaultdict

import pytest

from facestream.scenes import demo_scene
from tests.conftest import ROOT, run_cli
from tests.media import make_clip, probe
from tests.test_network_inputs import LIVE


def _feed_lines(proc, until, timeout=60):
    """Read progress lines (``... feeds 0:12 1:9 ...``) until ``until(frames out per feed)`` holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        if "feeds " in line:
            counts = dict(part.split(":") for part in line.split("feeds ")[1].split())
            if until({int(k): int(v) for k, v in counts.items()}):
                return
    raise AssertionError("the feeds did not get going")


@pytest.mark.slow
@pytest.mark.rtsp
def test_four_live_feeds_on_one_pipeline_one_killed_while_the_others_go_on(tmp_path, rtsp_server):
    # Three paced files of their own size, rate and audio (two with faces), and an endless RTSP feed.
    feeds = [tmp_path / "a.mp4", tmp_path / "b.mp4", tmp_path / "c.mp4"]
    rates = [6, 5, 6]  # 22 frames a second in all: within what the builtin detector takes on 2 cores
    demo_scene(feeds[0], size=(320, 180), fps=rates[0], seconds=4.0)
    demo_scene(feeds[1], size=(256, 144), fps=rates[1], seconds=4.0)
    make_clip(feeds[2], seconds=4.0, size=(240, 160), fps=rates[2])
    server = rtsp_server(LIVE.replace("framerate=15/1", "framerate=5/1"))
    inputs = [*map(str, feeds), server.url]
    outputs = [tmp_path / f"out{k}.mp4" for k in range(4)]
    stats, faces = tmp_path / "s.json", tmp_path / "faces.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "facestream", "run", *inputs, *[a for o in outputs for a in ("-o", str(o))],
         "--preset", "anonymize", "--set", "input.realtime=true", "--set", "input.reconnect_timeout_s=1",
         "--set", "stats.progress=lines", "--set", "stats.interval_s=0.25", "--stats", str(stats),
         "--faces-jsonl", str(faces)],
        stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )
    try:
        _feed_lines(proc, lambda out: out.get(3, 0) >= 5)
        server.kill()  # the RTSP feed is gone for good (its reconnection gives up after 1 s)
        _, err = proc.communicate(timeout=90)
    finally:
        proc.kill()
    report = json.loads(stats.read_text())
    # The run says which feed failed, and exits non-zero; the other three went on to their ends.
    assert proc.returncode == 1, err
    assert "feed 3 failed" in err and "feed 3 failed" in report["error"]
    errors = [f["error"] for f in report["stages"]["muxer"]["feeds"]]
    assert errors[:3] == [None, None, None] and errors[3]
    per_feed = report["streams"]
    for k, (src, out) in enumerate(zip(feeds, outputs)):
        want, got = probe(src), probe(out)
        assert (got.width, got.height) == (want.width, want.height)
        assert got.audio_streams == ["aac"] and got.audio_duration > 3.0
        # Complete: from the start to the end, every frame the run wrote for this feed, and every
        # frame it read accounted for (written, or dropped by the live flow when the machine is busy:
        # how many is a matter of speed, not of behaviour).
        assert got.frames == per_feed[k]["frames_out"] >= 5
        assert got.video_times[0] < 2.0 and got.video_times[-1] > want.video_times[-1] - 0.5
        # Frames are dropped in two places: by the muxer, whose queue per feed overflows first, and
        # by the pipeline's channels; the two counts together account for every frame of the file.
        read = per_feed[k]["frames_in"] + report["stages"]["muxer"]["feeds"][k]["dropped"]
        assert read == want.frames
        assert per_feed[k]["frames_in"] == per_feed[k]["frames_out"] + per_feed[k]["frames_dropped"]
        # Its own frame rate: the written frames keep their feed's timestamps.
        steps = {round(b - a, 3) for a, b in zip(got.video_times, got.video_times[1:])}
        assert min(steps) == pytest.approx(1 / rates[k], abs=2e-3)
    killed = probe(outputs[3])  # finalised and playable, with what arrived before the server died
    assert (killed.width, killed.height) == (320, 240) and killed.frames == per_feed[3]["frames_out"] >= 5
    # The models' batches held frames of several feeds.
    assert report["stages"]["detector"]["mixed_batches"] > 0
    # Track ids are per feed: faces were tracked in both feeds with faces, and no id is in two feeds.
    ids = defaultdict(set)
    for line in faces.read_text().splitlines():
        record = json.loads(line)
        ids[record["stream"]] |= {f["track_id"] for f in record["faces"] if f["track_id"] is not None}
    assert ids[0] and ids[1]
    assert all(not (ids[a] & ids[b]) for a in ids for b in ids if a < b)


def test_inputs_and_outputs_must_pair_up(clip, tmp_path):
    a, b = clip("mf-a.mp4", seconds=1.0), clip("mf-b.mp4", seconds=1.0, size=(160, 120))
    proc = run_cli("run", str(a), str(b), "-o", str(tmp_path / "only.mp4"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "facestream: error: config error: 2 inputs need 2 outputs (-o once per input, in the same order), got 1"]
    assert not (tmp_path / "only.mp4").exists()


def test_files_on_one_pipeline_are_written_whole_each_to_its_own_output(clip, tmp_path):
    """Without a live flow nothing is dropped: each output has every frame of its input."""
    a, b = clip("mf-a.mp4", seconds=1.0), clip("mf-b.mp4", seconds=1.0, size=(160, 120))
    c = clip("mf-c.mp4", seconds=1.5, size=(176, 144), fps=15, audio=None)
    outs = [tmp_path / "a.mkv", tmp_path / "b.mp4", tmp_path / "c.mp4"]
    stats = tmp_path / "s.json"
    proc = run_cli("run", str(a), str(b), str(c), *[x for o in outs for x in ("-o", str(o))], "-q",
                   "--stats", str(stats))
    assert proc.returncode == 0, proc.stderr
    for src, out in zip((a, b, c), outs):
        want, got = probe(src), probe(out)
        assert (got.frames, got.width, got.height, got.audio_streams) == (want.frames, want.width, want.height,
                                                                          want.audio_streams)
        assert got.video_times == pytest.approx(want.video_times, abs=1e-3)
    report = json.loads(stats.read_text())
    assert [f["frames_out"] for f in report["streams"]] == [25, 25, 23]
    assert report["input"] == [str(a), str(b), str(c)]
    assert f"feed 2 -> {outs[2]}: 23 frames" in proc.stderr
