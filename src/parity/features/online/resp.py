"""A lean Redis connection on the asyncio event loop, for reads on the request path.

The server reads features for a batch of requests without leaving the event loop: the command is
packed by hiredis, written to one persistent connection, and its reply parsed by hiredis when it
arrives, while the loop serves other requests.  No thread hand-off, no connection-pool machinery.

- Pipelined: commands are written as they come; replies are matched to them in order.
- Bounded: every command has the store's timeout.  A timeout or a lost connection fails every
  command waiting on that connection with `Unavailable` (a late reply could no longer be matched)
  and drops the connection; the next command connects again, so the store recovers by itself
  when Redis is back.
- Connection setup (AUTH, SELECT) is pipelined in front of the first command.
"""

from __future__ import annotations

import asyncio
from collections import deque

import hiredis

from parity.errors import Unavailable


class _Protocol(asyncio.Protocol):
    def __init__(self, owner: "AsyncRedis"):
        self.owner = owner
        self.reader = hiredis.Reader()
        self.waiting: deque[asyncio.Future] = deque()
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
            if not fut.done():
                fut.set_result(reply)

    def connection_lost(self, exc) -> None:
        self.lost = True
        self.fail(Unavailable(f"the Redis connection was lost ({exc or 'closed by the server'}); retry"))

    def fail(self, error: Exception) -> None:
        self.lost = True
        while self.waiting:
            fut = self.waiting.popleft()
            if not fut.done():
                fut.set_exception(error)
        if self.transport is not None:
            self.transport.abort()
        if self.owner._protocol is self:
            self.owner._protocol = None


class AsyncRedis:
    """One connection to one Redis server, used from one event loop."""

    def __init__(self, host: str, port: int, db: int = 0, password: str | None = None, username: str | None = None, *, timeout: float = 0.5):
        self.host, self.port, self.db = host, port, db
        self.username, self.password = username, password
        self.timeout = timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future | None = None

    async def _connect(self) -> _Protocol:
        if self._connecting is not None:
            return await asyncio.shield(self._connecting)
        loop = asyncio.get_running_loop()
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

    def _send(self, protocol: _Protocol, packed: bytes) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        protocol.waiting.append(fut)
        protocol.transport.write(packed)
        timer = loop.call_later(self.timeout, self._expire, protocol, fut)
        fut.add_done_callback(lambda _: timer.cancel())
        return fut

    def _expire(self, protocol: _Protocol, fut: asyncio.Future) -> None:
        if not fut.done():
            protocol.fail(Unavailable(f"Redis at {self.host}:{self.port} did not answer within {self.timeout:g}s (Timeout); retry"))

    async def execute(self, *args):
        """One command; its reply (hiredis types: bytes, int, list, None; a Redis error reply is
        returned as a `hiredis.ReplyError`, not raised)."""
        return await self.execute_packed(hiredis.pack_command(args))

    async def execute_packed(self, packed: bytes):
        protocol = self._protocol
        if protocol is None or protocol.lost:
            protocol = await self._connect()
        return await self._send(protocol, packed)

    def send_now(self, packed: bytes) -> asyncio.Future | None:
        """`execute_packed` without a coroutine, on a connection already made: the reply's
        future, or None when there is no live connection (then `execute_packed` connects)."""
        protocol = self._protocol
        if protocol is None or protocol.lost:
            return None
        return self._send(protocol, packed)

    def close(self) -> None:
        protocol = self._protocol
        self._protocol = None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()


__all__ = ["AsyncRedis"]
