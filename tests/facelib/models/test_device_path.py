"""The device code path of detection, alignment, landmarks, embeddings and the swapper, run on the
CPU with the host waits counted: a small constant per batch, the same for one frame with a few faces
as for eight frames with every face."""

import functools

import numpy as np
import pytest
import torch

from facestream.facelib.face import Face
from facestream.facelib.models import insightface_pack, swappers
from facestream.facelib.models.insightface_pack import ArcFaceModel, EngineOptions, LandmarkModel, ScrfdDetector
from facestream.facelib.models.swappers import InSwapper
from facestream.facelib.ops.align import warp_faces_torch
from facestream.facelib.ops.image import letterbox
from tests import modelgen
from tests.facelib.syncs import count_host_syncs
from tests.stages.test_analysis import photos

TORCH = EngineOptions(engine="torch")


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    d = tmp_path_factory.mktemp("pack")
    modelgen.make_scrfd(d / "det_10g.onnx", scale="tiny", seed=1)
    modelgen.make_landmark_2d106(d / "2d106det.onnx", seed=2)
    modelgen.make_arcface(d / "w600k_r50.onnx", seed=4)
    modelgen.make_inswapper(d / "inswapper_128.onnx", scale="tiny", seed=6)
    return d


@pytest.fixture
def device_path(monkeypatch):
    """What runs on CUDA, on the CPU: torch letterboxing and torch crops instead of cv2's."""
    monkeypatch.setattr(insightface_pack, "letterbox", functools.partial(letterbox, use_torch=True))
    monkeypatch.setattr(insightface_pack, "warp_faces", warp_faces_torch)
    monkeypatch.setattr(swappers, "warp_faces", warp_faces_torch)


def workloads(detector):
    """One frame, and eight frames, with up to three faces each that the detector finds."""
    images = [torch.from_numpy(p) for p in photos()]
    out = []
    for frames in (images[:1], images):
        dets = detector.detect(frames)
        frame_of = [i for i, d in enumerate(dets) for _ in d.boxes[:3]]
        faces = [Face(box=b, score=float(s), kps=k, identity="a")
                 for d in dets for b, s, k in zip(d.boxes[:3], d.scores, d.kps)]
        out.append((frames, frame_of, faces))
    assert len(out[1][2]) == 8 * len(out[0][2]) == 24
    return out


def test_host_waits_per_batch_do_not_grow_with_frames_or_faces(pack, device_path):
    detector = ScrfdDetector(pack / "det_10g.onnx", TORCH)
    landmarks = LandmarkModel(pack / "2d106det.onnx", TORCH)
    arcface = ArcFaceModel(pack / "w600k_r50.onnx", TORCH)
    swapper = InSwapper(pack / "inswapper_128.onnx", TORCH)
    swapper.set_sources({"a": np.random.default_rng(0).normal(size=512).astype(np.float32)})
    counts = []
    for frames, frame_of, faces in workloads(detector):
        steps = {
            "detect": lambda: detector.detect(frames),
            "landmarks": lambda: landmarks.predict(frames, frame_of, np.stack([f.box for f in faces])),
            "embed": lambda: arcface.embed(frames, frame_of, faces),
            "swap": lambda: swapper.generate(frames, frame_of, faces),
        }
        seen = {}
        for name, step in steps.items():
            with count_host_syncs() as n:
                step()
            seen[name] = dict(n)
        counts.append(seen)
    one, eight = counts
    assert one == eight
    # Detection: the NMS's size, then the final faces (.cpu().numpy(): one copy). Landmarks and
    # embeddings: their results, once. The swapper's crops stay on the device.
    assert one == {"detect": {"__int__": 1, "cpu": 1, "numpy": 1}, "landmarks": {"cpu": 1, "numpy": 1},
                   "embed": {"cpu": 1, "numpy": 1}, "swap": {}}
