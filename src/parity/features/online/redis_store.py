"""The Redis online store (redis-py with hiredis; standalone, or Redis Cluster).

Key layout: one string per (view, entity):

    <prefix>:{<entity id>}:<view>

`<entity id>` is the encoded key tuple of `base.entity_ids` (e.g. `i42`, `sa%3Ab,i7`), which holds
no ':', '{', '}' or whitespace, so the braces are the key's Redis Cluster hash tag: all views of one
entity live in one slot.  `<prefix>` is checked against [A-Za-z0-9_.-]{1,64} and view names are
definitions' names ([A-Za-z_][A-Za-z0-9_]*), so no name can inject into another key.  The value is
the `codec` blob.  Keys carry no Redis expiry: TTL is judged at read time from the event time.

Writes: EVALSHA of `_CAS` over up to 1000 rows per call (KEYS[i] gets ARGV[i]), the calls of one
write in one pipeline.  For each key the script compares the stored blob's (event_ts, created_ts)
with the new one's (int64s at bytes 1..16 of the blob, compared as signed-high / unsigned-low
32-bit halves, exact in Lua's doubles) and SETs unless the stored one is strictly greater (a full
tie goes to the last write, as in `base`): atomic in Redis (a script runs alone), idempotent.  On
a cluster a script's keys must share a slot, so the rows are grouped per hash slot, one EVALSHA
per slot (EVALSHA is not allowed in redis-py's cluster pipelines).  After a server restart (empty
script cache) NOSCRIPT makes the store SCRIPT LOAD and resend once (safe: the writes are idempotent).

Reads: standalone, one MGET of every key of every view of the call (one command, one round trip),
packed by `_mget_command` and sent on a connection the store keeps between reads (`_mget`).
Cluster: one pipeline of GETs, which redis-py's cluster pipeline groups per node (one round trip
per node that owns a slot of the call's keys; a cross-slot MGET is not allowed on a cluster).

Failures: connect and socket timeouts are `timeout` (default 0.5 s) and redis-py's own retries are
off (`retries`, default 0), so an unreachable server raises `Unavailable` after about one timeout;
the broken connection is dropped and the next call connects again.  (The standalone read's kept
connections hold their socket timeout in the kernel on Linux, SO_RCVTIMEO / SO_SNDTIMEO: the same
bound without Python's poll before each send and receive.)
"""

from __future__ import annotations

import os
import re
import socket
import struct
import sys
from itertools import groupby
from urllib.parse import unquote

import numpy as np
import redis
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.retry import Retry

from parity.errors import InvalidInput, ParityError, Unavailable
from parity.features.online.base import OnlineStore, build_result, check_view_name, entity_ids, relay

try:  # standalone reads pack their MGET with hiredis directly
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover - redis-py without hiredis: reads go through the client
    _hiredis_pack = None

# Standalone reads on Linux: the kept connections' sockets are blocking with the timeout set in the
# kernel (SO_RCVTIMEO / SO_SNDTIMEO) instead of Python's socket timeout, which polls before every
# send and receive (two syscalls more per round trip).  Same bound, same errors (see `_mget`).
_KERNEL_TIMEOUTS = sys.platform.startswith("linux")

# Bumped in a forked child, whose kept connections are its parent's sockets: it must not use them
# (checked per read instead of os.getpid(), a syscall).
_FORKS = [0]
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _FORKS.__setitem__(0, _FORKS[0] + 1))


def _keys(prefix: str, requests: list[tuple[str, list[str]]]) -> list[str]:
    """The keys (`RedisOnlineStore.key`) of [(view, entity ids)], in order: per view one join and
    one split (entity ids, prefixes and view names hold no newline)."""
    keys: list[str] = []
    for view, ids in requests:
        if ids:
            keys += (f"{prefix}:{{" + f"}}:{view}\n{prefix}:{{".join(ids) + f"}}:{view}").split("\n")
    return keys


