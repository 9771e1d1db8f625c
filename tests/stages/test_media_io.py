"""Decoder and encoder on real files, through the real runtime."""

from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch

from facestream.pipeline.runner import Pipeline
from facestream.stages.decoder import Decoder, DecoderSettings
from facestream.stages.encoder import Encoder, EncoderSettings
from facestream.facelib.media.colour import i420_to_rgb, i420_to_rgb_numpy, rgb_to_i420, rgb_to_i420_numpy
from facestream.stages.passthrough import PassThrough
from tests.conftest import all_supported_devices
from tests.media import flash_times, make_clip, probe

CPU = torch.device("cpu")
AAC_FRAME = 1024 / 48000
MARKERS = (1.0, 2.52, 3.6)


def run(src, out, device="cpu", **decoder_kwargs):
    enc_kwargs = decoder_kwargs.pop("encoder", {})
    report = Pipeline(
        [Decoder(DecoderSettings(**decoder_kwargs), source=str(src)), PassThrough(),
         Encoder(EncoderSettings(**{"preset": "ultrafast", **enc_kwargs}), path=str(out))],
        device=torch.device(device),
        queue_size=4,
    ).run()
    assert report.status == "ok", report.error
    return report


@pytest.mark.parametrize(
    "ext, video_codec, audio_codec, mode",
    [
        (".mp4", "h264", "aac", "copy"),
        (".mkv", "h264", "aac", "copy"),
        (".mov", "h264", "aac", "copy"),
        (".webm", "vp9", "opus", "reencode"),
    ],
)
def test_round_trip_keeps_frames_pts_and_audio(tmp_path, clip, ext, video_codec, audio_codec, mode):
    src = clip("marked.mp4", seconds=4, fps=25, markers=MARKERS)
    out = tmp_path / f"out{ext}"
    report = run(src, out)
    a, b = probe(src, markers=True), probe(out, markers=True)
    assert b.frames == a.frames == 100
    assert b.video_times == pytest.approx(a.video_times, abs=1e-3)
    assert b.video_codec == video_codec
    assert b.audio_streams == [audio_codec]
    assert report.stats["stages"]["encoder"]["audio_streams"][0]["mode"] == mode
    assert b.audio_duration == pytest.approx(a.audio_duration, abs=AAC_FRAME)
    assert b.beep_times == pytest.approx(a.beep_times, abs=AAC_FRAME)
    assert flash_times(b) == pytest.approx(flash_times(a), abs=1e-3)


@pytest.mark.parametrize("ext", [".mp4", ".webm"])
def test_trim_keeps_audio_aligned_and_the_same_length(tmp_path, clip, ext):
    src = clip("marked.mp4", seconds=4, fps=25, markers=MARKERS)
    out = tmp_path / f"trim{ext}"
    run(src, out, start=1.7, end=3.9)
    p = probe(out, markers=True)
    # Frames 1.72 .. 3.88 (the first frame at or after 1.7 s), re-timed from the trim start.
    assert p.frames == 55
    assert p.video_times[0] == pytest.approx(0.02, abs=1e-3)
    video_span = p.video_times[-1] + 0.04
    assert p.audio_duration == pytest.approx(video_span - p.audio_start, abs=AAC_FRAME)
    # The markers at 2.52 and 3.6 s sit at 0.82 and 1.9 s in both picture and sound.
    assert flash_times(p) == pytest.approx([0.82, 1.9], abs=1e-3)
    assert p.beep_times == pytest.approx([0.82, 1.9], abs=AAC_FRAME)


def test_every_audio_stream_is_carried(tmp_path, clip):
    src = clip("two_audio.mov", seconds=2, audio=("aac", "pcm_s16le"), markers=(1.0,))
    out = tmp_path / "out.mp4"
    report = run(src, out)
    assert probe(out).audio_streams == ["aac", "aac"]
    modes = [s["mode"] for s in report.stats["stages"]["encoder"]["audio_streams"]]
    assert modes == ["copy", "reencode"]  # mp4 takes AAC as is; PCM is re-encoded
    with av.open(str(out)) as c:
        durations = [float(s.duration * s.time_base) for s in c.streams.audio]
    assert durations[0] == pytest.approx(durations[1], abs=AAC_FRAME)


def test_audio_none_writes_video_only(tmp_path, clip):
    src = clip("marked.mp4", seconds=4, fps=25, markers=MARKERS)
    out = tmp_path / "silent.mp4"
    run(src, out, encoder={"audio": "none"})
    assert probe(out).audio_streams == []


def test_variable_frame_rate_and_rotation_survive(tmp_path):
    src = make_clip(tmp_path / "vfr.mkv", seconds=3, fps=25, vfr=True, rotation=90, audio=None)
    out = tmp_path / "vfr_out.mp4"
    run(src, out)
    a, b = probe(src), probe(out)
    assert len(set(np.round(np.diff(a.video_times), 3))) == 2, "the source really is VFR"
    assert b.video_times == pytest.approx(a.video_times, abs=1e-3)
    assert b.rotation == 90


