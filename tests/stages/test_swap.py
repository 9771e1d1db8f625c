"""Swapping, blending and anonymising, against insightface's INSwapper and on real photos."""

import logging
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from insightface.model_zoo import get_model
from onnx import TensorProto, helper, numpy_helper

from facestream.scenes import load_photo
from facestream.pipeline.frame import Frame
from facestream.pipeline.stage import RunContext
from facestream.stages.blender import Blender, BlendSettings
from facestream.facelib.face import Face
from facestream.facelib.models.builtin_pack import DlibDetector, DlibRecognizer
from facestream.facelib.models.insightface_pack import EngineOptions
from facestream.facelib.models.swappers import Anonymizer, BuiltinSwapper, InSwapper
from facestream.facelib.ops.align import estimate_norm, footprint
from tests import modelgen
from tests.insightface_ref import CPU, RefFace, bgr



@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    d = tmp_path_factory.mktemp("swap_pack")
    modelgen.make_scrfd(d / "det_10g.onnx", scale="tiny", seed=1)
    modelgen.make_arcface(d / "w600k_r50.onnx", seed=4)
    modelgen.make_inswapper(d / "inswapper_128.onnx", scale="tiny", seed=6)
    return d


def blend(frames, faces_per_frame, watermark=None, **settings):
    blender = Blender(BlendSettings(**settings), watermark=watermark)
    blender.open(RunContext(device=torch.device("cpu")))
    records = [Frame(index=i, pts=i, time_base=Fraction(1, 25), captured_at=0.0, image=img, faces=faces)
               for i, (img, faces) in enumerate(zip(frames, faces_per_frame))]
    blender.process(records)
    return [r.image for r in records]


def reference_faces(pack, image, n=4):
    det = get_model(str(pack / "det_10g.onnx"), providers=CPU)
    det.prepare(-1, input_size=(640, 640), det_thresh=0.5)
    boxes, kps = det.detect(bgr(image), input_size=(640, 640))
    # Keep faces whose paste regions do not overlap (insightface pastes one after another onto the
    # image it already changed; facestream aligns every face from the original frame).
    chosen, regions = [], []
    for b, k in zip(boxes, kps):
        r = footprint(estimate_norm(k, 128), (128, 128), image.shape[:2], margin=4)
        if r is None or any(r[0] < o[2] and o[0] < r[2] and r[1] < o[3] and o[1] < r[3] for o in regions):
            continue
        chosen.append(RefFace(bbox=b[:4], kps=k, det_score=b[4]))
        regions.append(r)
        if len(chosen) == n:
            break
    return chosen


@pytest.mark.parametrize("engine", ["onnxruntime", "torch"])
def test_inswapper_paste_back_matches_insightface(pack, engine):
    """The same generated inswapper, the same faces and source: facestream's generator and blender
    (insightface mask) against INSwapper.get(paste_back=True). Tolerance: at most 2 levels on any
    pixel, and a mean difference under 0.1 level over the pasted regions (the alignment matrices
    agree to ~2e-5; a crop pixel may round to the next level, and blending truncates)."""
    image = load_photo("group")
    arc = get_model(str(pack / "w600k_r50.onnx"), providers=CPU)
    source = load_photo("astronaut")
    src_face = reference_faces(pack, source, n=1)[0]
    emb = arc.get(bgr(source), src_face)
    src_face["normed_embedding"] = emb / np.linalg.norm(emb)
    targets = reference_faces(pack, image)
    assert len(targets) >= 3
    ref = get_model(str(pack / "inswapper_128.onnx"), providers=CPU)
    expected = bgr(image).copy()
    for t in targets:
        expected = ref.get(expected, t, src_face, paste_back=True)
    expected = expected[..., ::-1]

    swapper = InSwapper(pack / "inswapper_128.onnx", EngineOptions(engine=engine))
    swapper.set_sources({"source": src_face.normed_embedding})
    frame = torch.from_numpy(image.copy())
    faces = [Face(box=t.bbox, score=1.0, kps=t.kps, identity="source") for t in targets]
    for face, g in zip(faces, swapper.generate([frame], [0] * len(faces), faces)):
        face.generated = g
    (got,) = blend([frame], [faces], mask="insightface", colour="none")
    diff = np.abs(got.numpy().astype(int) - expected.astype(int))
    changed = np.abs(expected.astype(int) - image.astype(int)).max(axis=2) > 0
    assert changed.mean() > 0.01, "the swap changed the faces"
    region = np.zeros(changed.shape, bool)
    for t in targets:
        x0, y0, x1, y1 = footprint(estimate_norm(t.kps, 128), (128, 128), image.shape[:2])
        region[y0:y1, x0:x1] = True
    print(f"\ninswapper paste-back vs insightface: max {diff.max()} levels, mean {diff[region].mean():.4f} over the faces")
    assert diff.max() <= 2 and diff[region].mean() < 0.1


