"""Drives a `Batcher` on the event loop: one scheduler per loaded model version.

Requests are queued by signature; whenever a runner instance is free the scheduler asks the
batcher what to run.  A batch runs either inline on the event loop (models so cheap that a thread
hand-off would cost more than the model) or in the instance's own thread; the choice is made once,
at warm-up.  Outputs are split back to each request by its rows.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Hashable

import numpy as np

from parity.config import ModelConfig
from parity.errors import DeadlineExceeded, InternalError, ParityError, Unavailable
from parity.serving import clock
from parity.serving.batcher import Batcher, QueueFull
from parity.serving.runners.base import Runner
from parity.serving.stats import VersionStats

log = logging.getLogger("parity.scheduler")

DEFAULT_MAX_QUEUE_SIZE = 1024  # requests, when a config leaves max_queue_size at 0
INLINE_THRESHOLD_S = 0.00015  # batches whose measured run time is below this run inline on the loop


class Pending:
    """One queued request."""

    __slots__ = ("rows", "enqueued", "deadline", "inputs", "outputs", "future", "timer", "t0")

    def __init__(self, rows, enqueued, deadline, inputs, outputs, future, t0):
        self.rows = rows
        self.enqueued = enqueued
        self.deadline = deadline
        self.inputs = inputs
        self.outputs = outputs
        self.future = future
        self.timer = None
        self.t0 = t0

    def alive(self) -> bool:
        return not self.future.done()


class Ticket:
    """A request's completion as a plain callback: what a transport that answers from callbacks
    (HTTP) uses instead of an asyncio future.  The callback runs as soon as the batch is split,
    on the event loop, with this ticket; it must not raise (its errors are logged, not spread)."""

    __slots__ = ("_callback", "_done", "_result", "_exc", "context")

    def __init__(self, callback: Callable[["Ticket"], None]):
        self._callback = callback
        self.context = None  # set by the core: (plan, t0) for finish / fail
        self._done = False
        self._result = None
        self._exc: BaseException | None = None

    def done(self) -> bool:
        return self._done

    def result(self):
        if self._exc is not None:
            raise self._exc
        return self._result

    def _fire(self) -> None:
        try:
            self._callback(self)
        except Exception:
            log.exception("a completion callback failed")

    def set_result(self, value) -> None:
        self._done = True
        self._result = value
        self._fire()

    def set_exception(self, exc: BaseException) -> None:
        self._done = True
        self._exc = exc
        self._fire()

    def add_done_callback(self, fn: Callable[["Ticket"], None]) -> None:
        """Also call `fn(ticket)` when the request is answered (after the transport's callback)."""
        first = self._callback

        def both(ticket: "Ticket") -> None:
            try:
                first(ticket)
            finally:
                fn(ticket)

        self._callback = both

    def cancel(self) -> bool:
        """The client went away: the request leaves its queue; the callback sees CancelledError."""
        if self._done:
            return False
        self.set_exception(asyncio.CancelledError())
        return True


class Instance:
    __slots__ = ("runner", "executor", "inflight")

    def __init__(self, runner: Runner, threaded: bool):
        self.runner = runner
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="parity-runner") if threaded else None
        self.inflight = 0  # batches handed to its thread: one running, at most one queued behind


