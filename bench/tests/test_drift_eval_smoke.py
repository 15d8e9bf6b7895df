"""The drift evaluation runs end to end at a tiny size with our detectors and scipy only (no
.venv-drift), prints its table and goals, and writes a strict-JSON result."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "drift_eval.py"


def test_drift_eval_smoke(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--no-peers", "--ref-rows", "5000", "--window", "300", "--null-windows", "40",
         "--reps", "1", "--pre", "1", "--post", "3", "--simulations", "500", "--results-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for name in ("ours-all-bh", "ours-all-bonferroni", "ours-psi", "ours-js", "ours-chi2", "ours-ks", "scipy-ks"):
        assert any(line.startswith(name + " ") for line in out.splitlines()), out
    assert "not run (--no-peers)" in out and "goals:" in out and "mean:0.5:abrupt" in out
    (result,) = tmp_path.glob("drift-*.json")
    doc = json.loads(result.read_text())
    assert set(doc["detectors"]) == {
        "ours-all-bh",
        "ours-all-bonferroni",
        "ours-psi",
        "ours-js",
        "ours-chi2",
        "ours-ks",
        "scipy-ks",
    }
    main = doc["detectors"]["ours-all-bh"]
    assert main["null_windows"] == 40 and len(main["scenarios"]) == 20
    assert main["ns_per_row"] > 0 and main["binning_ns_per_row"] > 0
    assert doc["scenario_psi"]["mean:0.5"] > doc["scenario_psi"]["mean:0.05"]
    # a 0.5 sd abrupt mean shift is caught by every detector
    for d in doc["detectors"].values():
        assert d["scenarios"]["mean:0.5:abrupt"]["detected"] == 1
    assert "scipy-ks" in doc["goals"]["compute_ratio_vs_peers"]
