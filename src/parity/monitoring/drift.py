"""Drift detection on binned counts: a served window's histograms against the reference profile.

Everything here works on *counts* in the profile's bins (``parity.monitoring.profile``), never on
raw values: the request path only adds counts (``parity.kernels.binning``), and a closed window is
tested from its counts alone.

    from parity.monitoring.drift import Counts, DriftConfig, calibrate, evaluate_window

    window = Counts.for_profile(profile)                  # zeros, laid out by the profile
    window.add(features=batch_2d)                         # per batch: [rows, features] in profile order
    window.add(features={"amount": a, "country": c}, outputs={"score": s})   # or by name
    total = Counts.merge_all([w1, w2, w3])                # workers / replicas: counts add
    doc = window.to_dict(); Counts.from_dict(doc, profile)  # JSON, for shipping between processes

    cal = calibrate(profile, window_rows=1000, false_alarm_rate=0.01)   # cached per (profile, size)
    report = evaluate_window(profile, window, cal, DriftConfig(correction="bh"))
    report.drift, report.drifted; json.dumps(report.to_dict(), allow_nan=False)

Columns
-------
A window has one count vector per profile column: every feature, then every output (``part`` is
``"features"`` or ``"outputs"``).  A numeric column has ``len(edges) + 1`` bins (the profile rule:
a value's bin is the number of edges <= value; NaN is missing), a categorical one ``len(top) + 1``
bins (the top values in the profile's order, then "other").  Missing values are counted apart and
take no part in the drift statistics; numeric columns also count values below the training ``min``
and above the training ``max``.

Drift statistics (per column; reference counts ``R`` with total ``N``, window counts ``C`` with
total ``n``, proportions ``p = R / N`` and ``q = C / n``)
------------------------------------------------------------------------------------------------
- ``psi``: population stability index ``sum((q - p) * ln(q / p))`` with both proportions floored at
  ``PSI_EPSILON = 1e-4`` (an empty bin would otherwise make it infinite; 1e-4 is a tenth of the
  smallest proportion a 1,000-row window can show, so it caps one empty bin's term at about
  ``q * ln(q / 1e-4)``).
- ``js``: Jensen-Shannon *distance* with base-2 logarithms (``sqrt`` of the divergence; in
  ``[0, 1]``), ``0 * log 0 = 0`` so no epsilon is needed (equals
  ``scipy.spatial.distance.jensenshannon(p, q, base=2)``).
- ``chi2``: the chi-square test of homogeneity of the 2 x k table ``[R; C]`` (two samples: the
  reference is a sample too), without continuity correction.  Bins empty in both are dropped (their
  expected count is 0); ``dof`` = non-empty bins - 1.  ``p_value_asymptotic`` is the chi-square
  distribution's tail (equals ``scipy.stats.chi2_contingency(..., correction=False)``); it is poor
  when expected counts are small, which is why alarms use the calibrated p-value instead.
- ``ks`` (numeric columns only; categories have no order): the largest difference of the two
  *binned* CDFs, evaluated at the bin edges.  ``p_value_asymptotic`` uses the two-sample KS
  distribution with effective size ``n_eff = N * n / (N + n)`` in its large-sample (Kolmogorov)
  form, ``scipy.special.kolmogorov(sqrt(n_eff) * D)`` (= ``scipy.stats.kstwobign.sf``; the finite-n
  ``kstwo`` is 300x slower and differs by < 0.01 at these sizes).  It is approximate on binned data: the
  binned D is at most the raw D (the CDFs are only compared at the edges) and the data are discrete,
  so this p-value is conservative.

Calibration (``calibrate``)
---------------------------
Thresholds are calibrated, not guessed.  For each column the null hypothesis "the window comes from
the reference distribution" is simulated ``simulations`` times: a reference sample
``R* ~ Multinomial(N, p)`` and a window ``C* ~ Multinomial(n, p)`` with ``p`` the profile's bin
proportions, ``N`` the profile's non-missing count and ``n = round(window_rows * (1 - missing_rate))``;
each statistic is computed on ``(R*, C*)``.  Simulating the reference too accounts for the
reference being a finite sample (a window is compared with the profile's *counts*, not with the
true distribution).  Each statistic is stored *normalised* by the effective size
``n_eff = N n / (N + n)`` (``psi * n_eff``, ``js^2 * n_eff``, ``chi2``, ``ks * sqrt(n_eff)``; all
roughly size-free under the null), so a window of another size (a time window) is still tested
approximately right; at the calibrated size it is exact up to simulation error.

A window's statistic gets an empirical p-value from its column's null sample,
``(1 + #{null >= observed}) / (simulations + 1)`` -- a valid p-value whatever the statistic's
distribution.  ``thresholds[column][statistic]`` is the ``(1 - level)`` quantile of the null in
raw units at the calibrated size, for ``level = false_alarm_rate`` (``"uncorrected"``) and
``false_alarm_rate / m`` (``"bonferroni"``), ``m`` the number of tests of a window.

Combining many tests (``DriftConfig.correction``)
-------------------------------------------------
A window runs ``m`` tests (each column x each configured statistic that applies).  The window alarms
when at least one test is rejected after the correction, so the *window's* false-alarm rate is the
configured one:

- ``"bonferroni"``: reject a test when its p-value <= rate / m.  Family-wise error <= rate under
  any dependence (conservative: the statistics of one column are strongly correlated).
- ``"bh"`` (default): Benjamini-Hochberg at level rate.  Under the global null (no drift anywhere)
  any rejection is a false discovery, so P(window alarm) = FDR <= rate for independent or positively
  dependent tests; with drift it rejects more than Bonferroni.
- ``"none"``: reject at p <= rate per test (the window false-alarm rate is then up to m x rate).

``calibrate`` raises ``simulations`` to at least ``ceil(2 m / rate)`` so that the smallest
attainable p-value, ``1 / (simulations + 1)``, is below ``rate / m``.

Data quality (``WindowReport.columns[i]["data_quality"]``; never part of the drift alarm)
-------------------------------------------------------------------------------------------
- ``missing_rate``: the window's rate against the profile's, two-proportion z-test (pooled); flagged
  when its p-value < ``dq_alpha / columns`` and the absolute change >= ``missing_rate_min_change``.
- ``outside_range`` (numeric): the share of present values outside the training ``[min, max]``.
  A fresh value from the training distribution falls outside a sample's range with probability
  ``2 / (N + 1)`` (continuous data); flagged when the binomial tail p-value of the observed count
  under that rate < ``dq_alpha / columns``.
- ``unseen`` (categorical): when the profile's top values covered the whole reference (``other ==
  0``), every "other" value in the window is a category never seen in training; its share is
  flagged when > ``unseen_share_threshold``.  When the reference had "other" values, unseen values
  cannot be told from them by counts: reported as null.

Report
------
``evaluate_window`` returns a ``WindowReport``; ``to_monitoring_dict()`` gives it in the shape of
the monitoring document (``parity.monitoring.report``: ``"features"``/``"outputs"`` by name, with
reference and current counts, for the HTML report, the alerts and ``GET /v1/monitoring``);
``to_dict()`` is the full detail.  Both are strict JSON (no NaN, infinities as null): overall
``drift`` (bool), ``drifted`` ("part/name" keys), ``drifted_features``, ``drifted_outputs``,
``data_quality`` flags, and per column the statistics (value, normalised value, threshold for this
window, p-value, asymptotic p-value where one exists, alarm) and the data-quality checks.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

import numpy as np
from numba import njit
from scipy import special

from parity.kernels.binning import CategoryIndex, NumericBinner, WindowBinner

STATISTICS = ("psi", "js", "chi2", "ks")
PSI_EPSILON = 1e-4
CORRECTIONS = ("bh", "bonferroni", "none")
COUNTS_VERSION = 1


# --------------------------------------------------------------------------- profile layout


def profile_hash(profile: Mapping) -> str:
    """sha256 of the profile's canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(profile, sort_keys=True, allow_nan=False).encode()).hexdigest()


