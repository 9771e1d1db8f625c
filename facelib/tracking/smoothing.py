"""Temporal smoothing of per-track geometry (boxes, keypoints, landmarks).

Both filters take timestamps in seconds, so the same settings smooth the same way at 25, 30 or 60
frames per second, and across dropped frames. They work element-wise on arrays of any fixed shape,
e.g. a ``(4,)`` box, ``(5, 2)`` keypoints or ``(68, 2)`` landmarks.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np


class OneEuroFilter:
    """The 1€ filter (Casiez, Roussel and Vogel, CHI 2012), element-wise.

    A low-pass filter whose cutoff rises with speed, so it removes jitter when still and adds
    little lag when moving.

    The cutoff of each element is ``min_cutoff + beta * |speed|``, with the speed (units per
    second) itself low-passed at ``d_cutoff``. The speed is differentiated from the raw samples, as
    in the authors' reference code; the paper's pseudo-code differences against the previous
    *filtered* value, which adds ``lag / dt`` to the speed and so makes the smoothing depend on the
    frame rate.

    Args:
        min_cutoff: Cutoff frequency at rest, in Hz. Lower removes more jitter.
        beta: Cutoff increase per unit of speed, in Hz per (unit / s). Higher lags less when moving.
        d_cutoff: Cutoff frequency of the speed estimate, in Hz.

    Raises:
        ValueError: If ``min_cutoff`` or ``d_cutoff`` is not positive, or ``beta`` is negative.

    Example:
        >>> f = OneEuroFilter(min_cutoff=1.0, beta=0.01)
        >>> f(np.zeros((5, 2)), 0.0).shape
        (5, 2)
    """

    def __init__(
        self, *, min_cutoff: float = 1.0, beta: float = 0.0, d_cutoff: float = 1.0
    ) -> None:
        self.min_cutoff = _check_number("min_cutoff", min_cutoff, positive=True)
        self.beta = _check_number("beta", beta, positive=False)
        self.d_cutoff = _check_number("d_cutoff", d_cutoff, positive=True)
        self.reset()

    def reset(self) -> None:
        """Forget the past: the next value passes through unchanged."""
        self._value: np.ndarray | None = None
        self._raw: np.ndarray | None = None
        self._speed: np.ndarray | None = None
        self._time = 0.0

    def __call__(self, value: np.ndarray, timestamp: float) -> np.ndarray:
        """Filter one sample.

        Args:
            value: The new sample; the same shape on every call until :meth:`reset`.
            timestamp: Its time in seconds, increasing from call to call.

        Returns:
            The filtered sample, a new float64 array of ``value``'s shape.

        Raises:
            ValueError: If the shape changed, or ``timestamp`` is not after the previous one.
        """
        value = np.array(value, dtype=np.float64)
        if self._value is None or self._raw is None or self._speed is None:
            self._value, self._raw, self._speed = value, value, np.zeros_like(value)
            self._time = float(timestamp)
            return value.copy()
        dt = _elapsed(self._value, value, self._time, timestamp)
        self._speed = _blend(self._speed, (value - self._raw) / dt, _alpha(self.d_cutoff, dt))
        cutoff = self.min_cutoff + self.beta * np.abs(self._speed)
        self._value = _blend(self._value, value, _alpha(cutoff, dt))
        self._raw, self._time = value, float(timestamp)
        return self._value.copy()


class OneEuroBank:
    """Many independent 1€ filters, one per key (e.g. per track), stepped together.

    Each key filters its own signal exactly as :class:`OneEuroFilter` would, with its own last
    time. The states live in dense arrays (one row per key), so a step over N keys is a few array
    operations instead of N calls. A key seen for the first time, or one whose sample shape differs
    from the bank's, starts afresh (its value passes through).

    Example:
        >>> bank = OneEuroBank(min_cutoff=1.0, beta=0.01)
        >>> bank([7, 9], np.zeros((2, 5, 2)), 0.0).shape
        (2, 5, 2)
    """

    def __init__(self, *, min_cutoff: float = 1.0, beta: float = 0.0, d_cutoff: float = 1.0) -> None:
        self.min_cutoff = _check_number("min_cutoff", min_cutoff, positive=True)
        self.beta = _check_number("beta", beta, positive=False)
        self.d_cutoff = _check_number("d_cutoff", d_cutoff, positive=True)
        self._rows: dict[int, int] = {}
        self._free: list[int] = []
        self._shape: tuple[int, ...] | None = None
        self._value = self._raw = self._speed = np.zeros((0,))
        self._time = np.zeros(0)

    def __len__(self) -> int:
        return len(self._rows)

    def drop(self, keys: Iterable[int]) -> None:
        """Forget keys (ended tracks)."""
        for key in keys:
            row = self._rows.pop(key, None)
            if row is not None:
                self._free.append(row)

    def _row(self, key: int) -> int:
        if self._free:
            row = self._free.pop()
        else:
            row = len(self._time)
            grow = max(8, row)
            self._value = np.concatenate([self._value, np.zeros((grow, *self._shape))])  # type: ignore[misc]
            self._raw = np.concatenate([self._raw, np.zeros((grow, *self._shape))])  # type: ignore[misc]
            self._speed = np.concatenate([self._speed, np.zeros((grow, *self._shape))])  # type: ignore[misc]
            self._time = np.concatenate([self._time, np.zeros(grow)])
            self._free.extend(range(row + grow - 1, row, -1))
        self._rows[key] = row
        return row

    def __call__(self, keys: Sequence[int], values: np.ndarray, timestamp: float) -> np.ndarray:
        """Filter one sample per key; ``values`` is ``(len(keys), ...)``. Returns float64."""
        values = np.asarray(values, dtype=np.float64)
        t = float(timestamp)
        if values.shape[1:] != self._shape:  # a new shape: start over
            self._rows.clear()
            self._free.clear()
            self._shape = values.shape[1:]
            self._value = self._raw = self._speed = np.zeros((0, *self._shape))
            self._time = np.zeros(0)
        out = values.copy()
        old = [i for i, k in enumerate(keys) if k in self._rows and t > self._time[self._rows[k]]]
        if old:
            rows = np.array([self._rows[keys[i]] for i in old])
            new = values[old]
            dt = (t - self._time[rows]).reshape((-1,) + (1,) * (values.ndim - 1))
            speed = _blend(self._speed[rows], (new - self._raw[rows]) / dt, _alpha(self.d_cutoff, dt))
            cutoff = self.min_cutoff + self.beta * np.abs(speed)
            value = _blend(self._value[rows], new, _alpha(cutoff, dt))
            self._value[rows], self._raw[rows], self._speed[rows], self._time[rows] = value, new, speed, t
            out[old] = value
        seen = set(old)
        for i, k in enumerate(keys):
            if i not in seen:
                row = self._rows.get(k)
                if row is None:
                    row = self._row(k)
                self._value[row] = self._raw[row] = values[i]
                self._speed[row] = 0.0
                self._time[row] = t
        return out


def _alpha(cutoff: float | np.ndarray, dt: float) -> float | np.ndarray:
    """Smoothing factor of a first-order low-pass filter at ``cutoff`` Hz sampled every ``dt`` s."""
    return 1.0 / (1.0 + 1.0 / (2.0 * math.pi * cutoff * dt))


def _blend(previous: np.ndarray, value: np.ndarray, alpha: float | np.ndarray) -> np.ndarray:
    """``previous`` moved towards ``value`` by the fraction ``alpha``."""
    return previous + alpha * (value - previous)


def _elapsed(previous: np.ndarray, value: np.ndarray, last_time: float, timestamp: float) -> float:
    """Seconds since the last sample, after checking the new sample fits the filter."""
    if value.shape != previous.shape:
        raise ValueError(
            f"value shape changed from {previous.shape} to {value.shape}; reset() first"
        )
    dt = float(timestamp) - last_time
    if not dt > 0:
        raise ValueError(f"timestamp must increase, got {timestamp!r} after {last_time!r}")
    return dt


def _check_number(name: str, value: float, *, positive: bool) -> float:
    """``value`` as a float if it is finite and positive (or non-negative)."""
    ok = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value > 0 if positive else value >= 0)
    )
    if not ok:
        raise ValueError(
            f"{name} must be a finite number {'>' if positive else '>='} 0, got {value!r}"
        )
    return float(value)
