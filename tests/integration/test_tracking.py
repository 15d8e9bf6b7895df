"""Experiment tracking on a real SQLite file and a real PostgreSQL server: what a run records
(params, metrics by step, system metrics, code and dataset versions, artifacts, tags, status), the
JSON views, the CLI tables, the standalone HTTP server, and the export to a real (file-based)
MLflow tracking store."""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from parity.cli import main
from parity.data import snapshot
from parity.errors import InvalidInput, NotFound
from parity.sql import Database
from parity.testing.postgres import temporary_database
from parity.tracking import export_to_mlflow, set_run_status, start_run
from parity.tracking.api import compare_json, run_json, runs_json
from parity.tracking.artifacts import object_path
from parity.tracking.http import serve_in_thread
from parity.tracking.system import GpuReader


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def url(request, tmp_path_factory):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('tracking') / 'meta.db'}"
    else:
        with temporary_database() as u:
            yield u


@pytest.fixture
def db(url):
    with Database.open(url) as database:
        yield database


@pytest.fixture
def store(tmp_path):
    return tmp_path / "artifacts"


def exp() -> str:
    return f"exp-{uuid.uuid4().hex[:8]}"


def git(cwd: Path, *args: str) -> bytes:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "init.defaultBranch=main", *args],
        cwd=cwd, check=True, capture_output=True,
    ).stdout  # fmt: skip


@pytest.fixture
def repo(tmp_path):
    r = tmp_path / "repo"
    r.mkdir()
    git(r, "init", "-q")
    (r / "train.py").write_text("print('train')\n")
    git(r, "add", "train.py")
    git(r, "commit", "-q", "-m", "first")
    return r


def test_a_run_records_params_metrics_tags_datasets_artifacts_and_code(db, store, tmp_path, repo):
    data = tmp_path / "data"
    data.mkdir()
    (data / "rows.csv").write_text("a,b\n1,2\n")
    version = snapshot(data, db=db)
    (tmp_path / "model.onnx").write_bytes(b"\x08\x01onnx-bytes")
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "roc.txt").write_text("roc")
    (tmp_path / "plots" / "deep").mkdir()
    (tmp_path / "plots" / "deep" / "pr.txt").write_text("pr")
    (repo / "train.py").write_text("print('train, changed')\n")  # a dirty tree
    e = exp()
    with start_run(
        e, {"lr": 0.01, "layers": [64, 32], "optimizer": "adam", "seed": 7, "early_stop": None}, db=db, tags={"team": "risk"},
        name="baseline", artifacts=store, code_dir=repo, save_diff=True, system_metrics=False,
    ) as run:  # fmt: skip
        assert len(run.id) == 32 and int(run.id, 16) >= 0 and run.status == "RUNNING"
        assert run_json(db, run.id)["status"] == "RUNNING"
        for loss in (0.9, 0.5, 0.3):
            run.log_metric("loss", loss)  # steps 0, 1, 2
        run.log_metrics({"auc": 0.81, "val/loss": 0.4}, step=10)
        run.log_metric("auc", 0.85, step=20)
        run.log_metric("auc", 0.86, step=20)  # the same step again: replaced
        run.log_metric("diverged", math.nan, step=1)
        run.log_metric("huge", math.inf, step=1)
        run.log_param("batch_size", 256)
        run.log_param("lr", 0.01)  # the same value again is fine
        run.set_tags({"stage": "dev", "note": "first try"})
        assert run.log_dataset(version.id[:8], role="train") == version.id
        [model] = run.log_artifact(tmp_path / "model.onnx")
        plots = run.log_artifact(tmp_path / "plots")
    assert run.status == "FINISHED"
    r = run_json(db, run.id)
    assert r["experiment"] == e and r["name"] == "baseline" and r["status"] == "FINISHED" and r["ended_at"] and r["error"] is None
    assert r["params"] == {"lr": 0.01, "layers": [64, 32], "optimizer": "adam", "seed": 7, "early_stop": None, "batch_size": 256}
    assert r["tags"] == {"team": "risk", "stage": "dev", "note": "first try"}
    assert r["metrics"] == {"loss": 0.3, "auc": 0.86, "val/loss": 0.4, "diverged": "NaN", "huge": "Infinity"}
    assert [(p["step"], p["value"]) for p in r["history"]["loss"]] == [(0, 0.9), (1, 0.5), (2, 0.3)]
    assert [(p["step"], p["value"]) for p in r["history"]["auc"]] == [(10, 0.81), (20, 0.86)]
    assert r["metric_summary"]["loss"] == {
        **r["metric_summary"]["loss"],
        "last": 0.3,
        "step": 2,
        "min": 0.3,
        "max": 0.9,
        "count": 3,
    }
    assert all(p["timestamp"].endswith("Z") for p in r["history"]["loss"])
    assert r["datasets"] == [{"id": version.id, "role": "train"}]
    # the code version: commit, dirty, and the sha256 of `git diff HEAD`
    diff = git(repo, "diff", "HEAD", "--binary")
    assert r["code"] == {
        "git_commit": git(repo, "rev-parse", "HEAD").decode().strip(),
        "git_dirty": True,
        "git_diff_sha256": hashlib.sha256(diff).hexdigest(),
    }
    assert r["environment"]["git_branch"] == "main" and r["environment"]["pid"] == os.getpid()
    # artifacts: content-addressed copies, recorded with their sha256
    names = {a["name"]: a for a in r["artifacts"]}
    assert set(names) == {"model.onnx", "plots/roc.txt", "plots/deep/pr.txt", "code/git.diff"}
    assert [p.name for p in plots] == ["plots/deep/pr.txt", "plots/roc.txt"]
    digest = hashlib.sha256(b"\x08\x01onnx-bytes").hexdigest()
    assert names["model.onnx"]["sha256"] == digest == model.sha256 and names["model.onnx"]["size"] == 12
    stored = object_path(store, digest)
    assert stored == Path(store) / "sha256" / digest[:2] / digest and stored.read_bytes() == b"\x08\x01onnx-bytes"
    assert not stored.stat().st_mode & stat.S_IWUSR  # read-only
    assert object_path(store, names["code/git.diff"]["sha256"]).read_bytes() == diff
    json.dumps(r, allow_nan=False)  # strictly valid JSON


