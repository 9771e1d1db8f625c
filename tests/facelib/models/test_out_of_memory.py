"""Running out of device memory in a forward halves the batch and retries, counted; results are
those of the whole batch. The error is injected from a wrapped engine, so this runs on the CPU."""

import numpy as np
import pytest
import torch

from facestream.facelib.face import Face
from facestream.facelib.models.engines import BatchSplitter
from facestream.facelib.models.insightface_pack import EngineOptions, ScrfdDetector
from facestream.facelib.models.swappers import InSwapper
from tests import modelgen
from tests.stages.test_analysis import photos


class TightMemory:
    """An engine that runs out of memory on more than ``fits`` items, and records the sizes it ran."""

    def __init__(self, engine, fits):
        self.engine, self.fits, self.sizes = engine, fits, []

    def __call__(self, *inputs, **named):
        n = (inputs or tuple(named.values()))[0].shape[0]
        if n > self.fits:
            raise torch.OutOfMemoryError(f"CUDA out of memory (injected: {n} items)")
        self.sizes.append(n)
        return self.engine(*inputs, **named)


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    d = tmp_path_factory.mktemp("pack")
    modelgen.make_scrfd(d / "det_10g.onnx", scale="tiny", seed=1)
    modelgen.make_inswapper(d / "inswapper_128.onnx", scale="tiny", seed=6)
    return d


def test_detector_halves_its_batch_until_it_fits(pack):
    images = [torch.from_numpy(p) for p in photos()]
    expected = ScrfdDetector(pack / "det_10g.onnx", EngineOptions()).detect(images)
    det = ScrfdDetector(pack / "det_10g.onnx", EngineOptions())
    det.engine = tight = TightMemory(det.engine, fits=3)
    got = det.detect(images)
    assert det.split.retries == 2 and tight.sizes == [2, 2, 2, 2]  # 8 -> 4 -> 2
    for a, b in zip(got, expected):
        assert len(a.boxes) == len(b.boxes) > 0
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-4)
        np.testing.assert_allclose(a.kps, b.kps, atol=1e-4)
    det.detect(images[:5])  # the smaller batch stays: no new failure
    assert det.split.retries == 2 and tight.sizes[4:] == [2, 2, 1]


def test_swapper_caps_faces_per_forward_and_halves_on_out_of_memory(pack):
    rng = np.random.default_rng(0)
    image = torch.from_numpy(photos()[0])
    faces = []
    for _ in range(11):
        kps = np.array([[30, 40], [70, 40], [50, 60], [35, 80], [65, 80]], np.float32) * rng.uniform(1, 2) + rng.uniform(0, 500, 2)
        faces.append(Face(box=np.array([0, 0, 1, 1], np.float32), score=1.0, kps=kps.astype(np.float32), identity="a"))
    source = {"a": rng.normal(size=512).astype(np.float32)}
    whole = InSwapper(pack / "inswapper_128.onnx", EngineOptions())
    whole.set_sources(source)
    whole.engine = capped = TightMemory(whole.engine, fits=100)
    expected = whole.generate([image], [0] * 11, faces)
    assert capped.sizes == [4, 4, 3] and whole.split.retries == 0  # FORWARD_FACES_CPU

    swapper = InSwapper(pack / "inswapper_128.onnx", EngineOptions())
    swapper.set_sources(source)
    swapper.engine = tight = TightMemory(swapper.engine, fits=2)
    got = swapper.generate([image], [0] * 11, faces)
    assert swapper.split.retries == 1 and tight.sizes == [2] * 5 + [1]  # 4 -> 2
    for g, e in zip(got, expected):
        assert torch.equal(g.crop, e.crop)


def test_one_item_that_does_not_fit_is_an_error():
    split = BatchSplitter(name="m")

    def forward(x):
        raise torch.OutOfMemoryError("injected")

    with pytest.raises(torch.OutOfMemoryError):
        split(forward, torch.zeros(4, 2))
    assert split.retries == 2 and split.limit == 1
