"""Push (`parity.features.push`) in process, on real Parquet files, DuckDB, the real SQLite store
and the real Redis at 127.0.0.1:6379: pushed rows are served online with the transform applied,
a training set built afterwards returns the same bits, older events do not overwrite newer ones,
materialization reproduces the pushes, retries and ties behave as documented, and bad rows are
refused with the view and the column named, leaving the log untouched."""

from __future__ import annotations

import os
import threading
import uuid
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from parity.errors import ConfigError, InvalidInput
from parity.features.definitions import (
    Entity,
    FeatureRepository,
    FeatureView,
    Field,
    FileSource,
    OnDemandFeatureView,
    RequestSource,
)
from parity.features.materialize import Watermarks, materialize
from parity.features.offline import get_historical_features, push_log_files
from parity.features.online import open_online_store
from parity.features.push import push
from parity.features.retrieval import FeatureServer
from parity.kernels import log1p, stable_hash

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
TS = pa.timestamp("us", tz="UTC")
SPEND = ["spend:log_amount", "spend:visits2", "spend:country_bucket", "spend:big"]
PLAIN = ["plain:score", "plain:tag"]


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def _spend(cols):
    amount = cols["amount"]
    return {
        "log_amount": log1p(amount).astype(np.float32),
        "visits2": cols["visits"] * 2,  # int64: declared input, the source holds int32
        "country_bucket": stable_hash(np.asarray(cols["country"], dtype=object), 16),
        "big": amount > 100.0,
    }


def build(root, *, push_log=None) -> FeatureRepository:
    """A view with a transform and a created column (source: a file) and a plain view without
    either (source: a directory of files)."""
    pq.write_table(
        pa.table({
            "user_id": pa.array([1, 2, 3, 1], pa.int64()),
            "event_timestamp": pa.array([at(100), at(100), at(50), at(200)], TS),
            "created_timestamp": pa.array([at(100), at(105), at(60), at(200)], TS),
            "amount": pa.array([10.0, 250.0, 3.5, 12.0], pa.float64()),
            "visits": pa.array([1, 2, 3, 4], pa.int32()),
            "country": pa.array(["de", "fr", "日本", "de"], pa.string()),
            "note": pa.array(["a", "b", "c", "d"], pa.string()),
        }),
        root / "spend.parquet",
    )  # fmt: skip
    (root / "plain").mkdir()
    pq.write_table(
        pa.table({
            "user_id": pa.array([1, 2], pa.int64()),
            "event_timestamp": pa.array([at(100), at(100)], TS),
            "score": pa.array([0.5, 1.5], pa.float64()),
            "tag": pa.array(["x", "y"], pa.string()),
        }),
        root / "plain" / "part-0.parquet",
    )  # fmt: skip
    user = Entity("user", [Field("user_id", "int64")])
    spend = FeatureView(
        "spend", ["user"],
        FileSource(str(root / "spend.parquet"), created_timestamp_field="created_timestamp", push_log=push_log),
        [Field("log_amount", "float32"), Field("visits2", "int64"), Field("country_bucket", "int64"), Field("big", "bool")],
        transform=_spend, inputs=["amount", Field("visits", "int64"), "country"],
    )  # fmt: skip
    plain = FeatureView("plain", ["user"], FileSource(str(root / "plain")), [Field("score", "float64"), Field("tag", "string")])
    req = RequestSource("req", [Field("x", "float64")])
    odv = OnDemandFeatureView("ratio", ["spend", "req"], [Field("r", "float64")], lambda c: {"r": c["req__x"] * 2})
    return FeatureRepository([user, spend, plain, req, odv])


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = open_online_store(f"sqlite:///{tmp_path / 'online.db'}")
        yield s
        s.close()
        return
    prefix = f"paritytest_push_{uuid.uuid4().hex[:12]}"
    s = open_online_store(f"redis://127.0.0.1:6379/0?prefix={prefix}&timeout=2")
    try:
        yield s
    finally:
        s.close()
        with redis.Redis() as r:
            keys = list(r.scan_iter(match=f"{prefix}:*", count=1000))
            if keys:
                r.delete(*keys)


def spend_rows(users, events, amounts, visits=None, countries=None, **extra):
    n = len(users)
    return {
        "user_id": list(users),
        "event_timestamp": list(events),
        "amount": list(amounts),
        "visits": list(visits if visits is not None else range(n)),
        "country": list(countries if countries is not None else ["de"] * n),
        **extra,
    }


