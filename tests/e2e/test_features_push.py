"""Push end to end: `POST /v1/features/push` and `parity.v1.FeatureService/Push` on served
processes (the example repository; the real SQLite store with the fast gRPC transport, the real
Redis with grpcio), then the online read over HTTP and gRPC, the training set built afterwards in
this process and a later `parity features materialize` all return the pushed rows' transformed
values -- bit for bit.  Plus what the endpoint refuses: a missing or wrong admin token, bad views,
columns and values, a server without a feature repository or without a token, and an online store
that is down (503 / UNAVAILABLE, the rows kept in the offline log)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import redis

from parity._proto.parity.v1 import features_pb2 as fpb
from parity._proto.parity.v1 import features_pb2_grpc as fpb_grpc
from parity.features.example import end_history_at, generate
from parity.testing.models import mlp_config, write_config, write_mlp_onnx
from parity.testing.server import ServerProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
REPO = ROOT / "configs" / "features" / "example_repo.py"
TOKEN = "push-test-token"
USER_COLS = ["user_profile:age_bucket", "user_profile:country_bucket", "user_profile:account_age_days",
             "user_profile:txn_count_log", "user_profile:avg_amount_z"]  # fmt: skip


def call(url: str, path: str, doc=None, token: str | None = TOKEN, method: str = "POST", raw: bytes | None = None) -> tuple[int, dict]:
    data = raw if raw is not None else (None if doc is None else json.dumps(doc).encode())
    req = urllib.request.Request(f"http://{url}{path}", data=data, method=method)
    if token is not None:
        req.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        with e:
            return e.code, json.loads(e.read() or b"{}")


def now_iso(offset_s: float = 0.0) -> str:
    return (pd.Timestamp.now(tz="UTC") + pd.Timedelta(seconds=offset_s)).isoformat()


def load_repo(data: Path):
    from parity.features.definitions import FeatureRepository

    os.environ["PARITY_EXAMPLE_FEATURE_DATA"] = str(data)
    try:
        return FeatureRepository.load(REPO)
    finally:
        del os.environ["PARITY_EXAMPLE_FEATURE_DATA"]


def training(data: Path, service, entity_df: pd.DataFrame) -> pa.Table:
    """The training set, built in this process from the server's data directory (its source files
    and its push log)."""
    from parity.features.offline import get_historical_features

    return get_historical_features(load_repo(data), entity_df, service, output="arrow", full_feature_names=True)


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def user_rows(users, offsets_s, ages, countries=None, signup=None, txns=None, avg=None) -> dict:
    n = len(users)
    return {
        "user_id": list(users),
        "event_timestamp": [now_iso(o) for o in offsets_s],
        "age": list(ages),
        "country": list(countries or ["DE"] * n),
        "signup_days": list(signup or [400.5] * n),
        "txn_count_30d": list(txns or [12] * n),
        "avg_amount_30d": list(avg or [52.25] * n),
    }


def user_expected(rows: dict) -> dict[str, list]:
    """The example's user_profile transform, run here on the rows in the source's dtypes."""
    from importlib import util

    spec = util.spec_from_file_location("example_repo_for_push_test", REPO)
    module = util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.user_profile_transform({
        "age": np.array(rows["age"], dtype=np.int64),
        "country": np.array(rows["country"], dtype=object),
        "signup_days": np.array(rows["signup_days"], dtype=np.float64),
        "txn_count_30d": np.array(rows["txn_count_30d"], dtype=np.int64),
        "avg_amount_30d": np.array(rows["avg_amount_30d"], dtype=np.float32),
    })  # fmt: skip
    return {f"user_profile__{k}": [x.item() for x in v] for k, v in out.items()}


def write_models(models: Path) -> Path:
    write_mlp_onnx(models / "mlp" / "1" / "model.onnx", [4, 8, 1])
    write_config(models / "mlp", mlp_config([4, 8, 1], max_batch_size=8))
    return models


@pytest.fixture(scope="module")
def example_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("push-data")
    paths = generate(d / "data", seed=5)
    end_history_at(paths, (pd.Timestamp.now(tz="UTC") - pd.Timedelta(days=1)).to_pydatetime())
    return d / "data"


@pytest.fixture(scope="module", params=["sqlite-fast", "redis-grpcio"])
def served(request, example_data, tmp_path_factory):
    """A server (admin token, one store, one gRPC transport) on its own copy of the data, so its
    push log is its own; a gRPC stub to it."""
    store, transport = request.param.split("-")
    d = tmp_path_factory.mktemp(f"push-{request.param}")
    data = d / "data"
    shutil.copytree(example_data, data)
    prefix = f"paritytest_push_{uuid.uuid4().hex[:12]}"
    url = f"sqlite:///{d / 'online.db'}" if store == "sqlite" else f"redis://127.0.0.1:6379/0?prefix={prefix}&timeout=2"
    env = dict(os.environ, PARITY_EXAMPLE_FEATURE_DATA=str(data))
    args = ["--feature-repository", str(REPO), "--online-store", url, "--grpc-transport", transport, "--admin-token", TOKEN]
    try:
        with ServerProcess(write_models(d / "models"), *args, env=env) as server, grpc.insecure_channel(server.grpc_url) as channel:
            grpc.channel_ready_future(channel).result(timeout=10)
            yield {"server": server, "stub": fpb_grpc.FeatureServiceStub(channel), "data": data, "env": env, "url": url, "dir": d}
    finally:
        if store == "redis":
            with redis.Redis() as r:
                keys = list(r.scan_iter(match=f"{prefix}:*", count=1000))
                for i in range(0, len(keys), 500):
                    r.delete(*keys[i : i + 500])


def online_http(server, refs, entities: dict) -> dict[str, dict]:
    status, doc = call(server.http_url, "/v1/features/online", {"features": refs, "entities": entities}, token=None)
    assert status == 200, doc
    return {f["name"]: f for f in doc["features"]}


# ------------------------------------------------------------------------------------------ HTTP


def test_http_push_is_served_transformed_and_the_training_set_matches(served):
    server, data = served["server"], served["data"]
    users = [900001, 900002, 900003]
    rows = user_rows(users, [-3600, -60, -7200], ages=[17, 25, 70], countries=["DE", "日本", ""], avg=[52.25, 0.1, 1e6])
    assert online_http(server, USER_COLS, {"user_id": users})["user_profile__age_bucket"]["statuses"] == ["NOT_FOUND"] * 3
    status, doc = call(server.http_url, "/v1/features/push", {"view": "user_profile", "rows": rows})
    assert status == 200, doc
    assert doc["view"] == "user_profile" and doc["rows"] == 3 and doc["entities"] == 3 and doc["log_file"].endswith(".parquet")
    assert (data / "users.push" / "user_profile" / doc["log_file"]).is_file()

    served_now = online_http(server, USER_COLS, {"user_id": users})
    expected = user_expected(rows)
    for name, want in expected.items():
        f = served_now[name]
        assert f["statuses"] == ["PRESENT"] * 3, name
        assert all(0 <= a < 3 * 3600 for a in f["ages_s"]), name
        assert all(same(v, w) for v, w in zip(f["values"], want)), (name, f["values"], want)

    # a training set built after the push, at a time after it: the same values, bit for bit
    ts = pd.Timestamp.now(tz="UTC")
    table = training(data, USER_COLS, pd.DataFrame({"user_id": users, "event_timestamp": [ts] * 3}))
    for name, want in expected.items():
        assert all(same(v, w) for v, w in zip(table.column(name).to_pylist(), want)), (name, table.column(name).to_pylist(), want)


def test_http_push_feeds_the_whole_feature_service_with_training_parity(served):
    """Push a user and a merchant, then the served fraud_detection vector (with the on-demand
    view) equals the training row at "now"."""
    server, data = served["server"], served["data"]
    users, merchants = [900101, 900102], ["m-push-1", "m-push-2"]
    assert call(server.http_url, "/v1/features/push", {"view": "user_profile", "rows": user_rows(users, [-10, -20], ages=[33, 44])})[0] == 200
    merchant_rows = {
        "merchant_id": merchants, "event_timestamp": [now_iso(-30), now_iso(-40)], "category": ["travel", "café & bar"],
        "risk_score": [0.75, float("nan")], "refund_rate": [0.05, 0.5], "daily_volume": [12000.0, 3],
    }  # fmt: skip
    status, doc = call(server.http_url, "/v1/features/push", {"view": "merchant_profile", "rows": merchant_rows})
    assert status == 200, doc
    amounts, hours = [12.5, 999.0], [3, 23]
    status, doc = call(
        server.http_url, "/v1/features/online",
        {"features": "fraud_detection", "entities": {"user_id": users, "merchant_id": merchants},
         "request_values": {"amount": amounts, "hour": hours}}, token=None,
    )  # fmt: skip
    assert status == 200, doc
    ts = pd.Timestamp.now(tz="UTC")
    entity_df = pd.DataFrame({"user_id": users, "merchant_id": merchants, "event_timestamp": [ts] * 2, "amount": amounts, "hour": hours})
    table = training(data, "fraud_detection", entity_df)
    for f in doc["features"]:
        assert f["statuses"] == ["PRESENT", "PRESENT"], f
        offline = table.column(f["name"]).to_pylist()
        for v, w in zip(f["values"], offline):
            if isinstance(w, float) and math.isnan(w):
                assert v is None or math.isnan(v), f["name"]
            else:
                assert v == w, (f["name"], v, w)


def test_http_an_older_pushed_event_does_not_overwrite_a_newer_one(served):
    server = served["server"]
    user = [900201]
    assert call(server.http_url, "/v1/features/push", {"view": "user_profile", "rows": user_rows(user, [-60], ages=[30])})[0] == 200
    status, doc = call(server.http_url, "/v1/features/push", {"view": "user_profile", "rows": user_rows(user, [-3600], ages=[70])})
    assert status == 200, doc  # accepted and logged, but older than what is served
    got = online_http(server, ["user_profile:age_bucket"], {"user_id": user})["user_profile__age_bucket"]
    assert got["values"] == [user_expected(user_rows(user, [0], ages=[30]))["user_profile__age_bucket"][0]]
    ts = pd.Timestamp.now(tz="UTC")
    table = training(served["data"], ["user_profile:age_bucket"], pd.DataFrame({"user_id": user, "event_timestamp": [ts]}))
    assert table.column("user_profile__age_bucket").to_pylist() == got["values"]


def test_http_bad_pushes_are_400_and_name_the_view_or_column(served):
    server = served["server"]
    good = user_rows([900301], [-5], ages=[30])
    cases = [
        ({"view": "no_such_view", "rows": good}, "no_such_view"),
        ({"view": "transaction_features", "rows": good}, "on-demand"),
        ({"view": "user_profile", "rows": {k: v for k, v in good.items() if k != "age"}}, "'age'"),
        ({"view": "user_profile", "rows": {k: v for k, v in good.items() if k != "user_id"}}, "'user_id'"),
        ({"view": "user_profile", "rows": {**good, "age": ["thirty"]}}, "'age'"),
        ({"view": "user_profile", "rows": {**good, "age": [30.5]}}, "'age'"),
        ({"view": "user_profile", "rows": {**good, "user_id": ["u-1"]}}, "'user_id'"),
        ({"view": "user_profile", "rows": {**good, "country": [1]}}, "'country'"),
        ({"view": "user_profile", "rows": {**good, "event_timestamp": ["not a time"]}}, "'event_timestamp'"),
        ({"view": "user_profile", "rows": {**good, "avg_amount_30d": [1e300]}}, "'avg_amount_30d'"),
        ({"view": "user_profile", "rows": {**good, "unknown_column": [1]}}, "'unknown_column'"),
        ({"view": "user_profile", "rows": {**good, "age": [1, 2]}}, "lengths"),
        ({"view": "user_profile"}, "rows"),
        ({"rows": good}, "view"),
    ]
    for doc, needle in cases:
        status, answer = call(server.http_url, "/v1/features/push", doc)
        assert status == 400 and needle in answer["error"], (doc, status, answer)
    status, answer = call(server.http_url, "/v1/features/push", raw=b"{not json")
    assert status == 400 and "JSON" in answer["error"]
    status, answer = call(server.http_url, "/v1/features/push", method="GET")
    assert status == 405
    # nothing bad reached the store
    got = online_http(server, ["user_profile:age_bucket"], {"user_id": [900301]})
    assert got["user_profile__age_bucket"]["statuses"] == ["NOT_FOUND"]


def test_http_push_needs_the_admin_token(served):
    server = served["server"]
    doc = {"view": "user_profile", "rows": user_rows([900401], [-5], ages=[30])}
    status, answer = call(server.http_url, "/v1/features/push", doc, token=None)
    assert status == 401 and "token" in answer["error"]
    status, answer = call(server.http_url, "/v1/features/push", doc, token="wrong")
    assert status == 403 and "token" in answer["error"]
    got = online_http(server, ["user_profile:age_bucket"], {"user_id": [900401]})
    assert got["user_profile__age_bucket"]["statuses"] == ["NOT_FOUND"]
    for f in (served["data"] / "users.push" / "user_profile").glob("*.parquet"):  # nothing was logged either
        assert 900401 not in pd.read_parquet(f)["user_id"].tolist()


# ------------------------------------------------------------------------------------------ gRPC


def push_request(view: str, rows: dict, timestamps=("event_timestamp",)) -> fpb.PushRequest:
    cols = {}
    for name, values in rows.items():
        if name in timestamps:
            us = [int(pd.Timestamp(v).value // 1000) for v in values]
            cols[name] = fpb.PushColumn(timestamp_micros=fpb.Int64List(values=us))
        elif all(isinstance(v, str) for v in values):
            cols[name] = fpb.PushColumn(string_values=fpb.StringList(values=values))
        elif all(isinstance(v, int) for v in values):
            cols[name] = fpb.PushColumn(int64_values=fpb.Int64List(values=values))
        else:
            cols[name] = fpb.PushColumn(double_values=fpb.DoubleList(values=values))
    return fpb.PushRequest(view=view, columns=cols)


def test_grpc_push_is_served_and_matches_the_training_set(served):
    server, stub, data = served["server"], served["stub"], served["data"]
    users = [900501, 900502]
    rows = user_rows(users, [-100, -200], ages=[19, 66], countries=["FR", "Côte d'Ivoire"], txns=[0, 5000])
    response = stub.Push(push_request("user_profile", rows), metadata=[("authorization", f"Bearer {TOKEN}")], timeout=30)
    assert (response.view, response.rows, response.entities) == ("user_profile", 2, 2) and response.log_file.endswith(".parquet")
    got = stub.GetOnlineFeatures(
        fpb.GetOnlineFeaturesRequest(
            feature_list=fpb.FeatureList(features=USER_COLS),
            entities={"user_id": fpb.EntityValues(int64_values=fpb.Int64List(values=users))},
        ),
        timeout=10,
    )
    ts = pd.Timestamp.now(tz="UTC")
    table = training(data, USER_COLS, pd.DataFrame({"user_id": users, "event_timestamp": [ts] * 2}))
    expected = user_expected(rows)
    for vector in got.features:
        values = list(getattr(vector, vector.WhichOneof("values")).values)
        assert list(vector.statuses) == [fpb.PRESENT] * 2, vector.name
        assert table.column(vector.name).to_pylist() == values, vector.name
        # float32 features travel as float32: compare them as float32
        want = expected[vector.name]
        if vector.WhichOneof("values") == "float_values":
            want = [float(np.float32(w)) for w in want]
        assert values == want, (vector.name, values, want)
    # and HTTP serves the same
    http = online_http(server, USER_COLS, {"user_id": users})
    for vector in got.features:
        assert http[vector.name]["values"] == list(getattr(vector, vector.WhichOneof("values")).values)


def test_grpc_push_errors(served):
    stub = served["stub"]
    good = user_rows([900601], [-5], ages=[30])
    auth = [("authorization", f"Bearer {TOKEN}")]

    def code_of(request, metadata=auth):
        with pytest.raises(grpc.RpcError) as info:
            stub.Push(request, metadata=metadata, timeout=30)
        return info.value.code(), info.value.details()

    code, msg = code_of(push_request("user_profile", good), metadata=None)
    assert code == grpc.StatusCode.UNAUTHENTICATED and "token" in msg
    code, msg = code_of(push_request("user_profile", good), metadata=[("authorization", "Bearer nope")])
    assert code == grpc.StatusCode.PERMISSION_DENIED
    cases = [
        (push_request("no_such_view", good), "no_such_view"),
        (push_request("user_profile", {k: v for k, v in good.items() if k != "age"}), "'age'"),
        (push_request("user_profile", {**good, "age": [30.5]}), "'age'"),
        (push_request("user_profile", {**good, "user_id": ["x"]}), "'user_id'"),
        (push_request("user_profile", {**good, "country": [7]}), "'country'"),
        (fpb.PushRequest(view="user_profile", columns={**push_request("user_profile", good).columns, "age": fpb.PushColumn()}), "'age'"),
        (fpb.PushRequest(columns=push_request("user_profile", good).columns), "view"),
    ]
    for request, needle in cases:
        code, msg = code_of(request)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and needle in msg, (needle, code, msg)
    got = online_http(served["server"], ["user_profile:age_bucket"], {"user_id": [900601]})
    assert got["user_profile__age_bucket"]["statuses"] == ["NOT_FOUND"]


# ------------------------------------------------------------------------------- materialization


def test_materialize_after_pushes_writes_the_pushed_rows(served):
    """`parity features materialize` into a fresh store, after pushes: what the server serves for
    the pushed entities is what the fresh store has."""
    server, d = served["server"], served["dir"]
    users = [900701, 900702]
    rows = user_rows(users, [-50, -70], ages=[22, 58], countries=["BR", "IN"])
    assert call(server.http_url, "/v1/features/push", {"view": "user_profile", "rows": rows})[0] == 200
    fresh = f"sqlite:///{d / f'fresh-{uuid.uuid4().hex[:8]}.db'}"
    proc = subprocess.run(
        [sys.executable, "-m", "parity", "features", "materialize", "--repo", str(REPO), "--online-store", fresh,
         "--views", "user_profile", "--state", str(d / f"marks-{uuid.uuid4().hex[:8]}.json")],
        env=served["env"], capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    from parity.features.online import open_online_store
    from parity.features.retrieval import FeatureServer

    with open_online_store(fresh) as store:
        got = FeatureServer(load_repo(served["data"]), store).get_online_features(USER_COLS, {"user_id": users})
    http = online_http(server, USER_COLS, {"user_id": users})
    for name in got.names:
        assert got.status_names(name) == ["PRESENT", "PRESENT"], name
        assert [v.item() for v in got.values[name]] == http[name]["values"], name
    assert http["user_profile__age_bucket"]["values"] == user_expected(rows)["user_profile__age_bucket"]


# ------------------------------------------------------------------------------- other servers


@pytest.mark.parametrize("transport", ["fast", "grpcio"])
def test_a_server_without_a_feature_repository_answers_404(transport, tmp_path):
    models = write_models(tmp_path / "models")
    doc = {"view": "user_profile", "rows": {"user_id": [1]}}
    args = ["--grpc-transport", transport, "--admin-token", TOKEN]
    with ServerProcess(models, *args) as server, grpc.insecure_channel(server.grpc_url) as ch:
        status, answer = call(server.http_url, "/v1/features/push", doc)
        assert status == 404 and "--feature-repository" in answer["error"]
        with pytest.raises(grpc.RpcError) as info:
            request = push_request("user_profile", {"user_id": [1]})
            fpb_grpc.FeatureServiceStub(ch).Push(request, metadata=[("authorization", f"Bearer {TOKEN}")], timeout=10)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND and "--feature-repository" in info.value.details()


def test_a_server_without_an_admin_token_refuses_pushes(example_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(example_data, data)
    env = dict(os.environ, PARITY_EXAMPLE_FEATURE_DATA=str(data))
    args = ["--feature-repository", str(REPO), "--online-store", f"sqlite:///{tmp_path / 'o.db'}"]
    with ServerProcess(write_models(tmp_path / "models"), *args, env=env) as server:
        status, answer = call(server.http_url, "/v1/features/push", {"view": "user_profile", "rows": user_rows([1], [-5], ages=[30])})
    assert status == 403 and "--admin-token" in answer["error"]
    assert not (data / "users.push").exists()


def test_a_store_that_is_down_is_503_and_the_rows_are_in_the_offline_log(example_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(example_data, data)
    env = dict(os.environ, PARITY_EXAMPLE_FEATURE_DATA=str(data))
    down = f"redis://127.0.0.1:{free_port()}/0?prefix=paritytest_down&timeout=0.5"  # nothing listens there
    args = ["--feature-repository", str(REPO), "--online-store", down, "--admin-token", TOKEN]
    rows = user_rows([900801], [-5], ages=[41])
    with ServerProcess(write_models(tmp_path / "models"), *args, env=env) as server, grpc.insecure_channel(server.grpc_url) as ch:
        status, answer = call(server.http_url, "/v1/features/push", {"view": "user_profile", "rows": rows})
        assert status == 503 and "unavailable" in answer["error"].lower(), answer
        with pytest.raises(grpc.RpcError) as info:
            fpb_grpc.FeatureServiceStub(ch).Push(push_request("user_profile", rows), metadata=[("authorization", f"Bearer {TOKEN}")], timeout=30)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    # logged before the online write: a training set (or a materialization) has the rows
    logged = sorted((data / "users.push" / "user_profile").glob("*.parquet"))
    assert len(logged) == 2
    ts = pd.Timestamp.now(tz="UTC")
    table = training(data, ["user_profile:age_bucket"], pd.DataFrame({"user_id": [900801], "event_timestamp": [ts]}))
    assert table.column("user_profile__age_bucket").to_pylist() == user_expected(rows)["user_profile__age_bucket"]
