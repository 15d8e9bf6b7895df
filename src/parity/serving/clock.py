"""The serving path's clock and its timers, finer than the event loop's.

uvloop (libuv) keeps time in whole milliseconds: `loop.time()` is the start of the loop's current
iteration, floored to the millisecond, and a timer's delay is rounded to the nearest millisecond
(`call_later(0.0003)` fires at once, `call_later(0.0006)` after about 1 ms).  Dynamic batching waits
are often well under a millisecond (Triton's `max_queue_delay_microseconds`), request timeouts are
given in microseconds and queue durations are reported in them, so the serving path reads `now()`
(`time.monotonic`: the same CLOCK_MONOTONIC as the loop's, at full resolution) and sets its
timers with `call_at`.

`call_at(loop, when, fn, *args)` runs `fn(*args)` on the loop at `now() >= when`, never before.  A
timer due in 2 ms or more starts on the loop's own timer, set to wake 1.5 ms early (more than its
rounding); the last stretch is timed by one helper thread that sleeps on a condition variable (a
nanosecond timeout) and hands the call to the loop with `call_soon_threadsafe`.  A timer is cheap
to set and to cancel, and most are cancelled before they fire (a request answered before its
deadline, a batch filled before its delay).
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time

now = time.monotonic

_COARSE_S = 0.002  # at least this far ahead: the loop's own timer first
_EARLY_S = 0.0015  # how early that one is set to wake (its rounding is at most 0.5 ms)


class Timer:
    __slots__ = ("when", "fn", "args", "loop", "cancelled", "handle")

    def __init__(self, loop, when: float, fn, args):
        self.loop, self.when, self.fn, self.args = loop, when, fn, args
        self.cancelled = False
        self.handle = None  # the loop's timer while the coarse part runs

    def cancel(self) -> None:
        self.cancelled = True
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None


def call_at(loop, when: float, fn, *args) -> Timer:
    """Run `fn(*args)` on `loop` once `now() >= when`; `.cancel()` stops it."""
    t = Timer(loop, when, fn, args)
    _arm(t)
    return t


def _arm(t: Timer) -> None:
    t.handle = None
    if t.cancelled:
        return
    remaining = t.when - now()
    if remaining >= _COARSE_S:
        t.handle = t.loop.call_later(remaining - _EARLY_S, _arm, t)
    elif remaining <= 0:
        t.handle = t.loop.call_soon(_fire, t)  # never from inside the caller's call
    else:
        _fine().add(t)


def _fire(t: Timer) -> None:
    if not t.cancelled:
        t.fn(*t.args)


class _FineTimers(threading.Thread):
    """The helper thread: a heap of timers due within a few milliseconds."""

    def __init__(self):
        super().__init__(name="parity-timers", daemon=True)
        self.cond = threading.Condition()
        self.heap: list[tuple[float, int, Timer]] = []
        self.seq = itertools.count()

    def add(self, t: Timer) -> None:
        with self.cond:
            heapq.heappush(self.heap, (t.when, next(self.seq), t))
            if self.heap[0][2] is t:
                self.cond.notify()

    def run(self) -> None:
        heap, cond = self.heap, self.cond
        while True:
            due = []
            with cond:
                while not heap:
                    cond.wait()
                wait = heap[0][0] - now()
                if wait > 0:
                    cond.wait(wait)
                t_now = now()
                while heap and heap[0][0] <= t_now:
                    due.append(heapq.heappop(heap)[2])
            for t in due:
                if not t.cancelled:
                    try:
                        t.loop.call_soon_threadsafe(_fire, t)
                    except RuntimeError:  # the loop was closed meanwhile: nothing left to run it on
                        pass


_thread: _FineTimers | None = None
_lock = threading.Lock()


def _fine() -> _FineTimers:
    global _thread
    if _thread is None or not _thread.is_alive():  # also after a fork (threads do not survive it)
        with _lock:
            if _thread is None or not _thread.is_alive():
                _thread = _FineTimers()
                _thread.start()
    return _thread


__all__ = ["Timer", "call_at", "now"]