def _per_request(requests: list[tuple[str, list[str]]], values: list) -> list[list]:
    """One MGET's values split back into the requests' lists, in order."""
    if len(requests) == 1:
        return [values]
    out, pos = [], 0
    for _, ids in requests:
        out.append(values[pos : pos + len(ids)])
        pos += len(ids)
    return out


def _mget_command(prefix: str, requests: list[tuple[str, list[str]]]) -> bytes:
    """The RESP bytes of one MGET of the keys of `requests`, exactly as hiredis packs them.  Keys
    (`<prefix>:{<id>}:<view>`) are ASCII, so a key's byte length is its length, and the keys of a
    run of ids of equal length share one length header: a run is packed by one str.join (sequential
    ids, or ids of one magnitude, come in a few long runs).  Ids whose lengths change often (more
    than 2 + n/4 runs in a view), or anything not ASCII: hiredis packs the keys."""
    parts: list[str] = []
    total = 0
    head = f"{prefix}:{{"
    for view, ids in requests:
        n = len(ids)
        total += n
        tail = f"}}:{view}\r\n"
        base = len(prefix) + len(view) + 4  # the key's length less the id's
        budget = 2 + n // 4
        for size, run in groupby(ids, len):
            budget -= 1
            if budget < 0:
                return _hiredis_pack(("MGET", *_keys(prefix, requests)))
            seg = f"${base + size}\r\n{head}"
            parts.append(seg + (tail + seg).join(run) + tail)
    try:
        return (f"*{total + 1}\r\n$4\r\nMGET\r\n" + "".join(parts)).encode("ascii")
    except UnicodeEncodeError:
        return _hiredis_pack(("MGET", *_keys(prefix, requests)))


def _use_kernel_timeouts(sock, timeout: float) -> bool:
    """Give a plain TCP socket the timeout in the kernel; False (left as it is) for anything else."""
    if type(sock) is not socket.socket or not timeout or timeout <= 0:
        return False
    sec, usec = divmod(max(round(timeout * 1_000_000), 1), 1_000_000)  # at least 1 us: 0 would mean none
    tv = struct.pack("@ll", sec, usec)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
    sock.settimeout(None)
    return True


_PREFIX = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_CHUNK = 1000  # rows per script call

_CAS = """
local function half(s, i)
  local b1, b2, b3, b4, b5, b6, b7, b8 = string.byte(s, i, i + 7)
  local lo = ((b4 * 256 + b3) * 256 + b2) * 256 + b1
  local hi = ((b8 * 256 + b7) * 256 + b6) * 256 + b5
  if hi >= 2147483648 then hi = hi - 4294967296 end
  return hi, lo
end
local function newer(a, b)
  for _, pos in ipairs({2, 10}) do
    local ah, al = half(a, pos)
    local bh, bl = half(b, pos)
    if ah ~= bh then return ah > bh end
    if al ~= bl then return al > bl end
  end
  return false
end
local won = 0
for i = 1, #KEYS do
  local new = ARGV[i]
  local cur = redis.call('GET', KEYS[i])
  if not (cur and string.len(cur) >= 17 and newer(cur, new)) then
    redis.call('SET', KEYS[i], new)
    won = won + 1
  end
end
return won
"""

_UNAVAILABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
try:  # cluster-only failures
    from redis.exceptions import ClusterDownError, MasterDownError, RedisClusterException, TryAgainError

    # RedisClusterException (not a RedisError): no reachable startup node, slots not covered
    _UNAVAILABLE += (ClusterDownError, MasterDownError, TryAgainError, RedisClusterException)
except ImportError:  # pragma: no cover
    pass


def check_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or not _PREFIX.match(prefix):
        raise InvalidInput(f"online store key prefix {prefix!r} must be 1-64 of A-Z a-z 0-9 _ . -")
    return prefix


