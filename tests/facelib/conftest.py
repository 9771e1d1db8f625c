"""Face-library tests compare float32 results to 1e-4: TensorFloat-32 stays off for them on CUDA
(PyTorch's default turns it on for convolutions, about 1e-3 off)."""

import pytest

from facestream.pipeline.device import set_tf32


@pytest.fixture(autouse=True, scope="session")
def _float32_is_float32():
    set_tf32(False)
