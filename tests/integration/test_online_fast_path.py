"""`FeatureServer.get_online_features` on both backends (SQLite in tmp_path, the real Redis at
127.0.0.1:6379 under a random key prefix): the fast paths (every entity found, nothing null: no
mask work; one entity; whole-view blocks) give exactly what the general paths give (entities
missing, expired, with nulls, in one call; many entities), and both give what was written --
bit for bit, with the same nulls, statuses and ages."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import redis

from parity.features.definitions import (
    Entity,
    FeatureRepository,
    FeatureService,
    FeatureView,
    Field,
    FileSource,
    OnDemandFeatureView,
    RequestSource,
)
from parity.features.online import Status, open_online_store
from parity.features.retrieval import FeatureServer

S = 1_000_000_000
NOW = 1_750_000_000 * S + 777
N = 40
WIDE = 50
P, E, NF = Status.PRESENT, Status.EXPIRED, Status.NOT_FOUND


def _ratio(cols):
    return {"y": cols["acct__f"] * cols["req__amount"]}


def make_repo() -> FeatureRepository:
    src = FileSource("unused.parquet")
    user = Entity("user", [Field("user_id", "int64")])
    acct = FeatureView(
        "acct", ["user"], src,
        [Field("x", "int64"), Field("s", "string"), Field("f", "float64"), Field("b", "bool"), Field("i", "int32")],
        ttl_seconds=10,
    )  # fmt: skip
    wide = FeatureView("wide", ["user"], src, [Field(f"f{i}", "float32") for i in range(WIDE)])
    req = RequestSource("req", [Field("amount", "float64")])
    odv = OnDemandFeatureView("odv", ["acct", "req"], [Field("y", "float64")], _ratio)
    return FeatureRepository(
        [
            user, acct, wide, req, odv,
            FeatureService("everything", ["acct:*", "wide:*", "odv:*"]),
            FeatureService("interleaved", ["wide:f3", "acct:x", "wide:f1", "odv:y", "acct:s"]),
            FeatureService("wide_only", ["wide:*"]),
            FeatureService("subset", ["wide:f10", "wide:f2"]),
        ]
    )  # fmt: skip


def expected_state():
    """What is written, per entity: acct for keys not divisible by 5 (keys = 3 mod 7 an hour old:
    expired), wide for every key but 7 and 13."""
    rng = np.random.default_rng(11)
    acct_keys = np.array([k for k in range(N) if k % 5], dtype=np.int64)
    x = np.ma.MaskedArray(rng.integers(-(2**62), 2**62, len(acct_keys)), mask=acct_keys % 4 == 1)
    s = np.array([None if k % 6 == 2 else f"ü-{k}" for k in acct_keys], dtype=object)
    f = rng.standard_normal(len(acct_keys))
    f[::7] = -0.0
    b = rng.integers(0, 2, len(acct_keys)).astype(bool)
    i = rng.integers(-(2**31), 2**31 - 1, len(acct_keys)).astype(np.int32)
    acct_ev = np.where(acct_keys % 7 == 3, NOW - 3600 * S, NOW - S - acct_keys)
    wide_keys = np.array([k for k in range(N) if k not in (7, 13)], dtype=np.int64)
    wide = {}
    for j in range(WIDE):
        col = rng.standard_normal(len(wide_keys)).astype(np.float32)
        col[j % len(wide_keys)] = np.float32(np.nan) if j % 2 else np.float32(-0.0)
        wide[f"f{j}"] = np.ma.MaskedArray(col, mask=(wide_keys == 11) & (j == 0))
    wide_ev = NOW - 5 * S - wide_keys * 1000
    return {
        "acct": (acct_keys, {"x": x, "s": s, "f": f, "b": b, "i": i}, acct_ev),
        "wide": (wide_keys, wide, wide_ev),
    }


@pytest.fixture(params=["sqlite", "redis"])
def server(request, tmp_path):
    repo = make_repo()
    if request.param == "sqlite":
        store = open_online_store(f"sqlite://{tmp_path / 'online.db'}")
    else:
        prefix = f"paritytest_{uuid.uuid4().hex[:12]}"
        store = open_online_store(f"redis://127.0.0.1:6379/0?prefix={prefix}&timeout=2")
    for name, (keys, cols, ev) in expected_state().items():
        store.write(repo.views[name], keys, cols, ev, ev + 1)
    try:
        yield FeatureServer(repo, store)
    finally:
        store.close()
        if request.param == "redis":
            with redis.Redis() as r:
                keys = list(r.scan_iter(match=f"{prefix}:*", count=1000))
                if keys:
                    r.delete(*keys)


def amounts(keys) -> np.ndarray:
    return np.asarray(keys, dtype=np.float64) * 0.5 - 3.0


def get(server, service, keys):
    keys = np.asarray(keys, dtype=np.int64)
    got = server.get_online_features(service, {"user_id": keys}, {"amount": amounts(keys)}, now_ns=NOW)
    # `clean` (feature-joined inference skips its null checks on it) is never said of a result
    # with a null (it may be withheld: a null in a feature of the view that was not asked for)
    assert not (got.clean and any(got.nulls[n].any() for n in got.names)), (service, keys)
    return got


def assert_same_rows(a, rows_a, b, rows_b):
    """Rows `rows_a` of result a and rows `rows_b` of result b are identical, bit for bit."""
    assert a.names == b.names
    for name in a.names:
        va, vb = a.values[name], b.values[name]
        assert va.dtype == vb.dtype, name
        if va.dtype == object:
            assert va[rows_a].tolist() == vb[rows_b].tolist(), name
        else:
            assert va[rows_a].tobytes() == vb[rows_b].tobytes(), name
        for d in ("nulls", "status", "age_ns"):
            x, y = getattr(a, d)[name], getattr(b, d)[name]
            assert x.dtype == y.dtype and x[rows_a].tolist() == y[rows_b].tolist(), (d, name)


SERVICES = ["everything", "interleaved", "wide_only", "subset"]


@pytest.mark.parametrize("service", SERVICES)
def test_one_call_for_many_entities_equals_one_entity_at_a_time(server, service):
    keys = list(range(N)) + [N + 5, 3, 0]  # some never written, some twice
    batch = get(server, service, keys)
    assert batch.rows == len(keys)
    for j, k in enumerate(keys):
        assert_same_rows(batch, [j], get(server, service, [k]), [0])


@pytest.mark.parametrize("service", SERVICES)
def test_all_present_call_equals_the_same_rows_of_a_mixed_call(server, service):
    """Entities found and fresh everywhere, without nulls: the fast path (no masks); the same
    entities among missing, expired and null ones: the general path."""
    clean = [k for k in range(N) if k % 5 and k % 7 != 3 and k not in (7, 13, 11) and k % 4 != 1 and k % 6 != 2]
    assert len(clean) > 5
    fast = get(server, service, clean)
    assert fast.clean  # nothing null in any view read: said, so the joined path takes its shortcut
    for name in fast.names:
        assert not fast.nulls[name].any() and (fast.status[name] == P).all()
    mixed_keys = list(range(N))
    mixed = get(server, service, mixed_keys)
    assert_same_rows(fast, list(range(len(clean))), mixed, [mixed_keys.index(k) for k in clean])
    # the no-null columns of the fast path are shared and read-only, the others are their own
    col = fast.nulls[fast.names[0]]
    with pytest.raises(ValueError):
        col[0] = True


def test_values_statuses_and_ages_are_what_was_written(server):
    state = expected_state()
    keys = list(range(N)) + [N + 1]
    got = get(server, "everything", keys)
    assert got.names == [f"acct__{c}" for c in "xsfbi"] + [f"wide__f{j}" for j in range(WIDE)] + ["odv__y"]
    assert list(got.values) == got.names and list(got.nulls) == got.names  # dicts in the requested order
    for view in ("acct", "wide"):
        wkeys, cols, ev = state[view]
        where = {int(k): j for j, k in enumerate(wkeys)}
        for row, k in enumerate(keys):
            j = where.get(k)
            expired = view == "acct" and j is not None and k % 7 == 3
            status = NF if j is None else (E if expired else P)
            for fname, col in cols.items():
                name = f"{view}__{fname}"
                assert got.status[name][row] == status, (name, k)
                assert got.age_ns[name][row] == (-1 if j is None else NOW - ev[j]), (name, k)
                written_null = j is not None and (
                    col[j] is None if col.dtype == object else bool(np.ma.getmaskarray(col)[j])
                )
                null = status != P or written_null
                assert bool(got.nulls[name][row]) is null, (name, k)
                value = got.values[name][row]
                if null:
                    if col.dtype == object:
                        assert value is None
                    elif col.dtype.kind == "f":
                        assert np.isnan(value)
                    else:
                        assert value == 0
                elif col.dtype == object:
                    assert value == col[j]
                else:
                    assert np.asarray(value).tobytes() == np.asarray(np.ma.getdata(col)[j]).tobytes(), (name, k)
    # on-demand: null where an input (any feature of acct) is null or not fresh, else acct.f * amount
    y = got.values["odv__y"]
    incomplete = np.any([got.nulls[f"acct__{c}"] for c in "xsfbi"], axis=0)
    assert got.nulls["odv__y"].tolist() == incomplete.tolist() and incomplete.any() and not incomplete.all()
    ok = ~incomplete
    assert y[ok].tobytes() == (got.values["acct__f"][ok] * amounts(keys)[ok]).tobytes()
    assert (got.status["odv__y"] == got.status["acct__f"]).all()


def test_column_forms_and_repeated_reads_agree(server):
    """Lists, int32 arrays and int64 arrays of keys read the same; reading twice gives equal,
    independent results (a caller modifying one result does not change the next)."""
    keys = [1, 2, 3, 4, 6]
    a = server.get_online_features("everything", {"user_id": keys}, {"amount": list(amounts(keys))}, now_ns=NOW)
    b = server.get_online_features(
        "everything", {"user_id": np.array(keys, dtype=np.int32)}, {"amount": amounts(keys)}, now_ns=NOW
    )
    c = get(server, "everything", keys)
    rows = list(range(len(keys)))
    assert_same_rows(a, rows, b, rows)
    assert_same_rows(a, rows, c, rows)
    c.values["wide__f0"][:] = 123.0
    c.status["wide__f0"][:] = 9
    assert_same_rows(a, rows, get(server, "everything", keys), rows)


def test_concurrent_reads_from_many_threads_each_get_their_own_answer(server):
    """Threads (the HTTP/gRPC servers read on worker threads) share the store: each read gets the
    reply to its own command, whichever connection it runs on."""
    import random
    import threading

    want = {k: get(server, "everything", [k]) for k in range(N)}
    errors: list = []

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(60):
                keys = rng.sample(range(N), rng.choice([1, 2, 7]))
                got = get(server, "everything", keys)
                for j, k in enumerate(keys):
                    assert_same_rows(got, [j], want[k], [0])
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[0]


def _redis_server(port: int, workdir):
    import subprocess
    import time

    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir),
         "--enable-debug-command", "local"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        try:
            with redis.Redis(port=port, socket_connect_timeout=0.2, socket_timeout=0.2) as r:
                if r.ping():
                    return proc
        except redis.RedisError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"redis-server did not start on port {port}")
        time.sleep(0.05)


@pytest.mark.parametrize("retries", [0, 1])
def test_a_kept_connection_that_went_stale_is_retried_or_fails_then_recovers(tmp_path, retries):
    """Reads keep their connection between calls; when the server restarts behind it, the next
    read retries on a new connection (`retries=1`) or raises Unavailable once (`retries=0`), and
    the read after that works either way."""
    import socket

    from parity.errors import Unavailable
    from parity.features.online.redis_store import RedisOnlineStore

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    repo = make_repo()
    wide = repo.views["wide"]
    cols = {f"f{j}": np.array([j], dtype=np.float32) for j in range(WIDE)}
    proc = _redis_server(port, tmp_path)
    try:
        with RedisOnlineStore(port=port, prefix="stale", timeout=0.5, retries=retries) as store:
            store.write(wide, [1], cols, np.array([5]))
            assert store.read([(wide, [1])], 10)[0].status.tolist() == [P]
            proc.kill()
            proc.wait()
            proc = _redis_server(port, tmp_path)  # empty: nothing stored any more
            if retries:
                assert store.read([(wide, [1])], 10)[0].status.tolist() == [NF]
            else:
                with pytest.raises(Unavailable):
                    store.read([(wide, [1])], 10)
            store.write(wide, [1], cols, np.array([5]))
            r = store.read([(wide, [1])], 10)[0]
            assert r.status.tolist() == [P] and r.values["f3"].tolist() == [3.0]
    finally:
        proc.kill()
        proc.wait()


def test_a_server_that_stops_answering_a_kept_connection_times_out_within_the_timeout(tmp_path):
    """The kept connection's timeout (in the kernel on Linux) bounds a read that gets no answer:
    Unavailable naming the timeout after about `timeout`, and the next read works again."""
    import socket
    import threading
    import time

    from parity.errors import Unavailable
    from parity.features.online.redis_store import RedisOnlineStore

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    wide = make_repo().views["wide"]
    cols = {f"f{j}": np.array([j], dtype=np.float32) for j in range(WIDE)}
    proc = _redis_server(port, tmp_path)
    try:
        with RedisOnlineStore(port=port, prefix="slow", timeout=0.3) as store:
            store.write(wide, [1], cols, np.array([5]))
            assert store.read([(wide, [1])], 10)[0].status.tolist() == [P]  # the connection is made and kept
            with redis.Redis(port=port) as admin:
                blocker = threading.Thread(target=admin.execute_command, args=("DEBUG", "SLEEP", "1.5"))
                blocker.start()
                time.sleep(0.1)
                t0 = time.monotonic()
                with pytest.raises(Unavailable, match="Timeout"):
                    store.read([(wide, [1])], 10)
                assert 0.25 < time.monotonic() - t0 < 1.2
                blocker.join(5)
            r = store.read([(wide, [1])], 10)[0]
            assert r.status.tolist() == [P] and r.values["f7"].tolist() == [7.0]
    finally:
        proc.kill()
        proc.wait()


def test_a_forked_child_does_not_read_on_its_parents_kept_connection():
    """A child made by fork gets connections of its own; the parent's keep working."""
    import multiprocessing

    from parity.features.online.redis_store import RedisOnlineStore

    prefix = f"paritytest_{uuid.uuid4().hex[:12]}"
    wide = make_repo().views["wide"]
    cols = {f"f{j}": np.array([j, -j], dtype=np.float32) for j in range(WIDE)}
    try:
        with RedisOnlineStore(prefix=prefix, timeout=2) as store:
            store.write(wide, [1, 2], cols, np.array([5, 5]))
            assert store.read([(wide, [1])], 10)[0].values["f3"].tolist() == [3.0]
            parent_conn = store._idle[-1]
            ctx = multiprocessing.get_context("fork")
            out = ctx.Queue()

            def child():
                r = store.read([(wide, [2])], 10)[0]
                out.put((r.values["f3"].tolist(), all(c is not parent_conn for c in store._idle)))

            p = ctx.Process(target=child)
            p.start()
            got = out.get(timeout=20)
            p.join(20)
            assert p.exitcode == 0 and got == ([-3.0], True)
            assert store.read([(wide, [1, 2])], 10)[0].values["f3"].tolist() == [3.0, -3.0]
            assert store._idle[-1] is parent_conn
    finally:
        with redis.Redis() as r:
            keys = list(r.scan_iter(match=f"{prefix}:*"))
            if keys:
                r.delete(*keys)


