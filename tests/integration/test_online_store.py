"""The online store contract, run against every backend: SQLite in tmp_path, the real Redis on
127.0.0.1:6379 (each test under its own random key prefix, deleted afterwards) and a throwaway
3-master Redis Cluster (`parity.testing.redis.RedisCluster`, one per module); plus Redis failure
handling against a closed port, a silent socket, a throwaway redis-server and a cluster node frozen
or killed; the cluster's one-round-trip-per-node read counted on the wire and by each node, and
reads and writes following a slot moved to another node."""

from __future__ import annotations

import multiprocessing
import random
import socket
import time
import uuid
from urllib.parse import urlsplit

import numpy as np
import pytest
import redis
import redis.cluster

from parity.errors import InvalidInput, Unavailable
from parity.features.definitions import DTYPES, FeatureView, Field, FileSource
from parity.features.online import Status, open_online_store
from parity.features.online.base import entity_ids, is_expired, ttl_us
from parity.features.online.redis_store import RedisOnlineStore
from parity.testing.redis import RedisCluster, RedisServer, free_port

S = 1_000_000_000
I64 = np.iinfo(np.int64)
I32 = np.iinfo(np.int32)
SRC = FileSource("unused.parquet")


def view(name, schema, ttl=0.0, entities=("user",)):
    return FeatureView(name, entities, SRC, tuple(Field(n, d) for n, d in schema), ttl_seconds=ttl)


ALL = view("all_types", [(f"f_{dt}", dt) for dt in DTYPES])
SIMPLE = view("simple", [("x", "int64"), ("tag", "string")])


@pytest.fixture(scope="module", autouse=True)
def redis_running():
    """The Redis tests need the server at 127.0.0.1:6379 (`.ci/run` starts it): say so plainly
    instead of failing in every test."""
    try:
        with redis.Redis(socket_connect_timeout=0.5, socket_timeout=0.5) as r:
            r.ping()
    except redis.RedisError as e:
        pytest.fail(f"no Redis at 127.0.0.1:6379 ({e}); start it (redis-server --daemonize yes) or run .ci/run")


def _cleanup_prefix(prefix: str) -> None:
    with redis.Redis() as r:
        keys = list(r.scan_iter(match=f"{prefix}:*", count=1000))
        for i in range(0, len(keys), 500):
            r.delete(*keys[i : i + 500])


@pytest.fixture(scope="module")
def redis_cluster():
    """A throwaway 3-master Redis Cluster for the module's cluster tests (each under its own prefix)."""
    with RedisCluster(masters=3) as cluster:
        yield cluster


