"""Drift-detection evaluation: Parity's binned detectors (calibrated thresholds) against tests on the
raw values (scipy's two-sample KS always; Evidently and Alibi Detect from their own virtualenv,
.venv-drift, through bench/drift_peers.py, where they install).

    .venv/bin/python bench/drift_eval.py                       # full run (a few minutes on 2 cores)
    .venv/bin/python bench/drift_eval.py --no-peers --null-windows 200 --reps 2   # quick, ours + scipy

Data: a reference of ``--ref-rows`` rows (five features: normal, log-normal with 2% missing,
uniform, Poisson counts, an 8-category column; one model output, a logistic score of the features);
its profile (``build_profile``, 10 bins, top 20) is what our detectors see.  Every window is a fresh
draw of ``--window`` rows from the generating process (never a resample of the profile), so the
false-alarm figures include the reference's own sampling error.

Streams:
- no drift: ``--null-windows`` windows from the reference process;
- drift: per scenario ``--reps`` streams of ``--pre`` clean windows then ``--post`` drifted ones.
  Scenarios: mean shift of ``x_norm`` (0.05, 0.1, 0.2, 0.5 sd), its variance scaled (1.1, 1.25,
  1.5 sd), category mix (0.02, 0.05, 0.1 of the mass moved from the top category to the rarest);
  each abrupt (all rows drifted from the first post window) and gradual (the share of drifted rows
  ramps 1/4, 2/4, 3/4, 1 over the first post windows).  A scenario's PSI is the binned PSI of a
  200,000-row fully drifted sample against the profile, on the column it moves most.

Per detector: false alarms per 1,000 no-drift windows (with a 95% upper bound), per scenario the
share of streams detected, the mean detection delay in windows (0 = the first drifted window
alarmed), missed streams (no alarm in the post windows), and the cost per row in ns (ours: binning
the batch into the window's counts + evaluating the window, per row; theirs: running the test on
the raw windows, per row).  Results go to bench/results/drift-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import stats as sps

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

from parity.monitoring.drift import Counts, DriftConfig, calibrate, evaluate_window, psi
from parity.monitoring.profile import build_profile

FEATURES = ["x_norm", "x_lognorm", "x_unif", "x_count", "cat"]
OUTPUTS = ["score"]
CAT_PROBS = np.array([1 / (k + 1) for k in range(8)])
CAT_PROBS = CAT_PROBS / CAT_PROBS.sum()
SCENARIOS = (
    [("mean", m) for m in (0.05, 0.1, 0.2, 0.5)]
    + [("variance", s) for s in (1.1, 1.25, 1.5)]
    + [("category", c) for c in (0.02, 0.05, 0.1)]
)
OURS = {
    "ours-all-bh": DriftConfig(correction="bh"),
    "ours-all-bonferroni": DriftConfig(correction="bonferroni"),
    "ours-psi": DriftConfig(correction="bh", statistics=("psi",)),
    "ours-js": DriftConfig(correction="bh", statistics=("js",)),
    "ours-chi2": DriftConfig(correction="bh", statistics=("chi2",)),
    "ours-ks": DriftConfig(correction="bh", statistics=("ks",)),
}


def draw(rng: np.random.Generator, n: int, kind: str | None = None, magnitude: float = 0.0, frac: float = 0.0) -> np.ndarray:
    """[n, 6] float64: the five features (cat as codes 0..7) and the score; `frac` of the rows drifted."""
    drifted = rng.random(n) < frac if kind else np.zeros(n, dtype=bool)
    x = rng.normal(size=n)
    if kind == "mean":
        x = np.where(drifted, x + magnitude, x)
    elif kind == "variance":
        x = np.where(drifted, x * magnitude, x)
    ln = rng.lognormal(0.0, 0.5, size=n)
    ln[rng.random(n) < 0.02] = np.nan
    un = rng.uniform(0, 10, size=n)
    cnt = rng.poisson(3, size=n).astype(np.float64)
    probs = CAT_PROBS
    cat = rng.choice(8, size=n, p=probs).astype(np.float64)
    if kind == "category":
        q = probs.copy()
        q[0] -= magnitude
        q[-1] += magnitude
        cat = np.where(drifted, rng.choice(8, size=n, p=q), cat)
    lin = 0.8 * x + 0.3 * np.log(np.nan_to_num(ln, nan=1.0)) - 0.1 * un + 0.2 * cnt - 0.15 * cat
    score = 1 / (1 + np.exp(-lin))
    return np.column_stack([x, ln, un, cnt, cat, score])


def to_profile_columns(data: np.ndarray) -> tuple[dict, dict]:
    feats = {name: data[:, j] for j, name in enumerate(FEATURES)}
    feats["cat"] = np.array([str(int(v)) for v in data[:, 4]], dtype=object)
    return feats, {"score": data[:, 5]}


def make_streams(rng, args) -> tuple[list[np.ndarray], list[dict]]:
    """All windows (no-drift first) and, per scenario stream, its window indices."""
    windows = [draw(rng, args.window).astype(np.float32) for _ in range(args.null_windows)]
    streams = []
    for kind, mag in SCENARIOS:
        for mode in ("abrupt", "gradual"):
            for rep in range(args.reps):
                idx = []
                for k in range(args.pre + args.post):
                    if k < args.pre:
                        frac = 0.0
                    else:
                        frac = 1.0 if mode == "abrupt" else min(1.0, (k - args.pre + 1) / args.ramp)
                    idx.append(len(windows))
                    windows.append(draw(rng, args.window, kind, mag, frac).astype(np.float32))
                streams.append({"kind": kind, "magnitude": mag, "mode": mode, "rep": rep, "windows": idx})
    return windows, streams


def scenario_psi(rng, profile) -> dict:
    out = {}
    for kind, mag in SCENARIOS:
        sample = draw(rng, 200_000, kind, mag, 1.0)
        c = Counts.for_profile(profile)
        c.add(features=sample[:, :5], outputs=sample[:, 5:])
        best = 0.0
        for part, names in (("features", FEATURES), ("outputs", OUTPUTS)):
            for name in names:
                ref = c.layout.ref_counts[c.layout.index[(part, name)], : c.layout.nbins[c.layout.index[(part, name)]]]
                best = max(best, psi(ref, c.column_counts(part, name)))
        out[f"{kind}:{mag}"] = best
    return out


def run_ours(profile, windows, args) -> tuple[dict, dict]:
    cal_t0 = time.perf_counter()
    cal = calibrate(profile, args.window, args.alpha, simulations=args.simulations, seed=args.seed)
    cal_s = time.perf_counter() - cal_t0
    # warm the compiled kernels
    w = Counts.for_profile(profile)
    w.add(features=windows[0][:, :5], outputs=windows[0][:, 5:])
    evaluate_window(profile, w, cal)
    counts = []
    t0 = time.perf_counter()
    for win in windows:
        c = Counts.for_profile(profile)
        c.add(features=win[:, :5], outputs=win[:, 5:])
        counts.append(c)
    bin_s = time.perf_counter() - t0
    alarms: dict[str, list[bool]] = {}
    eval_s: dict[str, float] = {}
    for name, cfg in OURS.items():
        t0 = time.perf_counter()
        alarms[name] = [evaluate_window(profile, c, cal, cfg).drift for c in counts]
        eval_s[name] = time.perf_counter() - t0
    rows = len(windows) * args.window
    cost = {name: {"ns_per_row": (bin_s + eval_s[name]) / rows * 1e9, "binning_ns_per_row": bin_s / rows * 1e9,
                   "evaluate_ns_per_row": eval_s[name] / rows * 1e9} for name in OURS}  # fmt: skip
    meta = {"calibration_seconds": cal_s, "simulations": cal.simulations}
    return {name: {"alarms": alarms[name], **cost[name]} for name in OURS}, meta


def run_scipy(ref: np.ndarray, windows, args) -> dict:
    """scipy's two-sample KS per numeric column, chi-square on the category counts, Bonferroni."""
    nf = ref.shape[1]
    cat = [j == 4 for j in range(nf)]
    ref_cols = [ref[~np.isnan(ref[:, j]), j] for j in range(nf)]
    ref_cat = np.bincount(ref_cols[4].astype(np.int64), minlength=8)
    level = args.alpha / nf
    alarms = []
    t0 = time.perf_counter()
    for w in windows:
        hit = False
        for j in range(nf):
            col = w[:, j].astype(np.float64)
            col = col[~np.isnan(col)]
            if cat[j]:
                cur = np.bincount(col.astype(np.int64), minlength=8)
                table = np.vstack([ref_cat, cur])
                table = table[:, table.sum(axis=0) > 0]
                p = sps.chi2_contingency(table, correction=False)[1]
            else:
                p = sps.ks_2samp(ref_cols[j], col).pvalue
            hit |= bool(p <= level)
        alarms.append(hit)
    secs = time.perf_counter() - t0
    return {"alarms": alarms, "ns_per_row": secs / (len(windows) * args.window) * 1e9}