@pytest.mark.parametrize("service", SERVICES)
def test_a_store_that_returns_plain_dicts_reads_the_same(server, service):
    """`FeatureServer` takes the decoded blocks when a store gives them (`ViewResult.columns`), and
    the per-feature dicts otherwise: both give the same result."""
    from parity.features.online.base import ViewResult

    keys = list(range(N)) + [N + 3]
    with_blocks = get(server, service, keys)
    real = server.store.read

    def plain(requests, now_ns):
        return [
            ViewResult(r.view, dict(r.values), dict(r.nulls), r.status, r.age_ns, r.event_ts, r.created_ts)
            for r in real(requests, now_ns)
        ]

    server.store.read = plain
    try:
        without = get(server, service, keys)
    finally:
        del server.store.read
    rows = list(range(len(keys)))
    assert_same_rows(with_blocks, rows, without, rows)


def test_reads_from_an_event_loop_equal_the_blocking_reads_on_both_backends(tmp_path):
    """`read_async` (Redis: the event loop's own connection; SQLite: a worker thread) and, on
    Redis, the callback read of the request path (`read_start`) give the same results as `read`,
    for one entity and many, found and not."""
    import asyncio
    import uuid

    from parity.features.definitions import FeatureView, Field, FileSource
    from parity.features.online import open_online_store

    view = FeatureView("aio", ("u",), FileSource("unused.parquet"), schema=(Field("a", "float32"), Field("b", "int64")), ttl_seconds=0)
    urls = [f"sqlite:///{tmp_path / 'aio.db'}", f"redis://127.0.0.1:6379/0?prefix=paritytest_aio_{uuid.uuid4().hex[:8]}"]
    for url in urls:
        with open_online_store(url) as store:
            keys = np.arange(50, dtype=np.int64)
            store.write(view, keys, {"a": keys.astype(np.float32) / 3, "b": keys * 7}, np.full(50, 10**18, dtype=np.int64))
            asks = [np.array([3]), np.arange(0, 80, 3)]

            async def started(k):
                """The callback read (`read_start`: the request path's), where the store has one."""
                start = getattr(store, "read_start", None)
                if start is None:
                    return None
                fut = asyncio.get_running_loop().create_future()

                def done(result, error):
                    fut.set_exception(error) if error is not None else fut.set_result(result)

                if not start([(view, k)], 2 * 10**18, done):
                    return None
                return await fut

            async def run():
                try:
                    first = [await store.read_async([(view, k)], 2 * 10**18) for k in asks]  # connects
                    return first, [await started(k) for k in asks]
                finally:
                    await store.close_async()

            got, by_callback = asyncio.run(run())
            if url.startswith("redis"):
                assert all(r is not None for r in by_callback)  # once connected, Redis takes the callback path
                got += by_callback
            for k, (async_result,) in zip(asks + asks, got):
                (sync_result,) = store.read([(view, k)], 2 * 10**18)
                assert async_result.status.tolist() == sync_result.status.tolist()
                assert async_result.age_ns.tolist() == sync_result.age_ns.tolist()
                for f in ("a", "b"):
                    assert async_result.values[f].tobytes() == sync_result.values[f].tobytes()
                    assert async_result.nulls[f].tolist() == sync_result.nulls[f].tolist()
            if url.startswith("redis"):
                import redis

                with redis.Redis() as r:
                    for key in r.scan_iter(match=url.split("prefix=")[1] + ":*"):
                        r.delete(key)


