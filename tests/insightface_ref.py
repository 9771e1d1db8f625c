"""What the tests share for calling insightface's reference classes."""

import numpy as np

CPU = ["CPUExecutionProvider"]


class RefFace(dict):
    """insightface's Face: a dict with attribute access."""

    def __getattr__(self, key):
        return self[key]


def bgr(rgb: np.ndarray) -> np.ndarray:
    """insightface takes BGR images (OpenCV's order); facestream's frames are RGB."""
    return np.ascontiguousarray(rgb[..., ::-1])
