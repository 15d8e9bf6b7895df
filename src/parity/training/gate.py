"""The promotion gate: promote a challenger over the champion only on statistical evidence.

Training is stochastic, so "the challenger's AUC is 0.912 and the champion's 0.910" decides
nothing.  The gate compares the two models' outputs on the *same* holdout with a paired test that
fits the metric and asks one question: is the challenger worse than the champion by more than the
configured margin (a one-sided non-inferiority test), and, when configured, is it better at all (a
one-sided superiority test)?

    metric       test                                                  interval for the difference
    roc_auc      DeLong et al. (1988), the fast midrank algorithm of   normal (Wald) with the DeLong
                 Sun & Xu (2014); the margin as a shift of the null    variance
    accuracy     McNemar (exact binomial below 25 discordant pairs,    Tango's score interval
                 chi-square with continuity correction otherwise)
                 for superiority; Tango's (1998) score test for the
                 margin
    anything     a paired bootstrap (scipy.stats.bootstrap, BCa or      the bootstrap interval
    else         percentile, a fixed seed) of the difference

Every decision is taken at one-sided level alpha: the challenger passes when the lower
(1 - alpha) confidence bound of its improvement over the champion is above -margin (equivalently:
the one-sided p-value of H0 "improvement <= -margin" is below alpha).  A challenger exactly `margin`
worse therefore always fails.  The result carries its evidence, a JSON document for the registry's
audit log.  See docs/gate.md.
"""

from __future__ import annotations

import inspect
import json
import math
import numbers
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from scipy import optimize, stats

from parity.errors import ConfigError, InvalidInput, NotFound

EVIDENCE_SCHEMA = "parity.gate/1"
GATE_FAILED = "gate.failed"  # the audit action recorded when a challenger fails the gate
MCNEMAR_EXACT_BELOW = 25  # discordant pairs below which McNemar's test is the exact binomial one

# -- small helpers ----------------------------------------------------------------------------------


def _num(x: float | None) -> float | None:
    """A finite Python float for the evidence, or None (JSON has no inf or NaN)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _vector(values: Any, what: str) -> np.ndarray:
    try:
        a = np.asarray(values)
    except Exception as e:  # noqa: BLE001 - anything numpy refuses is bad input
        raise InvalidInput(f"{what}: not an array of numbers ({e})") from None
    if a.ndim != 1:
        raise InvalidInput(f"{what}: expected one value per holdout row (a 1-D array), got shape {a.shape}")
    if a.dtype.kind == "b":
        a = a.astype(np.int64)
    if a.dtype.kind not in "iuf":
        raise InvalidInput(f"{what}: expected numbers, got {a.dtype}")
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        bad = int(np.flatnonzero(~np.isfinite(a))[0])
        raise InvalidInput(f"{what}: row {bad} is {a[bad]} (every value must be finite)")
    return a


def _same_length(y: np.ndarray, *others: tuple[np.ndarray, str]) -> None:
    for a, what in others:
        if len(a) != len(y):
            raise InvalidInput(f"{what} has {len(a)} rows but y_true has {len(y)}: both models must be scored on the same holdout")


def _binary(y: Any, what: str = "y_true") -> np.ndarray:
    a = _vector(y, what)
    if not np.all((a == 0) | (a == 1)):
        bad = int(np.flatnonzero((a != 0) & (a != 1))[0])
        raise InvalidInput(f"{what}: row {bad} is {a[bad]:g}; binary labels must be 0 or 1 (1 = the positive class)")
    return a


# -- DeLong's test for two correlated ROC AUCs -----------------------------------------------------


class DeLongResult(NamedTuple):
    auc_a: float
    auc_b: float
    diff: float  # auc_b - auc_a
    se: float  # standard error of diff (DeLong's variance)
    z: float  # diff / se (+-inf when se is 0 and diff is not; nan when both are 0)
    p_value: float  # two-sided, H0: auc_a == auc_b
    ci: tuple[float, float]  # Wald interval for diff at the requested confidence, within [-1, 1]


def midranks(x: Any) -> np.ndarray:
    """1-based ranks with ties given the mean of the ranks they span (O(n log n))."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.r_[0, np.flatnonzero(xs[1:] != xs[:-1]) + 1]
    ends = np.r_[starts[1:], n]  # exclusive
    # a tie group occupying sorted positions starts..ends-1 holds ranks starts+1..ends; their mean:
    ranks = np.repeat((starts + 1 + ends) / 2.0, ends - starts)
    out = np.empty(n, dtype=np.float64)
    out[order] = ranks
    return out