class RedisOnlineStore(OnlineStore):
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 6379,
        db: int = 0,
        prefix: str = "parity",
        timeout: float = 0.5,
        cluster: bool = False,
        username: str | None = None,
        password: str | None = None,
        ssl: bool = False,
        retries: int = 0,
    ):
        self.prefix = check_prefix(prefix)
        self.cluster = cluster
        self.timeout = timeout
        scheme = "rediss" if ssl else "redis"
        # no credentials in the url: it shows up in messages
        self.url = f"{scheme}://{host}:{port}/{db}?prefix={prefix}&timeout={timeout}" + ("&cluster=true" if cluster else "")
        common = {
            "host": host, "port": port, "username": username, "password": password, "ssl": ssl,
            "socket_timeout": timeout, "socket_connect_timeout": timeout, "retry": Retry(NoBackoff(), retries),
        }  # fmt: skip
        if cluster:
            from redis.cluster import RedisCluster

            if db:
                raise InvalidInput("a Redis Cluster has only db 0; drop the /db from the online store url")
            try:  # a cluster client reads the slot map when it is made
                self._client = RedisCluster(**common)
            except _UNAVAILABLE + (RedisError,) as e:
                raise Unavailable(
                    f"the online store {self.url} is unavailable ({type(e).__name__}: {e}); start the cluster or fix the url"
                ) from e
        else:
            self._client = redis.Redis(db=db, health_check_interval=0, **common)
        self._sha: str | None = None
        self._retries = retries
        # reads from an event loop (standalone, plain TCP): one pipelined connection per loop
        self._aio_args = None if (cluster or ssl) else (host, port, db, password, username)
        import weakref

        self._aio = weakref.WeakKeyDictionary()  # event loop -> AsyncRedis
        self._last_conn: tuple | None = None  # (loop, AsyncRedis): the last `_loop_connection` found
        self._idle: list = []  # standalone: connections kept between reads (see `_mget`)
        self._idle_fork = _FORKS[0]

    @classmethod
    def from_url(cls, url: str, **overrides) -> RedisOnlineStore:
        """`redis://[user:password@]host[:port][/db][?prefix=p&timeout=s&cluster=true&retries=n]`;
        `rediss://` for TLS; `redis+cluster://` is the same as `cluster=true`."""
        from urllib.parse import parse_qs, urlsplit

        u = urlsplit(url)
        q = {k: v[-1] for k, v in parse_qs(u.query).items()}
        unknown = set(q) - {"prefix", "timeout", "cluster", "retries"}
        if unknown:
            raise InvalidInput(
                f"online store url {url!r}: unknown option(s) {sorted(unknown)}; known: prefix, timeout, cluster, retries"
            )
        db = (u.path or "/").strip("/")
        try:
            kw = {
                "host": u.hostname or "127.0.0.1", "port": u.port or 6379, "db": int(db) if db else 0,
                "prefix": q.get("prefix", "parity"), "timeout": float(q.get("timeout", 0.5)),
                "cluster": u.scheme == "redis+cluster" or q.get("cluster", "").lower() in ("1", "true", "yes"),
                "username": unquote(u.username) if u.username else None, "password": unquote(u.password) if u.password else None,
                "ssl": u.scheme == "rediss", "retries": int(q.get("retries", 0)),
            }  # fmt: skip
        except ValueError as e:
            raise InvalidInput(f"online store url {url!r}: {e}") from e
        kw.update(overrides)
        return cls(**kw)

    def key(self, view: str, entity_id: str) -> str:
        return f"{self.prefix}:{{{entity_id}}}:{view}"

    def _fail(self, e: Exception) -> Unavailable:
        if not self.cluster:  # drop broken sockets; the next call connects afresh (a cluster client re-reads its slot map itself)
            try:
                self._client.connection_pool.disconnect()
            except Exception:  # noqa: BLE001, S110 - best effort
                pass
        return Unavailable(
            f"the online store {self.url} is unavailable ({type(e).__name__}: {e}); start Redis or fix the online store url "
            f"(timeout {self.timeout}s), then retry -- the store reconnects by itself"
        )

    def _write(self, view: str, ids: list[str], event_ts: np.ndarray, created_ts: np.ndarray, blobs: list[bytes]) -> None:
        keys = [self.key(view, i) for i in ids]
        if self.cluster:  # a script's keys must share a slot: one call per slot
            by_slot: dict[int, tuple[list, list]] = {}
            for k, b in zip(keys, blobs):
                g = by_slot.setdefault(self._client.keyslot(k), ([], []))
                g[0].append(k)
                g[1].append(b)
            groups = list(by_slot.values())
        else:
            groups = [(keys[i : i + _CHUNK], blobs[i : i + _CHUNK]) for i in range(0, len(keys), _CHUNK)]
        try:
            if self._sha is None:
                self._sha = self._client.script_load(_CAS)
            for attempt in range(2):
                try:
                    self._cas(groups)
                    return
                except NoScriptError:
                    if attempt:
                        raise
                    self._sha = self._client.script_load(_CAS)  # server restarted or SCRIPT FLUSH: load, resend (idempotent)
        except _UNAVAILABLE as e:
            raise self._fail(e) from e
        except ResponseError as e:
            raise ParityError(f"the online store {self.url} refused a write: {e}") from e

    def _cas(self, groups: list[tuple[list, list]]) -> None:
        if self.cluster:
            for keys, blobs in groups:
                self._client.evalsha(self._sha, len(keys), *keys, *blobs)
            return
        pipe = self._client.pipeline(transaction=False)
        for keys, blobs in groups:
            pipe.evalsha(self._sha, len(keys), *keys, *blobs)
        pipe.execute()

    def _read(self, requests: list[tuple[str, list[str]]]) -> list[list[bytes | None]]:
        if not any(ids for _, ids in requests):
            return [[] for _ in requests]
        try:
            if self.cluster:
                keys = _keys(self.prefix, requests)
                values = self._cluster_gets(keys)
            else:
                values = self._mget(requests)
        except _UNAVAILABLE as e:
            raise self._fail(e) from e
        except ResponseError as e:
            raise ParityError(f"the online store {self.url} refused a read: {e}") from e
        return _per_request(requests, values)

    def read_start(self, requests, now_ns: int, done) -> bool:
        """`read_async` without a coroutine, for the request path: True when the MGET was sent on
        this loop's connection; then `done([ViewResult], None)` or `done(None, error)` follows,
        called from the reply's arrival.  False when this store or this loop's connection cannot
        (then use `read_async`, which connects).  Must be called on the event loop; invalid input
        raises here."""
        conn = self._loop_connection()
        if conn is None:
            return False
        views = [view for view, _ in requests]
        asked = [(check_view_name(view), entity_ids(keys)) for view, keys in requests]
        if not any(ids for _, ids in asked):
            return False

        decoded = relay(done, lambda blobs: [build_result(view, b, now_ns) for view, b in zip(views, blobs)])
        return self._send_mget(conn, asked, decoded)

    def blob_reader(self, views: list):
        """For the request path of a model on stored features only (`serving.features`), which
        copies values out of the blobs itself: a `BlobReader` of these views (names, in order).
        None: this store reads another way (cluster, TLS)."""
        if self._aio_args is None or _hiredis_pack is None:
            return None
        return BlobReader(self, [check_view_name(v) for v in views])

    def _loop_connection(self, loop=None):
        """`loop`'s `AsyncRedis` (default: the running loop's), or None (none made yet, or a store
        that reads another way).  The last one asked for is kept, so the request path's lookup
        is one identity check (no weak-reference lookup, no getpid() of get_running_loop)."""
        last = self._last_conn
        if last is not None and last[0] is loop:
            return last[1]
        if self._aio_args is None or _hiredis_pack is None:
            return None
        if loop is None:
            import asyncio

            loop = asyncio.get_running_loop()
        conn = self._aio.get(loop)
        if conn is not None:
            self._last_conn = (loop, conn)
        return conn

    def _send_mget(self, conn, asked: list[tuple[str, list[str]]] | None, fn, packed: bytes | None = None) -> bool:
        """One MGET of [(view name, entity ids)] on `conn`: `fn(blob lists per view, None)` or
        `fn(None, error)` follows; False when the connection is not live.  `packed`: the command,
        already packed (then `asked` None: one key per view)."""

        def reply(values, error) -> None:
            if error is not None:
                fn(None, self._unavailable(error) if isinstance(error, Unavailable) else error)
            elif not isinstance(values, list):
                fn(None, ParityError(f"the online store {self.url} refused a read: {values}"))
            elif asked is None:
                fn([[v] for v in values], None)
            else:
                fn(_per_request(asked, values), None)

        return conn.send_call(_mget_command(self.prefix, asked) if packed is None else packed, reply)

    def _unavailable(self, e: Unavailable) -> Unavailable:
        return Unavailable(
            f"the online store {self.url} is unavailable ({e.message}); start Redis or fix the online store url "
            f"(timeout {self.timeout}s), then retry -- the store reconnects by itself"
        )

    async def _read_async(self, requests: list[tuple[str, list[str]]]) -> list[list[bytes | None]]:
        """One MGET on the event loop's own pipelined connection (`resp.AsyncRedis`): no thread
        hand-off, the loop serves other requests while Redis answers.  Cluster and TLS stores read
        on a worker thread."""
        if self._aio_args is None or _hiredis_pack is None:
            return await super()._read_async(requests)
        if not any(ids for _, ids in requests):
            return [[] for _ in requests]
        import asyncio

        from parity.features.online.resp import AsyncRedis

        loop = asyncio.get_running_loop()
        conn = self._aio.get(loop)
        if conn is None:
            host, port, db, password, username = self._aio_args
            conn = self._aio[loop] = AsyncRedis(host, port, db, password, username, timeout=self.timeout)
            self._last_conn = None
        try:
            values = await conn.execute_packed(_mget_command(self.prefix, requests))
        except Unavailable as e:
            raise self._unavailable(e) from None
        if not isinstance(values, list):
            raise ParityError(f"the online store {self.url} refused a read: {values}")
        return _per_request(requests, values)

    async def close_async(self) -> None:
        import asyncio

        conn = self._aio.pop(asyncio.get_running_loop(), None)
        self._last_conn = None
        if conn is not None:
            conn.close()

    def _cluster_gets(self, keys: list[str]) -> list:
        """GET every key in one pipeline, one packet per node.  Without following redirections:
        redis-py would resend each failed GET of a node on its own, one timeout per key (a frozen
        node held a read of 200 keys 100 s); so a node that fails fails the read after one timeout.
        MOVED/ASK (slots moving) instead rerun the pipeline the usual way, which follows them and
        refreshes the slot map."""
        from redis.cluster import PipelineCommand
        from redis.exceptions import AskError, MovedError

        stack = [PipelineCommand(("GET", k), {}, i) for i, k in enumerate(keys)]
        try:
            return self._client.pipeline(transaction=False).send_cluster_commands(stack, allow_redirections=False)
        except (MovedError, AskError):
            pipe = self._client.pipeline(transaction=False)
            for k in keys:
                pipe.get(k)
            return pipe.execute()

    def _mget(self, requests: list[tuple[str, list[str]]]) -> list:
        """One MGET of the keys of `requests` (standalone), without the client's per-command
        overhead (pool checkout and release, retry wrapper, argument re-packing): packed by
        `_mget_command`, it runs on a connection this store keeps between reads -- taken from and
        given back to `_idle` (list pop/append: atomic, so concurrent reads each get their own).
        The connections come from the client's pool, so `_fail` and `close` disconnect them too.  A
        connection that fails is disconnected (it connects again on its next use); connection
        errors are retried `retries` times, as the client does.  Replies are the client's: a list
        of bytes or None.  On Linux the connection's socket keeps its timeout in the kernel
        (`_use_kernel_timeouts`); a send or receive that runs out of it fails with EAGAIN, raised
        here as the redis TimeoutError it stands for."""
        if _hiredis_pack is None:
            return self._client.mget(_keys(self.prefix, requests))
        if self._idle_fork != _FORKS[0]:  # a forked child must not share its parent's sockets
            self._idle, self._idle_fork = [], _FORKS[0]
        idle = self._idle
        try:
            conn = idle.pop()
        except IndexError:
            conn = None
        packed = [_mget_command(self.prefix, requests)]
        for attempt in range(self._retries + 1):
            try:
                if conn is None:
                    conn = self._client.connection_pool.get_connection()
                if _KERNEL_TIMEOUTS:
                    sock = getattr(conn, "_sock", None)
                    if sock is None:
                        conn.connect()
                        sock = getattr(conn, "_sock", None)
                    if sock is not None and conn.__dict__.get("_parity_tuned") is not sock:
                        _use_kernel_timeouts(sock, self.timeout)
                        conn._parity_tuned = sock
                conn.send_packed_command(packed, check_health=False)
                values = conn.read_response()
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as e:
                if conn is not None:
                    conn.disconnect()
                if attempt == self._retries:
                    if conn is not None:
                        idle.append(conn)
                    if isinstance(e.__context__, BlockingIOError):  # the kernel timeout ran out
                        raise redis.exceptions.TimeoutError(f"Timeout: no answer within {self.timeout}s ({e})") from e
                    raise
            except BaseException:
                if conn is not None:  # maybe half a reply in the socket: never reuse it as it is
                    conn.disconnect()
                    idle.append(conn)
                raise
            else:
                idle.append(conn)
                return values
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        for conn in list(self._aio.values()):
            try:
                conn.close()
            except Exception:  # noqa: BLE001, S110 - best effort (the loop may be gone)
                pass
        try:
            self._client.close()
        except RedisError:
            pass


