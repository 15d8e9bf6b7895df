"""The feature store end to end: the example repository's data generated, materialized with
`parity features materialize` into SQLite and into the real Redis, then read from a served process
with POST /v1/features/online -- and the values match the in-process retrieval and the offline
point-in-time join at the same time."""

from __future__ import annotations

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

from parity.features.example import end_history_at, generate
from parity.testing.models import mlp_config, write_config, write_mlp_onnx
from parity.testing.server import ServerProcess, post_json

ROOT = Path(__file__).resolve().parents[2]
REPO = ROOT / "configs" / "features" / "example_repo.py"


def post(url: str, doc) -> tuple[int, dict]:
    return post_json(url, "/v1/features/online", doc)


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def served(request, tmp_path_factory):
    d = tmp_path_factory.mktemp("features")
    paths = generate(d / "data", seed=3)
    # the example's history ends a day ago: served "now", most values are within their TTL
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
    assert "user_profile:" in proc.stdout and "entities written" in proc.stdout
    models = d / "models"
    write_mlp_onnx(models / "mlp" / "1" / "model.onnx", [4, 8, 1])
    write_config(models / "mlp", mlp_config([4, 8, 1], max_batch_size=8))
    with ServerProcess(models, "--feature-repository", str(REPO), "--online-store", url, env=env) as server:
        yield server, url, d, env
    if request.param == "redis":
        with redis.Redis() as r:
            keys = list(r.scan_iter(match=f"{prefix}:*", count=1000))
            for i in range(0, len(keys), 500):
                r.delete(*keys[i : i + 500])


def test_online_features_over_http_match_the_training_set(served):
    server, url, d, env = served
    os.environ["PARITY_EXAMPLE_FEATURE_DATA"] = env["PARITY_EXAMPLE_FEATURE_DATA"]
    try:
        from parity.features.definitions import FeatureRepository
        from parity.features.offline import get_historical_features

        repo = FeatureRepository.load(REPO)
        users = pd.read_parquet(Path(env["PARITY_EXAMPLE_FEATURE_DATA"]) / "users.parquet")["user_id"].unique()[:6]
        merchants = pd.read_parquet(Path(env["PARITY_EXAMPLE_FEATURE_DATA"]) / "merchants.parquet")["merchant_id"].unique()[:6]
        amounts = [12.5, 0.0, 999.0, 3.25, 50.0, 7.0]
        hours = [3, 0, 23, 12, 18, 7]
        ts = pd.Timestamp.now(tz="UTC")  # online reads are "now": the training row at now
        entity_df = pd.DataFrame(
            {"user_id": users, "merchant_id": merchants, "event_timestamp": [ts] * 6, "amount": amounts, "hour": hours}
        )
        training = get_historical_features(repo, entity_df, "fraud_detection", output="arrow", full_feature_names=True)
    finally:
        del os.environ["PARITY_EXAMPLE_FEATURE_DATA"]
    status, doc = post(
        server.http_url,
        {
            "features": "fraud_detection",
            "entities": {"user_id": [int(u) for u in users], "merchant_id": [str(m) for m in merchants]},
            "request_values": {"amount": amounts, "hour": hours},
        },
    )
    assert status == 200, doc
    names = [f["name"] for f in doc["features"]]
    assert names == [c for c in training.column_names if "__" in c]
    # served at about the same "now" as the training row: the same values, the same nulls
    present = 0
    for f in doc["features"]:
        offline = training.column(f["name"]).to_pylist()
        for v, s, age, want in zip(f["values"], f["statuses"], f["ages_s"], offline):
            assert s in ("PRESENT", "NOT_FOUND", "EXPIRED")
            if s == "PRESENT":
                present += 1
                assert age is not None and age >= 0
                if isinstance(want, float) and np.isnan(want):
                    assert v is None or np.isnan(v)
                else:
                    assert v == want, (f["name"], v, want)
            else:
                assert v is None
            if want is None:
                assert s != "PRESENT" or f["name"].startswith("transaction_features"), (f["name"], s)
    assert present >= len(names) * 6 // 2, f"only {present} values present: the check compared too little"


def test_bad_feature_requests_are_400_and_name_the_problem(served):
    server = served[0]
    status, doc = post(server.http_url, {"features": "no_such_service", "entities": {"user_id": [1]}})
    assert status == 400 and "no_such_service" in doc["error"]
    status, doc = post(server.http_url, {"features": ["user_profile:nope"], "entities": {"user_id": [1]}})
    assert status == 400 and "nope" in doc["error"]
    status, doc = post(server.http_url, {"features": "fraud_detection", "entities": {"user_id": [1]}})
    assert status == 400 and "merchant_id" in doc["error"]
    status, doc = post(server.http_url, {"features": "fraud_detection"})
    assert status == 400 and "entities" in doc["error"]
    req = urllib.request.Request(f"http://{server.http_url}/v1/features/online", data=b"{not json", method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=10)
    with info.value:
        assert info.value.code == 400 and "JSON" in json.loads(info.value.read())["error"]
