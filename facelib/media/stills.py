"""Still images as a video: one picture shown for a while, or a folder of pictures in name order."""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from facestream.pipeline.errors import InputError


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file as an ``(H, W, 3)`` uint8 RGB array.

    Raises:
        InputError: the file is missing or not an image OpenCV can read.
    """
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InputError(f"cannot read image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class Stills:
    """The pictures of an ``image`` (looped for ``duration_s``) or ``images`` input, at ``fps``.

    Example:
        >>> stills = Stills(["face.png"], fps=25, duration_s=2.0, looped=True)  # doctest: +SKIP
        >>> stills.count  # doctest: +SKIP
        50
    """

    def __init__(self, paths: list[str], *, fps: float, duration_s: float, looped: bool) -> None:
        self.paths = paths
        self.looped = looped
        self.frame_rate = Fraction(fps).limit_denominator(1001)
        first = read_rgb(paths[0])
        self.height, self.width = first.shape[:2]
        self.count = max(1, int(round(duration_s * fps))) if looped else len(paths)
        self._first = first

    def __iter__(self) -> Iterator[np.ndarray]:
        if self.looped:
            # A copy per frame: later stages paint into their frame's picture.
            return (self._first.copy() for _ in range(self.count))
        return (read_rgb(p) for p in self.paths)