@pytest.mark.parametrize("codec, family", [("libx265", "hevc"), ("libvpx-vp9", "vp9")])
def test_other_encoders(tmp_path, clip, codec, family):
    src = clip("marked.mp4", seconds=4, fps=25, markers=MARKERS)
    out = tmp_path / "out.mkv"
    run(src, out, end=1.0, encoder={"codec": codec, "crf": 30})
    p = probe(out)
    assert p.video_codec == family and p.frames == 25


def test_nvenc_request_falls_back_to_libx264_with_one_warning(tmp_path, clip, caplog):
    from facestream.stages.encoder import hardware_encoder_opens

    if hardware_encoder_opens("h264_nvenc"):
        pytest.skip("this machine has a working NVENC")
    src = clip("marked.mp4", seconds=4, fps=25, markers=MARKERS)
    out = tmp_path / "out.mp4"
    with caplog.at_level("WARNING"):
        report = run(src, out, end=0.5, encoder={"codec": "h264_nvenc"})
    assert report.stats["stages"]["encoder"]["codec"] == "libx264"
    assert sum("h264_nvenc does not open" in r.message for r in caplog.records) == 1
    assert probe(out).video_codec == "h264"


@pytest.mark.needs_cuda
def test_nvenc_takes_frames_from_gpu_memory_with_audio_and_picture_kept(tmp_path, clip):
    from facestream.stages.encoder import hardware_encoder_opens

    if not hardware_encoder_opens("h264_nvenc"):
        pytest.skip("this GPU has no NVENC (data-centre GPUs such as the H100 and H200)")
    src = clip("marked.mp4", seconds=4, fps=25, markers=MARKERS)
    out = tmp_path / "nvenc.mp4"
    report = run(src, out, device="cuda", encoder={"codec": "h264_nvenc", "crf": 0})
    enc = report.stats["stages"]["encoder"]
    assert enc["codec"] == "h264_nvenc" and enc["frames_from"] == "device"
    a, b = probe(src, markers=True), probe(out, markers=True)
    assert b.frames == a.frames == 100 and b.audio_streams == ["aac"]
    assert flash_times(b) == pytest.approx(flash_times(a), abs=1e-3)
    with av.open(str(src)) as x, av.open(str(out)) as y:
        for fa, fb in zip(x.decode(video=0), y.decode(video=0)):
            mse = np.mean((fa.to_ndarray(format="rgb24").astype(np.float64) - fb.to_ndarray(format="rgb24")) ** 2)
            assert 10 * np.log10(255**2 / max(mse, 1e-9)) > 40


@pytest.mark.needs_cuda
def test_nvenc_settings_it_refuses_send_frames_through_host_memory_with_one_warning(caplog):
    from facestream.stages.encoder import encoder_takes_device_frames, hardware_encoder_opens

    if not hardware_encoder_opens("h264_nvenc"):
        pytest.skip("this GPU has no NVENC (data-centre GPUs such as the H100 and H200)")
    assert encoder_takes_device_frames("h264_nvenc", 640, 360, (("preset", "p4"),), 0)
    with caplog.at_level("WARNING"):
        assert not encoder_takes_device_frames("h264_nvenc", 640, 360, (("profile", "no-such-profile"),), 0)
    assert sum("does not take frames from GPU memory" in r.getMessage() for r in caplog.records) == 1


def test_pixels_survive_a_decode_encode_round_trip(tmp_path, clip):
    src = clip("marked.mp4", seconds=4, fps=25, markers=MARKERS)
    out = tmp_path / "hq.mp4"
    run(src, out, end=1.0, encoder={"crf": 0})
    with av.open(str(src)) as a, av.open(str(out)) as b:
        fa = [f.to_ndarray(format="rgb24") for f in a.decode(video=0)][:25]
        fb = [f.to_ndarray(format="rgb24") for f in b.decode(video=0)][:25]
    assert len(fa) == len(fb) == 25
    for x, y in zip(fa, fb, strict=True):
        mse = np.mean((x.astype(np.float64) - y) ** 2)
        assert 10 * np.log10(255**2 / max(mse, 1e-9)) > 40


def test_still_image_is_looped_for_the_duration(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (121, 161, 3), np.uint8)  # odd size on purpose
    path = tmp_path / "still.png"
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    out = tmp_path / "still.mp4"
    run(path, out, image_duration_s=2.0, image_fps=10)
    p = probe(out)
    assert p.frames == 20 and (p.width, p.height) == (160, 120)
    assert p.video_times[-1] == pytest.approx(1.9)


def test_image_folder_and_pattern(tmp_path):
    folder = tmp_path / "seq"
    folder.mkdir()
    for i in range(7):
        img = np.full((48, 64, 3), i * 30, np.uint8)
        cv2.imwrite(str(folder / f"f{i:03d}.png"), img)
    for source in (folder, folder / "f%03d.png"):
        out = tmp_path / "seq.mp4"
        run(source, out, image_fps=7)
        p = probe(out, markers=True)
        assert p.frames == 7
        assert np.all(np.diff(p.frame_means) > 20), "frames come in name order"