@pytest.fixture(params=["sqlite", "redis", "redis-cluster"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = open_online_store(f"sqlite://{tmp_path / 'online.db'}")
        yield s
        s.close()
    elif request.param == "redis-cluster":
        cluster = request.getfixturevalue("redis_cluster")
        s = open_online_store(cluster.url(prefix=f"paritytest_{uuid.uuid4().hex[:12]}", timeout=2))
        assert s.cluster
        try:
            yield s
        finally:
            s.close()  # the cluster goes with the module; the prefix keeps the tests apart
    else:
        prefix = f"paritytest_{uuid.uuid4().hex[:12]}"
        s = open_online_store(f"redis://127.0.0.1:6379/0?prefix={prefix}&timeout=2")
        try:
            yield s
        finally:
            s.close()
            _cleanup_prefix(prefix)


def one(store, v, keys, now):
    return store.read([(v, keys)], now)[0]


def bits(a: np.ndarray) -> np.ndarray:
    """The raw bytes of a numeric column, for bit-exact comparison (NaN payloads, -0.0)."""
    return np.frombuffer(np.ascontiguousarray(a).tobytes(), dtype=np.uint8)


# ---------------------------------------------------------------- round trip


def test_round_trip_of_every_dtype_with_nulls_nan_unicode_and_extremes(store):
    nan_payload = np.array([0x7FF8_0000_DEAD_BEEF], dtype=np.uint64).view(np.float64)[0]
    nan32_payload = np.array([0x7FC0_1234], dtype=np.uint32).view(np.float32)[0]
    cols = {
        "f_bool": np.array([True, False, True, False, True, False, True]),
        "f_int32": np.array([I32.min, I32.max, 0, -1, 1, 7, 0], dtype=np.int32),
        "f_int64": np.array([I64.min, I64.max, 0, -1, 1, 2**53 + 1, 0], dtype=np.int64),
        "f_float32": np.array([np.nan, nan32_payload, -0.0, np.inf, -np.inf, np.finfo(np.float32).tiny, 1e-45], dtype=np.float32),
        "f_float64": np.array([nan_payload, np.nan, -0.0, np.inf, np.finfo(np.float64).max, 5e-324, 0.1], dtype=np.float64),
        "f_string": np.array(["héllo wörld", "日本語 🙂", "", "a:b{c}d\x00e\n", "x" * 10_000, "é", "ok"], dtype=object),
    }
    null_rows = {"f_bool": [1], "f_int32": [2], "f_int64": [6], "f_float32": [3], "f_float64": [4], "f_string": [5]}
    written = {}
    for name, col in cols.items():
        mask = np.zeros(len(col), dtype=bool)
        mask[null_rows[name]] = True
        written[name] = np.ma.MaskedArray(col, mask=mask)
    # one string column given with None for null instead of a mask
    written["f_string"] = np.array([None if m else v for v, m in zip(cols["f_string"], written["f_string"].mask)], dtype=object)
    keys = [(I64.min,), (I64.max,), (0,), ("a:b}{c",), ("",), ("ünï 🙂",), ("*",)]
    ev = np.array([1, 2, 3, I64.max, I64.min, 0, -5], dtype=np.int64)
    cr = np.array([I64.max, I64.min, 0, 1, 2, 3, 4], dtype=np.int64)
    store.write(ALL, keys, written, ev, cr)

    r = one(store, ALL, keys, 10)
    assert r.status.tolist() == [Status.PRESENT] * 7
    assert r.event_ts.tolist() == ev.tolist() and r.created_ts.tolist() == cr.tolist()
    for name, col in cols.items():
        want_null = np.zeros(len(col), dtype=bool)
        want_null[null_rows[name]] = True
        assert r.nulls[name].tolist() == want_null.tolist(), name
        got = r.values[name]
        assert got.dtype == DTYPES[name[2:]], name
        keep = ~want_null
        if name == "f_string":
            assert got[keep].tolist() == col[keep].tolist()
            assert got[want_null].tolist() == [None]
        else:
            assert bits(got[keep]).tolist() == bits(col[keep]).tolist(), name  # bit-exact
    # ages at the int64 extremes saturate instead of wrapping
    assert r.age_ns[4] == I64.max and r.age_ns[3] == 10 - I64.max


def test_multi_component_keys_and_key_column_forms(store):
    v = view("pair", [("n", "int64")], entities=("user", "merchant"))
    store.write(v, {"user": np.array([1, 1, 2]), "merchant": np.array(["a", "b", "a"], dtype=object)},
                {"n": np.array([10, 11, 12])}, np.array([1, 1, 1]))  # fmt: skip
    r = one(store, v, [(1, "b"), (2, "a"), (1, "a"), ("1", "a"), (2, "b")], 5)
    assert r.status.tolist() == [Status.PRESENT] * 3 + [Status.NOT_FOUND] * 2  # int 1 != string "1"
    assert r.values["n"][:3].tolist() == [11, 12, 10]
    one_key = one(store, SIMPLE, np.array([5, 6]), 5)  # a numpy key column
    assert one_key.status.tolist() == [Status.NOT_FOUND] * 2


# ---------------------------------------------------------------- newer wins, atomically


def _row(x, tag="t"):
    return {"x": np.array([x]), "tag": np.array([tag], dtype=object)}


def test_older_event_does_not_overwrite_newer(store):
    store.write(SIMPLE, [7], _row(2), np.array([200]), np.array([0]))
    store.write(SIMPLE, [7], _row(1), np.array([100]), np.array([999]))  # older event, later created
    r = one(store, SIMPLE, [7], 1000)
    assert r.values["x"].tolist() == [2] and r.event_ts.tolist() == [200]
    store.write(SIMPLE, [7], _row(3), np.array([201]), np.array([0]))
    assert one(store, SIMPLE, [7], 1000).values["x"].tolist() == [3]
    # the comparison is int64-exact: across the 32-bit halves, the sign and the extremes
    pairs = [(-1, 0), (2**32 - 1, 2**32), (-(2**32), -1), (I64.min, I64.max), (I64.max - 1, I64.max),
             (1_700_000_000 * S, 1_700_000_000 * S + 1), (1_700_000_000 * S, 1_700_003_600 * S), (2**53, 2**53 + 1)]  # fmt: skip
    for field in ("event", "created"):
        for i, (old, new) in enumerate(pairs):
            for order, key in (((old, new), f"{field}-{i}-up"), ((new, old), f"{field}-{i}-down")):
                for ts in order:
                    ev, cr = (ts, 0) if field == "event" else (5, ts)
                    store.write(SIMPLE, [key], _row(1 if ts == new else 0), np.array([ev]), np.array([cr]))
                assert one(store, SIMPLE, [key], 0).values["x"].tolist() == [1], (field, old, new, order)


def test_same_event_time_the_later_created_wins(store):
    store.write(
        SIMPLE, [1, 2], {"x": np.array([1, 1]), "tag": np.array(["a", "a"], dtype=object)}, np.array([50, 50]), np.array([5, 5])
    )
    store.write(SIMPLE, [1], _row(2), np.array([50]), np.array([6]))  # later created: wins
    store.write(SIMPLE, [2], _row(2), np.array([50]), np.array([4]))  # earlier created: loses
    r = one(store, SIMPLE, [1, 2], 100)
    assert r.values["x"].tolist() == [2, 1] and r.created_ts.tolist() == [6, 5]


def raw_client(store: RedisOnlineStore):
    """A client of the store's Redis (or Redis Cluster) of its own, to look behind the store's back."""
    port = urlsplit(store.url).port
    if store.cluster:
        return redis.cluster.RedisCluster(host="127.0.0.1", port=port, socket_timeout=5)
    return redis.Redis(port=port, socket_timeout=5)


def _stored_bytes(store, v, key: int) -> bytes | None:
    """The raw stored blob, read behind the store's back."""
    if isinstance(store, RedisOnlineStore):
        with raw_client(store) as r:
            return r.get(store.key(v.name, f"i{key}"))
    return store._conn.execute("SELECT value FROM online_features WHERE view = ? AND entity = ?", (v.name, f"i{key}")).fetchone()[
        0
    ]


def test_rewriting_the_same_row_changes_nothing(store):
    row = {"x": np.array([1, 2]), "tag": np.array(["a", None], dtype=object)}
    store.write(SIMPLE, [1, 2], row, np.array([10, 10]), np.array([3, 3]))
    first = one(store, SIMPLE, [1, 2], 20)
    raw = [_stored_bytes(store, SIMPLE, k) for k in (1, 2)]
    store.write(SIMPLE, [1, 2], row, np.array([10, 10]), np.array([3, 3]))
    store.write(SIMPLE, [2, 1], {k: c[::-1] for k, c in row.items()}, np.array([10, 10]), np.array([3, 3]))
    assert [_stored_bytes(store, SIMPLE, k) for k in (1, 2)] == raw
    again = one(store, SIMPLE, [1, 2], 20)
    for name in ("x", "tag"):
        assert again.values[name].tolist() == first.values[name].tolist()
        assert again.nulls[name].tolist() == first.nulls[name].tolist()
    # a full tie (same event AND created time, other values) goes to the last write, like offline's
    # "last row in the source"; in one batch, duplicates of a key keep the greatest (event, created)
    store.write(SIMPLE, [1], _row(9), np.array([10]), np.array([3]))
    assert one(store, SIMPLE, [1], 20).values["x"].tolist() == [9]
    store.write(SIMPLE, [3, 3, 3, 3], {"x": np.array([1, 3, 2, 4]), "tag": np.array(["", "", "", ""], dtype=object)},
                np.array([1, 2, 2, 2]), np.array([0, 1, 0, 1]))  # fmt: skip
    assert one(store, SIMPLE, [3], 20).values["x"].tolist() == [4]


# ---------------------------------------------------------------- TTL, not found


def test_ttl_statuses_and_ages_with_an_explicit_now(store):
    v = view("ttl10", [("x", "int64")], ttl=10)
    forever = view("forever", [("x", "int64")], ttl=0)
    now = 1_700_000_000 * S + 500  # not on a microsecond: the rule works on floored microseconds
    T = 10 * S
    # exactly the TTL old is still PRESENT; so is T + 500 ns (the same microsecond as now - T); one ns
    # more is a microsecond older: EXPIRED; a future event (writer clock ahead) is PRESENT
    ages = [0, 5 * S, T, T + 500, T + 501, T + 1000, 3600 * S, -S]
    keys = list(range(len(ages)))
    ev = np.array([now - a for a in ages], dtype=np.int64)
    store.write(v, keys, {"x": np.arange(len(ages))}, ev)
    store.write(forever, [0], {"x": np.array([1])}, np.array([0]))
    r, f = store.read([(v, keys + [99]), (forever, [0])], now)
    P, E, N = Status.PRESENT, Status.EXPIRED, Status.NOT_FOUND
    assert r.status.tolist() == [P, P, P, P, E, E, E, P, N]
    assert r.age_ns.tolist() == ages + [-1]
    assert r.values["x"][[0, 1, 2, 3, 7]].tolist() == [0, 1, 2, 3, 7]
    assert r.nulls["x"].tolist() == [False] * 4 + [True] * 3 + [False, True]  # expired values are null
    assert f.status.tolist() == [P] and f.age_ns.tolist() == [now]
    # the rule itself, as the offline join applies it: fresh iff event_us >= now_us - ttl_us
    assert ttl_us(v) == 10_000_000
    assert is_expired(ev, now, ttl_us(v)).tolist() == [(now - a) // 1000 < now // 1000 - 10_000_000 for a in ages]
    # reading earlier: the same rows are within TTL
    assert one(store, v, [4, 6], now - 2 * S).status.tolist() == [P, E]


def test_not_found(store):
    store.write(SIMPLE, [1], _row(1), np.array([1]))
    other = view("never_written", [("y", "float64")])
    a, b = store.read([(SIMPLE, [2, "1", 1]), (other, [1])], 5)
    assert a.status.tolist() == [Status.NOT_FOUND, Status.NOT_FOUND, Status.PRESENT]
    assert a.nulls["x"].tolist() == [True, True, False] and a.values["tag"].tolist() == [None, None, "t"]
    assert b.status.tolist() == [Status.NOT_FOUND] and np.isnan(b.values["y"][0]) and b.nulls["y"].tolist() == [True]
    assert store.read([], 5) == []
    assert one(store, SIMPLE, [], 5).status.tolist() == []


def test_bad_input_is_rejected_with_a_message(store):
    with pytest.raises(InvalidInput, match="lacks feature"):
        store.write(SIMPLE, [1], {"x": np.array([1])}, np.array([1]))
    with pytest.raises(InvalidInput, match="int32"):
        store.write(view("i32", [("a", "int32")]), [1], {"a": np.array([1], dtype=np.int64)}, np.array([1]))
    with pytest.raises(InvalidInput, match="keys are int64 or string"):
        store.read([(SIMPLE, [1.5])], 0)
    with pytest.raises(InvalidInput, match="int64"):
        store.read([(SIMPLE, [2**63])], 0)


# ---------------------------------------------------------------- one round trip


def test_many_entities_of_several_views_in_one_round_trip(store, monkeypatch):
    views = [view(f"v{i}", [("x", "int64"), ("s", "string")]) for i in range(3)]
    n = 400
    for i, v in enumerate(views):
        keys = [k for k in range(n) if k % (i + 2)]  # each view holds a different subset
        store.write(v, keys, {"x": np.array(keys) * 10 + i, "s": np.array([f"{i}-{k}" for k in keys], dtype=object)},
                    np.full(len(keys), 5))  # fmt: skip
    store.read([(views[0], [0])], 10)  # connect outside the count
    if isinstance(store, RedisOnlineStore) and store.cluster:
        with count_cluster_round_trips(store) as wire:
            results = store.read([(v, list(range(n))) for v in views], 10)
        assert_one_round_trip_per_node(store, wire, [store.key(v.name, f"i{k}") for v in views for k in range(n)])
        check_many_views(results, n)
        return
    calls = {"send": 0, "recv": 0, "sql": []}
    if isinstance(store, RedisOnlineStore):
        conn_cls = store._client.connection_pool.connection_class
        send, recv = conn_cls.send_packed_command, conn_cls.read_response

        def counting_send(self, *a, **k):
            calls["send"] += 1
            return send(self, *a, **k)

        def counting_recv(self, *a, **k):
            calls["recv"] += 1
            return recv(self, *a, **k)

        monkeypatch.setattr(conn_cls, "send_packed_command", counting_send)
        monkeypatch.setattr(conn_cls, "read_response", counting_recv)
    else:
        store._conn.set_trace_callback(calls["sql"].append)
    results = store.read([(v, list(range(n))) for v in views], 10)
    if isinstance(store, RedisOnlineStore):
        assert calls["send"] == 1 and calls["recv"] == 1  # one MGET, one reply
    else:
        store._conn.set_trace_callback(None)
        selects = [q for q in calls["sql"] if q.lstrip().upper().startswith("SELECT")]
        assert len(selects) == len(views) and calls["sql"][0] == "BEGIN" and calls["sql"][-1] == "COMMIT"
    check_many_views(results, n)


def check_many_views(results, n: int) -> None:
    for i, r in enumerate(results):
        present = np.array([k % (i + 2) != 0 for k in range(n)])
        assert (r.status == Status.PRESENT).tolist() == present.tolist()
        assert r.values["x"][present].tolist() == [k * 10 + i for k in range(n) if present[k]]
        assert r.values["s"][present].tolist() == [f"{i}-{k}" for k in range(n) if present[k]]


# ---------------------------------------------------------------- Redis Cluster: round trips per node


def _commandstats(node: int | redis.Redis) -> dict[str, int]:
    """Commands executed by a node (a port, or a connected client: then the connection's own
    handshake is not in the difference of two snapshots)."""
    if isinstance(node, int):
        with redis.Redis(port=node, socket_timeout=5) as r:
            return _commandstats(r)
    return {name: int(v["calls"]) for name, v in node.info("commandstats").items()}


class count_cluster_round_trips:
    """Within the block: the packets the cluster client sends and the replies it reads, per node
    port (counted on the connection class), and each node's INFO commandstats before and after."""

    def __init__(self, store: RedisOnlineStore):
        self.store = store
        self.ports = sorted(n.port for n in store._client.get_primaries())
        self.sends: dict[int, int] = {}
        self.recvs: dict[int, int] = {}
        self._patch = pytest.MonkeyPatch()

    def __enter__(self):
        self.clients = {p: redis.Redis(port=p, socket_timeout=5) for p in self.ports}
        self.before = {p: _commandstats(c) for p, c in self.clients.items()}  # connected before the patch: not counted
        for cls in {n.redis_connection.connection_pool.connection_class for n in self.store._client.get_primaries()}:
            send, recv = cls.send_packed_command, cls.read_response

            def counting_send(conn, *a, _send=send, **k):
                self.sends[conn.port] = self.sends.get(conn.port, 0) + 1
                return _send(conn, *a, **k)

            def counting_recv(conn, *a, _recv=recv, **k):
                self.recvs[conn.port] = self.recvs.get(conn.port, 0) + 1
                return _recv(conn, *a, **k)

            self._patch.setattr(cls, "send_packed_command", counting_send)
            self._patch.setattr(cls, "read_response", counting_recv)
        return self

    def __exit__(self, *exc):
        self._patch.undo()
        after = {p: _commandstats(c) for p, c in self.clients.items()}
        for c in self.clients.values():
            c.close()
        self.delta = {}  # what each node executed in the block (the INFO of the first snapshot aside)
        for p in self.ports:
            diff = {c: n - self.before[p].get(c, 0) for c, n in after[p].items() if c != "cmdstat_info"}
            self.delta[p] = {c: d for c, d in diff.items() if d}


def assert_one_round_trip_per_node(store: RedisOnlineStore, wire: count_cluster_round_trips, keys: list[str]) -> None:
    """Every node that owns a slot of `keys` got exactly one packet (all its GETs pipelined) and
    executed exactly its keys' GETs, nothing else; the others got nothing."""
    owner = {n.port: 0 for n in store._client.get_primaries()}
    for k in keys:
        owner[store._client.get_node_from_key(k).port] += 1
    asked = {p: c for p, c in owner.items() if c}
    assert len(asked) == len(owner) == 3, f"the keys should spread over all 3 nodes: {owner}"
    assert wire.sends == {p: 1 for p in asked}, f"packets sent per node {wire.sends}; keys per node {owner}"
    assert wire.recvs == asked, f"replies read per node {wire.recvs}; keys per node {owner}"
    assert wire.delta == {p: {"cmdstat_get": c} for p, c in owner.items()}, wire.delta


# ---------------------------------------------------------------- concurrent writers


def _race(url: str, proc: int, seed: int, rounds: int, keys: list, barrier, spans) -> None:
    rng = random.Random(seed)
    with open_online_store(url) as s:
        s.read([(SIMPLE, [0])], 0)  # connected before the start line
        barrier.wait(15)
        spans[2 * proc - 2] = time.time()
        events = list(range(1, rounds + 1))
        rng.shuffle(events)
        for e in events:
            order = list(keys)
            rng.shuffle(order)
            s.write(SIMPLE, order, {"x": np.full(len(order), e * 10 + proc), "tag": np.array([f"p{proc}"] * len(order), dtype=object)},
                    np.full(len(order), e), np.full(len(order), proc))  # fmt: skip
        spans[2 * proc - 1] = time.time()


def test_two_processes_racing_on_the_same_keys_end_with_the_newest_event(store):
    keys = list(range(40))
    rounds = 150
    ctx = multiprocessing.get_context("spawn")
    barrier, spans = ctx.Barrier(2), ctx.Array("d", 4)
    procs = [ctx.Process(target=_race, args=(store.url, p, 100 + p, rounds, keys, barrier, spans)) for p in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(20)
    assert [p.exitcode for p in procs] == [0, 0]
    for p in procs:
        p.close()
    a0, a1, b0, b1 = spans[:]
    assert a0 < b1 and b0 < a1, "the writers did not overlap in time"
    r = one(store, SIMPLE, keys, rounds + 1)
    # the newest event, and at that equal event time the later created (process 2)
    assert r.event_ts.tolist() == [rounds] * len(keys) and r.created_ts.tolist() == [2] * len(keys)
    assert r.values["x"].tolist() == [rounds * 10 + 2] * len(keys) and set(r.values["tag"]) == {"p2"}


# ---------------------------------------------------------------- urls, Redis specifics and failures


def test_open_online_store_urls(tmp_path, monkeypatch):
    with open_online_store(f"sqlite://{tmp_path}/a/b.db") as s:
        assert s.url == f"sqlite://{tmp_path}/a/b.db" and (tmp_path / "a" / "b.db").exists()
    monkeypatch.chdir(tmp_path)
    with open_online_store("sqlite://rel.db") as s:
        assert (tmp_path / "rel.db").exists()
    monkeypatch.setenv("PARITY_ONLINE_STORE_PATH", str(tmp_path / "default.db"))
    with open_online_store("sqlite://") as s, open_online_store(None) as d:
        assert s.path == d.path == str(tmp_path / "default.db")
    with open_online_store("redis://h:7000/3?prefix=p1&timeout=0.25") as r:
        assert (r.prefix, r.timeout, r.cluster, r.url) == ("p1", 0.25, False, "redis://h:7000/3?prefix=p1&timeout=0.25")
    with pytest.raises(InvalidInput, match="unknown scheme"):
        open_online_store("mysql://x")
    with pytest.raises(InvalidInput, match="unknown option"):
        open_online_store("redis://h?prefx=p")
    (tmp_path / "file").write_text("")
    with pytest.raises(Unavailable, match="could not be opened"):
        open_online_store(f"sqlite://{tmp_path}/file/x.db")


def test_redis_key_layout_keeps_names_inside_their_hash_tag():
    prefix = f"paritytest_{uuid.uuid4().hex[:12]}"
    with RedisOnlineStore(prefix=prefix) as s:
        try:
            s.write(
                SIMPLE, [("a}b:{c",), (42,)], {"x": np.array([1, 2]), "tag": np.array(["", ""], dtype=object)}, np.array([1, 1])
            )
            with redis.Redis() as r:
                keys = sorted(k.decode() for k in r.scan_iter(match=f"{prefix}:*"))
            assert keys == [f"{prefix}:{{i42}}:simple", f"{prefix}:{{sa%7Db%3A%7Bc}}:simple"]
        finally:
            _cleanup_prefix(prefix)
    for bad in ("a:b", "{x}", "", "a b"):
        with pytest.raises(InvalidInput, match="prefix"):
            RedisOnlineStore(prefix=bad)


def test_redis_down_raises_unavailable_within_the_timeout():
    port = free_port()  # closed: nothing listens
    with open_online_store(f"redis://127.0.0.1:{port}/0?prefix=x&timeout=0.5") as s:
        for call in (lambda: s.read([(SIMPLE, [1])], 0), lambda: s.write(SIMPLE, [1], _row(1), np.array([1]))):
            t0 = time.monotonic()
            with pytest.raises(Unavailable, match="start Redis or fix the online store url"):
                call()
            assert time.monotonic() - t0 < 3


def test_redis_that_accepts_but_never_answers_times_out():
    with socket.socket() as srv:  # accepts connections (kernel backlog), never replies
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        with RedisOnlineStore(port=srv.getsockname()[1], prefix="x", timeout=0.5) as s:
            t0 = time.monotonic()
            with pytest.raises(Unavailable, match="Timeout"):
                s.read([(SIMPLE, [1])], 0)
            assert time.monotonic() - t0 < 3


def test_redis_restart_fails_fast_then_reconnects_by_itself():
    with RedisServer() as server, RedisOnlineStore(port=server.port, prefix="restart", timeout=0.5) as s:
        s.write(SIMPLE, [1], _row(1), np.array([1]))
        assert one(s, SIMPLE, [1], 2).status.tolist() == [Status.PRESENT]
        server.kill()
        t0 = time.monotonic()
        with pytest.raises(Unavailable):
            one(s, SIMPLE, [1], 2)
        assert time.monotonic() - t0 < 3
        server.start()  # the same port, empty
        # the same store object: reads again (the server kept nothing), and writes again (script reloaded)
        assert one(s, SIMPLE, [1], 2).status.tolist() == [Status.NOT_FOUND]
        s.write(SIMPLE, [1], _row(5), np.array([1]))
        assert one(s, SIMPLE, [1], 2).values["x"].tolist() == [5]


# ---------------------------------------------------------------- Redis Cluster specifics


def test_cluster_read_of_many_entities_across_slots_and_nodes(redis_cluster):
    """Thousands of entities of two-component keys, over thousands of slots on all three nodes:
    written one EVALSHA per slot (each node runs exactly its slots' scripts), read back in one call
    with every value in its place, each entity's views in one slot (the hash tag)."""
    pair = view("pair", [("n", "int64"), ("s", "string")], entities=("user", "merchant"))
    other = view("other", [("f", "float64")], entities=("user", "merchant"))
    n = 3000
    keys = [(k, f"m-{k % 97}:{{x}}") for k in range(n)]  # braces and ':' in a key component stay inside the hash tag
    with open_online_store(redis_cluster.url(prefix=f"paritytest_{uuid.uuid4().hex[:12]}", timeout=2)) as s:
        s.read([(pair, [keys[0]])], 0)  # connect, slot map read, outside the count
        ids = [s.key("pair", e) for e in entity_ids(keys)]
        slots = {s._client.keyslot(k) for k in ids}
        owners = {s._client.get_node_from_key(k).port for k in ids}
        assert len(slots) > 2000 and owners == set(redis_cluster.ports)
        before = {p: _commandstats(p).get("cmdstat_evalsha", 0) for p in redis_cluster.ports}
        s.write(pair, keys, {"n": np.arange(n) * 3, "s": np.array([f"v{k}" for k in range(n)], dtype=object)}, np.full(n, 5))
        per_node = {p: 0 for p in redis_cluster.ports}
        owners = redis_cluster.slot_owners()
        for slot in slots:
            per_node[owners[slot]] += 1
        assert {p: _commandstats(p).get("cmdstat_evalsha", 0) - before[p] for p in redis_cluster.ports} == per_node
        half = keys[::2]
        s.write(other, half, {"f": np.arange(len(half)) / 4}, np.full(len(half), 5))
        for e, k in zip(ids[:50], keys[:50]):  # both views of an entity share its slot
            assert s._client.keyslot(e) == s._client.keyslot(e.replace(":pair", ":other"))
        asked = keys[::-1] + [(n + 1, "m-0"), ("no", "such")][:1]
        a, b = s.read([(pair, asked), (other, asked)], 10)
        assert a.status.tolist() == [Status.PRESENT] * n + [Status.NOT_FOUND]
        assert a.values["n"][:n].tolist() == [k * 3 for k in range(n)][::-1]
        assert a.values["s"][:n].tolist() == [f"v{k}" for k in range(n)][::-1] and a.values["s"][n] is None
        present = [k % 2 == 0 for k in range(n)][::-1] + [False]
        assert (b.status == Status.PRESENT).tolist() == present
        assert b.values["f"][np.array(present)].tolist() == [i / 4 for i in range(len(half))][::-1]


def test_cluster_seed_node_down_is_unavailable_when_opened():
    t0 = time.monotonic()
    with pytest.raises(Unavailable, match="start the cluster or fix the url"):
        open_online_store(f"redis://127.0.0.1:{free_port()}/0?prefix=x&timeout=0.5&cluster=true")
    assert time.monotonic() - t0 < 5
    with pytest.raises(InvalidInput, match="db 0"):
        open_online_store("redis://127.0.0.1:1/2?prefix=x&cluster=true")


def test_cluster_reads_follow_a_slot_moved_under_them(redis_cluster, monkeypatch):
    """A slot migrated to another node after the store read the slot map: the next read gets
    MOVED, follows it (values intact) and refreshes the map; the read after is one round trip per
    node again."""
    with open_online_store(redis_cluster.url(prefix=f"paritytest_{uuid.uuid4().hex[:12]}", timeout=2)) as s:
        keys = list(range(300))
        s.write(SIMPLE, keys, {"x": np.array(keys) * 7, "tag": np.array([f"k{k}" for k in keys], dtype=object)}, np.full(300, 1))
        assert one(s, SIMPLE, keys, 2).values["x"].tolist() == [k * 7 for k in keys]
        moved_key = s.key("simple", "i5")
        slot = s._client.keyslot(moved_key)
        old_owner = redis_cluster.node_of_slot(slot)
        redis_cluster.move_slot(slot, next(p for p in redis_cluster.ports if p != old_owner))
        with count_cluster_round_trips(s) as wire:
            r = one(s, SIMPLE, keys, 2)
        assert r.status.tolist() == [Status.PRESENT] * 300 and r.values["x"].tolist() == [k * 7 for k in keys]
        assert r.values["tag"].tolist() == [f"k{k}" for k in keys]
        assert sum(wire.delta[old_owner].values()) > 0 and "cmdstat_get" in wire.delta[redis_cluster.node_of_slot(slot)]
        assert s._client.get_node_from_key(moved_key).port == redis_cluster.node_of_slot(slot)  # the map was refreshed
        with count_cluster_round_trips(s) as wire:
            again = one(s, SIMPLE, keys, 2)
        assert_one_round_trip_per_node(s, wire, [s.key("simple", f"i{k}") for k in keys])
        assert again.values["x"].tolist() == r.values["x"].tolist()
        # writes to the moved slot land on its new node (EVALSHA follows MOVED), and win as before
        s.write(SIMPLE, [5], _row(99), np.array([2]))
        assert one(s, SIMPLE, [5], 3).values["x"].tolist() == [99]
        with redis_cluster.client(redis_cluster.node_of_slot(slot)) as r:
            assert r.exists(moved_key) == 1


def test_cluster_node_frozen_or_killed_raises_unavailable_within_the_timeout():
    """A master of a 3-node cluster that stops answering (SIGSTOP: connections accepted, no
    replies), then one killed: reads and writes that touch its slots raise Unavailable after
    about the timeout -- one timeout per call, not one per key (redis-py's per-command resend
    made a 600-key read wait 100 s) -- and the store serves again once the node is back."""
    with RedisCluster(masters=3) as cluster, open_online_store(cluster.url(prefix="faults", timeout=0.5)) as s:
        keys = list(range(600))

        def write(x):
            cols = {"x": np.full(len(keys), x), "tag": np.array(["t"] * len(keys), dtype=object)}
            s.write(SIMPLE, keys, cols, np.full(len(keys), x))

        write(1)
        assert (one(s, SIMPLE, keys, 2).status == Status.PRESENT).all()
        calls = (
            ("read", lambda: one(s, SIMPLE, keys, 2)),
            ("write", lambda: write(2)),
            ("read again", lambda: one(s, SIMPLE, keys, 2)),
        )
        cluster.freeze_node(2)
        try:
            for what, call in calls:
                t0 = time.monotonic()
                with pytest.raises(Unavailable, match="Timeout"):
                    call()
                assert time.monotonic() - t0 < 5, f"{what} with a frozen node took {time.monotonic() - t0:.1f}s"
        finally:
            cluster.thaw_node(2)
        cluster.wait_ok()
        back = one(s, SIMPLE, keys, 2)  # back by itself; the failed write reached the slots before the frozen node's
        assert (back.status == Status.PRESENT).all() and set(back.values["x"].tolist()) <= {1, 2}
        write(3)
        assert one(s, SIMPLE, keys, 4).values["x"].tolist() == [3] * len(keys)
        cluster.kill_node(1)
        for what, call in calls:
            t0 = time.monotonic()
            with pytest.raises(Unavailable, match="unavailable"):
                call()
            assert time.monotonic() - t0 < 5, f"{what} with a killed node took {time.monotonic() - t0:.1f}s"
        # the node back (its slots, none of its data, an empty script cache): the same store reads
        # and writes again by itself -- the write reloads the script (NOSCRIPT) and resends
        cluster.restart_node(1)
        lost = {s._client.get_node_from_key(s.key("simple", f"i{k}")).port == cluster.ports[1] for k in keys}
        assert lost == {True, False}
        deadline = time.monotonic() + 10
        while True:
            try:
                back = one(s, SIMPLE, keys, 4)
                break
            except Unavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        on_restarted = np.array([s._client.get_node_from_key(s.key("simple", f"i{k}")).port == cluster.ports[1] for k in keys])
        assert (back.status[on_restarted] == Status.NOT_FOUND).all() and (back.status[~on_restarted] == Status.PRESENT).all()
        write(5)
        assert one(s, SIMPLE, keys, 6).values["x"].tolist() == [5] * len(keys)
