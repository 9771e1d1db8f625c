import pytest

from facestream.pipeline.errors import InputError
from facestream.facelib.media.inputs import resolve_input


@pytest.mark.parametrize(
    "source, kind, target, fmt, live",
    [
        ("webcam:0", "webcam", "/dev/video0", "v4l2", True),
        ("/dev/video3", "webcam", "/dev/video3", "v4l2", True),
        ("rtsp://cam.local:554/stream", "stream", "rtsp://cam.local:554/stream", None, True),
        ("rtmp://live.example/app/key", "stream", "rtmp://live.example/app/key", None, True),
        ("srt://10.0.0.2:9000?mode=caller", "stream", "srt://10.0.0.2:9000?mode=caller", None, True),
        ("udp://239.0.0.1:1234", "stream", "udp://239.0.0.1:1234", None, True),
        ("https://cdn.example/show/index.m3u8", "stream", "https://cdn.example/show/index.m3u8", None, False),
    ],
)
def test_urls_and_devices(source, kind, target, fmt, live):
    spec = resolve_input(source)
    assert (spec.kind, spec.target, spec.format, spec.live) == (kind, target, fmt, live)


def test_local_paths(tmp_path):
    video = tmp_path / "clip.mkv"
    video.write_bytes(b"x")
    still = tmp_path / "face.JPG"
    still.write_bytes(b"x")
    folder = tmp_path / "frames"
    folder.mkdir()
    for name in ("b.png", "a.png", "notes.txt"):
        (folder / name).write_bytes(b"x")
    assert resolve_input(str(video)).kind == "file"
    assert resolve_input(f"file://{video}").target == str(video)
    assert resolve_input(str(still)).kind == "image"
    spec = resolve_input(str(folder))
    assert spec.kind == "images" and [p.rsplit("/", 1)[1] for p in spec.paths] == ["a.png", "b.png"]
    assert resolve_input(str(folder / "f%04d.png")).kind == "pattern"


@pytest.mark.parametrize("source, words", [("missing.mp4", "input not found"), ("gopher://x", "unsupported input URL scheme"),
                                           ("nowhere/%03d.png", "input folder not found")])
def test_bad_inputs(source, words):
    with pytest.raises(InputError, match=words):
        resolve_input(source)


def test_empty_folder(tmp_path):
    with pytest.raises(InputError, match="holds no images"):
        resolve_input(str(tmp_path))


def test_a_folder_of_videos_points_to_batch(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"")
    with pytest.raises(InputError, match="is a folder of videos: 'facestream batch"):
        resolve_input(str(tmp_path))
