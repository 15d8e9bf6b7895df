"""The drift benchmark's peers, run in their own virtualenv (.venv-drift: Evidently and Alibi Detect
pin numpy/pandas differently from Parity's).  Reads the windows bench/drift_eval.py wrote
(``--windows file.npz``) and writes, per detector, one alarm flag per window and the seconds spent
testing (``--out file.json``).  A detector whose library does not import is reported as
``{"unavailable": "<why>"}``.

Input (.npz): ``ref`` float64 [N, F] (NaN = missing), ``windows`` float32 [W, n, F],
``categorical`` bool [F] (categorical columns hold integer codes), ``alpha`` (the window
false-alarm rate), ``names`` [F].

Detectors (all on the RAW values of both windows; a window alarms when any column is rejected):
- ``evidently-default``: Evidently's own per-column test choice and default thresholds (what its
  DataDriftPreset uses: for a reference > 1,000 rows, Wasserstein distance (normed) > 0.1 on numeric
  and Jensen-Shannon > 0.1 on categorical columns), called through its stat-test layer
  (``evidently.legacy.calculations.stattests``), not the Report machinery (which only adds cost).
- ``evidently-ks``: Evidently's ``ks`` (numeric) and ``chisquare`` (categorical) tests, p-values
  with Bonferroni across columns at ``alpha``: the same nominal false-alarm rate as ours.
- ``alibi-tabular``: Alibi Detect's ``TabularDrift`` (KS per numeric, chi-square per categorical
  column, ``correction="bonferroni"``, ``p_val=alpha``).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np


def _present(a):
    return a[~np.isnan(a)]


def run_evidently(ref, windows, cat, alpha, mode):
    import pandas as pd
    from evidently.legacy.calculations.stattests.registry import get_stattest

    nf = ref.shape[1]
    ref_cols = [pd.Series(_present(ref[:, j]).astype(np.int64) if cat[j] else _present(ref[:, j])) for j in range(nf)]
    alarms = []
    t0 = time.perf_counter()
    for w in windows:
        hit = False
        for j in range(nf):
            col = _present(w[:, j].astype(np.float64))
            cur = pd.Series(col.astype(np.int64) if cat[j] else col)
            ftype = "cat" if cat[j] else "num"
            if mode == "default":
                test = get_stattest(ref_cols[j], cur, ftype, None)
                res = test(ref_cols[j], cur, ftype, None)
                hit |= bool(res.drifted)
            else:
                test = get_stattest(ref_cols[j], cur, ftype, "chisquare" if cat[j] else "ks")
                res = test(ref_cols[j], cur, ftype, alpha / nf)
                hit |= bool(res.drift_score <= alpha / nf)
        alarms.append(hit)
    return {"alarms": alarms, "seconds": time.perf_counter() - t0}


def run_alibi(ref, windows, cat, alpha):
    from alibi_detect.cd import TabularDrift

    nf = ref.shape[1]
    # alibi has no notion of missing: test the rows complete in every column (missing is rare here)
    ref_ok = ref[~np.isnan(ref).any(axis=1)]
    cd = TabularDrift(ref_ok, p_val=alpha, categories_per_feature={j: None for j in range(nf) if cat[j]}, correction="bonferroni")
    alarms = []
    t0 = time.perf_counter()
    for w in windows:
        x = w.astype(np.float64)
        x = x[~np.isnan(x).any(axis=1)]
        out = cd.predict(x, drift_type="batch")
        alarms.append(bool(out["data"]["is_drift"]))
    return {"alarms": alarms, "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--windows", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    d = np.load(args.windows)
    ref, windows, cat, alpha = d["ref"], d["windows"], d["categorical"].astype(bool), float(d["alpha"])
    out: dict = {}
    warnings.simplefilter("ignore")
    for name, fn in (
        ("evidently-default", lambda: run_evidently(ref, windows, cat, alpha, "default")),
        ("evidently-ks", lambda: run_evidently(ref, windows, cat, alpha, "ks")),
        ("alibi-tabular", lambda: run_alibi(ref, windows, cat, alpha)),
    ):
        try:
            out[name] = fn()
        except ImportError as e:
            out[name] = {"unavailable": f"{type(e).__name__}: {e}"}
        except Exception as e:  # noqa: BLE001 - a peer that breaks is reported, not fatal
            out[name] = {"unavailable": f"failed: {type(e).__name__}: {e}"}
    try:
        import alibi_detect
        import evidently

        out["versions"] = {"evidently": evidently.__version__, "alibi-detect": alibi_detect.__version__}
    except ImportError:
        pass
    with open(args.out, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
