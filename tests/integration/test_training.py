"""The training pipeline (`parity train`, parity.training.pipeline) end to end on small generated
data: the example feature repository's card transactions, a real point-in-time join, real PyTorch
training, a real ONNX export checked with ONNX Runtime, the registry and the tracked run on SQLite
(one run on PostgreSQL), the CLI, and a two-process torchrun (DDP on gloo)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from parity.cli import main as parity_main
from parity.data import get_version
from parity.errors import ConfigError
from parity.features.definitions import FeatureRepository
from parity.features.example import generate
from parity.features.offline import get_historical_features
from parity.registry import Registry
from parity.testing.postgres import temporary_database
from parity.tracking.api import run_json
from parity.training.config import load_config
from parity.training.export import ExportMismatch, compare_outputs
from parity.training.pipeline import evaluate, score_holdout, train

ROOT = Path(__file__).resolve().parents[2]
REPO = ROOT / "configs" / "features" / "example_repo.py"
EPOCHS = 6


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("train-data")
    generate(d, seed=11, n_users=60, n_merchants=12, n_transactions=1200)
    return d


@pytest.fixture(autouse=True)
def _example_data(data_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("PARITY_EXAMPLE_FEATURE_DATA", str(data_dir))
    monkeypatch.setenv("PARITY_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PARITY_DB", raising=False)
    monkeypatch.delenv("PARITY_ARTIFACTS", raising=False)


def config_dict(data_dir: Path, store: Path, **over) -> dict:
    cfg = {
        "features": {"repository": str(REPO), "service": "fraud_detection"},
        "labels": {"path": str(data_dir / "transactions.parquet"), "label": "is_fraud", "task": "binary"},
        "model": {"hidden": [16, 8], "dropout": 0.1},
        "training": {"epochs": EPOCHS, "batch_size": 64, "learning_rate": 0.003, "seed": 3, "holdout_fraction": 0.25},
        "export": {"opset": 17, "atol": 1e-5, "rtol": 1e-4},
        "registry": {"model": "fraud", "db": f"sqlite:///{store / 'meta.db'}", "artifacts": str(store / "artifacts"), "alias": "challenger"},
        "tracking": {"experiment": "fraud-test"},
    }
    for section, values in over.items():
        if isinstance(values, dict):
            cfg.setdefault(section, {}).update(values)
        else:
            cfg[section] = values
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("train-store")


@pytest.fixture(scope="module")
def first(data_dir, store, tmp_path_factory):
    """One training run shared by the checks below (the environment set by hand: module scope)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("PARITY_EXAMPLE_FEATURE_DATA", str(data_dir))
    mp.setenv("PARITY_HOME", str(tmp_path_factory.mktemp("home")))
    try:
        result = train(config_dict(data_dir, store), progress=False)
    finally:
        mp.undo()
    return result


def labelled_events(data_dir: Path) -> pa.Table:
    t = pq.read_table(data_dir / "transactions.parquet")
    return t.take(pc.sort_indices(t, [("event_timestamp", "ascending")]))


