"""Tests of the 1€ filter and its vectorised bank."""

from __future__ import annotations

import math

import numpy as np
import pytest

from facestream.facelib.tracking import OneEuroFilter

#: Keypoint-like settings: 0.3 Hz at rest, +0.02 Hz per pixel per second of speed.
MIN_CUTOFF, BETA = 0.3, 0.02


def _run(filt: OneEuroFilter, values: np.ndarray, fps: float) -> np.ndarray:
    return np.array([filt(v, k / fps) for k, v in enumerate(values)])


def test_reduces_jitter_of_a_still_point() -> None:
    """2-pixel jitter on still (5, 2) keypoints: the variance drops more than tenfold.

    At rest the filter is an EMA with alpha = 1 / (1 + fps / (2 pi fc)); its output variance is
    alpha / (2 - alpha) of the input's, about 1/25 at 0.3 Hz and 30 fps; the jitter's apparent
    speed raises the cutoff a little, hence the bound of 1/10.
    """
    rng = np.random.default_rng(0)
    still = rng.uniform(0, 500, size=(5, 2))
    noisy = still + rng.normal(0, 2.0, size=(300, 5, 2))
    out = _run(OneEuroFilter(min_cutoff=MIN_CUTOFF, beta=BETA), noisy, 30.0)
    settled = slice(60, None)
    assert out.shape == noisy.shape
    assert np.var(out[settled] - still) < np.var(noisy[settled] - still) / 10


def test_lags_a_fast_ramp_little() -> None:
    """A 300 px/s ramp: the lag settles at 7.6 px, against 159 px without the speed term.

    An EMA lags a ramp by its speed times its time constant, here v / (2 pi (min_cutoff + beta v)).
    """
    speed, fps = 300.0, 30.0
    ramp = speed * np.arange(90) / fps
    lag = ramp - _run(OneEuroFilter(min_cutoff=MIN_CUTOFF, beta=BETA), ramp, fps)
    bound = speed / (2 * math.pi * (MIN_CUTOFF + BETA * speed))
    assert lag[-1] == pytest.approx(bound, rel=0.02)
    assert lag[30:].max() < 1.5 * bound
    still_lag = ramp - _run(OneEuroFilter(min_cutoff=MIN_CUTOFF, beta=0.0), ramp, fps)
    assert lag[-1] < still_lag[-1] / 10


def test_constant_input_passes_unchanged() -> None:
    value = np.array([[12.5, -3.0], [7.0, 1e6]])
    filt = OneEuroFilter(min_cutoff=MIN_CUTOFF, beta=BETA)
    out = _run(filt, np.repeat(value[None], 50, axis=0), 30.0)
    np.testing.assert_array_equal(out, np.broadcast_to(value, out.shape))


def test_same_smoothing_at_30_and_60_fps() -> None:
    """A 1 Hz, 50 px swing sampled at 30 and 60 fps is smoothed alike.

    The filter lags it by up to ~18 px, and the two outputs agree within 2 px at the common
    timestamps (the discretisation of a first-order filter differs that much); a filter smoothing
    per frame would lag twice as much at 60 fps.
    """

    def signal(fps: float) -> np.ndarray:
        t = np.arange(int(3 * fps)) / fps
        return 50 * np.sin(2 * math.pi * t)

    slow = _run(OneEuroFilter(min_cutoff=MIN_CUTOFF, beta=BETA), signal(30.0), 30.0)
    fast = _run(OneEuroFilter(min_cutoff=MIN_CUTOFF, beta=BETA), signal(60.0), 60.0)[::2]
    assert np.abs(slow[30:] - fast[30:]).max() < 2.0
    assert np.abs(slow[30:] - signal(30.0)[30:]).max() > 10.0


def test_elements_are_filtered_independently() -> None:
    rng = np.random.default_rng(1)
    walk = np.cumsum(rng.normal(0, 3, size=(40, 5, 2)), axis=0)
    together = _run(OneEuroFilter(min_cutoff=MIN_CUTOFF, beta=BETA), walk, 30.0)
    for i, j in np.ndindex(5, 2):
        alone = _run(OneEuroFilter(min_cutoff=MIN_CUTOFF, beta=BETA), walk[:, i, j], 30.0)
        np.testing.assert_allclose(together[:, i, j], alone, rtol=1e-12)


def test_reset_forgets_the_past() -> None:
    filt = OneEuroFilter()
    filt(np.zeros(3), 0.0)
    filt(np.ones(3), 0.1)
    filt.reset()
    np.testing.assert_array_equal(filt(np.full((68, 2), 4.0), 0.0), np.full((68, 2), 4.0))


def test_rejects_bad_samples() -> None:
    filt = OneEuroFilter()
    filt(np.zeros((5, 2)), 1.0)
    with pytest.raises(ValueError, match="timestamp"):
        filt(np.zeros((5, 2)), 1.0)
    with pytest.raises(ValueError, match="shape"):
        filt(np.zeros((68, 2)), 2.0)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("min_cutoff", 0.0),
        ("min_cutoff", float("inf")),
        ("beta", -0.1),
        ("d_cutoff", 0),
        ("beta", True),
    ],
)
def test_one_euro_rejects_bad_parameters(name: str, value: float) -> None:
    with pytest.raises(ValueError, match=name):
        OneEuroFilter(**{name: value})


def test_parameters_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        OneEuroFilter(1.0)  # type: ignore[call-arg]


def test_bank_equals_one_filter_per_key() -> None:
    """The vectorised bank gives each key exactly what its own OneEuroFilter gives, with keys that
    come and go and skip frames."""
    from facestream.facelib.tracking.smoothing import OneEuroBank, OneEuroFilter

    rng = np.random.default_rng(0)
    bank = OneEuroBank(min_cutoff=1.2, beta=0.05)
    singles: dict[int, OneEuroFilter] = {}
    for frame in range(60):
        keys = [k for k in range(6) if (frame + k) % 7 != 0 and not (k == 5 and 20 <= frame < 30)]
        if frame == 40:
            bank.drop([2])
            singles.pop(2, None)
        values = rng.normal(size=(len(keys), 5, 2)) + np.array(keys)[:, None, None] * 10
        got = bank(keys, values, frame / 30)
        for k, v, g in zip(keys, values, got):
            f = singles.setdefault(k, OneEuroFilter(min_cutoff=1.2, beta=0.05))
            np.testing.assert_allclose(g, f(v, frame / 30), rtol=1e-12, atol=1e-9)
    assert len(bank) == 6
