"""``facestream batch``: folders of videos, failures recorded, kill -9 and resume, long videos in segments."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch

from facestream.batch import collect_inputs, output_names
from facestream.manifest import MANIFEST_NAME
from facestream.pipeline.errors import ConfigError
from facestream.scenes import GROUP_FACES, load_photo, people_scene
from tests.conftest import ROOT, run_cli
from tests.media import audio_packets, make_clip


def _audio_only(path: Path) -> Path:
    out = av.open(str(path), "w")
    s = out.add_stream("aac", rate=48000)
    s.layout = "mono"
    for k in range(40):
        f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        f.sample_rate, f.pts = 48000, k * 1024
        for p in s.encode(f):
            out.mux(p)
    for p in s.encode(None):
        out.mux(p)
    out.close()
    return path


def _frames(path: Path) -> list[int]:
    with av.open(str(path)) as c:
        return [f.pts for f in c.decode(video=0)]


def _rows(outdir: Path) -> dict[str, tuple]:
    with sqlite3.connect(outdir / MANIFEST_NAME) as db:
        return {Path(r[0]).name: r[1:] for r in
                db.execute("SELECT input, state, runs, output_mtime_ns, reason FROM files")}


def _visible(outdir: Path) -> list[str]:
    return sorted(p.name for p in outdir.iterdir() if not p.name.startswith("."))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("batchin")
    for i in range(3):
        make_clip(d / f"clip{i}.mp4", seconds=1.5, audio="aac")
    (d / "broken.mp4").write_bytes((d / "clip0.mp4").read_bytes()[:3000])
    _audio_only(d / "voice.mp4")
    (d / "notes.txt").write_text("not a video, and not picked from a folder")
    return d


def test_folder_with_a_corrupt_and_an_audio_only_file(folder, tmp_path):
    src = tmp_path / "in"
    shutil.copytree(folder, src)
    out = tmp_path / "out"
    proc = run_cli("batch", str(src), "-o", str(out), "--preset", "anonymize", "-j", "2", "-q", timeout=240)
    assert proc.returncode == 1, proc.stderr  # some failed
    assert _visible(out) == ["clip0.mp4", "clip1.mp4", "clip2.mp4"]
    for i in range(3):
        assert len(_frames(out / f"clip{i}.mp4")) == len(_frames(src / f"clip{i}.mp4")) == 38
        with av.open(str(out / f"clip{i}.mp4")) as c:
            assert [s.codec_context.name for s in c.streams.audio] == ["aac"]
    rows = _rows(out)
    assert rows["broken.mp4"][0] == "failed" and "not a video file" in rows["broken.mp4"][3]
    assert rows["voice.mp4"][0] == "failed" and "no video stream" in rows["voice.mp4"][3]
    assert "3 done, 2 failed, 0 skipped" in proc.stderr
    assert "broken.mp4" in proc.stderr and "no video stream" in proc.stderr
    mtimes = {n: (out / n).stat().st_mtime_ns for n in _visible(out)}

    # The same command again: nothing redone; the failures are still failures.
    again = run_cli("batch", str(src), "-o", str(out), "--preset", "anonymize", "-q", timeout=240)
    assert again.returncode == 1
    assert "0 done, 2 failed, 3 skipped" in again.stderr and "--retry-failed" in again.stderr
    assert {n: (out / n).stat().st_mtime_ns for n in _visible(out)} == mtimes

    # Mend the broken file, drop the audio-only one, retry only the failures.
    shutil.copy(src / "clip1.mp4", src / "broken.mp4")
    (src / "voice.mp4").unlink()
    retry = run_cli("batch", *(str(p) for p in sorted(src.glob("*.mp4"))), "-o", str(out), "--preset", "anonymize",
                    "--retry-failed", "-q", timeout=240)
    assert retry.returncode == 0, retry.stderr
    assert "1 done, 0 failed, 3 skipped" in retry.stderr
    assert {n: (out / n).stat().st_mtime_ns for n in _visible(out) if n != "broken.mp4"} == mtimes
    assert _rows(out)["broken.mp4"][0] == "done" and len(_frames(out / "broken.mp4")) == 38
    assert not [p for p in out.iterdir() if ".unfinished" in p.name or ".partial-" in p.name]


def test_an_output_the_batch_did_not_write_is_kept(folder, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "clip0.mp4").write_bytes(b"precious")
    proc = run_cli("batch", str(folder / "clip0.mp4"), str(folder / "clip1.mp4"), "-o", str(out), "-q")
    assert proc.returncode == 1
    assert (out / "clip0.mp4").read_bytes() == b"precious"
    assert "exists (-y replaces it)" in proc.stderr
    assert len(_frames(out / "clip1.mp4")) == 38
    # Settings changed: a finished file is redone (its output was this batch's); -y takes over clip0.
    again = run_cli("batch", str(folder / "clip0.mp4"), str(folder / "clip1.mp4"), "-o", str(out), "-q", "-y",
                    "--retry-failed")
    assert again.returncode == 0 and len(_frames(out / "clip0.mp4")) == 38
    changed = run_cli("batch", str(folder / "clip1.mp4"), "-o", str(out), "-q", "--set", "output.crf=30")
    assert changed.returncode == 0 and "1 done" in changed.stderr


def test_names_and_inputs(tmp_path, folder):
    assert [p.name for p in collect_inputs([str(folder)])] == ["broken.mp4", "clip0.mp4", "clip1.mp4", "clip2.mp4",
                                                               "voice.mp4"]
    assert [p.name for p in collect_inputs([str(folder / "clip*.mp4"), str(folder / "clip1.mp4")])] == [
        "clip0.mp4", "clip1.mp4", "clip2.mp4"]
    with pytest.raises(ConfigError, match="input not found"):
        collect_inputs([str(tmp_path / "nope.mp4")])
    with pytest.raises(ConfigError, match="no videos"):
        collect_inputs([str(tmp_path)])
    a, b = Path("x/talk.mp4"), Path("y/talk.mov")
    with pytest.raises(ConfigError, match="would both be written"):
        output_names([a, b], tmp_path, "{stem}.mp4")
    assert output_names([a, b], tmp_path, "{parent}_{stem}.mkv")[b] == tmp_path / "y_talk.mkv"
    for bad, rule in (("{stem}.avi", "must end in"), ("{nope}.mp4", "use {stem}"), ("../{stem}.mp4", "plain file")):
        with pytest.raises(ConfigError, match=rule):
            output_names([a], tmp_path, bad)


def test_a_second_batch_on_the_same_folder_is_refused(folder, tmp_path):
    import fcntl

    out = tmp_path / "out"
    out.mkdir()
    fd = os.open(out / ".facestream-batch.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        proc = run_cli("batch", str(folder / "clip0.mp4"), "-o", str(out), "-q")
    finally:
        os.close(fd)
    assert proc.returncode != 0 and "another batch is writing to" in proc.stderr
    assert _visible(out) == []


@pytest.mark.slow
@pytest.mark.parametrize("segments", [1, 2])
def test_kill_9_at_random_moments_then_resume(tmp_path, segments):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(5):
        make_clip(src / f"c{i}.mp4", seconds=2.0, audio="aac", size=(256, 192))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "facestream", "batch", str(src), "-o", str(out), "--preset", "anonymize",
           "--segments", str(segments), "-q"]
    rng = random.Random(segments)
    finished: dict[str, int] = {}  # output -> mtime when first seen finished
    for _ in range(3):
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(2.5, 6.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for name in _visible(out):
            # A file under its final name is whole, whenever the batch died.
            assert len(_frames(out / name)) == 50, name
            finished.setdefault(name, (out / name).stat().st_mtime_ns)
    final = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    assert _visible(out) == [f"c{i}.mp4" for i in range(5)]
    rows = _rows(out)
    for name in _visible(out):
        assert len(_frames(out / name)) == 50
        state, runs, mtime, _ = rows[name]
        assert state == "done" and mtime == (out / name).stat().st_mtime_ns
        if name in finished:  # finished before a kill: never touched again
            assert (out / name).stat().st_mtime_ns == finished[name]
    assert sum(r[1] for r in rows.values()) >= 5
    leftovers = [p.name for p in out.rglob("*") if ".unfinished" in p.name or ".partial-" in p.name]
    assert leftovers == [] and not list(out.glob(".facestream-segments/*/*.mp4"))
    print(f"\nsegments={segments}: finished before the last run: {sorted(finished)}; runs {[r[1] for r in rows.values()]}")


def test_ctrl_c_stops_and_the_same_command_finishes(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        make_clip(src / f"c{i}.mp4", seconds=3.0, audio="aac", size=(256, 192))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "facestream", "batch", str(src), "-o", str(out), "--preset", "anonymize"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (out / MANIFEST_NAME).exists():
        time.sleep(0.1)
    time.sleep(3.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "left (interrupted)" in err
    for name in _visible(out):
        assert len(_frames(out / name)) == 75
    assert not [p for p in out.iterdir() if ".unfinished" in p.name or ".partial-" in p.name]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert _visible(out) == ["c0.mp4", "c1.mp4", "c2.mp4"]


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory):
    d = tmp_path_factory.mktemp("long")
    # Two audio streams: AAC (copied into mp4) and PCM (re-encoded to AAC), a keyframe every second.
    return make_clip(d / "long.mov", seconds=8.0, audio=("aac", "pcm_s16le"), markers=(1.0, 4.5, 7.0))


def _pictures(path: Path) -> tuple[list[int], list[np.ndarray]]:
    with av.open(str(path)) as c:
        frames = list(c.decode(video=0))
        return [f.pts for f in frames], [f.to_ndarray(format="yuv420p") for f in frames]


def test_four_segments_equal_one_pipeline(long_clip, tmp_path):
    single = tmp_path / "single"
    single.mkdir()
    assert run_cli("run", str(long_clip), "-o", str(single / "long.mp4"), "-q", "--set", "output.crf=0").returncode == 0
    proc = run_cli("batch", str(long_clip), "-o", str(tmp_path / "seg"), "--segments", "4", "-j", "2", "-q",
                   "--set", "output.crf=0")
    assert proc.returncode == 0, proc.stderr
    a_pts, a_pix = _pictures(single / "long.mp4")
    b_pts, b_pix = _pictures(tmp_path / "seg" / "long.mp4")
    assert len(a_pts) == len(b_pts) == 200 and a_pts == b_pts
    assert all(np.array_equal(x, y) for x, y in zip(a_pix, b_pix))  # lossless: pixel for pixel
    a_audio, b_audio = audio_packets(single / "long.mp4"), audio_packets(tmp_path / "seg" / "long.mp4")
    assert len(a_audio) == 2 and a_audio == b_audio  # both streams, bit for bit
    with sqlite3.connect(tmp_path / "seg" / MANIFEST_NAME) as db:
        assert [r for (r,) in db.execute("SELECT state FROM segments")] == ["done"] * 4
    assert not any((tmp_path / "seg" / ".facestream-segments").rglob("*.mp4"))


def test_segments_into_matroska_keep_a_single_runs_timestamps(tmp_path):
    # 30 fps with a keyframe every 25 frames: cuts fall between milliseconds, which Matroska counts.
    src = make_clip(tmp_path / "odd.mp4", seconds=5.0, fps=30, gop=25, audio="aac")
    single = tmp_path / "single"
    single.mkdir()
    assert run_cli("run", str(src), "-o", str(single / "odd.mkv"), "-q", "--set", "output.crf=0").returncode == 0
    proc = run_cli("batch", str(src), "-o", str(tmp_path / "seg"), "--segments", "3", "--overlap", "0.5",
                   "--name", "{stem}.mkv", "-q", "--set", "output.crf=0")
    assert proc.returncode == 0, proc.stderr
    a_pts, a_pix = _pictures(single / "odd.mkv")
    b_pts, b_pix = _pictures(tmp_path / "seg" / "odd.mkv")
    assert len(a_pts) == 150 and a_pts == b_pts
    assert all(np.array_equal(x, y) for x, y in zip(a_pix, b_pix))
    assert audio_packets(single / "odd.mkv") == audio_packets(tmp_path / "seg" / "odd.mkv")


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    d = tmp_path_factory.mktemp("segscene")
    truth = people_scene(d / "people.mp4")
    group = load_photo("group")
    for name, k in (("rachel", 0), ("monica", 4)):
        x1, y1, x2, y2 = (int(v) for v in GROUP_FACES[k])
        pad = x2 - x1
        crop = group[max(0, y1 - pad):y2 + pad, max(0, x1 - pad):x2 + pad]
        cv2.imwrite(str(d / f"{name}.png"), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
    return d, truth


@pytest.mark.slow
def test_a_person_crossing_a_segment_boundary_keeps_one_decision(scene, tmp_path):
    d, truth = scene
    args = ["--source", str(d / "monica.png"), "--set", "select.mode=reference",
            "--set", f"select.references=[{d / 'rachel.png'}]", "--set", "output.crf=0", "-q"]
    plain = tmp_path / "plain.mp4"
    assert run_cli("run", str(d / "people.mp4"), "-o", str(plain), "-q", "--set", "output.crf=0").returncode == 0
    single = tmp_path / "single.mp4"
    assert run_cli("run", str(d / "people.mp4"), "-o", str(single), *args, timeout=300).returncode == 0
    proc = run_cli("batch", str(d / "people.mp4"), "-o", str(tmp_path / "seg"), "--segments", "3", *args, timeout=400)
    assert proc.returncode == 0, proc.stderr
    _, p = _pictures(plain)
    _, a = _pictures(single)
    _, b = _pictures(tmp_path / "seg" / "people.mp4")
    assert len(a) == len(b) == 150
    # Rachel (the reference) is swapped on both sides of the boundaries (frames 50 and 100); the
    # astronaut and Chandler cross every boundary and are never swapped, in either run.
    for i in (45, 49, 50, 51, 55, 95, 99, 100, 101):
        for name, box in truth.frames[i]:
            x1, y1, x2, y2 = (max(0, int(v)) for v in box)
            y = slice(y1 // 2 * 2, y2)  # luma plane rows
            single_change = np.abs(a[i][y, x1:x2].astype(int) - p[i][y, x1:x2].astype(int)).mean()
            seg_change = np.abs(b[i][y, x1:x2].astype(int) - p[i][y, x1:x2].astype(int)).mean()
            if name == "rachel":
                assert single_change > 5 and seg_change > 5, (i, single_change, seg_change)
            else:
                assert single_change < 1 and seg_change < 1, (name, i, single_change, seg_change)
    # Frame by frame the two runs agree on what changed (the smoothing state after a warm-up is
    # close to, not bit-identical with, a single pipeline's).
    diffs = [np.abs(x.astype(int) - y.astype(int)).mean() for x, y in zip(a, b)]
    assert max(diffs) < 1.0, max(diffs)


@pytest.fixture(scope="module")
def ray_cluster():
    """A real Ray cluster on this machine: a head and a second node, each its own raylet process.
    (Ray rewrites 127.0.0.1 to the machine's own address when a driver connects, so the nodes
    listen there; both run here.)"""
    pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    common = {"num_cpus": 1, "object_store_memory": 80 * 2**20}
    cluster = Cluster(initialize_head=True, head_node_args={**common, "include_dashboard": False})
    cluster.add_node(**common)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


def _actor_pids() -> list[int]:
    out = subprocess.run(["pgrep", "-f", "ray::PipelineActor"], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


@pytest.mark.slow
def test_ray_cluster_runs_a_batch_across_two_nodes_and_survives_a_killed_worker(ray_cluster, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(6):
        make_clip(src / f"c{i}.mp4", seconds=3.0, audio="aac", size=(256, 192))
    (src / "broken.mp4").write_bytes((src / "c0.mp4").read_bytes()[:2000])
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "facestream", "batch", str(src), "-o", str(out), "--preset", "anonymize",
           "--backend", "ray", "--address", ray_cluster.address, "--segments", "2", "-q"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(_actor_pids()) < 2:
        time.sleep(0.2)
    time.sleep(3.0)  # both actors are mid-segment
    victims = _actor_pids()
    assert victims, "no Ray worker was running"
    os.kill(victims[-1], signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err  # the broken file failed; everything else is done
    assert "died" in err and "running it again" in err
    assert _visible(out) == [f"c{i}.mp4" for i in range(6)]
    rows = _rows(out)
    assert rows["broken.mp4"][0] == "failed"
    nodes = set()
    with sqlite3.connect(out / MANIFEST_NAME) as db:
        for name, report in db.execute("SELECT input, report FROM files WHERE state = 'done'"):
            nodes.update(seg["worker"]["node"] for seg in json.loads(report)["segments"])
    assert len(nodes) == 2  # both nodes did work
    for i in range(6):
        assert rows[f"c{i}.mp4"][:2] == ("done", 1)  # each file joined once, from two segments
        assert _frames(out / f"c{i}.mp4") == _frames(src / f"c{i}.mp4")
    assert not [p for p in out.iterdir() if ".unfinished" in p.name or ".partial-" in p.name]


def test_ray_backend_without_ray_says_what_to_install(folder, tmp_path):
    code = ("import sys, builtins; real = builtins.__import__\n"
            "def imp(name, *a, **k):\n"
            "    if name == 'ray' or name.startswith('ray.'): raise ImportError(name)\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = imp\n"
            "from facestream.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, "batch", str(folder / "clip0.mp4"), "-o", str(tmp_path / "o"),
                           "--backend", "ray", "-q"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "pip install 'facestream[ray]'" in proc.stderr


def test_a_batch_loads_each_model_once(folder, tmp_path, monkeypatch):
    from facestream.batch import Batch, BatchOptions
    from facestream.facelib.models import factory
    from facestream.settings import load_settings

    loads = []
    real = factory._make_detector
    monkeypatch.setattr(factory, "_make_detector", lambda *a, **k: loads.append(1) or real(*a, **k))
    clips = [folder / f"clip{i}.mp4" for i in range(3)]
    settings = load_settings(preset="anonymize", overrides=["stats.progress=none"])
    result = Batch(settings, clips, tmp_path / "out", BatchOptions(jobs=1)).run()
    assert [f.state for f in result.files] == ["done"] * 3
    assert len(loads) == 1  # three pipelines, one detector
    loads.clear()
    result = Batch(settings, clips, tmp_path / "out2", BatchOptions(jobs=2)).run()
    assert [f.state for f in result.files] == ["done"] * 3
    assert 1 <= len(loads) <= 2  # on the CPU, at most a copy per worker
    # Outside a batch each run loads its own (and hands its memory back when it ends).
    assert factory.make_detector(settings.models, torch.device("cpu")) is not factory.make_detector(
        settings.models, torch.device("cpu"))


def test_devices_a_batch_spreads_over(folder, tmp_path):
    from facestream.batch import Batch, BatchOptions
    from facestream.pipeline.device import resolve_devices
    from facestream.settings import load_settings

    assert [str(d) for d in resolve_devices("cuda:all", count=3)] == ["cuda:0", "cuda:1", "cuda:2"]
    with pytest.raises(ConfigError, match="only 2 CUDA"):
        resolve_devices("cuda:0,cuda:5", count=2)
    if not torch.cuda.is_available():
        batch = Batch(load_settings(overrides=["device=cuda:all"]), [folder / "clip0.mp4"], tmp_path / "o",
                      BatchOptions())
        with pytest.raises(ConfigError, match="no CUDA device"):
            batch._spread()


def test_a_swap_that_finds_no_face_is_a_failure_and_writes_nothing(folder, tmp_path):
    source = tmp_path / "astronaut.png"
    cv2.imwrite(str(source), cv2.cvtColor(load_photo("astronaut"), cv2.COLOR_RGB2BGR))
    out = tmp_path / "out"
    proc = run_cli("batch", str(folder / "clip0.mp4"), "-o", str(out), "--source", str(source), "-q", timeout=240)
    assert proc.returncode == 1, proc.stderr
    assert "no face to swap was found" in proc.stderr
    assert _visible(out) == []


def test_a_model_pool_lends_each_copy_to_one_call_at_a_time():
    import threading

    from facestream.facelib.models.shared import Pool

    class Model:
        made = 0

        def __init__(self):
            Model.made += 1
            self.busy = False
            self.source = None

        def set_source(self, name):
            self.source = name

        def run(self):
            assert not self.busy, "one copy ran two calls at once"
            self.busy = True
            time.sleep(0.02)
            self.busy = False
            return self.source

    pool = Pool(Model, copies=3)
    pool.set_source("astronaut")
    results = []
    threads = [threading.Thread(target=lambda: results.extend(pool.run() for _ in range(5))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["astronaut"] * 30  # copies made later were configured too
    assert Model.made == pool.loaded == 3


@pytest.mark.slow
def test_ray_moves_files_through_the_object_store_when_asked(ray_cluster, folder, tmp_path):
    out = tmp_path / "out"
    proc = run_cli("batch", str(folder / "clip0.mp4"), str(folder / "clip1.mp4"), "-o", str(out), "--preset",
                   "anonymize", "--backend", "ray", "--address", ray_cluster.address, "--ray-copy", "-q", timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert _visible(out) == ["clip0.mp4", "clip1.mp4"]
    with sqlite3.connect(out / MANIFEST_NAME) as db:
        for name, report in db.execute("SELECT input, report FROM files"):
            # The worker read a copy it was sent, not the driver's path.
            assert "facestream-ray-" in json.loads(report)["input"]
            assert _frames(out / Path(name).name) == _frames(Path(name))
