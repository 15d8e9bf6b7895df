"""The feature server when Redis fails, with real processes: a throwaway redis-server
(`parity.testing.redis.RedisServer`), the example feature repository materialized into it with
`parity features materialize`, and a Parity server (`--feature-repository`, `--online-store
redis://...&timeout=0.5`, a model repository of a tiny MLP) on each gRPC transport.

Redis killed: POST /v1/features/online answers 503 saying what to do, and
`parity.v1.FeatureService/GetOnlineFeatures` UNAVAILABLE, each within a few timeouts (never a
hang); plain-tensor inference over HTTP and gRPC and the health endpoints keep answering.  Redis
restarted on the same port (empty): the same server process reads again by itself (NOT_FOUND until
re-materialized, then the values of before).  A Redis that accepts connections but never answers
(a bare listening socket): 503 / UNAVAILABLE within the timeout too.

Feature-joined inference (model `fraud`, whose input comes from the fraud_detection service) is
held to the same: UNAVAILABLE / 503 within a few timeouts while Redis is down, NOT_FOUND naming
the entity on an empty Redis, answers again once re-materialized.

The checks of each state are the functions `expect_while_redis_is_down(...)` and
`expect_while_redis_is_up(...)`: a further path through the feature store adds its model to
`write_models` and its expectations there, and every scenario here then covers it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from parity._proto.parity.v1 import features_pb2 as fpb
from parity._proto.parity.v1 import features_pb2_grpc as fpb_grpc
from parity.features.example import end_history_at, generate
from parity.testing.models import mlp_config, mlp_reference, write_config, write_mlp_onnx
from parity.testing.redis import RedisServer
from parity.testing.server import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
REPO = ROOT / "configs" / "features" / "example_repo.py"
TIMEOUT_S = 0.5  # the online store's connect and socket timeout (the url's timeout=)
FAIL_FAST_S = 5.0  # generous: a failure must come within a few timeouts on a noisy 2-core machine
PREFIX = "faults"
SIZES = [4, 8, 1]
ROWS = 4
AMOUNTS = [12.5, 0.0, 999.0, 3.25]
HOURS = [3, 0, 23, 12]


# -- the pieces: models, data, servers ---------------------------------------------------------------


def write_models(models: Path) -> dict:
    """The model repository every server here serves: a plain-tensor MLP (INPUT0 FP32[4] ->
    OUTPUT0), whose weights come back for checking answers."""
    weights = write_mlp_onnx(models / "mlp" / "1" / "model.onnx", SIZES)
    write_config(models / "mlp", mlp_config(SIZES, max_batch_size=8))
    # feature-joined: the MLP's input filled from the fraud_detection service (13 features)
    joined = write_mlp_onnx(models / "fraud" / "1" / "model.onnx", [13, 8, 1], seed=3)
    write_config(models / "fraud", dict(mlp_config([13, 8, 1], max_batch_size=8), features={"service": "fraud_detection"}))
    return {"mlp": weights, "fraud": joined}


def store_url(port: int) -> str:
    return f"redis://127.0.0.1:{port}/0?prefix={PREFIX}&timeout={TIMEOUT_S}"


def materialize(url: str, data: dict) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "parity", "features", "materialize", "--repo", str(REPO), "--online-store", url,
         "--state", str(data["dir"] / f"marks-{time.monotonic_ns()}.json")],
        env=data["env"], capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "entities written" in proc.stdout


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The example's data (history ending a day ago: served now, values are within their TTL), the
    entities to ask for, and the model repository."""
    d = tmp_path_factory.mktemp("faults")
    paths = generate(d / "data", seed=5)
    end_history_at(paths, (pd.Timestamp.now(tz="UTC") - pd.Timedelta(days=1)).to_pydatetime())
    users = pd.read_parquet(paths["users"])["user_id"].unique()[:ROWS]
    merchants = pd.read_parquet(paths["merchants"])["merchant_id"].unique()[:ROWS]
    return {
        "dir": d,
        "env": dict(os.environ, PARITY_EXAMPLE_FEATURE_DATA=str(d / "data")),
        "users": [int(u) for u in users],
        "merchants": [str(m) for m in merchants],
        "models": d / "models",
        "weights": write_models(d / "models"),
    }


