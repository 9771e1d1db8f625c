"""Each stage thread's own CUDA stream and the hand-over of frames between them.

On the CPU the lanes do nothing and the tensors a frame carries are found where stages put them; on
a GPU (marked ``needs_cuda``) a frame written by one stage's slow kernels is read complete by the
next stage's stream, with the host never waiting.
"""

from __future__ import annotations

import threading
import time
from fractions import Fraction

import numpy as np
import pytest
import torch

from facestream.facelib.face import Face
from facestream.facelib.models.swappers import Generated
from facestream.pipeline.frame import Frame
from facestream.pipeline.runner import Pipeline
from facestream.pipeline.stage import Sink, Transform
from facestream.pipeline.streams import StageStream, tensors_in
from tests.pipeline.test_runner import CountingSource


def _frame(image: torch.Tensor, index: int = 0) -> Frame:
    return Frame(index=index, pts=index, time_base=Fraction(1, 25), captured_at=time.time(), image=image)


def test_the_tensors_a_frame_carries_are_found_where_the_stages_put_them() -> None:
    crop, target, coverage = torch.zeros(8, 8, 3), torch.ones(8, 8, 3), torch.zeros(8, 8)
    face = Face(box=np.array([0, 0, 4, 4], np.float32), score=0.9)
    face.generated = Generated(crop, np.eye(2, 3, dtype=np.float32), target, "inswapper", coverage=coverage)
    frame = _frame(torch.zeros(4, 4, 3, dtype=torch.uint8))
    frame.faces = [face]
    found = list(tensors_in([frame.image, frame.faces], depth=3))
    assert [t.data_ptr() for t in found] == [frame.image.data_ptr(), crop.data_ptr(), target.data_ptr(),
                                              coverage.data_ptr()]
    assert list(tensors_in([frame.image, frame.faces], depth=1)) == [frame.image]  # face fields are deeper


def test_on_the_cpu_a_lane_changes_nothing() -> None:
    lane = StageStream(torch.device("cpu"))
    frames = [_frame(torch.zeros(2, 2, 3, dtype=torch.uint8), i) for i in range(3)]
    with lane:
        lane.take(frames)
        lane.hand_on(frames)
    assert lane.stream is None and all(f.ready is None for f in frames)


class _Write(Transform):
    """Overwrites each picture with slow kernels on its own stream: a reader that does not wait sees
    the old values."""

    name = "write"

    def process(self, frames: list[Frame]) -> list[Frame]:
        for f in frames:
            big = torch.rand(2048, 2048, device=f.image.device)
            for _ in range(20):  # about tens of milliseconds of queued work
                big = big @ big / 2048
            f.image = (big[: f.height, : f.width, None].expand(-1, -1, 3) * 0 + f.index % 200 + 50).to(torch.uint8)
        return frames


class _Check(Sink):
    name = "check"

    def __init__(self) -> None:
        self.wrong: list[int] = []
        self.streams: set[int] = set()
        self.threads: set[str] = set()

    def write(self, frames: list[Frame]) -> None:
        self.streams.add(torch.cuda.current_stream().cuda_stream)
        self.threads.add(threading.current_thread().name)
        for f in frames:
            if int(f.image[0, 0, 0].item()) != f.index % 200 + 50:
                self.wrong.append(f.index)


class _CudaSource(CountingSource):
    def read(self):  # type: ignore[override]
        for frame in super().read():
            frame.image = frame.image.cuda()
            yield frame


@pytest.mark.needs_cuda
def test_each_stage_runs_on_its_own_stream_and_reads_what_the_previous_one_wrote() -> None:
    check = _Check()
    Pipeline([_CudaSource(30, size=(64, 48)), _Write(), check], device="cuda").run()
    assert check.wrong == []
    assert check.streams and torch.cuda.default_stream().cuda_stream not in check.streams


@pytest.mark.needs_cuda
def test_a_lane_hands_on_without_the_host_waiting() -> None:
    producer, consumer = StageStream(torch.device("cuda")), StageStream(torch.device("cuda"))
    frame = _frame(torch.zeros(64, 64, 3, dtype=torch.uint8, device="cuda"))
    with producer:
        big = torch.rand(4096, 4096, device="cuda")
        for _ in range(30):
            big = big @ big / 4096
        frame.image = (big[:64, :64, None].expand(-1, -1, 3) * 0 + 7).to(torch.uint8)
        producer.hand_on([frame])
    assert frame.ready is not None and not frame.ready.query()  # queued: the host did not wait
    with consumer:
        consumer.take([frame])
        assert int(frame.image.sum().item()) == 7 * 64 * 64 * 3
