"""The skew monitor end to end: a server logs every feature vector its feature-joined model is
given (--feature-log, sample rate 1), and `parity features verify` recomputes them through the
training path.  With the same repository on both sides nothing differs; with a transform changed
on the serving side only (an on-demand statistic), the changed features are caught and named."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tritonclient.http as httpclient
from onnx import TensorProto

from parity.features.example import end_history_at, generate
from parity.testing.models import write_config, write_identity_onnx
from parity.testing.server import ServerProcess, wait_for

ROOT = Path(__file__).resolve().parents[2]
REPO = ROOT / "configs" / "features" / "example_repo.py"
WIDTH = 13


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("skew")
    paths = generate(d / "data", seed=4)
    end_history_at(paths, (pd.Timestamp.now(tz="UTC") - pd.Timedelta(days=1)).to_pydatetime())
    env = dict(os.environ, PARITY_EXAMPLE_FEATURE_DATA=str(d / "data"))
    url = f"sqlite:///{d / 'online.db'}"
    proc = subprocess.run(
        [sys.executable, "-m", "parity", "features", "materialize", "--repo", str(REPO), "--online-store", url, "--state", str(d / "m.json")],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    write_identity_onnx(d / "models" / "features" / "1" / "model.onnx", TensorProto.DOUBLE, ["batch", WIDTH])
    write_config(d / "models" / "features", {
        "max_batch_size": 16, "inputs": [{"name": "IN", "datatype": "FP64", "shape": [WIDTH]}],
        "outputs": [{"name": "OUT", "datatype": "FP64", "shape": [WIDTH]}], "dynamic_batching": {},
        "features": {"service": "fraud_detection"},
    })  # fmt: skip
    # the serving side's repository: the same, but for one statistic of an on-demand transform
    skewed = d / "skewed_repo.py"
    text = REPO.read_text()
    assert "AMOUNT_MEAN, AMOUNT_STD = 55.0, 70.0" in text
    skewed.write_text(text.replace("AMOUNT_MEAN, AMOUNT_STD = 55.0, 70.0", "AMOUNT_MEAN, AMOUNT_STD = 56.0, 70.0"))
    return d, env, url, skewed


def serve_and_send(d: Path, env: dict, url: str, repo: Path, log: Path, n: int = 12) -> int:
    users = pd.read_parquet(d / "data" / "users.parquet")["user_id"].unique()[:n]
    merchants = pd.read_parquet(d / "data" / "merchants.parquet")["merchant_id"].unique()[:n]
    sent = 0
    with ServerProcess(d / "models", "--feature-repository", str(repo), "--online-store", url,
                       "--feature-log", str(log), "--feature-log-sample-rate", "1", env=env) as server:  # fmt: skip
        client = httpclient.InferenceServerClient(server.http_url)
        for u, m, a, h in zip(users, merchants, np.linspace(1, 400, n), range(n)):
            tensors = []
            for name, arr, dt in (("user_id", np.array([[u]], dtype=np.int64), "INT64"), ("merchant_id", np.array([[m.encode()]], dtype=object), "BYTES"),
                                  ("amount", np.array([[a]]), "FP64"), ("hour", np.array([[h]], dtype=np.int64), "INT64")):  # fmt: skip
                t = httpclient.InferInput(name, [1, 1], dt)
                t.set_data_from_numpy(arr)
                tensors.append(t)
            try:
                client.infer("features", tensors)
                sent += 1
            except Exception:  # noqa: BLE001 - an entity without features is rejected, and not logged as served
                pass
    assert server.returncode == 0
    return sent


def verify(env: dict, log: Path, *extra: str) -> tuple[int, list]:
    proc = subprocess.run(
        [sys.executable, "-m", "parity", "features", "verify", "--repo", str(REPO), "--log", str(log), "--json", *extra],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def test_the_same_code_on_both_sides_gives_no_mismatch(setup, tmp_path):
    d, env, url, _ = setup
    sent = serve_and_send(d, env, url, REPO, tmp_path / "log")
    assert sent >= 6
    rc, [report] = verify(env, tmp_path / "log")
    assert rc == 0 and report["service"] == "fraud_detection"
    assert report["rows"] >= sent and report["mismatched_rows"] == 0, report


def test_a_transform_changed_on_the_serving_side_only_is_caught(setup, tmp_path):
    d, env, url, skewed = setup
    sent = serve_and_send(d, env, url, skewed, tmp_path / "log")
    rc, [report] = verify(env, tmp_path / "log")
    # every answered row differs (a rejected entity is logged too, with nulls on both sides)
    assert rc == 1 and report["rows"] >= report["mismatched_rows"] == sent >= 6
    bad = {name for name, f in report["features"].items() if f["mismatches"]}
    assert bad == {"transaction_features__amount_z", "transaction_features__amount_z_vs_user"}, bad
    example = report["features"]["transaction_features__amount_z"]["examples"][0]
    assert example["served"] != example["training"] and "user_id" in example
    # a tolerated rate lets it pass
    assert verify(env, tmp_path / "log", "--max-mismatch-rate", "1.0")[0] == 0


@pytest.mark.parametrize("workers", [1, 2])
def test_the_server_checks_skew_periodically_and_alerts(setup, tmp_path, workers):
    """--feature-verify-secs: the server recomputes its own log against the training repository
    (--feature-verify-repo) and exports the mismatch rate; with skew, the rate is 1.  With two
    workers the log holds both workers' samples and worker 0 alone checks it: one rate, not a
    sum over workers."""
    import time
    import urllib.request

    d, env, url, skewed = setup
    log = tmp_path / "log"
    users = pd.read_parquet(d / "data" / "users.parquet")["user_id"].unique()[:4]
    merchants = pd.read_parquet(d / "data" / "merchants.parquet")["merchant_id"].unique()[:4]
    with ServerProcess(d / "models", "--feature-repository", str(skewed), "--online-store", url, "--feature-log", str(log),
                       "--feature-log-sample-rate", "1", "--feature-verify-secs", "0.5", "--feature-verify-repo", str(REPO), "--workers", str(workers), env=env) as server:  # fmt: skip
        client = httpclient.InferenceServerClient(server.http_url)
        for u, m in zip(users, merchants):
            tensors = []
            for name, arr, dt in (("user_id", np.array([[u]], dtype=np.int64), "INT64"), ("merchant_id", np.array([[m.encode()]], dtype=object), "BYTES"),
                                  ("amount", np.array([[42.0]]), "FP64"), ("hour", np.array([[3]], dtype=np.int64), "INT64")):  # fmt: skip
                t = httpclient.InferInput(name, [1, 1], dt)
                t.set_data_from_numpy(arr)
                tensors.append(t)
            try:
                client.infer("features", tensors)
            except Exception:  # noqa: BLE001 - an entity without features
                pass
        deadline = time.monotonic() + 60
        text = ""
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://{server.http_url}/metrics", timeout=10) as r:
                text = r.read().decode()
            if 'parity_feature_skew_rate{service="fraud_detection"}' in text:
                break
            time.sleep(0.2)
        line = next(x for x in text.splitlines() if x.startswith('parity_feature_skew_rate{service="fraud_detection"}'))
        assert 0.5 < float(line.rsplit(" ", 1)[1]) <= 1.0, line
        if workers > 1:  # every worker has published since (each second): either may answer now
            def publications() -> dict:
                with urllib.request.urlopen(f"http://{server.http_url}/v1/monitoring", timeout=10) as r:
                    return {m["worker"]: m["publications"] for m in json.loads(r.read())["workers"]["members"]}

            marks = publications()
            wait_for(lambda: all(n > marks.get(w, 0) for w, n in publications().items()), timeout=10, what="a publication by every worker")
        for _ in range(6):  # and it stays one rate, not a sum over the workers
            with urllib.request.urlopen(f"http://{server.http_url}/metrics", timeout=10) as r:
                line = next(x for x in r.read().decode().splitlines() if x.startswith('parity_feature_skew_rate{service="fraud_detection"}'))
            assert 0.5 < float(line.rsplit(" ", 1)[1]) <= 1.0, line
        with urllib.request.urlopen(f"http://{server.http_url}/v1/monitoring", timeout=10) as r:
            skew = json.loads(r.read())["skew"]["fraud_detection"]
        assert skew["features"]["transaction_features__amount_z"]["mismatches"] >= 1