@pytest.mark.parametrize("device", all_supported_devices())
def test_colour_conversions_match_opencv_bit_for_bit(device):
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (36, 50, 3), np.uint8)
    i420 = rng.integers(0, 256, (54, 50), np.uint8)
    t_rgb = torch.from_numpy(rgb).to(device)
    t_i420 = torch.from_numpy(i420).to(device)
    assert np.array_equal(rgb_to_i420(t_rgb).cpu().numpy(), rgb_to_i420_numpy(rgb))
    assert np.array_equal(i420_to_rgb(t_i420).cpu().numpy(), i420_to_rgb_numpy(i420))


@pytest.mark.needs_cuda
def test_cuda_run_matches_cpu_run(tmp_path, clip):
    src = clip("marked.mp4", seconds=4, fps=25, markers=MARKERS)
    run(src, tmp_path / "cpu.mp4", end=1.0, encoder={"crf": 0})
    run(src, tmp_path / "cuda.mp4", device="cuda", end=1.0, encoder={"crf": 0})
    with av.open(str(tmp_path / "cpu.mp4")) as a, av.open(str(tmp_path / "cuda.mp4")) as b:
        fa = [f.to_ndarray() for f in a.decode(video=0)]
        fb = [f.to_ndarray() for f in b.decode(video=0)]
    assert len(fa) == len(fb) == 25, "both runs wrote the whole trimmed second"
    for x, y in zip(fa, fb, strict=True):
        assert np.array_equal(x, y)


def test_colour_metadata_is_carried(tmp_path):
    """A BT.709-tagged source keeps its primaries, transfer and matrix tags (range: limited)."""
    src = tmp_path / "bt709.mp4"
    with av.open(str(src), "w") as out:
        vs = out.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = 160, 120, "yuv420p"
        cc = vs.codec_context
        cc.color_primaries, cc.color_trc, cc.colorspace, cc.color_range = 1, 1, 1, 1
        for i in range(10):
            frame = av.VideoFrame.from_ndarray(np.full((120, 160, 3), 20 * i, np.uint8), format="rgb24")
            frame.pts = i
            for p in vs.encode(frame):
                out.mux(p)
        for p in vs.encode(None):
            out.mux(p)
    out_path = tmp_path / "out.mkv"
    run(src, out_path)
    with av.open(str(out_path)) as c:
        f = next(c.decode(video=0))
        assert (f.color_primaries, f.color_trc, f.colorspace) == (1, 1, 1)
        assert f.color_range == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_nvdec_asked_for_where_it_cannot_serve_decodes_in_software(clip, tmp_path, caplog):
    src = clip("nvdec.mp4", seconds=1.0)
    out = tmp_path / "o.mkv"
    dec = Decoder(DecoderSettings(hwaccel="cuda"), source=str(src))
    with caplog.at_level("WARNING"):
        report = Pipeline([dec, PassThrough(), Encoder(EncoderSettings(preset="ultrafast"), path=str(out))],
                          device="cpu").run()
    assert report.status == "ok" and report.stats["frames_out"] == 25
    warnings = [r.getMessage() for r in caplog.records if "decoding on the CPU" in r.getMessage()]
    assert warnings == ["input: input.hwaccel cuda needs a CUDA run (device is cpu); decoding on the CPU"]


def test_nvenc_constant_quality_and_lossless_options():
    from facestream.stages.encoder import _codec_options

    cq = _codec_options("h264_nvenc", 23, "veryfast", None)
    assert cq["rc"] == "vbr" and cq["cq"] == "23" and cq["b"] == "0"  # no bitrate cap on constant quality
    assert _codec_options("hevc_nvenc", 0, "medium", None) == {"preset": "p4", "tune": "lossless"}
    assert _codec_options("h264_nvenc", 20, "ultrafast", "zerolatency")["tune"] == "ull"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs NVENC to fail to open")
def test_nvenc_that_passes_the_probe_but_fails_with_the_real_settings_falls_back_at_once(clip, tmp_path, monkeypatch,
                                                                                           caplog):
    from facestream.stages import encoder as encoder_module

    if "h264_nvenc" not in av.codecs_available:
        pytest.skip("this FFmpeg has no NVENC")
    # The probe says yes (as on a GPU whose NVENC takes 256x256); the real open fails here (no GPU).
    monkeypatch.setattr(encoder_module, "hardware_encoder_opens", lambda codec: True)
    src = clip("nvenc.mp4", seconds=1.0)
    out = tmp_path / "o.mp4"
    enc = Encoder(EncoderSettings(codec="h264_nvenc", preset="ultrafast"), path=str(out))
    with caplog.at_level("WARNING"):
        report = Pipeline([Decoder(source=str(src)), PassThrough(), enc], device="cpu").run()
    assert report.status == "ok" and enc.codec_used == "libx264"
    assert any("h264_nvenc does not open for this output" in r.getMessage() for r in caplog.records)
    assert probe(out).frames == 25
