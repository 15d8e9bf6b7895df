"""The retraining controller's failure path, with a real server, registry and training process:
sustained drift starts `parity train` in its own process; when training fails, production is
untouched (the champion keeps serving, no alias moves), the audit log records retrain.start and
retrain.failed with the error, and an alert reaches the webhook.  The success path (train, gate,
canary, promotion) runs in `make demo` (tests/e2e/test_demo.py)."""

from __future__ import annotations

import json
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.http as httpclient
import yaml

from parity.monitoring.profile import build_profile
from parity.registry import Registry
from parity.testing.models import mlp_reference, write_mlp_onnx
from parity.testing.server import ServerProcess
from parity.testing.webhook import WebhookRecorder


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failed_retraining_leaves_production_untouched_and_alerts(tmp_path, workers):
    """With --workers 2 the loop works the same: the controller runs in worker 0, which tests
    every worker's drift windows; one run, one retrain.start in the audit log."""
    db, artifacts = f"sqlite:///{tmp_path / 'meta.db'}", tmp_path / "artifacts"
    weights = write_mlp_onnx(tmp_path / "m.onnx", [4, 8, 1], seed=1)
    train = np.random.default_rng(0).standard_normal((4000, 4)).astype(np.float32)
    profile = build_profile({f"f{i}": train[:, i] for i in range(4)}, {"OUTPUT0": mlp_reference(train, weights)[:, 0]})
    with Registry.open(db, artifacts) as reg:
        v1 = reg.register("fraud", {"model.onnx": tmp_path / "m.onnx"}, profile=profile, actor="test").version
        reg.set_alias("fraud", "champion", v1, actor="test", reason="first")
    routes = tmp_path / "routes"
    routes.mkdir()
    (routes / "fraud.yaml").write_text("serving: {max_batch_size: 64, dynamic_batching: {}}\ntargets:\n  - {model: fraud@champion}\n")
    # a training config that cannot work: its label file does not exist
    (tmp_path / "train.yaml").write_text(yaml.safe_dump({
        "features": {"repository": str(tmp_path / "no_repo.py"), "service": "x"},
        "labels": {"path": str(tmp_path / "missing.parquet"), "label": "y"},
        "registry": {"model": "fraud"},
    }))  # fmt: skip
    (tmp_path / "retraining.yaml").write_text(yaml.safe_dump({
        "model": "fraud", "training_config": "train.yaml", "check_secs": 0.2,
        "trigger": {"drift_windows": 1}, "limits": {"min_interval_secs": 3600, "max_runs_per_day": 1},
    }))  # fmt: skip
    with WebhookRecorder() as hook:
        args = ["--routes", str(routes), "--db", db, "--artifacts", str(artifacts), "--registry-poll-secs", "0.3",
                "--monitor-window-rows", "200", "--retraining", str(tmp_path / "retraining.yaml"),
                "--alert-webhook", hook.url, "--workers", str(workers)]  # fmt: skip
        with ServerProcess(tmp_path / "cache", *args) as server:
            deadline = time.monotonic() + 60
            while server.output().count("serving 1 model(s)") < workers and time.monotonic() < deadline:
                time.sleep(0.05)  # every worker listening, so that connections may land on either
            client = httpclient.InferenceServerClient(server.http_url)
            rng = np.random.default_rng(5)

            def send(shift: float) -> str:
                x = rng.standard_normal((20, 4)).astype(np.float32) + shift
                t = httpclient.InferInput("INPUT0", [20, 4], "FP32")
                t.set_data_from_numpy(x)
                return client.infer("fraud", [t]).get_response()["model_version"]

            def runs() -> list:
                with urllib.request.urlopen(f"http://{server.http_url}/v1/monitoring", timeout=10) as r:
                    return json.loads(r.read())["retraining"]["runs"]

            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not any(r.get("outcome") for r in runs()):
                assert send(shift=1.0) == "1"  # shifted traffic: drift; answers keep coming from version 1
                time.sleep(0.02)
            (run,) = runs()
            assert run["outcome"] == "training failed" and run["evidence"]["trigger"] == "drift"
            for _ in range(5):
                assert send(shift=0.0) == "1"  # production untouched
            alert = hook.wait_for(lambda doc: doc["alert"]["name"] == "retraining_failed")["alert"]
            assert alert["model"] == "fraud" and alert["severity"] == "critical"
            # the limits hold: one run a day, however long the drift lasts
            for _ in range(30):
                send(shift=1.0)

            def checks() -> int:
                with urllib.request.urlopen(f"http://{server.http_url}/v1/monitoring", timeout=10) as r:
                    return json.loads(r.read())["retraining"]["checks"]

            seen = checks()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and checks() < seen + 3:  # three trigger checks after that traffic
                time.sleep(0.05)
            assert checks() >= seen + 3 and len(runs()) == 1
    with Registry.open(db, artifacts) as reg:
        assert reg.resolve("fraud@champion").version == v1 and [v.version for v in reg.versions("fraud")] == [v1]
        actions = [(h.action, h.actor) for h in reg.history("fraud")]
        assert actions.count(("retrain.start", "parity-retrainer")) == 1 and ("retrain.failed", "parity-retrainer") in actions
        failed = next(h for h in reg.history("fraud") if h.action == "retrain.failed")
        assert "missing.parquet" in failed.evidence["error"] or "no_repo" in failed.evidence["error"]
