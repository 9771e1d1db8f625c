"""Models loaded once and lent to every pipeline of a process (a batch running several files).

Outside :func:`sharing`, every call of a factory loads its own model, as a single run wants (its
memory is handed back when the run ends). Inside it, the pipelines borrow from a pool per model
configuration: a call into the model takes an idle copy, so that no copy ever runs two calls at
once (not every backend is safe across threads: dlib's is not). A GPU runs one batch at a time
anyway, so a CUDA model is loaded once; on the CPU the pool grows to ``cpu_copies`` copies, so
that pipelines running side by side on several cores are not held up by one model.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

_guard = threading.Lock()
_cache: dict[Hashable, Pool] | None = None
_cpu_copies = 1
_depth = 0


class Pool:
    """Copies of one model, lent one call at a time; attributes are read from the first copy.

    Methods named ``set_*`` (a swapper's sources, say) configure the model: they run on every copy,
    and on copies made later.

    Example:
        >>> pool = Pool(lambda: [3, 1, 2], copies=2)
        >>> pool.index(2), pool.loaded
        (2, 1)
    """

    def __init__(self, load: Callable[[], Any], *, copies: int = 1) -> None:
        self._load = load
        self._limit = max(1, copies)
        self._idle: list[Any] = []
        self._all: list[Any] = []
        self._settings: list[tuple[str, tuple, dict]] = []
        self._cond = threading.Condition()
        self._new()

    @property
    def loaded(self) -> int:
        return len(self._all)

    def _new(self) -> Any:
        model = self._load()
        for name, args, kwargs in self._settings:
            getattr(model, name)(*args, **kwargs)
        self._all.append(model)
        self._idle.append(model)
        return model

    def _take(self) -> Any:
        with self._cond:
            while not self._idle:
                if len(self._all) < self._limit:
                    self._all.append(None)  # a place, taken while the copy loads outside the lock
                    break
                self._cond.wait()
            else:
                return self._idle.pop()
        model = self._load()
        with self._cond:
            for name, args, kwargs in self._settings:
                getattr(model, name)(*args, **kwargs)
            self._all[self._all.index(None)] = model
        return model

    def _give(self, model: Any) -> None:
        with self._cond:
            self._idle.append(model)
            self._cond.notify()

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._all[0], name)
        if not callable(value):
            return value
        if name.startswith("set_"):
            def configure(*args: Any, **kwargs: Any) -> Any:
                with self._cond:
                    while len(self._idle) < len(self._all):  # every copy idle
                        self._cond.wait()
                    self._settings.append((name, args, kwargs))
                    result = None
                    for model in self._all:
                        result = getattr(model, name)(*args, **kwargs)
                    return result

            return configure

        def call(*args: Any, **kwargs: Any) -> Any:
            model = self._take()
            try:
                return getattr(model, name)(*args, **kwargs)
            finally:
                self._give(model)

        return call


def halvings(model: Any) -> int:
    """How often a model (or every copy of a pooled one) halved a batch after running out of device
    memory: its :class:`~facestream.facelib.models.engines.BatchSplitter`'s retries (0 for models
    without one).

    Example:
        >>> halvings(object())
        0
    """
    if isinstance(model, Pool):
        return sum(halvings(copy) for copy in model._all if copy is not None)
    return int(getattr(getattr(model, "split", None), "retries", 0))


@contextmanager
def sharing(*, cpu_copies: int = 1) -> Iterator[None]:
    """Within this block, :func:`shared` lends pooled models (nestable; the outermost block's
    ``cpu_copies`` holds)."""
    global _cache, _depth, _cpu_copies
    with _guard:
        if _depth == 0:
            _cache = {}
            _cpu_copies = cpu_copies
        _depth += 1
    try:
        yield
    finally:
        with _guard:
            _depth -= 1
            if _depth == 0:
                _cache = None


def shared(key: Hashable, load: Callable[[], T], *, device: str = "cpu") -> T:
    """``load()`` a model, or, while :func:`sharing`, the pool for ``key`` (made once, even when
    several pipelines ask at the same moment)."""
    with _guard:
        cache = _cache
        if cache is None:
            return load()
        slot = cache.get(key)
        if slot is None:
            slot = cache[key] = _Pending()
    if isinstance(slot, _Pending):
        with slot.lock:
            if slot.pool is None:
                copies = 1 if device.startswith("cuda") else _cpu_copies
                slot.pool = Pool(load, copies=copies)
            with _guard:
                cache[key] = slot.pool
            return slot.pool  # type: ignore[return-value]
    return slot  # type: ignore[return-value]


class _Pending:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pool: Pool | None = None
