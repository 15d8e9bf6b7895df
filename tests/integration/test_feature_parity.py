"""The parity proof: the training set's feature vectors and what the online path serves for the
same entity at the same time are bit-identical -- for a plain view, a view with a transform, an
on-demand view, TTLs, duplicate event times and late arrivals -- through both online backends
(SQLite and the real Redis at 127.0.0.1:6379), with the store filled by incremental
materialization up to each timestamp."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
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
from parity.features.materialize import Watermarks, materialize
from parity.features.offline import get_historical_features
from parity.features.online import open_online_store
from parity.features.online.base import Status
from parity.features.retrieval import FeatureServer

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
USERS = 12


def _spend_transform(cols):
    amount = cols["amount"]
    return {
        "log_amount": np.log1p(np.abs(amount)).astype(np.float32),
        "amount_bucket": np.digitize(amount, [0.0, 10.0, 100.0]).astype(np.int32),
    }


def _ratio_transform(cols):
    log_amount = cols["spend__log_amount"].astype(np.float64)
    return {"amount_vs_request": (log_amount / (1.0 + cols["txn__value"])).astype(np.float64)}


def build_repo(root) -> FeatureRepository:
    rng = np.random.default_rng(7)
    n = 400
    users = rng.integers(0, USERS, n)
    # event times on a coarse grid so that equal event times happen; created a little after
    # (sometimes much later: late arrivals)
    ev = T0 + pd.to_timedelta(rng.integers(0, 48, n) * 30, unit="m")
    late = rng.random(n) < 0.15
    cr = ev + pd.to_timedelta(np.where(late, rng.integers(60, 600, n), rng.integers(0, 5, n)), unit="m")
    profile = pa.table(
        {
            "user_id": pa.array(users, pa.int64()),
            "event_timestamp": pa.array(ev, pa.timestamp("us", tz="UTC")),
            "created_timestamp": pa.array(cr, pa.timestamp("us", tz="UTC")),
            "score": pa.array(rng.standard_normal(n), pa.float64()),
            "visits": pa.array(rng.integers(-5, 1000, n), pa.int64()),
            "country": pa.array(rng.choice(["de", "fr", "ünï", ""], n), pa.string()),
        }
    )
    pq.write_table(profile, root / "profile.parquet")
    spend = pa.table(
        {
            "user_id": pa.array(rng.integers(0, USERS, n), pa.int64()),
            "event_timestamp": pa.array(T0 + pd.to_timedelta(rng.integers(0, 48 * 60, n), unit="m"), pa.timestamp("us", tz="UTC")),
            "amount": pa.array(rng.standard_normal(n) * 100, pa.float64()),
        }
    )
    pq.write_table(spend, root / "spend.parquet")
    user = Entity("user", [Field("user_id", "int64")])
    profile_view = FeatureView(
        "profile",
        ["user"],
        FileSource(str(root / "profile.parquet"), created_timestamp_field="created_timestamp"),
        [Field("score", "float64"), Field("visits", "int64"), Field("country", "string")],
        ttl_seconds=6 * 3600,
    )
    spend_view = FeatureView(
        "spend",
        ["user"],
        FileSource(str(root / "spend.parquet")),
        [Field("log_amount", "float32"), Field("amount_bucket", "int32")],
        ttl_seconds=0,
        transform=_spend_transform,
        inputs=["amount"],
    )
    txn = RequestSource("txn", [Field("value", "float64")])
    ratio = OnDemandFeatureView("ratio", ["spend", "txn"], [Field("amount_vs_request", "float64")], _ratio_transform)
    service = FeatureService("model_inputs", ["profile:*", "spend:*", "ratio:amount_vs_request"])
    return FeatureRepository([user, profile_view, spend_view, txn, ratio, service])


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = open_online_store(f"sqlite:///{tmp_path / 'online.db'}")
        yield s
        s.close()
        return
    prefix = f"paritytest_{uuid.uuid4().hex[:12]}"
    s = open_online_store(f"redis://127.0.0.1:6379/0?prefix={prefix}&timeout=2")
    try:
        yield s
    finally:
        s.close()
        with redis.Redis() as r:
            keys = list(r.scan_iter(match=f"{prefix}:*", count=1000))
            for i in range(0, len(keys), 500):
                r.delete(*keys[i : i + 500])


def _bits(a: np.ndarray) -> np.ndarray:
    if a.dtype.kind == "f":
        return a.view({4: np.uint32, 8: np.uint64}[a.dtype.itemsize])
    return a


def test_training_rows_and_online_reads_are_bit_identical(tmp_path, store):
    repo = build_repo(tmp_path)
    rng = np.random.default_rng(11)
    times = sorted(T0 + timedelta(minutes=int(m)) for m in rng.integers(0, 60 * 40, 24))
    rows = []
    for t in times:  # several entities at each time, some that never had an event
        for u in rng.choice(USERS + 3, 4, replace=False):
            rows.append((int(u), t, float(rng.standard_normal())))
    entity_df = pd.DataFrame(rows, columns=["user_id", "event_timestamp", "value"])
    training = get_historical_features(repo, entity_df, "model_inputs", output="arrow", full_feature_names=True)
    assert training.num_rows == len(rows)

    server = FeatureServer(repo, store)
    marks = Watermarks(tmp_path / "watermarks.json")
    names = server.plan("model_inputs").refs
    compared = present = 0
    for t in times:
        end_ns = int((t - datetime(1970, 1, 1, tzinfo=timezone.utc)) / timedelta(microseconds=1)) * 1000
        materialize(repo, store, incremental=True, end=end_ns, watermarks=marks, progress=False)
        idx = [i for i, r in enumerate(rows) if r[1] == t]
        got = server.get_online_features(
            "model_inputs",
            {"user_id": np.array([rows[i][0] for i in idx], np.int64)},
            {"value": np.array([rows[i][2] for i in idx])},
            now_ns=end_ns,
        )
        for view, feat in names:
            name = f"{view}__{feat}"
            offline = training.column(name).take(pa.array(idx))
            off_null = offline.is_null().to_numpy(zero_copy_only=False)
            on_null = got.nulls[name]
            assert np.array_equal(off_null, on_null), (t, name, off_null, on_null, got.status_names(name))
            keep = ~off_null
            if feat == "country":
                assert offline.filter(pa.array(keep)).to_pylist() == list(got.values[name][keep])
            else:
                off_vals = offline.filter(pa.array(keep)).to_numpy(zero_copy_only=False)
                on_vals = got.values[name][keep].astype(off_vals.dtype, copy=False)
                assert np.array_equal(_bits(off_vals), _bits(on_vals)), (t, name, off_vals, on_vals)
            compared += len(idx)
            present += int(keep.sum())
        # the status says why a stored feature is missing
        status = got.status["profile__score"]
        assert set(np.unique(status)) <= {Status.PRESENT, Status.NOT_FOUND, Status.EXPIRED}
    assert present > compared // 4  # the data exercises real values, not only nulls
