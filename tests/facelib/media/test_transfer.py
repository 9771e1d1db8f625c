"""Pinned staging buffers stay within their byte budget, whatever the sequence of picture sizes."""

import numpy as np
import pytest
import torch

from facestream.facelib.media.transfer import HostToDevice, StagingBuffers


class Fence:
    """Stands for a CUDA event: records that the host waited on it."""

    def __init__(self, log):
        self.log = log

    def synchronize(self):
        self.log.append(self)


def upload(pool, shape, log):
    host = pool.acquire(shape, torch.uint8)
    if host is not None:
        pool.release(host, Fence(log))
    return host


def test_buffers_are_reused_per_shape_then_bounded_across_shapes():
    waits = []
    pool = StagingBuffers(slots=3, max_bytes=10_000, pin=False)
    first = [upload(pool, (10, 100), waits) for _ in range(3)]
    assert pool.bytes == 3000 and not waits
    again = upload(pool, (10, 100), waits)  # the ring is full: its oldest buffer, once its copy is done
    assert again is first[0] and len(waits) == 1 and pool.bytes == 3000
    rng = np.random.default_rng(0)
    for _ in range(200):  # a folder of photos of different sizes
        upload(pool, (int(rng.integers(5, 40)), int(rng.integers(5, 60))), waits)
        assert pool.bytes <= 10_000
    assert len(pool._rings) < 40
    assert upload(pool, (101, 100), waits) is None  # larger than the whole budget: not staged


def test_a_large_shape_takes_room_from_the_least_recently_used():
    waits = []
    pool = StagingBuffers(slots=2, max_bytes=5000, pin=False)
    upload(pool, (10, 100), waits)  # A: 1000 bytes
    upload(pool, (20, 100), waits)  # B: 2000
    upload(pool, (10, 100), waits)  # A again: now B is the least recently used
    big = upload(pool, (25, 100), waits)  # C: 2500 bytes needs B's room
    assert big is not None and pool.bytes == 4500 and len(waits) == 1  # B's buffer waited on, then freed
    assert list(k[0] for k in pool._rings) == [(10, 100), (25, 100)]
    upload(pool, (25, 100), waits)  # C's second slot would exceed: A goes, then it fits
    assert pool.bytes == 5000 and list(k[0] for k in pool._rings) == [(25, 100)]


def test_cpu_uploads_are_views():
    a = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    t = HostToDevice(torch.device("cpu")).image(a)
    assert t.data_ptr() == a.ctypes.data


@pytest.mark.needs_cuda
def test_cuda_uploads_stay_within_pinned_budget():
    up = HostToDevice(torch.device("cuda"), max_bytes=3 << 20)
    rng = np.random.default_rng(0)
    for _ in range(30):
        a = rng.integers(0, 255, (int(rng.integers(100, 700)), int(rng.integers(100, 700)), 3), dtype=np.uint8)
        assert torch.equal(up.image(a).cpu(), torch.from_numpy(a))
        assert up.buffers.bytes <= 3 << 20