def now_ns() -> int:
    import time

    return time.time_ns()


def online(repo, store, refs, users, at_ns=None):
    """feature -> (values, nulls, statuses) read online."""
    got = FeatureServer(repo, store).get_online_features(refs, {"user_id": np.array(users, dtype=np.int64)}, now_ns=at_ns or now_ns())
    return {n: (got.values[n], got.nulls[n], got.status_names(n)) for n in got.names}


def offline(repo, refs, users, ts_ns):
    ent = pd.DataFrame({"user_id": users, "event_timestamp": [pd.Timestamp(ts_ns, unit="ns", tz="UTC")] * len(users)})
    return get_historical_features(repo, ent, refs, output="arrow", full_feature_names=True)


def bits(a) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind == "f":
        return a.view({4: np.uint32, 8: np.uint64}[a.dtype.itemsize])
    return a


def assert_same_bits(training: pa.Table, served: dict) -> None:
    """The training set's columns and the online values: the same nulls, the same bits."""
    for name, (values, nulls, _) in served.items():
        col = training.column(name).combine_chunks()
        assert list(col.is_null().to_pylist()) == list(nulls), name
        keep = ~np.asarray(nulls)
        if col.type == pa.string():
            assert [v for v, k in zip(col.to_pylist(), keep) if k] == [v for v, k in zip(values, keep) if k], name
        else:
            want = col.fill_null(False if col.type == pa.bool_() else 0).to_numpy(zero_copy_only=False)
            assert np.array_equal(bits(want)[keep], bits(np.asarray(values))[keep]), (name, want, values)


# ----------------------------------------------------------------------------- served and trained


