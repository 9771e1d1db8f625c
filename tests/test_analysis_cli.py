"""Face analysis through the command line: the faces export, the insightface pack, model errors."""

import json

import pytest

from facestream.scenes import demo_scene
from tests import modelgen
from tests.conftest import run_cli
from tests.media import probe


@pytest.fixture(scope="module")
def demo_clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("demo") / "demo.mp4"
    truth = demo_scene(path, seconds=3.0)
    return path, truth


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    d = tmp_path_factory.mktemp("models") / "buffalo_l"
    d.mkdir()
    modelgen.make_scrfd(d / "det_10g.onnx", scale="tiny", seed=1)
    modelgen.make_landmark_2d106(d / "2d106det.onnx", seed=2)
    modelgen.make_arcface(d / "w600k_r50.onnx", seed=4)
    modelgen.make_inswapper(d / "inswapper_128.onnx", scale="tiny", seed=6)
    return d


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("preset", ["offline", "analyze"])
def test_faces_jsonl_from_any_preset(tmp_path, demo_clip, preset):
    clip, truth = demo_clip
    out, faces = tmp_path / "out.mp4", tmp_path / "faces.jsonl"
    proc = run_cli("run", str(clip), "-o", str(out), "--preset", preset, "--faces-jsonl", str(faces), "-q")
    assert proc.returncode == 0, proc.stderr
    lines = read_jsonl(faces)
    assert [line["frame"] for line in lines] == list(range(75)) == list(range(probe(out).frames))
    assert lines[10]["pts"] == pytest.approx(0.4)
    counts = [len(line["faces"]) for line in lines]
    assert min(counts) >= 3 and sum(counts) / len(counts) >= 4  # the crossing portrait hides some at times
    face = lines[0]["faces"][0]
    assert set(face) >= {"box", "score", "kps", "track_id", "identity"}
    assert len(face["box"]) == 4 and len(face["kps"]) == 5 and 0 <= face["score"] <= 1


def test_detecting_every_third_frame(tmp_path, demo_clip):
    clip, _ = demo_clip
    faces = tmp_path / "faces.jsonl"
    proc = run_cli("run", str(clip), "-o", str(tmp_path / "o.mp4"), "--preset", "analyze", "--faces-jsonl", str(faces),
                   "--set", "detector.every=3", "-q", "--stats", str(tmp_path / "s.json"))
    assert proc.returncode == 0, proc.stderr
    stats = json.loads((tmp_path / "s.json").read_text())
    assert stats["stages"]["detector"]["detected_frames"] == 25
    lines = read_jsonl(faces)
    assert all(line["faces"] for line in lines[::3])


def test_insightface_pack_end_to_end(tmp_path, demo_clip, pack):
    clip, _ = demo_clip
    out, faces, stats = tmp_path / "out.mp4", tmp_path / "faces.jsonl", tmp_path / "s.json"
    proc = run_cli("run", str(clip), "-o", str(out), "--preset", "analyze", "--faces-jsonl", str(faces),
                   "--set", "models.pack=insightface", "--set", f"models.dir={pack}", "--set", "embedder.enabled=always",
                   "--stats", str(stats), "-q")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(stats.read_text())
    assert {"detector", "landmarker", "embedder"} <= data["stages"].keys()
    # Embeddings are computed per track (new tracks, then now and then), not for every face.
    emb = data["stages"]["embedder"]
    assert 0 < emb["embedded"] < 0.5 * data["stages"]["detector"]["faces_found"]
    assert emb["faces"] >= data["stages"]["detector"]["faces_found"] * 0.8
    assert len(read_jsonl(faces)) == probe(out).frames == 75


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--set", "models.dir=EMPTY"], "detector model det_10g.onnx (pack buffalo_l) not found; looked in:"),
        (["--set", "models.detector=SWAPPER"], "is not an SCRFD detector: it takes target[1,3,128,128]"),
        (["--set", "models.engine=tensorflow"], "at models.engine: expected one of 'auto', 'torch', 'onnxruntime'"),
        (["--set", "detector.every=0"], "at detector.every: must be >= 1, got 0"),
    ],
)
def test_model_errors_are_one_line(tmp_path, demo_clip, pack, extra, words):
    clip, _ = demo_clip
    (tmp_path / "empty").mkdir()
    extra = [e.replace("EMPTY", str(tmp_path / "empty")).replace("SWAPPER", str(pack / "inswapper_128.onnx")) for e in extra]
    out = tmp_path / "out.mp4"
    proc = run_cli("run", str(clip), "-o", str(out), "--preset", "analyze", "--set", "models.pack=insightface",
                   *(["--set", f"models.dir={pack}"] if "models.dir=" not in " ".join(extra) else []), *extra, "-q",
                   env={"HOME": str(tmp_path)})
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("facestream: error:")]
    assert len(errors) == 1 and words in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


def test_doctor_lists_packs_and_files(pack):
    proc = run_cli("doctor", "--models-dir", str(pack.parent))
    assert proc.returncode == 0
    assert "builtin pack  ready" in proc.stdout
    assert f"buffalo_l     3/4 files  in {pack}" in proc.stdout
    assert f"swapper       {pack / 'inswapper_128.onnx'}" in proc.stdout