def test_registered_version_has_lineage_signature_profile_and_tags(first, store, data_dir):
    with Registry.open(f"sqlite:///{store / 'meta.db'}", store / "artifacts") as reg:
        mv = reg.resolve("fraud@challenger")
        assert (mv.name, mv.version) == (first.model_name, first.model_version)
        assert mv.lineage.run_id == first.run_id
        assert set(mv.lineage.datasets) == set(first.datasets.values())
        assert set(first.datasets) == {"labels", "features/user_profile", "features/merchant_profile"}
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=os.getcwd())
        assert mv.lineage.git_commit == (head.stdout.strip() if head.returncode == 0 else None)
        assert isinstance(mv.lineage.git_dirty, bool) or mv.lineage.git_commit is None
        if mv.lineage.git_dirty:
            assert mv.lineage.diff_hash and len(mv.lineage.diff_hash) == 64
        n = len(first.features)
        assert n == 13
        assert mv.signature == {
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, n]}],
            "outputs": [{"name": "score", "datatype": "FP32", "shape": [-1, 1]}],
        }
        assert mv.tags["feature_service"] == "fraud_detection"
        assert mv.tags["features"].split(",") == first.features
        assert mv.tags["label"] == "is_fraud" and mv.tags["training_run"] == first.run_id
        assert set(mv.metrics) == {"roc_auc", "accuracy", "log_loss", "positive_rate"}
        assert mv.metrics == pytest.approx(first.metrics, abs=0)
        # the reference profile: every feature of the service and the output, counts adding up
        prof = mv.profile
        assert prof["version"] == 1 and prof["feature_names"] == first.features and prof["output_names"] == ["score"]
        assert set(prof["features"]) == set(first.features) and set(prof["outputs"]) == {"score"}
        assert prof["rows"] == first.rows["train"] + first.rows["holdout"]
        for p in list(prof["features"].values()) + list(prof["outputs"].values()):
            total = sum(p["counts"]) if p["kind"] == "numeric" else sum(t["count"] for t in p["top"]) + p["other"]
            assert total + p["missing"] == prof["rows"]
        # profiled as the model sees them (the float32 input matrix): a boolean feature is 0.0 / 1.0
        risky = prof["features"]["transaction_features__risky_merchant"]
        assert risky["kind"] == "numeric" and risky["dtype"] == "float32" and risky["min"] == 0.0 and risky["max"] == 1.0
        assert prof["features"]["merchant_profile__risk_score"]["missing"] > 0  # NaN risk scores are counted as missing
        assert json.loads(Path(first.profile_path).read_text()) == prof
        # the stored ONNX file is the one the run wrote
        fetched = reg.fetch(first.ref, store / "fetched")
        assert (fetched / "model.onnx").read_bytes() == Path(first.onnx_path).read_bytes()
        history = [e.action for e in reg.history("fraud") if e.version == first.model_version]
        assert history[0] == "register" and ("alias.set" in history or "alias.move" in history)
    # the dataset versions exist and name the files read
    for role, vid in first.datasets.items():
        v = get_version(vid, db=f"sqlite:///{store / 'meta.db'}")
        assert v.id == vid and v.files
    assert [f.name for f in get_version(first.datasets["labels"], db=f"sqlite:///{store / 'meta.db'}").files] == ["transactions.parquet"]


def test_the_tracked_run_records_everything(first, store):
    info = run_json(f"sqlite:///{store / 'meta.db'}", first.run_id)
    assert info["status"] == "FINISHED" and info["experiment"] == "fraud-test"
    assert {d["role"]: d["id"] for d in info["datasets"]} == first.datasets
    assert info["params"]["training"]["epochs"] == EPOCHS and info["params"]["features"]["service"] == "fraud_detection"
    assert info["params"]["feature_columns"] == first.features
    for name in ("train/loss", "holdout/roc_auc", "holdout/log_loss", "holdout/accuracy"):
        assert [h["step"] for h in info["history"][name]][:EPOCHS] == list(range(EPOCHS))
    assert info["metrics"]["holdout/roc_auc"] == pytest.approx(first.metrics["roc_auc"])
    names = {a["name"] for a in info["artifacts"]}
    assert {"model.onnx", "profile.json", "holdout.parquet", "config.resolved.yaml", "result.json"} <= names
    assert info["tags"]["registered"] == first.ref and info["code"]["git_commit"] is not None