def test_batched_generation_equals_one_face_at_a_time(pack):
    swapper = InSwapper(pack / "inswapper_128.onnx", EngineOptions(engine="torch"))
    swapper.set_sources({"a": np.ones(512, np.float32), "b": -np.ones(512, np.float32)})
    images = [load_photo("group"), np.ascontiguousarray(load_photo("group")[:, ::-1])]
    frames = [torch.from_numpy(i) for i in images]
    faces, frame_of = [], []
    for fi, image in enumerate(images):
        for k, t in enumerate(reference_faces(pack, image)):
            faces.append(Face(box=t.bbox, score=1.0, kps=t.kps, identity="ab"[k % 2]))
            frame_of.append(fi)
    together = swapper.generate(frames, frame_of, faces)
    for f, face, g in zip(frame_of, faces, together):
        (alone,) = swapper.generate([frames[f]], [0], [face])
        # Batched convolutions sum in another order: a pixel may round to the next level.
        assert (alone.crop.int() - g.crop.int()).abs().max() <= 1
        assert np.allclose(alone.matrix, g.matrix)


def overflowing_swapper(path: Path) -> Path:
    """An inswapper-family graph that overflows in float16: output = (target * 1e5) * 1e-5 + 0 * source."""
    big = numpy_helper.from_array(np.array(1e5, np.float32), "big")
    small = numpy_helper.from_array(np.array(1e-5, np.float32), "small")
    zero = numpy_helper.from_array(np.array(0.0, np.float32), "zero")
    emap = numpy_helper.from_array(np.eye(512, dtype=np.float32), "emap")
    nodes = [
        helper.make_node("Mul", ["target", "big"], ["t1"]),
        helper.make_node("Mul", ["t1", "small"], ["t2"]),
        helper.make_node("ReduceMean", ["source"], ["s1"], keepdims=1),
        helper.make_node("Mul", ["s1", "zero"], ["s2"]),
        helper.make_node("Unsqueeze", ["s2", "axes"], ["s3"]),
        helper.make_node("Add", ["t2", "s3"], ["output"]),
    ]
    axes = numpy_helper.from_array(np.array([2, 3], np.int64), "axes")
    graph = helper.make_graph(
        nodes, "overflow",
        [helper.make_tensor_value_info("target", TensorProto.FLOAT, [1, 3, 128, 128]),
         helper.make_tensor_value_info("source", TensorProto.FLOAT, [1, 512])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 128, 128])],
        initializer=[big, small, zero, axes, emap],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def test_float16_that_overflows_falls_back_to_float32_with_one_warning(tmp_path, caplog):
    path = overflowing_swapper(tmp_path / "inswapper_128.onnx")
    swapper = InSwapper(path, EngineOptions(engine="torch", dtype="float16"))
    swapper.set_sources({"s": np.ones(512, np.float32)})
    image = torch.from_numpy(load_photo("group"))
    face = Face(box=[450, 295, 557, 402], score=1.0, kps=[[480, 330], [527, 330], [503, 355], [485, 380], [522, 380]], identity="s")
    with caplog.at_level(logging.WARNING):
        first = swapper.generate([image], [0], [face])[0]
        second = swapper.generate([image], [0], [face])[0]
    warnings = [r for r in caplog.records if "using float32" in r.message]
    assert len(warnings) == 1 and swapper.fell_back
    # Identity graph in float32: the crop equals the aligned target (insightface truncation).
    assert torch.equal(first.crop, second.crop)
    assert (first.crop.int() - first.target.int()).abs().max() <= 1