def test_a_clean_tree_and_no_git_at_all(db, store, tmp_path, repo):
    with start_run(exp(), db=db, artifacts=store, code_dir=repo, system_metrics=False) as clean:
        pass
    code = run_json(db, clean.id)["code"]
    assert code["git_dirty"] is False and code["git_diff_sha256"] == hashlib.sha256(b"").hexdigest()
    (tmp_path / "plain").mkdir()
    with start_run(exp(), db=db, artifacts=store, code_dir=tmp_path / "plain", system_metrics=False) as nogit:
        pass
    assert run_json(db, nogit.id)["code"] == {"git_commit": None, "git_dirty": None, "git_diff_sha256": None}


def test_the_same_artifact_is_stored_once(db, store, tmp_path):
    (tmp_path / "a.bin").write_bytes(b"same")
    (tmp_path / "b.bin").write_bytes(b"same")
    with start_run(exp(), db=db, artifacts=store, system_metrics=False) as run:
        run.log_artifact(tmp_path / "a.bin")
        run.log_artifact(tmp_path / "b.bin", name="copies/b.bin")
    objects = [p for p in (store / "sha256").rglob("*") if p.is_file()]
    assert len(objects) == 1 and objects[0].read_bytes() == b"same"
    assert not list((store / "tmp").iterdir())
    assert [a["name"] for a in run_json(db, run.id)["artifacts"]] == ["a.bin", "copies/b.bin"]


def test_status_failed_killed_and_ended_from_outside(db, store):
    with pytest.raises(ZeroDivisionError):
        with start_run(exp(), db=db, artifacts=store, system_metrics=False) as failed:
            failed.log_metric("loss", 1.0)
            1 / 0  # noqa: B018
    r = run_json(db, failed.id)
    assert r["status"] == "FAILED" and r["error"].startswith("ZeroDivisionError") and r["metrics"] == {"loss": 1.0}
    with pytest.raises(KeyboardInterrupt):
        with start_run(exp(), db=db, artifacts=store, system_metrics=False) as killed:
            raise KeyboardInterrupt
    assert run_json(db, killed.id)["status"] == "KILLED"
    with pytest.raises(InvalidInput, match="has ended"):
        killed.log_metric("loss", 1.0)
    killed.end()  # ending again does nothing
    orphan = start_run(exp(), db=db, artifacts=store, system_metrics=False)  # its process "died"
    assert set_run_status(orphan.id[:10], "KILLED", db=db, reason="process gone") == orphan.id
    assert run_json(db, orphan.id)["status"] == "KILLED" and run_json(db, orphan.id)["error"] == "process gone"
    with pytest.raises(InvalidInput, match="already ended"):
        set_run_status(orphan.id, "FAILED", db=db)
    orphan.end()  # the run object finds it ended and leaves it so
    assert run_json(db, orphan.id)["status"] == "KILLED"


