"""Batched NMS and face selection on the device give the host versions' (insightface's) answers."""

import numpy as np
import pytest
import torch

from facestream.facelib.ops.detection import (greedy_nms_rounds, largest_central_rank, nms,
                                              select_largest_central, suppressors)
from tests.conftest import all_supported_devices


def random_boxes(rng, n):
    """Clusters of overlapping boxes, as a detector's anchors give around faces, and loners."""
    centres = rng.uniform(0, 400, (max(1, n // 8), 2))
    xy = centres[rng.integers(0, len(centres), n)] + rng.normal(0, 12, (n, 2))
    wh = rng.uniform(20, 60, (n, 2))
    return np.concatenate([xy, xy + wh], 1).astype(np.float32), rng.uniform(0.5, 1, n).astype(np.float32)


def chain(n):
    """Boxes each overlapping the next by more than 0.4, best first: greedy keeps every other one,
    and each verdict hangs on the one before (the longest chain of suppressions)."""
    x = np.arange(n, dtype=np.float32) * 10
    return np.stack([x, np.zeros(n, np.float32), x + 40, np.full(n, 40, np.float32)], 1), np.linspace(1, 0.5, n).astype(np.float32)


def batched_nms(images, threshold, device, rounds):
    """Every image's boxes sorted best first, padded into one batch, NMS run until it settles."""
    k = max(len(b) for b, _ in images)
    boxes = torch.zeros((len(images), k, 4))
    valid = torch.zeros((len(images), k), dtype=torch.bool)
    for i, (b, s) in enumerate(images):
        order = np.argsort(-s, kind="stable")
        boxes[i, : len(b)] = torch.from_numpy(b[order])
        valid[i, : len(b)] = True
    boxes, valid = boxes.to(device), valid.to(device)
    suppress = suppressors(boxes, valid, threshold)
    keep, calls = valid, 0
    while True:
        keep, settled = greedy_nms_rounds(suppress, valid, keep, rounds)
        calls += 1
        if bool(settled.all()):
            return keep.cpu().numpy(), calls


@pytest.mark.parametrize("device", all_supported_devices())
@pytest.mark.parametrize("rounds", [1, 4])
def test_batched_nms_keeps_what_greedy_nms_keeps(device, rounds):
    rng = np.random.default_rng(1)
    images = [random_boxes(rng, n) for n in (300, 17, 1, 120)] + [chain(25)]
    keep, calls = batched_nms(images, 0.4, device, rounds)
    for i, (b, s) in enumerate(images):
        expected = nms(b, s, 0.4)  # indices into the unsorted boxes, best first
        order = np.argsort(-s, kind="stable")
        got = order[np.flatnonzero(keep[i, : len(b)])]
        assert list(got) == list(expected)
        assert not keep[i, len(b):].any()
    assert calls >= 12 // rounds  # the chain takes about a round per link: the check did its work


def test_largest_central_rank_matches_the_host_rule():
    rng = np.random.default_rng(2)
    boxes, _ = random_boxes(rng, 40)
    keep = rng.random(40) < 0.6
    hw = (480, 640)
    rank = largest_central_rank(torch.from_numpy(boxes)[None], torch.from_numpy(keep)[None],
                                torch.tensor([hw]))[0].numpy()
    kept = np.flatnonzero(keep)
    expected = kept[select_largest_central(boxes[kept], hw, 5)]
    assert list(np.argsort(rank)[:5]) == list(expected)
    assert (rank[keep] < keep.sum()).all()  # boxes not kept rank after every kept one


def test_keypoints_fit_real_faces_and_not_boxes_at_the_wrong_scale():
    """Keypoints of real detections (dlib's, on the group photo) fit their boxes; the same keypoints
    in a box 3.5 times the size of dlib's tight box (about 2.7 times an SCRFD box: a head and
    shoulders taken for a face), or pushed outside the box, do not."""
    import torch

    from facestream.facelib.models.builtin_pack import DlibDetector
    from facestream.facelib.ops.detection import keypoints_fit
    from facestream.scenes import load_photo

    det = DlibDetector(upsample=1).detect([torch.from_numpy(load_photo("group"))])[0]
    assert len(det.boxes) >= 5
    assert keypoints_fit(det.boxes, det.kps).all()
    centre = (det.boxes[:, :2] + det.boxes[:, 2:]) / 2
    half = (det.boxes[:, 2:] - det.boxes[:, :2]) / 2
    grown = np.concatenate([centre - 3.5 * half, centre + 3.5 * half], axis=1)
    assert not keypoints_fit(grown, det.kps).any()
    shifted = det.kps + (det.boxes[:, 2:] - det.boxes[:, :2])[:, None] * [1.2, 0.0]
    assert not keypoints_fit(det.boxes, shifted).any()


def test_builtin_detector_runs_a_batch_side_by_side_with_the_same_answers():
    """HOG works on a batch's frames in threads of their own (each with its own dlib detector): the
    answers are those of one frame at a time, in order."""
    import os
    import threading

    from facestream.facelib.models.builtin_pack import DlibDetector
    from facestream.scenes import load_photo

    group = load_photo("group")
    frames = [torch.from_numpy(np.ascontiguousarray(np.roll(group, 40 * k, axis=1))) for k in range(6)]
    det = DlibDetector()
    together = det.detect(frames)
    alone = [det.detect([f])[0] for f in frames]
    assert sum(len(d.boxes) for d in together) >= 24
    for a, b in zip(together, alone, strict=True):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.landmarks, b.landmarks)
        np.testing.assert_array_equal(a.plausible, b.plausible)
    workers = {t.name for t in threading.enumerate() if t.name.startswith("dlib-hog")}
    assert len(workers) >= min(2, os.cpu_count() or 1)
