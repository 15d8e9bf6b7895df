"""The drift histogram kernels (parity.kernels.binning) against a numpy.searchsorted reference."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from parity.kernels import CategoryIndex, NumericBinner, bin_counts, bucketize
from parity.monitoring.profile import build_profile


def ref_counts(values: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, int]:
    v = np.asarray(values, dtype=np.float64)
    nan = np.isnan(v)
    idx = np.searchsorted(np.asarray(edges, dtype=np.float64), v[~nan], side="right")
    return np.bincount(idx, minlength=len(edges) + 1).astype(np.int64), int(nan.sum())


def tricky_values(rng: np.random.Generator, edges: np.ndarray, n: int) -> np.ndarray:
    """Normal values plus NaN, +-inf, -0.0 and values exactly on (and one ulp around) every edge."""
    v = rng.normal(scale=2.0, size=n)
    specials = [np.nan, np.inf, -np.inf, -0.0, 0.0, np.nan]
    on = list(edges) + list(np.nextafter(edges, np.inf)) + list(np.nextafter(edges, -np.inf))
    v = np.concatenate([v, specials, on])
    rng.shuffle(v)
    return v


@pytest.mark.parametrize("k", [0, 1, 2, 9, 30, 100])
def test_bin_counts_matches_searchsorted(k):
    rng = np.random.default_rng(k)
    for trial in range(20):
        edges = np.unique(rng.normal(size=k)) if k else np.zeros(0)
        if trial % 3 == 0 and k:
            edges = np.unique(np.round(edges, 1))  # values will land exactly on edges often
        values = tricky_values(rng, edges, 500)
        if trial % 3 == 0:
            values = np.concatenate([values, np.round(rng.normal(size=200), 1)])
        expected, missing = ref_counts(values, edges)
        out = np.zeros(len(edges) + 1, dtype=np.int64)
        assert bin_counts(values, edges, out) == missing
        np.testing.assert_array_equal(out, expected)
        # it adds: a second call doubles
        bin_counts(values, edges, out)
        np.testing.assert_array_equal(out, 2 * expected)
        # the profile rule is bucketize's
        b = bucketize(values, tuple(edges))
        np.testing.assert_array_equal(np.bincount(b[b >= 0], minlength=len(edges) + 1), expected)


def test_bin_counts_dtypes_and_checks():
    edges = [1.0, 2.0]
    out = np.zeros(3, dtype=np.int64)
    assert bin_counts(np.array([0, 1, 2, 3], dtype=np.int32), edges, out) == 0
    np.testing.assert_array_equal(out, [1, 1, 2])
    out[:] = 0
    assert bin_counts(np.array([True, False]), edges, out) == 0  # 1.0 and 0.0
    np.testing.assert_array_equal(out, [1, 1, 0])
    out[:] = 0
    assert bin_counts(np.array([np.nan, 1.5], dtype=np.float32), edges, out) == 1
    np.testing.assert_array_equal(out, [0, 1, 0])
    with pytest.raises(ValueError):
        bin_counts([1.0], [2.0, 1.0], np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError):
        bin_counts([1.0], edges, np.zeros(2, dtype=np.int64))
    with pytest.raises(ValueError):
        bin_counts([1.0], edges, np.zeros(3, dtype=np.int32))


def binner_reference(batch, edges_list, columns, lo, hi):
    nf = len(edges_list)
    counts = np.zeros((nf, max(len(e) for e in edges_list) + 1), dtype=np.int64)
    missing = np.zeros(nf, dtype=np.int64)
    below = np.zeros(nf, dtype=np.int64)
    above = np.zeros(nf, dtype=np.int64)
    for j, e in enumerate(edges_list):
        col = np.asarray(batch[:, columns[j]], dtype=np.float64)
        c, m = ref_counts(col, e)
        counts[j, : len(c)] = c
        missing[j] = m
        present = col[~np.isnan(col)]
        below[j] = int((present < lo[j]).sum()) if not np.isnan(lo[j]) else 0
        above[j] = int((present > hi[j]).sum()) if not np.isnan(hi[j]) else 0
    return counts, missing, below, above


@pytest.mark.parametrize("widest", [20, 40])  # the branch-free count (<= 24 edges) and the binary search
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int64])
def test_numeric_binner_matches_reference(order, dtype, widest):
    rng = np.random.default_rng(7)
    edges_list = [np.unique(rng.normal(size=k)) if k else np.zeros(0) for k in (9, 0, 1, widest, 5)]
    if dtype is np.float32:  # edges a float32 value can equal exactly
        edges_list = [e.astype(np.float32).astype(np.float64) for e in edges_list]
    lo = np.array([-1.0, np.nan, 0.0, -2.0, -0.5])
    hi = np.array([1.0, np.nan, 0.5, 2.0, np.nan])
    binner = NumericBinner(edges_list, lo=lo, hi=hi)
    rows = 300
    batch = np.column_stack([tricky_values(rng, e, rows)[:rows] for e in edges_list] + [rng.normal(size=rows)])
    if dtype is np.int64:
        batch = np.nan_to_num(np.round(batch * 2), nan=0, posinf=5, neginf=-5)
    batch = np.asarray(batch.astype(dtype), order=order)
    columns = np.array([5, 1, 2, 3, 0])  # feature j is batch column columns[j]
    counts, missing = binner.new_counts(), np.zeros(5, dtype=np.int64)
    below, above = np.zeros(5, dtype=np.int64), np.zeros(5, dtype=np.int64)
    binner.count(batch, counts, missing, columns=columns, below=below, above=above)
    exp = binner_reference(batch, edges_list, columns, lo, hi)
    for got, want in zip((counts, missing, below, above), exp):
        np.testing.assert_array_equal(got, want)
    # without a column map, in two halves, without the range check: the same bins
    counts2, missing2 = binner.new_counts(), np.zeros(5, dtype=np.int64)
    sub = np.ascontiguousarray(batch[:, columns])
    binner.count(sub[:100], counts2, missing2)
    binner.count(sub[100:], counts2, missing2)
    np.testing.assert_array_equal(counts2, exp[0])
    np.testing.assert_array_equal(missing2, exp[1])
    # strided views (every other row, reversed columns), counted into rows of a bigger matrix
    view = batch[::2, ::-1]
    vcols = view.shape[1] - 1 - columns
    counts3 = np.zeros((8, binner.max_bins + 2), dtype=np.int64)
    missing3 = np.zeros(8, dtype=np.int64)
    targets = np.array([7, 0, 3, 1, 5])
    binner.count(view, counts3, missing3, columns=vcols, targets=targets)
    exp3 = binner_reference(np.ascontiguousarray(batch[::2]), edges_list, columns, lo, hi)
    np.testing.assert_array_equal(counts3[targets, : binner.max_bins], exp3[0])
    np.testing.assert_array_equal(missing3[targets], exp3[1])
    assert counts3[[2, 4, 6]].sum() == 0 and counts3[:, binner.max_bins :].sum() == 0


def test_numeric_binner_checks():
    binner = NumericBinner([[0.0], [1.0, 2.0]])
    counts, missing = binner.new_counts(), np.zeros(2, dtype=np.int64)
    assert counts.shape == (2, 3)
    with pytest.raises(ValueError):
        binner.count(np.zeros((3, 3)), counts, missing)
    with pytest.raises(ValueError):
        binner.count(np.zeros((3, 2)), np.zeros((2, 2), dtype=np.int64), missing)
    with pytest.raises(ValueError):
        binner.count(np.zeros((3, 2)), counts, missing, columns=[0, 2])
    with pytest.raises(TypeError):
        binner.count(np.array([["a", "b"]]), counts, missing)
    with pytest.raises(ValueError):
        NumericBinner([[1.0, 1.0]])


def test_binner_agrees_with_profile_counts():
    rng = np.random.default_rng(3)
    data = {"a": rng.normal(size=2000), "b": rng.exponential(size=2000)}
    data["a"][::50] = np.nan
    profile = build_profile(data, {}, bins=10)
    binner = NumericBinner([profile["features"][n]["edges"] for n in ("a", "b")])
    counts, missing = binner.new_counts(), np.zeros(2, dtype=np.int64)
    binner.count(np.column_stack([data["a"], data["b"]]), counts, missing)
    for j, n in enumerate(("a", "b")):
        col = profile["features"][n]
        np.testing.assert_array_equal(counts[j, : len(col["counts"])], col["counts"])
        assert missing[j] == col["missing"]


def test_category_index_strings_and_missing():
    index = CategoryIndex(["FR", "DE", "US"])
    assert index.n_bins == 4
    values = ["FR", "DE", "FR", None, "XX", float("nan"), "US", "US", "US", pd.NA, b"DE"]
    out = np.zeros(4, dtype=np.int64)
    assert index.count(values, out) == 3
    np.testing.assert_array_equal(out, [2, 2, 3, 1])
    for container in (np.array(values, dtype=object), pd.Series(values, dtype=object)):
        out2 = np.zeros(4, dtype=np.int64)
        assert index.count(container, out2) == 3
        np.testing.assert_array_equal(out2, out)
    out3 = np.zeros(4, dtype=np.int64)
    assert index.count(np.array(["FR", "YY", "DE"]), out3) == 0  # numpy unicode
    np.testing.assert_array_equal(out3, [1, 1, 0, 1])


def test_category_index_numeric_and_bool():
    # a profile of string categories matched by numeric codes; bool profiles by bool arrays
    index = CategoryIndex(["3", "1", "x", "2.5"])
    out = np.zeros(5, dtype=np.int64)
    assert index.count(np.array([3, 3, 1, 7, 2.5, np.nan, 0]), out) == 1
    np.testing.assert_array_equal(out, [2, 1, 0, 1, 2])
    out_i = np.zeros(5, dtype=np.int64)
    assert index.count(np.array([3, 1, 1, 9], dtype=np.int64), out_i) == 0
    np.testing.assert_array_equal(out_i, [1, 2, 0, 0, 1])
    out_l = np.zeros(5, dtype=np.int64)
    index.count([3, 1, 1, 9], out_l)  # a list goes the dict way: str fallback
    np.testing.assert_array_equal(out_l, out_i)
    b = CategoryIndex([True, False])
    ob = np.zeros(3, dtype=np.int64)
    assert b.count(np.array([True, True, False]), ob) == 0
    np.testing.assert_array_equal(ob, [2, 1, 0])
    ob2 = np.zeros(3, dtype=np.int64)
    b.count([True, None, False, "maybe"], ob2)
    np.testing.assert_array_equal(ob2, [1, 1, 1])


def test_category_index_random_against_dict_reference():
    rng = np.random.default_rng(11)
    top = [f"c{i}" for i in range(10)]
    index = CategoryIndex(top)
    pool = top + ["z1", "z2", None]
    values = [pool[i] for i in rng.integers(0, len(pool), 5000)]
    out = np.zeros(11, dtype=np.int64)
    missing = index.count(values, out)
    expected = np.zeros(11, dtype=np.int64)
    for v in values:
        if v is not None:
            expected[top.index(v) if v in top else 10] += 1
    np.testing.assert_array_equal(out, expected)
    assert missing == sum(v is None for v in values)
