"""The event-loop Redis connection against real Redis servers: pipelined replies matched in order,
error replies, a server that never answers (bounded by the timeout), and a server that restarts
(the next command reconnects by itself)."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid

import hiredis
import pytest
import redis

from parity.errors import Unavailable
from parity.features.online.resp import AsyncRedis
from parity.testing.redis import free_port, start_redis


def test_pipelined_commands_get_their_own_replies_in_order():
    prefix = f"paritytest_resp_{uuid.uuid4().hex[:8]}"
    with redis.Redis() as r:
        r.mset({f"{prefix}:{i}": f"v{i}".encode() for i in range(200)})

    async def run():
        c = AsyncRedis("127.0.0.1", 6379, timeout=2)
        try:
            gets = [c.execute("GET", f"{prefix}:{i}") for i in range(200)]
            mget = c.execute("MGET", *[f"{prefix}:{i}" for i in (5, 500, 7)])
            err = c.execute("INCR", f"{prefix}:1")  # not an integer: an error reply, returned not raised
            return await asyncio.gather(*gets), await mget, await err
        finally:
            c.close()

    try:
        gets, mget, err = asyncio.run(run())
        assert gets == [f"v{i}".encode() for i in range(200)]
        assert mget == [b"v5", None, b"v7"]
        assert isinstance(err, hiredis.ReplyError) and "not an integer" in str(err)
    finally:
        with redis.Redis() as r:
            r.delete(*[f"{prefix}:{i}" for i in range(200)])


def test_a_server_that_never_answers_fails_every_waiting_command_within_the_timeout():
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(4)

        async def run():
            c = AsyncRedis("127.0.0.1", srv.getsockname()[1], timeout=0.3)
            t0 = time.monotonic()
            results = await asyncio.gather(c.execute("GET", "a"), c.execute("GET", "b"), return_exceptions=True)
            return results, time.monotonic() - t0

        results, elapsed = asyncio.run(run())
    assert all(isinstance(r, Unavailable) and "did not answer within 0.3s" in r.message for r in results)
    assert elapsed < 5


def test_nothing_listening_is_unavailable_saying_what_to_do():
    async def run():
        return await AsyncRedis("127.0.0.1", free_port(), timeout=0.5).execute("PING")

    with pytest.raises(Unavailable, match="start Redis or fix the online store url"):
        asyncio.run(run())


def test_a_restarted_server_is_reconnected_by_the_next_command(tmp_path):
    port = free_port()
    proc = start_redis(port, tmp_path)

    async def run():
        nonlocal proc
        c = AsyncRedis("127.0.0.1", port, db=2, timeout=0.5)
        assert await c.execute("SET", "k", "1") == b"OK"
        proc.kill()
        proc.wait()
        with pytest.raises(Unavailable):
            await c.execute("GET", "k")
        with pytest.raises(Unavailable):
            await c.execute("GET", "k")  # still down: connecting fails fast
        proc = start_redis(port, tmp_path)
        assert await c.execute("GET", "k") is None  # the new server is empty (nothing saved)
        assert await c.execute("SET", "k", "2") == b"OK"
        c.close()

    try:
        asyncio.run(run())
        with redis.Redis(port=port, db=2) as r:  # SELECT was applied on the new connection too
            assert r.get("k") == b"2"
    finally:
        proc.kill()
        proc.wait()
