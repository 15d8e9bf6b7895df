"""Feature-joined inference end to end: models whose config names a feature service of the example
repository, served by a real server process over SQLite and the real Redis, called with tritonclient
(HTTP and gRPC) sending entity ids as ordinary tensors.

The `features` model is an ONNX Identity over FP64 [batch, 13]: its output IS the feature matrix the
server assembled, so its answers are compared bit for bit with the offline training set built for
the same entities at the same time.  `fraud` is an MLP on the same features (FP32), `risk` a model
on a service that fills missing entities with declared defaults.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
from onnx import TensorProto
from tritonclient.utils import InferenceServerException

from parity.features.example import end_history_at, generate
from parity.testing.models import mlp_config, mlp_reference, write_config, write_identity_onnx, write_mlp_onnx
from parity.testing.server import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
REPO = ROOT / "configs" / "features" / "example_repo.py"
WIDTH = 13  # fraud_detection: 5 user_profile + 3 merchant_profile + 5 transaction_features


def write_models(models: Path) -> list:
    write_identity_onnx(models / "features" / "1" / "model.onnx", TensorProto.DOUBLE, ["batch", WIDTH])
    write_config(
        models / "features",
        {
            "platform": "onnxruntime_onnx",
            "max_batch_size": 64,
            "inputs": [{"name": "IN", "datatype": "FP64", "shape": [WIDTH]}],
            "outputs": [{"name": "OUT", "datatype": "FP64", "shape": [WIDTH]}],
            "dynamic_batching": {"max_queue_delay_microseconds": 2000},
            "features": {"service": "fraud_detection"},
        },
    )
    weights = write_mlp_onnx(models / "fraud" / "1" / "model.onnx", [WIDTH, 16, 1], seed=5, input_name="x", output_name="score")
    cfg = mlp_config([WIDTH, 16, 1], max_batch_size=32)
    cfg["inputs"][0]["name"], cfg["outputs"][0]["name"] = "x", "score"
    write_config(models / "fraud", dict(cfg, features={"service": "fraud_detection", "input": "x"}))
    # Identity models: the answer is the assembled feature matrix
    for name, service, width, max_batch in (("risk", "merchant_risk", 2, 16), ("snapshot", "account_snapshot", 6, 64), ("spend", "user_spend", 2, 64)):
        write_identity_onnx(models / name / "1" / "model.onnx", TensorProto.DOUBLE, ["batch", width])
        write_config(
            models / name,
            {
                "max_batch_size": max_batch,
                "inputs": [{"name": "IN", "datatype": "FP64", "shape": [width]}],
                "outputs": [{"name": "OUT", "datatype": "FP64", "shape": [width]}],
                "dynamic_batching": {},
                "features": {"service": service},
            },
        )
    write_mlp_onnx(models / "plain" / "1" / "model.onnx", [4, 8, 1])
    write_config(models / "plain", mlp_config([4, 8, 1], max_batch_size=8))
    return weights


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def served(request, tmp_path_factory):
    d = tmp_path_factory.mktemp("join")
    paths = generate(d / "data", seed=11)
    end_history_at(paths, (pd.Timestamp.now(tz="UTC") - pd.Timedelta(days=1)).to_pydatetime())
    env = dict(os.environ, PARITY_EXAMPLE_FEATURE_DATA=str(d / "data"))
    prefix = f"paritytest_{uuid.uuid4().hex[:12]}"
    url = f"sqlite:///{d / 'online.db'}" if request.param == "sqlite" else f"redis://127.0.0.1:6379/0?prefix={prefix}&timeout=2"
    proc = subprocess.run(
        [sys.executable, "-m", "parity", "features", "materialize", "--repo", str(REPO), "--online-store", url,
         "--state", str(d / "marks.json")],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    weights = write_models(d / "models")
    with ServerProcess(d / "models", "--feature-repository", str(REPO), "--online-store", url, env=env) as server:
        yield server, d, weights
    if request.param == "redis":
        with redis.Redis() as r:
            keys = list(r.scan_iter(match=f"{prefix}:*", count=1000))
            for i in range(0, len(keys), 500):
                r.delete(*keys[i : i + 500])


def entities(d: Path, n: int, offset: int = 0):
    users = pd.read_parquet(d / "data" / "users.parquet")["user_id"].unique()[offset : offset + n]
    merchants = pd.read_parquet(d / "data" / "merchants.parquet")["merchant_id"].unique()
    merchants = merchants[(offset + np.arange(n)) % len(merchants)]
    rng = np.random.default_rng(offset)
    amounts = np.round(rng.uniform(0, 500, n), 2)
    hours = rng.integers(0, 24, n)
    return np.asarray(users, dtype=np.int64), np.asarray(merchants, dtype=object), amounts, hours.astype(np.int64)


def training_rows(d: Path, users, merchants, amounts, hours, service: str = "fraud_detection") -> pd.DataFrame:
    """The offline point-in-time join for these entities at 'now', the service's columns only."""
    os.environ["PARITY_EXAMPLE_FEATURE_DATA"] = str(d / "data")
    try:
        from parity.features.definitions import FeatureRepository
        from parity.features.offline import get_historical_features

        repo = FeatureRepository.load(REPO)
        frame = pd.DataFrame(
            {"user_id": users, "merchant_id": merchants, "event_timestamp": pd.Timestamp.now(tz="UTC"), "amount": amounts, "hour": hours}
        )
        out = get_historical_features(repo, frame, service, output="pandas", full_feature_names=True)
    finally:
        del os.environ["PARITY_EXAMPLE_FEATURE_DATA"]
    return out[[c for c in out.columns if "__" in c]]


