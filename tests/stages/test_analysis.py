"""Face analysis against insightface's own reference classes, on generated models with the real
tensor signatures, and the builtin pack on real photos."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from insightface.model_zoo import get_model
from insightface.utils import face_align

from facestream.pipeline.errors import ModelError
from facestream.facelib.face import Face
from facestream.facelib.models.factory import ModelSettings, make_detector, make_landmarker, make_recognizer
from facestream.facelib.models.insightface_pack import ArcFaceModel, EngineOptions, LandmarkModel, ScrfdDetector
from facestream.facelib.ops.align import estimate_norm, template, warp_faces, warp_faces_torch
from facestream.facelib.ops.detection import nms
from facestream.facelib.ops.image import letterbox
from facestream.scenes import load_photo
from tests import modelgen
from tests.insightface_ref import CPU, RefFace, bgr

ENGINES = ["onnxruntime", "torch"]


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    """A buffalo_l-shaped folder of generated models."""
    d = tmp_path_factory.mktemp("buffalo_l")
    modelgen.make_scrfd(d / "det_10g.onnx", scale="tiny", seed=1)
    modelgen.make_landmark_2d106(d / "2d106det.onnx", seed=2)
    modelgen.make_landmark_3d68(d / "1k3d68.onnx", seed=3)
    modelgen.make_arcface(d / "w600k_r50.onnx", seed=4)
    modelgen.make_arcface(d / "mxnet_arcface.onnx", seed=5, mxnet_style=True)
    modelgen.make_inswapper(d / "inswapper_128.onnx", scale="tiny", seed=6)
    return d


def photos():
    """Eight different pictures (real photos, crops, flips, rescales) for batch-8 runs."""
    group, astro = load_photo("group"), load_photo("astronaut")
    out = [group, astro, group[100:700, 200:1100], np.ascontiguousarray(group[:, ::-1]),
           cv2.resize(astro, (300, 300)), group[::2, ::2].copy(), np.ascontiguousarray(astro[:, ::-1]),
           cv2.resize(group, (900, 500))]
    return [np.ascontiguousarray(p) for p in out]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("batch", [1, 8])
def test_scrfd_matches_insightface(pack, engine, batch):
    ref = get_model(str(pack / "det_10g.onnx"), providers=CPU)
    ref.prepare(-1, input_size=(640, 640), det_thresh=0.5, nms_thresh=0.4)
    ours = ScrfdDetector(pack / "det_10g.onnx", EngineOptions(engine=engine))
    images = photos()[:batch]
    got = ours.detect([torch.from_numpy(im) for im in images])
    assert len(got) == batch
    for image, det in zip(images, got):
        boxes, kps = ref.detect(bgr(image), input_size=(640, 640))
        assert len(det.boxes) == len(boxes) > 0
        np.testing.assert_allclose(det.boxes, boxes[:, :4], atol=2e-3)
        np.testing.assert_allclose(det.scores, boxes[:, 4], atol=1e-5)
        np.testing.assert_allclose(det.kps, kps, atol=2e-3)


def test_scrfd_max_faces_and_min_size_follow_insightface(pack):
    ref = get_model(str(pack / "det_10g.onnx"), providers=CPU)
    ref.prepare(-1, input_size=(640, 640), det_thresh=0.5)
    image = load_photo("group")
    boxes, _ = ref.detect(bgr(image), input_size=(640, 640), max_num=5)
    ours = ScrfdDetector(pack / "det_10g.onnx", EngineOptions(), max_faces=5)
    np.testing.assert_allclose(ours.detect([torch.from_numpy(image)])[0].boxes, boxes[:, :4], atol=2e-3)
    big = ScrfdDetector(pack / "det_10g.onnx", EngineOptions(), min_size=60).detect([torch.from_numpy(image)])[0]
    assert len(big.boxes) and np.all(np.minimum(big.boxes[:, 2] - big.boxes[:, 0], big.boxes[:, 3] - big.boxes[:, 1]) >= 60)


def reference_faces(pack, image, n=6):
    ref = get_model(str(pack / "det_10g.onnx"), providers=CPU)
    ref.prepare(-1, input_size=(640, 640), det_thresh=0.5)
    boxes, kps = ref.detect(bgr(image), input_size=(640, 640))
    return [RefFace(bbox=b[:4], kps=k, det_score=b[4]) for b, k in zip(boxes[:n], kps[:n])]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("file", ["2d106det.onnx", "1k3d68.onnx"])
def test_landmarks_match_insightface(pack, engine, file):
    ref = get_model(str(pack / file), providers=CPU)
    ours = LandmarkModel(pack / file, EngineOptions(engine=engine))
    images = photos()
    frames, frame_of, boxes, expected = [], [], [], []
    for i, image in enumerate(images):  # all faces of 8 pictures in one batch
        frames.append(torch.from_numpy(image))
        for face in reference_faces(pack, image, n=3):
            frame_of.append(i)
            boxes.append(face.bbox)
            expected.append(ref.get(bgr(image), face)[:, :2])
    got = ours.predict(frames, frame_of, np.stack(boxes))
    assert got.shape == (len(boxes), ours.count, 2) and len(boxes) >= 16
    # insightface computes the crop scale in float32, we in float64: sub-pixel differences remain.
    np.testing.assert_allclose(got, np.stack(expected), atol=0.1)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("file", ["w600k_r50.onnx", "mxnet_arcface.onnx"])
def test_embeddings_match_insightface(pack, engine, file):
    ref = get_model(str(pack / file), providers=CPU)
    ours = ArcFaceModel(pack / file, EngineOptions(engine=engine))
    frames, frame_of, faces, expected = [], [], [], []
    for i, image in enumerate(photos()):
        frames.append(torch.from_numpy(image))
        for face in reference_faces(pack, image, n=3):
            frame_of.append(i)
            faces.append(Face(box=face.bbox, score=1.0, kps=face.kps))
            e = ref.get(bgr(image), face)
            expected.append(e / np.linalg.norm(e))
    got = ours.embed(frames, frame_of, faces)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert np.min(np.sum(got * np.stack(expected), axis=1)) > 0.99999


def test_aligned_crops_equal_norm_crop(pack):
    image = load_photo("group")
    faces = reference_faces(pack, image)
    kps = np.stack([f.kps for f in faces])
    for size in (112, 128):
        np.testing.assert_allclose(estimate_norm(kps, size), np.stack([face_align.estimate_norm(k, size) for k in kps]),
                                   rtol=1e-5, atol=1e-4)
        ours = warp_faces([torch.from_numpy(image)], [0] * len(faces), estimate_norm(kps, size), size).numpy()
        ref = np.stack([face_align.norm_crop(image, k, size) for k in kps])
        diff = np.abs(ours.astype(int) - ref)
        # The matrices agree to ~5e-7 relative (rounding order); a pixel may then round differently.
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_torch_warp_and_letterbox_agree_with_the_cpu_paths(pack):
    """The CUDA code paths, run on the CPU: grid_sample warps and interpolate letterboxing."""
    images = [torch.from_numpy(p) for p in photos()[:3]]
    faces = [(i, f) for i, im in enumerate(photos()[:3]) for f in reference_faces(pack, im, n=3)]
    frame_of = [i for i, _ in faces]
    m = estimate_norm(np.stack([f.kps for _, f in faces]), 112)
    a = warp_faces(images, frame_of, m, 112).numpy().astype(int)
    b = warp_faces_torch(images, frame_of, m, 112).numpy().astype(int)
    diff = np.abs(a - b)
    assert diff.mean() < 0.5 and np.percentile(diff, 99.9) <= 2  # cv2 interpolates in 1/32 steps
    blob_cv, s_cv = letterbox(images, (640, 640), use_torch=False)
    blob_t, s_t = letterbox(images, (640, 640), use_torch=True)
    assert s_cv == s_t
    d = (blob_cv - blob_t).abs() * 128
    assert d.mean() < 0.5 and d.max() <= 2.01


def test_nms_matches_insightface():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 500, (300, 2))
    wh = rng.uniform(10, 80, (300, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    scores = rng.uniform(0.5, 1, 300).astype(np.float32)
    ref = get_model.__globals__["SCRFD"].nms  # insightface's own method
    holder = type("H", (), {"nms_thresh": 0.4})()
    expected = ref(holder, np.hstack([boxes, scores[:, None]]))
    assert list(nms(boxes, scores, 0.4)) == list(expected)


def test_template_shift_for_128():
    assert np.allclose(template(128)[:, 0] - template(112)[:, 0], 8.0)


# ---------------------------------------------------------------------------------------------- packs


def test_pack_lookup_finds_files_in_models_dir(pack):
    cfg = ModelSettings(pack="insightface", name="buffalo_l", dir=str(pack))
    assert cfg.path("detector") == pack / "det_10g.onnx"
    assert cfg.path("landmarker_3d") == pack / "1k3d68.onnx"
    assert cfg.path("swapper") == pack / "inswapper_128.onnx"
    det = make_detector(cfg, torch.device("cpu"))
    assert isinstance(det, ScrfdDetector)


def test_missing_model_names_the_file_and_every_place_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cfg = ModelSettings(pack="insightface", name="buffalo_s", dir=str(tmp_path / "mine"))
    with pytest.raises(ModelError) as err:
        make_detector(cfg, torch.device("cpu"))
    msg = str(err.value)
    assert "det_500m.onnx" in msg and "buffalo_s" in msg
    for place in (tmp_path / "mine", tmp_path / "home" / ".insightface" / "models" / "buffalo_s",
                  tmp_path / "home" / "facefusion" / ".assets" / "models", tmp_path / "home" / "Deep-Live-Cam" / "models"):
        assert str(place) in msg
    assert "\n" not in msg


def test_wrong_model_names_found_and_expected_signatures(pack):
    cfg = ModelSettings(pack="insightface", dir=str(pack), detector=str(pack / "inswapper_128.onnx"))
    with pytest.raises(ModelError) as err:
        make_detector(cfg, torch.device("cpu"))
    msg = str(err.value)
    assert "inswapper_128.onnx is not an SCRFD detector" in msg
    assert "target[1,3,128,128], source[1,512]" in msg and "looks like a swapper" in msg
    assert "expected an SCRFD detector: one image input [N,3,H,W]" in msg
    cfg = ModelSettings(pack="insightface", dir=str(pack), recognizer=str(pack / "2d106det.onnx"))
    with pytest.raises(ModelError, match=r"data\[\?,3,192,192\] -> fc1\[\?,212\] \(looks like a landmarker\)"):
        make_recognizer(cfg, torch.device("cpu"))


def test_corrupt_model_file(pack, tmp_path):
    bad = tmp_path / "det_10g.onnx"
    bad.write_bytes((pack / "det_10g.onnx").read_bytes()[:5000])
    with pytest.raises(ModelError, match="is not a readable ONNX model"):
        make_detector(ModelSettings(pack="insightface", dir=str(tmp_path)), torch.device("cpu"))


# ---------------------------------------------------------------------------------------------- builtin


def test_builtin_pack_finds_the_faces_in_real_photos():
    from skimage import data

    det = make_detector(ModelSettings(pack="builtin"), torch.device("cpu"))
    group = det.detect([torch.from_numpy(load_photo("group"))])[0]
    astronaut = det.detect([torch.from_numpy(np.ascontiguousarray(data.astronaut()))])[0]
    assert len(group.boxes) == 6
    assert len(astronaut.boxes) >= 1
    top = astronaut.boxes[0]
    assert 150 < (top[0] + top[2]) / 2 < 290 and 60 < (top[1] + top[3]) / 2 < 180  # her face, not the patch
    for d in (group, astronaut):
        for box, lm, kps in zip(d.boxes, d.landmarks, d.kps):
            pad = 0.15 * (box[2] - box[0])
            inside = (lm[:, 0] >= box[0] - pad) & (lm[:, 0] <= box[2] + pad) & (lm[:, 1] >= box[1] - pad) & (lm[:, 1] <= box[3] + pad)
            assert inside.mean() > 0.9
            assert kps[0, 0] < kps[1, 0] and kps[2, 1] > kps[0, 1] and kps[3, 1] > kps[2, 1]


def test_builtin_embeddings_tell_people_apart():
    cfg = ModelSettings(pack="builtin")
    det = make_detector(cfg, torch.device("cpu"))
    rec = make_recognizer(cfg, torch.device("cpu"))
    group = load_photo("group")
    flipped = np.ascontiguousarray(group[:, ::-1])
    frames = [torch.from_numpy(group), torch.from_numpy(flipped)]
    dets = det.detect(frames)
    faces = [Face(box=b, score=s, kps=k, landmarks=l) for d in dets for b, s, k, l in zip(d.boxes, d.scores, d.kps, d.landmarks)]
    frame_of = [0] * len(dets[0].boxes) + [1] * len(dets[1].boxes)
    emb = rec.embed(frames, frame_of, faces)
    a, b = emb[: len(dets[0].boxes)], emb[len(dets[0].boxes):]
    sim = a @ b.T
    # Each face's best match in the mirrored photo is the same person (mirrored boxes).
    centres_a = (dets[0].boxes[:, 0] + dets[0].boxes[:, 2]) / 2
    centres_b = group.shape[1] - (dets[1].boxes[:, 0] + dets[1].boxes[:, 2]) / 2
    for i in range(len(a)):
        j = int(np.argmax(sim[i]))
        assert abs(centres_a[i] - centres_b[j]) < 20
        assert sim[i, j] > np.sort(sim[i])[-2] + 0.03
    landmarks = make_landmarker(cfg, torch.device("cpu"), "68").predict(frames[:1], [0] * len(dets[0].boxes), dets[0].boxes)
    np.testing.assert_allclose(landmarks, dets[0].landmarks, atol=1.0)


def test_builtin_mmod_detector_finds_her_face():
    det = make_detector(ModelSettings(pack="builtin"), torch.device("cpu"), model="mmod")
    image = load_photo("astronaut")
    found = det.detect([torch.from_numpy(image)])[0]
    assert len(found.boxes) >= 1
    x1, y1, x2, y2 = found.boxes[0]
    assert 150 < (x1 + x2) / 2 < 290 and 60 < (y1 + y2) / 2 < 180
    assert found.landmarks.shape[1:] == (68, 2)


def test_landmarker_refines_predicted_faces():
    """A predicted face whose carried-over landmarks are off gets fresh ones on its box, and its
    keypoints follow; an observed face keeps what the detector gave it."""
    from fractions import Fraction

    from facestream.pipeline.frame import Frame
    from facestream.pipeline.stage import RunContext
    from facestream.stages.landmarker import Landmarker, LandmarkerSettings

    image = torch.from_numpy(load_photo("group"))
    det = make_detector(ModelSettings(pack="builtin"), torch.device("cpu")).detect([image])[0]
    stale = Face(box=det.boxes[0], score=0.9, kps=det.kps[0] + 12, landmarks=det.landmarks[0] + 12, predicted=True)
    seen = Face(box=det.boxes[1], score=0.9, kps=det.kps[1], landmarks=det.landmarks[1])
    frame = Frame(index=0, pts=0, time_base=Fraction(1, 25), captured_at=0.0, image=image, faces=[stale, seen])
    stage = Landmarker(LandmarkerSettings(refine_predicted=True), models=ModelSettings(pack="builtin"), kind="68")
    stage.open(RunContext(device=torch.device("cpu")))
    stage.process([frame])
    np.testing.assert_allclose(stale.landmarks, det.landmarks[0], atol=1.5)
    np.testing.assert_allclose(stale.kps, det.kps[0], atol=1.5)
    assert np.array_equal(seen.landmarks, det.landmarks[1])