def test_float16_that_agrees_is_kept(pack, caplog):
    swapper = InSwapper(pack / "inswapper_128.onnx", EngineOptions(engine="torch", dtype="float16"))
    swapper.set_sources({"s": np.ones(512, np.float32)})
    t = reference_faces(pack, load_photo("group"), n=1)[0]
    face = Face(box=t.bbox, score=1.0, kps=t.kps, identity="s")
    image = torch.from_numpy(load_photo("group"))
    with caplog.at_level(logging.WARNING):
        (half,) = swapper.generate([image], [0], [face])
    assert not swapper.fell_back and not [r for r in caplog.records if "float32" in r.message]
    full = InSwapper(pack / "inswapper_128.onnx", EngineOptions(engine="torch", dtype="float32"))
    full.set_sources({"s": np.ones(512, np.float32)})
    (ref,) = full.generate([image], [0], [face])
    diff = (half.crop.float() - ref.crop.float()).abs()
    print(f"float16 against float32: max {diff.max().item():.1f}, mean {diff.mean().item():.3f} levels")
    assert diff.max() <= 4 and diff.mean() < 0.5, "the kept float16 output is close to float32's"


# ---------------------------------------------------------------------------------------------- builtin


@pytest.fixture(scope="module")
def group_swap(tmp_path_factory):
    """The group photo with the astronaut's face swapped onto every face, by the builtin swapper."""
    d = tmp_path_factory.mktemp("builtin")
    cv2.imwrite(str(d / "astronaut.png"), bgr(load_photo("astronaut")))
    image = load_photo("group")
    detector = DlibDetector()
    det = detector.detect([torch.from_numpy(image)])[0]
    swapper = BuiltinSwapper(device=torch.device("cpu"))
    swapper.set_sources({"source": [str(d / "astronaut.png")]})
    faces = [Face(box=b, score=s, kps=k, landmarks=lm, identity="source")
             for b, s, k, lm in zip(det.boxes, det.scores, det.kps, det.landmarks)]
    frame = torch.from_numpy(image.copy())
    for face, g in zip(faces, swapper.generate([frame], [0] * len(faces), faces)):
        face.generated = g
    masks = []
    (out,) = blend([frame], [faces])
    return image, out.numpy(), det, faces


def test_builtin_swap_moves_identity_towards_the_source(group_swap):
    image, out, det, faces = group_swap
    rec = DlibRecognizer()
    source_img = load_photo("astronaut")
    src_det = DlibDetector().detect([torch.from_numpy(source_img)])[0]
    src_face = Face(box=src_det.boxes[0], score=1.0, kps=src_det.kps[0], landmarks=src_det.landmarks[0])
    src = rec.embed([torch.from_numpy(source_img)], [0], [src_face])[0]
    before = rec.embed([torch.from_numpy(image)], [0] * len(faces), [Face(box=f.box, score=1, kps=f.kps, landmarks=f.landmarks) for f in faces])
    after_det = DlibDetector().detect([torch.from_numpy(out)])[0]
    assert len(after_det.boxes) >= len(faces) - 1, "the swapped faces are still faces"
    after = rec.embed([torch.from_numpy(out)], [0] * len(after_det.boxes),
                      [Face(box=b, score=1, kps=k, landmarks=lm) for b, k, lm in zip(after_det.boxes, after_det.kps, after_det.landmarks)])
    # Pair each swapped face with its original by position.
    moved = 0
    for i, b in enumerate(after_det.boxes):
        j = int(np.argmin(np.linalg.norm(det.boxes[:, :2] - b[:2], axis=1)))
        moved += float(after[i] @ src) > float(before[j] @ src)
    print(f"\nidentity moved towards the source on {moved} of {len(after_det.boxes)} faces; "
          f"mean similarity to source {np.mean(before @ src):.3f} -> {np.mean(after @ src):.3f}")
    assert moved >= len(after_det.boxes) - 1 and np.mean(after @ src) > np.mean(before @ src) + 0.02