@pytest.fixture(scope="module")
def redis_server(data):
    """A throwaway redis-server holding the materialized example (a test that stops it leaves it
    running and materialized again)."""
    with RedisServer() as server:
        materialize(store_url(server.port), data)
        yield server


def ensure_redis_up_and_materialized(redis_server: RedisServer, data: dict) -> None:
    """Whatever an earlier scenario left (it may have failed half way): Redis up, the example in it."""
    redis_server.start()
    with redis_server.client() as r:
        if not r.dbsize():
            materialize(store_url(redis_server.port), data)


@pytest.fixture(scope="module", params=["fast", "grpcio"])
def served(request, data, redis_server):
    """A Parity server on the throwaway Redis, on one gRPC transport; a feature stub and
    tritonclient clients to it."""
    args = ["--feature-repository", str(REPO), "--online-store", store_url(redis_server.port), "--grpc-transport", request.param]
    with ServerProcess(data["models"], *args, env=data["env"]) as server, grpc.insecure_channel(server.grpc_url) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        clients = Clients(server, fpb_grpc.FeatureServiceStub(channel))
        try:
            yield clients
        finally:
            clients.close()
        assert "Traceback" not in server.output(), server.output()


class Clients:
    def __init__(self, server: ServerProcess, features: fpb_grpc.FeatureServiceStub):
        self.server = server
        self.features = features
        self.http = httpclient.InferenceServerClient(server.http_url, network_timeout=30)
        self.grpc = grpcclient.InferenceServerClient(server.grpc_url)

    def close(self) -> None:
        self.http.close()
        self.grpc.close()


# -- requests ------------------------------------------------------------------------------------------


def features_http(server: ServerProcess, data: dict) -> tuple[int, dict, float]:
    """POST /v1/features/online for the fraud_detection service: (status, body, seconds)."""
    doc = {
        "features": "fraud_detection",
        "entities": {"user_id": data["users"], "merchant_id": data["merchants"]},
        "request_values": {"amount": AMOUNTS, "hour": HOURS},
    }
    req = urllib.request.Request(f"http://{server.http_url}/v1/features/online", data=json.dumps(doc).encode(), method="POST")
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read()), time.monotonic() - t0
    except urllib.error.HTTPError as e:
        with e:
            return e.code, json.loads(e.read()), time.monotonic() - t0


def features_grpc(stub: fpb_grpc.FeatureServiceStub, data: dict):
    """GetOnlineFeatures for the same request: (status code, response or details, seconds)."""
    request = fpb.GetOnlineFeaturesRequest(
        feature_service="fraud_detection",
        entities={
            "user_id": fpb.EntityValues(int64_values=fpb.Int64List(values=data["users"])),
            "merchant_id": fpb.EntityValues(string_values=fpb.StringList(values=data["merchants"])),
        },
        request_values={
            "amount": fpb.RequestValues(double_values=fpb.DoubleList(values=AMOUNTS)),
            "hour": fpb.RequestValues(int64_values=fpb.Int64List(values=HOURS)),
        },
    )
    t0 = time.monotonic()
    try:
        response = stub.GetOnlineFeatures(request, timeout=30)  # a deadline far past FAIL_FAST_S: a hang shows as slow
        return grpc.StatusCode.OK, response, time.monotonic() - t0
    except grpc.RpcError as e:
        return e.code(), e.details(), time.monotonic() - t0


