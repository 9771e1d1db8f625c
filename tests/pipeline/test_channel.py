import threading
import time

import pytest

from facestream.pipeline.channel import Channel, SideChannel
from facestream.pipeline.errors import Cancelled


def test_block_policy_blocks_the_producer_until_there_is_room():
    ch = Channel(capacity=2, policy="block")
    ch.put(1)
    ch.put(2)
    done = threading.Event()

    def producer():
        ch.put(3)
        done.set()

    t = threading.Thread(target=producer)
    t.start()
    assert not done.wait(0.2), "put on a full block channel must wait"
    assert ch.get_batch(1) == [1]
    assert done.wait(2)
    assert ch.get_batch(8) == [2, 3]
    assert ch.drops == 0
    t.join()


def test_latest_policy_drops_oldest_and_counts():
    dropped = []
    ch = Channel(capacity=3, policy="latest", on_drop=dropped.append)
    for i in range(10):
        ch.put(i)
    assert ch.get_batch(10) == [7, 8, 9]
    assert ch.drops == 7
    assert dropped == list(range(7))


def test_batch_waits_at_most_max_wait_after_first_item():
    ch = Channel(capacity=8)
    ch.put("a")
    t = time.monotonic()
    batch = ch.get_batch(4, max_wait_s=0.15)
    waited = time.monotonic() - t
    assert batch == ["a"]
    assert 0.1 <= waited < 1.0


def test_batch_returns_as_soon_as_full():
    ch = Channel(capacity=8)

    def feed():
        for i in range(4):
            time.sleep(0.02)
            ch.put(i)

    threading.Thread(target=feed).start()
    t = time.monotonic()
    assert ch.get_batch(4, max_wait_s=5.0) == [0, 1, 2, 3]
    assert time.monotonic() - t < 2.0


def test_close_drains_then_signals_end():
    ch = Channel(capacity=4)
    ch.put(1)
    ch.put(2)
    ch.close()
    assert ch.get_batch(1) == [1]
    assert ch.get_batch(5) == [2]
    assert ch.get_batch(5) is None
    with pytest.raises(RuntimeError):
        ch.put(3)


def test_cancel_wakes_blocked_producer_and_consumer():
    full = Channel(capacity=1)
    full.put(0)
    empty = Channel(capacity=1)
    errors = []

    def blocked(fn):
        try:
            fn()
        except Cancelled:
            errors.append(fn)

    threads = [
        threading.Thread(target=blocked, args=(lambda: full.put(1),)),
        threading.Thread(target=blocked, args=(lambda: empty.get_batch(1),)),
    ]
    for t in threads:
        t.start()
    time.sleep(0.1)
    full.cancel()
    empty.cancel()
    for t in threads:
        t.join(2)
        assert not t.is_alive()
    assert len(errors) == 2


def test_order_is_preserved_across_threads():
    ch = Channel(capacity=3)
    got = []

    def consume():
        while (batch := ch.get_batch(2, 0.001)) is not None:
            got.extend(batch)

    t = threading.Thread(target=consume)
    t.start()
    for i in range(500):
        ch.put(i)
    ch.close()
    t.join(5)
    assert got == list(range(500))


def test_invalid_arguments_are_named():
    with pytest.raises(ValueError, match="capacity"):
        Channel(capacity=0)
    with pytest.raises(ValueError, match="'sometimes'"):
        Channel(capacity=1, policy="sometimes")


def test_side_channel_takes_by_predicate():
    side = SideChannel()
    for t in (0.1, 0.2, 0.3, 0.4):
        side.put(t)
    assert side.take_until(lambda x: x <= 0.25) == [0.1, 0.2]
    assert side.take_all() == [0.3, 0.4]
    assert len(side) == 0
