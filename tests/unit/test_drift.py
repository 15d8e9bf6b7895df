"""Drift statistics, calibration, window evaluation and mergeable counts (parity.monitoring.drift)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats as sps
from scipy.spatial.distance import jensenshannon

from parity.monitoring.drift import (
    PSI_EPSILON,
    Counts,
    DriftConfig,
    benjamini_hochberg,
    bonferroni,
    calibrate,
    chi2_test,
    evaluate_window,
    js_distance,
    ks_binned,
    psi,
)
from parity.monitoring.profile import build_profile

# -- statistics against hand-computed values and scipy ----------------------------------------


def test_psi_hand_computed():
    # p = (.5, .5), q = (.8, .2): 0.3 ln 1.6 + (-0.3) ln 0.4
    assert psi([50, 50], [80, 20]) == pytest.approx(0.3 * math.log(1.6) + 0.3 * math.log(2.5), rel=1e-12)
    assert psi([10, 20, 30], [10, 20, 30]) == 0.0
    assert psi([1, 2, 3], [2, 4, 6]) == pytest.approx(0.0, abs=1e-15)  # proportions, not counts
    # an empty reference bin: its proportion is floored at PSI_EPSILON
    want = (0.9 - 1.0) * math.log(0.9 / 1.0) + (0.1 - PSI_EPSILON) * math.log(0.1 / PSI_EPSILON)
    assert psi([100, 0], [90, 10]) == pytest.approx(want, rel=1e-12)
    assert psi([100, 0], [90, 10]) == psi([90, 10], [100, 0])  # symmetric
    assert psi([100, 0], [90, 10], eps=1e-3) == pytest.approx((-0.1) * math.log(0.9) + (0.1 - 1e-3) * math.log(100), rel=1e-12)


def test_js_distance_against_scipy():
    rng = np.random.default_rng(0)
    for _ in range(50):
        k = int(rng.integers(2, 15))
        p = rng.integers(0, 50, size=k).astype(float)
        q = rng.integers(0, 50, size=k).astype(float)
        p[rng.random(k) < 0.2] = 0
        q[rng.random(k) < 0.2] = 0
        if p.sum() == 0 or q.sum() == 0:
            continue
        assert js_distance(p, q) == pytest.approx(jensenshannon(p, q, base=2), abs=1e-12)
    assert js_distance([1, 0], [0, 1]) == pytest.approx(1.0)
    assert js_distance([3, 3], [5, 5]) == 0.0


def test_chi2_against_scipy_contingency():
    rng = np.random.default_rng(1)
    for _ in range(30):
        k = int(rng.integers(2, 12))
        r = rng.integers(1, 500, size=k)
        c = rng.integers(1, 100, size=k)
        stat, dof, p = chi2_test(r, c)
        want = sps.chi2_contingency(np.vstack([r, c]), correction=False)
        assert stat == pytest.approx(want.statistic, rel=1e-10)
        assert dof == want.dof
        assert p == pytest.approx(want.pvalue, rel=1e-8, abs=1e-300)
    # bins empty in both samples are dropped (expected count 0), the dof with them
    stat, dof, p = chi2_test([10, 0, 30, 5], [3, 0, 9, 4])
    want = sps.chi2_contingency(np.array([[10, 30, 5], [3, 9, 4]]), correction=False)
    assert (stat, dof) == (pytest.approx(want.statistic), want.dof) and p == pytest.approx(want.pvalue)


def test_ks_binned_equals_raw_ks_when_bins_hold_single_values():
    # integer data with an edge at every integer: the binned CDFs are the ECDFs at every jump
    rng = np.random.default_rng(2)
    edges = np.arange(1, 10)
    for _ in range(10):
        a = rng.integers(0, 10, size=3000)
        b = np.minimum(rng.poisson(4.0, size=400), 9)
        ra = np.bincount(np.searchsorted(edges, a, side="right"), minlength=10)
        rb = np.bincount(np.searchsorted(edges, b, side="right"), minlength=10)
        d, p = ks_binned(ra, rb)
        assert d == pytest.approx(sps.ks_2samp(a, b).statistic, abs=1e-12)
        en = 3000 * 400 / 3400
        assert p == pytest.approx(sps.kstwobign.sf(math.sqrt(en) * d), rel=1e-9)
    # coarser bins can only lower D
    a, b = rng.normal(size=2000), rng.normal(0.2, size=500)
    e = np.quantile(a, np.linspace(0.1, 0.9, 9))
    d, _ = ks_binned(
        np.bincount(np.searchsorted(e, a, "right"), minlength=10), np.bincount(np.searchsorted(e, b, "right"), minlength=10)
    )
    assert d <= sps.ks_2samp(a, b).statistic + 1e-12


def test_corrections():
    p = [0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205]
    rej, cutoff = benjamini_hochberg(p, 0.05)  # step-up: only the first two pass i * 0.05 / 8
    assert rej.tolist() == [True, True] + [False] * 6 and cutoff == 0.008
    rng = np.random.default_rng(3)
    for _ in range(50):
        pv = rng.random(20) ** 3
        rej, _ = benjamini_hochberg(pv, 0.05)
        np.testing.assert_array_equal(rej, sps.false_discovery_control(pv) <= 0.05)
    rej, level = bonferroni(p, 0.05)
    assert level == 0.05 / 8 and rej.tolist() == [True] + [False] * 7
    assert benjamini_hochberg([], 0.05)[0].shape == (0,)


# -- a reference and its windows ------------------------------------------------------------

CATS = np.array(["a", "b", "c", "d"], dtype=object)
CAT_P = np.array([0.4, 0.3, 0.2, 0.1])


def draw(rng, n, shift=0.0, scale=1.0, cat_p=CAT_P, missing=0.0):
    x = rng.normal(shift, scale, size=n)
    y = rng.exponential(size=n)
    if missing:
        y[rng.random(n) < missing] = np.nan
    c = CATS[rng.choice(4, size=n, p=cat_p)]
    s = 1 / (1 + np.exp(-x))
    return {"x": x, "y": y, "c": c}, {"s": s}


@pytest.fixture(scope="module")
def profile():
    rng = np.random.default_rng(42)
    feats, outs = draw(rng, 100_000, missing=0.01)
    return build_profile(feats, outs, bins=10, top_k=10)


def window(profile, rng, n=1000, **kw) -> Counts:
    feats, outs = draw(rng, n, **kw)
    w = Counts.for_profile(profile)
    w.add(features=feats, outputs=outs)
    return w


# -- mergeable counts -------------------------------------------------------------------------


def test_counts_match_profile_and_merge(profile):
    rng = np.random.default_rng(5)
    parts = [draw(rng, n, missing=0.05) for n in (300, 1, 0, 777)]
    windows = []
    for feats, outs in parts:
        w = Counts.for_profile(profile)
        w.add(features=feats, outputs=outs)
        windows.append(w)
    a, b, c, d = windows
    assert (a.merge(b)).merge(c).merge(d) == a.merge(b.merge(c.merge(d)))  # associative
    assert a.merge(b) == b.merge(a)
    # equals counting the concatenated data in one batch
    whole = Counts.for_profile(profile)
    whole.add(features={k: np.concatenate([p[0][k] for p in parts]) for k in ("x", "y", "c")},
              outputs={"s": np.concatenate([p[1]["s"] for p in parts])})  # fmt: skip
    assert Counts.merge_all(windows) == whole
    assert whole.rows == 1078
    # the same counts through the 2-D path (numeric columns; the categorical column by value)
    two_d = Counts.for_profile(profile)
    for feats, outs in parts:
        two_d.add(features={"c": feats["c"]})
        two_d.rows -= len(feats["c"])
        two_d.add(features=None, outputs=np.asarray(outs["s"]).reshape(-1, 1))
        two_d.rows -= len(outs["s"])
        two_d.add_column("features", "x", feats["x"])
        two_d.add_column("features", "y", feats["y"])
        two_d.rows += len(feats["x"])
    assert two_d == whole
    # a window of reference data counted like the profile gives the profile's counts
    rng = np.random.default_rng(42)
    feats, outs = draw(rng, 100_000, missing=0.01)
    ref = Counts.for_profile(profile)
    ref.add(features=feats, outputs=outs)
    assert ref.column_counts("features", "x").tolist() == profile["features"]["x"]["counts"]
    assert ref.column_counts("features", "c").tolist() == [t["count"] for t in profile["features"]["c"]["top"]] + [0]
    assert int(ref.missing[ref.layout.index[("features", "y")]]) == profile["features"]["y"]["missing"]
    # JSON round trip
    doc = json.loads(json.dumps(whole.to_dict(), allow_nan=False))
    assert Counts.from_dict(doc, profile) == whole
    # in-place merge
    e = a.copy()
    e += b
    assert e == a.merge(b)


def test_counts_2d_batch_in_profile_order():
    rng = np.random.default_rng(9)
    feats = {"u": rng.normal(size=5000), "k": rng.integers(0, 5, size=5000).astype(str), "v": rng.uniform(size=5000)}
    profile = build_profile(feats, {"o": rng.normal(size=5000)})
    batch = rng.normal(size=(400, 3))
    batch[:, 1] = rng.integers(0, 7, size=400)  # category codes in a float tensor ("5", "6" are unseen)
    batch[::17, 0] = np.nan
    w = Counts.for_profile(profile)
    w.add(features=batch, outputs=rng.normal(size=(400, 1)))
    by_name = Counts.for_profile(profile)
    by_name.add_column("features", "u", batch[:, 0])
    by_name.add_column("features", "k", [str(int(v)) for v in batch[:, 1]])
    by_name.add_column("features", "v", batch[:, 2])
    assert np.array_equal(w.bins[:3], by_name.bins[:3]) and np.array_equal(w.missing[:3], by_name.missing[:3])
    assert w.rows == 400 and w.column_counts("features", "k")[-1] == int((batch[:, 1] >= 5).sum())
    with pytest.raises(ValueError):
        w.add(features=batch[:, :2])
    other = Counts.for_profile(build_profile({"u": rng.normal(size=10)}, {}))
    with pytest.raises(ValueError):
        w.merge(other)


# -- calibration ------------------------------------------------------------------------------


def binomial_999(n: int, rate: float) -> tuple[int, int]:
    """The central 99.9% interval of Binomial(n, rate)."""
    return int(sps.binom.ppf(0.0005, n, rate)), int(sps.binom.ppf(0.9995, n, rate))


def test_calibrated_false_alarm_rate(profile):
    """No-drift windows, drawn fresh from the generating process (not resampled from the profile),
    alarm at the configured rate: per test (uncorrected) within the binomial 99.9% interval, and
    the whole window (corrected) at most the rate.  With a 100,000-row reference and 1,000-row
    windows the reference's own sampling error adds about 1% to the statistics' variance, so the
    per-test rate conditional on this one reference is the nominal one to well within the interval."""
    rate = 0.05
    cal = calibrate(profile, 1000, false_alarm_rate=rate, simulations=4000, seed=1)
    assert cal.simulations >= 4000 and calibrate(profile, 1000, false_alarm_rate=rate, simulations=4000, seed=1) is cal
    rng = np.random.default_rng(123)
    n_windows = 2000
    hits = {}
    window_alarms = {"bh": 0, "bonferroni": 0}
    for _ in range(n_windows):
        w = window(profile, rng, missing=0.01)
        rep = evaluate_window(profile, w, cal, DriftConfig(correction="none"))
        for col in rep.columns:
            for s, st in col["statistics"].items():
                hits[(col["key"], s)] = hits.get((col["key"], s), 0) + (st["p_value"] <= rate)
        for corr in window_alarms:
            window_alarms[corr] += evaluate_window(profile, w, cal, DriftConfig(correction=corr)).drift
    lo, hi = binomial_999(n_windows, rate)
    assert len(hits) == 4 * 3 + 3  # ks on the three numeric columns only
    for key, k in hits.items():
        assert lo <= k <= hi, (key, k, (lo, hi))
    for corr, k in window_alarms.items():
        assert k <= hi, (corr, k, hi)


def test_calibrated_thresholds_are_quantiles(profile):
    cal = calibrate(profile, 500, false_alarm_rate=0.01, simulations=3000, seed=2)
    t = cal.thresholds["features/x"]
    assert set(t) == {"psi", "js", "chi2", "ks"} and set(cal.thresholds["features/c"]) == {"psi", "js", "chi2"}
    for s in t:
        assert 0 < t[s]["uncorrected"] < t[s]["bonferroni"]
    # a statistic just above the threshold has p <= rate, just below p > rate
    i = cal.keys.index("features/x")
    thr = cal.thresholds_at(0.01)[i, 2]
    assert cal.p_value("features/x", "chi2", thr * 1.0001 + 1e-9) <= 0.01 < cal.p_value("features/x", "chi2", thr)
    json.dumps(cal.to_dict(), allow_nan=False)


def test_clear_shift_alarms(profile):
    cal = calibrate(profile, 1000, false_alarm_rate=0.01, seed=3)
    rng = np.random.default_rng(8)
    for shift in (0.5, -0.6):
        for _ in range(10):
            w = window(profile, rng, shift=shift, missing=0.01)
            x_ref = np.asarray(profile["features"]["x"]["counts"])
            assert psi(x_ref, w.column_counts("features", "x")) >= 0.2
            rep = evaluate_window(profile, w, cal)
            assert rep.drift and "features/x" in rep.drifted and "x" in rep.drifted_features
            assert "outputs/s" in rep.drifted and rep.drifted_outputs == ["s"]
            assert "features/y" not in rep.drifted and "features/c" not in rep.drifted
            json.dumps(rep.to_dict(), allow_nan=False)
    # a category-mix change is caught by the categorical column
    w = window(profile, rng, cat_p=np.array([0.1, 0.2, 0.3, 0.4]), missing=0.01)
    rep = evaluate_window(profile, w, cal, DriftConfig(correction="bonferroni"))
    assert rep.drifted == ["features/c"]


def test_report_content_and_data_quality(profile):
    cal = calibrate(profile, 1000, false_alarm_rate=0.01, seed=4)
    rng = np.random.default_rng(10)
    w = window(profile, rng, missing=0.2)  # y: 20% missing against 1%
    w.add(features={"x": np.array([50.0, -40.0, np.inf]), "c": np.array(["zz", "zz", "a"], dtype=object)})
    rep = evaluate_window(profile, w, cal)
    doc = json.loads(json.dumps(rep.to_dict(), allow_nan=False))
    assert "features/y:missing_rate" in doc["data_quality"]
    assert "features/x:outside_range" in doc["data_quality"] and "features/c:unseen" in doc["data_quality"]
    cols = {c["key"]: c for c in doc["columns"]}
    assert cols["features/x"]["data_quality"]["outside_range"]["below"] == 1
    assert cols["features/x"]["data_quality"]["outside_range"]["above"] == 2
    assert cols["features/c"]["data_quality"]["unseen"]["count"] == 2
    st = cols["features/x"]["statistics"]["chi2"]
    assert set(st) >= {"value", "normalised", "p_value", "threshold", "alarm", "dof", "p_value_asymptotic"}
    assert "ks" not in cols["features/c"]["statistics"]
    assert doc["tests"] == 15 and doc["calibrated_rows"] == 1000
    # a clean window has no data-quality flags
    clean = evaluate_window(profile, window(profile, rng, missing=0.01), cal)
    assert clean.data_quality == []
    # outputs can be left out of the alarm
    rep2 = evaluate_window(profile, window(profile, rng, shift=1.0), cal, DriftConfig(include_outputs=False))
    assert rep2.drifted_outputs == [] and rep2.tests == 11
    # an empty window: nothing to test, no alarm
    empty = evaluate_window(profile, Counts.for_profile(profile), cal)
    assert not empty.drift and empty.tests == 0
    json.dumps(empty.to_dict(), allow_nan=False)


def test_unseen_not_decidable_when_reference_had_other():
    rng = np.random.default_rng(12)
    cats = np.array([f"k{i}" for i in range(30)], dtype=object)
    prof = build_profile({"c": cats[rng.integers(0, 30, 3000)]}, {}, top_k=5)
    assert prof["features"]["c"]["other"] > 0
    w = Counts.for_profile(prof)
    w.add(features={"c": np.array(["new"] * 50, dtype=object)})
    rep = evaluate_window(prof, w, calibrate(prof, 50))
    assert rep.columns[0]["data_quality"]["unseen"] is None


def test_config_validation():
    with pytest.raises(ValueError):
        DriftConfig(correction="holm")
    with pytest.raises(ValueError):
        DriftConfig(statistics=("psi", "kl"))
    with pytest.raises(ValueError):
        calibrate({"features": {}, "outputs": {}}, 0)


def test_monitoring_document_shape(profile):
    from parity.monitoring.alerts import alerts_from_model
    from parity.monitoring.report import render_report

    cal = calibrate(profile, 1000, false_alarm_rate=0.01, seed=5)
    rng = np.random.default_rng(13)
    w = window(profile, rng, shift=0.7, missing=0.3)
    rep = evaluate_window(profile, w, cal)
    doc = json.loads(json.dumps(rep.to_monitoring_dict(), allow_nan=False))
    assert doc["alarm"] is True and set(doc["features"]) == {"x", "y", "c"} and set(doc["outputs"]) == {"s"}
    x = doc["features"]["x"]
    assert x["alarm"] is True and x["statistics"]["p_adjusted"] <= 0.01
    assert x["current"]["counts"] == w.column_counts("features", "x").tolist()
    assert x["reference"]["edges"] == profile["features"]["x"]["edges"]
    assert doc["features"]["y"]["quality"]["flags"] == ["missing_rate"]
    assert len(doc["features"]["c"]["reference"]["counts"]) == len(doc["features"]["c"]["current"]["counts"])
    # BH-adjusted p <= rate exactly where BH rejects
    for part in ("features", "outputs"):
        for name, col in doc[part].items():
            if "p_adjusted" in col["statistics"]:
                assert (col["statistics"]["p_adjusted"] <= 0.01) == col["alarm"], name
    entry = {"model": "m", "version": "1", "windows": [{"kind": "count", "rows": 1000, "closed": True, "report": doc}]}
    names = {a.name for a in alerts_from_model(entry)}
    assert "DriftAlarm" in names and "DataQuality" in names
    html = render_report({"version": 1, "generated_at": "2026-11-27T21:00:00Z", "models": [entry]})
    assert "x" in html and "<svg" in html
