"""`parity demo`: the quickstart, end to end on the embedded defaults.

Exports a small MLP to ONNX (and, when PyTorch is installed, to TorchScript), serves the model
repository, queries it with the Triton clients over gRPC and HTTP, prints the answers next to the
model run directly and the server's metrics, and stops the server with SIGTERM.

Then the feature store: writes the example feature repository's data, builds a point-in-time
training set, materializes the views into the embedded (SQLite) online store, serves them, and
shows that the features served online equal the training set's.  Last, feature-joined inference:
a fraud model whose config names the feature service is called with tritonclient sending only
entity ids and request values; the server fetches, transforms and infers in one hop.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

from parity.testing.models import mlp_config, mlp_reference, write_config, write_mlp_onnx
from parity.testing.server import ServerProcess

SIZES = [32, 256, 256, 1]


def _step(msg: str) -> None:
    print(f"\n== {msg}", flush=True)


def run_demo() -> int:
    try:
        import tritonclient.grpc as grpcclient
        import tritonclient.http as httpclient
    except ImportError:
        print("parity demo uses the Triton clients: pip install 'parity[dev]' (or run `make demo`)", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="parity-demo-") as tmp:
        repo = Path(tmp) / "models"
        _step(f"exporting models into {repo}")
        weights = write_mlp_onnx(repo / "mlp" / "1" / "model.onnx", SIZES, seed=0)
        write_config(repo / "mlp", mlp_config(SIZES, max_batch_size=64))
        print("  mlp/1/model.onnx        (ONNX, 32 -> 256 -> 256 -> 1, dynamic batching on)")
        try:
            from parity.testing.models import write_torchscript_mlp

            write_torchscript_mlp(repo / "mlp_torch" / "1" / "model.pt", SIZES, seed=0)
            cfg = mlp_config(SIZES, max_batch_size=64)
            cfg["platform"] = "pytorch_libtorch"
            write_config(repo / "mlp_torch", cfg)
            print("  mlp_torch/1/model.pt    (TorchScript, the same weights)")
            models = ["mlp", "mlp_torch"]
        except ImportError:
            models = ["mlp"]

        _step("starting the server (gRPC and HTTP)")
        with ServerProcess(repo) as server:
            print(f"  ready: HTTP {server.http_url}, gRPC {server.grpc_url}")
            x = np.random.default_rng(7).standard_normal((4, 32)).astype(np.float32)
            expected = mlp_reference(x, weights)[:, 0]

            g = grpcclient.InferenceServerClient(server.grpc_url)
            meta = g.get_server_metadata()
            print(f"  server {meta.name} {meta.version}, extensions: {', '.join(meta.extensions)}")
            for model in models:
                _step(f"gRPC ModelInfer on '{model}' (4 rows, raw tensors)")
                inp = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
                inp.set_data_from_numpy(x)
                res = g.infer(model, [inp])
                got = res.as_numpy("OUTPUT0")[:, 0]
                print(f"  served:   {np.round(got, 5).tolist()}")
                print(f"  directly: {np.round(expected, 5).tolist()}")
                if not np.allclose(got, expected, rtol=1e-4, atol=1e-5):
                    print("  MISMATCH between served and direct answers", file=sys.stderr)
                    return 1
            g.close()

            h = httpclient.InferenceServerClient(server.http_url)
            for binary in (True, False):
                _step(f"HTTP infer on 'mlp' ({'binary tensor extension' if binary else 'JSON tensors'})")
                inp = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
                inp.set_data_from_numpy(x, binary_data=binary)
                out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)
                got = h.infer("mlp", [inp], outputs=[out]).as_numpy("OUTPUT0")[:, 0]
                print(f"  served:   {np.round(got, 5).tolist()}")
                if not np.allclose(got, expected, rtol=1e-4, atol=1e-5):
                    print("  MISMATCH between served and direct answers", file=sys.stderr)
                    return 1
            stats = h.get_inference_statistics("mlp")["model_stats"][0]
            print(f"  statistics: {stats['inference_count']} rows in {stats['execution_count']} executions")
            h.close()

            _step("GET /metrics (the 'mlp' model's lines)")
            with urllib.request.urlopen(f"http://{server.http_url}/metrics", timeout=5) as r:
                text = r.read().decode()
            for line in text.splitlines():
                if 'model="mlp"' in line and "_bucket" not in line:
                    print("  " + line)

            _step("stopping the server (SIGTERM: drain, then exit)")
        print(f"  server exited with status {server.returncode}")
        if server.returncode != 0:
            return 1
        return _feature_demo(Path(tmp), repo)


def _feature_demo(tmp: Path, models: Path) -> int:
    from datetime import datetime, timedelta, timezone

    import pandas as pd

    from parity.features.definitions import FeatureRepository
    from parity.features.example import end_history_at, generate
    from parity.features.materialize import materialize
    from parity.features.offline import get_historical_features
    from parity.features.online import open_online_store

    root = Path(__file__).resolve().parents[2]
    module = root / "configs" / "features" / "example_repo.py"
    if not module.is_file():
        print(f"  (the feature store part needs the source checkout: {module} is missing)")
        return 0
    data = tmp / "feature-data"
    _step(f"feature store: writing the example repository's data into {data}")
    # enough labelled events for a tight promotion gate, enough users for traffic that looks like them
    paths = generate(data, seed=0, n_users=2000, n_merchants=2000, n_transactions=20_000)
    end_history_at(paths, datetime.now(timezone.utc) - timedelta(days=1))
    os.environ["PARITY_EXAMPLE_FEATURE_DATA"] = str(data)
    repo = FeatureRepository.load(module)
    print(f"  views: {', '.join(sorted(repo.views))}; on-demand: {', '.join(sorted(repo.on_demand))}; "
          f"services: {', '.join(sorted(repo.services))}")  # fmt: skip

    users = pd.read_parquet(paths["users"])["user_id"].unique()[:3]
    merchants = pd.read_parquet(paths["merchants"])["merchant_id"].unique()[:3]
    now = pd.Timestamp.now(tz="UTC")
    entity_df = pd.DataFrame(
        {"user_id": users, "merchant_id": merchants, "event_timestamp": [now] * 3, "amount": [12.5, 80.0, 999.0], "hour": [3, 14, 23]}
    )
    _step("training set: point-in-time join of 3 entity rows (service 'fraud_detection')")
    training = get_historical_features(repo, entity_df, "fraud_detection", output="arrow", full_feature_names=True)
    names = [c for c in training.column_names if "__" in c]
    for c in names[:4]:
        print(f"  {c:40s} {training.column(c).to_pylist()}")
    print(f"  ... {len(names)} features in all")

    store_url = f"sqlite:///{tmp / 'online.db'}"
    _step(f"materializing the views into the embedded online store ({store_url})")
    with open_online_store(store_url) as store:
        for run in materialize(repo, store, progress=False):
            print(f"  {run.view}: {run.rows} entities written in {run.seconds:.2f}s")

    # a model on the service's 13 features: clients send entity ids, the server joins the features
    fraud_sizes = [len(names), 32, 1]
    weights = write_mlp_onnx(models / "fraud" / "1" / "model.onnx", fraud_sizes, seed=7, input_name="x", output_name="score")
    config = mlp_config(fraud_sizes, max_batch_size=64)
    config["inputs"][0]["name"], config["outputs"][0]["name"] = "x", "score"
    write_config(models / "fraud", dict(config, features={"service": "fraud_detection"}))

    _step("serving the features: POST /v1/features/online")
    with ServerProcess(models, "--feature-repository", str(module), "--online-store", store_url) as server:
        body = {
            "features": "fraud_detection",
            "entities": {"user_id": [int(u) for u in users], "merchant_id": [str(m) for m in merchants]},
            "request_values": {"amount": [12.5, 80.0, 999.0], "hour": [3, 14, 23]},
        }
        req = urllib.request.Request(f"http://{server.http_url}/v1/features/online", data=json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            served = {f["name"]: f for f in json.loads(r.read())["features"]}
        same = 0
        for c in names:
            online, offline = served[c]["values"], training.column(c).to_pylist()
            if all(a == b or (a is None and b is None) or (isinstance(a, float) and isinstance(b, float) and a != a and b != b) for a, b in zip(online, offline)):
                same += 1
            else:
                print(f"  {c}: online {online} != training {offline}", file=sys.stderr)
        for c in names[:4]:
            print(f"  {c:40s} {served[c]['values']}  ({', '.join(served[c]['statuses'])})")
        print(f"  {same} of {len(names)} features served online equal the training set's")
        agree = _joined_inference_demo(server, users, merchants, training, names, weights)
    print(f"  server exited with status {server.returncode}")
    if not (same == len(names) and agree and server.returncode == 0):
        return 1
    return _registry_demo(tmp, module, data, store_url)


def _registry_demo(tmp: Path, module: Path, data: Path, store_url: str) -> int:
    """Train, register, serve by alias with features from the store, train again, gate, canary,
    promote; print the registry's history."""
    import threading
    import time

    import tritonclient.grpc as grpcclient
    import yaml

    from parity.registry import Registry
    from parity.training.gate import GateConfig, evaluate_gate
    from parity.training.pipeline import score_holdout, train

    root = Path(__file__).resolve().parents[2]
    db, artifacts = f"sqlite:///{tmp / 'metadata.db'}", tmp / "artifacts"
    base = yaml.safe_load((root / "configs" / "training" / "fraud.yaml").read_text())
    base["features"]["repository"] = str(module)
    base["labels"]["path"] = str(data / "transactions.parquet")
    base["registry"] = {"model": "fraud", "db": db, "artifacts": str(artifacts), "alias": "champion"}
    base["tracking"] = {"experiment": "fraud-demo", "db": db, "artifacts": str(tmp / "runs")}

    _step("training version 1 (parity train: snapshot, point-in-time training set, MLP, ONNX, profile, registry)")
    t0 = time.monotonic()
    first = train(base, progress=False, output_dir=tmp / "train-1")
    print(f"  registered {first.ref} @champion in {time.monotonic() - t0:.1f}s: holdout ROC AUC {first.metrics['roc_auc']:.3f}, "
          f"{first.rows['train']:,} training rows, {first.rows['holdout']:,} holdout rows (the latest events)")  # fmt: skip

    routes = tmp / "routes"
    routes.mkdir()
    (routes / "fraud.yaml").write_text(yaml.safe_dump({
        "serving": {"max_batch_size": 64, "dynamic_batching": {}, "features": {"service": "fraud_detection"}},
        "targets": [{"model": "fraud@champion", "weight": 100}],
        "canary": {"model": "fraud@canary", "steps": [25, 100], "interval_secs": 1.0, "min_requests": 30,
                   "max_error_rate": 0.05, "promote_to": "champion"},
    }, sort_keys=False))  # fmt: skip
    # entities with every feature, to send traffic for
    import pandas as pd

    from parity.features.definitions import FeatureRepository
    from parity.features.offline import get_historical_features

    repo = FeatureRepository.load(module)
    users = pd.read_parquet(data / "users.parquet")["user_id"].unique()[:40]
    merchants = pd.read_parquet(data / "merchants.parquet")["merchant_id"].unique()
    frame = pd.DataFrame({"user_id": users, "merchant_id": merchants[np.arange(len(users)) % len(merchants)],
                          "event_timestamp": pd.Timestamp.now(tz="UTC"), "amount": 40.0, "hour": 12})  # fmt: skip
    rows = get_historical_features(repo, frame, "fraud_detection", output="pandas", full_feature_names=True)
    frame = frame[~rows[[c for c in rows.columns if "__" in c]].isna().any(axis=1).to_numpy()]

    _step("serving fraud@champion from the registry, features joined from the online store (parity serve --routes)")
    token = "demo-token"
    with ServerProcess(tmp / "serving-cache", "--routes", str(routes), "--db", db, "--artifacts", str(artifacts),
                       "--feature-repository", str(module), "--online-store", store_url, "--admin-token", token,
                       "--registry-poll-secs", "0.5") as server:  # fmt: skip
        client = grpcclient.InferenceServerClient(server.grpc_url)
        rng = np.random.default_rng(0)

        def one():
            i = int(rng.integers(0, len(frame)))
            inputs = []
            for name, arr, datatype in (
                ("user_id", np.array([[frame["user_id"].iloc[i]]], dtype=np.int64), "INT64"),
                ("merchant_id", np.array([[str(frame["merchant_id"].iloc[i]).encode()]], dtype=object), "BYTES"),
                ("amount", np.array([[float(rng.lognormal(3.5, 1.0))]]), "FP64"),
                ("hour", np.array([[int(rng.integers(0, 24))]], dtype=np.int64), "INT64"),
            ):
                t = grpcclient.InferInput(name, [1, 1], datatype)
                t.set_data_from_numpy(arr)
                inputs.append(t)
            r = client.infer("fraud", inputs)
            return r.get_response().model_version, float(r.as_numpy("score")[0, 0])

        answers = [one() for _ in range(20)]
        print(f"  20 requests with entity ids only: answered by version(s) {sorted({v for v, _ in answers})}; "
              f"scores {', '.join(f'{s:.3f}' for _, s in answers[:5])} ...")  # fmt: skip

        _step("training version 2 on the same data (another seed, a wider network)")
        second_cfg = dict(base, registry=dict(base["registry"], alias=None))
        second_cfg["model"] = dict(base["model"], hidden=[64, 32])
        second_cfg["training"] = dict(base["training"], seed=11)
        second = train(second_cfg, progress=False, output_dir=tmp / "train-2")
        print(f"  registered {second.ref}: holdout ROC AUC {second.metrics['roc_auc']:.3f}")

        _step("the promotion gate: DeLong's paired test on the same holdout, non-inferiority margin 0.02")
        y, champion_scores = score_holdout(first.onnx_path, second.holdout_path)
        gate = evaluate_gate(GateConfig.from_dict({"metric": "roc_auc", "margin": 0.02}), y, champion_scores, second.holdout_scores)
        ev = gate.evidence
        print(f"  {gate.decision}")
        registry = Registry.open(db, artifacts)
        if not gate.passed:
            registry.record("gate.failed", "fraud", "demo", reason="the challenger failed the gate", evidence=ev, version=second.model_version)
            print("  version 2 stays out of production")
        else:
            registry.set_alias("fraud", "canary", second.model_version, "demo", "passed the promotion gate", ev, action="canary")
            _step("canary: 25% of the traffic, then 100%, then promoted to champion if errors and latency hold")
            stop = threading.Event()
            seen: dict[str, int] = {}

            def traffic():
                while not stop.is_set():
                    v, _ = one()
                    seen[v] = seen.get(v, 0) + 1

            worker = threading.Thread(target=traffic, daemon=True)
            worker.start()
            t0 = time.monotonic()
            last = None
            while time.monotonic() - t0 < 90:
                state = json.loads(urllib.request.urlopen(f"http://{server.http_url}/v1/routes", timeout=10).read())["endpoints"]["fraud"]
                c = state["canary"]
                now = (c["state"], c["step_percent"])
                if now != last:
                    print(f"  t={time.monotonic() - t0:4.1f}s canary version {c['version']}: {c['state']} at {c['step_percent']}%  {c['last'] or ''}")
                    last = now
                if registry.resolve("fraud@champion").version == second.model_version or c["state"] == "rolled_back":
                    break
                time.sleep(0.25)
            time.sleep(1.5)
            stop.set()
            worker.join(10)
            print(f"  answers by version during the rollout: {dict(sorted(seen.items()))}")
            print(f"  fraud@champion is now {registry.resolve('fraud@champion').ref}; the next answer comes from version {one()[0]}")
        registry.close()
    print(f"  server exited with status {server.returncode}")
    if server.returncode != 0:
        return 1
    return _loop_demo(tmp, module, data, store_url, db, artifacts, routes, base, token)


