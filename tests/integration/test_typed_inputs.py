"""Declared transform inputs: every path hands the transform the declared dtype, so the offline
join and the online store agree even when the source column's type differs (int64 on disk,
float64 declared); a source column that cannot become the declared dtype is refused naming the
file and the column."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from parity.errors import ConfigError, InvalidInput
from parity.features.definitions import Entity, FeatureRepository, FeatureView, Field, FileSource, typed_inputs
from parity.features.materialize import materialize
from parity.features.offline import get_historical_features
from parity.features.online import open_online_store
from parity.features.retrieval import FeatureServer

T = datetime(2026, 3, 1, tzinfo=timezone.utc)


def _halve(cols):
    x = cols["count"]
    assert x.dtype == np.float64, x.dtype  # the declared dtype, whatever the source holds
    return {"half": (x / 2.0).astype(np.float64)}


def _repo(root, column: pa.Array) -> FeatureRepository:
    table = pa.table(
        {
            "user_id": pa.array([1, 2, 3], pa.int64()),
            "event_timestamp": pa.array([T, T, T], pa.timestamp("us", tz="UTC")),
            "count": column,
        }
    )
    pq.write_table(table, root / "counts.parquet")
    user = Entity("user", [Field("user_id", "int64")])
    view = FeatureView(
        "counts", ["user"], FileSource(str(root / "counts.parquet")), [Field("half", "float64")],
        transform=_halve, inputs=[Field("count", "float64")],
    )  # fmt: skip
    return FeatureRepository([user, view])


def test_an_int_source_column_reaches_the_transform_as_the_declared_float_on_both_paths(tmp_path):
    repo = _repo(tmp_path, pa.array([3, 2**53 + 1, -7], pa.int64()))
    entity_df = pd.DataFrame({"user_id": [1, 2, 3], "event_timestamp": [pd.Timestamp(T)] * 3})
    offline = get_historical_features(repo, entity_df, ["counts:half"], output="arrow").column("half").to_numpy()
    with open_online_store(f"sqlite:///{tmp_path / 'o.db'}") as store:
        materialize(repo, store, end=T, progress=False)
        now = int(pd.Timestamp(T).value)
        online = FeatureServer(repo, store).get_online_features(["counts:half"], {"user_id": np.array([1, 2, 3])}, now_ns=now)
    assert np.array_equal(offline.view(np.uint64), online.values["counts__half"].view(np.uint64))
    assert offline[0] == 1.5 and offline[2] == -3.5


def test_a_source_column_of_another_kind_is_refused_naming_file_and_column(tmp_path):
    repo = _repo(tmp_path, pa.array(["3", "2", "1"], pa.string()))
    entity_df = pd.DataFrame({"user_id": [1], "event_timestamp": [pd.Timestamp(T)]})
    with pytest.raises(ConfigError) as info:
        get_historical_features(repo, entity_df, ["counts:half"])
    assert "counts.parquet" in info.value.message and "count" in info.value.message and "float64" in info.value.message


def test_typed_inputs_casts_within_a_kind_and_refuses_across():
    got = typed_inputs("v", {"a": np.array([1, 2], np.int32), "b": np.array([1.5], np.float32)}, (Field("a", "float64"), Field("b", "float64")))
    assert got["a"].dtype == np.float64 and got["b"].dtype == np.float64
    with pytest.raises(InvalidInput, match="'a' of 'v' is declared int64 but the values are float64"):
        typed_inputs("v", {"a": np.array([1.5])}, (Field("a", "int64"),))
    with pytest.raises(InvalidInput, match="declared float64"):
        typed_inputs("v", {"a": np.array(["x"], dtype=object)}, (Field("a", "float64"),))
    with pytest.raises(InvalidInput, match="needs input 'z'"):
        typed_inputs("v", {}, (Field("z", "int64"),))