def http_inputs(users, merchants, amounts, hours):
    n = len(users)
    tensors = []
    for name, arr, dt in (
        ("user_id", users.reshape(n, 1), "INT64"),
        ("merchant_id", np.array([m.encode() for m in merchants], dtype=object).reshape(n, 1), "BYTES"),
        ("amount", np.asarray(amounts, dtype=np.float64).reshape(n, 1), "FP64"),
        ("hour", hours.reshape(n, 1), "INT64"),
    ):
        t = httpclient.InferInput(name, [n, 1], dt)
        t.set_data_from_numpy(arr, binary_data=True)
        tensors.append(t)
    return tensors


def grpc_inputs(module, users, merchants, amounts, hours):
    n = len(users)
    tensors = []
    for name, arr, dt in (
        ("user_id", users.reshape(n, 1), "INT64"),
        ("merchant_id", np.array([m.encode() for m in merchants], dtype=object).reshape(n, 1), "BYTES"),
        ("amount", np.asarray(amounts, dtype=np.float64).reshape(n, 1), "FP64"),
        ("hour", hours.reshape(n, 1), "INT64"),
    ):
        t = module.InferInput(name, [n, 1], dt)
        t.set_data_from_numpy(arr)
        tensors.append(t)
    return tensors


def metric(server, name: str, **labels) -> float:
    with urllib.request.urlopen(f"http://{server.http_url}/metrics", timeout=10) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_the_model_publishes_entity_ids_and_request_values_as_its_inputs(served):
    server = served[0]
    client = httpclient.InferenceServerClient(server.http_url)
    meta = client.get_model_metadata("features")
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [
        ("user_id", "INT64", [-1, 1]),
        ("merchant_id", "BYTES", [-1, 1]),
        ("amount", "FP64", [-1, 1]),
        ("hour", "INT64", [-1, 1]),
    ]
    assert [(t["name"], t["shape"]) for t in meta["outputs"]] == [("OUT", [-1, WIDTH])]
    config = grpcclient.InferenceServerClient(server.grpc_url).get_model_config("fraud", as_json=True)["config"]
    assert [i["name"] for i in config["input"]] == ["user_id", "merchant_id", "amount", "hour"]
    assert config["max_batch_size"] == 32 and "dynamic_batching" in config


def test_served_feature_vectors_are_the_training_sets_bits_over_http_and_grpc(served):
    server, d, _ = served
    users, merchants, amounts, hours = entities(d, 8)
    want = training_rows(d, users, merchants, amounts, hours)
    complete = ~want.isna().any(axis=1).to_numpy()
    assert complete.sum() >= 4, "too few entities with every feature: the check would compare too little"
    users, merchants, amounts, hours = users[complete], merchants[complete], amounts[complete], hours[complete]
    expected = want[complete].to_numpy(dtype=np.float64)

    got_http = httpclient.InferenceServerClient(server.http_url).infer("features", http_inputs(users, merchants, amounts, hours)).as_numpy("OUT")
    got_grpc = grpcclient.InferenceServerClient(server.grpc_url).infer("features", grpc_inputs(grpcclient, users, merchants, amounts, hours)).as_numpy("OUT")
    for got in (got_http, got_grpc):
        assert got.shape == expected.shape
        # bit-identical, NaN included
        assert got.tobytes() == expected.tobytes(), np.argwhere(got.view(np.int64) != expected.view(np.int64))[:5]