class Scheduler:
    def __init__(self, config: ModelConfig, runners: list[Runner], stats: VersionStats, *, inline_max_rows: int, stage=None):
        """`inline_max_rows`: batches of up to this many rows run on the event loop (a thread
        hand-off would cost more than the model), larger ones in the instance's thread.
        `stage`: a feature-joined model's `FeatureStage`: each batch first reads its features
        (on the event loop, without blocking it: `FeatureStage.fetch`), then runs like any other."""
        self.config = config
        self.stage = stage
        self.monitor = None  # a parity.monitoring.tap.VersionMonitor when the version has a reference profile
        self.stats = stats
        self.inline_max_rows = inline_max_rows
        self.loop = asyncio.get_running_loop()
        dyn = config.dynamic_batching
        if config.batching and dyn is not None:
            self.batcher = Batcher(
                config.max_batch_size,
                dyn.preferred_batch_size,
                dyn.max_queue_delay_microseconds * 1e-6,
                dyn.max_queue_size or DEFAULT_MAX_QUEUE_SIZE,
            )
        else:  # no dynamic batching: each request runs alone, as sent (a batch is one request)
            self.batcher = Batcher(1, max_queue_size=DEFAULT_MAX_QUEUE_SIZE)
        self.concat = config.batching and dyn is not None
        self.output_names = [t.name for t in config.outputs]
        always_inline = inline_max_rows >= max(config.max_batch_size, 1)
        self.instances = [Instance(r, threaded=not always_inline) for r in runners]
        self.free = list(self.instances)
        # Threaded instances running one batch: a full batch may be queued behind it, so the
        # runner starts it the moment it finishes instead of waiting for the event loop.
        self.stageable: list[Instance] = []
        self.running = 0
        self._drain_handle: asyncio.Handle | None = None
        self._wake_handle: clock.Timer | None = None
        self._wake_at: float | None = None
        stats.pending = self.batcher.live

    # -- request side -------------------------------------------------------------------------

    def submit(
        self, signature: Hashable, rows: int, inputs: list[np.ndarray], outputs: list[str], deadline: float | None, t0: int,
        callback: Callable[[Ticket], None] | None = None,
    ) -> asyncio.Future | Ticket:
        """Queue a request.  Returns an asyncio future, or with `callback` a `Ticket` that calls it."""
        loop = self.loop
        fut = loop.create_future() if callback is None else Ticket(callback)
        item = Pending(rows if self.concat else 1, clock.now(), deadline, inputs, outputs, fut, t0)
        try:
            self.batcher.put(signature, item)
        except QueueFull:
            raise Unavailable(
                f"model '{self.stats.model}' version {self.stats.version}: queue is full "
                f"({len(self.batcher)} requests waiting); retry later, or raise dynamic_batching.max_queue_size"
            ) from None
        if deadline is not None:
            item.timer = clock.call_at(loop, deadline, self._fail_expired, (item,))
        if self._drain_handle is None and (self.free or (self.stageable and self.batcher.rows >= self.config.max_batch_size)):
            self._drain_handle = loop.call_soon(self._drain)
        return fut

    def _deadline_message(self) -> str:
        return (
            f"model '{self.stats.model}' version {self.stats.version}: the request's deadline passed while it "
            "was queued; it was not executed. Allow a longer timeout, or add capacity"
        )

    # -- runner side --------------------------------------------------------------------------

    def _drain(self) -> None:
        self._drain_handle = None
        while self.free:
            decision = self.batcher.take(clock.now())
            self._fail_expired(decision.expired)
            batch = decision.batch
            if not batch:
                if decision.wait_until is not None:
                    self._wake(decision.wait_until)
                return
            instance = self.free.pop()
            self.running += 1
            if self.stage is not None:
                self._fetch_features(instance, batch)
                continue
            rows = batch[0].rows if len(batch) == 1 else sum(it.rows for it in batch)
            if instance.executor is None or rows <= self.inline_max_rows:
                try:
                    result = self._execute(instance.runner, batch)
                except BaseException as e:  # a runner failure fails its batch, never the loop
                    result = e
                self._complete(instance, batch, result)
            else:
                instance.inflight = 1
                self.stageable.append(instance)
                self._hand_to_thread(instance, batch)
        while self.stageable and self.stage is None and self.batcher.rows >= self.config.max_batch_size:
            decision = self.batcher.take(clock.now(), full_only=True)
            self._fail_expired(decision.expired)
            if not decision.batch:
                return
            instance = self.stageable.pop()
            instance.inflight = 2
            self.running += 1
            self._hand_to_thread(instance, decision.batch)

    def _fetch_features(self, instance: Instance, batch: list[Pending]) -> None:
        """A feature-joined batch: stack the entity inputs, read the batch's features on the event
        loop (the instance stays busy meanwhile, so the next batch gathers), then run the model."""
        t_start = time.perf_counter_ns()
        try:
            inputs, outputs, rows = self._prepare(batch)
            # the read sent at once on the loop's Redis connection, answered by a callback; else
            # (another store, no connection yet) a task awaits the store
            if self.stage.start(inputs, lambda result, error: self._features_done(instance, batch, result, error, outputs, rows, t_start), self.loop):
                return
            fut = asyncio.ensure_future(self.stage.fetch(inputs), loop=self.loop)
        except BaseException as e:
            self._release(instance)
            self._fail_batch(batch, e)
            return
        fut.add_done_callback(lambda f: self._features_fetched(instance, batch, f, outputs, rows, t_start))

    def _release(self, instance: Instance) -> None:
        self.running -= 1
        self.free.append(instance)
        if self._drain_handle is None and len(self.batcher):
            self._drain_handle = self.loop.call_soon(self._drain)

    def _features_fetched(self, instance: Instance, batch: list[Pending], f, outputs, rows, t_start) -> None:
        exc = f.exception()
        self._features_done(instance, batch, None if exc is not None else f.result(), exc, outputs, rows, t_start)

    def _features_done(self, instance: Instance, batch: list[Pending], result, exc, outputs, rows, t_start) -> None:
        if exc is not None:
            self._release(instance)
            self._fail_batch(batch, exc)
            return
        model_inputs, missing, defaulted, feature_ns = result
        in_ns = time.perf_counter_ns() - t_start  # stacking, the read and the assembly: the batch's input
        if instance.executor is None or rows <= self.inline_max_rows:
            t = time.perf_counter_ns()
            try:
                results = instance.runner.run(model_inputs, outputs)
                t_run = time.perf_counter_ns()
                if self.monitor is not None:
                    self.monitor.observe(model_inputs, outputs, results)
                per_request = self._split(batch, outputs, results)
                if missing is not None:
                    per_request = self._reject_missing(batch, per_request, missing)
                result = per_request, (t_start, in_ns, t_run - t, time.perf_counter_ns() - t_run), rows
            except BaseException as e:  # a runner failure fails its batch, never the loop
                result = e
            self._complete(instance, batch, result)
            # counted once the batch is answered: off the requests' path
            self.stats.record_features(feature_ns * 1e-9, missing.count() if missing is not None else 0, defaulted)
            if self._drain_handle is None and self.free and len(self.batcher):
                self._drain_handle = self.loop.call_soon(self._drain)
            return
        instance.inflight = 1
        self.stageable.append(instance)
        loop = self.loop
        cf = instance.executor.submit(self._run_timed, instance.runner, model_inputs, outputs)
        cf.add_done_callback(
            lambda c: loop.call_soon_threadsafe(self._complete_future, instance, batch, c, outputs, rows, t_start, in_ns, missing)
        )
        self.stats.record_features(feature_ns * 1e-9, missing.count() if missing is not None else 0, defaulted)

    def _hand_to_thread(self, instance: Instance, batch: list[Pending]) -> None:
        """Stack on the loop, run in the instance's thread, split back on the loop: the thread
        never waits for the GIL while the loop is busy with I/O."""
        loop = self.loop
        t_start = time.perf_counter_ns()
        try:
            inputs, outputs, rows = self._prepare(batch)
        except BaseException as e:
            instance.inflight -= 1
            if instance.inflight == 0:
                self.stageable.remove(instance)
                self.free.append(instance)
            else:
                self.stageable.append(instance)  # it was taken off the list to stage this batch
            self.running -= 1
            self._fail_batch(batch, e)
            return
        in_ns = time.perf_counter_ns() - t_start
        cf = instance.executor.submit(self._run_timed, instance.runner, inputs, outputs)
        cf.add_done_callback(
            lambda f: loop.call_soon_threadsafe(self._complete_future, instance, batch, f, outputs, rows, t_start, in_ns)
        )

    def _fail_expired(self, expired) -> None:
        """Answer DEADLINE_EXCEEDED to queued requests whose deadline passed (never executed)."""
        for item in expired:
            if not item.future.done():
                item.future.set_exception(DeadlineExceeded(self._deadline_message()))

    def _wake(self, at: float) -> None:
        if self._wake_handle is not None and self._wake_at is not None and self._wake_at <= at:
            return
        if self._wake_handle is not None:
            self._wake_handle.cancel()
        self._wake_at = at
        self._wake_handle = clock.call_at(self.loop, at, self._on_wake)

    def _on_wake(self) -> None:
        self._wake_handle = self._wake_at = None
        if self._drain_handle is None:
            self._drain()

    def _prepare(self, batch: list[Pending]) -> tuple[list[np.ndarray], list[str], int]:
        """Stack the requests' inputs into one batch; the outputs any of them asked for."""
        first = batch[0]
        if len(batch) == 1 or not self.concat:
            inputs = first.inputs
        else:
            inputs = [np.concatenate([it.inputs[i] for it in batch]) for i in range(len(first.inputs))]
        outputs = first.outputs  # names; requests in one signature queue may ask for different subsets
        if len(batch) > 1:
            wanted = set(outputs)
            for it in batch[1:]:
                wanted.update(it.outputs)
            outputs = [n for n in self.output_names if n in wanted]
        return inputs, outputs, self._stats_rows(batch, inputs)

    def _stats_rows(self, batch: list[Pending], inputs: list[np.ndarray]) -> int:
        if not self.concat and self.config.batching and inputs:
            return inputs[0].shape[0]  # a batching model without dynamic batching: the request's own batch
        return sum(it.rows for it in batch)

    def _split(self, batch: list[Pending], outputs: list[str], results: list[np.ndarray]) -> list[dict]:
        """Each request's slice of the batch's outputs (views, no copies)."""
        if len(batch) == 1:
            out = dict(zip(outputs, results))
            if self.concat:
                rows = batch[0].rows
                for name, arr in out.items():
                    if arr.ndim == 0 or arr.shape[0] != rows:
                        raise InternalError(self._rows_message(name, arr, rows))
            return [out]
        rows = sum(it.rows for it in batch)
        for name, arr in zip(outputs, results):
            if arr.ndim == 0 or arr.shape[0] != rows:
                raise InternalError(self._rows_message(name, arr, rows))
        per_request = []
        start = 0
        for it in batch:
            end = start + it.rows
            per_request.append({name: arr[start:end] for name, arr in zip(outputs, results)})
            start = end
        return per_request

    def _execute(self, runner: Runner, batch: list[Pending]):
        """Stack, run, split, on the event loop: (per-request outputs, timings, rows)."""
        t_start = time.perf_counter_ns()
        inputs, outputs, rows = self._prepare(batch)
        t_in = time.perf_counter_ns()
        results = runner.run(inputs, outputs)
        t_run = time.perf_counter_ns()
        if self.monitor is not None:
            self.monitor.observe(inputs, outputs, results)
        per_request = self._split(batch, outputs, results)
        t_out = time.perf_counter_ns()
        return per_request, (t_start, t_in - t_start, t_run - t_in, t_out - t_run), rows

    def _run_timed(self, runner: Runner, inputs: list[np.ndarray], outputs: list[str]):
        """The work done in a runner's thread: the model itself (the runtimes release the GIL),
        and the monitoring tap's counting (its kernels release it too)."""
        t = time.perf_counter_ns()
        results = runner.run(inputs, outputs)
        elapsed = time.perf_counter_ns() - t
        if self.monitor is not None:
            self.monitor.observe(inputs, outputs, results)
        return results, elapsed

    def _rows_message(self, name, arr, rows) -> str:
        return (
            f"model '{self.stats.model}': output '{name}' has shape {list(arr.shape)} for a batch of {rows} rows; "
            "a batching model must keep the first dimension"
        )

    def _complete_future(self, instance: Instance, batch: list[Pending], cf, outputs, rows, t_start, in_ns, missing=None) -> None:
        exc = cf.exception()
        if exc is not None:
            result = exc
        else:
            results, run_ns = cf.result()
            t = time.perf_counter_ns()
            try:
                per_request = self._split(batch, outputs, results)
                if missing is not None:
                    per_request = self._reject_missing(batch, per_request, missing)
                result = per_request, (t_start, in_ns, run_ns, time.perf_counter_ns() - t), rows
            except BaseException as e:
                result = e
        self._complete(instance, batch, result, from_thread=True)

    def _reject_missing(self, batch: list[Pending], per_request: list, missing) -> list:
        """Replace the outputs of each request holding a row that the feature service's reject
        policy refuses with its NOT_FOUND error; the batch's other requests keep their answers."""
        out = []
        start = 0
        for it, outs in zip(batch, per_request):
            rows = it.rows if self.concat else int(it.inputs[0].shape[0])
            err = missing.error(start, start + rows)
            out.append(outs if err is None else err)
            start += rows
        return out

    def _fail_batch(self, batch: list[Pending], exc: BaseException) -> None:
        err = exc if isinstance(exc, ParityError) else InternalError(f"model '{self.stats.model}': {type(exc).__name__}: {exc}")
        for it in batch:
            if it.timer is not None:
                it.timer.cancel()
            if not it.future.done():
                it.future.set_exception(err)

    def _complete(self, instance: Instance, batch: list[Pending], result, *, from_thread: bool = False) -> None:
        self.running -= 1
        if not from_thread:
            self.free.append(instance)
        elif instance.inflight == 2:
            instance.inflight = 1  # the batch queued behind this one is running now
            self.stageable.append(instance)
        else:
            instance.inflight = 0
            self.stageable.remove(instance)
            self.free.append(instance)
        stats = self.stats
        if isinstance(result, BaseException):
            self._fail_batch(batch, result)
        else:
            per_request, (t_start, in_ns, run_ns, out_ns), rows = result
            stats.record_batch(len(batch), rows, in_ns, run_ns, out_ns)
            t_start_loop = clock.now() - (time.perf_counter_ns() - t_start) * 1e-9
            record_queue = stats.record_queue
            for it, outs in zip(batch, per_request):
                if it.timer is not None:
                    it.timer.cancel()
                waited = t_start_loop - it.enqueued
                record_queue(waited if waited > 0 else 0.0)
                fut = it.future
                if fut.done():
                    continue
                if outs.__class__ is not dict:  # a feature-joined request refused by its service's policy
                    fut.set_exception(outs)
                else:
                    wanted = it.outputs
                    fut.set_result(outs if len(outs) == len(wanted) else {n: outs[n] for n in wanted})
        if from_thread and self._drain_handle is None and len(self.batcher):
            self._drain()  # already on the loop (call_soon_threadsafe): start the next batch now

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        return self.running == 0 and len(self.batcher) == 0

    async def drain(self) -> None:
        """Wait until everything queued or running has been answered."""
        while True:
            self.batcher.purge()
            if self.idle:
                return
            await asyncio.sleep(0.01)

    def close(self) -> None:
        for inst in self.instances:
            if inst.executor is not None:
                inst.executor.shutdown(wait=True)
            inst.runner.close()
        if self._wake_handle is not None:
            self._wake_handle.cancel()
        for item in self._queued():
            if not item.future.done():
                item.future.set_exception(Unavailable(f"model '{self.stats.model}' was unloaded; retry"))

    def _queued(self):
        for q in self.batcher.queues():
            yield from q
