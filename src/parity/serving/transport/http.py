"""The HTTP/1.1 transport: the KServe v2 REST API (and Triton's extensions) as an asyncio
Protocol on httptools, without a framework.

One `HttpConnection` per TCP connection parses requests as bytes arrive and routes each one on
its path.  An inference request is decoded, handed to the core, and answered from the future's
done-callback: no task per request.  Responses leave in request order (pipelining), each one as
soon as everything before it has left.  The connection stops reading while its socket's write
buffer is above the high-water mark, or while too many answers are outstanding, so a client that
does not read cannot make the server buffer without bound.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import time
import zlib
from collections import deque
from email.utils import formatdate
from functools import partial
from http import HTTPStatus
from urllib.parse import unquote_to_bytes

import httptools
import numpy as np

from parity.config import ServerConfig
from parity.errors import InternalError, InvalidInput, NotFound, ParityError
from parity.serving import clock
from parity.serving.core import InferenceCore, bearer
from parity.serving.transport.base import ConnectionSet, listen_socket
from parity.serving.transport.http_codec import (
    check_parameters,
    decode_body,
    decode_infer_request,
    dumps,
    encode_infer_response,
    parse_json,
)

log = logging.getLogger("parity.http")

MAX_PIPELINE = 64  # answers outstanding on one connection before it stops reading
LINGER_S = 2.0  # after a closing answer, how long to drain what the client still sends
COMPRESS_MIN = 1024  # smaller bodies are sent uncompressed even when the client accepts gzip

_STATUS = {s.value: f"{s.value} {s.phrase}".encode() for s in HTTPStatus}
_STATUS[499] = b"499 Client Closed Request"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_TAIL_KEEP = b"\r\n"
_TAIL_KEEP10 = b"connection: keep-alive\r\n\r\n"
_TAIL_CLOSE = b"connection: close\r\n\r\n"
_JSON = b"application/json"
_OCTET = b"application/octet-stream"
_TEXT = b"text/plain; charset=utf-8"
_PROM = b"text/plain; version=0.0.4; charset=utf-8"
_HEAD_FMT = b"HTTP/1.1 %s\r\n%scontent-type: %s\r\ncontent-length: %d\r\n"
_BIN_HEAD_FMT = (
    b"HTTP/1.1 200 OK\r\n%scontent-type: application/octet-stream\r\ncontent-length: %d\r\n"
    b"inference-header-content-length: %d\r\n"
)
_WANTED = frozenset(
    (
        b"content-length",
        b"inference-header-content-length",
        b"expect",
        b"authorization",
        b"content-encoding",
        b"accept-encoding",
        b"transfer-encoding",
        b"connection",
        b"upgrade",
    )
)
_MISS = object()
_HEADER_KEYS: dict[bytes, bytes | None] = {}  # header name as spelled -> its key if wanted, else None
_INFER_ROUTES: dict[bytes, tuple[str, str]] = {}  # URL -> (model, version), filled as URLs are seen
_GET = ("GET", "HEAD")
_POST = ("POST",)


class _Fatal(Exception):
    """Raised inside a parser callback: answer `status` with `message`, then close."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class _Stop(Exception):
    """Raised inside a parser callback: the connection takes no more requests."""


def _status_line(status: int) -> bytes:
    line = _STATUS.get(status)
    return line if line is not None else b"%d Unknown" % status


class HttpTransport(ConnectionSet):
    name = "http"

    def __init__(self, core: InferenceCore, config: ServerConfig) -> None:
        super().__init__()
        self.core = core
        self.config = config
        self.date_line = b""
        self._port = 0
        self._date_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task] = set()
        self.now = 0.0  # the loop's clock at the last one-second tick
        self._update_date()

    async def start(self) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        sock = listen_socket(cfg.host, cfg.http_port, reuse_port=cfg.workers > 1)
        self._port = sock.getsockname()[1]
        self._server = await loop.create_server(lambda: HttpConnection(self), sock=sock)
        self._schedule_date(loop)

    @property
    def port(self) -> int:
        return self._port

    def _update_date(self) -> None:
        self.date_line = b"date: %s\r\n" % formatdate(usegmt=True).encode()

    def _schedule_date(self, loop) -> None:
        def tick():
            self._update_date()
            self.now = loop.time()
            self._close_idle()
            self._date_timer = loop.call_at(loop.time() + 1.0 - time.time() % 1.0, tick)

        tick()

    def _close_idle(self) -> None:
        """Once a second: close keep-alive connections idle past keepalive_timeout_secs, and
        connections stalled mid-request (no bytes) past request_timeout_secs.  Connections only
        note the time of their last read (the clock is this tick's), so reads pay nothing more."""
        now = self.now
        # last_active is this clock at a tick, up to one tick before the bytes really came: allow
        # that tick, so a connection is never closed early (at most one tick late)
        keepalive, stalled = self.config.keepalive_timeout_secs + 1.0, self.config.request_timeout_secs + 1.0
        for conn in list(self.connections):
            if conn.transport is None or conn.closing:
                continue
            quiet = now - conn.last_active
            if conn.in_message or conn.header_bytes:
                if quiet > stalled:
                    conn.abort()
            elif not conn.pending and conn.send_seq == conn.next_seq and quiet > keepalive:
                conn.abort()  # nothing in flight, nothing half-read: nothing is lost

    def spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self, grace: float) -> None:
        """Stop accepting; answer what was accepted (closing each connection after its last
        answer) for up to `grace` seconds; then close whatever remains."""
        await self.close_connections(grace)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=max(grace, 0.1))
        if self._date_timer is not None:
            self._date_timer.cancel()
            self._date_timer = None


