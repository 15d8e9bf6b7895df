"""The offline point-in-time join on real DuckDB and Parquet files: the edge cases of the
semantics (see parity.features.offline), bad input, and a check against a slow pure-Python
reference on random data."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from parity.errors import ConfigError, InvalidInput
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
from parity.features.offline import get_historical_features

T0 = datetime(2024, 1, 1, tzinfo=UTC)
USER = Entity("user", (Field("user_id", "int64"),))


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def write_source(path, rows, *, created=True, value_type=None):
    """rows: (user_id, event_s, created_s, value)."""
    cols = {
        "user_id": pa.array([r[0] for r in rows], pa.int64()),
        "event_timestamp": pa.array([at(r[1]) for r in rows], pa.timestamp("us", tz="UTC")),
        "value": pa.array([r[3] for r in rows], value_type or pa.int64()),
    }
    if created:
        cols["created"] = pa.array([at(r[2]) for r in rows], pa.timestamp("us", tz="UTC"))
    pq.write_table(pa.table(cols), path)
    return str(path)


def view(name, path, ttl=0.0, created=True, **kw):
    return FeatureView(
        name, ("user",), FileSource(path, created_timestamp_field="created" if created else None),
        (Field("value", "int64"),), ttl_seconds=ttl, **kw,
    )  # fmt: skip


def entities(rows):
    """rows: (user_id, ts_s)."""
    return pd.DataFrame({"user_id": [r[0] for r in rows], "event_timestamp": [at(r[1]) for r in rows]})


def values(df, col="value"):
    return [None if pd.isna(v) else v for v in df[col]]


def join(tmp_path, src_rows, ent_rows, ttl=0.0, created=True):
    path = write_source(tmp_path / "v.parquet", src_rows, created=created)
    repo = FeatureRepository([USER, view("v", path, ttl, created)])
    return get_historical_features(repo, entities(ent_rows), ["v:value"])


# ------------------------------------------------------------------------------- edge cases


def test_event_exactly_at_the_timestamp_is_included(tmp_path):
    df = join(tmp_path, [(1, 100, 100, 7), (1, 101, 101, 8)], [(1, 100), (1, 99)])
    assert values(df) == [7, None]


def test_ttl_boundary_is_inclusive_and_one_second_past_is_excluded(tmp_path):
    src = [(1, 100, 100, 7)]
    df = join(tmp_path, src, [(1, 160), (1, 161), (1, 160.000001), (1, 130)], ttl=60)
    assert values(df) == [7, None, None, 7]


def test_ttl_zero_never_expires(tmp_path):
    df = join(tmp_path, [(1, 0, 0, 7)], [(1, 10**8)], ttl=0)
    assert values(df) == [7]


def test_expired_latest_row_does_not_fall_back_to_an_older_row(tmp_path):
    df = join(tmp_path, [(1, 0, 0, 1), (1, 50, 50, 2)], [(1, 200)], ttl=100)
    assert values(df) == [None]


def test_equal_event_times_latest_created_wins(tmp_path):
    src = [(1, 100, 105, 1), (1, 100, 110, 2), (1, 100, 103, 3)]
    df = join(tmp_path, src, [(1, 120), (1, 106), (1, 104)])
    # at 106 the row created at 110 does not exist yet; at 104 only the row created at 103 does
    assert values(df) == [2, 1, 3]


def test_full_ties_the_last_row_of_the_source_wins(tmp_path):
    df = join(tmp_path, [(1, 100, 100, 1), (1, 100, 100, 2)], [(1, 100)])
    assert values(df) == [2]
    df = join(tmp_path, [(1, 100, 100, 1), (1, 100, 100, 2)], [(1, 100)], created=False)
    assert values(df) == [2]


def test_late_rows_are_not_used_before_they_were_created(tmp_path):
    # the newer event (t=100) arrives late (created at 500); until then the older one serves
    src = [(1, 50, 50, 1), (1, 100, 500, 2)]
    df = join(tmp_path, src, [(1, 200), (1, 499), (1, 500), (1, 600)])
    assert values(df) == [1, 1, 2, 2]


def test_late_row_with_an_older_event_does_not_replace_a_newer_one(tmp_path):
    src = [(1, 100, 100, 1), (1, 50, 300, 2)]
    df = join(tmp_path, src, [(1, 400), (1, 200)])
    assert values(df) == [1, 1]


def test_entities_without_events_are_kept_in_order_and_duplicates_returned(tmp_path):
    src = [(1, 10, 10, 1), (2, 10, 10, 2)]
    ent = [(9, 100), (2, 100), (1, 100), (9, 5), (2, 100), (1, 5)]
    df = join(tmp_path, src, ent)
    assert list(df["user_id"]) == [9, 2, 1, 9, 2, 1]
    assert values(df) == [None, 2, 1, None, 2, None]
    assert str(df["value"].dtype) == "Int64"


def test_no_future_value_leaks(tmp_path):
    src = [(1, s, s, s) for s in range(0, 1000, 10)]
    ent = [(1, s) for s in range(5, 1000, 7)]
    df = join(tmp_path, src, ent)
    assert values(df) == [s - s % 10 for _, s in ent]


def test_multiple_views_with_different_ttls(tmp_path):
    a = write_source(tmp_path / "a.parquet", [(1, 100, 100, 1), (2, 100, 100, 2)])
    b = write_source(tmp_path / "b.parquet", [(1, 100, 100, 10), (2, 150, 150, 20)], created=False)
    c = write_source(tmp_path / "c.parquet", [(1, 0, 0, 100)])
    repo = FeatureRepository([
        USER, view("a", a, ttl=10), view("b", b, ttl=100, created=False), view("c", c, ttl=0),
        FeatureService("svc", ("c:value", "a:value", "b:value")),
    ])  # fmt: skip
    ent = entities([(1, 105), (1, 150), (2, 240), (1, 201), (3, 10)])
    df = get_historical_features(repo, ent, "svc", full_feature_names=True)
    assert list(df.columns) == ["user_id", "event_timestamp", "c__value", "a__value", "b__value"]
    assert values(df, "a__value") == [1, None, None, None, None]
    assert values(df, "b__value") == [10, 10, 20, None, None]
    assert values(df, "c__value") == [100, 100, None, 100, None]
    with pytest.raises(InvalidInput, match="full_feature_names"):
        get_historical_features(repo, ent, "svc")


def test_outputs_arrow_parquet_and_naive_timestamps_as_utc(tmp_path):
    path = write_source(tmp_path / "v.parquet", [(1, 100, 100, 7)])
    repo = FeatureRepository([USER, view("v", path)])
    ent = pd.DataFrame(
        {"user_id": [1, 1], "event_timestamp": [at(99).replace(tzinfo=None), at(100).replace(tzinfo=None)], "label": [0.5, 1.5]}
    )
    tbl = get_historical_features(repo, ent, ["v:value"], output="arrow")
    assert tbl.column_names == ["user_id", "event_timestamp", "label", "value"]
    assert tbl.schema.field("event_timestamp").type == pa.timestamp("us", tz="UTC")
    assert tbl.column("value").to_pylist() == [None, 7]
    out = get_historical_features(repo, pa.Table.from_pandas(ent), ["v:value"], output=str(tmp_path / "out.parquet"))
    assert pq.read_table(out).equals(tbl)
    ent_path = tmp_path / "ent.parquet"
    ent.to_parquet(ent_path)
    assert get_historical_features(repo, ent_path, ["v:value"], output="arrow").equals(tbl)


def test_transform_runs_before_the_join_and_on_demand_after(tmp_path):
    path = write_source(tmp_path / "v.parquet", [(1, 100, 100, 3), (2, 100, 100, 4)])
    v = FeatureView(
        "v", ("user",), FileSource(path), (Field("double", "int64"), Field("name", "string")),
        transform=lambda c: {"double": c["value"] * 2, "name": np.array([f"u{x}" for x in c["value"]], dtype=object)},
        inputs=("value",),
    )  # fmt: skip
    req = RequestSource("req", (Field("amount", "float64"),))
    od = OnDemandFeatureView(
        "od", ("v", "req"), (Field("ratio", "float64"),), lambda c: {"ratio": c["req__amount"] / c["v__double"]}
    )
    repo = FeatureRepository([USER, v, req, od, FeatureService("svc", ("od:ratio", "v:name"))])
    ent = entities([(1, 100), (2, 100), (3, 100), (1, 50)])
    ent["amount"] = [12.0, 16.0, 1.0, 1.0]
    df = get_historical_features(repo, ent, "svc")
    assert list(df.columns) == ["user_id", "event_timestamp", "amount", "ratio", "name"]
    assert values(df, "ratio") == [2.0, 2.0, None, None]
    assert values(df, "name") == ["u3", "u4", None, None]
    assert str(df["name"].dtype) == "string" and str(df["ratio"].dtype) == "Float64"


# ------------------------------------------------------------------------------- bad input


def test_source_missing_column_or_wrong_dtype_is_a_config_error(tmp_path):
    path = write_source(tmp_path / "v.parquet", [(1, 100, 100, 7)], value_type=pa.float64())
    repo = FeatureRepository([USER, view("v", path)])
    with pytest.raises(ConfigError) as e:
        get_historical_features(repo, entities([(1, 100)]), ["v:value"])
    assert e.value.source.startswith(path) and e.value.field == "value"
    path2 = write_source(tmp_path / "w.parquet", [(1, 100, 100, 7)], created=False)
    repo = FeatureRepository([USER, view("w", path2)])
    with pytest.raises(ConfigError) as e:
        get_historical_features(repo, entities([(1, 100)]), ["w:value"])
    assert e.value.source.startswith(path2) and e.value.field == "created"


def test_entity_df_without_keys_or_timestamp_is_invalid_input(tmp_path):
    path = write_source(tmp_path / "v.parquet", [(1, 100, 100, 7)])
    repo = FeatureRepository([USER, view("v", path)])
    with pytest.raises(InvalidInput, match="'user_id'"):
        get_historical_features(repo, pd.DataFrame({"event_timestamp": [at(1)]}), ["v:value"])
    with pytest.raises(InvalidInput, match="'event_timestamp'"):
        get_historical_features(repo, pd.DataFrame({"user_id": [1]}), ["v:value"])
    with pytest.raises(InvalidInput, match="'event_timestamp'"):
        get_historical_features(repo, pd.DataFrame({"user_id": [1], "event_timestamp": ["yesterday"]}), ["v:value"])


# ------------------------------------------------------------------------------- reference


def reference(src_rows, ent_rows, ttl_s, use_created):
    """The semantics, slowly and obviously: filter the visible rows, take the max."""
    out = []
    for key, ts in ent_rows:
        best = None
        for pos, (k, ev, cr, val) in enumerate(src_rows):
            if k != key or ev > ts or (use_created and cr > ts):
                continue
            rank = (ev, cr if use_created else ev, pos)
            if best is None or rank > best[0]:
                best = (rank, ev, val)
        if best is None or (ttl_s > 0 and best[1] < ts - ttl_s):
            out.append(None)
        else:
            out.append(best[2])
    return out


@pytest.mark.parametrize("seed", range(6))
def test_matches_a_pure_python_reference_on_random_data(tmp_path, seed):
    rng = random.Random(seed)
    use_created = seed % 2 == 0
    ttls = [0, 5, 20]
    src = {}
    views = []
    for i, ttl in enumerate(ttls):
        rows = []
        for _ in range(rng.randint(100, 300)):
            ev = rng.randint(0, 60)
            cr = ev + (rng.choice([0, 0, 1, 5, 30]) if use_created else 0)
            rows.append((rng.randint(0, 12), ev, cr, rng.randint(-1000, 1000)))
        src[f"v{i}"] = rows
        path = write_source(tmp_path / f"v{i}.parquet", rows, created=use_created)
        views.append(view(f"v{i}", path, ttl=ttl, created=use_created))
    repo = FeatureRepository([USER, *views])
    ent = [(rng.randint(0, 14), rng.randint(-5, 70)) for _ in range(300)]
    df = get_historical_features(repo, entities(ent), [f"v{i}:value" for i in range(3)], full_feature_names=True)
    assert len(df) == len(ent)
    assert list(df["user_id"]) == [k for k, _ in ent]
    for i, ttl in enumerate(ttls):
        assert values(df, f"v{i}__value") == reference(src[f"v{i}"], ent, ttl, use_created), f"view v{i} (ttl {ttl})"


def test_directory_source_ties_across_files_go_to_the_later_file(tmp_path):
    d = tmp_path / "src"
    d.mkdir()
    write_source(d / "part-1.parquet", [(1, 100, 100, 2), (1, 100, 100, 3)])
    write_source(d / "part-0.parquet", [(1, 100, 100, 1), (2, 50, 60, 9)])
    repo = FeatureRepository([USER, view("v", str(d))])
    df = get_historical_features(repo, entities([(1, 100), (2, 59), (2, 60)]), ["v:value"])
    assert values(df) == [3, None, 9]


def test_string_keys_and_compound_entities(tmp_path):
    merchant = Entity("merchant", (Field("country", "string"), Field("mid", "int64")))
    pq.write_table(pa.table({
        "country": ["de", "de", "fr"], "mid": [1, 2, 1],
        "event_timestamp": pa.array([at(10), at(10), at(10)], pa.timestamp("ms")),  # naive, ms: read as UTC
        "risk": pa.array([0.1, 0.2, 0.3], pa.float32()),
    }), tmp_path / "m.parquet")  # fmt: skip
    v = FeatureView("m", ("merchant",), FileSource(str(tmp_path / "m.parquet")), (Field("risk", "float32"),))
    repo = FeatureRepository([merchant, v])
    ent = pd.DataFrame({"country": ["fr", "de", "de", "xx"], "mid": [1, 2, 1, 1], "event_timestamp": [at(10)] * 4})
    tbl = get_historical_features(repo, ent, ["m:risk"], output="arrow")
    risk = tbl.column("risk").to_pylist()
    assert risk[:3] == pytest.approx([0.3, 0.2, 0.1]) and risk[3] is None
    assert tbl.column("risk").type == pa.float32()
    with pytest.raises(InvalidInput, match="'mid'"):
        get_historical_features(repo, ent.assign(mid=ent["mid"].astype(str)), ["m:risk"])


def test_null_timestamp_or_key_gives_null_features(tmp_path):
    path = write_source(tmp_path / "v.parquet", [(1, 100, 100, 7)])
    repo = FeatureRepository([USER, view("v", path)])
    ent = pa.table({
        "user_id": pa.array([1, None, 1], pa.int64()),
        "event_timestamp": pa.array([at(200), at(200), None], pa.timestamp("us", tz="UTC")),
    })  # fmt: skip
    assert get_historical_features(repo, ent, ["v:value"], output="arrow").column("value").to_pylist() == [7, None, None]
