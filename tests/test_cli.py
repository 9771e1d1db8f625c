"""The command line, run as a user runs it: in a subprocess."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from tests.conftest import ROOT, run_cli
from tests.media import AUDIO_FRAME_S, av_end_gap, make_clip, probe


def one_error_line(proc):
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("facestream: error:")]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return errors[0]


def test_help_reads_well():
    top = run_cli("--help")
    assert top.returncode == 0
    for command in ("run", "presets", "doctor"):
        assert command in top.stdout
    run = run_cli("run", "--help")
    for option in ("--preset", "--config", "--set", "--stats", "-o OUTPUT", "examples:"):
        assert option in run.stdout


def test_presets_lists_names_with_descriptions():
    proc = run_cli("presets")
    assert proc.returncode == 0
    names = {line.split()[0] for line in proc.stdout.splitlines()}
    assert {"offline", "live", "demo"} <= names
    assert all(len(line.split()) > 3 for line in proc.stdout.splitlines())


def test_doctor_reports_device_codecs_and_encoders():
    text = run_cli("doctor")
    assert text.returncode == 0
    for word in ("device", "CUDA", "NVML", "libx264", "h264_nvenc", "rtsp"):
        assert word in text.stdout
    data = json.loads(run_cli("doctor", "--json").stdout)
    assert data["codecs"]["libx264"] is True
    assert isinstance(data["hardware_encoders"]["h264_nvenc"], bool)
    assert data["encoder_gpu_frames"] is True  # the PyAV the project installs wraps GPU memory as CUDA frames
    assert "PyAV hands them GPU frames" in text.stdout


def test_run_writes_output_and_stats(tmp_path, clip):
    src = clip("cli.mp4", seconds=2, fps=25)
    out, stats = tmp_path / "out.mkv", tmp_path / "stats.json"
    proc = run_cli("run", str(src), "-o", str(out), "--stats", str(stats), "--set", "output.preset=ultrafast")
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stderr and "50 frames" in proc.stderr
    data = json.loads(stats.read_text())
    assert data["frames_in"] == data["frames_out"] == 50 and data["frames_dropped"] == 0
    assert data["wall_s"] > 0 and data["fps"] > 0
    assert {"decoder", "passthrough", "encoder"} <= data["stages"].keys()
    for stage in data["stages"].values():
        assert {"fps", "p50_ms", "p95_ms", "max_ms", "busy"} <= stage.keys()
    assert probe(out).frames == 50


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    good = make_clip(d / "good.mp4", seconds=3, fps=25)
    (d / "truncated.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (d / "notes.txt").write_text("this is not a video\n" * 50)
    audio_only = d / "tone.m4a"
    import av

    with av.open(str(audio_only), "w") as c:
        s = c.add_stream("aac", rate=48000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 48000), np.float32), format="flt", layout="mono")
        frame.sample_rate = 48000
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return d


@pytest.mark.parametrize(
    "name, extra, expected, code",
    [
        ("missing.mp4", [], "input not found: ", 1),
        ("truncated.mp4", [], "truncated", 1),
        ("notes.txt", [], "not a video file", 1),
        ("tone.m4a", [], "no video stream", 1),
        ("good.mp4", ["--set", "flow.queue_sise=4"], "unknown key 'queue_sise'", 2),
        ("good.mp4", ["--set", "output.crf=high"], "at output.crf: expected an integer, got 'high'", 2),
        ("good.mp4", ["--preset", "turbo"], "no preset named 'turbo'", 2),
        ("good.mp4", ["--device", "cuda:7"], "device 'cuda:7'", 2),
    ],
)
def test_bad_input_gives_one_line_and_nonzero_exit(bad_inputs, tmp_path, name, extra, expected, code):
    out = tmp_path / "out.mp4"
    proc = run_cli("run", str(bad_inputs / name), "-o", str(out), "-q", *extra)
    assert proc.returncode == code
    assert expected in one_error_line(proc)
    assert not out.exists()


def test_bad_output_path(clip, tmp_path):
    src = clip("cli.mp4", seconds=2, fps=25)
    for out, words in ((tmp_path / "x.avi", "output must end in"), (tmp_path / "no" / "x.mp4", "output folder does not exist")):
        proc = run_cli("run", str(src), "-o", str(out), "-q")
        assert proc.returncode != 0 and words in one_error_line(proc)


def test_file_cut_mid_stream_keeps_the_frames_read(tmp_path):
    good = make_clip(tmp_path / "fs.mp4", seconds=6, fps=25, faststart=True, audio=None)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size * 2 // 3])
    out = tmp_path / "out.mp4"
    proc = run_cli("run", str(cut), "-o", str(out), "-q")
    assert proc.returncode == 1
    line = one_error_line(proc)
    assert "stage 'decoder'" in line and "truncated" in line
    frames = probe(out).frames
    assert 30 < frames < 150


def test_stage_raising_mid_run_exits_nonzero_with_a_playable_output(tmp_path, clip):
    src = clip("cli.mp4", seconds=2, fps=25)
    out = tmp_path / "out.mp4"
    script = textwrap.dedent(
        f"""
        import sys
        from facestream.stages.passthrough import PassThrough
        original = PassThrough.process
        def process(self, frames):
            if any(f.index == 30 for f in frames):
                raise ValueError("bad pixels")
            return original(self, frames)
        PassThrough.process = process
        from facestream.cli import main
        sys.exit(main(["run", {str(src)!r}, "-o", {str(out)!r}, "-q"]))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 1
    assert "stage 'passthrough' at frame 30 failed: ValueError: bad pixels" in one_error_line(proc)
    p = probe(out)
    assert p.frames == 30 and p.audio_streams == ["aac"]
    assert av_end_gap(p, 25) <= 1 / 25 + AUDIO_FRAME_S, "audio and video end together"


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_flushes_and_finalises(tmp_path, clip, sig, code):
    src = clip("long.mp4", seconds=20, fps=25)
    out, stats = tmp_path / "out.mp4", tmp_path / "stats.json"
    proc = _interrupted_run(src, out, stats, [sig])
    rest = proc.stderr.read()
    assert proc.wait(timeout=30) == code
    assert "Traceback" not in rest
    data = json.loads(stats.read_text())
    assert data["status"] == "interrupted" and data["signal"] == signal.Signals(sig).name
    assert data["frames_out"] + data["frames_dropped_on_stop"] == data["frames_in"], "every frame is accounted for"
    p = probe(out)
    assert 25 <= p.frames == data["frames_out"] < 400
    assert p.audio_streams == ["aac"]
    assert av_end_gap(p, 25) <= 1 / 25 + AUDIO_FRAME_S, "audio and video end together"


