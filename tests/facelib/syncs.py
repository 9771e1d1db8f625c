"""Counting the places where code running on a device would make the host wait for it.

On the CPU nothing waits, but the calls that would wait on CUDA are the same Python calls: reading a
tensor's value (``.item()``, ``.tolist()``, ``int()``, ``float()``, ``bool()``, use as an index,
``np.asarray``), copying it to the host (``.cpu()``, ``.numpy()``) and ``nonzero`` (whose result's
size is data-dependent). :func:`count_host_syncs` wraps them while the code under test runs.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator

import torch

_METHODS = ("item", "tolist", "cpu", "numpy", "nonzero", "__bool__", "__int__", "__float__", "__index__", "__array__")


@contextlib.contextmanager
def count_host_syncs() -> Iterator[Counter]:
    """Count host-waiting tensor calls (by name) made inside the block. A call that makes another
    (``.numpy()`` inside ``np.asarray``) is counted once."""
    counts: Counter = Counter()
    depth = [0]
    saved = {name: getattr(torch.Tensor, name) for name in _METHODS}
    saved_nonzero = torch.nonzero

    def wrap(name, fn):  # noqa: ANN001, ANN202
        def counted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            if depth[0] == 0:
                counts[name] += 1
            depth[0] += 1
            try:
                return fn(*args, **kwargs)
            finally:
                depth[0] -= 1
        return counted

    try:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, wrap(name, fn))
        torch.nonzero = wrap("nonzero", saved_nonzero)
        yield counts
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)
        torch.nonzero = saved_nonzero


@contextlib.contextmanager
def count_cuda_syncs() -> Iterator[list]:
    """The synchronising CUDA calls made inside the block, as PyTorch's sync debug mode reports
    them (one warning each: copies to the host, blocking uploads, ``.item()``, ``nonzero``...)."""
    import warnings

    found: list = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield found
        finally:
            torch.cuda.set_sync_debug_mode("default")
    found += [str(w.message) for w in caught if "synchroniz" in str(w.message)]