class BlobReader:
    """The request path's MGET of some views' blobs (`RedisOnlineStore.blob_reader`), on an event
    loop's connection, the reply handed to a callback from its arrival:

    - `send(loop, ids per view, fn)`: the keys of `entity_ids` per view, in the views' order;
    - `send_ints(loop, ints, fn)`: views keyed by one INT64 key, the same ids (Python ints) for
      each: the command is formatted straight from the ints, a one-row read from one template.

    Both return True when sent; then `fn(blob lists per view, None)` or `fn(None, error)` follows.
    False: the loop has no connection yet (`read_async` makes one)."""

    __slots__ = ("store", "names", "_head", "_parts")

    def __init__(self, store: RedisOnlineStore, names: list[str]):
        self.store, self.names = store, names
        prefix = store.prefix
        self._head = f"*{len(names) + 1}\r\n$4\r\nMGET\r\n"
        # per view: (the key's length less the id's, the RESP text before the id, after it)
        self._parts = [(len(prefix) + len(name) + 5, f"\r\n{prefix}:{{i", f"}}:{name}\r\n") for name in names]

    def send(self, loop, ids_per_view: list, fn) -> bool:
        conn = self.store._loop_connection(loop)
        return conn is not None and self.store._send_mget(conn, list(zip(self.names, ids_per_view)), fn)

    def send_ints(self, loop, ints: list, fn) -> bool:
        conn = self.store._loop_connection(loop)
        if conn is None:
            return False
        if len(ints) != 1:
            ids = [f"i{v}" for v in ints]
            return self.store._send_mget(conn, [(name, ids) for name in self.names], fn)
        return self.store._send_mget(conn, None, fn, self.one_row(ints[0]))

    def one_row(self, v: int) -> bytes:
        """The MGET of one entity's key in every view (the bytes hiredis would pack)."""
        s = str(v)
        n = len(s)
        return (self._head + "".join(f"${base + n}{before}{s}{after}" for base, before, after in self._parts)).encode("ascii")
