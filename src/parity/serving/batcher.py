"""Dynamic batching as plain logic: no I/O, no clock, no event loop.

The scheduler owns the loop and the clock; it asks a `Batcher` what to run whenever a runner
instance is free, passing the current time.  Items are grouped by *signature* (the request's
non-batch dimensions): requests of different signatures never share a batch.

Semantics (those of Triton's dynamic batcher):
- a free runner takes queued requests in arrival order, whole requests only, up to
  ``max_batch_size`` rows;
- with ``max_queue_delay`` > 0 it waits for more while fewer rows than the target are queued
  (the largest preferred batch size, else max_batch_size), but never past the oldest request's
  arrival + delay;
- with preferred sizes and more rows queued than the smallest one, it takes the largest preferred
  size that the queue can fill exactly by whole requests, else as many rows as fit;
- ``max_queue_size`` bounds the number of queued requests: `put` refuses at once when full;
- a request whose deadline has passed is handed back as expired, never batched;
- a request that is no longer alive (cancelled, or answered by its deadline timer) is dropped.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Hashable, Protocol


class Item(Protocol):
    rows: int  # batch dimension of the request
    enqueued: float  # arrival time, on the scheduler's clock
    deadline: float | None  # absolute, same clock; None = none

    def alive(self) -> bool:
        """False once the request was cancelled or answered elsewhere: skip it."""
        ...


class QueueFull(Exception):
    pass


@dataclass(slots=True)
class Decision:
    batch: list = field(default_factory=list)  # run these now, in this order
    expired: list = field(default_factory=list)  # answer these DEADLINE_EXCEEDED
    wait_until: float | None = None  # nothing to run yet: look again at this time


class Batcher:
    def __init__(
        self,
        max_batch_size: int,
        preferred_batch_sizes: tuple[int, ...] = (),
        max_queue_delay: float = 0.0,
        max_queue_size: int = 0,
    ):
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self.max_batch_size = max_batch_size
        self.preferred = tuple(sorted(p for p in set(preferred_batch_sizes) if p <= max_batch_size))
        self.max_queue_delay = max_queue_delay
        self.max_queue_size = max_queue_size
        self._queues: dict[Hashable, deque] = {}
        self._count = 0  # queued items, including dead ones not yet purged
        self.rows = 0  # their rows
        self._refused = 0  # refusals since the last purge of a full queue

    def __len__(self) -> int:
        return self._count

    def queues(self):
        """The queues, one per signature (for shutdown: answer what is left)."""
        return self._queues.values()

    def live(self) -> int:
        """Queued requests still waiting (a scan: for metrics, not the request path)."""
        return sum(1 for q in self._queues.values() for it in q if it.alive())

    def put(self, signature: Hashable, item: Item) -> None:
        if self.max_queue_size and self._count >= self.max_queue_size:
            # A full queue may hold dead (cancelled) requests: purge them, but not on every
            # refusal -- a scan per refused request would make a flood quadratic.
            self._refused += 1
            if self._refused * 16 >= self._count:
                self._refused = 0
                self.purge()
            if self._count >= self.max_queue_size:
                raise QueueFull(self._count)
        q = self._queues.get(signature)
        if q is None:
            q = self._queues[signature] = deque()
        q.append(item)
        self._count += 1
        self.rows += item.rows

    def purge(self) -> None:
        """Drop requests that are no longer alive from every queue."""
        for sig, q in self._queues.items():
            live = deque(it for it in q if it.alive())
            self._count -= len(q) - len(live)
            self.rows -= sum(it.rows for it in q) - sum(it.rows for it in live)
            self._queues[sig] = live

    def take(self, now: float, *, full_only: bool = False) -> Decision:
        """Decide what a free runner instance runs now.  With `full_only` (a busy runner that
        could queue one more batch behind the running one) only a batch that cannot grow any
        more is taken, and nothing is waited for."""
        decision = Decision()
        queue = self._oldest_queue(now, decision.expired)
        if queue is None:
            return decision
        head = queue[0]
        limit = self.max_batch_size
        if full_only:
            sizes, full = self._reachable_sizes(queue, now)
            if not (full or (sizes and sizes[-1] == self.max_batch_size)):
                return decision
        elif self.preferred or self.max_queue_delay > 0:
            sizes, full = self._reachable_sizes(queue, now)
            hit = next((p for p in reversed(self.preferred) if p in sizes), None)
            if hit is not None:
                limit = hit
            ready = full or hit is not None or (bool(sizes) and sizes[-1] == self.max_batch_size)
            if not ready and self.max_queue_delay > 0 and now < head.enqueued + self.max_queue_delay:
                decision.wait_until = head.enqueued + self.max_queue_delay
                return decision
        rows = 0
        batch = decision.batch
        while queue:
            it = queue[0]
            if not it.alive():
                queue.popleft()
                self._count -= 1
                self.rows -= it.rows
                continue
            if it.deadline is not None and it.deadline <= now:
                queue.popleft()
                self._count -= 1
                self.rows -= it.rows
                decision.expired.append(it)
                continue
            if rows + it.rows > limit:
                break
            queue.popleft()
            self._count -= 1
            self.rows -= it.rows
            batch.append(it)
            rows += it.rows
        return decision

    def _oldest_queue(self, now: float, expired: list) -> deque | None:
        """The queue whose live head arrived first, dropping dead and expired heads on the way."""
        best, best_time = None, None
        for q in self._queues.values():
            while q:
                it = q[0]
                if not it.alive():
                    q.popleft()
                    self._count -= 1
                    self.rows -= it.rows
                elif it.deadline is not None and it.deadline <= now:
                    q.popleft()
                    self._count -= 1
                    self.rows -= it.rows
                    expired.append(it)
                else:
                    break
            if q and (best_time is None or q[0].enqueued < best_time):
                best, best_time = q, q[0].enqueued
        return best

    def _reachable_sizes(self, queue: deque, now: float) -> tuple[list[int], bool]:
        """Batch sizes reachable by taking whole live requests in order, and whether the next
        request would overflow max_batch_size (the batch cannot grow any more)."""
        sizes: list[int] = []
        rows = 0
        for it in queue:
            if not it.alive() or (it.deadline is not None and it.deadline <= now):
                continue
            if rows + it.rows > self.max_batch_size:
                return sizes, True
            rows += it.rows
            sizes.append(rows)
        return sizes, False