class Layout:
    """The columns of a profile and how to count them (prepared once per profile)."""

    def __init__(self, profile: Mapping):
        self.hash = profile_hash(profile)
        self.columns: list[tuple[str, str]] = []
        self.kinds: list[str] = []
        self.col_profiles: list[Mapping] = []
        for part, names_key in (("features", "feature_names"), ("outputs", "output_names")):
            names = profile.get(names_key) or list(profile.get(part, {}))
            for name in names:
                self.columns.append((part, name))
                self.kinds.append(profile[part][name]["kind"])
                self.col_profiles.append(profile[part][name])
        self.index = {c: i for i, c in enumerate(self.columns)}
        self.keys = [f"{p}/{n}" for p, n in self.columns]
        self.nbins = np.array(
            [len(cp["edges"]) + 1 if k == "numeric" else len(cp["top"]) + 1 for k, cp in zip(self.kinds, self.col_profiles)],
            dtype=np.int64,
        )
        self.max_bins = int(self.nbins.max()) if len(self.nbins) else 1
        self.ref_counts = np.zeros((len(self.columns), self.max_bins), dtype=np.int64)
        for i, (k, cp) in enumerate(zip(self.kinds, self.col_profiles)):
            c = cp["counts"] if k == "numeric" else [t["count"] for t in cp["top"]] + [cp["other"]]
            self.ref_counts[i, : len(c)] = c
        self.ref_counts_f = np.ascontiguousarray(self.ref_counts, dtype=np.float64)
        self.ref_missing = np.array([cp["missing"] for cp in self.col_profiles], dtype=np.int64)
        self.ref_rows = np.array([cp["rows"] for cp in self.col_profiles], dtype=np.int64)
        # one binner per part over its numeric columns, category indexes for the rest
        self.part_cols: dict[str, list[int]] = {"features": [], "outputs": []}
        for i, (part, _) in enumerate(self.columns):
            self.part_cols[part].append(i)
        self.binners: dict[str, tuple[NumericBinner, np.ndarray, np.ndarray]] = {}
        self.identity: dict[str, np.ndarray] = {}
        for part, idx in self.part_cols.items():
            num = [i for i in idx if self.kinds[i] == "numeric"]
            cps = [self.col_profiles[i] for i in num]
            binner = NumericBinner([cp["edges"] for cp in cps], lo=[cp["min"] for cp in cps], hi=[cp["max"] for cp in cps])
            # position of each numeric column within the part (batch column) and within the layout
            pos_in_part = np.array([idx.index(i) for i in num], dtype=np.int64)
            self.binners[part] = (binner, pos_in_part, np.array(num, dtype=np.int64))
            self.identity[part] = np.arange(len(num), dtype=np.int64)
        self.numeric = np.array([k == "numeric" for k in self.kinds], dtype=bool)
        self.is_feature = np.array([p == "features" for p, _ in self.columns], dtype=bool)
        self.has_range = np.array(
            [k == "numeric" and cp.get("min") is not None for k, cp in zip(self.kinds, self.col_profiles)], dtype=bool
        )
        self.unseen_applies = np.array(
            [k == "categorical" and cp["other"] == 0 for k, cp in zip(self.kinds, self.col_profiles)], dtype=bool
        )
        self.has_range_list = self.has_range.tolist()
        self.unseen_list = self.unseen_applies.tolist()
        self.ref_missing_list = self.ref_missing.tolist()
        self.ref_rows_list = self.ref_rows.tolist()
        self._masks: dict[tuple, np.ndarray] = {}
        self._single: dict[int, NumericBinner] = {}
        self.categories = {
            i: CategoryIndex([t["value"] for t in cp["top"]])
            for i, cp in enumerate(self.col_profiles)
            if self.kinds[i] == "categorical"
        }
        # every column of a window in one compiled pass (numeric 2-D batches): features source 0,
        # outputs source 1, each column at its position within its part
        self.window_binner = WindowBinner([
            (0 if part == "features" else 1, self.part_cols[part].index(i),
             ("numeric", cp["edges"], cp.get("min"), cp.get("max")) if self.kinds[i] == "numeric"
             else ("categorical", self.categories[i]))
            for i, ((part, _), cp) in enumerate(zip(self.columns, self.col_profiles))
        ])  # fmt: skip
        self.part_width = {part: len(idx) for part, idx in self.part_cols.items()}

    def testable_mask(self, statistics: tuple[str, ...], include_outputs: bool) -> np.ndarray:
        """[columns, 4] bool: which (column, statistic) tests a window runs (ks on numeric only)."""
        key = (tuple(statistics), bool(include_outputs))
        mask = self._masks.get(key)
        if mask is None:
            mask = np.zeros((len(self.columns), len(STATISTICS)), dtype=bool)
            for k, s in enumerate(STATISTICS):
                if s in statistics:
                    mask[:, k] = self.numeric if s == "ks" else True
            if not include_outputs:
                mask[~self.is_feature] = False
            mask.flags.writeable = False
            self._masks[key] = mask
        return mask

    def single_binner(self, i: int) -> NumericBinner:
        """A one-column binner of numeric column `i` (made once)."""
        b = self._single.get(i)
        if b is None:
            cp = self.col_profiles[i]
            b = self._single[i] = NumericBinner([cp["edges"]], lo=[cp["min"]], hi=[cp["max"]])
        return b


