"""Running out of device memory is a reported condition, and the ``memory`` section is honoured."""

from __future__ import annotations

import pytest
import torch

from facestream.facelib.models.engines import BatchSplitter
from facestream.facelib.models.shared import Pool, halvings
from facestream.pipeline.device import limit_gpu_memory
from facestream.pipeline.errors import ConfigError
from facestream.settings import load_settings
from tests.conftest import run_cli


class _Model:
    """Runs ``double`` through a splitter; a forward of more than ``fits`` items runs out of memory."""

    def __init__(self, fits: int) -> None:
        self.fits = fits
        self.split = BatchSplitter(name="test")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.shape[0] > self.fits:
            raise torch.OutOfMemoryError("CUDA out of memory (as the allocator words it)")
        return [x * 2]

    def double(self, x: torch.Tensor) -> torch.Tensor:
        return self.split(self.forward, x)[0]


def test_halvings_count_every_copy_of_a_pooled_model() -> None:
    pool = Pool(lambda: _Model(fits=3), copies=2)
    assert halvings(pool) == 0
    assert pool.double(torch.arange(8)).tolist() == [2 * i for i in range(8)]  # 8 -> 4 -> 2 a forward
    assert halvings(pool) == 2
    plain = _Model(fits=1)
    plain.double(torch.arange(4))
    assert halvings(plain) == 2 and halvings(object()) == 0


def test_memory_section_is_validated_in_one_line() -> None:
    assert load_settings(overrides=["memory.gpu_fraction=0.5"]).memory.gpu_fraction == 0.5
    with pytest.raises(ConfigError, match=r"memory.gpu_fraction.*within \(0, 1\]"):
        load_settings(overrides=["memory.gpu_fraction=1.5"])
    with pytest.raises(ConfigError, match="memory.detect_max_side"):
        load_settings(overrides=["memory.detect_max_side=10"])


def test_a_bad_memory_key_on_the_command_line_is_one_line(tmp_path, clip) -> None:
    src = clip("memory.mp4", seconds=0.4)
    result = run_cli("run", str(src), "-o", str(tmp_path / "o.mp4"), "--set", "memory.pinned_mb=-1")
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0 and "memory.pinned_mb" in result.stderr
    assert not (tmp_path / "o.mp4").exists()


@pytest.mark.needs_cuda
def test_a_gpu_share_makes_large_batches_halve_instead_of_failing() -> None:
    total = torch.cuda.get_device_properties(0).total_memory
    limit_gpu_memory(torch.device("cuda"), 0.05)
    try:
        per_item = int(total * 0.05 / 6)  # about 6 items fit in the share
        split = BatchSplitter(name="test")

        def forward(x: torch.Tensor) -> list[torch.Tensor]:
            room = torch.empty(x.shape[0] * per_item, dtype=torch.uint8, device="cuda")
            return [x * 2 + room[:1].float() * 0]

        out = split(forward, torch.arange(32, device="cuda", dtype=torch.float32))[0]
        assert out.tolist() == [2.0 * i for i in range(32)]
        assert split.retries >= 2 and split.limit is not None and split.limit <= 6
    finally:
        limit_gpu_memory(torch.device("cuda"), 1.0)