class HttpConnection(asyncio.Protocol):
    """One client connection: parser callbacks, routing, ordered answers, flow control."""

    __slots__ = (
        "backlog",
        "body",
        "body_len",
        "closing",
        "core",
        "eof",
        "finished",
        "header_bytes",
        "headers",
        "in_message",
        "interim",
        "last_active",
        "linger_timer",
        "loop",
        "max_body",
        "max_header",
        "next_seq",
        "owner",
        "parser",
        "pending",
        "read_paused",
        "ready",
        "send_seq",
        "transport",
        "url",
        "write_paused",
    )  # fmt: skip

    def __init__(self, owner: HttpTransport):
        self.owner = owner
        self.core = owner.core
        self.loop = None
        self.transport = None
        self.parser = httptools.HttpRequestParser(self)
        self.max_header = owner.config.max_header_bytes
        self.max_body = owner.config.max_body_bytes
        self.url = b""
        self.header_bytes = 0
        self.headers: dict[bytes, bytes] = {}
        self.body: list[bytes] = []
        self.body_len = 0
        self.in_message = False
        self.next_seq = 0  # the sequence number the next complete request gets
        self.send_seq = 0  # the sequence number whose answer leaves next
        self.ready: dict[int, tuple] = {}  # answers waiting for those before them
        self.interim: dict[int, bytes] = {}  # 100 Continue waiting for its turn
        self.pending: dict[int, asyncio.Future] = {}  # inferences in flight, to cancel on disconnect
        self.closing = False  # no further requests are read
        self.finished = False  # the closing answer has been written
        self.write_paused = False
        self.read_paused = False
        self.linger_timer = None
        self.eof = False  # the client has finished sending
        self.backlog: deque = deque()  # complete requests held while the client does not read

    # -- asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        owner = self.owner
        if owner.stopping:
            transport.close()
            return
        owner.connections.add(self)
        self.last_active = self.loop.time()

    def data_received(self, data: bytes) -> None:
        self.last_active = self.owner.now
        if self.closing:
            return  # nothing more is read: a closing answer is queued or lingering
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            self._after_upgrade(data, e.args[0] if e.args else len(data))
        except httptools.HttpParserCallbackError as e:
            self._callback_failed(e.__context__)
        except httptools.HttpParserError as e:
            msg = str(e) or type(e).__name__
            self._fatal(400, f"malformed HTTP request: {msg}")

    def eof_received(self):
        # The client stopped sending.  Like most servers and proxies we take that as the client
        # going away: answers still in flight are cancelled (connection_lost follows), except for
        # a request cut in the middle, which is told so before the connection closes.
        self.eof = True
        self.closing = True
        if self.in_message and not self.finished:
            self._fatal(400, "the connection ended in the middle of a request")
        return False

    def connection_lost(self, exc) -> None:
        self.transport = None
        self.finished = True
        self.closing = True
        if self.linger_timer is not None:
            self.linger_timer.cancel()
            self.linger_timer = None
        pending = self.pending
        self.pending = {}
        for fut in pending.values():
            fut.cancel()  # the core drops cancelled requests from its queues
        self.ready.clear()
        self.backlog.clear()
        self.owner.connection_closed(self)

    def pause_writing(self) -> None:
        self.write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        backlog = self.backlog
        while backlog and not self.write_paused and self.transport is not None:
            self._dispatch(*backlog.popleft())
        self._update_reading()

    # -- parser callbacks --------------------------------------------------------------------------

    # (No on_message_begin: a request starts with its URL, and the per-request state is reset
    # when the previous one completes; one Python call fewer per request.)

    def on_url(self, url: bytes) -> None:
        if self.in_message:
            self.url += url
            n = self.header_bytes + len(url)
        else:
            if self.closing:
                raise _Stop()
            self.in_message = True
            self.url = url
            n = len(url)
        self.header_bytes = n
        if n > self.max_header:
            raise _Fatal(431, f"the request line and headers are larger than the server's limit of {self.max_header} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        n = self.header_bytes + len(name) + len(value) + 4
        self.header_bytes = n
        if n > self.max_header:
            raise _Fatal(431, f"the request line and headers are larger than the server's limit of {self.max_header} bytes")
        key = _HEADER_KEYS.get(name, _MISS)
        if key is _MISS:  # a spelling not seen yet
            low = name.lower()
            key = low if low in _WANTED else None
            if len(_HEADER_KEYS) < 1024:
                _HEADER_KEYS[name] = key
        if key is not None:
            old = self.headers.get(key)
            self.headers[key] = value if old is None else old + b"," + value

    def on_headers_complete(self) -> None:
        headers = self.headers
        cl = headers.get(b"content-length")
        if cl is not None:
            try:
                n = int(cl)
            except ValueError:
                raise _Fatal(400, "Content-Length is not an integer") from None
            if n > self.max_body:
                raise _Fatal(400, self._too_large(f"Content-Length is {n} bytes"))
        if b"upgrade" in headers and self.parser.should_upgrade():
            # llhttp would hand the body over as upgraded bytes; we never switch protocols.
            if (cl is not None and cl.strip() != b"0") or b"transfer-encoding" in headers:
                raise _Fatal(400, "protocol upgrades are not supported; send the request without 'Upgrade'")
        expect = headers.get(b"expect")
        if expect is not None:
            if expect.strip().lower() != b"100-continue":
                raise _Fatal(417, f"unsupported expectation '{expect.decode('latin-1')}'; only 100-continue is")
            if self.parser.get_http_version() == "1.1":
                seq = self.next_seq
                if seq == self.send_seq:
                    self.transport.write(_CONTINUE)
                else:
                    self.interim[seq] = _CONTINUE

    def on_body(self, chunk: bytes) -> None:
        self.body_len += len(chunk)
        if self.body_len > self.max_body:
            raise _Fatal(400, self._too_large(f"the request body has {self.body_len} bytes or more"))
        self.body.append(chunk)

    def on_message_complete(self) -> None:
        self.in_message = False
        seq = self.next_seq
        self.next_seq = seq + 1
        parser = self.parser
        headers = self.headers
        if parser.should_keep_alive():
            # HTTP/1.0 keeps the connection only when asked with a Connection header, and is then
            # told so; HTTP/1.1 keeps it by default.
            tail = _TAIL_KEEP10 if b"connection" in headers and parser.get_http_version() == "1.0" else _TAIL_KEEP
        else:
            tail = _TAIL_CLOSE
            self.closing = True
        body = self.body
        if body:
            body = body[0] if len(body) == 1 else b"".join(body)
            self.body = []
            self.body_len = 0
        else:
            body = b""
        self.headers = {}
        self.header_bytes = 0
        if self.write_paused or self.backlog:
            # The client is not reading its answers: hold the request, not its answer (bounded by
            # what was read before reading paused), until the socket drains.
            self.backlog.append((seq, tail, parser.get_method(), self.url, headers, body))
        else:
            self._dispatch(seq, tail, parser.get_method(), self.url, headers, body)
        if self.next_seq - self.send_seq >= MAX_PIPELINE:
            self._update_reading()

    # -- routing -----------------------------------------------------------------------------------

    def _dispatch(self, seq: int, tail: bytes, method: bytes, url: bytes, headers: dict, body: bytes) -> None:
        try:
            self._route(seq, tail, method, url, headers, body)
        except Exception as e:  # a bug must not take the connection's other requests down
            log.exception("HTTP handler failed")
            self._error(seq, tail, InternalError(f"internal error: {type(e).__name__}: {e}"))

    def _route(self, seq: int, tail: bytes, method: bytes, url: bytes, headers: dict, body: bytes) -> None:
        enc = headers.get(b"content-encoding")
        if enc is not None and body:
            try:
                body = decode_body(body, enc, self.max_body)
            except ParityError as e:
                self._error(seq, tail, e)
                return
        if method == b"POST":  # the hot path: an inference URL seen before
            target = _INFER_ROUTES.get(url)
            if target is not None:
                self._infer(seq, tail, target[0], target[1], body, headers)
                return
        q = url.find(b"?")
        path = url if q < 0 else url[:q]
        if b"%" in path:
            path = unquote_to_bytes(path)
        if len(path) > 1 and path.endswith(b"/"):
            path = path.rstrip(b"/")
        m = method.decode("latin-1")
        if path.endswith(b"/infer") and path.startswith(b"/v2/models/"):
            parts = path[11:-6].split(b"/")
            if len(parts) == 1 or (len(parts) == 3 and parts[1] == b"versions"):
                if m != "POST":
                    self._not_allowed(seq, tail, m, _POST)
                    return
                name = parts[0].decode("utf-8", "replace")
                version = parts[2].decode("utf-8", "replace") if len(parts) == 3 else ""
                if len(_INFER_ROUTES) >= 1024:
                    _INFER_ROUTES.clear()
                _INFER_ROUTES[url] = (name, version)
                self._infer(seq, tail, name, version, body, headers)
                return
        if path.startswith((b"/v1/routes", b"/v1/runs", b"/v1/monitoring", b"/v1/feedback")):
            self._v1_admin(seq, tail, m, path, url[q + 1 :] if q >= 0 else b"", body, headers)
            return
        if path == b"/v1/features/push":  # routed here: it needs the authorization header
            if m != "POST":
                self._not_allowed(seq, tail, m, _POST)
                return
            self._features_push(seq, tail, body, headers)
            return
        route = _STATIC.get(path)
        if route is not None:
            allowed, handler = route
            if m not in allowed:
                self._not_allowed(seq, tail, m, allowed)
                return
            handler(self, seq, tail, m, body)
            return
        if path.startswith(b"/v2/models/"):
            parts = path[11:].split(b"/")
            name = parts[0].decode("utf-8", "replace")
            version = ""
            rest = parts[1:]
            if len(rest) >= 2 and rest[0] == b"versions":
                version = rest[1].decode("utf-8", "replace")
                rest = rest[2:]
            if name and len(rest) <= 1:
                action = rest[0] if rest else b""
                route = _MODEL.get(action)
                if route is not None:
                    allowed, handler = route
                    if m not in allowed:
                        self._not_allowed(seq, tail, m, allowed)
                        return
                    handler(self, seq, tail, m, name, version, body)
                    return
        elif path.startswith(b"/v2/repository/models/"):
            parts = path[22:].split(b"/")
            if len(parts) == 2 and parts[0] and parts[1] in (b"load", b"unload"):
                if m != "POST":
                    self._not_allowed(seq, tail, m, _POST)
                    return
                self._repo_admin(seq, tail, parts[0].decode("utf-8", "replace"), parts[1] == b"load", body, headers)
                return
        self._error(
            seq,
            tail,
            NotFound(f"no endpoint {m} {path.decode('utf-8', 'replace')}; the API is under /v2 (KServe v2 / Triton)"),
            m,
        )

    # -- inference ---------------------------------------------------------------------------------

    def _infer(self, seq: int, tail: bytes, model: str, version: str, body: bytes, headers: dict) -> None:
        core = self.core
        try:
            req, binary_default, binary_map = decode_infer_request(
                body, headers.get(b"inference-header-content-length"), model, version, clock.now()
            )
            done = partial(self._infer_done, seq, tail, req, binary_default, binary_map, headers.get(b"accept-encoding"))
            ticket = core.submit(req, done)[0]
        except ParityError as e:
            self._error(seq, tail, e)
            return
        self.pending[seq] = ticket

    def _infer_done(self, seq, tail, req, binary_default, binary_map, accept, fut) -> None:
        """Called by the scheduler (through the request's ticket) when the request is answered."""
        core = self.core
        plan, t0 = fut.context
        self.pending.pop(seq, None)
        try:
            outputs = fut.result()
        except BaseException as exc:  # CancelledError included: the core counts it as cancelled
            err = core.fail(plan, t0, exc)
            if self.transport is not None:
                self._error(seq, tail, err)
            return
        if self.transport is None:
            core.fail(plan, t0, asyncio.CancelledError())
            return
        try:
            header, raws = encode_infer_response(core.finish(req, plan, t0, outputs), binary_default, binary_map)
        except Exception as e:  # an encoding bug: answer it, keep serving
            log.exception("encoding an inference response failed")
            self._error(seq, tail, InternalError(f"internal error encoding the response: {type(e).__name__}: {e}"))
            return
        if raws is None:
            if accept is not None and len(header) >= COMPRESS_MIN:
                self._send_compressed(seq, tail, accept, header, None, _JSON)
                return
            self._send(seq, _HEAD_FMT % (b"200 OK", self.owner.date_line, _JSON, len(header)), header, tail)
            return
        if len(raws) == 1:
            body = header + raws[0]
        else:
            raws.insert(0, header)
            body = b"".join(raws)
        if accept is not None and len(body) >= COMPRESS_MIN:
            self._send_compressed(seq, tail, accept, body, len(header), _OCTET)
            return
        self._send(seq, _BIN_HEAD_FMT % (self.owner.date_line, len(body), len(header)), body, tail)

    def _send_compressed(self, seq, tail, accept: bytes, body: bytes, header_length: int | None, ctype: bytes) -> None:
        acc = accept.lower()
        if b"gzip" in acc:
            body, enc = gzip.compress(body, 1), b"gzip"
        elif b"deflate" in acc:
            body, enc = zlib.compress(body, 1), b"deflate"
        else:
            enc = None
        head = _HEAD_FMT % (b"200 OK", self.owner.date_line, ctype, len(body))
        if header_length is not None:
            head += b"inference-header-content-length: %d\r\n" % header_length
        if enc is not None:
            head += b"content-encoding: %s\r\n" % enc
        self._send(seq, head, body, tail)

    # -- other endpoints ---------------------------------------------------------------------------

    def _h_features_online(self, seq, tail, method, body) -> None:
        """POST /v1/features/online {"features": service name or ["view:feature", ...],
        "entities": {join key: [values]}, "request_values": {field: [values]}} -> one column of
        values, statuses and ages (seconds) per feature, in the requested order."""
        features = self.core.features
        if features is None:
            self._error(seq, tail, NotFound("this server has no feature repository; start it with --feature-repository FILE"))
            return
        try:
            doc = _parse_object(body, "the feature request")
            wanted = doc.get("features")
            entities = doc.get("entities")
            if not isinstance(wanted, (str, list)) or not wanted:
                raise InvalidInput("'features' must be a feature service name or a list of 'view:feature' references")
            if not isinstance(entities, dict) or not entities or not all(isinstance(v, list) for v in entities.values()):
                raise InvalidInput("'entities' must be an object of join key -> list of values")
            values = doc.get("request_values") or {}
            if not isinstance(values, dict) or not all(isinstance(v, list) for v in values.values()):
                raise InvalidInput("'request_values' must be an object of field -> list of values")
        except ParityError as e:
            self._error(seq, tail, e)
            return

        def read_and_encode() -> bytes:
            # off the event loop: the read and the encoding of the answer (both grow with the rows)
            return dumps({"features": online_features_json(features.get_online_features(wanted, entities, values or None))})

        async def run():
            try:
                body = await asyncio.to_thread(read_and_encode)
            except ParityError as e:
                self._error(seq, tail, e)
                return
            except Exception as e:  # noqa: BLE001 - answered, logged, the server goes on
                log.exception("online feature read failed")
                self._error(seq, tail, InternalError(f"internal error: {type(e).__name__}: {e}"))
                return
            head = _HEAD_FMT % (_status_line(200), self.owner.date_line, _JSON, len(body))
            self._send(seq, head, body, tail)

        self.owner.spawn(run())

    def _features_push(self, seq, tail, body: bytes, headers: dict) -> None:
        """POST /v1/features/push {"view": name, "rows": {column: [values]}} with the admin token
        -> {"view", "rows", "entities", "log_file"}: the rows transformed, appended to the view's
        offline push log and written online (`parity.features.push`)."""
        from parity.features.push import authorize_push, check_push_request, push

        features = self.core.features
        if features is None:
            self._error(seq, tail, NotFound("this server has no feature repository; start it with --feature-repository FILE"))
            return
        try:
            authorize_push(self.core, bearer(_latin1(headers.get(b"authorization"))))
            doc = _parse_object(body, "the push request")
            view, rows = doc.get("view"), doc.get("rows")
            check_push_request(view, rows)
        except ParityError as e:
            self._error(seq, tail, e)
            return

        async def run():
            try:
                done = await asyncio.to_thread(push, features.repo, features.store, view, rows)
            except ParityError as e:
                self._error(seq, tail, e)
                return
            except Exception as e:  # noqa: BLE001 - answered, logged, the server goes on
                log.exception("feature push to %s failed", view)
                self._error(seq, tail, InternalError(f"internal error: {type(e).__name__}: {e}"))
                return
            log_file = done.file.name if done.file is not None else None
            self._json(seq, tail, 200, {"view": done.view, "rows": done.rows, "entities": done.entities, "log_file": log_file}, "POST")

        self.owner.spawn(run())

    def _v1_admin(self, seq, tail, method: str, path: bytes, query: bytes, body: bytes, headers: dict) -> None:
        """GET /v1/routes (the routing in force, traffic shares, canary states, errors);
        POST /v1/routes/reload (admin token): re-read the routing files and re-resolve the
        registry's aliases now; GET /v1/runs[/{id}|/compare?ids=a,b]: experiment runs as JSON."""
        core = self.core
        if path.startswith(b"/v1/monitoring"):
            if method not in ("GET", "HEAD"):
                self._not_allowed(seq, tail, method, _GET)
                return
            rest = path[len(b"/v1/monitoring") :].strip(b"/")
            self._spawn_json(seq, tail, method, core.monitoring_doc(rest.decode("utf-8", "replace") or None))
            return
        if path == b"/v1/feedback":
            if method != "POST":
                self._not_allowed(seq, tail, method, _POST)
                return
            try:
                doc = _parse_object(body, "the feedback")
            except ParityError as e:
                self._error(seq, tail, e, method)
                return

            async def feedback():
                try:
                    result = await core.feedback(doc.get("id"), doc.get("labels"), doc.get("rows"))
                except ParityError as e:
                    self._error(seq, tail, e, method)
                    return
                except Exception as e:  # noqa: BLE001 - answered, logged
                    log.exception("POST /v1/feedback failed")
                    self._error(seq, tail, InternalError(f"internal error: {type(e).__name__}: {e}"), method)
                    return
                status = {"joined": 200, "partial": 200, "duplicate": 200, "unknown": 404, "expired": 410, "invalid": 400}[result["status"]]
                self._json(seq, tail, status, result, "POST")

            self.owner.spawn(feedback())
            return
        if path.startswith(b"/v1/runs"):
            if method not in ("GET", "HEAD"):
                self._not_allowed(seq, tail, method, _GET)
                return
            from parity.tracking.http import route as runs_route

            async def runs():  # the database is opened inside: its errors are answered too
                return await asyncio.to_thread(runs_route, core.metadata_db(), path.decode("utf-8", "replace"), query.decode("latin-1"))

            self._spawn_json(seq, tail, method, runs())
            return
        router = core.router
        if router is None:
            self._error(seq, tail, NotFound("this server does not serve from the registry; start it with --routes DIR"), method)
            return
        if path == b"/v1/routes":
            if method not in ("GET", "HEAD"):
                self._not_allowed(seq, tail, method, _GET)
                return
            self._json(seq, tail, 200, router.describe(), method)
            return
        if path != b"/v1/routes/reload":
            self._error(seq, tail, NotFound(f"no such path {path.decode('utf-8', 'replace')}: use GET /v1/routes or POST /v1/routes/reload"), method)
            return
        if method != "POST":
            self._not_allowed(seq, tail, method, _POST)
            return
        try:
            core.authorize_admin(bearer(_latin1(headers.get(b"authorization"))))
        except ParityError as e:
            self._error(seq, tail, e)
            return

        async def reload():
            try:
                doc = await router.reload(reason="admin: POST /v1/routes/reload")
            except ParityError as e:
                self._error(seq, tail, e)
                return
            except Exception as e:  # noqa: BLE001
                log.exception("routing reload failed")
                self._error(seq, tail, InternalError(f"internal error: {type(e).__name__}: {e}"))
                return
            self._json(seq, tail, 200, doc, "POST")

        self.owner.spawn(reload())

    def _h_live(self, seq, tail, method, body) -> None:
        self._empty(seq, tail, 200 if self.core.live else 503, method)

    def _h_ready(self, seq, tail, method, body) -> None:
        self._empty(seq, tail, 200 if self.core.ready else 503, method)

    def _h_server_metadata(self, seq, tail, method, body) -> None:
        self._json(seq, tail, 200, self.core.server_metadata(), method)

    def _h_all_stats(self, seq, tail, method, body) -> None:
        self._json(seq, tail, 200, {"model_stats": self.core.model_statistics()}, method)

    def _h_metrics(self, seq, tail, method, body) -> None:
        text = self.core.metrics_text().encode()
        self._send(seq, _HEAD_FMT % (b"200 OK", self.owner.date_line, _PROM, len(text)), None if method == "HEAD" else text, tail)

    def _h_index(self, seq, tail, method, body) -> None:
        ready = False
        if body.strip():
            try:
                doc = _parse_object(body, "the repository index request")
                ready = doc.get("ready", False)
                if type(ready) is not bool:
                    raise InvalidInput(f"'ready' must be a boolean, got {ready!r}")
            except ParityError as e:
                self._error(seq, tail, e)
                return
        self._json(seq, tail, 200, self.core.repository_index(ready), method)

    def _m_metadata(self, seq, tail, method, name, version, body) -> None:
        try:
            doc = self.core.model_metadata(name, version)
        except ParityError as e:
            self._error(seq, tail, e, method)
            return
        self._json(seq, tail, 200, doc, method)

    def _m_ready(self, seq, tail, method, name, version, body) -> None:
        core = self.core
        if core.model_ready(name, version):
            self._empty(seq, tail, 200, method)
            return
        try:
            core.version(name, version)
            err: ParityError = InvalidInput(f"model '{name}' is not ready: the server is shutting down")
        except ParityError as e:
            err = e if e.http_status == 404 else InvalidInput(e.message)  # the protocol: any 4xx means "not ready"
        self._error(seq, tail, err, method)

    def _m_config(self, seq, tail, method, name, version, body) -> None:
        try:
            doc = self.core.model_config(name, version)
        except ParityError as e:
            self._error(seq, tail, e, method)
            return
        self._json(seq, tail, 200, doc, method)

    def _m_stats(self, seq, tail, method, name, version, body) -> None:
        try:
            doc = {"model_stats": self.core.model_statistics(name, version)}
        except ParityError as e:
            self._error(seq, tail, e, method)
            return
        self._json(seq, tail, 200, doc, method)

    def _repo_admin(self, seq, tail, name: str, load: bool, body: bytes, headers: dict) -> None:
        try:
            if body.strip():
                doc = _parse_object(body, "the repository request")
                params = check_parameters("repository request", doc.get("parameters"))
                for k in params:
                    if k == "config" or k.startswith("file:"):
                        raise InvalidInput(
                            f"parameter '{k}' is not supported: put the model's files and config.yaml in the repository"
                        )
        except ParityError as e:
            self._error(seq, tail, e)
            return
        token = bearer(_latin1(headers.get(b"authorization")))
        core = self.core

        async def run():
            try:
                if load:
                    await core.load_model(name, token)
                else:
                    await core.unload_model(name, token)
            except ParityError as e:
                self._error(seq, tail, e)
            except Exception as e:
                log.exception("repository %s of %s failed", "load" if load else "unload", name)
                self._error(seq, tail, InternalError(f"internal error: {type(e).__name__}: {e}"))
            else:
                self._empty(seq, tail, 200)

        self.owner.spawn(run())

    # -- answers -----------------------------------------------------------------------------------

    def _json(self, seq: int, tail: bytes, status: int, doc, method: str = "GET") -> None:
        body = dumps(doc)
        head = _HEAD_FMT % (_status_line(status), self.owner.date_line, _JSON, len(body))
        self._send(seq, head, None if method == "HEAD" else body, tail)

    def _spawn_json(self, seq: int, tail: bytes, method: str, awaitable) -> None:
        """Answer 200 with the JSON `awaitable` gives, or its error, once it is ready."""

        async def answer():
            try:
                doc = await awaitable
            except ParityError as e:
                self._error(seq, tail, e, method)
                return
            except Exception as e:  # noqa: BLE001 - answered, logged
                log.exception("%s request failed", method)
                self._error(seq, tail, InternalError(f"internal error: {type(e).__name__}: {e}"), method)
                return
            self._json(seq, tail, 200, doc, method)

        self.owner.spawn(answer())

    def _empty(self, seq: int, tail: bytes, status: int, method: str = "GET") -> None:
        self._send(seq, _HEAD_FMT % (_status_line(status), self.owner.date_line, _TEXT, 0), None, tail)

    def _error(self, seq: int, tail: bytes, err: ParityError, method: str = "GET", extra: bytes = b"") -> None:
        body = dumps({"error": err.message})
        head = _HEAD_FMT % (_status_line(err.http_status), self.owner.date_line, _JSON, len(body)) + extra
        self._send(seq, head, None if method == "HEAD" else body, tail)

    def _not_allowed(self, seq: int, tail: bytes, method: str, allowed: tuple) -> None:
        err = ParityError(f"method {method} is not allowed here; use {' or '.join(allowed)}")
        err.http_status = 405
        self._error(seq, tail, err, extra=b"allow: %s\r\n" % ", ".join(allowed).encode())

    def _fatal(self, status: int, message: str) -> None:
        """Answer a request that cannot be read to its end, then close the connection."""
        seq = self.next_seq
        self.next_seq = seq + 1
        self.in_message = False
        self.closing = True
        self.body = []
        err = ParityError(message)
        err.http_status = status
        self._error(seq, _TAIL_CLOSE, err)
        self._update_reading()

    def _callback_failed(self, exc) -> None:
        if isinstance(exc, _Fatal):
            self._fatal(exc.status, exc.message)
        elif isinstance(exc, _Stop):
            pass
        else:
            log.error("HTTP parser callback failed", exc_info=exc)
            self._fatal(500, f"internal error reading the request: {type(exc).__name__}: {exc}")

    def _after_upgrade(self, data: bytes, offset: int) -> None:
        """We never switch protocols: a request asking to upgrade was answered as plain HTTP/1.1;
        what follows it is the next request."""
        self.parser = httptools.HttpRequestParser(self)
        rest = data[offset:]
        if rest and not self.closing:
            self.data_received(rest)

    def _send(self, seq: int, head: bytes, body, tail: bytes) -> None:
        """Queue or write one answer (`head` ends with its last header line; `tail` adds the
        connection header and the blank line; `body` is None, bytes or a list of buffers)."""
        if self.transport is None or self.finished:
            return
        if seq != self.send_seq:
            self.ready[seq] = (head, body, tail)
            return
        self._write(head, body, tail)
        ready = self.ready
        while ready and not self.finished:
            item = ready.pop(self.send_seq, None)
            if item is None:
                break
            self._write(*item)

    def _write(self, head: bytes, body, tail: bytes) -> None:
        transport = self.transport
        self.send_seq += 1
        if tail is not _TAIL_CLOSE and self.owner.stopping and self.send_seq == self.next_seq and not self.in_message:
            tail = _TAIL_CLOSE  # draining: this was the last request in flight here
        if body is None:
            transport.write(head + tail)
        elif type(body) is list:
            body.insert(0, head + tail)
            transport.writelines(body)
        elif len(body) < 65536:
            transport.write(head + tail + body)
        else:
            transport.writelines((head + tail, body))
        if tail is _TAIL_CLOSE:
            self._finish()
            return
        if self.closing and self.send_seq == self.next_seq and not self.in_message:
            self._finish()  # the client sent EOF and everything is answered
            return
        nxt = self.interim.pop(self.send_seq, None) if self.interim else None
        if nxt is not None:
            transport.write(nxt)
        if self.read_paused:
            self._update_reading()

    def _finish(self) -> None:
        """The last answer is written: half-close, drain what the client still sends for a while
        (closing a socket with unread input would reset it and could lose the answer), then close."""
        self.finished = True
        self.closing = True
        transport = self.transport
        pending = self.pending
        self.pending = {}
        for fut in pending.values():
            fut.cancel()  # answered at once through its callback, which finds nothing more to send
        self.ready.clear()
        self.backlog.clear()
        if not self.eof and transport.can_write_eof():
            try:
                transport.write_eof()
            except OSError:
                transport.close()
                return
            self._update_reading()
            self.linger_timer = self.loop.call_later(LINGER_S, transport.close)
        else:
            transport.close()

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None:
            return
        stop = not self.finished and (self.write_paused or self.next_seq - self.send_seq >= MAX_PIPELINE)
        if stop and not self.read_paused:
            self.read_paused = True
            transport.pause_reading()
        elif not stop and self.read_paused:
            self.read_paused = False
            transport.resume_reading()

    def _too_large(self, what: str) -> str:
        return f"{what}, more than the server's limit of {self.max_body} bytes (--max-body-bytes); send smaller requests (split the batch)"

    # -- lifecycle ---------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """The server is stopping: close now if idle, else after the last answer in flight."""
        if self.transport is None:
            return
        if not self.in_message and self.next_seq == self.send_seq and not self.finished:
            self.closing = True
            self.finished = True
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


_STATUS_NAMES = np.array(["PRESENT", "NOT_FOUND", "EXPIRED"], dtype=object)


def online_features_json(got) -> list[dict]:
    """The JSON form of an OnlineFeatures: per feature its values (null where missing), statuses
    and ages in seconds (null where nothing is stored).  Columns are converted whole (tolist), and
    the status and age columns a view's features share are converted once."""
    shared: dict[int, tuple[list, list]] = {}
    out = []
    for name in got.names:
        vals, nulls = got.values[name], np.asarray(got.nulls[name])
        column = vals.tolist()
        if nulls.any():
            for i in np.flatnonzero(nulls).tolist():
                column[i] = None
        if vals.dtype == object:
            column = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in column]
        status, age = got.status[name], got.age_ns[name]
        key = id(status) ^ (id(age) << 1)
        hit = shared.get(key)
        if hit is None:
            ages = (np.asarray(age) / 1e9).tolist()
            missing = np.asarray(age) < 0
            if missing.any():
                for i in np.flatnonzero(missing).tolist():
                    ages[i] = None
            hit = shared[key] = (_STATUS_NAMES[np.asarray(status, dtype=np.intp)].tolist(), ages)
        out.append({"name": name, "values": column, "statuses": hit[0], "ages_s": hit[1]})
    return out


def _parse_object(body: bytes, what: str) -> dict:
    doc = parse_json(body, what)
    if type(doc) is not dict:
        raise InvalidInput(f"{what} must be a JSON object")
    return doc


def _latin1(v: bytes | None) -> str | None:
    return None if v is None else v.decode("latin-1")


_STATIC = {
    b"/v1/features/online": (_POST, HttpConnection._h_features_online),
    b"/v2/health/live": (_GET, HttpConnection._h_live),
    b"/v2/health/ready": (_GET, HttpConnection._h_ready),
    b"/v2": (_GET, HttpConnection._h_server_metadata),
    b"/v2/models/stats": (_GET, HttpConnection._h_all_stats),
    b"/v2/repository/index": (_POST, HttpConnection._h_index),
    b"/metrics": (_GET, HttpConnection._h_metrics),
}
_MODEL = {
    b"": (_GET, HttpConnection._m_metadata),
    b"ready": (_GET, HttpConnection._m_ready),
    b"config": (_GET, HttpConnection._m_config),
    b"stats": (_GET, HttpConnection._m_stats),
}

__all__ = ["HttpConnection", "HttpTransport"]