_LAYOUTS: OrderedDict[str, Layout] = OrderedDict()
_LOCK = threading.Lock()


_BY_ID: OrderedDict[int, tuple[Mapping, Layout]] = OrderedDict()


def layout_for(profile: Mapping) -> Layout:
    """The (cached) layout of a profile.  A profile object is looked up by identity first (no
    re-hashing per batch), so treat a loaded profile as immutable."""
    hit = _BY_ID.get(id(profile))
    if hit is not None and hit[0] is profile:
        return hit[1]
    lay = _layout_by_hash(profile)
    with _LOCK:
        _BY_ID[id(profile)] = (profile, lay)  # holding the profile keeps its id from being reused
        while len(_BY_ID) > 64:
            _BY_ID.popitem(last=False)
    return lay


def _layout_by_hash(profile: Mapping) -> Layout:
    h = profile_hash(profile)
    with _LOCK:
        lay = _LAYOUTS.get(h)
        if lay is not None:
            _LAYOUTS.move_to_end(h)
            return lay
    lay = Layout(profile)
    with _LOCK:
        _LAYOUTS[h] = lay
        while len(_LAYOUTS) > 64:
            _LAYOUTS.popitem(last=False)
    return lay


# --------------------------------------------------------------------------- mergeable counts


class Counts:
    """A window's counts: per column (profile features, then outputs) the bin counts
    (``bins[c, :nbins[c]]``), ``missing``, ``below``/``above`` the training range, and the window's
    ``rows``.  Counts of the same profile merge by addition (associative, commutative).

    Not thread-safe: the kernels release the GIL, so two threads adding into one ``Counts`` at once
    can lose counts.  Give each thread (worker, replica) its own and ``merge`` them, or hold a lock
    around ``add``."""

    def __init__(self, layout: Layout):
        self.layout = layout
        c = len(layout.columns)
        self.bins = np.zeros((c, layout.max_bins), dtype=np.int64)
        self.missing = np.zeros(c, dtype=np.int64)
        self.below = np.zeros(c, dtype=np.int64)
        self.above = np.zeros(c, dtype=np.int64)
        self.rows = 0

    @classmethod
    def for_profile(cls, profile: Mapping) -> Counts:
        return cls(layout_for(profile))

    # -- counting
    def add(self, features: Any = None, outputs: Any = None) -> None:
        """Count one batch.  `features` / `outputs`: a 2-D array ``[rows, columns]`` in the
        profile's column order (numeric columns in one compiled pass; a categorical column of a
        numeric array is counted by value), or a mapping name -> 1-D column (missing names are
        not counted: their counts stay as they are).  ``rows`` grows by the batch's row count."""
        fast = self._add_fast(features, outputs)
        if fast is not None:
            self.rows += fast
            return
        rows = None
        for part, data in (("features", features), ("outputs", outputs)):
            if data is None:
                continue
            r = self._add_part(part, data)
            rows = r if rows is None else rows
            if r != rows:
                raise ValueError(f"Counts.add: features have {rows} rows, outputs {r}")
        self.rows += rows or 0

    def _add_fast(self, features: Any, outputs: Any) -> int | None:
        """Both parts numeric 2-D arrays (or absent): every column in one compiled pass and the row
        count; None when the general path must run (mappings, object arrays, shape errors)."""
        lay = self.layout
        arrs = []
        rows = None
        for part, data in (("features", features), ("outputs", outputs)):
            if data is None:
                arrs.append(None)
                continue
            if type(data) is not np.ndarray or data.dtype.kind not in "biuf":
                return None
            w = lay.part_width[part]
            if data.ndim == 1 and w == 1:
                data = data.reshape(-1, 1)
            if data.ndim != 2 or data.shape[1] != w:
                return None
            if data.dtype != np.float64 and data.dtype != np.float32:
                data = data.astype(np.float64)
            if rows is not None and data.shape[0] != rows:
                return None
            rows = data.shape[0]
            arrs.append(data)
        if rows is None:
            return None
        a0, a1 = arrs
        if a0 is None or a1 is None:  # an absent part: only the given part's columns are counted
            return None
        if a0.dtype != a1.dtype:  # one kernel signature per dtype: float32 -> float64 is exact
            a0, a1 = a0.astype(np.float64), a1.astype(np.float64)
        lay.window_binner.count(a0, a1, self.bins, self.missing, self.below, self.above)
        return rows

    def _add_part(self, part: str, data: Any) -> int:
        lay = self.layout
        idx = lay.part_cols[part]
        if isinstance(data, Mapping):
            n = None
            for name, values in data.items():
                i = lay.index.get((part, name))
                if i is None:
                    raise KeyError(f"Counts.add: {part} column {name!r} is not in the profile")
                self.add_column(part, name, values)
                k = len(values)
                if n is not None and k != n:
                    raise ValueError(f"Counts.add: {part} columns differ in length ({n} and {k})")
                n = k
            return n or 0
        arr = np.asarray(data)
        if arr.ndim == 1 and len(idx) == 1:
            arr = arr.reshape(-1, 1)
        if arr.ndim != 2 or arr.shape[1] != len(idx):
            raise ValueError(f"Counts.add: {part} must be [rows, {len(idx)}] in profile order, got shape {list(arr.shape)}")
        binner, pos, num = lay.binners[part]
        if binner.n_features:
            if arr.dtype.kind not in "biuf":
                arr_num, cols = arr[:, pos].astype(np.float64), lay.identity[part]
            else:
                arr_num, cols = arr, pos
            if arr_num.dtype != np.float64 and arr_num.dtype != np.float32:
                arr_num = arr_num.astype(np.float64)
            # straight into the window's rows: one compiled pass, no temporaries; the layout's
            # index arrays and this window's matrices were validated when they were made
            binner.count_unchecked(arr_num, self.bins, self.missing, self.below, self.above, cols, num, True)
        for j, i in enumerate(idx):
            if lay.kinds[i] == "categorical":
                self._add_categorical(i, arr[:, j])
        return arr.shape[0]

    def add_column(self, part: str, name: str, values: Any) -> None:
        """Count one column's values (does not change ``rows``)."""
        i = self.layout.index[(part, name)]
        if self.layout.kinds[i] == "categorical":
            self._add_categorical(i, values)
            return
        arr = np.asarray(values)
        if arr.dtype.kind not in "biuf":
            arr = np.array([np.nan if v is None else float(v) for v in arr.reshape(-1)], dtype=np.float64)
        sub = self.layout.single_binner(i)
        b = sub.new_counts()
        m, lo, hi = (np.zeros(1, dtype=np.int64) for _ in range(3))
        sub.count(arr.reshape(-1, 1), b, m, below=lo, above=hi)
        self.bins[i, : b.shape[1]] += b[0]
        self.missing[i] += m[0]
        self.below[i] += lo[0]
        self.above[i] += hi[0]

    def _add_categorical(self, i: int, values: Any) -> None:
        out = np.zeros(int(self.layout.nbins[i]), dtype=np.int64)
        self.missing[i] += self.layout.categories[i].count(values, out)
        self.bins[i, : len(out)] += out

    # -- merging
    def _check_same(self, other: Counts) -> None:
        if self.layout.hash != other.layout.hash:
            raise ValueError("Counts.merge: the windows were counted against different profiles")

    def merge(self, other: Counts) -> Counts:
        """A new Counts holding the sum of both."""
        self._check_same(other)
        out = Counts(self.layout)
        out.bins = self.bins + other.bins
        out.missing = self.missing + other.missing
        out.below = self.below + other.below
        out.above = self.above + other.above
        out.rows = self.rows + other.rows
        return out

    def __iadd__(self, other: Counts) -> Self:
        self._check_same(other)
        self.bins += other.bins
        self.missing += other.missing
        self.below += other.below
        self.above += other.above
        self.rows += other.rows
        return self

    @staticmethod
    def merge_all(windows: Sequence[Counts]) -> Counts:
        if not windows:
            raise ValueError("Counts.merge_all: no windows")
        out = windows[0].copy()
        for w in windows[1:]:
            out += w
        return out

    def copy(self) -> Counts:
        return self.merge(Counts(self.layout))

    def reset(self) -> None:
        for a in (self.bins, self.missing, self.below, self.above):
            a[...] = 0
        self.rows = 0

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Counts) and self.layout.hash == other.layout.hash and self.rows == other.rows
                and all(np.array_equal(a, b) for a, b in zip(self._arrays(), other._arrays())))  # fmt: skip

    def _arrays(self):
        return (self.bins, self.missing, self.below, self.above)

    # -- access and JSON
    def column_counts(self, part: str, name: str) -> np.ndarray:
        i = self.layout.index[(part, name)]
        return self.bins[i, : self.layout.nbins[i]].copy()

    def to_dict(self) -> dict:
        """``{"version", "profile_hash", "rows", "columns": {"part/name": {"counts", "missing",
        "below", "above"}}}``: plain JSON."""
        lay = self.layout
        return {
            "version": COUNTS_VERSION,
            "profile_hash": lay.hash,
            "rows": int(self.rows),
            "columns": {
                key: {
                    "counts": [int(x) for x in self.bins[i, : lay.nbins[i]]],
                    "missing": int(self.missing[i]),
                    "below": int(self.below[i]),
                    "above": int(self.above[i]),
                }
                for i, key in enumerate(lay.keys)
            },
        }

    @classmethod
    def from_dict(cls, doc: Mapping, profile: Mapping) -> Counts:
        lay = layout_for(profile)
        if doc.get("profile_hash") != lay.hash:
            raise ValueError("Counts.from_dict: the counts were made against another profile")
        out = cls(lay)
        out.rows = int(doc["rows"])
        for i, key in enumerate(lay.keys):
            col = doc["columns"][key]
            c = np.asarray(col["counts"], dtype=np.int64)
            if c.shape != (lay.nbins[i],):
                raise ValueError(f"Counts.from_dict: {key} has {len(c)} bins, the profile {lay.nbins[i]}")
            out.bins[i, : len(c)] = c
            out.missing[i], out.below[i], out.above[i] = col["missing"], col["below"], col["above"]
        return out