def test_no_visible_seam_at_the_paste_boundary(group_swap):
    """Mean gradient along the paste boundaries, against the original photo's own gradient at the same
    pixels (stated factor: at most 1.25x): a seam would add an edge the photo did not have."""
    image, out, det, faces = group_swap
    gray = cv2.cvtColor(out, cv2.COLOR_RGB2GRAY).astype(np.float32)
    grad = np.hypot(cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1))
    own = np.hypot(*(cv2.Sobel(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32), cv2.CV_32F, *d) for d in ((1, 0), (0, 1))))
    changed = (np.abs(out.astype(int) - image.astype(int)).max(axis=2) > 2).astype(np.uint8)
    boundary = cv2.morphologyEx(changed, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    ratio = grad[boundary].mean() / own[boundary].mean()
    print(f"\nseam: gradient along the paste boundaries {grad[boundary].mean():.1f}, the original photo's there "
          f"{own[boundary].mean():.1f} (ratio {ratio:.2f}); whole photo {own.mean():.1f}")
    assert boundary.sum() > 500 and ratio < 1.25


def test_anonymiser_hides_faces_from_the_detector():
    image = load_photo("group")
    detector = DlibDetector(upsample=1)
    det = detector.detect([torch.from_numpy(image)])[0]
    assert len(det.boxes) >= 6
    for style in ("blur", "pixelate", "solid"):
        anon = Anonymizer(style=style)
        faces = [Face(box=b, score=1.0, identity="anonymize") for b in det.boxes]
        frame = torch.from_numpy(image.copy())
        for face, g in zip(faces, anon.generate([frame], [0] * len(faces), faces)):
            face.generated = g
        (out,) = blend([frame], [faces])
        assert len(detector.detect([out])[0].boxes) == 0, style


def test_watermark_is_drawn_on_every_frame():
    frames = [torch.full((360, 640, 3), 128, dtype=torch.uint8) for _ in range(2)]
    outs = blend(frames, [[], []], watermark="AI-generated")
    for out in outs:
        corner = out[-30:, -150:].float()
        assert corner.min() < 70 and corner.max() > 200  # dark box, white text
        assert torch.equal(out[:300, :400], torch.full((300, 400, 3), 128, dtype=torch.uint8))


def test_builtin_swapper_renders_the_same_with_the_device_path(group_swap):
    """The CUDA rendering (grid_sample), run on the CPU, against the CPU one (cv2.remap)."""
    _, _, det, faces = group_swap
    swapper = BuiltinSwapper(device=torch.device("cpu"))
    src = load_photo("astronaut")
    d = DlibDetector().detect([torch.from_numpy(src)])[0]
    from scipy.spatial import Delaunay

    from facestream.facelib.models.swappers import _Source

    source = _Source(torch.from_numpy(src), d.landmarks[0], Delaunay(d.landmarks[0]).simplices)
    for face in faces:
        _, pts = swapper._crop_geometry(face.landmarks)
        a, cov_a = swapper._render(source, pts, use_torch=False)
        b, cov_b = swapper._render(source, pts, use_torch=True)
        assert np.array_equal(cov_a, cov_b) and cov_a.mean() > 0.3
        diff = (a.int() - b.int()).abs()
        assert diff.float().mean() < 0.5 and np.percentile(diff.numpy(), 99.5) <= 2


def test_batched_device_paste_equals_one_face_at_a_time():
    """The GPU paste-back (one grid_sample for all crops of a size), run on the CPU, against one
    grid_sample per face and against OpenCV's warp."""
    from facestream.facelib.ops.align import warp_to_region, warp_to_region_torch, warp_to_regions_torch

    rng = np.random.default_rng(0)
    crops = [torch.from_numpy(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)) for _ in range(4)]
    crops.append(torch.from_numpy(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)))
    kps = np.array([[[200, 200], [260, 198], [230, 235], [205, 265], [255, 262]]], np.float32)
    matrices = [estimate_norm(kps + off, 128)[0] for off in (0, 70, 150, 230)]
    matrices.append(np.array([[0.8, 0.1, -50.0], [-0.1, 0.8, -20.0]]))
    regions = [footprint(m, (c.shape[1], c.shape[0]), (720, 1280)) for m, c in zip(matrices, crops)]
    batched = warp_to_regions_torch(crops, matrices, regions)
    for c, m, r, b in zip(crops, matrices, regions, batched):
        assert b.shape[:2] == (r[3] - r[1], r[2] - r[0])
        assert torch.allclose(b, warp_to_region_torch(c, m, r), atol=1e-4)
        diff = (b - warp_to_region(c, m, r)).abs()
        assert diff.mean() < 0.5 and diff.max() <= 3  # OpenCV interpolates in 1/32 steps, on uint8


