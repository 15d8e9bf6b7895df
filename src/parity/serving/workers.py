"""Serving with several worker processes (``--workers N``): what the workers share.

The workers share the ports (SO_REUSEPORT), so any of them may receive any request, including the
feedback for a request another one served, or the monitoring query.  Each worker listens on a Unix
socket in the group's directory (``w<index>.sock``) for its siblings' questions, and publishes its
metric samples there every second (``worker-<index>.json``) for whoever answers ``/metrics``.

Worker 0 is the group's *monitoring hub*; the others forward what must be seen in one place:

- **Drift windows.**  Every worker bins its own batches (the tap is per process and lock-light);
  a worker other than the hub sends each window it closes (count or time) to the hub, which tests
  it against the version's profile, keeps its report and raises the alarms.  Window counts are
  additive, so nothing is lost by counting apart.  The drift gauges and counters then come from the
  hub alone and are not summed over workers.
- **Late labels.**  Feedback that finds no logged request in the worker that received it is asked
  of the others at once; the one that logged the request joins the labels and sends the joined rows
  to the hub, which keeps the rolling performance windows (an AUC is not a sum of per-worker AUCs).
  The answer is given only when the hub holds the rows, so a read after it sees them.
- **SLOs and retraining.**  The hub samples the request counters summed over every worker, and is
  the only worker that runs the retraining controller (no duplicate retraining runs).
- **Canaries** (serving from the registry).  The hub judges each canary step on the counters of
  every worker (each publishes its versions' counters every second), moves aliases and writes the
  audit log; the others take the hub's canary states and route their traffic by them.
- **GET /v1/monitoring** answered by any worker is the hub's document.

When the hub cannot be reached (it is restarting, say), a worker tests its windows and keeps its
joined rows itself and logs it: monitoring degrades to per-worker, nothing is dropped.

Messages are one JSON document each, framed by a 4-byte big-endian length; every question gets one
answer, ``{"ok": false, "error": ...}`` when it could not be served."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import struct
from collections.abc import Callable
from pathlib import Path

from parity.monitoring import metrics

log = logging.getLogger("parity.workers")

METRICS_DIR_ENV = "PARITY_WORKER_METRICS_DIR"
WORKER_ENV = "PARITY_WORKER_INDEX"
WORKER_COUNT_ENV = "PARITY_WORKER_COUNT"
HUB = 0
MAX_MESSAGE = 64 << 20
ASK_TIMEOUT = 10.0
_LEN = struct.Struct(">I")


async def _read_message(reader: asyncio.StreamReader) -> dict | None:
    try:
        head = await reader.readexactly(_LEN.size)
    except asyncio.IncompleteReadError:
        return None  # the other side closed between messages
    (n,) = _LEN.unpack(head)
    if n > MAX_MESSAGE:
        raise ValueError(f"a worker message of {n} bytes is over the {MAX_MESSAGE}-byte limit")
    return json.loads(await reader.readexactly(n))


def _frame(doc: dict) -> bytes:
    body = json.dumps(doc, separators=(",", ":")).encode()
    return _LEN.pack(len(body)) + body


class WorkerGroup:
    """This worker's side of the group: its socket server, questions to the others, the
    published metric samples."""

    def __init__(self, core, directory: Path, index: int, count: int):
        self.core = core
        self.dir = Path(directory)
        self.index = index
        self.count = max(count, index + 1)
        self.is_hub = index == HUB
        self.published: list[Callable[[], list]] = [core.metric_families]  # what this worker publishes
        self.published_extra: dict[str, Callable[[], object]] = {}  # more of it, by name (JSON-able)
        self._server: asyncio.AbstractServer | None = None
        self._tasks: list[asyncio.Task] = []
        self._inflight: set[asyncio.Task] = set()  # sends under way (held: the loop keeps only weak references)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.forwarded = {"windows": 0, "joined": 0}  # handed to the hub
        self.fallbacks = {"windows": 0, "joined": 0}  # kept here: the hub could not take them
        self.feedback_from_peers = 0  # feedback calls this worker joined for another one
        self.feedback_by_peers = 0  # feedback calls another worker joined for this one
        self.publications = 0  # samples published so far (observers wait for the next one)
        self._warned = False

    @classmethod
    def from_env(cls, core) -> WorkerGroup | None:
        directory, index = os.environ.get(METRICS_DIR_ENV), os.environ.get(WORKER_ENV)
        if not directory or index is None:
            return None
        return cls(core, Path(directory), int(index), int(os.environ.get(WORKER_COUNT_ENV, "1")))

    def socket_path(self, index: int) -> str:
        return str(self.dir / f"w{index}.sock")

    @property
    def peers(self) -> list[int]:
        return [i for i in range(self.count) if i != self.index]

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen for the siblings' questions (before models load: windows and feedback may come
        as soon as any worker serves)."""
        self._loop = asyncio.get_running_loop()
        path = self.socket_path(self.index)
        if os.path.exists(path):
            os.unlink(path)  # a socket left by a worker that died: this index is ours now
        self._server = await asyncio.start_unix_server(self._serve, path=path)

    def start_publishing(self) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(self._publish_forever()))

    async def stop(self) -> None:
        if self._inflight:  # windows and states being handed over: let them arrive
            await asyncio.wait(list(self._inflight), timeout=ASK_TIMEOUT)
        for t in self._tasks:
            t.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    # -- metrics shared through files --------------------------------------------------------------

    def _own_file(self) -> Path:
        return self.dir / f"worker-{self.index}.json"

    async def _publish_forever(self) -> None:
        path = self._own_file()
        while True:
            try:
                self.publications += 1  # counted in the document it goes with
                fams: list = []
                for source in self.published:
                    fams += source()
                doc = {"metrics": metrics.to_json(fams), "stats": self.core.model_statistics(local=True), "group": self.describe(),
                       "extra": {name: source() for name, source in self.published_extra.items()}}  # fmt: skip
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(doc))
                os.replace(tmp, path)
            except Exception:  # noqa: BLE001 - publishing never stops the worker
                log.exception("publishing this worker's metrics failed; will try again")
            await asyncio.sleep(1.0)

    def _others(self) -> list[dict]:
        docs = []
        mine = self._own_file()
        for p in self.dir.glob("worker-*.json"):
            if p != mine:
                try:
                    docs.append(json.loads(p.read_text()))
                except (OSError, ValueError):
                    pass  # a worker gone or its file being replaced: skip it this time
        return docs

    def other_metrics(self) -> list:
        fams: list = []
        for doc in self._others():
            metrics.merge(fams, metrics.from_json(doc["metrics"]))
        return fams

    def describe(self) -> dict:
        """This worker's share of the group's traffic between workers."""
        return {"worker": self.index, "pid": os.getpid(), "forwarded": dict(self.forwarded), "kept_locally": dict(self.fallbacks),
                "feedback_joined_for_others": self.feedback_from_peers, "feedback_joined_by_others": self.feedback_by_peers,
                "publications": self.publications}  # fmt: skip

    def members(self) -> list[dict]:
        """Every worker's `describe()` (the others' as last published)."""
        others = [doc["group"] for doc in self._others() if isinstance(doc.get("group"), dict)]
        return sorted([self.describe(), *others], key=lambda d: d.get("worker", 0))

    def peer_extras(self, name: str) -> list:
        """The other workers' last published `published_extra[name]` values."""
        return [doc["extra"][name] for doc in self._others() if name in (doc.get("extra") or {})]

    def hub_extra(self, name: str):
        """Worker 0's last published `published_extra[name]` (None before it has published)."""
        try:
            doc = json.loads((self.dir / f"worker-{HUB}.json").read_text())
        except (OSError, ValueError):
            return None
        return (doc.get("extra") or {}).get(name)

    def other_stats(self) -> list:
        return [st for doc in self._others() for st in doc["stats"]]

    def all_metrics(self) -> list:
        """This worker's families plus every other worker's last published ones, summed."""
        return metrics.merge(self.core.metric_families(), self.other_metrics())

    # -- questions to the others -------------------------------------------------------------------

    async def ask(self, index: int, doc: dict, timeout: float = ASK_TIMEOUT) -> dict:
        """One question to worker `index`; its answer (raises OSError / TimeoutError / ValueError
        when it cannot be had)."""
        async def exchange() -> dict:
            reader, writer = await asyncio.open_unix_connection(self.socket_path(index))
            try:
                writer.write(_frame(doc))
                answer = await _read_message(reader)
            finally:
                writer.close()
            if answer is None:
                raise ConnectionError(f"worker {index} closed the connection without answering")
            return answer

        return await asyncio.wait_for(exchange(), timeout)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (doc := await _read_message(reader)) is not None:
                try:
                    answer = await self._answer(doc)
                except Exception as e:  # noqa: BLE001 - answered, so the asker can fall back
                    log.exception("answering worker message %r failed", doc.get("op"))
                    answer = {"ok": False, "error": f"{type(e).__name__}: {e}"}
                writer.write(_frame(answer))
                await writer.drain()
        except (ConnectionError, ValueError, asyncio.IncompleteReadError) as e:
            log.warning("a worker connection ended badly: %s", e)
        finally:
            writer.close()

    async def _answer(self, doc: dict) -> dict:
        op = doc.get("op")
        if op == "feedback":
            plog = self.core.prediction_log
            if plog is None:
                return {"request_id": doc.get("id"), "status": "unknown", "rows": 0, "duplicates": 0, "conflicts": 0}
            result = plog.feedback(doc["id"], doc.get("labels"), doc.get("rows"), count_missing=False)
            await self._deliver_joined(result)
            if result["status"] not in ("unknown", "expired"):
                self.feedback_from_peers += 1
            return result
        if op == "canary":
            router = getattr(self.core, "router", None)
            if router is not None and not self.is_hub:
                router.apply_canary_states(doc.get("states") or {})
            return {"ok": True}
        if not self.is_hub:
            return {"ok": False, "error": f"worker {self.index} is not the monitoring hub"}
        if op == "window":
            return self._receive_window(doc)
        if op == "joined":
            plog = self.core.prediction_log
            if plog is None:
                return {"ok": False, "error": "the hub keeps no prediction log"}
            plog.add_joined(doc["model"], doc["version"], doc["preds"], doc["labels"], doc["served"])
            return {"ok": True}
        if op == "monitoring":
            return self.core.monitoring(doc.get("model"))
        return {"ok": False, "error": f"unknown worker message {op!r}"}

    def _spawn(self, coro) -> None:
        task = self._loop.create_task(coro)
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    def _fallback(self, what: str, err: Exception | str) -> None:
        self.fallbacks[what] += 1
        if not self._warned or self.fallbacks[what] % 100 == 0:
            self._warned = True
            log.warning("the monitoring hub (worker 0) could not take %s (%s): kept in this worker (%d so far)", what, err, self.fallbacks[what])

    # -- late labels -------------------------------------------------------------------------------

    async def feedback(self, result: dict, request_id: str, labels, rows) -> dict:
        """Finish a feedback call begun with the local prediction log: deliver locally joined rows
        to the hub, or ask the other workers for the request."""
        if await self._deliver_joined(result):
            return result
        if result["status"] not in ("unknown", "expired"):
            return result  # invalid before the lookup, or joined in the hub itself
        question = {"op": "feedback", "id": request_id, "labels": labels, "rows": rows}  # as parsed: JSON lists, or lists from gRPC

        async def ask(i: int) -> dict | None:
            try:
                return await self.ask(i, question)
            except (OSError, TimeoutError, ValueError) as e:
                log.warning("worker %d could not be asked about request %r: %s", i, request_id, e)
                return None

        answers = await asyncio.gather(*(ask(i) for i in self.peers))
        for a in answers:
            if a is not None and a.get("status") not in (None, "unknown", "expired"):
                self.feedback_by_peers += 1
                return a
        status = "expired" if result["status"] == "expired" or any(a and a.get("status") == "expired" for a in answers) else "unknown"
        self.core.prediction_log.count_missing(status)
        return {**result, "status": status}

    async def _deliver_joined(self, result: dict) -> bool:
        joined = result.pop("_joined", None)
        if joined is None:
            return False
        try:
            answer = await self.ask(HUB, {"op": "joined", **joined})
            if not answer.get("ok"):
                raise ValueError(answer.get("error", "refused"))
            self.forwarded["joined"] += 1
        except (OSError, TimeoutError, ValueError) as e:
            self._fallback("joined", e)
            self.core.prediction_log.add_joined(joined["model"], joined["version"], joined["preds"], joined["labels"], joined["served"])
        return True

    # -- canaries ----------------------------------------------------------------------------------

    def push_canary_states(self, states: dict) -> None:
        """Worker 0's canary states changed (a step, a rollback, a promotion): tell the others
        now, so that none keeps sending traffic to a rolled-back canary until its next poll."""
        async def push(i: int) -> None:
            try:
                await self.ask(i, {"op": "canary", "states": states}, timeout=5.0)
            except (OSError, TimeoutError, ValueError) as e:
                log.warning("worker %d did not take the canary states (%s); it reads them within a second", i, e)

        loop = self._loop
        if loop is not None and not loop.is_closed():
            for i in self.peers:
                self._spawn(push(i))

    # -- drift windows -----------------------------------------------------------------------------

    def forward_window(self, monitor, kind: str, counts, start: float, end: float) -> None:
        """The tap's hook for a closed window (any thread): send it to the hub."""
        loop = self._loop
        if loop is None or loop.is_closed():
            monitor.evaluate_later(kind, counts, start, end)
            return
        loop.call_soon_threadsafe(lambda: self._spawn(self._send_window(monitor, kind, counts, start, end)))

    async def _send_window(self, monitor, kind: str, counts, start: float, end: float) -> None:
        from parity.monitoring.tap import counts_doc

        doc = {"op": "window", "model": monitor.model, "version": monitor.version, "kind": kind,
               "counts": counts_doc(counts), "start": start, "end": end}  # fmt: skip
        try:
            answer = await self.ask(HUB, doc)
            if not answer.get("ok"):
                raise ValueError(answer.get("error", "refused"))
            self.forwarded["windows"] += 1
        except (OSError, TimeoutError, ValueError) as e:
            self._fallback("windows", e)
            monitor.evaluate_later(kind, counts, start, end)

    def _receive_window(self, doc: dict) -> dict:
        from parity.monitoring.tap import counts_from_doc

        model, version = doc["model"], str(doc["version"])
        for m in self.core.monitors():
            if m.model == model and m.version == version:
                counts = counts_from_doc(doc["counts"], m.profile)
                m.receive(doc["kind"], counts, float(doc["start"]), float(doc["end"]))
                return {"ok": True}
        return {"ok": False, "error": f"the hub monitors no {model} version {version} (not loaded there yet)"}