def test_second_interrupt_aborts_and_audio_still_ends_with_the_video(tmp_path, clip):
    src = clip("long.mp4", seconds=20, fps=25)
    out, stats = tmp_path / "out.mp4", tmp_path / "stats.json"
    # A slow stage keeps frames queued, and holds the first interrupt's finish up long enough for
    # the second to come while it works.
    proc = _interrupted_run(src, out, stats, [signal.SIGINT, signal.SIGINT], "--set", "flow.queue_size=30",
                            "--set", "input.realtime=false", slow_s=1.0)
    proc.stderr.read()
    assert proc.wait(timeout=30) == 130
    data = json.loads(stats.read_text())
    assert data["status"] == "interrupted" and data["frames_out"] < data["frames_in"]
    p = probe(out)
    assert p.frames == data["frames_out"] > 0
    assert av_end_gap(p, 25) <= 1 / 25 + AUDIO_FRAME_S, "audio and video end together"


def test_a_finished_run_ends_audio_with_the_video(tmp_path, clip):
    src = clip("long.mp4", seconds=20, fps=25)
    out = tmp_path / "out.mp4"
    proc = run_cli("run", str(src), "-o", str(out), "-q", "--set", "input.end=3.3", "--set", "output.preset=ultrafast")
    assert proc.returncode == 0, proc.stderr
    p = probe(out)
    assert p.frames == 83 and av_end_gap(p, 25) <= 1 / 25 + AUDIO_FRAME_S


def _interrupted_run(src, out, stats, signals, *extra, slow_s=0.0):
    """``facestream run`` in a subprocess (paced in real time by default), interrupted once frames flow."""
    script = textwrap.dedent(f"""
        import sys, time
        from facestream.stages.passthrough import PassThrough
        original = PassThrough.process
        def process(self, frames):
            time.sleep({slow_s})
            return original(self, frames)
        PassThrough.process = process
        from facestream.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", script, "run", str(src), "-o", str(out), "--stats", str(stats),
         "--set", "input.realtime=true", "--set", "stats.progress=lines", "--set", "stats.interval_s=0.2", *extra],
        stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )
    # Wait until frames are flowing (a status line appears), then interrupt.
    deadline = time.monotonic() + 60
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if "fps" in line:
            break
    time.sleep(1.0)
    for k, sig in enumerate(signals):
        if k:
            time.sleep(0.2)
        proc.send_signal(sig)
    return proc


def test_memory_stays_flat_over_a_long_video(tmp_path):
    short = make_clip(tmp_path / "short.mp4", seconds=12, fps=25, size=(320, 240))
    long = make_clip(tmp_path / "long.mp4", seconds=120, fps=25, size=(320, 240))
    peaks = {}
    for name, src in (("short", short), ("long", long)):
        stats = tmp_path / f"{name}.json"
        proc = run_cli("run", str(src), "-o", str(tmp_path / f"{name}_out.mp4"), "-q", "--stats", str(stats),
                       "--set", "output.preset=ultrafast", timeout=300)
        assert proc.returncode == 0, proc.stderr
        data = json.loads(stats.read_text())
        assert data["frames_out"] == {"short": 300, "long": 3000}[name]
        peaks[name] = data["peak_rss_mb"]
    print(f"peak RSS: 300 frames {peaks['short']:.1f} MiB, 3000 frames {peaks['long']:.1f} MiB")
    assert peaks["long"] <= 1.10 * peaks["short"]


def test_the_input_may_stand_anywhere_among_the_options():
    from facestream.cli import build_parser

    args = build_parser().parse_args(["run", "--preset", "swap", "--source", "a.png", "clip.mp4", "-o", "out.mp4",
                                      "--source", "b.png", "--map", "t.png=s.png"])
    assert args.input == ["clip.mp4"] and args.source == ["a.png", "b.png"] and args.map == ["t.png=s.png"]


def _start_run(src, out, *extra):
    """``facestream run`` in the background, paced in real time; returns once frames flow."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "facestream", "run", str(src), "-o", str(out), "--set", "stats.progress=lines",
         "--set", "stats.interval_s=0.2", *extra],
        stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "fps" not in proc.stderr.readline():
        pass
    return proc