def infer_joined(clients: Clients, data: dict) -> list:
    """The feature-joined model called with entity ids over HTTP and gRPC: [(outcome, seconds)]
    per protocol, the outcome an output array or the InferenceServerException."""
    out = []
    for lib, client in ((httpclient, clients.http), (grpcclient, clients.grpc)):
        inputs = []
        for name, arr, datatype in (
            ("user_id", np.asarray(data["users"], dtype=np.int64).reshape(ROWS, 1), "INT64"),
            ("merchant_id", np.array([m.encode() for m in data["merchants"]], dtype=object).reshape(ROWS, 1), "BYTES"),
            ("amount", np.asarray(AMOUNTS, dtype=np.float64).reshape(ROWS, 1), "FP64"),
            ("hour", np.asarray(HOURS, dtype=np.int64).reshape(ROWS, 1), "INT64"),
        ):
            t = lib.InferInput(name, [ROWS, 1], datatype)
            t.set_data_from_numpy(arr)
            inputs.append(t)
        t0 = time.monotonic()
        try:
            outcome = client.infer("fraud", inputs).as_numpy("OUTPUT0")
        except InferenceServerException as e:
            outcome = e
        out.append((outcome, time.monotonic() - t0))
    return out


def infer_both(clients: Clients, weights: dict, seed: int) -> None:
    """A plain-tensor request to the MLP over HTTP and over gRPC, answered correctly."""
    x = np.random.default_rng(seed).standard_normal((3, SIZES[0])).astype(np.float32)
    want = mlp_reference(x, weights["mlp"])
    for lib, client in ((httpclient, clients.http), (grpcclient, clients.grpc)):
        inp = lib.InferInput("INPUT0", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        t0 = time.monotonic()
        got = client.infer("mlp", [inp], outputs=[lib.InferRequestedOutput("OUTPUT0")]).as_numpy("OUTPUT0")
        assert time.monotonic() - t0 < FAIL_FAST_S, lib.__name__
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# -- what each state must look like --------------------------------------------------------------------


STORED_VIEWS = ("user_profile", "merchant_profile")  # read from the online store (transaction_features: on demand)


def stored(doc: dict) -> dict[str, dict]:
    """The features of the response that are read from the online store, by name."""
    return {f["name"]: f for f in doc["features"] if f["name"].split("__")[0] in STORED_VIEWS}


def expect_while_redis_is_up(clients: Clients, data: dict, *, materialized: bool = True) -> dict:
    """Feature reads answer over HTTP and gRPC -- stored values PRESENT when materialized, all
    NOT_FOUND on an empty Redis -- and inference answers.  Returns the HTTP response."""
    status, doc, _ = features_http(clients.server, data)
    assert status == 200, doc
    statuses = {s for f in stored(doc).values() for s in f["statuses"]}
    assert len(stored(doc)) >= 2, doc
    if materialized:
        assert "PRESENT" in statuses and "NOT_FOUND" not in statuses, statuses
    else:
        assert statuses == {"NOT_FOUND"} and all(v is None for f in stored(doc).values() for v in f["values"])
    code, response, _ = features_grpc(clients.features, data)
    assert code == grpc.StatusCode.OK, response
    assert [v.name for v in response.features] == [f["name"] for f in doc["features"]]
    infer_both(clients, data["weights"], seed=1)
    (http_out, _), (grpc_out, _) = infer_joined(clients, data)
    if statuses == {"PRESENT"}:
        assert not isinstance(http_out, Exception) and not isinstance(grpc_out, Exception), (http_out, grpc_out)
        assert http_out.shape == (ROWS, 1) and http_out.tobytes() == grpc_out.tobytes()
    else:  # an entity without stored features: the service rejects it, naming it
        assert isinstance(http_out, InferenceServerException) and "404" in str(http_out.status()), http_out
        assert isinstance(grpc_out, InferenceServerException) and grpc_out.status() == "StatusCode.NOT_FOUND", grpc_out
        assert "entity " in grpc_out.message() and "feature view" in grpc_out.message()
    return doc


def expect_while_redis_is_down(clients: Clients, data: dict, reason: str) -> None:
    """Feature reads fail fast and say what to do; the server stays up: health, inference."""
    status, doc, took = features_http(clients.server, data)
    assert status == 503, doc
    assert took < FAIL_FAST_S, f"POST /v1/features/online took {took:.1f}s with Redis {reason}"
    message = doc["error"]
    assert "online store" in message and "unavailable" in message, message
    assert "start Redis or fix the online store url" in message and "retry" in message, message
    code, details, took = features_grpc(clients.features, data)
    assert code == grpc.StatusCode.UNAVAILABLE, (code, details)
    assert took < FAIL_FAST_S, f"GetOnlineFeatures took {took:.1f}s with Redis {reason}"
    assert "start Redis or fix the online store url" in details, details
    assert clients.http.is_server_live() and clients.http.is_server_ready()
    assert clients.grpc.is_server_live() and clients.grpc.is_server_ready()
    assert clients.http.is_model_ready("mlp") and clients.grpc.is_model_ready("mlp")
    infer_both(clients, data["weights"], seed=2)
    # feature-joined inference fails fast, UNAVAILABLE / 503, saying what to do
    (http_out, http_s), (grpc_out, grpc_s) = infer_joined(clients, data)
    assert isinstance(http_out, InferenceServerException) and "503" in str(http_out.status()), http_out
    assert isinstance(grpc_out, InferenceServerException) and grpc_out.status() == "StatusCode.UNAVAILABLE", grpc_out
    assert http_s < FAIL_FAST_S and grpc_s < FAIL_FAST_S, (http_s, grpc_s, reason)
    assert "start Redis or fix the online store url" in grpc_out.message(), grpc_out.message()


# -- the scenarios ---------------------------------------------------------------------------------------


def test_redis_killed_fails_fast_keeps_serving_and_recovers_without_a_restart(served, redis_server, data):
    ensure_redis_up_and_materialized(redis_server, data)
    pid = served.server.proc.pid
    before = expect_while_redis_is_up(served, data)

    redis_server.kill()
    try:
        for _ in range(2):  # the first failure and the next (a broken connection dropped, then refused again)
            expect_while_redis_is_down(served, data, "killed")
    finally:
        redis_server.start()  # the same port, empty (nothing was saved)

    # the same server process reconnects by itself: reads answer, nothing is stored yet
    assert served.server.proc.poll() is None and served.server.proc.pid == pid
    expect_while_redis_is_up(served, data, materialized=False)
    materialize(store_url(redis_server.port), data)
    after = expect_while_redis_is_up(served, data)
    assert {n: f["values"] for n, f in stored(after).items()} == {n: f["values"] for n, f in stored(before).items()}


@pytest.fixture(scope="module")
def silent_redis():
    """A port that accepts connections (the kernel's backlog) and never answers a byte."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(64)
        yield srv.getsockname()[1]


@pytest.mark.parametrize("transport", ["fast", "grpcio"])
def test_a_redis_that_accepts_but_never_answers_fails_within_the_timeout(data, silent_redis, transport):
    args = ["--feature-repository", str(REPO), "--online-store", store_url(silent_redis), "--grpc-transport", transport]
    with ServerProcess(data["models"], *args, env=data["env"]) as server, grpc.insecure_channel(server.grpc_url) as channel:
        clients = Clients(server, fpb_grpc.FeatureServiceStub(channel))
        try:
            for _ in range(2):
                expect_while_redis_is_down(clients, data, "silent")
            status, doc, took = features_http(server, data)
            assert status == 503 and "Timeout" in doc["error"], doc  # it names what happened
            assert took >= TIMEOUT_S * 0.9, f"{took:.2f}s: the 503 should come from the store's timeout"
        finally:
            clients.close()
        assert "Traceback" not in server.output(), server.output()
