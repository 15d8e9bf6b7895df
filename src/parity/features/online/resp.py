"""A lean Redis connection on the asyncio event loop, for reads on the request path.

The server reads features for a batch of requests without leaving the event loop: the command is
packed by hiredis, written to one persistent connection, and its reply parsed by hiredis when it
arrives, while the loop serves other requests.  No thread hand-off, no connection-pool machinery.

- Pipelined: commands are written as they come; replies are matched to them in order.
- Bounded: every command has the store's timeout.  A timeout or a lost connection fails every
  command waiting on that connection with `Unavailable` (a late reply could no longer be matched)
  and drops the connection; the next command connects again, so the store recovers by itself
  when Redis is back.  Replies come in order, so one timer per connection, set for the oldest
  command's deadline, bounds them all (no timer per command).
- A reply goes to a future (`execute`) or, on the request path, straight to a callback
  (`send_call`: called from the reply's `data_received`, no hop through the loop's queue).
- Connection setup (AUTH, SELECT) is pipelined in front of the first command.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

import hiredis

from parity.errors import Unavailable

log = logging.getLogger(__name__)


class _Protocol(asyncio.Protocol):
    def __init__(self, owner: "AsyncRedis"):
        self.owner = owner
        self.reader = hiredis.Reader()
        self.waiting: deque = deque()  # asyncio.Future or _Call per command sent, oldest first
        self.deadlines: deque[float] = deque()  # loop.time() by which each one's reply is due
        self.timer: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None
        self.lost = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        waiting = self.waiting
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as e:
                self.fail(Unavailable(f"Redis sent a malformed reply ({e}); the connection was reset"))
                return
            if reply is False:
                return
            if not waiting:  # a reply nobody asked for: the stream is out of step
                self.fail(Unavailable("Redis sent an unexpected reply; the connection was reset"))
                return
            fut = waiting.popleft()
            self.deadlines.popleft()
            if not fut.done():
                fut.set_result(reply)

    def connection_lost(self, exc) -> None:
        self.lost = True
        self.fail(Unavailable(f"the Redis connection was lost ({exc or 'closed by the server'}); retry"))

    def fail(self, error: Exception) -> None:
        self.lost = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.deadlines.clear()
        while self.waiting:
            fut = self.waiting.popleft()
            if not fut.done():
                fut.set_exception(error)
        if self.transport is not None:
            self.transport.abort()
        if self.owner._protocol is self:
            self.owner._protocol = None


class _Call:
    """A command's reply handed to `fn(reply, None)`, or its failure to `fn(None, error)`, at once."""

    __slots__ = ("fn", "finished")

    def __init__(self, fn):
        self.fn = fn
        self.finished = False

    def done(self) -> bool:
        return self.finished

    def set_result(self, reply) -> None:
        self.finished = True
        try:
            self.fn(reply, None)
        except Exception:  # a callback's bug must not break the connection's reply stream
            log.exception("a Redis reply callback failed")

    def set_exception(self, error: BaseException) -> None:
        self.finished = True
        try:
            self.fn(None, error)
        except Exception:
            log.exception("a Redis reply callback failed")


class AsyncRedis:
    """One connection to one Redis server, used from one event loop: the one running when it is
    made (kept: `asyncio.get_running_loop` costs a getpid() syscall per call on Python 3.11)."""

    def __init__(self, host: str, port: int, db: int = 0, password: str | None = None, username: str | None = None, *, timeout: float = 0.5):
        self.loop = asyncio.get_running_loop()
        self.host, self.port, self.db = host, port, db
        self.username, self.password = username, password
        self.timeout = timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future | None = None

    async def _connect(self) -> _Protocol:
        if self._connecting is not None:
            return await asyncio.shield(self._connecting)
        loop = self.loop
        self._connecting = loop.create_future()
        try:
            try:
                _, protocol = await asyncio.wait_for(
                    loop.create_connection(lambda: _Protocol(self), self.host, self.port), self.timeout
                )
            except (OSError, asyncio.TimeoutError) as e:
                raise Unavailable(
                    f"cannot reach Redis at {self.host}:{self.port} ({type(e).__name__}: {e}); "
                    "start Redis or fix the online store url"
                ) from None
            setup = []
            if self.password:
                setup.append(("AUTH", self.username, self.password) if self.username else ("AUTH", self.password))
            if self.db:
                setup.append(("SELECT", str(self.db)))
            for cmd in setup:
                reply = await self._send(protocol, hiredis.pack_command(cmd))
                if isinstance(reply, hiredis.ReplyError):
                    protocol.fail(Unavailable(f"Redis refused {cmd[0]}: {reply}"))
                    raise Unavailable(f"Redis at {self.host}:{self.port} refused {cmd[0]}: {reply}; fix the online store url")
            self._protocol = protocol
            self._connecting.set_result(protocol)
            return protocol
        except BaseException as e:
            self._connecting.set_exception(e if isinstance(e, Exception) else Unavailable("connecting was cancelled"))
            self._connecting.exception()  # retrieved: waiters re-raise it
            raise
        finally:
            self._connecting = None

    def _send(self, protocol: _Protocol, packed: bytes, waiter=None):
        loop = self.loop
        if waiter is None:
            waiter = loop.create_future()
        protocol.waiting.append(waiter)
        protocol.deadlines.append(loop.time() + self.timeout)
        protocol.transport.write(packed)
        if protocol.timer is None:
            protocol.timer = loop.call_later(self.timeout, self._check, protocol)
        return waiter

    def _check(self, protocol: _Protocol) -> None:
        """The connection's timer: fail everything if the oldest command is overdue, else wait
        for the oldest one's deadline (none waiting: the timer is off until the next command)."""
        protocol.timer = None
        if not protocol.deadlines:
            return
        loop = self.loop
        due = protocol.deadlines[0]
        if due <= loop.time():
            protocol.fail(Unavailable(f"Redis at {self.host}:{self.port} did not answer within {self.timeout:g}s (Timeout); retry"))
            return
        protocol.timer = loop.call_at(due, self._check, protocol)

    async def execute(self, *args):
        """One command; its reply (hiredis types: bytes, int, list, None; a Redis error reply is
        returned as a `hiredis.ReplyError`, not raised)."""
        return await self.execute_packed(hiredis.pack_command(args))

    async def execute_packed(self, packed: bytes):
        protocol = self._protocol
        if protocol is None or protocol.lost:
            protocol = await self._connect()
        return await self._send(protocol, packed)

    def send_call(self, packed: bytes, fn) -> bool:
        """`execute_packed` without a coroutine or a future, on a connection already made: True
        when sent (then `fn(reply, None)` or `fn(None, Unavailable)` follows, on the loop), False
        when there is no live connection (then `execute_packed` connects)."""
        protocol = self._protocol
        if protocol is None or protocol.lost:
            return False
        self._send(protocol, packed, _Call(fn))
        return True

    def close(self) -> None:
        protocol = self._protocol
        self._protocol = None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()


__all__ = ["AsyncRedis"]
