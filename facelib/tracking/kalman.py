"""A constant-velocity Kalman filter on boxes, batched over tracks.

The state of one track is ``(cx, cy, a, h, vcx, vcy, va, vh)``: box centre, aspect ratio
``a = w / h``, height, and their velocities in units per frame. The noise model is ByteTrack's
(inherited from DeepSORT): every standard deviation is proportional to the box height, so a large
face near the camera is allowed to move more pixels per frame than a small one far away.

The filter holds no tracks: it maps arrays to arrays, ``mean (N, 8)`` and ``cov (N, 8, 8)``, so the
tracker keeps its tracks in a few arrays and predicts all of them in one call.
"""

from __future__ import annotations

import math

import numpy as np

_NDIM = 4
_ASPECT_STD_INIT = 1e-2
_ASPECT_STD_PROCESS = 1e-2
_ASPECT_STD_MEASURE = 1e-1
_ASPECT_VEL_STD = 1e-5


def xyxy_to_xyah(boxes: np.ndarray) -> np.ndarray:
    """Convert ``(N, 4)`` ``[x1, y1, x2, y2]`` boxes to ``[cx, cy, w / h, h]``.

    Args:
        boxes: ``(N, 4)`` boxes with positive height.

    Returns:
        ``(N, 4)`` float64 measurements.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    return np.stack([boxes[:, 0] + w / 2, boxes[:, 1] + h / 2, w / h, h], axis=1)


def xyah_to_xyxy(xyah: np.ndarray) -> np.ndarray:
    """Convert ``(N, >=4)`` ``[cx, cy, a, h, ...]`` rows to ``(N, 4)`` ``[x1, y1, x2, y2]`` boxes.

    Args:
        xyah: Rows whose first four columns are centre, aspect ratio and height (a Kalman mean
            works as is).

    Returns:
        ``(N, 4)`` float64 boxes.
    """
    half = np.empty((xyah.shape[0], 2))
    half[:, 1] = xyah[:, 3] / 2
    half[:, 0] = xyah[:, 2] * half[:, 1]
    return np.concatenate([xyah[:, :2] - half, xyah[:, :2] + half], axis=1)


class KalmanBoxFilter:
    """Constant-velocity Kalman filter on ``(cx, cy, a, h)`` box measurements, batched over tracks.

    Process and measurement noise standard deviations are ``std_weight_position * h`` for positions
    and ``std_weight_velocity * h`` for velocities (fixed small values for the aspect ratio), as in
    ByteTrack. One ``predict`` advances one frame.

    Args:
        std_weight_position: Position noise relative to box height (ByteTrack: 1/20).
        std_weight_velocity: Velocity noise relative to box height (ByteTrack: 1/160).

    Raises:
        ValueError: If a weight is not a finite positive number.

    Example:
        >>> kf = KalmanBoxFilter()
        >>> mean, cov = kf.initiate(np.array([[50.0, 100.0, 0.5, 200.0]]))
        >>> mean, cov = kf.predict(mean, cov)
        >>> mean[0, :4].tolist()
        [50.0, 100.0, 0.5, 200.0]
    """

    def __init__(
        self, *, std_weight_position: float = 1 / 20, std_weight_velocity: float = 1 / 160
    ) -> None:
        for name, value in (
            ("std_weight_position", std_weight_position),
            ("std_weight_velocity", std_weight_velocity),
        ):
            real = isinstance(value, int | float) and not isinstance(value, bool)
            if not (real and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite positive number, got {value!r}")
        self.std_weight_position = float(std_weight_position)
        self.std_weight_velocity = float(std_weight_velocity)
        self._transition = np.eye(2 * _NDIM)
        self._transition[:_NDIM, _NDIM:] = np.eye(_NDIM)

    def initiate(self, measurements: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Start tracks from their first measurements, with zero velocity.

        Args:
            measurements: ``(N, 4)`` ``[cx, cy, a, h]``.

        Returns:
            ``mean (N, 8)`` and diagonal ``cov (N, 8, 8)``.
        """
        measurements = np.asarray(measurements, dtype=np.float64).reshape(-1, _NDIM)
        mean = np.concatenate([measurements, np.zeros_like(measurements)], axis=1)
        cov = np.zeros((mean.shape[0], 2 * _NDIM, 2 * _NDIM))
        _add_to_diagonal(cov, self._variances(measurements[:, 3], 2.0, 10.0, _ASPECT_STD_INIT))
        return mean, cov

    def predict(self, mean: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Advance every track by one frame.

        Args:
            mean: ``(N, 8)`` state means.
            cov: ``(N, 8, 8)`` state covariances.

        Returns:
            The predicted ``mean`` and ``cov`` (new arrays).
        """
        new_mean = mean @ self._transition.T
        new_cov = self._transition @ cov @ self._transition.T
        _add_to_diagonal(new_cov, self._variances(mean[:, 3], 1.0, 1.0, _ASPECT_STD_PROCESS))
        return new_mean, new_cov

    def project(self, mean: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Project states to measurement space, adding measurement noise.

        Args:
            mean: ``(N, 8)`` state means.
            cov: ``(N, 8, 8)`` state covariances.

        Returns:
            ``(N, 4)`` projected means and ``(N, 4, 4)`` innovation covariances.
        """
        innovation_cov = cov[:, :_NDIM, :_NDIM].copy()
        variances = self._variances(mean[:, 3], 1.0, 1.0, _ASPECT_STD_MEASURE)
        _add_to_diagonal(innovation_cov, variances[:, :_NDIM])
        return mean[:, :_NDIM].copy(), innovation_cov

    def update(
        self, mean: np.ndarray, cov: np.ndarray, measurements: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Correct each track with its own measurement.

        Args:
            mean: ``(N, 8)`` predicted means.
            cov: ``(N, 8, 8)`` predicted covariances.
            measurements: ``(N, 4)`` ``[cx, cy, a, h]``, row ``i`` for track ``i``.

        Returns:
            The corrected ``mean`` and ``cov`` (new arrays).
        """
        projected_mean, innovation_cov = self.project(mean, cov)
        # Kalman gain K = P H^T S^-1; with H = [I 0], H P is the top four rows of P.
        gain = np.linalg.solve(innovation_cov, cov[:, :_NDIM, :]).transpose(0, 2, 1)
        innovation = measurements - projected_mean
        new_mean = mean + np.einsum("nij,nj->ni", gain, innovation)
        new_cov = cov - gain @ cov[:, :_NDIM, :]
        return new_mean, new_cov

    def _variances(
        self, h: np.ndarray, position_factor: float, velocity_factor: float, aspect_std: float
    ) -> np.ndarray:
        """``(N, 8)`` noise variances for boxes of height ``h``.

        Standard deviations are ``position_factor * std_weight_position * h`` for the centre and
        height, ``velocity_factor * std_weight_velocity * h`` for their velocities, ``aspect_std``
        for the aspect ratio, and a fixed tiny one for its velocity.
        """
        position = position_factor * self.std_weight_position
        velocity = velocity_factor * self.std_weight_velocity
        scale = np.array([position, position, 0.0, position, velocity, velocity, 0.0, velocity])
        offset = np.array([0.0, 0.0, aspect_std, 0.0, 0.0, 0.0, _ASPECT_VEL_STD, 0.0])
        return (h[:, None] * scale + offset) ** 2


def _add_to_diagonal(matrices: np.ndarray, values: np.ndarray) -> None:
    """Add ``values (N, D)`` to the diagonals of ``matrices (N, D, D)`` in place."""
    diagonal = np.arange(values.shape[1])
    matrices[:, diagonal, diagonal] += values