def _loop_demo(tmp: Path, module: Path, data: Path, store_url: str, db: str, artifacts: Path, routes: Path, base: dict, token: str) -> int:
    """Close the loop: drift in the served traffic -> alarm -> retraining -> gate -> canary ->
    promotion, unattended; then the story and the registry's history."""
    import time

    import pandas as pd
    import tritonclient.grpc as grpcclient
    import yaml

    from parity.registry import Registry

    training_cfg = tmp / "training.yaml"
    training_cfg.write_text(yaml.safe_dump(dict(base, registry=dict(base["registry"], alias=None)), sort_keys=False))
    retraining = tmp / "retraining.yaml"
    retraining.write_text(yaml.safe_dump({
        "model": "fraud", "training_config": str(training_cfg), "check_secs": 0.5,
        "trigger": {"drift_windows": 2}, "limits": {"min_interval_secs": 600, "max_runs_per_day": 2},
        "gate": {"metric": "roc_auc", "margin": 0.02},
    }, sort_keys=False))  # fmt: skip
    events = pd.read_parquet(data / "transactions.parquet").tail(3000)  # recent labelled events: traffic like the training data
    known_users = set(pd.read_parquet(data / "users.parquet")["user_id"])
    events = events[events["user_id"].isin(known_users)]
    _step("closing the loop: serving fraud@champion with drift monitoring and the retraining controller")
    window = 400
    with ServerProcess(tmp / "serving-cache-2", "--routes", str(routes), "--db", db, "--artifacts", str(artifacts),
                       "--feature-repository", str(module), "--online-store", store_url, "--admin-token", token,
                       "--registry-poll-secs", "0.5", "--monitor-window-rows", str(window), "--retraining", str(retraining)) as server:  # fmt: skip
        client = grpcclient.InferenceServerClient(server.grpc_url)
        rng = np.random.default_rng(1)

        def batch(drift: bool, n: int = 20) -> None:
            rows = events.iloc[rng.integers(0, len(events), n)]
            amount = rows["amount"].to_numpy(dtype=np.float64) * (8.0 if drift else 1.0)
            inputs = []
            for name, arr, datatype in (
                ("user_id", rows["user_id"].to_numpy(dtype=np.int64).reshape(n, 1), "INT64"),
                ("merchant_id", np.array([m.encode() for m in rows["merchant_id"]], dtype=object).reshape(n, 1), "BYTES"),
                ("amount", amount.reshape(n, 1), "FP64"),
                ("hour", rows["hour"].to_numpy(dtype=np.int64).reshape(n, 1), "INT64"),
            ):
                t = grpcclient.InferInput(name, [n, 1], datatype)
                t.set_data_from_numpy(arr)
                inputs.append(t)
            try:
                client.infer("fraud", inputs)
            except Exception:  # noqa: BLE001 - a batch with an entity without features is refused: fine here
                pass

        def monitoring() -> dict:
            return json.loads(urllib.request.urlopen(f"http://{server.http_url}/v1/monitoring", timeout=10).read())

        t0 = time.monotonic()
        for _ in range(2 * window // 20):
            batch(drift=False)
        deadline = time.monotonic() + 30  # the windows are tested in the background
        while time.monotonic() < deadline:
            doc = monitoring()
            entry = next((m for m in doc["models"] if m["model"] == "fraud"), None)
            if entry is not None and entry["windows_closed"]["count"] >= 2:
                break
            time.sleep(0.1)
        if entry is not None:
            print(f"  t={time.monotonic() - t0:5.1f}s  {entry['rows']:,} rows like the training data served; "
                  f"{entry['windows_closed']['count']} windows tested, {entry['alarms']} drift alarm(s)")  # fmt: skip
            for w in entry["windows"]:
                if w["kind"] == "count" and (w["report"].get("alarm") or w["report"].get("drift")):
                    cols = [k for part in ("features", "outputs") for k, c in (w["report"].get(part) or {}).items() if c.get("alarm")]
                    print(f"    a window of that traffic drifted in: {', '.join(cols)}")
        print("  now the world changes: every amount is 8 times larger")
        closed_before = entry["windows_closed"]["count"] if entry is not None else 0
        deadline = time.monotonic() + 240
        seen_alarm = seen_training = False
        registry = Registry.open(db, artifacts)
        start_champion = registry.resolve("fraud@champion").version
        while time.monotonic() < deadline:
            for _ in range(5):
                batch(drift=True)
            doc = monitoring()
            entry = next((m for m in doc["models"] if m["model"] == "fraud" and m["windows_closed"]["count"] > closed_before), None)
            last = [w for w in entry["windows"] if w["kind"] == "count"][-1]["report"] if entry is not None else {}
            if (last.get("alarm") or last.get("drift")) and not seen_alarm:
                seen_alarm = True
                drifted = [k for part in ("features", "outputs") for k, c in (last.get(part) or {}).items() if c.get("alarm")]
                print(f"  t={time.monotonic() - t0:5.1f}s  DRIFT ALARM on fraud/{entry['version']}: {', '.join(drifted)}")
                metrics = urllib.request.urlopen(f"http://{server.http_url}/metrics", timeout=10).read().decode()
                for line in metrics.splitlines():
                    if line.startswith("parity_drift_alarm{") and line.endswith(" 1"):
                        print(f"    {line}")
                from parity.monitoring.report import render_report

                (tmp / "monitoring-report.html").write_text(render_report(doc))
                print(f"    report: {tmp / 'monitoring-report.html'} (parity monitor report --server http://{server.http_url})")
            runs = (doc.get("retraining") or {}).get("runs") or []
            if runs and not seen_training:
                seen_training = True
                print(f"  t={time.monotonic() - t0:5.1f}s  the controller started retraining: {runs[-1]['evidence']['trigger']} "
                      f"over {runs[-1]['evidence'].get('windows')} windows")  # fmt: skip
            if registry.resolve("fraud@champion").version != start_champion:
                break
            if runs and runs[-1].get("outcome") in ("training failed", "gate failed") or (runs and str(runs[-1].get("outcome", "")).startswith("error")):
                break
            time.sleep(0.2)
        runs = (monitoring().get("retraining") or {}).get("runs") or []
        for r in runs:
            print(f"  retraining run: {r.get('outcome')}; {r.get('gate', '')}")
            for step, at in r.get("steps", []):
                print(f"    +{at:5.1f}s  {step}")
        champion = registry.resolve("fraud@champion")
        print(f"  t={time.monotonic() - t0:5.1f}s  fraud@champion is {champion.ref}"
              f"{' (promoted by the canary rules)' if champion.version != start_champion else ''}")  # fmt: skip
        _step("the registry's history of 'fraud' (parity registry history fraud)")
        for h in registry.history("fraud"):
            print(f"  {h.at[:19]}  {h.actor:17s} {h.action:14s} v{h.version or '-'}  {h.reason[:90]}")
        registry.close()
        closed = champion.version != start_champion
    print(f"  server exited with status {server.returncode}")
    return 0 if server.returncode == 0 and closed else 1


def _joined_inference_demo(server, users, merchants, training, names, weights) -> bool:
    """Feature-joined inference over gRPC: entity ids in, the model's score out."""
    import tritonclient.grpc as grpcclient

    _step("feature-joined inference: model 'fraud' called over gRPC with entity ids only")
    client = grpcclient.InferenceServerClient(server.grpc_url)
    meta = client.get_model_metadata("fraud", as_json=True)
    print("  the model's inputs: " + ", ".join(f"{t['name']} {t['datatype']}{t['shape']}" for t in meta["inputs"]))
    n = len(users)
    inputs = []
    for name, arr, datatype in (
        ("user_id", np.asarray(users, dtype=np.int64).reshape(n, 1), "INT64"),
        ("merchant_id", np.array([str(m).encode() for m in merchants], dtype=object).reshape(n, 1), "BYTES"),
        ("amount", np.array([[12.5], [80.0], [999.0]]), "FP64"),
        ("hour", np.array([[3], [14], [23]], dtype=np.int64), "INT64"),
    ):
        t = grpcclient.InferInput(name, [n, 1], datatype)
        t.set_data_from_numpy(arr)
        inputs.append(t)
    scores = client.infer("fraud", inputs).as_numpy("score")[:, 0]
    features = np.column_stack([np.asarray(training.column(c).to_pylist(), dtype=np.float64) for c in names])
    direct = mlp_reference(features.astype(np.float32), weights)[:, 0]
    for u, m, a, b in zip(users, merchants, scores, direct):
        print(f"  user {int(u)}, merchant {m}: served score {a:+.5f}   model on the training set's features {b:+.5f}")
    agree = bool(np.allclose(scores, direct, rtol=1e-5, atol=1e-5))
    print(f"  {'the served scores equal' if agree else 'MISMATCH with'} the model run on the training set's features")
    return agree
