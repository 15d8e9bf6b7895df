"""The interface every transport implements.  Transports are peers: each decodes its wire into
`parity.types` objects, calls the shared `InferenceCore`, and maps `ParityError`s to its codes.
They hold no serving logic of their own."""

from __future__ import annotations

import asyncio
import socket
from typing import Protocol

from parity.config import ServerConfig
from parity.serving.core import InferenceCore


class Transport(Protocol):
    name: str

    def __init__(self, core: InferenceCore, config: ServerConfig) -> None: ...

    async def start(self) -> None:
        """Bind and start accepting (ports from the config; port 0 picks a free one)."""

    @property
    def port(self) -> int:
        """The bound port (after start)."""

    async def stop(self, grace: float) -> None:
        """Stop accepting, let accepted requests finish (up to `grace` seconds), close."""


def listen_socket(host: str, port: int, *, reuse_port: bool, backlog: int = 2048) -> socket.socket:
    """A listening TCP socket; with reuse_port several worker processes share one port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


class ConnectionSet:
    """The open connections of a transport that owns its listening socket, and their graceful
    stop.  Connections call `connection_closed` when they go; each offers `shutdown()` (finish
    what was accepted, then close) and `abort()`."""

    def __init__(self) -> None:
        self.connections: set = set()
        self.stopping = False
        self._server: asyncio.AbstractServer | None = None
        self._all_closed = asyncio.Event()

    def connection_closed(self, conn) -> None:
        self.connections.discard(conn)
        if self.stopping and not self.connections:
            self._all_closed.set()

    async def close_connections(self, grace: float) -> None:
        """Stop accepting; let every connection finish what it accepted for up to `grace`
        seconds; then abort whatever remains."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.shutdown()
        if self.connections:
            try:
                await asyncio.wait_for(self._all_closed.wait(), grace)
            except TimeoutError:
                pass
        for conn in list(self.connections):
            conn.abort()
