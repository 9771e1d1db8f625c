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
from facestream.facelib.ops.align import footprint, warp_faces_torch, warp_to_regions_torch
from facestream.facelib.ops.image import letterbox
from tests import modelgen
from tests.facelib.syncs import count_cuda_syncs, count_host_syncs
from tests.stages.test_analysis import photos

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


def make_models(pack, device):
    options = EngineOptions(engine="torch", device=torch.device(device))
    swapper = InSwapper(pack / "inswapper_128.onnx", options)
    swapper.set_sources({"a": np.random.default_rng(0).normal(size=512).astype(np.float32)})
    return (ScrfdDetector(pack / "det_10g.onnx", options), LandmarkModel(pack / "2d106det.onnx", options),
            ArcFaceModel(pack / "w600k_r50.onnx", options), swapper)


def steps(models, frames, frame_of, faces):
    """Each step of a swap run's device path, as a callable."""
    detector, landmarks, arcface, swapper = models
    made = []

    def paste():  # the blender's warp of each new face back into its frame region
        regions = [footprint(g.matrix, (g.size, g.size), tuple(frames[f].shape[:2])) for f, g in zip(frame_of, made)]
        warp_to_regions_torch([g.crop for g in made], [g.matrix for g in made], regions)

    return {
        "detect": lambda: detector.detect(frames),
        "landmarks": lambda: landmarks.predict(frames, frame_of, np.stack([f.box for f in faces])),
        "embed": lambda: arcface.embed(frames, frame_of, faces),
        "swap": lambda: made.extend(swapper.generate(frames, frame_of, faces)),
        "paste": paste,
    }


def test_host_waits_per_batch_do_not_grow_with_frames_or_faces(pack, device_path):
    models = make_models(pack, "cpu")
    counts = []
    for work in workloads(models[0]):
        seen = {}
        for name, step in steps(models, *work).items():
            with count_host_syncs() as n:
                step()
            seen[name] = dict(n)
        counts.append(seen)
    one, eight = counts
    assert one == eight
    # Detection: the NMS's size, then the final faces (.cpu().numpy(): one copy). Landmarks and
    # embeddings: their results, once. The swapper's crops stay on the device, and so does paste-back.
    assert one == {"detect": {"__int__": 1, "cpu": 1, "numpy": 1}, "landmarks": {"cpu": 1, "numpy": 1},
                   "embed": {"cpu": 1, "numpy": 1}, "swap": {}, "paste": {}}


@pytest.mark.needs_cuda
def test_cuda_synchronisations_per_batch_do_not_grow(pack):
    models = make_models(pack, "cuda")
    counts = []
    for frames, frame_of, faces in workloads(models[0]):
        frames = [f.cuda() for f in frames]
        torch.cuda.synchronize()
        seen = {}
        for name, step in steps(models, frames, frame_of, faces).items():
            with count_cuda_syncs() as found:
                step()
            seen[name] = len(found)
        counts.append(seen)
    one, eight = counts
    assert one == eight
    assert one["detect"] <= 2 and one["landmarks"] <= 1 and one["embed"] <= 1, one
    assert one["swap"] == one["paste"] == 0, one