Window = Counts  # the name the issue uses


# --------------------------------------------------------------------------- statistics

_STAT_INDEX = {s: k for k, s in enumerate(STATISTICS)}


@njit(cache=True, nogil=True)
def _window_stats(r, c, eps, stats, dof, nr_out, nc_out, ne_out):
    # one pass per row over the bins: psi, js, chi2, ks (see the module docstring for each)
    rows, k = r.shape
    for i in range(rows):
        nr = 0.0
        nc = 0.0
        for b in range(k):
            nr += r[i, b]
            nc += c[i, b]
        nr_out[i] = nr
        nc_out[i] = nc
        if nr <= 0.0 or nc <= 0.0:
            for s in range(4):
                stats[i, s] = 0.0
            dof[i] = -1
            ne_out[i] = 0.0
            continue
        psi = 0.0
        js = 0.0
        chi = 0.0
        ks = 0.0
        fp = 0.0
        fq = 0.0
        nonzero = 0
        for b in range(k):
            p = r[i, b] / nr
            q = c[i, b] / nc
            pe = max(p, eps)
            qe = max(q, eps)
            psi += (qe - pe) * np.log(qe / pe)
            m = 0.5 * (p + q)
            if p > 0.0:
                js += p * np.log2(p / m)
            if q > 0.0:
                js += q * np.log2(q / m)
            t = r[i, b] + c[i, b]
            if t > 0.0:
                d = r[i, b] * nc - c[i, b] * nr
                chi += d * d / t
                nonzero += 1
            if b < k - 1:
                fp += p
                fq += q
                ks = max(ks, abs(fp - fq))
        stats[i, 0] = psi
        stats[i, 1] = np.sqrt(max(0.5 * js, 0.0))
        stats[i, 2] = chi / (nr * nc)
        stats[i, 3] = ks
        dof[i] = nonzero - 1
        ne_out[i] = nr * nc / (nr + nc)


def _stats_matrix(ref, cur) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(stats [rows, 4] in STATISTICS order, chi2 dof [rows], ref totals, cur totals, n_eff) of count
    matrices ``ref`` and ``cur`` ``[rows, bins]`` (or one vector each; broadcast).  Zero padding past
    a row's last bin changes none of the statistics.  One compiled pass (``_window_stats``)."""
    r = np.asarray(ref, dtype=np.float64)
    c = np.asarray(cur, dtype=np.float64)
    r = r.reshape(1, -1) if r.ndim == 1 else r
    c = c.reshape(1, -1) if c.ndim == 1 else c
    if r.shape != c.shape:
        r, c = (np.ascontiguousarray(a) for a in np.broadcast_arrays(r, c))
    rows = r.shape[0]
    stats = np.empty((rows, 4))
    dof = np.empty(rows, dtype=np.int64)
    nr, nc, ne = np.empty(rows), np.empty(rows), np.empty(rows)
    _window_stats(r, c, PSI_EPSILON, stats, dof, nr, nc, ne)
    return stats, dof, nr, nc, ne


