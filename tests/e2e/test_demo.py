"""The quickstart's first command runs end to end: `python -m parity demo` (what `make demo` runs)
serves a model, answers over gRPC and HTTP, then shows the feature store's online features equal
to the training set's, and exits 0."""

from __future__ import annotations

import subprocess
import sys


def test_the_demo_runs_end_to_end():
    proc = subprocess.run([sys.executable, "-m", "parity", "demo"], capture_output=True, text=True, timeout=600)
    out = proc.stdout
    assert proc.returncode == 0, f"{out[-3000:]}\n{proc.stderr[-3000:]}"
    assert "gRPC ModelInfer on 'mlp'" in out and "HTTP infer on 'mlp' (binary tensor extension)" in out
    assert "MISMATCH" not in out + proc.stderr
    assert "server exited with status 0" in out
    features = [line for line in out.splitlines() if "features served online equal the training set's" in line]
    assert len(features) == 1
    same, total = features[0].split()[0], features[0].split()[2]
    assert same == total and int(total) > 10, features[0]