def test_a_model_on_joined_features_answers_as_on_the_training_features(served):
    server, d, weights = served
    users, merchants, amounts, hours = entities(d, 12, offset=3)
    want = training_rows(d, users, merchants, amounts, hours)
    complete = ~want.isna().any(axis=1).to_numpy()
    users, merchants, amounts, hours = users[complete], merchants[complete], amounts[complete], hours[complete]
    x = want[complete].to_numpy(dtype=np.float64).astype(np.float32)
    got = grpcclient.InferenceServerClient(server.grpc_url).infer("fraud", grpc_inputs(grpcclient, users, merchants, amounts, hours)).as_numpy("score")
    np.testing.assert_allclose(got, mlp_reference(x, weights), rtol=1e-5, atol=1e-5)


def test_concurrent_requests_batched_together_each_get_their_own_rows(served):
    server, d, _ = served
    users, merchants, amounts, hours = entities(d, 40, offset=1)
    want = training_rows(d, users, merchants, amounts, hours)
    keep = ~want.isna().any(axis=1).to_numpy()
    users, merchants, amounts, hours = users[keep], merchants[keep], amounts[keep], hours[keep]
    expected = want[keep].to_numpy(dtype=np.float64)
    executions_before = metric(server, "parity_execution_count_total", model="features")
    rows_before = metric(server, "parity_inference_count_total", model="features")

    async def run():
        client = grpcaio.InferenceServerClient(server.grpc_url)
        try:
            calls = []
            for i in range(len(users)):  # one or two rows per request
                s = slice(i, i + 1 + i % 2)
                calls.append(client.infer("features", grpc_inputs(grpcaio, users[s], merchants[s], amounts[s], hours[s])))
            return await asyncio.gather(*calls)
        finally:
            await client.close()

    results = asyncio.run(run())
    for i, r in enumerate(results):
        s = slice(i, i + 1 + i % 2)
        assert r.as_numpy("OUT").tobytes() == expected[s].tobytes(), i
    executions = metric(server, "parity_execution_count_total", model="features") - executions_before
    rows = metric(server, "parity_inference_count_total", model="features") - rows_before
    assert rows == sum(len(range(len(users))[slice(i, i + 1 + i % 2)]) for i in range(len(users)))
    assert executions < len(users), "no two requests were ever batched together"
    assert metric(server, "parity_feature_fetch_duration_seconds_count", model="features") >= executions


def test_an_unknown_entity_is_not_found_naming_it_and_spares_the_rest_of_its_batch(served):
    server, d, _ = served
    users, merchants, amounts, hours = entities(d, 6, offset=2)
    want = training_rows(d, users, merchants, amounts, hours)
    keep = ~want.isna().any(axis=1).to_numpy()
    users, merchants, amounts, hours = users[keep], merchants[keep], amounts[keep], hours[keep]
    rejected_before = metric(server, "parity_feature_missing_rows_total", model="features", policy="rejected")
    ghost = np.array([987_654_321], dtype=np.int64)

    with pytest.raises(InferenceServerException) as info:
        httpclient.InferenceServerClient(server.http_url).infer("features", http_inputs(ghost, merchants[:1], amounts[:1], hours[:1]))
    assert info.value.status() == "404" or "404" in str(info.value.status())
    assert "user_id=987654321" in info.value.message() and "user_profile" in info.value.message()

    async def run():
        client = grpcaio.InferenceServerClient(server.grpc_url)
        try:
            calls = [client.infer("features", grpc_inputs(grpcaio, users[i : i + 1], merchants[i : i + 1], amounts[i : i + 1], hours[i : i + 1])) for i in range(len(users))]
            calls.insert(1, client.infer("features", grpc_inputs(grpcaio, ghost, merchants[:1], amounts[:1], hours[:1])))
            return await asyncio.gather(*calls, return_exceptions=True)
        finally:
            await client.close()

    results = asyncio.run(run())
    bad = results.pop(1)
    assert isinstance(bad, InferenceServerException) and bad.status() == "StatusCode.NOT_FOUND"
    assert "user_id=987654321" in bad.message()
    for i, r in enumerate(results):
        assert not isinstance(r, Exception), r
        assert r.as_numpy("OUT").tobytes() == want[keep].to_numpy(dtype=np.float64)[i : i + 1].tobytes()
    assert metric(server, "parity_feature_missing_rows_total", model="features", policy="rejected") == rejected_before + 2