def _normalise(stats: np.ndarray, n_eff: np.ndarray) -> np.ndarray:
    """[rows, 4] raw -> normalised: psi * n_eff, js^2 * n_eff, chi2, ks * sqrt(n_eff)."""
    ne = np.asarray(n_eff, dtype=np.float64)
    return np.stack([stats[:, 0] * ne, stats[:, 1] ** 2 * ne, stats[:, 2], stats[:, 3] * np.sqrt(ne)], axis=1)


def _raw(stat: str, norm: float, n_eff: float) -> float:
    if not math.isfinite(norm) or n_eff <= 0:
        return norm
    if stat == "psi":
        return norm / n_eff
    if stat == "js":
        return math.sqrt(max(norm, 0.0) / n_eff)
    if stat == "chi2":
        return norm
    return norm / math.sqrt(n_eff)


def psi(ref, cur, eps: float = PSI_EPSILON) -> float:
    """Population stability index of two count (or proportion) vectors (see the module docstring)."""
    if eps != PSI_EPSILON:
        p = np.maximum(np.asarray(ref, float) / np.sum(ref), eps)
        q = np.maximum(np.asarray(cur, float) / np.sum(cur), eps)
        return float(((q - p) * np.log(q / p)).sum())
    return float(_stats_matrix(ref, cur)[0][0, 0])


def js_distance(ref, cur) -> float:
    """Jensen-Shannon distance, base 2."""
    return float(_stats_matrix(ref, cur)[0][0, 1])


def chi2_test(ref, cur) -> tuple[float, int, float]:
    """(statistic, dof, asymptotic p-value) of the chi-square homogeneity test of two count vectors."""
    s, d, *_ = _stats_matrix(ref, cur)
    stat, dof = float(s[0, 2]), int(d[0])
    return stat, dof, float(special.chdtrc(dof, stat)) if dof > 0 else 1.0


def ks_binned(ref, cur) -> tuple[float, float]:
    """(D, approximate p-value): the two-sample KS statistic of the binned CDFs, p from the
    two-sample KS distribution's limit with effective size ``n_eff = N n / (N + n)``:
    ``kolmogorov(sqrt(n_eff) * D)`` (approximate on binned data; conservative)."""
    s, _, _, _, ne = _stats_matrix(ref, cur)
    d = float(s[0, 3])
    return d, float(special.kolmogorov(math.sqrt(ne[0]) * d)) if ne[0] > 0 else 1.0


@njit(cache=True, nogil=True)
def _count_ge(null, obs, out):
    # per row r: the number of null[r, :] (sorted ascending) >= obs[r] - tolerance
    s = null.shape[1]
    for r in range(null.shape[0]):
        v = obs[r]
        v = v - 1e-9 * max(1.0, abs(v))
        lo = 0
        hi = s
        while lo < hi:
            mid = (lo + hi) >> 1
            if null[r, mid] < v:
                lo = mid + 1
            else:
                hi = mid
        out[r] = s - lo


_CORRECTION_CODE = {"bh": 0, "bonferroni": 1, "none": 2}


@njit(cache=True, nogil=True)
def _verdict(ref, cur, eps, null, mask, correction, alpha):
    # A window's whole verdict in one compiled call: the statistics (`_window_stats`, reading the
    # int64 counts directly: every count converts to float64 exactly, so the arithmetic is that of
    # `_stats_matrix`), normalised as `_normalise`, calibrated p-values as `Calibration.p_values`
    # (`_count_ge`), the testable tests (`mask` and both sides non-empty) and the correction as
    # `benjamini_hochberg` / `bonferroni` / "none" (same comparisons, same order of operations).
    rows = ref.shape[0]
    ns = null.shape[1]
    s = null.shape[2]
    stats = np.empty((rows, 4))
    dof = np.empty(rows, dtype=np.int64)
    nr = np.empty(rows)
    nc = np.empty(rows)
    ne = np.empty(rows)
    _window_stats(ref, cur, eps, stats, dof, nr, nc, ne)
    norm = np.empty((rows, 4))
    pvals = np.empty((rows, ns))
    testable = np.zeros((rows, ns), dtype=np.bool_)
    m = 0
    for i in range(rows):
        norm[i, 0] = stats[i, 0] * ne[i]
        norm[i, 1] = (stats[i, 1] * stats[i, 1]) * ne[i]
        norm[i, 2] = stats[i, 2]
        norm[i, 3] = stats[i, 3] * np.sqrt(ne[i])
        ok = nr[i] > 0 and nc[i] > 0
        for k in range(ns):
            v = norm[i, k]
            v = v - 1e-9 * max(1.0, abs(v))
            lo = 0
            hi = s
            while lo < hi:
                mid = (lo + hi) >> 1
                if null[i, k, mid] < v:
                    lo = mid + 1
                else:
                    hi = mid
            pvals[i, k] = (1 + (s - lo)) / (s + 1)
            if mask[i, k] and ok:
                testable[i, k] = True
                m += 1
    p = np.empty(m)
    q = 0
    for i in range(rows):
        for k in range(ns):
            if testable[i, k]:
                p[q] = pvals[i, k]
                q += 1
    last = -1
    if correction == 0:
        if m == 0:
            level = alpha
        else:
            order = np.sort(p)
            for r in range(m):
                if order[r] <= alpha * (r + 1) / m:
                    last = r
            level = alpha / m if last < 0 else order[last]
    elif correction == 1:
        level = alpha / max(1, m)
    else:
        level = alpha
    alarms = np.zeros((rows, ns), dtype=np.bool_)
    col_alarm = np.zeros(rows, dtype=np.bool_)
    nothing = correction == 0 and m > 0 and last < 0
    for i in range(rows):
        for k in range(ns):
            if testable[i, k] and not nothing and pvals[i, k] <= level:
                alarms[i, k] = True
                col_alarm[i] = True
    return stats, dof, nr, nc, ne, norm, pvals, testable, p, alarms, col_alarm, level


# --------------------------------------------------------------------------- calibration


