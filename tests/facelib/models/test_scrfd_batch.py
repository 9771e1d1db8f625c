"""SCRFD decoded for a whole batch on the device gives insightface's faces for every frame, with
face selection (max_faces, min_size), however many rounds the batched NMS needs."""

import numpy as np
import pytest
import torch
from insightface.model_zoo import get_model

from facestream.facelib.models.insightface_pack import EngineOptions, ScrfdDetector
from tests import modelgen
from tests.insightface_ref import CPU, bgr
from tests.stages.test_analysis import photos


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("scrfd") / "det_10g.onnx"
    modelgen.make_scrfd(path, scale="tiny", seed=1)
    return path


def reference(model, images, *, max_num=0, min_size=0.0, threshold=0.5):
    ref = get_model(str(model), providers=CPU)
    ref.prepare(-1, input_size=(640, 640), det_thresh=threshold, nms_thresh=0.4)
    out = []
    for image in images:
        boxes, kps = ref.detect(bgr(image), input_size=(640, 640), max_num=max_num)
        big = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) >= min_size
        out.append((boxes[big], kps[big]))
    return out


@pytest.mark.parametrize(("max_faces", "min_size", "rounds"), [(0, 0.0, 1), (3, 0.0, 12), (22, 0.0, 12), (4, 45.0, 2), (0, 45.0, 12)])
def test_batch_selection_matches_insightface(model, max_faces, min_size, rounds):
    images = photos()
    det = ScrfdDetector(model, EngineOptions(), max_faces=max_faces, min_size=min_size)
    det.NMS_ROUNDS = rounds  # 1 and 2: NMS has not settled at the first check, and goes on
    got = det.detect([torch.from_numpy(im) for im in images])
    counts = []
    for d, (boxes, kps) in zip(got, reference(model, images, max_num=max_faces, min_size=min_size)):
        assert len(d.boxes) == len(boxes)
        np.testing.assert_allclose(d.boxes, boxes[:, :4], atol=2e-3)
        np.testing.assert_allclose(d.scores, boxes[:, 4], atol=1e-5)
        np.testing.assert_allclose(d.kps, kps, atol=2e-3)
        assert d.boxes.dtype == d.scores.dtype == d.kps.dtype == np.float32
        counts.append(len(boxes))
        if max_faces and len(boxes) < max_faces and not min_size:  # fewer than the limit: best score first
            assert (np.diff(d.scores) <= 0).all()
    assert min(counts) >= 1 and (len(set(counts)) > 1 or max_faces)  # frames with different numbers of faces


def test_no_candidates_and_batches_split_for_nms(model):
    images = [torch.from_numpy(im) for im in photos()]
    det = ScrfdDetector(model, EngineOptions(), score_threshold=0.999999)
    blank = torch.zeros((200, 300, 3), dtype=torch.uint8)
    assert all(len(d.boxes) == 0 and d.kps.shape == (0, 5, 2) for d in det.detect([blank, blank]))
    whole = ScrfdDetector(model, EngineOptions()).detect(images)
    split = ScrfdDetector(model, EngineOptions())
    split.NMS_ELEMENTS = 1  # one frame's NMS at a time
    for a, b in zip(split.detect(images), whole):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.kps, b.kps)
