"""The reference profile (parity.monitoring.profile.build_profile)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from parity.monitoring.profile import PROFILE_VERSION, bin_index, build_profile, profile_column


def _check_numeric(p: dict) -> None:
    assert p["kind"] == "numeric"
    assert len(p["counts"]) == len(p["edges"]) + 1
    assert sum(p["counts"]) + p["missing"] == p["rows"]
    edges = p["edges"]
    assert all(np.isfinite(edges))
    assert all(a < b for a, b in zip(edges, edges[1:])), edges
    assert p["missing_rate"] == (p["missing"] / p["rows"] if p["rows"] else 0.0)


def test_document_shape_and_strict_json():
    rng = np.random.default_rng(0)
    n = 1000
    prof = build_profile(
        {"amount": rng.lognormal(3, 1, n), "hour": rng.integers(0, 24, n), "country": rng.choice(["US", "DE", "日本"], n),
         "flag": rng.random(n) < 0.3},
        {"score": rng.random(n).astype(np.float32)},
        bins=10, top_k=2,
    )  # fmt: skip
    assert prof["version"] == PROFILE_VERSION
    assert prof["rows"] == n and prof["bins"] == 10 and prof["top_k"] == 2
    assert list(prof["features"]) == prof["feature_names"] == ["amount", "hour", "country", "flag"]
    assert prof["output_names"] == ["score"]
    text = json.dumps(prof, allow_nan=False)  # strict JSON: no NaN or infinities anywhere
    assert json.loads(text) == prof
    amount = prof["features"]["amount"]
    _check_numeric(amount)
    assert len(amount["edges"]) == 9  # continuous values: bins - 1 distinct quantiles
    # quantile bins: each holds about a tenth of the rows
    assert all(80 <= c <= 120 for c in amount["counts"]), amount["counts"]
    _check_numeric(prof["features"]["hour"])
    _check_numeric(prof["outputs"]["score"])
    assert prof["outputs"]["score"]["dtype"] == "float32"
    country = prof["features"]["country"]
    assert country["kind"] == "categorical" and country["dtype"] == "string" and country["distinct"] == 3
    assert len(country["top"]) == 2
    assert sum(t["count"] for t in country["top"]) + country["other"] + country["missing"] == n
    assert [t["count"] for t in country["top"]] == sorted([t["count"] for t in country["top"]], reverse=True)
    flag = prof["features"]["flag"]
    assert flag["dtype"] == "bool" and {t["value"] for t in flag["top"]} == {True, False}
    assert sum(t["count"] for t in flag["top"]) == n


def test_counts_follow_the_bin_rule():
    values = np.array([1.0, 2.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0])
    p = profile_column(values, bins=4)
    _check_numeric(p)
    # recount by the documented rule: bin = number of edges <= value
    idx = np.array([sum(e <= v for e in p["edges"]) for v in values])
    assert p["counts"] == np.bincount(idx, minlength=len(p["edges"]) + 1).tolist()
    assert bin_index(p["edges"], values).tolist() == idx.tolist()
    # every edge is a value that occurs (inverted_cdf quantiles)
    assert set(p["edges"]) <= set(values.tolist())
    # far outside the training range still lands in the outer bins
    assert bin_index(p["edges"], np.array([-1e300, 1e300, -np.inf, np.inf])).tolist() == [0, len(p["edges"]), 0, len(p["edges"])]


def test_constant_column():
    p = profile_column(np.full(50, 3.5), bins=10)
    _check_numeric(p)
    assert p["edges"] == [3.5]
    assert p["counts"] == [0, 50]
    assert p["min"] == p["max"] == p["mean"] == 3.5 and p["std"] == 0.0


def test_all_null_columns():
    for column in (np.full(7, np.nan), pa.nulls(7, pa.float64()), pd.Series([None] * 7, dtype="Float64"), [None] * 7):
        p = profile_column(column)
        assert p["rows"] == 7 and p["missing"] == 7 and p["missing_rate"] == 1.0
        assert sum(p.get("counts", [0])) == 0
        if p["kind"] == "numeric":
            assert p["edges"] == [] and p["counts"] == [0]
            assert p["min"] is None and p["mean"] is None
        json.dumps(p, allow_nan=False)
    s = profile_column(pa.nulls(4, pa.string()))
    assert s["kind"] == "categorical" and s["missing"] == 4 and s["top"] == [] and s["other"] == 0


def test_nan_is_missing_and_infinities_are_values():
    values = np.array([np.nan, 1.0, 2.0, np.inf, -np.inf, np.nan, 3.0, 4.0])
    p = profile_column(values, bins=4)
    _check_numeric(p)
    assert p["missing"] == 2  # NaN counts as missing, never in a bin
    assert sum(p["counts"]) == 6  # the infinities are in the outer bins
    assert p["counts"][0] >= 1 and p["counts"][-1] >= 1
    assert p["min"] == 1.0 and p["max"] == 4.0  # statistics over finite values
    json.dumps(p, allow_nan=False)
    # only infinities: no finite value to take quantiles of, one unbounded bin
    q = profile_column(np.array([np.inf, -np.inf]))
    assert q["edges"] == [] and q["counts"] == [2] and q["min"] is None


def test_nulls_from_every_container():
    arrow = pa.array([1, None, 3, 4], pa.int64())
    pandas = pd.Series([1, None, 3, 4], dtype="Int64")
    objects = np.array([1, None, 3, 4], dtype=object)
    for column in (arrow, pandas, objects):
        p = profile_column(column, bins=2)
        _check_numeric(p)
        assert p["missing"] == 1 and p["rows"] == 4
    strings = profile_column(pa.array(["a", None, "b", "a"]))
    assert strings["missing"] == 1 and strings["top"][0] == {"value": "a", "count": 2}
    booleans = profile_column(pd.Series([True, None, False, True], dtype="boolean"))
    assert booleans["dtype"] == "bool" and booleans["missing"] == 1 and booleans["top"][0] == {"value": True, "count": 2}
    # an [n, 1] output column is accepted as n values
    assert profile_column(np.zeros((5, 1), dtype=np.float32))["rows"] == 5


def test_ties_in_top_categories_are_deterministic():
    p = profile_column(np.array(["b", "a", "c", "a", "b", "c", "d"]), top_k=2)
    assert p["top"] == [{"value": "a", "count": 2}, {"value": "b", "count": 2}]
    assert p["other"] == 3 and p["distinct"] == 4


def test_bad_arguments():
    with pytest.raises(ValueError, match="rows"):
        build_profile({"a": np.zeros(3), "b": np.zeros(4)}, {})
    with pytest.raises(ValueError, match="bins"):
        build_profile({"a": np.zeros(3)}, {}, bins=0)
    with pytest.raises(ValueError, match="one-dimensional"):
        profile_column(np.zeros((3, 2)))
    empty = build_profile({}, {})
    assert empty["rows"] == 0 and empty["features"] == {}