def test_onnx_reproduces_torch_and_takes_the_service_features(first, data_dir):
    hold = pq.read_table(first.holdout_path)
    x = np.stack([hold.column(f).to_numpy(zero_copy_only=False).astype(np.float32) for f in first.features], axis=1)
    proto = onnx.load(first.onnx_path)
    assert [i.name for i in proto.graph.input] == ["x"] and [o.name for o in proto.graph.output] == ["score"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    sess = ort.InferenceSession(first.onnx_path, providers=["CPUExecutionProvider"])
    score = hold.column("score").to_numpy()
    torch_score = hold.column("score_torch").to_numpy()
    for rows in (slice(0, 1), slice(0, 7), slice(None)):  # a dynamic batch dimension
        out = sess.run(None, {"x": x[rows]})[0]
        assert out.shape == (len(x[rows]), 1) and out.dtype == np.float32
        np.testing.assert_allclose(out[:, 0], score[rows], rtol=1e-6, atol=1e-7)
    assert np.all(np.abs(score - torch_score) <= 1e-5 + 1e-4 * np.abs(torch_score))
    assert first.export_check["max_abs_diff"] <= 1e-5 and first.export_check["rows"] == len(x)
    assert np.all((score >= 0) & (score <= 1))
    # another model (here: the same file) scored on the same holdout rows, for the promotion gate
    y_again, s_again = score_holdout(first.onnx_path, first.holdout_path)
    np.testing.assert_array_equal(y_again, hold.column("y_true").to_numpy())
    np.testing.assert_array_equal(s_again, score)
    # the model's inputs are the feature store's values for those rows, in the service's order
    repo = FeatureRepository.load(REPO)
    again = get_historical_features(repo, hold.select(["user_id", "merchant_id", "event_timestamp", "amount", "hour"]),
                                    "fraud_detection", output="arrow", full_feature_names=True)  # fmt: skip
    assert [f"{v}__{f}" for v, f in repo.resolve("fraud_detection")] == first.features
    for j, name in enumerate(first.features):
        expect = np.empty(len(x), dtype=np.float32)
        expect[:] = again.column(name).to_numpy(zero_copy_only=False)
        np.testing.assert_array_equal(x[:, j], expect)


def test_holdout_is_the_latest_events_and_missing_rows_are_dropped(first, data_dir):
    events = labelled_events(data_dir)
    ts = events.column("event_timestamp").cast(pa.int64()).to_numpy()
    n = len(ts)
    start = np.datetime64(first.holdout_start.rstrip("Z"), "us").astype(np.int64)
    assert first.rows["events"] == n
    assert first.rows["holdout_events"] == int((ts >= start).sum()) >= math.ceil(0.25 * n)
    assert first.rows["train_events"] == int((ts < start).sum())
    # the boundary is a quantile of time: the latest quarter of events (ties at the boundary included)
    assert int((ts > start).sum()) < math.ceil(0.25 * n) <= int((ts >= start).sum())
    hold = pq.read_table(first.holdout_path)
    hold_ts = hold.column("event_timestamp").cast(pa.int64()).to_numpy()
    assert hold_ts.min() >= start and np.all(np.diff(hold_ts) >= 0)
    assert np.datetime64(first.train_end.rstrip("Z"), "us").astype(np.int64) < start
    # rows with a missing feature (the service rejects missing entities) are dropped, and counted
    repo = FeatureRepository.load(REPO)
    full = get_historical_features(repo, events, "fraud_detection", output="arrow", full_feature_names=True)
    incomplete = np.zeros(n, dtype=bool)
    for name in first.features:
        incomplete |= np.asarray(full.column(name).is_null().to_numpy(zero_copy_only=False))
    assert incomplete.any()
    assert first.rows["dropped_missing_train"] == int((incomplete & (ts < start)).sum())
    assert first.rows["dropped_missing_holdout"] == int((incomplete & (ts >= start)).sum())
    assert first.rows["holdout"] == hold.num_rows == first.rows["holdout_events"] - first.rows["dropped_missing_holdout"]
    assert first.rows["train"] == first.rows["train_events"] - first.rows["dropped_missing_train"]
    # metrics: sane, and what the holdout file says
    y, s = hold.column("y_true").to_numpy(), hold.column("score").to_numpy()
    assert first.metrics == evaluate("binary", y, s)
    assert 0.0 <= first.metrics["roc_auc"] <= 1.0
    assert first.metrics["accuracy"] == pytest.approx(np.mean((s >= 0.5) == (y == 1)))
    assert 0 < first.metrics["log_loss"] < math.log(2)
    np.testing.assert_array_equal(first.holdout_labels, y)
    np.testing.assert_array_equal(first.holdout_scores, s)


def test_a_rerun_reproduces_the_metrics_exactly(first, data_dir, store):
    again = train(config_dict(data_dir, store), progress=False)
    assert again.model_version == first.model_version + 1
    assert again.metrics == first.metrics  # exactly, not approximately
    assert again.weights_sha256 == first.weights_sha256
    assert again.history == first.history
    assert again.datasets == first.datasets  # the same bytes: the same dataset versions
    np.testing.assert_array_equal(again.holdout_scores, first.holdout_scores)
    # another seed trains another model
    other = train(config_dict(data_dir, store, training={"seed": 4, "epochs": 2}), progress=False)
    assert other.weights_sha256 != first.weights_sha256


def test_cli_trains_and_prints_the_reference(first, data_dir, tmp_path):
    """`parity train --config` in a fresh process: exit 0, the reference and metrics printed, and
    the same metrics as the in-process run of the same config (reproducible across processes)."""
    store = tmp_path / "store"
    cfg = write_config(tmp_path / "train.yaml", config_dict(data_dir, store, output_dir=str(tmp_path / "out")))
    p = subprocess.run([sys.executable, "-m", "parity", "train", "--config", str(cfg)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "registered fraud/1 (@challenger) from run " in p.stdout
    assert f"roc_auc {first.metrics['roc_auc']:.4f}" in p.stdout and "log_loss" in p.stdout
    for step in range(1, 10):
        assert f"[{step}/9]" in p.stderr
    assert "epoch" in p.stderr  # the tqdm bar
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["metrics"] == first.metrics and result["weights_sha256"] == first.weights_sha256
    with Registry.open(f"sqlite:///{store / 'meta.db'}", store / "artifacts") as reg:
        assert [v.version for v in reg.versions("fraud")] == [1]


def test_the_example_config_loads():
    cfg = load_config(ROOT / "configs" / "training" / "fraud.yaml")
    assert cfg.features.repository == REPO and cfg.features.service == "fraud_detection"
    assert cfg.labels.path == Path(os.environ["PARITY_EXAMPLE_FEATURE_DATA"]) / "transactions.parquet"
    assert cfg.registry.alias == "challenger" and cfg.tracking.experiment == "fraud"


@pytest.mark.parametrize(
    "change, field",
    [
        ({"training": {"epochs": 0}}, "training.epochs"),
        ({"training": {"holdout_fraction": 1.5}}, "training.holdout_fraction"),
        ({"training": {"epoch": 3}}, "training.epoch"),
        ({"model": {"hidden": "big"}}, "model.hidden"),
        ({"labels": {"task": "ranking"}}, "labels.task"),
        ({"registry": {"model": "bad name!"}}, "registry.model"),
        ({"registry": {"alias": "123"}}, "registry.alias"),
        ({"features": {"repository": "/nonexistent/repo.py"}}, "features.repository"),
        ({"features": {"service": "no_such_service"}}, "features.service"),
        ({"labels": {"label": "no_such_column"}}, "labels.label"),
        ({"tracking": None}, "tracking"),
    ],
)
def test_bad_config_exits_2_naming_the_field(data_dir, tmp_path, capsys, change, field):
    cfg = config_dict(data_dir, tmp_path / "store")
    for section, values in change.items():
        if values is None:
            del cfg[section]
        else:
            cfg[section] = {**cfg[section], **values}
    path = write_config(tmp_path / "bad.yaml", cfg)
    assert parity_main(["train", "--config", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("parity train: ") and f"{path}: {field}" in err, err


def test_bad_config_with_nproc_exits_2_before_launching(data_dir, tmp_path, capsys):
    cfg = config_dict(data_dir, tmp_path / "store", labels={"label": "no_such_column"})
    path = write_config(tmp_path / "bad.yaml", cfg)
    assert parity_main(["train", "--config", str(path), "--nproc", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{path}: labels.label" in err and "torchrun" not in err
    assert not (tmp_path / "store" / "meta.db").exists()  # nothing was recorded


def test_bad_yaml_and_missing_file_exit_2(data_dir, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("features: [unclosed\n")
    assert parity_main(["train", "--config", str(bad)]) == 2
    assert "is not valid YAML: line" in capsys.readouterr().err
    assert parity_main(["train", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="registry: is required"):
        load_config({k: v for k, v in config_dict(data_dir, tmp_path).items() if k != "registry"})


def test_export_mismatch_is_refused():
    torch_out = np.array([[0.5], [0.25]], dtype=np.float32)
    assert compare_outputs(torch_out + 1e-7, torch_out, atol=1e-5, rtol=0).max_abs_diff > 0
    with pytest.raises(ExportMismatch, match="does not reproduce PyTorch"):
        compare_outputs(torch_out + 1e-3, torch_out, atol=1e-5, rtol=1e-4)
    with pytest.raises(ExportMismatch, match="NaN"):
        compare_outputs(np.array([[np.nan], [0.25]], dtype=np.float32), torch_out, atol=1, rtol=1)


def test_regression_label(data_dir, tmp_path):
    events = pq.read_table(data_dir / "transactions.parquet")
    amount = events.column("amount").to_numpy()
    labels = events.append_column("spend_next_week", pa.array(np.log1p(amount) * 2.0 + 1.0))
    pq.write_table(labels, tmp_path / "labels.parquet")
    cfg = config_dict(data_dir, tmp_path / "store", labels={"path": str(tmp_path / "labels.parquet"), "label": "spend_next_week", "task": "regression"},
                      training={"epochs": 3}, registry={"model": "spend", "alias": None})  # fmt: skip
    r = train(cfg, progress=False)
    assert set(r.metrics) == {"rmse", "mae"} and r.metrics["rmse"] > 0
    hold = pq.read_table(r.holdout_path)
    assert r.metrics == evaluate("regression", hold.column("y_true").to_numpy(), hold.column("score").to_numpy())
    with Registry.open(f"sqlite:///{tmp_path / 'store' / 'meta.db'}", tmp_path / "store" / "artifacts") as reg:
        mv = reg.resolve("spend")
        assert mv.aliases == () and mv.tags["task"] == "regression" and set(mv.metrics) == {"rmse", "mae"}


def test_postgresql_registry_and_tracking(data_dir, tmp_path):
    with temporary_database() as url:
        cfg = config_dict(data_dir, tmp_path / "store", training={"epochs": 2}, registry={"db": url})
        r = train(cfg, progress=False)
        with Registry.open(url, tmp_path / "store" / "artifacts") as reg:
            mv = reg.resolve("fraud@challenger")
            assert mv.version == r.model_version == 1
            assert mv.lineage.run_id == r.run_id and set(mv.lineage.datasets) == set(r.datasets.values())
            assert mv.profile["rows"] == r.rows["train"] + r.rows["holdout"]
            reg.verify("fraud/1")
        info = run_json(url, r.run_id)
        assert info["status"] == "FINISHED" and {d["id"] for d in info["datasets"]} == set(r.datasets.values())


def test_distributed_two_processes(data_dir, tmp_path):
    store = tmp_path / "store"
    out = tmp_path / "out"
    # dropout and a BatchNorm input layer: per-rank randomness and buffers, and still identical weights
    model = {"hidden": [16, 8], "dropout": 0.1, "input_norm": "batchnorm"}
    cfg = write_config(tmp_path / "ddp.yaml", config_dict(data_dir, store, training={"epochs": 3}, model=model, output_dir=str(out)))
    p = subprocess.run([sys.executable, "-m", "parity", "train", "--config", str(cfg), "--nproc", "2"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "registered fraud/1 (@challenger)" in p.stdout and "processes: 2" in p.stdout
    assert "(2 processes, DDP/gloo)" in p.stderr
    assert p.stdout.count("registered fraud/") == 1  # rank 0 alone reports (and registers)
    result = json.loads((out / "result.json").read_text())
    assert result["world_size"] == 2
    with Registry.open(f"sqlite:///{store / 'meta.db'}", store / "artifacts") as reg:
        versions = reg.versions("fraud")
        assert [v.version for v in versions] == [1]  # registered once
        mv = versions[0]
        assert mv.lineage.run_id == result["run_id"]
        assert 0 <= mv.metrics["roc_auc"] <= 1 and 0 < mv.metrics["log_loss"] < math.log(2)
        assert 0.5 <= mv.metrics["accuracy"] <= 1
    # both ranks ended with identical weights
    digests = {f.name: f.read_text().strip() for f in out.glob("weights.rank*.sha256")}
    assert sorted(digests) == ["weights.rank0.sha256", "weights.rank1.sha256"]
    assert len(set(digests.values())) == 1 and result["weights_sha256"] in digests.values()
    info = run_json(f"sqlite:///{store / 'meta.db'}", result["run_id"])
    assert info["status"] == "FINISHED" and info["params"]["world_size"] == 2
    assert [h["step"] for h in info["history"]["train/loss"]] == [0, 1, 2]
