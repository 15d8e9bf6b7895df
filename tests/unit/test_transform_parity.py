"""Parity: a transform over a whole table equals the same transform row by row and over any split
into batches, bit for bit -- for every kernel and every transform of the example repository."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from parity.features.definitions import FeatureRepository, apply_transform
from parity.kernels import bucketize, clip, log1p, min_max_scale, stable_hash, standard_scale

REPO = Path(__file__).resolve().parents[2] / "configs" / "features" / "example_repo.py"
SETTINGS = settings(max_examples=30, derandomize=True, deadline=None, database=None)
MAX_ROWS = 40

# -- column strategies (edge values mixed in on purpose) -----------------------------------------

EDGE_F = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 18.0, 25.0, 0.2, 0.5]
EDGE_F64 = EDGE_F + [5e-324, -5e-324, 1e308, -1e308]
EDGE_F32 = EDGE_F + [1e-45, -1e-45, 3e38, -3e38]


def floats(dtype, n):
    width = 32 if dtype == np.float32 else 64
    edges = [float(dtype(v)) for v in (EDGE_F32 if width == 32 else EDGE_F64)]
    elems = st.one_of(st.floats(width=width, allow_nan=True, allow_infinity=True), st.sampled_from(edges))
    return hnp.arrays(dtype, n, elements=elems)


I64 = np.iinfo(np.int64)


def ints(n, lo=I64.min, hi=I64.max):
    elems = st.one_of(st.integers(lo, hi), st.sampled_from([0, 6, 12, 18, 22, 25, lo, hi]))
    return hnp.arrays(np.int64, n, elements=elems)


def strings(n):
    text = st.one_of(st.text(max_size=12), st.sampled_from(["", "US", "café", "日本", "🙂", "a\x00b"]), st.none())
    return st.lists(text, min_size=n, max_size=n).map(lambda xs: np.array(xs + [0], dtype=object)[:-1])  # keep a 1-D object array


def bits(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind == "f":
        return a.view({8: np.uint64, 4: np.uint32}[a.dtype.itemsize])
    return a


def assert_same_bits(a, b, what=""):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, what
    assert np.array_equal(bits(a), bits(b)), what


@st.composite
def cuts(draw, n):
    """Sorted cut points splitting range(n) into batches."""
    if n <= 1:
        return []
    return sorted(draw(st.sets(st.integers(1, n - 1), max_size=min(n - 1, 8))))


def batches(n: int, cut: list[int]):
    edges = [0, *cut, n]
    return [slice(a, b) for a, b in itertools.pairwise(edges)]


def check_kernel(fn, x, cut):
    whole = fn(x)
    rows = np.concatenate([fn(x[i : i + 1]) for i in range(len(x))]) if len(x) else fn(x[:0])
    split = np.concatenate([fn(x[s]) for s in batches(len(x), cut)]) if len(x) else whole
    assert_same_bits(whole, rows, "row by row")
    assert_same_bits(whole, split, "batches")


# -- every kernel --------------------------------------------------------------------------------

FLOAT_KERNELS = {
    "bucketize": lambda a: bucketize(a, [-1.0, 0.0, 0.2, 18.0, 25.0]),
    "standard_scale": lambda a: standard_scale(a, 0.3, 1.7),
    "standard_scale_zero_std": lambda a: standard_scale(a, 0.3, 0.0),
    "min_max_scale": lambda a: min_max_scale(a, -1.0, 25.0),
    "min_max_scale_clip": lambda a: min_max_scale(a, -1.0, 25.0, clip=True),
    "clip": lambda a: clip(a, -1.0, 0.5),
    "log1p_signed": lambda a: log1p(a),
    "log1p_nan": lambda a: log1p(a, negative="nan"),
}


@pytest.mark.parametrize("kernel", sorted(FLOAT_KERNELS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@SETTINGS
@given(data=st.data())
def test_float_kernels_whole_equals_rows_and_batches(kernel, dtype, data):
    n = data.draw(st.integers(0, MAX_ROWS))
    x = data.draw(floats(dtype, n))
    check_kernel(FLOAT_KERNELS[kernel], x, data.draw(cuts(n)))


INT_KERNELS = {
    "bucketize": lambda a: bucketize(a, [0, 6, 12, 18, 22]),
    "standard_scale": lambda a: standard_scale(a, 3.0, 7.0),
    "min_max_scale": lambda a: min_max_scale(a, 0, 24),
    "clip": lambda a: clip(a, -5, 2**40),
    "log1p": lambda a: log1p(a),
    "stable_hash": lambda a: stable_hash(a, 1009),
}


@pytest.mark.parametrize("kernel", sorted(INT_KERNELS))
@SETTINGS
@given(data=st.data())
def test_int_kernels_whole_equals_rows_and_batches(kernel, data):
    n = data.draw(st.integers(0, MAX_ROWS))
    check_kernel(INT_KERNELS[kernel], data.draw(ints(n)), data.draw(cuts(n)))


@SETTINGS
@given(data=st.data())
def test_string_hash_whole_equals_rows_and_batches(data):
    n = data.draw(st.integers(0, MAX_ROWS))
    x = data.draw(strings(n))
    check_kernel(lambda a: stable_hash(a, 97), x, data.draw(cuts(n)))


# -- every transform of the example repository --------------------------------------------------


@pytest.fixture(scope="module")
def repo() -> FeatureRepository:
    return FeatureRepository.load(REPO)


def _view_columns(name: str):
    """A strategy for (n, the view's input columns) with random values of the source dtypes."""

    @st.composite
    def draw(d):
        n = d(st.integers(0, MAX_ROWS))
        if name == "user_profile":
            cols = {
                "age": d(ints(n, -5, 200)),
                "country": d(strings(n)),
                "signup_days": d(floats(np.float64, n)),
                "txn_count_30d": d(ints(n)),
                "avg_amount_30d": d(floats(np.float32, n)),
            }
        elif name == "merchant_profile":
            cols = {
                "category": d(strings(n)),
                "risk_score": d(floats(np.float64, n)),
                "refund_rate": d(floats(np.float64, n)),
                "daily_volume": d(floats(np.float64, n)),
            }
        else:  # transaction_features: request values and the stored features it reads
            cols = {
                "transaction__amount": d(floats(np.float64, n)),
                "transaction__hour": d(ints(n, -1, 30)),
                "user_profile__avg_amount_z": d(floats(np.float32, n)),
                "merchant_profile__risk_score": d(floats(np.float64, n)),
            }
        return n, cols, d(cuts(n))

    return draw()


def _definition(repo, name):
    return repo.views.get(name) or repo.on_demand[name]


@pytest.mark.parametrize("name", ["user_profile", "merchant_profile", "transaction_features"])
@SETTINGS
@given(data=st.data())
def test_example_transforms_whole_equals_rows_and_batches(repo, name, data):
    view = _definition(repo, name)
    n, cols, cut = data.draw(_view_columns(name))

    def run(sl: slice):
        part = {k: v[sl] for k, v in cols.items()}
        rows = len(range(*sl.indices(n)))
        return apply_transform(view.name, view.transform, part, view.schema, rows)

    whole = run(slice(0, n))
    assert set(whole) == set(view.feature_names)
    per_row = [run(slice(i, i + 1)) for i in range(n)]
    per_batch = [run(s) for s in batches(n, cut)]
    for f in view.schema:
        if n == 0:
            assert len(whole[f.name]) == 0
            continue
        assert_same_bits(whole[f.name], np.concatenate([r[f.name] for r in per_row]), f"{name}.{f.name} row by row")
        assert_same_bits(whole[f.name], np.concatenate([b[f.name] for b in per_batch]), f"{name}.{f.name} batches")
