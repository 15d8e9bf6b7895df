"""The promotion gate's statistics against independent computations and textbook values, its
decision rule at the margin's boundary, its configuration, and `parity gate`."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import optimize, stats

from parity.errors import ConfigError, InvalidInput
from parity.training import cli as gate_cli
from parity.training.gate import (
    GateConfig,
    delong,
    evaluate_gate,
    mcnemar,
    mcnemar_one_sided,
    midranks,
    normal_one_sided,
    paired_bootstrap,
    rmse,
    roc_auc,
    tango_interval,
    tango_noninferiority,
    tango_statistic,
)

# -- independent references, written from the definitions -------------------------------------------


def slow_delong(y, a, b):
    """DeLong et al. (1988) from the definition: psi(x, y) = 1 if x > y, 1/2 if equal, 0 otherwise;
    V10 and V01 the structural components; S = S10 / m + S01 / n; O(m n)."""
    y = np.asarray(y)

    def components(s):
        pos, neg = s[y == 1][:, None], s[y == 0][None, :]
        psi = (pos > neg) + 0.5 * (pos == neg)
        return psi.mean(axis=1), psi.mean(axis=0)  # V10 (one per positive), V01 (one per negative)

    v10 = np.vstack([components(np.asarray(a, float))[0], components(np.asarray(b, float))[0]])
    v01 = np.vstack([components(np.asarray(a, float))[1], components(np.asarray(b, float))[1]])
    m, n = v10.shape[1], v01.shape[1]
    s = np.cov(v10) / m + np.cov(v01) / n
    aucs = v10.mean(axis=1)
    var = s[0, 0] + s[1, 1] - 2 * s[0, 1]
    return aucs[0], aucs[1], aucs[1] - aucs[0], math.sqrt(var)


def auc_mannwhitney(y, s):
    y, s = np.asarray(y), np.asarray(s, float)
    u = stats.mannwhitneyu(s[y == 1], s[y == 0], alternative="two-sided").statistic
    return u / ((y == 1).sum() * (y == 0).sum())


def from_table(n11: int, n10: int, n01: int, n00: int):
    """y, pred_a, pred_b realising a paired 2x2 table: n10 = a right & b wrong, n01 = a wrong & b right."""
    right_a = np.r_[np.ones(n11), np.ones(n10), np.zeros(n01), np.zeros(n00)].astype(bool)
    right_b = np.r_[np.ones(n11), np.zeros(n10), np.ones(n01), np.zeros(n00)].astype(bool)
    y = np.arange(len(right_a)) % 2
    return y, np.where(right_a, y, 1 - y), np.where(right_b, y, 1 - y)


def scored(n, noise_a, noise_b, seed=0, ties=False):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    a, b = y + rng.normal(0, noise_a, n), y + rng.normal(0, noise_b, n)
    if ties:
        a, b = np.round(a, 1), np.round(b, 1)
    return y, a, b


# -- DeLong -----------------------------------------------------------------------------------------


def test_midranks_are_scipys_average_ranks():
    rng = np.random.default_rng(3)
    for x in [rng.normal(size=50), rng.integers(0, 5, 200).astype(float), np.ones(7), np.array([2.0]), np.array([3.0, 1.0, 3.0, 2.0])]:
        np.testing.assert_array_equal(midranks(x), stats.rankdata(x, method="average"))


@pytest.mark.parametrize("n,ties,seed", [(40, False, 0), (300, False, 1), (300, True, 2), (25, True, 3)])
def test_delong_matches_the_definition_and_mann_whitney(n, ties, seed):
    y, a, b = scored(n, 1.0, 0.8, seed=seed, ties=ties)
    r = delong(y, a, b)
    auc_a, auc_b, diff, se = slow_delong(y, a, b)
    assert r.auc_a == pytest.approx(auc_a, abs=1e-12) and r.auc_b == pytest.approx(auc_b, abs=1e-12)
    assert r.auc_a == pytest.approx(auc_mannwhitney(y, a), abs=1e-12) and roc_auc(y, b) == pytest.approx(auc_mannwhitney(y, b), abs=1e-12)
    assert r.diff == pytest.approx(diff, abs=1e-12) and r.se == pytest.approx(se, rel=1e-9)
    assert r.z == pytest.approx(diff / se, rel=1e-9)
    assert r.p_value == pytest.approx(2 * stats.norm.sf(abs(diff / se)), rel=1e-9)
    half = stats.norm.ppf(0.975) * se
    assert r.ci == pytest.approx((diff - half, diff + half), rel=1e-9)


def test_delong_hand_computed_example():
    # positives 0.9 0.6 0.4, negatives 0.7 0.3 0.2 (model a); model b separates perfectly.
    y = [1, 1, 1, 0, 0, 0]
    a = [0.9, 0.6, 0.4, 0.7, 0.3, 0.2]
    b = [0.9, 0.8, 0.75, 0.7, 0.3, 0.2]
    r = delong(y, a, b)
    # V10 = share of negatives below each positive, V01 = share of positives above each negative.
    # a: V10 = (1, 2/3, 2/3), V01 = (1/3, 1, 1): AUC 7/9.  b: V10 = (1, 1, 1), V01 = (1, 1, 1): AUC 1.
    # d10 = (0, 1/3, 1/3): sample variance 1/27; d01 = (2/3, 0, 0): 4/27; Var(diff) = (1/27)/3 + (4/27)/3 = 5/81
    assert (r.auc_a, r.auc_b) == (pytest.approx(7 / 9), 1.0)
    assert r.diff == pytest.approx(2 / 9) and r.se == pytest.approx(math.sqrt(5 / 81))
    assert r.z == pytest.approx((2 / 9) / math.sqrt(5 / 81))


def test_delong_edge_cases():
    y, a, _ = scored(60, 1.0, 1.0, seed=4)
    same = delong(y, a, a)  # identical scores: no difference and no variance
    assert (same.diff, same.se, same.p_value) == (0.0, 0.0, 1.0) and math.isnan(same.z)
    perfect = y * 2.0 + 1
    both = delong(y, perfect, perfect * 3)  # perfect separation by both
    assert (both.auc_a, both.auc_b, both.se) == (1.0, 1.0, 0.0)
    flat = delong(y, np.zeros(60), perfect)  # every score tied: AUC 1/2, constant components
    assert flat.auc_a == 0.5 and flat.auc_b == 1.0 and flat.se == 0.0 and flat.z == math.inf and flat.p_value == 0.0
    with pytest.raises(InvalidInput, match="1 positive and 3 negative"):
        delong([1, 0, 0, 0], [0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1])
    with pytest.raises(InvalidInput, match="0 or 1"):
        delong([1, 2, 0, 0], [0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1])
    with pytest.raises(InvalidInput, match="same holdout"):
        delong([1, 1, 0, 0], [0.1, 0.2, 0.3], [0.4, 0.3, 0.2, 0.1])
    with pytest.raises(InvalidInput, match="finite"):
        delong([1, 1, 0, 0], [0.1, np.nan, 0.3, 0.2], [0.4, 0.3, 0.2, 0.1])


def test_normal_one_sided_boundaries():
    assert normal_one_sided(-0.01, 0.02, -0.01) == (0.0, 0.5)  # exactly at the margin: p = 1/2
    assert normal_one_sided(0.0, 0.0, -0.01) == (math.inf, 0.0)  # exact difference above the bound
    z, p = normal_one_sided(-0.01, 0.0, -0.01)
    assert math.isnan(z) and p == 1.0  # exactly at the bound, no variance: H0 holds
    assert normal_one_sided(-0.02, 0.0, -0.01) == (-math.inf, 1.0)


# -- McNemar and Tango --------------------------------------------------------------------------------


def test_mcnemar_on_agrestis_presidential_approval_table():
    # Agresti, Categorical Data Analysis: approval of the president in two surveys of the same 1600
    # people: (794, 150 / 86, 570).  McNemar's z = (86 - 150) / sqrt(236) = -4.17 (chi-square 17.36
    # without correction); with the continuity correction (|150 - 86| - 1)^2 / 236 = 3969 / 236.
    y, a, b = from_table(794, 150, 86, 570)
    r = mcnemar(y, a, b)
    assert (r.b, r.c, r.n, r.method) == (150, 86, 1600, "chi2_cc")
    assert r.statistic == pytest.approx(3969 / 236) and r.statistic == pytest.approx(16.818, abs=1e-3)
    assert r.p_value == pytest.approx(2 * stats.norm.sf(63 / math.sqrt(236)), rel=1e-9)
    assert (64 / math.sqrt(236)) ** 2 == pytest.approx(17.36, abs=0.01)  # the uncorrected textbook value
    assert abs(tango_statistic(150, 86, 1600, 0.0)) == pytest.approx(64 / math.sqrt(236))  # margin 0: McNemar's z
    assert (r.acc_a, r.acc_b, r.diff) == (pytest.approx(944 / 1600), pytest.approx(880 / 1600), pytest.approx(-64 / 1600))


def test_mcnemar_exact_for_few_discordant_pairs():
    y, a, b = from_table(40, 1, 9, 10)
    r = mcnemar(y, a, b)
    # P(X <= 1) for X ~ Binomial(10, 1/2) is 11/1024; two-sided 22/1024
    assert (r.method, r.statistic, r.b, r.c) == ("exact", 9.0, 1, 9) and r.p_value == pytest.approx(22 / 1024)
    assert mcnemar_one_sided(1, 9) == pytest.approx(11 / 1024)
    assert mcnemar_one_sided(9, 1) == pytest.approx(1 - 1 / 1024)
    same = mcnemar(y, a, a)
    assert (same.b, same.c, same.p_value) == (0, 0, 1.0)
    tiny = mcnemar([1, 0, 1], [1, 0, 0], [1, 0, 1])
    assert (tiny.b, tiny.c, tiny.n, tiny.p_value) == (0, 1, 3, 1.0)


def test_tangos_restricted_mle_matches_a_numerical_maximisation():
    # maximise b log(q + d) + c log q + (n - b - c) log(1 - 2q - d) over q numerically, then the score statistic
    for b, c, n, theta0 in [(150, 86, 1600, -0.05), (12, 20, 200, -0.02), (3, 0, 40, -0.1), (20, 5, 100, 0.03), (0, 0, 50, -0.05)]:
        d = -theta0
        bb, cc = (b, c) if d >= 0 else (c, b)
        d = abs(d)

        def nll(q):
            return -(bb * math.log(q + d) if bb else 0) - (cc * math.log(q) if cc else 0) - (n - bb - cc) * math.log(1 - 2 * q - d)

        q = optimize.minimize_scalar(nll, bounds=(1e-12, (1 - d) / 2 - 1e-12), method="bounded", options={"xatol": 1e-12}).x
        expected = (c - b - n * theta0) / math.sqrt(n * (2 * q + d - d * d))
        assert tango_statistic(b, c, n, theta0) == pytest.approx(expected, rel=1e-5)


def test_tangos_interval_inverts_the_test():
    for b, c, n in [(150, 86, 1600), (12, 20, 200), (0, 0, 30), (5, 0, 12), (30, 30, 60)]:
        low, high = tango_interval(b, c, n, 0.9)
        assert low <= (c - b) / n <= high
        if low > -1:
            assert tango_statistic(b, c, n, low) == pytest.approx(stats.norm.ppf(0.95), abs=1e-6)
        if high < 1:
            assert tango_statistic(b, c, n, high) == pytest.approx(-stats.norm.ppf(0.95), abs=1e-6)
        for margin in (0.0, 0.01, 0.05, 0.2):
            _, p = tango_noninferiority(b, c, n, margin)
            assert (p < 0.05) == (low > -margin)  # the decision and the interval agree


# -- the paired bootstrap ---------------------------------------------------------------------------------


def test_paired_bootstrap_percentile_matches_a_hand_written_bootstrap():
    rng = np.random.default_rng(5)
    y = rng.normal(size=400)
    a, b = y + rng.normal(0, 1.0, 400), y + rng.normal(0, 0.9, 400)
    r = paired_bootstrap(rmse, y, a, b, higher_is_better=False, confidence=0.9, n_resamples=4000, method="percentile", random_state=1)
    idx = np.random.default_rng(99).integers(0, 400, (4000, 400))  # our own resamples of the same rows
    diffs = np.sqrt(((b[idx] - y[idx]) ** 2).mean(1)) - np.sqrt(((a[idx] - y[idx]) ** 2).mean(1))
    assert r.diff == pytest.approx(np.sqrt(((b - y) ** 2).mean()) - np.sqrt(((a - y) ** 2).mean()))
    assert r.ci[0] == pytest.approx(np.quantile(diffs, 0.05), abs=0.01) and r.ci[1] == pytest.approx(np.quantile(diffs, 0.95), abs=0.01)
    assert r.standard_error == pytest.approx(diffs.std(ddof=1), rel=0.1)
    assert r.improvement == -r.diff and r.improvement_ci == (-r.ci[1], -r.ci[0]) and r.method == "percentile"
    again = paired_bootstrap(rmse, y, a, b, higher_is_better=False, confidence=0.9, n_resamples=4000, method="percentile", random_state=1)
    assert again == r  # a fixed seed reproduces the interval exactly
    bca = paired_bootstrap(rmse, y, a, b, higher_is_better=False, confidence=0.9, n_resamples=2000, method="BCa", random_state=1)
    assert bca.method == "BCa" and bca.ci[0] < bca.diff < bca.ci[1]


def test_paired_bootstrap_with_a_plain_python_metric_and_degenerate_data():
    def median_abs(y, p):
        return float(np.median(np.abs(p - y)))

    rng = np.random.default_rng(6)
    y = rng.normal(size=80)
    a, b = y + rng.normal(0, 1, 80), y + rng.normal(0, 1, 80)
    r = paired_bootstrap(median_abs, y, a, b, higher_is_better=False, n_resamples=300, random_state=0)
    assert r.method == "BCa" and r.ci[0] <= r.ci[1]
    same = paired_bootstrap(median_abs, y, a, a, higher_is_better=False, n_resamples=300)
    assert (same.diff, same.ci, same.method) == (0.0, (0.0, 0.0), "exact")
    shifted = paired_bootstrap(rmse, np.zeros(30), np.ones(30), np.full(30, 2.0), higher_is_better=False, n_resamples=300)
    assert shifted.ci == (1.0, 1.0) and shifted.method == "percentile"  # constant difference: BCa undefined
    with pytest.raises(InvalidInput, match="at least 2"):
        paired_bootstrap(rmse, [1.0], [1.0], [2.0], higher_is_better=False)


# -- the gate's decision -------------------------------------------------------------------------------------


def _storable(result):
    json.dumps(result.evidence, allow_nan=False)
    return result


def test_delong_gate_margin_boundary_and_superiority():
    y, a, b = scored(400, 1.0, 0.7, seed=7)
    better = _storable(evaluate_gate(GateConfig(margin=0.01), y, a, b))
    ev = better.evidence
    assert better.passed and ev["test"] == "delong" and ev["noninferiority"]["passed"]
    assert (ev["n"], ev["n_positive"] + ev["n_negative"]) == (400, 400)
    r = delong(y, a, b, confidence=0.9)
    assert (ev["champion"], ev["challenger"], ev["difference"], ev["statistic"], ev["p_value"]) == (r.auc_a, r.auc_b, r.diff, r.z, r.p_value)
    assert ev["confidence_interval"]["level"] == pytest.approx(0.9) and ev["confidence_interval"]["low"] == pytest.approx(r.ci[0])
    assert ev["noninferiority"]["p_value"] == pytest.approx(stats.norm.sf((r.diff + 0.01) / r.se))
    assert "passed" in better.decision and "roc_auc" in better.decision

    # the champion and challenger swapped: the challenger is worse by |diff|; a margin of exactly
    # that is the null's boundary (p = 1/2): it fails, and so does any smaller margin
    worse = -r.diff
    at = evaluate_gate(GateConfig(margin=-worse), y, b, a)
    assert not at.passed and at.evidence["noninferiority"]["p_value"] == pytest.approx(0.5)
    wide = evaluate_gate(GateConfig(margin=0.4), y, b, a)
    assert wide.passed and not wide.evidence["superiority"]["passed"]
    required = evaluate_gate(GateConfig(margin=0.4, require_superiority=True), y, b, a)
    assert not required.passed and "not significantly better" in required.decision
    assert evaluate_gate(GateConfig(margin=0.01, require_superiority=True), y, a, b).passed  # clearly better


def test_identical_and_perfect_models_at_the_margin():
    y, a, _ = scored(200, 1.0, 1.0, seed=8)
    same = _storable(evaluate_gate(GateConfig(margin=0.01), y, a, a.copy()))
    assert same.passed and same.evidence["statistic"] is None and same.evidence["noninferiority"]["p_value"] == 0.0
    assert not evaluate_gate(GateConfig(margin=0.0), y, a, a).passed  # margin 0: "not worse" cannot be shown for a tie
    assert not evaluate_gate(GateConfig(margin=0.01, require_superiority=True), y, a, a).passed
    perfect = y * 1.0
    both = _storable(evaluate_gate(GateConfig(margin=0.01), y, perfect, perfect + 1))
    assert both.passed and (both.evidence["champion"], both.evidence["challenger"]) == (1.0, 1.0)


def test_accuracy_gate_with_labels_probabilities_and_class_scores():
    y, a, b = from_table(400, 10, 30, 60)
    r = _storable(evaluate_gate(GateConfig(metric="accuracy", margin=0.02, require_superiority=True), y, a, b))
    ev = r.evidence
    assert r.passed and ev["test"] == "mcnemar" and ev["discordant"] == {"champion_only": 10, "challenger_only": 30}
    assert ev["statistic"] == pytest.approx(19**2 / 40) and ev["method"].endswith("continuity correction")
    assert ev["superiority"]["p_value"] == pytest.approx(stats.norm.sf(19 / math.sqrt(40)))
    assert ev["noninferiority"]["p_value"] == pytest.approx(stats.norm.sf(tango_statistic(10, 30, 500, -0.02)))
    # probabilities (thresholded at 0.5) and 2-D class scores (argmax) give the same labels
    probs_a, probs_b = np.where(a == 1, 0.8, 0.3), np.where(b == 1, 0.6, 0.1)
    assert evaluate_gate(GateConfig(metric="accuracy", margin=0.02), y, probs_a, probs_b).evidence["discordant"] == ev["discordant"]
    two_d = evaluate_gate(GateConfig(metric="accuracy", margin=0.02), y, np.c_[1 - probs_a, probs_a], np.c_[1 - probs_b, probs_b])
    assert two_d.evidence["discordant"] == ev["discordant"]

    # the challenger exactly `margin` worse (acc 0.80 vs 0.82 on 500 rows, margin 0.02) fails
    y2, a2, b2 = from_table(390, 20, 10, 80)
    exact = evaluate_gate(GateConfig(metric="accuracy", margin=0.02), y2, a2, b2)
    assert exact.evidence["difference"] == pytest.approx(-0.02) and not exact.passed
    assert exact.evidence["noninferiority"]["p_value"] == pytest.approx(0.5)
    # identical predictions: passes with a margin on enough rows, not on a tiny holdout, never with margin 0
    assert evaluate_gate(GateConfig(metric="accuracy", margin=0.02), y, a, a).passed
    assert not evaluate_gate(GateConfig(metric="accuracy", margin=0.02), y[:20], a[:20], a[:20]).passed
    assert not evaluate_gate(GateConfig(metric="accuracy", margin=0.0), y, a, a).passed
    few = _storable(evaluate_gate(GateConfig(metric="accuracy", margin=0.05), [1, 0, 1], [1, 0, 0], [1, 0, 1]))
    assert few.evidence["method"] == "McNemar: exact binomial" and few.evidence["n"] == 3 and not few.passed


def test_bootstrap_gate_directions_and_custom_metrics():
    rng = np.random.default_rng(9)
    y = rng.normal(size=300)
    a, b = y + rng.normal(0, 1.0, 300), y + rng.normal(0, 0.8, 300)
    cfg = {"metric": "rmse", "margin": 0.02, "n_resamples": 1000, "seed": 3}
    good = _storable(evaluate_gate(cfg, y, a, b))
    ev = good.evidence
    assert good.passed and ev["test"] == "paired_bootstrap" and ev["seed"] == 3 and ev["n_resamples"] == 1000 and ev["method"] == "BCa"
    assert ev["difference"] < 0 and ev["improvement"]["of"] == "champion - challenger" and ev["p_value"] is None
    assert ev["improvement"]["lower_bound"] == pytest.approx(-ev["confidence_interval"]["high"])
    assert evaluate_gate(cfg, y, a, b).evidence == ev  # reproducible
    bad = evaluate_gate(cfg, y, b, a)  # the worse model as challenger: lower is better for rmse
    assert not bad.passed and "not shown non-inferior" in bad.decision
    assert evaluate_gate({**cfg, "require_superiority": True}, y, a, b).passed

    def within_half(yy, p):
        return float(np.mean(np.abs(p - yy) < 0.5))

    custom = {"metric": "hit_rate", "higher_is_better": True, "margin": 0.0, "n_resamples": 300, "bootstrap_method": "percentile"}
    r = _storable(evaluate_gate(custom, y, a, b, metric_fn=within_half))
    assert r.evidence["metric"] == "hit_rate" and r.evidence["challenger"] == within_half(y, b) and r.evidence["method"] == "percentile"
    with pytest.raises(InvalidInput, match="pass metric_fn"):
        evaluate_gate(custom, y, a, b)
    p = 1 / (1 + np.exp(-y))
    yb = (y > 0).astype(float)
    ll = _storable(evaluate_gate({"metric": "log_loss", "margin": 0.01, "n_resamples": 500}, yb, p, np.clip(p, 0.0, 1.0)))
    assert ll.passed and ll.evidence["method"] == "exact"


def test_no_champion_passes_and_says_so():
    y, _, b = scored(50, 1.0, 1.0, seed=10)
    for cfg, out in [(GateConfig(), b), (GateConfig(metric="accuracy"), (b > 0.5) * 1), (GateConfig(metric="mae"), b)]:
        r = _storable(evaluate_gate(cfg, y, None, out))
        assert r.passed and r.evidence["test"] == "none" and r.evidence["reason"] == "no champion" and r.evidence["n"] == 50
        assert r.evidence["champion"] is None and "no champion" in r.decision


# -- configuration -------------------------------------------------------------------------------------------


def test_config_from_yaml_and_validation_names_the_field():
    cfg = GateConfig.from_yaml("model: x\ngate:\n  metric: accuracy\n  margin: 0.005\n  require_superiority: true\n", source="train.yaml")
    assert (cfg.metric, cfg.margin, cfg.require_superiority, cfg.alpha, cfg.higher_is_better, cfg.test) == ("accuracy", 0.005, True, 0.05, True, "mcnemar")
    assert GateConfig.from_dict({"metric": "RMSE"}).higher_is_better is False and GateConfig().test == "delong"
    assert GateConfig.from_dict({"metric": "mae", "bootstrap_method": "bca"}).bootstrap_method == "BCa"
    bad = [
        ({"margin": -0.1}, "gate.margin", ">= 0"),
        ({"margin": "small"}, "gate.margin", "number"),
        ({"margin": True}, "gate.margin", "number"),
        ({"metric": "accuracy", "margin": 1.5}, "gate.margin", "below 1"),
        ({"alpha": 0.7}, "gate.alpha", "(0, 0.5)"),
        ({"margn": 0.1}, "gate.margn", "unknown field"),
        ({"metric": "rmse", "higher_is_better": True}, "gate.higher_is_better", "lower is better"),
        ({"metric": "f1"}, "gate.higher_is_better", "required"),
        ({"metric": "a b"}, "gate.metric", "metric name"),
        ({"require_superiority": "yes"}, "gate.require_superiority", "true or false"),
        ({"seed": -1}, "gate.seed", "integer"),
        ({"n_resamples": 10}, "gate.n_resamples", ">= 100"),
        ({"bootstrap_method": "jackknife"}, "gate.bootstrap_method", "one of"),
        ({"threshold": 1}, "gate.threshold", "(0, 1)"),
    ]
    for section, field, problem in bad:
        with pytest.raises(ConfigError, match=f"train.yaml: {field}: .*{problem.replace('(', '.').replace(')', '.')}"):
            GateConfig.from_dict(section, source="train.yaml", prefix="gate.")
    with pytest.raises(ConfigError, match="train.yaml: gate: missing"):
        GateConfig.from_yaml("model: x\n", source="train.yaml")
    with pytest.raises(ConfigError, match="train.yaml: line 3: not valid YAML"):
        GateConfig.from_yaml("gate:\n  margin: [1\n", source="train.yaml")
    with pytest.raises(ConfigError, match="GateConfig: margin"):
        GateConfig(margin=-1)


# -- parity gate ----------------------------------------------------------------------------------------------


def _run_cli(argv):
    parser = argparse.ArgumentParser()
    gate_cli.add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_parity_gate_reads_prediction_files(tmp_path, capsys):
    y, a, b = scored(300, 1.0, 0.7, seed=11)
    pd.DataFrame({"y_true": y, "score": a}).to_parquet(tmp_path / "champ.parquet")
    pd.DataFrame({"y_true": y, "score": b}).to_csv(tmp_path / "chall.csv", index=False)
    (tmp_path / "gate.yaml").write_text("gate:\n  metric: roc_auc\n  margin: 0.01\n")
    out = tmp_path / "evidence.json"
    argv = ["gate", "--champion", str(tmp_path / "champ.parquet"), "--challenger", str(tmp_path / "chall.csv"), "--config", str(tmp_path / "gate.yaml")]
    assert _run_cli([*argv, "--evidence-out", str(out)]) == 0
    assert capsys.readouterr().out.startswith("passed: challenger roc_auc")
    assert json.loads(out.read_text()) == evaluate_gate(GateConfig(margin=0.01), y, a, b).evidence
    # the champion as challenger, superiority required: fails, exit 1
    swapped = ["gate", "--champion", str(tmp_path / "chall.csv"), "--challenger", str(tmp_path / "champ.parquet"), "--json", "--require-superiority"]
    assert _run_cli(swapped) == 1
    assert json.loads(capsys.readouterr().out)["passed"] is False
    pd.DataFrame({"y_true": 1 - y, "score": b}).to_csv(tmp_path / "other.csv", index=False)
    with pytest.raises(InvalidInput, match="different y_true"):
        _run_cli(["gate", "--champion", str(tmp_path / "other.csv"), "--challenger", str(tmp_path / "champ.parquet")])
    pd.DataFrame({"label": y, "score": b}).to_csv(tmp_path / "nolabel.csv", index=False)
    with pytest.raises(InvalidInput, match="missing column"):
        _run_cli(["gate", "--challenger", str(tmp_path / "nolabel.csv")])
    assert _run_cli(["gate", "--challenger", str(tmp_path / "chall.csv"), "--metric", "accuracy"]) == 0  # no champion
    assert "no champion" in capsys.readouterr().out