def test_pushed_rows_are_served_transformed_and_a_later_training_set_has_the_same_bits(tmp_path, store):
    repo = build(tmp_path)
    # 9 is new; 2 gets a newer event; 3's pushed row has an event older than its source row
    rows = spend_rows([9, 2, 3], [at(300), at(400), at(10)], [1e3, 0.25, 7], visits=[5, 6, 7], countries=["fr", "", "日本"])
    result = push(repo, store, "spend", rows)
    assert (result.view, result.rows, result.entities) == ("spend", 3, 3)
    assert result.file is not None and result.file.parent == tmp_path / "spend.push" / "spend"
    t = now_ns()
    served = online(repo, store, SPEND, [9, 2, 3, 1], t)
    # the transform, run here on the pushed values in the source's types
    expect = _spend({"amount": np.array([1e3, 0.25]), "visits": np.array([5, 6], dtype=np.int64), "country": np.array(["fr", ""], dtype=object)})
    for feat in ("log_amount", "visits2", "country_bucket", "big"):
        values, nulls, statuses = served[f"spend__{feat}"]
        assert statuses[:2] == ["PRESENT", "PRESENT"]
        assert np.array_equal(bits(values[:2]), bits(expect[feat])), feat
    # user 3: nothing was materialized, so the pushed (older) row is what the store has
    assert served["spend__visits2"][2][2] == "PRESENT" and served["spend__visits2"][0][2] == 14
    assert served["spend__visits2"][2][3] == "NOT_FOUND"
    # the training set at the time of the read: from the source AND the push log -- user 3's
    # source row (event 50) beats the pushed one (event 10); user 1 only has source rows
    training = offline(repo, SPEND, [9, 2, 3, 1], t)
    assert training.column("spend__visits2").to_pylist() == [10, 12, 6, 8]
    materialize(repo, store, progress=False, end=t // 1000 * 1000)  # the store now also has the source
    assert_same_bits(training, online(repo, store, SPEND, [9, 2, 3, 1], t))


def test_an_older_pushed_event_does_not_overwrite_a_newer_one(tmp_path, store):
    repo = build(tmp_path)
    push(repo, store, "spend", spend_rows([5], [at(1000)], [42.0], visits=[1]))
    push(repo, store, "spend", spend_rows([5], [at(999)], [43.0], visits=[2]))  # older event, pushed later
    t = now_ns()
    served = online(repo, store, SPEND, [5], t)
    assert served["spend__visits2"][0][0] == 2
    assert served["spend__log_amount"][0][0] == np.float32(log1p(np.array([42.0]))[0])
    training = offline(repo, SPEND, [5], t)
    assert_same_bits(training, served)
    # a newer event pushed later does replace it
    push(repo, store, "spend", spend_rows([5], [at(1001)], [44.0], visits=[3]))
    assert online(repo, store, SPEND, [5])["spend__visits2"][0][0] == 6


def test_equal_event_times_the_later_push_wins_online_and_offline(tmp_path, store):
    repo = build(tmp_path)
    push(repo, store, "spend", spend_rows([5], [at(1000)], [1.0], visits=[1]))
    push(repo, store, "spend", spend_rows([5], [at(1000)], [2.0], visits=[2]))
    # and within one push the last row of an entity wins a full tie
    push(repo, store, "plain", {"user_id": [6, 6], "event_timestamp": [at(7), at(7)], "score": [1.0, 2.0], "tag": ["a", "b"]})
    push(repo, store, "plain", {"user_id": [7], "event_timestamp": [at(7)], "score": [1.0], "tag": ["a"]})
    push(repo, store, "plain", {"user_id": [7], "event_timestamp": [at(7)], "score": [3.0], "tag": ["c"]})  # no created column
    t = now_ns()
    assert online(repo, store, SPEND, [5], t)["spend__visits2"][0][0] == 4
    served = online(repo, store, PLAIN, [6, 7], t)
    assert list(served["plain__score"][0]) == [2.0, 3.0] and list(served["plain__tag"][0]) == ["b", "c"]
    assert_same_bits(offline(repo, SPEND + PLAIN, [5], t), online(repo, store, SPEND + PLAIN, [5], t))
    assert_same_bits(offline(repo, PLAIN, [6, 7], t), served)


def test_random_pushes_keep_training_and_serving_bit_identical(tmp_path, store):
    """Many pushes of random rows (duplicate event times, older and newer events, new and known
    users), then the training set at "now" equals the online read, bit for bit."""
    repo = build(tmp_path)
    rng = np.random.default_rng(5)
    users = list(range(1, 9))
    t_start = now_ns()
    for _ in range(12):
        n = int(rng.integers(1, 6))
        us = rng.choice(users, n).tolist()
        ev = [at(float(rng.integers(0, 20)) * 50) for _ in range(n)]
        amounts = (rng.standard_normal(n) * 200).tolist()
        push(repo, store, "spend", spend_rows(us, ev, amounts, visits=rng.integers(-9, 9, n).tolist(),
                                              countries=rng.choice(["de", "fr", "ünï", ""], n).tolist()))  # fmt: skip
        push(repo, store, "plain", {"user_id": us, "event_timestamp": ev, "score": amounts, "tag": [str(a)[:4] for a in amounts]})
    t = now_ns()
    assert t > t_start
    refs = SPEND + PLAIN
    training = offline(repo, refs, users, t)
    # the store has only the pushes; the source rows are the training set's too: write them
    materialize(repo, store, progress=False, end=t // 1000 * 1000)
    served = online(repo, store, refs, users, t)
    assert_same_bits(training, served)
    assert sum(1 for v in served["spend__visits2"][2] if v == "PRESENT") >= 6


def test_materialization_after_pushes_writes_the_pushed_rows(tmp_path, store):
    repo = build(tmp_path)
    pushed = open_online_store(f"sqlite:///{tmp_path / 'pushed.db'}")
    try:
        push(repo, pushed, "spend", spend_rows([9, 2], [at(300), at(400)], [1e3, 0.25], visits=[5, 6]))
        push(repo, pushed, "plain", {"user_id": [9], "event_timestamp": ["1970-01-01T00:00:01Z"], "score": [None], "tag": ["z"]})
        t = now_ns()
        # a fresh store, filled only by materialization: it has what the pushes wrote
        materialize(repo, store, progress=False)
        got = online(repo, store, SPEND + PLAIN, [9, 2], t)
        want = online(repo, pushed, SPEND + PLAIN, [9, 2], t)
        for name in ("spend__log_amount", "spend__visits2", "spend__country_bucket", "spend__big"):
            assert np.array_equal(bits(got[name][0]), bits(want[name][0])), name
            assert got[name][2] == ["PRESENT", "PRESENT"]
        assert got["plain__score"][1][0] and got["plain__tag"][0][0] == "z"  # a null feature stays null
        assert_same_bits(offline(repo, SPEND + PLAIN, [9, 2], t), got)
    finally:
        pushed.close()


def test_incremental_materialization_picks_up_pushes_after_its_watermark(tmp_path, store):
    repo = build(tmp_path)
    marks = Watermarks(tmp_path / "marks.json")
    elsewhere = open_online_store(f"sqlite:///{tmp_path / 'elsewhere.db'}")
    try:
        materialize(repo, store, ["spend"], incremental=True, watermarks=marks, progress=False)
        push(repo, elsewhere, "spend", spend_rows([9], [at(300)], [5.0], visits=[21]))  # another server's push
        assert online(repo, store, SPEND, [9])["spend__visits2"][2] == ["NOT_FOUND"]
        (run,) = materialize(repo, store, ["spend"], incremental=True, watermarks=marks, progress=False)
        assert run.rows == 1  # only the pushed row became available since the watermark
        assert online(repo, store, SPEND, [9])["spend__visits2"][0][0] == 42
    finally:
        elsewhere.close()


def test_a_retried_push_changes_no_value(tmp_path, store):
    repo = build(tmp_path)
    rows = spend_rows([5, 6], [at(10), at(20)], [1.5, 2.5], visits=[1, 2])
    first = push(repo, store, "spend", rows)
    t1 = now_ns()
    before = online(repo, store, SPEND, [5, 6], t1)
    second = push(repo, store, "spend", rows)  # the same rows again (a retry after a lost answer)
    assert second.file != first.file and second.push_us > first.push_us
    t2 = now_ns()
    after = online(repo, store, SPEND, [5, 6], t2)
    for name in before:
        assert np.array_equal(bits(before[name][0]), bits(after[name][0])), name
    # the training set: the same values at any time after the first push
    for t in (t1, t2):
        assert_same_bits(offline(repo, SPEND, [5, 6], t), after)
    assert len(push_log_files(repo.views["spend"])) == 2


# ------------------------------------------------------------------------------ timestamps, log


def test_created_timestamps_default_to_the_push_time_or_come_with_the_rows(tmp_path, store):
    repo = build(tmp_path)
    r = push(repo, store, "spend", spend_rows([5], [at(10)], [1.0]), now_us=2_000_000_000_000_000)
    log = pq.read_table(r.file)
    assert log.column("created_timestamp").cast(pa.int64()).to_pylist() == [2_000_000_000_000_000]
    # a push time that is not after the last one's is moved past it: the log's order is kept
    r2 = push(repo, store, "spend", spend_rows([5], [at(10)], [2.0]), now_us=1_000)
    assert r2.push_us == 2_000_000_000_000_001 and r2.file.name > r.file.name
    # rows bringing their own created time keep it (a null one gets the push time)
    r3 = push(repo, store, "spend", spend_rows([6, 7], [at(10), at(10)], [1.0, 2.0], created_timestamp=[at(20), None]))
    got = pq.read_table(r3.file).column("created_timestamp").cast(pa.int64()).to_pylist()
    assert got == [int((at(20) - datetime(1970, 1, 1, tzinfo=timezone.utc)) / timedelta(microseconds=1)), r3.push_us]
    # a late arrival: the training row at ts before the row was created does not see it
    before_created = int((at(15) - datetime(1970, 1, 1, tzinfo=timezone.utc)) / timedelta(microseconds=1)) * 1000
    assert offline(repo, SPEND, [6], before_created).column("spend__visits2").to_pylist() == [None]


def test_timestamps_as_iso_strings_seconds_datetimes_and_datetime64_are_the_same_instant(tmp_path, store):
    repo = build(tmp_path)
    want = at(3600.25)
    forms = [
        "2026-01-01T01:00:00.250000Z",
        "2026-01-01T02:00:00.25+01:00",
        "2026-01-01 01:00:00.250",  # naive: UTC
        want.timestamp(),
        want,
        want.replace(tzinfo=None),
        np.datetime64("2026-01-01T01:00:00.250000", "us"),
        pd.Timestamp("2026-01-01T01:00:00.25Z"),
    ]
    r = push(repo, store, "plain", {"user_id": list(range(len(forms))), "event_timestamp": forms,
                                    "score": [1.0] * len(forms), "tag": ["t"] * len(forms)})  # fmt: skip
    assert set(pq.read_table(r.file).column("event_timestamp").to_pylist()) == {want}
    r = push(repo, store, "plain", {"user_id": [1], "event_timestamp": np.array(["2026-01-01T01:00:00.25"], dtype="datetime64[ns]"),
                                    "score": np.array([1.0]), "tag": np.array(["t"], dtype=object)})  # fmt: skip
    assert pq.read_table(r.file).column("event_timestamp").to_pylist() == [want]
    ev = online(repo, store, PLAIN, [1])
    assert ev["plain__score"][2] == ["PRESENT"]


def test_the_push_log_lives_next_to_the_source_or_where_push_log_says(tmp_path, store):
    repo = build(tmp_path)
    r = push(repo, store, "plain", {"user_id": [1], "event_timestamp": [at(500)], "score": [1.0], "tag": ["a"]})
    assert r.file.parent == tmp_path / "plain.push" / "plain"  # a directory source: a sibling directory
    assert r.file.name == "000000000001-%d.parquet" % r.push_us
    assert sorted(os.listdir(r.file.parent)) == [".lock", r.file.name]  # no temporary file left
    # the log is read with the source, but a push to one view is not another view's data
    assert offline(repo, PLAIN, [1], now_ns()).column("plain__tag").to_pylist() == ["a"]
    assert push_log_files(repo.views["spend"]) == []

    other = tmp_path / "elsewhere"
    (tmp_path / "b").mkdir()
    repo_b = build(tmp_path / "b", push_log=str(other))
    r = push(repo_b, store, "spend", spend_rows([5], [at(1)], [1.0]))
    assert r.file.parent == other / "spend"
    with pytest.raises(ConfigError, match="push_log"):
        FileSource(str(tmp_path / "plain"), push_log=str(tmp_path / "plain" / "log"))
    glob_view = FeatureView("g", ["user"], FileSource(str(tmp_path / "plain" / "*.parquet")), [Field("score", "float64")])
    repo_g = FeatureRepository([Entity("user", [Field("user_id", "int64")]), glob_view])
    with pytest.raises(InvalidInput, match="push_log"):
        push(repo_g, store, "g", {"user_id": [1], "event_timestamp": [at(1)], "score": [1.0]})


def test_concurrent_pushes_are_serialized_in_log_order(tmp_path, store):
    repo = build(tmp_path)
    errors = []

    def worker(i):
        try:
            for j in range(4):
                push(repo, store, "plain", {"user_id": [11], "event_timestamp": [at(5)], "score": [float(i * 10 + j)], "tag": [f"{i}-{j}"]})
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    files = push_log_files(repo.views["plain"])
    assert [os.path.basename(f)[:12] for f in files] == [f"{i:012d}" for i in range(1, 17)]
    # every push tied (same event time, no created column): the last one in the log wins, online too
    last = pq.read_table(files[-1]).column("tag").to_pylist()[0]
    t = now_ns()
    served = online(repo, store, PLAIN, [11], t)
    assert served["plain__tag"][0][0] == last
    assert_same_bits(offline(repo, PLAIN, [11], t), served)


# ------------------------------------------------------------------------------------- bad rows


def test_bad_rows_are_refused_naming_the_view_and_the_column_and_leave_no_trace(tmp_path, store):
    repo = build(tmp_path)
    pq.write_table(pa.table({"user_id": pa.array([1], pa.int64()), "event_timestamp": pa.array([at(1)], TS),
                             "f": pa.array([1.0], pa.float32())}), tmp_path / "f32.parquet")  # fmt: skip
    f32 = FeatureView("float32", ["user"], FileSource(str(tmp_path / "f32.parquet")), [Field("f", "float32")])
    repo = FeatureRepository([*repo.entities.values(), *repo.views.values(), *repo.request_sources.values(), *repo.on_demand.values(), f32])
    good = spend_rows([5], [at(10)], [1.0])
    cases = [
        ("nope", good, "'nope'"),
        ("ratio", good, "on-demand"),
        ("spend", {k: v for k, v in good.items() if k != "amount"}, "'amount'"),
        ("spend", {k: v for k, v in good.items() if k != "user_id"}, "'user_id'"),
        ("spend", {k: v for k, v in good.items() if k != "event_timestamp"}, "'event_timestamp'"),
        ("spend", {**good, "user_id": [1.5]}, "'user_id'"),
        ("spend", {**good, "user_id": ["5"]}, "'user_id'"),
        ("spend", {**good, "user_id": [None]}, "'user_id'"),
        ("spend", {**good, "amount": ["1.0"]}, "'amount'"),
        ("spend", {**good, "amount": [None]}, "'amount'"),
        ("spend", {**good, "visits": [2**40]}, "'visits'"),  # the source column is int32
        ("spend", {**good, "visits": [1.5]}, "'visits'"),
        ("spend", {**good, "country": [3]}, "'country'"),
        ("spend", {**good, "event_timestamp": ["yesterday"]}, "'event_timestamp'"),
        ("spend", {**good, "event_timestamp": [True]}, "'event_timestamp'"),
        ("spend", {**good, "event_timestamp": [None]}, "'event_timestamp'"),
        ("spend", {**good, "created_timestamp": ["x"]}, "'created_timestamp'"),
        ("spend", {**good, "bogus": [1]}, "'bogus'"),
        ("spend", {**good, "amount": [1.0, 2.0]}, "lengths"),
        ("spend", {**good, "amount": 1.0}, "'amount'"),
        ("plain", {"user_id": [1], "event_timestamp": [at(1)], "score": ["high"], "tag": ["a"]}, "'score'"),
        ("plain", {"user_id": [1], "event_timestamp": [at(1)], "score": [1.0], "tag": [7]}, "'tag'"),
        ("float32", {"user_id": [1], "event_timestamp": [at(1)], "f": [1e300]}, "'f'"),  # would be inf as float32
    ]
    for view, rows, needle in cases:
        with pytest.raises(InvalidInput) as info:
            push(repo, store, view, rows)
        msg = str(info.value)
        assert needle in msg, (view, rows, msg)
        if view in repo.views:
            assert repr(view) in msg, msg
    for view in repo.views.values():
        assert push_log_files(view) == []
        d = view.source.push_dir(view.name)
        assert not d.exists() or sorted(os.listdir(d)) == [".lock"]


def test_a_failing_transform_is_invalid_input_and_logs_nothing(tmp_path, store):
    repo = build(tmp_path)

    def bad(cols):
        if (cols["amount"] < 0).any():
            raise ValueError("negative amount")
        return _spend(cols)

    v = repo.views["spend"]
    repo2 = FeatureRepository([repo.entities["user"], FeatureView(v.name, v.entities, v.source, v.schema, transform=bad, inputs=v.inputs)])
    with pytest.raises(InvalidInput, match="negative amount") as info:
        push(repo2, store, "spend", spend_rows([5], [at(10)], [-1.0]))
    assert "'spend'" in str(info.value)
    assert push_log_files(v) == [] and sorted(os.listdir(v.source.push_dir("spend"))) == [".lock"]
    assert online(repo, store, SPEND, [5])["spend__visits2"][2] == ["NOT_FOUND"]


def test_zero_rows_push_nothing(tmp_path, store):
    repo = build(tmp_path)
    r = push(repo, store, "spend", spend_rows([], [], []))
    assert (r.rows, r.entities, r.file) == (0, 0, None)
    assert push_log_files(repo.views["spend"]) == []


def test_the_cli_pushes_json_and_parquet_rows(tmp_path):
    import json
    import subprocess
    import sys

    build(tmp_path)
    module = tmp_path / "repo.py"
    module.write_text(
        "from parity.features.definitions import Entity, FeatureView, Field, FileSource\n"
        "user = Entity('user', [Field('user_id', 'int64')])\n"
        f"plain = FeatureView('plain', ['user'], FileSource({str(tmp_path / 'plain')!r}), [Field('score', 'float64'), Field('tag', 'string')])\n"
    )
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps({"user_id": [21, 22], "event_timestamp": ["2026-01-02T00:00:00Z", 1767312000], "score": [1.25, 2.5], "tag": ["a", "b"]}))
    pq.write_table(pa.table({"user_id": pa.array([23], pa.int64()), "event_timestamp": pa.array([at(9)], TS), "score": [3.5], "tag": ["c"]}),
                   tmp_path / "rows.parquet")  # fmt: skip

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "parity", "features", "push", "--repo", str(module), "--online-store", url, *args],
                              capture_output=True, text=True, timeout=120, check=False)  # fmt: skip

    done = cli("--view", "plain", "--rows", str(rows))
    assert done.returncode == 0, done.stderr
    assert "2 rows pushed, 2 entities written online" in done.stdout
    done = cli("--view", "plain", "--rows", str(tmp_path / "rows.parquet"))
    assert done.returncode == 0, done.stderr
    bad = cli("--view", "nope", "--rows", str(rows))
    assert bad.returncode == 1 and "'nope'" in bad.stderr
    repo = FeatureRepository.load(module)
    with open_online_store(url) as store:
        served = online(repo, store, PLAIN, [21, 22, 23])
    assert list(served["plain__score"][0]) == [1.25, 2.5, 3.5] and list(served["plain__tag"][0]) == ["a", "b", "c"]
    assert len(push_log_files(repo.views["plain"])) == 2