def run_peers(ref, windows, args) -> dict:
    py = ROOT / ".venv-drift" / "bin" / "python"
    if not py.exists():
        return {
            "unavailable": f"{py} does not exist (python3 -m venv .venv-drift && .venv-drift/bin/pip install evidently alibi-detect)"
        }
    with tempfile.TemporaryDirectory() as tmp:
        npz, out = Path(tmp) / "windows.npz", Path(tmp) / "peers.json"
        cat = np.array([j == 4 for j in range(ref.shape[1])])
        np.savez(npz, ref=ref, windows=np.stack(windows), categorical=cat, alpha=args.alpha, names=np.array(FEATURES + OUTPUTS))
        proc = subprocess.run([str(py), str(ROOT / "bench" / "drift_peers.py"), "--windows", str(npz), "--out", str(out)],
                              capture_output=True, text=True, timeout=args.peer_timeout, check=False)  # fmt: skip
        if proc.returncode != 0 or not out.exists():
            return {"unavailable": f"drift_peers.py failed (rc {proc.returncode}): {proc.stderr[-2000:]}"}
        doc = json.loads(out.read_text())
    rows = len(windows) * args.window
    for d in doc.values():
        if isinstance(d, dict) and "seconds" in d:
            d["ns_per_row"] = d.pop("seconds") / rows * 1e9
    return doc