def test_system_metrics_are_sampled_in_the_background(db, store):
    with start_run(exp(), db=db, artifacts=store, system_metrics_interval=0.02) as run:
        sampler = run._sampler._thread
        assert sampler.is_alive() and sampler.daemon and sampler is not threading.current_thread()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait for background samples (no timing is asserted)
            hist = run_json(db, run.id)["history"]
            if len(hist.get("system/wall_time_s", [])) >= 3:
                break
            time.sleep(0.02)
    assert not sampler.is_alive()
    r = run_json(db, run.id)
    wall = [p["value"] for p in r["history"]["system/wall_time_s"]]
    assert len(wall) >= 4 and wall == sorted(wall)  # three in the background, one at the end
    assert [p["step"] for p in r["history"]["system/wall_time_s"]] == list(range(len(wall)))
    for name in ("system/cpu_percent", "system/host_cpu_percent", "system/host_memory_percent"):
        assert r["metric_summary"][name]["min"] >= 0
    assert r["metric_summary"]["system/rss_mb"]["min"] > 1
    assert r["metrics"] == {}  # system metrics are not the run's own metrics
    gpu = GpuReader.detect()  # where a GPU exists its utilisation and memory are recorded
    gpu_metrics = [k for k in r["metric_summary"] if k.startswith("system/gpu")]
    if gpu is None:
        assert gpu_metrics == [] and r["environment"]["gpus"] == []
    else:
        assert "system/gpu0/utilization_percent" in gpu_metrics and "system/gpu0/memory_used_mb" in gpu_metrics