def _placements(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components from midranks (Sun & Xu 2014).

    V10[i] = fraction of negatives scored below positive i (ties count 1/2),
    V01[j] = fraction of positives scored above negative j (ties count 1/2).
    With T_z the midranks in the pooled sample and T_x / T_y those within the positives / the
    negatives, T_z(x_i) - T_x(x_i) counts the negatives below x_i (half the tied ones), so
    V10 = (T_z - T_x) / n and V01 = 1 - (T_z - T_y) / m."""
    pos, neg = s[y == 1], s[y == 0]
    m, n = len(pos), len(neg)
    tz = midranks(np.concatenate([pos, neg]))
    v10 = (tz[:m] - midranks(pos)) / n
    v01 = 1.0 - (tz[m:] - midranks(neg)) / m
    return v10, v01


def _class_counts(y: np.ndarray, need: int) -> tuple[int, int]:
    m, n = int(np.sum(y == 1)), int(np.sum(y == 0))
    if m < need or n < need:
        raise InvalidInput(
            f"y_true has {m} positive and {n} negative rows; ROC AUC needs both classes"
            + (f" and DeLong's variance at least {need} rows of each" if need > 1 else "")
        )
    return m, n


def roc_auc(y_true: Any, scores: Any) -> float:
    """The ROC AUC (the Mann-Whitney probability that a positive outscores a negative, ties 1/2)."""
    y, s = _binary(y_true), _vector(scores, "scores")
    _same_length(y, (s, "scores"))
    _class_counts(y, 1)
    v10, _ = _placements(y, s)
    return float(v10.mean())


def delong(y_true: Any, scores_a: Any, scores_b: Any, *, confidence: float = 0.95) -> DeLongResult:
    """DeLong's test of two ROC AUCs measured on the same rows (DeLong, DeLong & Clarke-Pearson 1988),
    with the O(n log n) midrank computation of Sun & Xu (2014).

    Var(auc_b - auc_a) = Var(V10_b - V10_a) / m + Var(V01_b - V01_a) / n with the structural
    components of `_placements`, sample variances (ddof 1), m positives and n negatives."""
    if not 0 < confidence < 1:
        raise InvalidInput(f"confidence must be in (0, 1), got {confidence}")
    y = _binary(y_true)
    a, b = _vector(scores_a, "scores_a"), _vector(scores_b, "scores_b")
    _same_length(y, (a, "scores_a"), (b, "scores_b"))
    m, n = _class_counts(y, 2)
    v10a, v01a = _placements(y, a)
    v10b, v01b = _placements(y, b)
    auc_a, auc_b = float(v10a.mean()), float(v10b.mean())
    diff = auc_b - auc_a
    var = np.var(v10b - v10a, ddof=1) / m + np.var(v01b - v01a, ddof=1) / n
    se = float(math.sqrt(max(var, 0.0)))
    if se > 0:
        z = diff / se
    else:
        z = math.nan if diff == 0 else math.copysign(math.inf, diff)
    p = 1.0 if math.isnan(z) else float(2 * stats.norm.sf(abs(z)))
    half = float(stats.norm.ppf(0.5 + confidence / 2)) * se
    ci = (max(-1.0, diff - half), min(1.0, diff + half))
    return DeLongResult(auc_a, auc_b, float(diff), se, float(z), p, ci)


def normal_one_sided(diff: float, se: float, bound: float) -> tuple[float, float]:
    """One-sided test of H0: diff <= bound against diff > bound with a normal statistic:
    (z, p) with z = (diff - bound) / se.  With se == 0 the difference is exact on this holdout:
    p is 0 when diff > bound and 1 otherwise."""
    if se > 0:
        z = (diff - bound) / se
        return z, float(stats.norm.sf(z))
    if diff > bound:
        return math.inf, 0.0
    return (-math.inf if diff < bound else math.nan), 1.0


# -- McNemar's test and the non-inferiority of paired accuracies ------------------------------------


class McNemarResult(NamedTuple):
    statistic: float  # chi-square (continuity corrected) or, for the exact test, c
    p_value: float  # two-sided, H0: equal accuracy
    method: str  # "exact" or "chi2_cc"
    b: int  # rows model a got right and model b wrong
    c: int  # rows model b got right and model a wrong
    n: int
    acc_a: float
    acc_b: float
    diff: float  # acc_b - acc_a = (c - b) / n


def _labels_equal(y: Any, pred: Any, what: str) -> tuple[np.ndarray, int]:
    y, p = np.asarray(y), np.asarray(pred)
    if y.ndim != 1 or p.ndim != 1:
        raise InvalidInput(f"y_true and {what} must be 1-D (one label per row)")
    if len(p) != len(y):
        raise InvalidInput(f"{what} has {len(p)} rows but y_true has {len(y)}: both models must be scored on the same holdout")
    return (p == y), len(y)


def mcnemar(y_true: Any, pred_a: Any, pred_b: Any, *, exact_below: int = MCNEMAR_EXACT_BELOW) -> McNemarResult:
    """McNemar's test of equal accuracy of two classifiers' predicted labels on the same rows.

    Only the discordant rows matter: b (a right, b wrong) and c (b right, a wrong).  Under H0
    c ~ Binomial(b + c, 1/2).  With b + c < exact_below the exact two-sided binomial p-value is
    used (statistic = c); otherwise the chi-square (|b - c| - 1)^2 / (b + c) on 1 degree of freedom."""
    ok_a, n = _labels_equal(y_true, pred_a, "pred_a")
    ok_b, _ = _labels_equal(y_true, pred_b, "pred_b")
    if n == 0:
        raise InvalidInput("the holdout is empty")
    b = int(np.sum(ok_a & ~ok_b))
    c = int(np.sum(~ok_a & ok_b))
    acc_a, acc_b = float(ok_a.mean()), float(ok_b.mean())
    d = b + c
    if d < exact_below:
        stat = float(c)
        p = 1.0 if d == 0 else float(stats.binomtest(c, d, 0.5).pvalue)
        method = "exact"
    else:
        stat = (abs(b - c) - 1.0) ** 2 / d if abs(b - c) >= 1 else 0.0
        p = float(stats.chi2.sf(stat, 1))
        method = "chi2_cc"
    return McNemarResult(stat, min(1.0, p), method, b, c, n, acc_a, acc_b, (c - b) / n)


def mcnemar_one_sided(b: int, c: int, *, exact_below: int = MCNEMAR_EXACT_BELOW) -> float:
    """One-sided McNemar p-value of H0 "model b is not more accurate than model a" (c <= b in
    expectation): exact P(X >= c), X ~ Binomial(b + c, 1/2), below exact_below discordant pairs;
    otherwise the continuity-corrected normal z = (c - b - 1) / sqrt(b + c)."""
    d = b + c
    if d == 0:
        return 1.0
    if d < exact_below:
        return float(stats.binom.sf(c - 1, d, 0.5))
    return float(stats.norm.sf((c - b - 1) / math.sqrt(d)))


def tango_statistic(b: int, c: int, n: int, theta0: float) -> float:
    """Tango's (1998) score statistic for H0: acc_b - acc_a = theta0 with paired binary outcomes,
    oriented so that large values favour acc_b - acc_a > theta0.

    Cells: p10 (a right, b wrong; count b), p01 (b right, a wrong; count c); delta = p10 - p01 =
    -theta.  Under H0 (delta = d0 >= 0) the restricted maximum-likelihood p01 solves
    2n q^2 + (-(b + c) + (2n - b + c) d0) q - c d0 (1 - d0) = 0 (its non-negative root), and
    Var(c - b) = n (p10 + p01 - d0^2).  Z = (c - b - n theta0) / sqrt(n (p10 + p01 - d0^2)).
    A negative d0 is the mirror problem (b and c swapped).  With theta0 = 0 this is McNemar's z."""
    d0 = -theta0
    bb, cc = (b, c) if d0 >= 0 else (c, b)
    d = abs(d0)
    A = 2.0 * n
    B = -(bb + cc) + (2.0 * n - bb + cc) * d
    C = -cc * d * (1.0 - d)
    q = (-B + math.sqrt(max(B * B - 4 * A * C, 0.0))) / (2 * A)  # restricted p01 (of the mirror problem)
    var = n * max(2 * q + d - d * d, 0.0)
    num = c - b - n * theta0
    if var > 0:
        return num / math.sqrt(var)
    return 0.0 if num == 0 else math.copysign(math.inf, num)


def tango_noninferiority(b: int, c: int, n: int, margin: float) -> tuple[float, float]:
    """(z, one-sided p) of H0: acc_b - acc_a <= -margin against acc_b - acc_a > -margin."""
    z = tango_statistic(b, c, n, -margin)
    return z, float(stats.norm.sf(z)) if not math.isnan(z) else 1.0


def tango_interval(b: int, c: int, n: int, confidence: float) -> tuple[float, float]:
    """Tango's score confidence interval for acc_b - acc_a: the theta0 whose two-sided score test
    does not reject at 1 - confidence (found by root finding; the statistic decreases in theta0)."""
    zc = float(stats.norm.ppf(0.5 + confidence / 2))
    est = (c - b) / n
    eps = 1e-12

    def bound(target: float, lo: float, hi: float, edge: float) -> float:
        f = lambda t: tango_statistic(b, c, n, t) - target  # noqa: E731
        flo, fhi = f(lo), f(hi)
        if flo == 0:
            return lo
        if fhi == 0:
            return hi
        if (flo > 0) == (fhi > 0):
            return edge
        return float(optimize.brentq(f, lo, hi, xtol=1e-12))

    low = bound(zc, -1 + eps, est, -1.0) if est > -1 + eps else -1.0
    high = bound(-zc, est, 1 - eps, 1.0) if est < 1 - eps else 1.0
    return max(-1.0, low), min(1.0, high)


# -- paired bootstrap --------------------------------------------------------------------------------


class BootstrapResult(NamedTuple):
    estimate_a: float
    estimate_b: float
    diff: float  # metric(b) - metric(a)
    ci: tuple[float, float]  # interval for diff
    improvement: float  # diff if higher is better, else -diff
    improvement_ci: tuple[float, float]
    higher_is_better: bool
    confidence: float
    method: str  # the interval actually used: "BCa", "percentile", "basic", or "exact" (identical outputs)
    n_resamples: int
    random_state: int
    standard_error: float


def _vectorized(fn: Callable) -> Callable:
    fn.vectorized = True  # type: ignore[attr-defined]
    return fn


@_vectorized
def rmse(y, p, axis=-1):
    return np.sqrt(np.mean((np.asarray(p) - y) ** 2, axis=axis))


@_vectorized
def mse(y, p, axis=-1):
    return np.mean((np.asarray(p) - y) ** 2, axis=axis)


@_vectorized
def mae(y, p, axis=-1):
    return np.mean(np.abs(np.asarray(p) - y), axis=axis)


LOG_LOSS_EPS = 1e-15


@_vectorized
def log_loss(y, p, axis=-1):
    """Binary cross-entropy; probabilities are clipped to [1e-15, 1 - 1e-15]."""
    p = np.clip(p, LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
    return -np.mean(y * np.log(p) + (1 - y) * np.log1p(-p), axis=axis)


@_vectorized
def brier(y, p, axis=-1):
    return np.mean((np.asarray(p) - y) ** 2, axis=axis)


def _rng_kwarg() -> str:
    return "rng" if "rng" in inspect.signature(stats.bootstrap).parameters else "random_state"


def paired_bootstrap(
    metric_fn: Callable,
    y_true: Any,
    a: Any,
    b: Any,
    *,
    higher_is_better: bool,
    confidence: float = 0.95,
    n_resamples: int = 9999,
    method: str = "auto",
    random_state: int = 0,
    vectorized: bool | None = None,
) -> BootstrapResult:
    """A bootstrap confidence interval for metric(y, b) - metric(y, a), resampling holdout rows
    (the same rows for both models: scipy.stats.bootstrap with paired=True).

    metric_fn(y, pred) -> float; when vectorized (the built-in metrics are), metric_fn(y, pred,
    axis=-1) over a batch of resamples.  method: "BCa", "percentile", "basic", or "auto" (BCa up to
    10,000 rows for a vectorized metric and 2,000 otherwise, percentile above: BCa's jackknife costs
    n metric evaluations on n - 1 rows).  A fixed random_state makes the interval reproducible.  When
    every resample gives the same difference (BCa is then undefined) the percentile interval, a
    single point, is used."""
    if not 0 < confidence < 1:
        raise InvalidInput(f"confidence must be in (0, 1), got {confidence}")
    y = _vector(y_true, "y_true")
    pa, pb = _vector(a, "champion outputs"), _vector(b, "challenger outputs")
    _same_length(y, (pa, "champion outputs"), (pb, "challenger outputs"))
    n = len(y)
    if n < 2:
        raise InvalidInput(f"the holdout has {n} row(s); a bootstrap needs at least 2")
    if vectorized is None:
        vectorized = bool(getattr(metric_fn, "vectorized", False))
    m = {"bca": "BCa", "percentile": "percentile", "basic": "basic", "auto": "auto"}.get(str(method).lower())
    if m is None:
        raise InvalidInput(f"bootstrap method {method!r}: use BCa, percentile, basic or auto")
    if m == "auto":
        m = "BCa" if n <= (10_000 if vectorized else 2_000) else "percentile"

    def value(pred: np.ndarray) -> float:
        v = float(metric_fn(y, pred))
        if not math.isfinite(v):
            raise InvalidInput(f"the metric is {v} on the holdout")
        return v

    est_a, est_b = value(pa), value(pb)
    diff = est_b - est_a
    sign = 1.0 if higher_is_better else -1.0
    if np.array_equal(pa, pb):  # identical outputs: every resample's difference is exactly 0
        ci, used, se = (0.0, 0.0), "exact", 0.0
    else:
        if vectorized:

            def stat(yy, xa, xb, axis=-1):
                return metric_fn(yy, xb, axis=axis) - metric_fn(yy, xa, axis=axis)

        else:

            def stat(yy, xa, xb):
                return float(metric_fn(yy, xb)) - float(metric_fn(yy, xa))

        batch = max(1, min(n_resamples, 2_000_000 // n))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", stats.DegenerateDataWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            res = stats.bootstrap(
                (y, pa, pb), stat, paired=True, vectorized=vectorized, n_resamples=n_resamples, batch=batch,
                confidence_level=confidence, method=m, **{_rng_kwarg(): np.random.default_rng(random_state)},
            )  # fmt: skip
        dist = np.asarray(res.bootstrap_distribution, dtype=np.float64)
        if not np.all(np.isfinite(dist)):
            raise InvalidInput("the metric is not finite on some bootstrap resamples of the holdout")
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        used = m
        if not (math.isfinite(low) and math.isfinite(high)):  # BCa undefined (e.g. a constant distribution)
            tail = (1 - confidence) / 2
            low, high = (float(v) for v in np.quantile(dist, [tail, 1 - tail]))
            used = "percentile"
        ci, se = (low, high), float(res.standard_error)
    imp_ci = (sign * ci[0], sign * ci[1]) if sign > 0 else (sign * ci[1], sign * ci[0])
    return BootstrapResult(est_a, est_b, diff, ci, sign * diff, imp_ci, higher_is_better, confidence, used, n_resamples, random_state, se)


# -- configuration -------------------------------------------------------------------------------------

#: built-in metrics: name -> (higher is better, function or None when the metric has its own test)
METRICS: dict[str, tuple[bool, Callable | None]] = {
    "roc_auc": (True, None),
    "accuracy": (True, None),
    "rmse": (False, rmse),
    "mse": (False, mse),
    "mae": (False, mae),
    "log_loss": (False, log_loss),
    "brier": (False, brier),
}
BOOTSTRAP_METHODS = {"auto": "auto", "bca": "BCa", "percentile": "percentile", "basic": "basic"}
_METRIC_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")


def _check_config(values: Mapping, source: str, prefix: str) -> dict:
    def err(name: str, problem: str) -> ConfigError:
        return ConfigError(source, f"{prefix}{name}", problem)

    known = {f.name for f in fields(GateConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise err(str(unknown[0]), f"unknown field; the gate's fields are {', '.join(sorted(known))}")
    out = {f.name: values.get(f.name, f.default) for f in fields(GateConfig)}

    def number(name: str) -> float:
        v = out[name]
        if isinstance(v, bool | np.bool_) or not isinstance(v, numbers.Real) or not math.isfinite(float(v)):
            raise err(name, f"must be a finite number, got {v!r}")
        return float(v)

    def integer(name: str, low: int) -> int:
        v = out[name]
        if isinstance(v, bool | np.bool_) or not isinstance(v, numbers.Integral) or v < low:
            raise err(name, f"must be an integer >= {low}, got {v!r}")
        return int(v)

    metric = out["metric"]
    if not isinstance(metric, str) or not _METRIC_NAME.match(metric):
        raise err("metric", f"must be a metric name ({', '.join(METRICS)}, or a custom one), got {metric!r}")
    out["metric"] = metric = metric.lower() if metric.lower() in METRICS else metric
    out["margin"] = margin = number("margin")
    if margin < 0:
        raise err("margin", f"must be >= 0 (how much worse than the champion the challenger may be), got {margin:g}")
    if metric in ("roc_auc", "accuracy") and margin >= 1:
        raise err("margin", f"must be below 1 for {metric}, got {margin:g}")
    out["alpha"] = alpha = number("alpha")
    if not 0 < alpha < 0.5:
        raise err("alpha", f"must be in (0, 0.5) (the one-sided error rate), got {alpha:g}")
    if not isinstance(out["require_superiority"], bool | np.bool_):
        raise err("require_superiority", f"must be true or false, got {out['require_superiority']!r}")
    out["require_superiority"] = bool(out["require_superiority"])
    hib = out["higher_is_better"]
    if hib is not None and not isinstance(hib, bool | np.bool_):
        raise err("higher_is_better", f"must be true or false, got {hib!r}")
    hib = None if hib is None else bool(hib)
    if metric in METRICS:
        if hib is not None and hib != METRICS[metric][0]:
            direction = "higher" if METRICS[metric][0] else "lower"
            raise err("higher_is_better", f"{metric}: {direction} is better; leave the field out or set it to {str(METRICS[metric][0]).lower()}")
        out["higher_is_better"] = METRICS[metric][0]
    elif hib is None:
        raise err("higher_is_better", f"is required for metric {metric!r}, which is not built in ({', '.join(METRICS)}): is a higher value better?")
    else:
        out["higher_is_better"] = hib
    out["seed"] = integer("seed", 0)
    out["n_resamples"] = integer("n_resamples", 100)
    bm = out["bootstrap_method"]
    if not isinstance(bm, str) or bm.lower() not in BOOTSTRAP_METHODS:
        raise err("bootstrap_method", f"must be one of auto, BCa, percentile, basic; got {bm!r}")
    out["bootstrap_method"] = BOOTSTRAP_METHODS[bm.lower()]
    out["threshold"] = threshold = number("threshold")
    if not 0 < threshold < 1:
        raise err("threshold", f"must be in (0, 1) (scores >= threshold predict the positive class), got {threshold:g}")
    return out


@dataclass(frozen=True)
class GateConfig:
    """What the gate decides on.  Validated on construction (ConfigError names the field)."""

    metric: str = "roc_auc"
    margin: float = 0.01  # the challenger may be at most this much worse (in the metric's units)
    require_superiority: bool = False  # also require it to be significantly better
    alpha: float = 0.05  # one-sided level of each test
    higher_is_better: bool | None = None  # implied for built-in metrics; required for custom ones
    seed: int = 0  # the bootstrap's random state
    n_resamples: int = 9999  # bootstrap resamples
    bootstrap_method: str = "auto"  # auto | BCa | percentile | basic
    threshold: float = 0.5  # accuracy: a probability >= threshold predicts class 1

    def __post_init__(self) -> None:
        for k, v in _check_config({f.name: getattr(self, f.name) for f in fields(self)}, "GateConfig", "").items():
            object.__setattr__(self, k, v)

    @property
    def test(self) -> str:
        return {"roc_auc": "delong", "accuracy": "mcnemar"}.get(self.metric, "paired_bootstrap")

    @classmethod
    def from_dict(cls, data: Mapping | None, source: str = "gate config", prefix: str = "") -> "GateConfig":
        """From a mapping (e.g. the `gate:` section of a training config); errors name `source` and
        the field (`prefix` + name)."""
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(source, prefix.rstrip("."), f"must be a mapping of gate settings, got {type(data).__name__}")
        return cls(**_check_config(data, source, prefix))

    @classmethod
    def from_yaml(cls, text: str, *, section: str | None = "gate", source: str = "<yaml>") -> "GateConfig":
        """From YAML text (yaml.safe_load): the `section` mapping of the document, or the whole
        document when section is None."""
        import yaml

        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(source, where, f"not valid YAML: {getattr(e, 'problem', None) or e}") from None
        if section is None:
            return cls.from_dict(doc, source)
        if not isinstance(doc, Mapping) or section not in doc:
            raise ConfigError(source, section, "missing: the gate's settings go in this section")
        return cls.from_dict(doc[section], source, f"{section}.")

    @classmethod
    def from_file(cls, path: str | Path, *, section: str | None = "gate") -> "GateConfig":
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as e:
            raise ConfigError(str(p), "", f"cannot read: {e.strerror}") from None
        return cls.from_yaml(text, section=section, source=str(p))

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# -- the gate -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GateResult:
    passed: bool
    decision: str  # one line: the verdict and why
    evidence: dict  # JSON-serializable: what the audit log stores

    def to_json(self) -> str:
        return json.dumps(self.evidence, sort_keys=True, allow_nan=False)


def _predicted_labels(outputs: Any, threshold: float, what: str) -> np.ndarray:
    """Class labels from a model's outputs: a 2-D array of class scores -> argmax; 1-D floats all
    in [0, 1] -> 1 where >= threshold (binary probabilities); anything else is taken as labels."""
    a = np.asarray(outputs)
    if a.ndim == 2:
        return np.argmax(a, axis=1)
    if a.ndim != 1:
        raise InvalidInput(f"{what}: expected labels, scores or a 2-D array of class scores, got shape {a.shape}")
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)):
            raise InvalidInput(f"{what}: every value must be finite")
        if np.all((a >= 0) & (a <= 1)):
            return (a >= threshold).astype(np.int64)
    return a


def _fmt(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{x:+.4g}" if signed else f"{x:.4g}"


def _p(p: float | None) -> str:
    return "n/a" if p is None else (f"{p:.3g}" if p >= 1e-4 else f"{p:.1e}")


def evaluate_gate(
    config: GateConfig | Mapping,
    y_true: Any,
    champion_outputs: Any | None,
    challenger_outputs: Any,
    *,
    metric_fn: Callable | None = None,
) -> GateResult:
    """Compare the challenger with the champion on the same holdout rows and decide.

    Outputs: scores (roc_auc), labels or probabilities (accuracy; see `_predicted_labels`),
    predictions (bootstrap metrics).  champion_outputs None means there is no champion yet: the
    gate passes and the evidence says so.  metric_fn(y, pred) is needed for a metric that is not
    built in (it may take axis= when it has a true `vectorized` attribute)."""
    cfg = config if isinstance(config, GateConfig) else GateConfig.from_dict(config)
    base: dict[str, Any] = {
        "schema": EVIDENCE_SCHEMA,
        "metric": cfg.metric,
        "higher_is_better": cfg.higher_is_better,
        "margin": cfg.margin,
        "alpha": cfg.alpha,
        "require_superiority": cfg.require_superiority,
        "seed": None,
    }
    if cfg.metric not in METRICS and metric_fn is None:
        raise InvalidInput(f"metric {cfg.metric!r} is not built in ({', '.join(METRICS)}): pass metric_fn")
    fn = metric_fn if metric_fn is not None else METRICS[cfg.metric][1]

    if champion_outputs is None:
        return _no_champion(cfg, base, y_true, challenger_outputs, fn)
    if cfg.test == "delong":
        return _delong_gate(cfg, base, y_true, champion_outputs, challenger_outputs)
    if cfg.test == "mcnemar":
        return _mcnemar_gate(cfg, base, y_true, champion_outputs, challenger_outputs)
    return _bootstrap_gate(cfg, base, y_true, champion_outputs, challenger_outputs, fn)


def _finish(base: dict, passed: bool, decision: str, **evidence: Any) -> GateResult:
    ev = {**base, **evidence, "passed": passed, "decision": decision}
    json.dumps(ev, allow_nan=False)  # the evidence must be storable as it is
    return GateResult(passed, decision, ev)


def _no_champion(cfg: GateConfig, base: dict, y_true: Any, challenger: Any, fn: Callable | None) -> GateResult:
    if cfg.metric == "roc_auc":
        est = roc_auc(y_true, challenger)
        n = len(np.asarray(y_true))
    elif cfg.metric == "accuracy":
        ok, n = _labels_equal(y_true, _predicted_labels(challenger, cfg.threshold, "challenger outputs"), "challenger outputs")
        est = float(ok.mean()) if n else None
    else:
        y, p = _vector(y_true, "y_true"), _vector(challenger, "challenger outputs")
        _same_length(y, (p, "challenger outputs"))
        n = len(y)
        est = float(fn(y, p)) if n else None
    decision = f"passed: there is no champion to compare with (challenger {cfg.metric} {_fmt(_num(est))} on {n} rows)"
    return _finish(base, True, decision, test="none", reason="no champion", n=n, champion=None, challenger=_num(est), difference=None)


def _verdict(cfg: GateConfig, noninferior: bool, superior: bool) -> bool:
    return noninferior and (superior or not cfg.require_superiority)


def _decision_text(cfg, passed, champ, chall, diff, level, low, high, ni_text, sup_text) -> str:
    head = "passed" if passed else "failed"
    parts = [
        f"{head}: challenger {cfg.metric} {_fmt(chall)} vs champion {_fmt(champ)} "
        f"(difference {_fmt(diff, True)}, {level:.0%} CI [{_fmt(low, True)}, {_fmt(high, True)}])",
        ni_text,
    ]
    if cfg.require_superiority:
        parts.append(sup_text)
    return "; ".join(parts)


def _delong_gate(cfg: GateConfig, base: dict, y_true, champion, challenger) -> GateResult:
    level = 1 - 2 * cfg.alpha
    r = delong(y_true, champion, challenger, confidence=level)
    y = _binary(y_true)
    z_ni, p_ni = normal_one_sided(r.diff, r.se, -cfg.margin)
    z_sup, p_sup = normal_one_sided(r.diff, r.se, 0.0)
    ni, sup = p_ni < cfg.alpha, p_sup < cfg.alpha
    passed = _verdict(cfg, ni, sup)
    ni_text = (
        f"{'non-inferior' if ni else 'not shown non-inferior'} at margin {cfg.margin:g} "
        f"(one-sided p {_p(p_ni)} {'<' if ni else '>='} alpha {cfg.alpha:g})"
    )
    sup_text = f"{'significantly better' if sup else 'not significantly better'} (one-sided p {_p(p_sup)})"
    decision = _decision_text(cfg, passed, r.auc_a, r.auc_b, r.diff, level, r.ci[0], r.ci[1], ni_text, sup_text)
    return _finish(
        base, passed, decision,
        test="delong",
        method="DeLong et al. (1988), midrank algorithm of Sun & Xu (2014)",
        n=len(y), n_positive=int(np.sum(y == 1)), n_negative=int(np.sum(y == 0)),
        champion=r.auc_a, challenger=r.auc_b, difference=r.diff, standard_error=r.se,
        statistic=_num(r.z), p_value=r.p_value,
        confidence_interval={"level": level, "low": r.ci[0], "high": r.ci[1], "of": "challenger - champion"},
        noninferiority={"null": f"challenger - champion <= -{cfg.margin:g}", "statistic": _num(z_ni), "p_value": p_ni, "passed": ni},
        superiority={"null": "challenger - champion <= 0", "statistic": _num(z_sup), "p_value": p_sup, "passed": sup, "required": cfg.require_superiority},
    )  # fmt: skip


def _mcnemar_gate(cfg: GateConfig, base: dict, y_true, champion, challenger) -> GateResult:
    level = 1 - 2 * cfg.alpha
    pa = _predicted_labels(champion, cfg.threshold, "champion outputs")
    pb = _predicted_labels(challenger, cfg.threshold, "challenger outputs")
    r = mcnemar(y_true, pa, pb)
    z_ni, p_ni = tango_noninferiority(r.b, r.c, r.n, cfg.margin)
    p_sup = mcnemar_one_sided(r.b, r.c)
    ni, sup = p_ni < cfg.alpha, p_sup < cfg.alpha
    passed = _verdict(cfg, ni, sup)
    low, high = tango_interval(r.b, r.c, r.n, level)
    ni_text = (
        f"{'non-inferior' if ni else 'not shown non-inferior'} at margin {cfg.margin:g} "
        f"(Tango score test, one-sided p {_p(p_ni)} {'<' if ni else '>='} alpha {cfg.alpha:g})"
    )
    sup_text = f"{'significantly better' if sup else 'not significantly better'} (McNemar {r.method}, one-sided p {_p(p_sup)})"
    decision = _decision_text(cfg, passed, r.acc_a, r.acc_b, r.diff, level, low, high, ni_text, sup_text)
    sup_method = "exact binomial" if r.b + r.c < MCNEMAR_EXACT_BELOW else "normal with continuity correction"
    return _finish(
        base, passed, decision,
        test="mcnemar",
        method="McNemar: exact binomial" if r.method == "exact" else "McNemar: chi-square with continuity correction",
        n=r.n, discordant={"champion_only": r.b, "challenger_only": r.c},
        champion=r.acc_a, challenger=r.acc_b, difference=r.diff,
        statistic=r.statistic, p_value=r.p_value,
        confidence_interval={"level": level, "low": low, "high": high, "of": "challenger - champion", "method": "Tango score interval"},
        noninferiority={"null": f"challenger - champion <= -{cfg.margin:g}", "method": "Tango (1998) score test",
                        "statistic": _num(z_ni), "p_value": p_ni, "passed": ni},
        superiority={"null": "challenger - champion <= 0", "method": f"McNemar one-sided, {sup_method}",
                     "p_value": p_sup, "passed": sup, "required": cfg.require_superiority},
        threshold=cfg.threshold,
    )  # fmt: skip


def _bootstrap_gate(cfg: GateConfig, base: dict, y_true, champion, challenger, fn: Callable) -> GateResult:
    level = 1 - 2 * cfg.alpha
    r = paired_bootstrap(
        fn, y_true, champion, challenger, higher_is_better=bool(cfg.higher_is_better), confidence=level,
        n_resamples=cfg.n_resamples, method=cfg.bootstrap_method, random_state=cfg.seed,
    )  # fmt: skip
    lb = r.improvement_ci[0]  # one-sided (1 - alpha) lower bound of the improvement
    ni, sup = lb > -cfg.margin, lb > 0
    passed = _verdict(cfg, ni, sup)
    ni_text = (
        f"{'non-inferior' if ni else 'not shown non-inferior'} at margin {cfg.margin:g} "
        f"(the {1 - cfg.alpha:.0%} lower bound of the improvement is {_fmt(lb, True)}, "
        f"{'above' if ni else 'not above'} -{cfg.margin:g})"
    )
    sup_text = "significantly better (the interval excludes 0)" if sup else "not significantly better (the interval reaches 0)"
    decision = _decision_text(cfg, passed, r.estimate_a, r.estimate_b, r.diff, level, r.ci[0], r.ci[1], ni_text, sup_text)
    return _finish(
        {**base, "seed": cfg.seed}, passed, decision,
        test="paired_bootstrap", method=r.method, n_resamples=r.n_resamples,
        n=len(np.asarray(y_true)),
        champion=r.estimate_a, challenger=r.estimate_b, difference=r.diff, standard_error=r.standard_error,
        statistic=None, p_value=None,
        confidence_interval={"level": level, "low": r.ci[0], "high": r.ci[1], "of": "challenger - champion"},
        improvement={"value": r.improvement, "lower_bound": lb, "level": 1 - cfg.alpha,
                     "of": "challenger - champion" if cfg.higher_is_better else "champion - challenger"},
        noninferiority={"null": f"improvement <= -{cfg.margin:g}", "passed": ni},
        superiority={"null": "improvement <= 0", "passed": sup, "required": cfg.require_superiority},
    )  # fmt: skip


# -- the registry -----------------------------------------------------------------------------------------


def promote_if_passes(
    registry,
    name: str,
    challenger_version: int,
    champion_alias: str = "champion",
    *,
    config: GateConfig | Mapping,
    y_true: Any,
    challenger_outputs: Any,
    champion_outputs: Any | None = None,
    metric_fn: Callable | None = None,
    actor: str | None = None,
    reason: str | None = None,
) -> GateResult:
    """Run the gate for `name/challenger_version` against `name@champion_alias` on the given holdout
    outputs; if it passes, point the alias at the challenger (audit action "promote", the evidence
    attached); if it fails, record a "gate.failed" audit entry with the evidence and leave the alias.

    No champion alias yet: the gate passes (the evidence says so) and the alias is set.  The
    challenger already the champion: nothing is run or recorded (passed, test "none").  A champion
    exists but no champion_outputs were given: InvalidInput (the gate cannot compare)."""
    cfg = config if isinstance(config, GateConfig) else GateConfig.from_dict(config)
    registry.get(name, challenger_version)  # NotFound naming the model or version
    try:
        champion = registry.resolve(f"{name}@{champion_alias}")
    except NotFound:
        champion = None
    if champion is not None and champion.version == int(challenger_version):
        decision = f"passed: {name}/{champion.version} is already @{champion_alias}; nothing to do"
        ev = {"schema": EVIDENCE_SCHEMA, "test": "none", "reason": "already champion", "passed": True, "decision": decision}
        return GateResult(True, decision, ev)
    if champion is not None and champion_outputs is None:
        raise InvalidInput(
            f"{name}@{champion_alias} is version {champion.version}: give its outputs on the holdout (champion_outputs) to compare with"
        )
    result = evaluate_gate(cfg, y_true, champion_outputs if champion is not None else None, challenger_outputs, metric_fn=metric_fn)
    evidence = {
        **result.evidence,
        "model": name,
        "alias": champion_alias,
        "champion_version": None if champion is None else champion.version,
        "challenger_version": int(challenger_version),
    }
    if result.passed:
        registry.set_alias(
            name, champion_alias, challenger_version, actor=actor,
            reason=reason or f"passed the promotion gate ({cfg.metric}, {evidence['test']})",
            evidence=evidence, action="promote", expect=0 if champion is None else champion.version,
        )  # fmt: skip
    else:
        registry.record(
            GATE_FAILED, name, actor=actor,
            reason=reason or f"failed the promotion gate ({cfg.metric}, {evidence['test']})",
            evidence=evidence, version=int(challenger_version), alias=champion_alias,
            details={"champion": None if champion is None else champion.version},
        )  # fmt: skip
    return GateResult(result.passed, result.decision, evidence)