def upper95(k: int, n: int) -> float:
    """Clopper-Pearson 95% upper bound of a binomial proportion."""
    return 1.0 if k >= n else float(sps.beta.ppf(0.975, k + 1, n - k))


def score(alarms: list[bool], n_null: int, streams: list[dict], args) -> dict:
    a = np.asarray(alarms, dtype=bool)
    fa = int(a[:n_null].sum())
    out = {"false_alarms": fa, "null_windows": n_null, "false_alarms_per_1000": 1000 * fa / n_null,
           "false_alarms_per_1000_upper95": 1000 * upper95(fa, n_null), "scenarios": {}}  # fmt: skip
    groups: dict[str, list[dict]] = {}
    for s in streams:
        groups.setdefault(f"{s['kind']}:{s['magnitude']}:{s['mode']}", []).append(s)
    post_hits = post_total = 0
    for key, ss in groups.items():
        delays, missed = [], 0
        for s in ss:
            post = a[s["windows"][args.pre :]]
            post_hits += int(post.sum())
            post_total += len(post)
            hits = np.nonzero(post)[0]
            if len(hits):
                delays.append(int(hits[0]))
            else:
                missed += 1
        out["scenarios"][key] = {"streams": len(ss), "detected": len(ss) - missed, "missed": missed,
                                 "mean_delay": float(np.mean(delays)) if delays else None,
                                 "max_delay": int(max(delays)) if delays else None}  # fmt: skip
    out["post_window_power"] = post_hits / post_total if post_total else None
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref-rows", type=int, default=20_000)
    ap.add_argument("--window", type=int, default=1000)
    ap.add_argument("--null-windows", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--pre", type=int, default=2)
    ap.add_argument("--post", type=int, default=8)
    ap.add_argument("--ramp", type=int, default=4)
    ap.add_argument("--alpha", type=float, default=0.01)
    ap.add_argument("--simulations", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--no-peers", action="store_true", help="skip Evidently / Alibi Detect (.venv-drift)")
    ap.add_argument("--peer-timeout", type=int, default=1800)
    ap.add_argument("--results-dir", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    ref = draw(rng, args.ref_rows)
    feats, outs = to_profile_columns(ref)
    profile = build_profile(feats, outs, bins=10, top_k=20)
    windows, streams = make_streams(rng, args)
    n_null = args.null_windows
    print(f"reference {args.ref_rows} rows, window {args.window} rows, {n_null} no-drift windows, "
          f"{len(streams)} drift streams ({len(windows) - n_null} windows), alpha {args.alpha}")  # fmt: skip
    psis = scenario_psi(rng, profile)

    results: dict[str, dict] = {}
    ours, meta = run_ours(profile, windows, args)
    results.update(ours)
    results["scipy-ks"] = run_scipy(ref, windows, args)
    peers_note = {}
    if args.no_peers:
        peers_note = {"evidently/alibi": "not run (--no-peers)"}
    else:
        peers = run_peers(ref, windows, args)
        for name, d in peers.items():
            if name == "versions":
                meta["peer_versions"] = d
            elif "unavailable" in d:
                peers_note[name] = d["unavailable"]
            else:
                results[name] = d

    scored = {name: {**score(d["alarms"], n_null, streams, args), **{k: v for k, v in d.items() if k.endswith("ns_per_row")}}
              for name, d in results.items()}  # fmt: skip

    # -- table
    names = list(scored)
    print(f"\ncalibration: {meta['simulations']} simulations in {meta['calibration_seconds']:.2f} s")
    print(f"\n{'detector':22s} {'FA/1000':>8s} {'(95% ub)':>9s} {'power':>6s} {'ns/row':>10s}")
    for n in names:
        s = scored[n]
        print(f"{n:22s} {s['false_alarms_per_1000']:8.1f} {s['false_alarms_per_1000_upper95']:9.1f} "
              f"{s['post_window_power']:6.3f} {s['ns_per_row']:10.1f}")  # fmt: skip
    for n, why in peers_note.items():
        print(f"{n:22s} unavailable: {why.splitlines()[0][:150] if why else ''} (scipy-ks stands in)")
    keys = list(scored[names[0]]["scenarios"])
    print("\ndetected/streams, mean delay in windows (0 = first drifted window); scenario PSI")
    short = [
        n
        for n in names
        if n in ("ours-all-bh", "ours-chi2", "ours-ks", "scipy-ks", "evidently-default", "evidently-ks", "alibi-tabular")
    ]
    print(f"{'scenario':26s} {'PSI':>6s} " + " ".join(f"{n:>17s}" for n in short))
    for k in keys:
        kind, mag, _ = k.split(":")
        cells = []
        for n in short:
            sc = scored[n]["scenarios"][k]
            d = "-" if sc["mean_delay"] is None else f"{sc['mean_delay']:.2f}"
            cells.append(f"{sc['detected']:>2d}/{sc['streams']:<2d} d={d:>5s}")
        print(f"{k:26s} {psis[f'{kind}:{mag}']:6.3f} " + " ".join(f"{c:>17s}" for c in cells))

    # -- goals
    ours_main = scored["ours-all-bh"]
    big = [k for k in keys if psis[":".join(k.split(":")[:2])] >= 0.2 and k.endswith(":abrupt")]
    within_one = all(ours_main["scenarios"][k]["missed"] == 0 and ours_main["scenarios"][k]["max_delay"] == 0 for k in big)
    peer_names = [n for n in scored if not n.startswith("ours-")]
    goals = {
        "false_alarms_at_or_below_rate": ours_main["false_alarms_per_1000"] <= 1000 * args.alpha,
        "detection_within_one_window_psi_ge_0.2_abrupt": within_one if big else None,
        "power_vs_peers": {
            p: {
                "ours": ours_main["post_window_power"],
                "theirs": scored[p]["post_window_power"],
                "ours_fa_per_1000": ours_main["false_alarms_per_1000"],
                "theirs_fa_per_1000": scored[p]["false_alarms_per_1000"],
            }
            for p in peer_names
        },
        "compute_ratio_vs_peers": {p: scored[p]["ns_per_row"] / ours_main["ns_per_row"] for p in peer_names},
    }
    print("\ngoals:")
    print(f"  false alarms <= {1000 * args.alpha:.0f}/1000: {goals['false_alarms_at_or_below_rate']} "
          f"({ours_main['false_alarms_per_1000']:.1f}/1000)")  # fmt: skip
    print(f"  abrupt shifts with PSI >= 0.2 ({len(big)} scenarios) all detected in the first drifted window: "
          f"{goals['detection_within_one_window_psi_ge_0.2_abrupt']}")  # fmt: skip
    for p in peer_names:
        g = goals["power_vs_peers"][p]
        print(f"  power vs {p}: ours {g['ours']:.3f} (FA {g['ours_fa_per_1000']:.1f}/1000) vs {g['theirs']:.3f} "
              f"(FA {g['theirs_fa_per_1000']:.1f}/1000); compute {goals['compute_ratio_vs_peers'][p]:.0f}x less per row")  # fmt: skip

    doc = {"args": vars(args), "meta": meta, "scenario_psi": psis, "detectors": scored, "unavailable": peers_note, "goals": goals}
    out_dir = Path(args.results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"drift-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.json"
    path.write_text(json.dumps(doc, indent=1, allow_nan=False))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