@dataclass
class DriftConfig:
    """How a window is judged (the false-alarm rate itself comes from the calibration)."""

    correction: str = "bh"  # "bh" | "bonferroni" | "none"
    statistics: tuple[str, ...] = STATISTICS
    include_outputs: bool = True
    dq_alpha: float = 0.01
    missing_rate_min_change: float = 0.01
    unseen_share_threshold: float = 0.001

    def __post_init__(self):
        if self.correction not in CORRECTIONS:
            raise ValueError(f"DriftConfig.correction must be one of {CORRECTIONS}, not {self.correction!r}")
        self.statistics = tuple(self.statistics)
        bad = [s for s in self.statistics if s not in STATISTICS]
        if bad or not self.statistics:
            raise ValueError(f"DriftConfig.statistics must be a non-empty subset of {STATISTICS}, not {self.statistics!r}")


@dataclass
class Calibration:
    """Simulated null distributions of the normalised statistics: ``null[column, statistic, :]``
    sorted ascending (columns in the layout's order, statistics in ``STATISTICS`` order; the ``ks``
    row of a categorical column is unused), and the thresholds derived from them."""

    profile_hash: str
    window_rows: int
    false_alarm_rate: float
    simulations: int
    seed: int
    max_tests: int
    keys: list[str]
    n_eff: np.ndarray = field(repr=False)
    null: np.ndarray = field(repr=False)
    thresholds: dict[str, dict[str, dict[str, float | None]]] = field(default_factory=dict, repr=False)

    def p_values(self, normalised: np.ndarray) -> np.ndarray:
        """Empirical p-values ``(1 + #{null >= x}) / (S + 1)`` of normalised statistics ``[columns, 4]``."""
        c, k, s = self.null.shape
        obs = np.ascontiguousarray(normalised, dtype=np.float64).reshape(-1)
        ge = np.empty(c * k, dtype=np.int64)
        _count_ge(self.null.reshape(c * k, s), obs, ge)
        return ((1 + ge) / (s + 1)).reshape(c, k)

    def p_value(self, key: str, stat: str, normalised: float) -> float:
        i, k = self.keys.index(key), _STAT_INDEX[stat]
        ge = np.empty(1, dtype=np.int64)
        _count_ge(self.null[i, k].reshape(1, -1), np.array([float(normalised)]), ge)
        return float((1 + ge[0]) / (self.simulations + 1))

    def thresholds_at(self, level: float) -> np.ndarray:
        """Normalised thresholds ``[columns, 4]`` a statistic must exceed for its p-value to be
        <= level (``inf`` when no value can reach that level with these simulations)."""
        s = self.simulations
        r = math.floor(level * (s + 1) + 1e-9) - 1  # at most r null values may be >= the statistic
        if r < 0:
            return np.full(self.null.shape[:2], np.inf)
        if r >= s:
            return np.full(self.null.shape[:2], -np.inf)
        return self.null[:, :, s - r - 1].copy()

    def to_dict(self) -> dict:
        """The thresholds (raw units at the calibrated window size), without the null samples."""
        return {"profile_hash": self.profile_hash, "window_rows": self.window_rows, "false_alarm_rate": self.false_alarm_rate,
                "simulations": self.simulations, "seed": self.seed, "max_tests": self.max_tests,
                "thresholds": _jsonable(self.thresholds)}  # fmt: skip


_CALIBRATIONS: OrderedDict[tuple, Calibration] = OrderedDict()


def calibrate(profile: Mapping, window_rows: int, false_alarm_rate: float = 0.01, simulations: int = 2000,
              seed: int = 0, max_tests: int | None = None) -> Calibration:  # fmt: skip
    """Simulate `simulations` no-drift windows of `window_rows` rows per column (see the module
    docstring) and return the null distributions and thresholds.  Cached per (profile hash,
    window_rows, rate, simulations, seed).  `simulations` is raised to ``ceil(2 m / rate)`` where
    ``m`` (`max_tests`, default: columns x 4 statistics) bounds the tests of a window."""
    if not isinstance(window_rows, int) or isinstance(window_rows, bool) or window_rows < 1:
        raise ValueError(f"calibrate: window_rows must be a positive integer, not {window_rows!r}")
    if not 0 < false_alarm_rate < 1:
        raise ValueError(f"calibrate: false_alarm_rate must be in (0, 1), not {false_alarm_rate!r}")
    lay = layout_for(profile)
    m = int(max_tests) if max_tests is not None else max(1, len(lay.columns) * len(STATISTICS))
    sims = max(int(simulations), math.ceil(2 * m / false_alarm_rate))
    key = (lay.hash, window_rows, float(false_alarm_rate), sims, int(seed), m)
    with _LOCK:
        cal = _CALIBRATIONS.get(key)
        if cal is not None:
            _CALIBRATIONS.move_to_end(key)
            return cal
    rng = np.random.default_rng(seed)
    ncol = len(lay.columns)
    null = np.zeros((ncol, len(STATISTICS), sims), dtype=np.float64)
    n_effs = np.zeros(ncol)
    for i in range(ncol):
        nb = int(lay.nbins[i])
        ref = lay.ref_counts[i, :nb]
        nr = int(ref.sum())
        miss_rate = lay.ref_missing[i] / lay.ref_rows[i] if lay.ref_rows[i] else 0.0
        nc = round(window_rows * (1.0 - miss_rate))
        n_effs[i] = nr * nc / (nr + nc) if nr > 0 and nc > 0 else 0.0
        if nr == 0 or nc == 0:
            continue
        p = ref / nr
        r_sim = rng.multinomial(nr, p, size=sims)
        c_sim = rng.multinomial(nc, p, size=sims)
        raw = _stats_matrix(r_sim, c_sim)[0]
        # normalise by the nominal n_eff (what a window of exactly this size would have)
        null[i] = np.sort(_normalise(raw, np.full(sims, n_effs[i])).T, axis=1)
        if lay.kinds[i] != "numeric":
            null[i, _STAT_INDEX["ks"]] = 0.0
    cal = Calibration(lay.hash, window_rows, float(false_alarm_rate), sims, int(seed), m, list(lay.keys), n_effs, null)
    unc, bon = cal.thresholds_at(false_alarm_rate), cal.thresholds_at(false_alarm_rate / m)
    for i, k in enumerate(lay.keys):
        stats = STATISTICS if lay.kinds[i] == "numeric" else STATISTICS[:3]
        cal.thresholds[k] = {s: {"uncorrected": _raw(s, float(unc[i, j]), n_effs[i]), "bonferroni": _raw(s, float(bon[i, j]), n_effs[i])}
                             for j, s in enumerate(STATISTICS) if s in stats}  # fmt: skip
    with _LOCK:
        _CALIBRATIONS[key] = cal
        while len(_CALIBRATIONS) > 32:
            _CALIBRATIONS.popitem(last=False)
    return cal


# --------------------------------------------------------------------------- evaluation


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else None
    return x


