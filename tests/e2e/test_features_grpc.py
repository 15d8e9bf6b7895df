"""`parity.v1.FeatureService/GetOnlineFeatures` end to end, on both gRPC transports (`[...-fast]`,
`[...-grpcio]`): the example repository's data generated, materialized with `parity features
materialize` into SQLite and into the real Redis, then read from a served process over gRPC -- and
the values are those of POST /v1/features/online for the same request and those of the offline
point-in-time join at the same time.  Plus the errors: bad requests are INVALID_ARGUMENT naming
the problem, a server without a feature repository says how to start one."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import uuid
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pytest
import redis

from parity._proto.parity.v1 import features_pb2 as fpb
from parity._proto.parity.v1 import features_pb2_grpc as fpb_grpc
from parity.features.example import end_history_at, generate
from parity.features.online.base import Status
from parity.features.retrieval import OnlineFeatures
from parity.serving.transport.grpc_service import _feature_vector
from parity.testing.models import mlp_config, write_config, write_mlp_onnx
from parity.testing.server import ServerProcess, post_json

ROOT = Path(__file__).resolve().parents[2]
REPO = ROOT / "configs" / "features" / "example_repo.py"
ROWS = 6
AMOUNTS = [12.5, 0.0, 999.0, 3.25, 50.0, 7.0]
HOURS = [3, 0, 23, 12, 18, 7]


def post(url: str, doc) -> tuple[int, dict]:
    return post_json(url, "/v1/features/online", doc)


def write_models(models: Path) -> Path:
    write_mlp_onnx(models / "mlp" / "1" / "model.onnx", [4, 8, 1])
    write_config(models / "mlp", mlp_config([4, 8, 1], max_batch_size=8))
    return models


@pytest.fixture(scope="module")
def materialized(tmp_path_factory):
    """The example's data (history ending a day ago), materialized into SQLite and into Redis (a
    unique key prefix), the entities to ask for and the training set for them at "now"."""
    d = tmp_path_factory.mktemp("features")
    paths = generate(d / "data", seed=3)
    end_history_at(paths, (pd.Timestamp.now(tz="UTC") - pd.Timedelta(days=1)).to_pydatetime())
    env = dict(os.environ, PARITY_EXAMPLE_FEATURE_DATA=str(d / "data"))
    prefix = f"paritytest_{uuid.uuid4().hex[:12]}"
    urls = {"sqlite": f"sqlite:///{d / 'online.db'}", "redis": f"redis://127.0.0.1:6379/0?prefix={prefix}&timeout=2"}
    try:
        for name, url in urls.items():
            proc = subprocess.run(
                [sys.executable, "-m", "parity", "features", "materialize", "--repo", str(REPO), "--online-store", url,
                 "--state", str(d / f"marks-{name}.json")],
                env=env, capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
            assert proc.returncode == 0, proc.stderr
            assert "entities written" in proc.stdout

        users = pd.read_parquet(d / "data" / "users.parquet")["user_id"].unique()[:ROWS]
        merchants = pd.read_parquet(d / "data" / "merchants.parquet")["merchant_id"].unique()[:ROWS]
        os.environ["PARITY_EXAMPLE_FEATURE_DATA"] = env["PARITY_EXAMPLE_FEATURE_DATA"]
        try:
            from parity.features.definitions import FeatureRepository
            from parity.features.offline import get_historical_features

            repo = FeatureRepository.load(REPO)
            ts = pd.Timestamp.now(tz="UTC")  # online reads are "now": the training row at now
            entity_df = pd.DataFrame(
                {"user_id": users, "merchant_id": merchants, "event_timestamp": [ts] * ROWS, "amount": AMOUNTS, "hour": HOURS}
            )
            training = get_historical_features(repo, entity_df, "fraud_detection", output="arrow", full_feature_names=True)
        finally:
            del os.environ["PARITY_EXAMPLE_FEATURE_DATA"]
        yield {
            "dir": d,
            "env": env,
            "urls": urls,
            "users": [int(u) for u in users],
            "merchants": [str(m) for m in merchants],
            "training": training,
        }
    finally:
        with redis.Redis() as r:
            keys = list(r.scan_iter(match=f"{prefix}:*", count=1000))
            for i in range(0, len(keys), 500):
                r.delete(*keys[i : i + 500])


@pytest.fixture(scope="module", params=["sqlite-fast", "sqlite-grpcio", "redis-fast", "redis-grpcio"])
def served(request, materialized):
    """A server on one online store and one gRPC transport, and a channel to it."""
    store, transport = request.param.split("-")
    m = materialized
    models = write_models(m["dir"] / f"models-{request.param}")
    args = ["--feature-repository", str(REPO), "--online-store", m["urls"][store], "--grpc-transport", transport]
    with ServerProcess(models, *args, env=m["env"]) as server, grpc.insecure_channel(server.grpc_url) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        yield server, fpb_grpc.FeatureServiceStub(channel), m


def fraud_request(m) -> fpb.GetOnlineFeaturesRequest:
    return fpb.GetOnlineFeaturesRequest(
        feature_service="fraud_detection",
        entities={
            "user_id": fpb.EntityValues(int64_values=fpb.Int64List(values=m["users"])),
            "merchant_id": fpb.EntityValues(string_values=fpb.StringList(values=m["merchants"])),
        },
        request_values={
            "amount": fpb.RequestValues(double_values=fpb.DoubleList(values=AMOUNTS)),
            "hour": fpb.RequestValues(int64_values=fpb.Int64List(values=HOURS)),
        },
    )


def columns(vector: fpb.FeatureVector) -> tuple[list, list[str], list[int]]:
    """(values with None where null, status names, ages in ns) of one FeatureVector."""
    which = vector.WhichOneof("values")
    assert which is not None, vector.name
    values = list(getattr(vector, which).values)
    n = len(values)
    assert len(vector.nulls) == len(vector.statuses) == len(vector.ages_ns) == n, vector.name
    return (
        [None if null else v for v, null in zip(values, vector.nulls)],
        [fpb.FeatureStatus.Name(s) for s in vector.statuses],
        list(vector.ages_ns),
    )


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


_DTYPE_FIELDS = {
    "int32": "int32_values",
    "int64": "int64_values",
    "float32": "float_values",
    "float64": "double_values",
    "bool": "bool_values",
}


def test_online_features_over_grpc_match_http_and_the_training_set(served):
    server, stub, m = served
    response = stub.GetOnlineFeatures(fraud_request(m), timeout=10)
    status, doc = post(
        server.http_url,
        {
            "features": "fraud_detection",
            "entities": {"user_id": m["users"], "merchant_id": m["merchants"]},
            "request_values": {"amount": AMOUNTS, "hour": HOURS},
        },
    )
    assert status == 200, doc
    training = m["training"]
    names = [v.name for v in response.features]
    assert names == [f["name"] for f in doc["features"]] == [c for c in training.column_names if "__" in c]

    from parity.features.definitions import FeatureRepository

    os.environ["PARITY_EXAMPLE_FEATURE_DATA"] = m["env"]["PARITY_EXAMPLE_FEATURE_DATA"]
    try:
        repo = FeatureRepository.load(REPO)
    finally:
        del os.environ["PARITY_EXAMPLE_FEATURE_DATA"]
    dtypes = {f"{v}__{f.name}": f.dtype for v, view in {**repo.views, **repo.on_demand}.items() for f in view.schema}

    present = 0
    for vector, http in zip(response.features, doc["features"]):
        name = vector.name
        assert vector.WhichOneof("values") == _DTYPE_FIELDS[dtypes[name]], name  # typed by the feature's dtype
        values, statuses, ages = columns(vector)
        assert len(values) == ROWS
        # the same answer as HTTP: values, nulls and statuses; ages a moment later
        assert statuses == http["statuses"], name
        assert all(same(g, h) for g, h in zip(values, http["values"])), (name, values, http["values"])
        for age, http_age in zip(ages, http["ages_s"]):
            assert (age == -1) == (http_age is None), name
            if age != -1:
                assert 0 <= age and abs(age / 1e9 - http_age) < 60, name
        # and the training set's
        for v, s, age, want in zip(values, statuses, ages, training.column(name).to_pylist()):
            if s == "PRESENT":
                present += 1
                assert age >= 0
                if isinstance(want, float) and math.isnan(want):
                    assert v is None or math.isnan(v)
                else:
                    assert v == want, (name, v, want)
            else:
                assert v is None, (name, s, v)
            if want is None:
                assert s != "PRESENT" or name.startswith("transaction_features"), (name, s)
    assert present >= len(names) * ROWS // 2, f"only {present} values present: the check compared too little"


def test_feature_list_over_grpc_matches_http(served):
    server, stub, m = served
    refs = ["merchant_profile:volume_log", "user_profile:age_bucket", "merchant_profile:risk_score"]
    users = [*m["users"][:3], -12345]  # an entity that does not exist: NOT_FOUND, null, age -1
    response = stub.GetOnlineFeatures(
        fpb.GetOnlineFeaturesRequest(
            feature_list=fpb.FeatureList(features=refs),
            entities={
                "user_id": fpb.EntityValues(int64_values=fpb.Int64List(values=users)),
                "merchant_id": fpb.EntityValues(string_values=fpb.StringList(values=m["merchants"][:4])),
            },
        ),
        timeout=10,
    )
    status, doc = post(server.http_url, {"features": refs, "entities": {"user_id": users, "merchant_id": m["merchants"][:4]}})
    assert status == 200, doc
    assert [v.name for v in response.features] == [
        "merchant_profile__volume_log",
        "user_profile__age_bucket",
        "merchant_profile__risk_score",
    ]
    for vector, http in zip(response.features, doc["features"]):
        values, statuses, _ = columns(vector)
        assert statuses == http["statuses"] and all(same(g, h) for g, h in zip(values, http["values"])), vector.name
    age_bucket = response.features[1]
    assert age_bucket.WhichOneof("values") == "int32_values"
    assert age_bucket.statuses[3] == fpb.NOT_FOUND and age_bucket.nulls[3] and age_bucket.ages_ns[3] == -1
    assert age_bucket.int32_values.values[3] == 0  # the placeholder under a null


def _code_and_message(stub, request) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        stub.GetOnlineFeatures(request, timeout=10)
    return info.value.code(), info.value.details()


def test_bad_feature_requests_are_invalid_argument_and_name_the_problem(served):
    _, stub, m = served
    user = {"user_id": fpb.EntityValues(int64_values=fpb.Int64List(values=[1]))}
    R = fpb.GetOnlineFeaturesRequest
    cases = [
        (R(feature_service="no_such_service", entities=user), "no_such_service"),
        (R(feature_list=fpb.FeatureList(features=["user_profile:nope"]), entities=user), "nope"),
        (R(feature_list=fpb.FeatureList(features=["no_view:x"]), entities=user), "no_view"),
        (R(feature_service="fraud_detection", entities=user), "merchant_id"),
        (R(feature_service="fraud_detection"), "entities"),
        (R(entities=user), "feature_service"),
        (
            R(feature_list=fpb.FeatureList(features=["user_profile:age_bucket"]), entities={"user_id": fpb.EntityValues()}),
            "user_id",
        ),
        (  # a string key for an int64 join key
            R(
                feature_list=fpb.FeatureList(features=["user_profile:age_bucket"]),
                entities={"user_id": fpb.EntityValues(string_values=fpb.StringList(values=["1"]))},
            ),
            "user_id",
        ),
        (  # the on-demand view's request values missing, then of the wrong type
            R(feature_list=fpb.FeatureList(features=["transaction_features:amount_log"]), entities=fraud_request(m).entities),
            "amount",
        ),
        (
            R(
                feature_list=fpb.FeatureList(features=["transaction_features:hour_bucket"]),
                entities=fraud_request(m).entities,
                request_values={
                    "amount": fpb.RequestValues(double_values=fpb.DoubleList(values=AMOUNTS)),
                    "hour": fpb.RequestValues(double_values=fpb.DoubleList(values=[0.5] * ROWS)),
                },
            ),
            "hour",
        ),
    ]
    for request, needle in cases:
        code, message = _code_and_message(stub, request)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (needle, code, message)
        assert needle in message, (needle, message)


@pytest.mark.parametrize("transport", ["fast", "grpcio"])
def test_a_server_without_a_feature_repository_says_how_to_get_one(transport, tmp_path):
    request = fpb.GetOnlineFeaturesRequest(
        feature_service="fraud_detection", entities={"user_id": fpb.EntityValues(int64_values=fpb.Int64List(values=[1]))}
    )
    models = write_models(tmp_path / "models")
    with ServerProcess(models, "--grpc-transport", transport) as server, grpc.insecure_channel(server.grpc_url) as channel:
        code, message = _code_and_message(fpb_grpc.FeatureServiceStub(channel), request)
    assert code == grpc.StatusCode.NOT_FOUND
    assert "--feature-repository" in message


def test_feature_vectors_encode_every_dtype_with_placeholders_under_nulls():
    cols = {
        "v__b": np.array([True, True, False]),
        "v__i32": np.array([1, 7, -3], dtype=np.int32),
        "v__i64": np.array([2**40, 5, -1], dtype=np.int64),
        "v__f32": np.array([0.5, np.nan, 1e-3], dtype=np.float32),
        "v__f64": np.array([np.nan, 2.5, -0.0]),
        "v__s": np.array(["a", None, "日本"], dtype=object),
    }
    nulls = np.array([False, True, False])
    got = OnlineFeatures(
        list(cols),
        cols,
        dict.fromkeys(cols, nulls),
        dict.fromkeys(cols, np.array([Status.PRESENT, Status.NOT_FOUND, Status.EXPIRED], dtype=np.int8)),
        dict.fromkeys(cols, np.array([10, -1, 99], dtype=np.int64)),
        3,
    )
    want = {
        "v__b": ("bool_values", [True, False, False]),
        "v__i32": ("int32_values", [1, 0, -3]),
        "v__i64": ("int64_values", [2**40, 0, -1]),
        "v__f32": ("float_values", [0.5, 0.0, float(np.float32(1e-3))]),
        "v__f64": ("double_values", [math.nan, 0.0, -0.0]),
        "v__s": ("string_values", ["a", "", "日本"]),
    }
    for name, (field, values) in want.items():
        # through the wire format, as a client sees it
        vector = fpb.FeatureVector.FromString(_feature_vector(got, name).SerializeToString())
        assert vector.name == name and vector.WhichOneof("values") == field
        assert all(same(a, b) for a, b in zip(getattr(vector, field).values, values)), (name, list(getattr(vector, field).values))
        assert len(getattr(vector, field).values) == 3
        assert list(vector.nulls) == [False, True, False]
        assert list(vector.statuses) == [fpb.PRESENT, fpb.NOT_FOUND, fpb.EXPIRED]
        assert list(vector.ages_ns) == [10, -1, 99]
    empty = OnlineFeatures(["v__x"], {"v__x": np.zeros(0, np.int32)}, {"v__x": np.zeros(0, bool)},
                           {"v__x": np.zeros(0, np.int8)}, {"v__x": np.zeros(0, np.int64)}, 0)  # fmt: skip
    vector = fpb.FeatureVector.FromString(_feature_vector(empty, "v__x").SerializeToString())
    assert vector.WhichOneof("values") == "int32_values"  # the dtype is told even for zero rows
