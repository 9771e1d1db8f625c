"""Models loaded once and lent to every pipeline of a process (a batch running several files).

Outside :func:`sharing`, every call of a factory loads its own model, as a single run wants (its
memory is handed back when the run ends). Inside it, the first call loads the model and later
calls with the same configuration get the same instance; calls into it are serialised by a lock,
since one device runs one batch at a time anyway and not every backend is safe across threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

_guard = threading.Lock()
_cache: dict[Hashable, Any] | None = None
_depth = 0


class Serialized:
    """A model whose methods run one call at a time; attributes read through.

    Example:
        >>> s = Serialized([3, 1, 2])
        >>> s.index(2)
        2
    """

    def __init__(self, model: Any) -> None:
        self._model = model
        self._lock = threading.RLock()

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._model, name)
        if not callable(value):
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return value(*args, **kwargs)

        return call


@contextmanager
def sharing() -> Iterator[None]:
    """Within this block, :func:`shared` hands out one instance per configuration (nestable)."""
    global _cache, _depth
    with _guard:
        if _depth == 0:
            _cache = {}
        _depth += 1
    try:
        yield
    finally:
        with _guard:
            _depth -= 1
            if _depth == 0:
                _cache = None


def shared(key: Hashable, load: Callable[[], T]) -> T:
    """``load()`` a model, or, while :func:`sharing`, the instance loaded for ``key`` (loaded once,
    even when several pipelines ask at the same moment)."""
    with _guard:
        cache = _cache
        if cache is None:
            slot = None
        else:
            slot = cache.setdefault(key, _Slot())
    if slot is None:
        return load()
    with slot.lock:  # others asking for this model wait; other models load meanwhile
        if slot.model is None:
            slot.model = Serialized(load())
        return slot.model  # type: ignore[return-value]


class _Slot:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.model: Any = None