def test_a_service_with_defaults_fills_a_missing_entity_and_counts_it(served):
    server, d, _ = served
    merchant = pd.read_parquet(d / "data" / "merchants.parquet")["merchant_id"].iloc[0]
    before = metric(server, "parity_feature_missing_rows_total", model="risk", policy="defaulted")
    client = httpclient.InferenceServerClient(server.http_url)
    t = httpclient.InferInput("merchant_id", [2, 1], "BYTES")
    t.set_data_from_numpy(np.array([[b"no-such-merchant"], [merchant.encode()]], dtype=object))
    out = client.infer("risk", [t]).as_numpy("OUT")
    assert out[0].tolist() == [0.5, 0.0]  # the service's declared defaults
    assert out[1].tolist() != [0.5, 0.0]
    # the training set of the same service fills the same defaults: the model saw these bits in training
    offline = training_rows(d, np.zeros(2, dtype=np.int64), np.array(["no-such-merchant", merchant], dtype=object), [0.0, 0.0], np.zeros(2, dtype=np.int64), "merchant_risk")
    assert offline.to_numpy(dtype=np.float64).tobytes() == out.tobytes()
    assert metric(server, "parity_feature_missing_rows_total", model="risk", policy="defaulted") == before + 1


def test_a_service_of_stored_features_only_serves_the_training_sets_bits_found_or_not(served):
    """`account_snapshot`: stored features of two views in the model's own order, with defaults.
    On Redis, complete batches are copied straight from the blobs into the input and any batch
    with a missing or expired value is decoded the general way; either way (and on SQLite) the
    bits are the training set's, defaults included, one row per request and many."""
    server, d, _ = served
    users, merchants, amounts, hours = entities(d, 10, offset=4)
    users = np.append(users, 987_654_321)  # an unknown user: its features take the defaults
    merchants = np.append(merchants, merchants[:1])
    amounts, hours = np.append(amounts, 1.0), np.append(hours, 3)
    # the training set fills the service's defaults too: the model trained on these bits
    expected = training_rows(d, users, merchants, amounts, hours, "account_snapshot").to_numpy(dtype=np.float64)
    assert expected[-1, [1, 2, 3, 5]].tolist() == [-1, 0.0, -1, 0.0]  # the unknown user's features: the defaults
    assert not np.isnan(expected).any()
    n = len(users)

    def inputs(module, s):
        k = len(users[s])
        uid = module.InferInput("user_id", [k, 1], "INT64")
        uid.set_data_from_numpy(users[s].reshape(k, 1))
        mid = module.InferInput("merchant_id", [k, 1], "BYTES")
        mid.set_data_from_numpy(np.array([m.encode() for m in merchants[s]], dtype=object).reshape(k, 1))
        return [uid, mid]

    client = grpcclient.InferenceServerClient(server.grpc_url)
    for j in range(n):  # one row at a time: the complete ones take the direct copy on Redis
        assert client.infer("snapshot", inputs(grpcclient, slice(j, j + 1))).as_numpy("OUT").tobytes() == expected[j : j + 1].tobytes(), j
    whole = httpclient.InferenceServerClient(server.http_url).infer("snapshot", inputs(httpclient, slice(0, n))).as_numpy("OUT")
    assert whole.tobytes() == expected.tobytes()  # the missing row sends the whole batch the general way
    complete = grpcclient.InferenceServerClient(server.grpc_url).infer("snapshot", inputs(grpcclient, slice(0, n - 1))).as_numpy("OUT")
    assert complete.tobytes() == expected[: n - 1].tobytes()