def test_an_existing_output_is_kept_unless_overwrite_is_asked(tmp_path, clip):
    src = clip("cli.mp4", seconds=2, fps=25)
    out = tmp_path / "out.mp4"
    out.write_bytes(b"precious")
    proc = run_cli("run", str(src), "-o", str(out), "-q")
    assert proc.returncode == 1 and "exists; add -y (--overwrite)" in one_error_line(proc)
    assert out.read_bytes() == b"precious"
    proc = run_cli("run", str(src), "-o", str(out), "-q", "-y")
    assert proc.returncode == 0 and probe(out).frames == 50


def test_a_second_run_on_the_same_output_fails_at_once_and_readers_never_see_half_a_file(tmp_path, clip):
    src = clip("long.mp4", seconds=20, fps=25)
    out = tmp_path / "out.mp4"
    first = _start_run(src, out, "--set", "input.realtime=true", "--set", "input.live=false")
    try:
        assert not out.exists(), "the output appears only once finalised"
        assert list(tmp_path.glob(".out.mp4.partial-*.mp4")), "it is written beside it under a hidden name"
        t = time.monotonic()
        second = run_cli("run", str(src), "-o", str(out), "-q", "-y")
        assert time.monotonic() - t < 10
        assert second.returncode == 1 and "is being written by another run" in one_error_line(second)
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(timeout=30)
    assert first.returncode == 130 and probe(out).frames > 0
    assert not list(tmp_path.glob(".out.mp4*")), "no partial file or lock is left behind"


def test_kill_9_never_destroys_an_existing_output(tmp_path, clip):
    src = clip("long.mp4", seconds=20, fps=25)
    out = tmp_path / "out.mp4"
    out.write_bytes(b"precious")
    proc = _start_run(src, out, "-y", "--set", "input.realtime=true", "--set", "input.live=false")
    proc.kill()
    proc.wait(timeout=30)
    assert out.read_bytes() == b"precious"


def test_kill_9_of_a_live_run_leaves_a_playable_recording(tmp_path, clip):
    """Live input (a file paced as a live feed here): fragmented MP4 written in place."""
    src = clip("long.mp4", seconds=20, fps=25)
    out = tmp_path / "live.mp4"
    proc = _start_run(src, out, "--set", "input.realtime=true")
    time.sleep(3.0)
    proc.kill()
    proc.wait(timeout=30)
    p = probe(out)
    assert p.frames >= 25, "everything up to the last fragment plays"


def test_the_live_preset_on_a_file_paces_it_instead_of_dropping_frames(tmp_path, clip):
    src = clip("cli.mp4", seconds=2, fps=25)
    out, stats = tmp_path / "out.mp4", tmp_path / "s.json"
    proc = run_cli("run", str(src), "-o", str(out), "--preset", "live", "-q", "--stats", str(stats))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("paces it in real time") == 1
    data = json.loads(stats.read_text())
    assert data["frames_dropped"] == 0 and data["frames_out"] == 50
    assert data["wall_s"] >= 1.8, "paced at the clip's own speed"
    assert probe(out).frames == 50


def test_model_loading_is_announced(tmp_path, clip):
    src = clip("cli.mp4", seconds=2, fps=25)
    proc = run_cli("run", str(src), "-o", str(tmp_path / "a.mp4"), "--preset", "anonymize",
                   "--set", "stats.progress=none")
    assert proc.returncode == 0 and "loading the models (builtin pack)" in proc.stderr



def test_cpu_runs_leave_cores_to_the_stages(tmp_path, clip):
    """On a CPU, torch's intra-op threads default to half the cores (stages already run side by
    side); an explicit ``threads`` wins."""
    import torch

    from facestream.app import prepare_job
    from facestream.pipeline.device import cpu_threads
    from facestream.settings import load_settings

    src = clip("cli.mp4", seconds=2, fps=25)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(7)
        job = prepare_job(load_settings(overrides=["device=cpu"]), source=str(src), output=str(tmp_path / "a.mp4"))
        job.pipeline.stages[-1].release()
        assert torch.get_num_threads() == cpu_threads() == max(1, (os.cpu_count() or 1) // 2)
        job = prepare_job(load_settings(overrides=["device=cpu", "threads=3"]), source=str(src),
                          output=str(tmp_path / "b.mp4"))
        job.pipeline.stages[-1].release()
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
