"""The batching logic, driven with plain items and a hand-held clock: no loop, no I/O."""

from dataclasses import dataclass

import pytest

from parity.serving.batcher import Batcher, QueueFull


@dataclass
class It:
    rows: int
    enqueued: float = 0.0
    deadline: float | None = None
    live: bool = True
    tag: str = ""

    def alive(self):
        return self.live


def rows(batch):
    return [it.rows for it in batch]


def test_takes_everything_queued_up_to_max_rows_in_arrival_order():
    b = Batcher(max_batch_size=8)
    items = [It(3, tag="a"), It(4, tag="b"), It(2, tag="c")]
    for it in items:
        b.put((), it)
    d = b.take(now=1.0)
    assert [it.tag for it in d.batch] == ["a", "b"]  # c would make 9 rows
    assert d.wait_until is None and not d.expired
    assert [it.tag for it in b.take(now=1.0).batch] == ["c"]
    assert len(b) == 0
    assert b.take(now=1.0).batch == []


def test_signatures_never_share_a_batch_and_oldest_head_goes_first():
    b = Batcher(max_batch_size=64)
    b.put(("len", 5), It(1, enqueued=2.0, tag="late"))
    b.put(("len", 7), It(1, enqueued=1.0, tag="early"))
    b.put(("len", 5), It(1, enqueued=3.0, tag="late2"))
    first = b.take(now=4.0).batch
    assert [it.tag for it in first] == ["early"]
    second = b.take(now=4.0).batch
    assert [it.tag for it in second] == ["late", "late2"]


def test_queue_delay_waits_for_more_rows_until_the_oldest_has_waited_long_enough():
    b = Batcher(max_batch_size=8, max_queue_delay=0.010)
    b.put((), It(2, enqueued=1.000))
    d = b.take(now=1.004)
    assert d.batch == [] and d.wait_until == pytest.approx(1.010)
    b.put((), It(2, enqueued=1.005))
    d = b.take(now=1.011)  # delay over: take what is there
    assert rows(d.batch) == [2, 2]


def test_queue_delay_does_not_wait_once_the_batch_is_full():
    b = Batcher(max_batch_size=4, max_queue_delay=1.0)
    for _ in range(5):
        b.put((), It(1, enqueued=0.0))
    d = b.take(now=0.001)
    assert rows(d.batch) == [1, 1, 1, 1]
    d = b.take(now=0.002)  # one row left, delay not over
    assert d.batch == [] and d.wait_until == pytest.approx(1.0)


def test_full_when_next_request_would_overflow():
    b = Batcher(max_batch_size=8, max_queue_delay=1.0)
    b.put((), It(5))
    b.put((), It(5))
    assert rows(b.take(now=0.0).batch) == [5]


def test_preferred_size_is_taken_at_once_and_preferred_over_max():
    b = Batcher(max_batch_size=16, preferred_batch_sizes=(4, 8), max_queue_delay=1.0)
    for _ in range(3):
        b.put((), It(1))
    d = b.take(now=0.0)
    assert d.batch == [] and d.wait_until == 1.0  # 3 rows: no preferred size reachable
    for _ in range(7):
        b.put((), It(1))
    d = b.take(now=0.0)  # 10 queued: 8 is the largest preferred size reachable
    assert len(d.batch) == 8
    d = b.take(now=1.5)  # 2 left, delay over
    assert len(d.batch) == 2


def test_full_queue_refuses_at_once_and_dead_items_free_their_place():
    b = Batcher(max_batch_size=4, max_queue_size=2)
    a, c = It(1), It(1)
    b.put((), a)
    b.put((), c)
    with pytest.raises(QueueFull):
        b.put((), It(1))
    a.live = False  # cancelled by its client
    b.put((), It(1, tag="new"))
    assert [it.tag for it in b.take(now=0).batch] == ["", "new"]


def test_a_flood_against_a_full_queue_costs_linear_time_and_dead_places_are_still_found():
    scans = 0

    class Counted(It):
        def alive(self):
            nonlocal scans
            scans += 1
            return self.live

    b = Batcher(max_batch_size=4, max_queue_size=1024)
    queued = [Counted(1) for _ in range(1024)]
    for it in queued:
        b.put((), it)
    for _ in range(10_000):
        with pytest.raises(QueueFull):
            b.put((), It(1))
    assert scans <= 10_000 * 20  # a scan of the whole queue per refusal would be 10 million
    queued[7].live = False  # one client gives up: its place is found within count/16 refusals
    refused = 0
    while True:
        try:
            b.put((), It(1, tag="in"))
            break
        except QueueFull:
            refused += 1
    assert refused <= 1024 // 16


def test_expired_requests_are_handed_back_and_never_batched():
    b = Batcher(max_batch_size=4)
    b.put((), It(1, deadline=0.5, tag="late"))
    b.put((), It(1, deadline=5.0, tag="ok"))
    b.put((), It(1, tag="none"))
    d = b.take(now=1.0)
    assert [it.tag for it in d.expired] == ["late"]
    assert [it.tag for it in d.batch] == ["ok", "none"]


def test_cancelled_requests_are_dropped_silently():
    b = Batcher(max_batch_size=4)
    x = It(1, tag="x")
    b.put((), x)
    b.put((), It(1, tag="y"))
    x.live = False
    d = b.take(now=0)
    assert [it.tag for it in d.batch] == ["y"] and not d.expired
    assert len(b) == 0


def test_many_rows_requests_are_never_split():
    b = Batcher(max_batch_size=64)
    for _ in range(5):
        b.put((), It(16))
    assert rows(b.take(now=0).batch) == [16, 16, 16, 16]
    assert rows(b.take(now=0).batch) == [16]


def test_full_only_takes_a_batch_only_when_it_cannot_grow():
    b = Batcher(max_batch_size=8, max_queue_delay=1.0)
    for _ in range(3):
        b.put((), It(2))
    d = b.take(now=0.0, full_only=True)
    assert d.batch == [] and d.wait_until is None  # 6 rows could still grow to 8
    b.put((), It(2))
    assert rows(b.take(now=0.0, full_only=True).batch) == [2, 2, 2, 2]
    assert b.rows == 0


def test_queued_rows_are_counted_through_puts_takes_and_drops():
    b = Batcher(max_batch_size=4)
    a = It(3)
    b.put((), a)
    b.put((), It(2))
    assert b.rows == 5
    a.live = False
    assert rows(b.take(now=0).batch) == [2]
    assert b.rows == 0