def test_a_service_keyed_by_one_int64_key_serves_the_training_sets_bits_and_rejects_an_unknown_user(served):
    """`user_spend`: float64 features of one view keyed by user_id alone into an FP64 input (on
    Redis: a one-row read from a template, the values' bytes copied into the input; a batch of
    many: one MGET of all).  The bits are the training set's, one row per request and many; a
    request holding an unknown user is NOT_FOUND naming it."""
    server, d, _ = served
    users, merchants, amounts, hours = entities(d, 12, offset=2)
    expected = training_rows(d, users, merchants, amounts, hours, "user_spend").to_numpy(dtype=np.float64)
    assert expected.shape == (12, 2) and not np.isnan(expected).any()

    def ids(module, u):
        t = module.InferInput("user_id", [len(u), 1], "INT64")
        t.set_data_from_numpy(np.asarray(u, dtype=np.int64).reshape(-1, 1))
        return [t]

    client = grpcclient.InferenceServerClient(server.grpc_url)
    for j, u in enumerate(users):
        assert client.infer("spend", ids(grpcclient, [u])).as_numpy("OUT").tobytes() == expected[j : j + 1].tobytes(), j
    http = httpclient.InferenceServerClient(server.http_url)
    assert http.infer("spend", ids(httpclient, users)).as_numpy("OUT").tobytes() == expected.tobytes()
    with pytest.raises(InferenceServerException) as info:
        client.infer("spend", ids(grpcclient, [987_654_321]))
    assert info.value.status() == "StatusCode.NOT_FOUND" and "user_id=987654321" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        http.infer("spend", ids(httpclient, [users[0], 987_654_321]))
    assert info.value.status() == "404" and "user_id=987654321" in info.value.message()


def test_bad_entity_inputs_are_invalid_argument_naming_them(served):
    server, d, _ = served
    users, merchants, amounts, hours = entities(d, 1)
    client = httpclient.InferenceServerClient(server.http_url)
    wrong = http_inputs(users, merchants, amounts, hours)
    bad = httpclient.InferInput("user_id", [1, 1], "FP32")
    bad.set_data_from_numpy(np.array([[1.0]], dtype=np.float32))
    with pytest.raises(InferenceServerException) as info:
        client.infer("features", [bad] + wrong[1:])
    assert "user_id" in info.value.message() and "INT64" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        client.infer("features", wrong[:1] + wrong[2:])
    assert "merchant_id" in info.value.message()
    # a plain model on the same server is untouched
    x = httpclient.InferInput("INPUT0", [1, 4], "FP32")
    x.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
    assert client.infer("plain", [x]).as_numpy("OUTPUT0").shape == (1, 1)


def test_a_feature_model_without_a_feature_repository_is_not_served_and_says_why(tmp_path):
    write_models(tmp_path / "models")
    with ServerProcess(tmp_path / "models", wait_ready=False) as server:
        deadline = 60
        import time

        t0 = time.monotonic()
        while time.monotonic() - t0 < deadline:
            try:
                with urllib.request.urlopen(f"http://{server.http_url}/v2/repository/index", data=b"{}", timeout=2) as r:
                    index = {m["name"]: m for m in json.loads(r.read())}
                if "plain" in index and index["plain"].get("state") == "READY":
                    break
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        assert index["plain"]["state"] == "READY"
        assert index["features"]["state"] == "UNAVAILABLE"
        assert "--feature-repository" in index["features"]["reason"]


def test_plain_json_requests_carry_entity_ids_too(served):
    server, d, _ = served
    users, merchants, amounts, hours = entities(d, 3, offset=5)
    want = training_rows(d, users, merchants, amounts, hours)
    keep = ~want.isna().any(axis=1).to_numpy()
    n = int(keep.sum())
    assert n >= 1
    body = {
        "inputs": [
            {"name": "user_id", "datatype": "INT64", "shape": [n, 1], "data": [int(u) for u in users[keep]]},
            {"name": "merchant_id", "datatype": "BYTES", "shape": [n, 1], "data": [str(m) for m in merchants[keep]]},
            {"name": "amount", "datatype": "FP64", "shape": [n, 1], "data": [float(a) for a in amounts[keep]]},
            {"name": "hour", "datatype": "INT64", "shape": [n, 1], "data": [int(h) for h in hours[keep]]},
        ]
    }
    req = urllib.request.Request(f"http://{server.http_url}/v2/models/features/infer", data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        doc = json.loads(r.read())
    out = doc["outputs"][0]
    assert out["name"] == "OUT" and out["shape"] == [n, WIDTH]
    got = np.array([np.nan if v is None else v for v in out["data"]], dtype=np.float64).reshape(n, WIDTH)
    np.testing.assert_array_equal(got, want[keep].to_numpy(dtype=np.float64))
    # an unknown entity over JSON: 404 with the entity named
    body["inputs"][0]["data"] = [424242] + body["inputs"][0]["data"][1:]
    req = urllib.request.Request(f"http://{server.http_url}/v2/models/features/infer", data=json.dumps(body).encode(), method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=10)
    with info.value:
        assert info.value.code == 404 and "user_id=424242" in json.loads(info.value.read())["error"]
