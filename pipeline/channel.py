"""Bounded queues between stage threads, with two flow policies."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, Literal, TypeVar

from .errors import Cancelled

T = TypeVar("T")

Policy = Literal["block", "latest"]
POLICIES: tuple[Policy, ...] = ("block", "latest")


class Channel(Generic[T]):
    """A bounded FIFO between two threads.

    Policies:
        ``block``: a full channel blocks the producer (lossless backpressure; memory stays flat).
        ``latest``: a full channel drops its oldest item to make room, so the consumer always
        gets the freshest data and latency stays bounded; every drop is counted.

    ``get_batch(..., max_age_s=...)`` (the runner passes one frame interval under ``latest``): an item
    that has waited longer than that is dropped too, unless it is the newest, so that a consumer that
    falls behind takes the freshest frame rather than a batch of stale ones.

    ``key`` (optional) names the stream an item belongs to, when items of several streams share the
    channel (several feeds on one pipeline): an item is stale only once a newer one of its own
    stream is queued, and a full ``latest`` channel drops the oldest item of the newcomer's stream
    (the oldest of all when it has none queued), so that one stream's frames never push out all
    of another's.

    ``close()`` marks the end of the stream: the consumer drains what is queued, then gets ``None``.
    ``cancel()`` tears down: every waiting or later ``put``/``get`` raises :class:`Cancelled`.

    Example:
        >>> ch = Channel(capacity=2, policy="latest")
        >>> for i in range(3): ch.put(i)
        >>> ch.get_batch(8), ch.drops
        ([1, 2], 1)
    """

    def __init__(
        self,
        *,
        capacity: int,
        policy: Policy = "block",
        name: str = "",
        on_drop: Callable[[T], None] | None = None,
        key: Callable[[T], Any] | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        self.capacity = capacity
        self.policy = policy
        self.name = name
        self.drops = 0
        self._on_drop = on_drop
        self._key = key
        self._items: deque[T] = deque()
        self._since: deque[float] = deque()  # when each item was put (monotonic)
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._closed = False
        self._cancelled = False

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T) -> None:
        """Add an item; blocks (``block``) or drops the oldest (``latest``) when full."""
        dropped: T | None = None
        with self._lock:
            if self._cancelled:
                raise Cancelled(self.name)
            if self._closed:
                raise RuntimeError(f"put on closed channel {self.name!r}")
            if len(self._items) >= self.capacity:
                if self.policy == "latest":
                    at = self._oldest_of(item)
                    dropped = self._items[at]
                    del self._items[at]
                    del self._since[at]
                    self.drops += 1
                else:
                    while len(self._items) >= self.capacity and not self._cancelled:
                        self._not_full.wait()
                    if self._cancelled:
                        raise Cancelled(self.name)
            self._items.append(item)
            self._since.append(time.monotonic())
            self._not_empty.notify()
        if dropped is not None and self._on_drop is not None:
            self._on_drop(dropped)

    def get_batch(self, max_items: int, max_wait_s: float = 0.0, max_age_s: float | None = None) -> list[T] | None:
        """Take up to ``max_items`` items, waiting at most ``max_wait_s`` after the first arrives.
        With ``max_age_s``, items that have waited longer are dropped (and counted), except the newest.

        Returns ``None`` once the channel is closed and drained.
        """
        stale: list[T] = []
        with self._lock:
            while not self._items:
                if self._cancelled:
                    raise Cancelled(self.name)
                if self._closed:
                    return None
                self._not_empty.wait()
            if max_items > 1 and max_wait_s > 0 and len(self._items) < max_items:
                deadline = time.monotonic() + max_wait_s
                while len(self._items) < max_items and not (self._closed or self._cancelled):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._not_empty.wait(remaining)
            if self._cancelled:
                raise Cancelled(self.name)
            if max_age_s is not None:
                stale = self._drop_stale(time.monotonic() - max_age_s)
            n = min(max_items, len(self._items))
            batch = [self._items.popleft() for _ in range(n)]
            for _ in range(n):
                self._since.popleft()
            self._not_full.notify_all()
        if self._on_drop is not None:
            for item in stale:
                self._on_drop(item)
        return batch

    def _oldest_of(self, item: T) -> int:
        """Where the oldest queued item of ``item``'s stream is (the oldest of all without one)."""
        if self._key is not None:
            key = self._key(item)
            for at, queued in enumerate(self._items):
                if self._key(queued) == key:
                    return at
        return 0

    def _drop_stale(self, too_old: float) -> list[T]:
        """Drop the items queued before ``too_old`` that have a newer one of their stream behind them."""
        if not self._items or self._since[0] >= too_old:
            return []
        key = self._key or (lambda _: None)
        newest = {key(item): at for at, item in enumerate(self._items)}
        stale: list[T] = []
        kept: deque[T] = deque()
        since: deque[float] = deque()
        for at, (item, t) in enumerate(zip(self._items, self._since)):
            if t < too_old and newest[key(item)] != at:
                stale.append(item)
            else:
                kept.append(item)
                since.append(t)
        self._items, self._since = kept, since
        self.drops += len(stale)
        return stale

    def close(self) -> None:
        """End of stream: the consumer drains the queue, then sees ``None``."""
        with self._lock:
            self._closed = True
            self._not_empty.notify_all()

    def discard(self) -> list[T]:
        """Empty the queue now and return what it held (the channel stays open)."""
        with self._lock:
            items = list(self._items)
            self._items.clear()
            self._not_full.notify_all()
        return items

    def cancel(self) -> None:
        """Tear down: wake everyone; queued items are discarded."""
        with self._lock:
            self._cancelled = True
            self._items.clear()
            self._since.clear()
            self._not_empty.notify_all()
            self._not_full.notify_all()


class SideChannel(Generic[T]):
    """An unbounded FIFO for small items that bypass the processing stages (e.g. compressed audio).

    It never blocks its producer, so it cannot deadlock the graph; its size stays bounded because the
    producer can run ahead of the consumer only as far as the bounded video channels allow.
    """

    def __init__(self) -> None:
        self._items: deque[T] = deque()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T) -> None:
        with self._lock:
            self._items.append(item)

    def take_until(self, keep: Callable[[T], bool]) -> list[T]:
        """Pop items from the front while ``keep(item)`` is true."""
        out: list[T] = []
        with self._lock:
            while self._items and keep(self._items[0]):
                out.append(self._items.popleft())
        return out

    def take_all(self) -> list[T]:
        with self._lock:
            out = list(self._items)
            self._items.clear()
        return out