def test_poisson_blending_runs_and_hides_the_seam(group_swap):
    image, _, det, faces = group_swap
    swapper = BuiltinSwapper(device=torch.device("cpu"))
    swapped = [Face(box=f.box, score=f.score, kps=f.kps, landmarks=f.landmarks, identity="source") for f in faces]
    src = load_photo("astronaut")
    d = DlibDetector().detect([torch.from_numpy(src)])[0]
    from scipy.spatial import Delaunay

    from facestream.facelib.models.swappers import _Source

    swapper.sources["source"] = _Source(torch.from_numpy(src), d.landmarks[0], Delaunay(d.landmarks[0]).simplices)
    frame = torch.from_numpy(image.copy())
    for face, g in zip(swapped, swapper.generate([frame], [0] * len(swapped), swapped)):
        face.generated = g
    (out,) = blend([frame], [swapped], poisson=True)
    changed = np.abs(out.numpy().astype(int) - image.astype(int)).max(axis=2) > 2
    assert changed.mean() > 0.005
    gray = cv2.cvtColor(out.numpy(), cv2.COLOR_RGB2GRAY).astype(np.float32)
    grad = np.hypot(cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1))
    own = np.hypot(*(cv2.Sobel(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32), cv2.CV_32F, *dd) for dd in ((1, 0), (0, 1))))
    boundary = cv2.morphologyEx(changed.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    assert grad[boundary].mean() / own[boundary].mean() < 1.25


def test_faces_beyond_one_forward_are_swapped_in_chunks_with_the_same_result(pack):
    """The swapper caps faces per forward (memory); chunking changes nothing in the output."""
    image = torch.from_numpy(load_photo("group"))
    refs = reference_faces(pack, load_photo("group"), n=6)
    faces = [Face(box=t.bbox, score=1.0, kps=t.kps, identity="s") for t in refs] * 3  # 18 faces
    whole = InSwapper(pack / "inswapper_128.onnx", EngineOptions(engine="onnxruntime"))
    whole.set_sources({"s": np.ones(512, np.float32)})
    chunked = InSwapper(pack / "inswapper_128.onnx", EngineOptions(engine="onnxruntime"))
    chunked.set_sources({"s": np.ones(512, np.float32)})
    whole.set_forward_faces(100)
    chunked.set_forward_faces(4)  # memory.faces_per_forward
    sizes: list[int] = []
    engine = chunked.engine
    chunked.engine = lambda **feeds: sizes.append(len(feeds["target"])) or engine(**feeds)
    a = whole.generate([image], [0] * len(faces), faces)
    b = chunked.generate([image], [0] * len(faces), faces)
    assert len(a) == len(b) == 18 and sizes == [4, 4, 4, 4, 2]
    for x, y in zip(a, b, strict=True):
        assert (x.crop.int() - y.crop.int()).abs().max() <= 1