def benjamini_hochberg(p_values: Sequence[float], alpha: float) -> tuple[np.ndarray, float]:
    """(rejected mask, p cutoff) of the Benjamini-Hochberg step-up procedure at level alpha (cutoff
    ``alpha / m`` when nothing is rejected)."""
    p = np.asarray(p_values, dtype=np.float64)
    m = p.shape[0]
    if m == 0:
        return np.zeros(0, dtype=bool), alpha
    order = np.sort(p)
    ok = np.nonzero(order <= alpha * np.arange(1, m + 1) / m)[0]
    if len(ok) == 0:
        return np.zeros(m, dtype=bool), alpha / m
    cutoff = float(order[ok[-1]])
    return p <= cutoff, cutoff


def bonferroni(p_values: Sequence[float], alpha: float) -> tuple[np.ndarray, float]:
    """(rejected mask, per-test level alpha / m)."""
    p = np.asarray(p_values, dtype=np.float64)
    level = alpha / max(1, p.shape[0])
    return p <= level, level


def _adjusted_p(p_values: np.ndarray, correction: str) -> np.ndarray:
    """Multiplicity-adjusted p-values: a test is rejected at level a iff its adjusted p <= a
    (Benjamini-Hochberg step-up adjustment, Bonferroni ``min(1, m p)``, or p itself)."""
    p = np.asarray(p_values, dtype=np.float64)
    m = p.shape[0]
    if m == 0 or correction == "none":
        return p.copy()
    if correction == "bonferroni":
        return np.minimum(1.0, p * m)
    order = np.argsort(p)
    ranked = p[order] * m / np.arange(1, m + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(ranked, 1.0)
    return out


class WindowReport:
    """The verdict on one window.  ``drift``, ``drifted``, ``drifted_features``, ``drifted_outputs``
    and ``data_quality`` are computed at once; the per-column detail (``columns``) is built on first
    access (``to_dict()`` includes it)."""

    def __init__(self, **kw):
        self._detail = kw.pop("_detail")
        self._monitoring = kw.pop("_monitoring")
        self._columns: list[dict] | None = None
        self.__dict__.update(kw)

    @property
    def columns(self) -> list[dict]:
        if self._columns is None:
            self._columns = self._detail()
        return self._columns

    def to_monitoring_dict(self) -> dict:
        """The window's report in the shape ``parity.monitoring.report`` renders and
        ``parity.monitoring.alerts`` reads: ``{"alarm", "correction", "false_alarm_rate", ...,
        "features": {name: column}, "outputs": {name: column}}``, a column being ``{"kind",
        "reference": {"edges" | "top"/"other", "counts"}, "current": {"counts", "missing"},
        "statistics": {"psi", "js", "ks", "chi2", "chi2_p", "p_adjusted"}, "p_values": {stat: p},
        "thresholds": {stat: threshold for this window}, "alarm", "quality": {"missing_rate",
        "out_of_range_rate", "unseen_rate", "flags": ["missing_rate" | "out_of_range" |
        "unseen_category"]}}``.  ``chi2_p`` is the calibrated p-value of chi2; ``p_adjusted`` the
        column's smallest multiplicity-adjusted p-value (BH or Bonferroni; the column alarms when it
        is <= the false-alarm rate)."""
        return _jsonable(self._monitoring())

    def to_dict(self) -> dict:
        keys = ("drift", "drifted", "drifted_features", "drifted_outputs", "data_quality", "rows", "calibrated_rows",
                "false_alarm_rate", "correction", "tests", "profile_hash")  # fmt: skip
        return _jsonable({**{k: getattr(self, k) for k in keys}, "columns": self.columns})


def evaluate_window(profile: Mapping, counts: Counts, thresholds: Calibration, config: DriftConfig | None = None) -> WindowReport:
    """Test a closed window's counts against the profile (see the module docstring).  Vectorised
    over columns; per-column detail is materialised lazily (``WindowReport.columns``)."""
    cfg = config or DriftConfig()
    lay = layout_for(profile)
    if counts.layout.hash != lay.hash or thresholds.profile_hash != lay.hash:
        raise ValueError("evaluate_window: counts, calibration and profile do not belong together")
    cal = thresholds
    alpha = cal.false_alarm_rate
    ncol = len(lay.columns)
    # statistics, normalisation, calibrated p-values and the correction in one compiled call
    stats, dof, nr, nc, ne, norm, pvals, testable, p_list, alarms, col_alarm, level = _verdict(
        lay.ref_counts_f, counts.bins, PSI_EPSILON, cal.null, lay.testable_mask(cfg.statistics, cfg.include_outputs),
        _CORRECTION_CODE[cfg.correction], float(alpha))  # fmt: skip

    # data quality: plain floats per column (a handful of columns; cheaper than numpy on tiny arrays)
    dq_level = cfg.dq_alpha / max(1, ncol)
    miss = counts.missing.tolist()
    ref_miss = lay.ref_missing_list
    ref_rows = lay.ref_rows_list
    nc_l, nr_l = nc.tolist(), nr.tolist()
    other = counts.bins[np.arange(ncol), lay.nbins - 1].tolist()
    below, above = counts.below.tolist(), counts.above.tolist()
    r0, r1, p_miss, miss_flag = [0.0] * ncol, [0.0] * ncol, [1.0] * ncol, [False] * ncol
    out_n, rate0, p_out, out_flag = [0] * ncol, [0.0] * ncol, [1.0] * ncol, [False] * ncol
    unseen_share, unseen_flag = [0.0] * ncol, [False] * ncol
    dq_flags: list[str] = []
    for i in range(ncol):
        n1, n0 = nc_l[i] + miss[i], ref_rows[i]
        r0[i] = ref_miss[i] / n0 if n0 else 0.0
        r1[i] = miss[i] / n1 if n1 else 0.0
        if n1 and n0:
            pool = (ref_miss[i] + miss[i]) / (n0 + n1)
            var = pool * (1 - pool) * (1 / n0 + 1 / n1)
            p_miss[i] = math.erfc(abs(r1[i] - r0[i]) / math.sqrt(var) / math.sqrt(2)) if var > 0 else 1.0
            miss_flag[i] = p_miss[i] < dq_level and abs(r1[i] - r0[i]) >= cfg.missing_rate_min_change
            if miss_flag[i]:
                dq_flags.append(f"{lay.keys[i]}:missing_rate")
        if lay.has_range_list[i]:
            out_n[i] = below[i] + above[i]
            rate0[i] = 2.0 / (nr_l[i] + 1)
            if out_n[i] > 0 and nc_l[i] > 0:
                p_out[i] = float(special.bdtrc(out_n[i] - 1, int(nc_l[i]), rate0[i]))
                out_flag[i] = p_out[i] < dq_level
                if out_flag[i]:
                    dq_flags.append(f"{lay.keys[i]}:outside_range")
        if lay.unseen_list[i]:
            unseen_share[i] = other[i] / nc_l[i] if nc_l[i] else 0.0
            unseen_flag[i] = unseen_share[i] > cfg.unseen_share_threshold
            if unseen_flag[i]:
                dq_flags.append(f"{lay.keys[i]}:unseen")

    def detail() -> list[dict]:
        thr = cal.thresholds_at(level)
        cols = []
        for i, (part, name) in enumerate(lay.columns):
            numeric = lay.kinds[i] == "numeric"
            entry: dict[str, Any] = {"part": part, "name": name, "key": lay.keys[i], "kind": lay.kinds[i], "present": int(nc[i]),
                                     "missing": int(counts.missing[i]), "alarm": bool(col_alarm[i]), "statistics": {}}  # fmt: skip
            if nr[i] > 0 and nc[i] > 0:
                for k, s in enumerate(STATISTICS):
                    if s == "ks" and not numeric:
                        continue
                    st: dict[str, Any] = {"value": float(stats[i, k]), "normalised": float(norm[i, k]), "p_value": float(pvals[i, k]),
                                          "threshold": _raw(s, float(thr[i, k]), float(ne[i])), "tested": bool(testable[i, k]),
                                          "alarm": bool(alarms[i, k])}  # fmt: skip
                    if s == "chi2":
                        st["dof"] = int(dof[i])
                        st["p_value_asymptotic"] = float(special.chdtrc(dof[i], stats[i, k])) if dof[i] > 0 else 1.0
                    elif s == "ks":
                        st["p_value_asymptotic"] = float(special.kolmogorov(math.sqrt(ne[i]) * stats[i, k]))
                    entry["statistics"][s] = st
            dq: dict[str, Any] = {"missing_rate": {"reference": float(r0[i]), "current": float(r1[i]), "p_value": float(p_miss[i]),
                                                   "flag": bool(miss_flag[i])}}  # fmt: skip
            if lay.has_range[i]:
                dq["outside_range"] = {"share": out_n[i] / nc_l[i] if nc_l[i] else 0.0, "below": int(counts.below[i]),
                                       "above": int(counts.above[i]), "expected_share": float(rate0[i]), "p_value": float(p_out[i]),
                                       "flag": bool(out_flag[i])}  # fmt: skip
            if not numeric:
                dq["unseen"] = ({"share": float(unseen_share[i]), "count": int(other[i]), "flag": bool(unseen_flag[i])}
                                if lay.unseen_applies[i] else None)  # fmt: skip
            entry["data_quality"] = dq
            cols.append(entry)
        return cols

    def monitoring() -> dict:
        adjusted = np.full(testable.shape, np.nan)
        adjusted[testable] = _adjusted_p(p_list, cfg.correction)
        doc: dict[str, Any] = {"alarm": bool(col_alarm.any()), "drift": bool(col_alarm.any()), "correction": cfg.correction,
                               "false_alarm_rate": alpha, "rows": int(counts.rows), "calibrated_rows": cal.window_rows,
                               "tests": int(testable.sum()), "data_quality": dq_flags, "features": {}, "outputs": {}}  # fmt: skip
        for entry, (i, (part, name)) in zip(detail_cached(), enumerate(lay.columns)):
            cp = lay.col_profiles[i]
            nb = int(lay.nbins[i])
            if lay.kinds[i] == "numeric":
                ref = {"edges": list(cp["edges"]), "counts": list(cp["counts"])}
            else:
                ref = {"top": list(cp["top"]), "other": cp["other"], "counts": [t["count"] for t in cp["top"]] + [cp["other"]]}
            sts = entry["statistics"]
            statistics = {s: st["value"] for s, st in sts.items()}
            if "chi2" in sts:
                statistics["chi2_p"] = sts["chi2"]["p_value"]
            col_adj = adjusted[i][testable[i]]
            if len(col_adj):
                statistics["p_adjusted"] = float(col_adj.min())
            flags = []
            dq = entry["data_quality"]
            quality: dict[str, Any] = {"missing_rate": dq["missing_rate"]["current"]}
            if dq["missing_rate"]["flag"]:
                flags.append("missing_rate")
            if dq.get("outside_range"):
                quality["out_of_range_rate"] = dq["outside_range"]["share"]
                if dq["outside_range"]["flag"]:
                    flags.append("out_of_range")
            if dq.get("unseen"):
                quality["unseen_rate"] = dq["unseen"]["share"]
                if dq["unseen"]["flag"]:
                    flags.append("unseen_category")
            quality["flags"] = flags
            doc[part][name] = {
                "kind": lay.kinds[i], "reference": ref,
                "current": {"counts": [int(x) for x in counts.bins[i, :nb]], "missing": int(counts.missing[i])},
                "statistics": statistics, "p_values": {s: st["p_value"] for s, st in sts.items()},
                "thresholds": {s: st["threshold"] for s, st in sts.items()}, "alarm": entry["alarm"], "quality": quality,
            }  # fmt: skip
        return doc

    cache: list = []

    def detail_cached() -> list[dict]:
        if not cache:
            cache.append(detail())
        return cache[0]

    drifted_idx = np.nonzero(col_alarm)[0]
    return WindowReport(
        drift=bool(len(drifted_idx)), drifted=[lay.keys[i] for i in drifted_idx],
        drifted_features=[lay.columns[i][1] for i in drifted_idx if lay.columns[i][0] == "features"],
        drifted_outputs=[lay.columns[i][1] for i in drifted_idx if lay.columns[i][0] == "outputs"],
        data_quality=dq_flags, rows=int(counts.rows), calibrated_rows=cal.window_rows, false_alarm_rate=alpha,
        correction=cfg.correction, tests=int(testable.sum()), profile_hash=lay.hash, _detail=detail_cached,
        _monitoring=monitoring,
    )  # fmt: skip


__all__ = [
    "CORRECTIONS",
    "PSI_EPSILON",
    "STATISTICS",
    "Calibration",
    "Counts",
    "DriftConfig",
    "Layout",
    "Window",
    "WindowReport",
    "benjamini_hochberg",
    "bonferroni",
    "calibrate",
    "chi2_test",
    "evaluate_window",
    "js_distance",
    "ks_binned",
    "layout_for",
    "profile_hash",
    "psi",
]  # fmt: skip