def test_the_request_paths_blob_reader_sends_give_the_stored_blobs_and_follow_the_loops_connection():
    """`BlobReader` (the direct copy's read): `send_ints` (views keyed by one INT64 key, one row
    from a template) and `send` (encoded ids) return per view exactly the blobs a blocking read
    returns, for one entity and many, found and not; neither sends before the loop has a
    connection, nor after the loop's connection was closed, until a read connects again."""
    import asyncio
    import uuid

    from parity.features.definitions import FeatureView, Field, FileSource
    from parity.features.online import open_online_store
    from parity.features.online.base import entity_ids

    prefix = f"paritytest_blobs_{uuid.uuid4().hex[:8]}"
    views = [
        FeatureView(name, ("u",), FileSource("unused.parquet"), schema=(Field("a", "float32"),), ttl_seconds=0)
        for name in ("first", "second")
    ]
    with open_online_store(f"redis://127.0.0.1:6379/0?prefix={prefix}") as store:
        try:
            keys = np.arange(-5, 20, dtype=np.int64)
            for j, view in enumerate(views):
                some = keys[j::2]  # each view holds other entities
                store.write(view, some, {"a": some.astype(np.float32) + j}, np.full(len(some), 10**18, dtype=np.int64))
            reader = store.blob_reader(views)
            asks = [[3], [4], [-5], [999], [-(2**63)], list(range(-7, 25, 2)), list(range(-5, 20))]

            async def read(send, arg):
                fut = asyncio.get_running_loop().create_future()
                ok = send(asyncio.get_running_loop(), arg, lambda blobs, error: fut.set_result((blobs, error)))
                return (await fut) if ok else None

            async def run():
                loop_reads = []
                assert await read(reader.send_ints, [1]) is None  # no connection on this loop yet
                await store.read_async([(views[0], np.array([1]))], 2 * 10**18)  # connects
                for ints in asks:
                    by_ints = await read(reader.send_ints, ints)
                    by_ids = await read(reader.send, [entity_ids(ints)] * len(views))
                    loop_reads.append((ints, by_ints, by_ids))
                await store.close_async()
                assert await read(reader.send_ints, [1]) is None  # the closed connection is not used
                await store.read_async([(views[0], np.array([1]))], 2 * 10**18)
                assert await read(reader.send_ints, [1]) is not None  # nor is the new one missed
                await store.close_async()
                return loop_reads

            for ints, by_ints, by_ids in asyncio.run(run()):
                want = store._read([(v.name, entity_ids(ints)) for v in views])
                assert by_ints == (want, None) and by_ids == (want, None), ints
                assert [b is not None for b in want[0]] == [-5 <= i < 20 and (i + 5) % 2 == 0 for i in ints]
        finally:
            import redis

            with redis.Redis() as r:
                for key in r.scan_iter(match=f"{prefix}:*"):
                    r.delete(key)