def test_concurrent_writers_lose_nothing(url, store):
    e = exp()
    errors = []

    def one_run(seed: int):
        try:
            with Database.open(url) as own:
                with start_run(e, {"seed": seed}, db=own, artifacts=store, system_metrics_interval=0.01) as run:
                    for step in range(30):
                        run.log_metrics({"loss": 1.0 / (step + 1), "seed": seed}, step=step)
        except Exception as ex:  # noqa: BLE001
            errors.append(ex)

    threads = [threading.Thread(target=one_run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    runs = runs_json(url, experiment=e)["runs"]
    assert sorted(r["params"]["seed"] for r in runs) == [0, 1, 2] and len({r["id"] for r in runs}) == 3
    for r in runs:
        full = run_json(url, r["id"])
        assert len(full["history"]["loss"]) == 30 and full["metrics"] == {"loss": 1 / 30, "seed": r["params"]["seed"]}


def test_names_and_values_are_validated(db, store, tmp_path):
    for bad in ("", "has space", "../x", "a" * 129, "-dash-first"):
        with pytest.raises(InvalidInput, match="experiment name"):
            start_run(bad, db=db, artifacts=store, system_metrics=False)
    with pytest.raises(InvalidInput, match="parameter name"):
        start_run(exp(), {"bad//key": 1}, db=db, artifacts=store, system_metrics=False)
    with start_run(exp(), {"lr": 0.1}, db=db, artifacts=store, system_metrics=False) as run:
        with pytest.raises(InvalidInput, match="cannot change"):
            run.log_param("lr", 0.2)
        with pytest.raises(InvalidInput, match="reserved for system metrics"):
            run.log_metric("system/cpu_percent", 1.0)
        with pytest.raises(InvalidInput, match="metric name"):
            run.log_metric("tab\there", 1.0)
        with pytest.raises(InvalidInput, match="must be a number"):
            run.log_metric("loss", "low")
        with pytest.raises(InvalidInput, match="step must be"):
            run.log_metric("loss", 1.0, step=-1)
        with pytest.raises(InvalidInput, match="step must be"):
            run.log_metric("loss", 1.0, step=1.5)
        (tmp_path / "f").write_text("x")
        for bad in ("../escape", "/abs", "a/./b", "a//b", ""):
            with pytest.raises(InvalidInput, match="artifact name"):
                run.log_artifact(tmp_path / "f", name=bad)
        with pytest.raises(InvalidInput, match="no such file"):
            run.log_artifact(tmp_path / "missing")
        with pytest.raises(NotFound, match="no dataset version"):
            run.log_dataset("ab" * 32)
    assert run_json(db, run.id)["status"] == "FINISHED"  # errors the caller caught do not fail a run
    with pytest.raises(NotFound, match="parity runs list"):
        run_json(db, uuid.uuid4().hex)
    with pytest.raises(InvalidInput, match="not a run id"):
        run_json(db, "zz-not-hex")
    with pytest.raises(InvalidInput, match="at least two"):
        compare_json(db, [run.id])


def test_json_views_list_filter_and_compare(db, store):
    e = exp()
    ids = []
    for lr, final in ((0.1, 0.30), (0.01, 0.25)):
        with start_run(e, {"lr": lr, "epochs": 3}, db=db, artifacts=store, system_metrics=False, tags={"sweep": "1"}) as run:
            run.log_metric("loss", 1.0, step=0)
            run.log_metric("loss", final, step=1)
            run.log_metric("acc", 0.9, step=1)
        ids.append(run.id)
    listed = runs_json(db, experiment=e)
    assert [r["id"] for r in listed["runs"]] == ids[::-1]  # newest first
    assert listed["runs"][0]["metrics"] == {"loss": 0.25, "acc": 0.9} and listed["runs"][0]["params"] == {"lr": 0.01, "epochs": 3}
    assert runs_json(db, experiment=e, status="FAILED") == {"runs": []}
    assert len(runs_json(db, experiment=e, limit=1)["runs"]) == 1
    other = runs_json(db)["runs"]
    assert set(ids) <= {r["id"] for r in other}
    body = compare_json(db, [ids[0], ids[1][:8]])
    assert [r["id"] for r in body["runs"]] == ids
    assert body["params"] == [
        {"name": "epochs", "values": [3, 3], "differs": False},
        {"name": "lr", "values": [0.1, 0.01], "differs": True},
    ]
    assert body["metrics"] == [
        {"name": "acc", "values": [0.9, 0.9], "differs": False},
        {"name": "loss", "values": [0.3, 0.25], "differs": True},
    ]
    json.dumps(body, allow_nan=False)


def test_cli_tables(url, store, capsys):
    e = exp()
    ids = []
    for lr in (0.5, 0.05):
        with start_run(e, {"lr": lr, "depth": 4}, db=url, artifacts=store, system_metrics=False, name=f"lr-{lr}") as run:
            run.log_metric("loss", lr / 2, step=5)
        ids.append(run.id)
    assert main(["runs", "list", "--experiment", e, "--db", url]) == 0
    out = capsys.readouterr().out
    assert ids[0][:12] in out and ids[1][:12] in out and "FINISHED" in out and "lr=0.05" in out
    assert main(["runs", "show", ids[0][:8], "--db", url]) == 0
    out = capsys.readouterr().out
    assert f"run {ids[0]} (lr-0.5)" in out and "loss" in out and "0.25" in out and "depth" in out
    assert main(["runs", "show", ids[0], "--db", url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["history"]["loss"][0]["step"] == 5
    assert main(["runs", "compare", ids[0], ids[1], "--db", url]) == 0
    lines = capsys.readouterr().out.splitlines()
    marked = {line.split()[1] for line in lines if line.startswith("*")}
    assert {"lr", "loss", "name"} <= marked and "depth" not in marked and "experiment" not in marked
    assert main(["runs", "compare", ids[0], ids[1], "--db", url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"][1] == {"name": "lr", "values": [0.5, 0.05], "differs": True}
    running = start_run(e, db=url, artifacts=store, system_metrics=False)
    assert main(["runs", "end", running.id, "--db", url]) == 0
    assert capsys.readouterr().out == f"run {running.id}: KILLED\n"
    assert main(["runs", "list", "--experiment", e, "--status", "killed", "--db", url, "--json"]) == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)["runs"]] == [running.id]
    running.end()
    assert main(["runs", "end", running.id, "--db", url]) == 1
    assert "already ended" in capsys.readouterr().err
    assert main(["runs", "show", "0123456789abcdef0123456789abcdef", "--db", url]) == 1
    assert "no run" in capsys.readouterr().err


def _get(base: str, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(base + path, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        with e:
            return e.code, json.loads(e.read())


def test_http_server(url, store):
    e = exp()
    ids = []
    for lr in (0.1, 0.2):
        with start_run(e, {"lr": lr}, db=url, artifacts=store, system_metrics=False) as run:
            run.log_metric("loss", lr)
        ids.append(run.id)
    server, thread = serve_in_thread(url)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        status, body = _get(base, f"/v1/runs?experiment={e}")
        assert status == 200 and [r["id"] for r in body["runs"]] == ids[::-1]
        status, body = _get(base, f"/v1/runs/{ids[0]}")
        assert status == 200 and body["params"] == {"lr": 0.1} and body["history"]["loss"][0]["value"] == 0.1
        assert body == run_json(url, ids[0]) | {"duration_s": body["duration_s"]}
        status, body = _get(base, f"/v1/runs/compare?ids={ids[0]},{ids[1]}")
        assert status == 200 and body["params"] == [{"name": "lr", "values": [0.1, 0.2], "differs": True}]
        assert _get(base, f"/v1/runs/{uuid.uuid4().hex}")[0] == 404
        status, body = _get(base, "/v1/runs/not-an-id")
        assert status == 400 and "not a run id" in body["error"]
        assert _get(base, "/v1/runs/compare?ids=" + ids[0])[0] == 400
        assert _get(base, "/v2/else")[0] == 404
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_parity_runs_serve_command(tmp_path):
    url = f"sqlite:///{tmp_path / 'serve.db'}"
    with start_run("served", {"k": "v"}, db=url, artifacts=tmp_path / "a", system_metrics=False) as run:
        run.log_metric("m", 1.5)
    proc = subprocess.Popen(
        [sys.executable, "-m", "parity", "runs", "serve", "--port", "0", "--db", url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = proc.stdout.readline()
        assert "serving runs on http://127.0.0.1:" in line, line + proc.stderr.read()
        base = line.split()[3].rsplit("/v1/runs", 1)[0]
        status, body = _get(base, "/v1/runs")
        assert status == 200 and body["runs"][0]["id"] == run.id and body["runs"][0]["metrics"] == {"m": 1.5}
    finally:
        proc.terminate()
        proc.wait(30)
        proc.stdout.close()
        proc.stderr.close()


def test_export_to_mlflow(db, store, tmp_path, monkeypatch, repo):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 wants it for its file store
    data = tmp_path / "d"
    data.mkdir()
    (data / "x.csv").write_text("a\n1\n")
    version = snapshot(data, db=db)
    (tmp_path / "model.onnx").write_bytes(b"model")
    e = exp()
    with start_run(e, {"lr": 0.01, "layers": [8, 4], "name": "mlp"}, db=db, artifacts=store, code_dir=repo, tags={"team": "risk"},
                   name="exported", system_metrics_interval=0.01) as run:  # fmt: skip
        for step, loss in enumerate((0.9, 0.4, math.nan)):
            run.log_metric("loss", loss, step=step)
        run.log_dataset(version)
        run.log_artifact(tmp_path / "model.onnx", name="model/model.onnx")
    uri = (tmp_path / "mlruns").as_uri()
    mid = export_to_mlflow(run.id, uri, db=db)
    client = MlflowClient(uri)
    got = client.get_run(mid)
    assert got.info.status == "FINISHED" and got.info.run_name == "exported"
    assert got.info.start_time == round(run.started_at * 1000)
    assert client.get_experiment(got.info.experiment_id).name == e
    assert got.data.params == {"lr": "0.01", "layers": "[8, 4]", "name": "mlp"}
    tags = got.data.tags
    assert tags["team"] == "risk" and tags["parity.run_id"] == run.id and tags["parity.git.dirty"] == "false"
    assert tags["mlflow.source.git.commit"] == git(repo, "rev-parse", "HEAD").decode().strip()
    assert json.loads(tags["parity.datasets"]) == [{"id": version.id, "role": "input"}]
    history = client.get_metric_history(mid, "loss")
    assert (
        [m.step for m in history] == [0, 1, 2] and [m.value for m in history][:2] == [0.9, 0.4] and math.isnan(history[2].value)
    )
    assert len(client.get_metric_history(mid, "system/wall_time_s")) >= 1
    [art] = client.list_artifacts(mid, "model")
    assert art.path == "model/model.onnx" and art.file_size == 5
    local = client.download_artifacts(mid, "model/model.onnx", str(tmp_path / "dl"))
    assert Path(local).read_bytes() == b"model"
    assert export_to_mlflow(run.id, uri, db=db) == mid  # exported once
    again = export_to_mlflow(run.id, uri, db=db, force=True)
    assert again != mid and client.get_run(again).data.params == got.data.params
