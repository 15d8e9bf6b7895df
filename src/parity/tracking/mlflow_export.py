"""Export a Parity run to MLflow (optional: MLflow is imported only here, only when called).

    export_to_mlflow(run_id, "file:///tmp/mlruns", db=url)      # -> the MLflow run id

What goes over:
- the run name (the Parity run id when the run has none);
- the MLflow experiment of the same name (created when missing; `experiment=` picks another);
- params (strings as they are, other values as JSON), tags (the run's own, plus
  `mlflow.source.git.commit`, `parity.run_id`, `parity.experiment`, `parity.git.dirty`,
  `parity.git.diff_sha256`, `parity.datasets` (a JSON list of {"id", "role"}), `parity.error`);
- every metric value with its step and timestamp (system metrics included, as `system/...`);
- every artifact, checked against its sha256 first, under its artifact name;
- start and end time and the status (RUNNING, FINISHED, FAILED, KILLED are MLflow's names too).

A run that was exported to the same tracking URI and experiment before (found by its
`parity.run_id` tag) is not exported again: its MLflow id is returned; `force=True` exports it
again as a new MLflow run (e.g. after a RUNNING run has finished).

MLflow 3's file store (`file:///...`) is refused by MLflow unless MLFLOW_ALLOW_FILE_STORE=true is
set; a database URI (sqlite:///mlflow.db, needs the full `mlflow` package) or an http(s) server
works as it is.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from parity.errors import Unavailable
from parity.sql import Database

_BATCH = 500


def export_to_mlflow(
    run_id: str,
    tracking_uri: str,
    *,
    db: Database | str | None = None,
    experiment: str | None = None,
    force: bool = False,
) -> str:
    """Copy a run into the MLflow tracking server at `tracking_uri`; returns the MLflow run id."""
    try:
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise Unavailable("MLflow is not installed: pip install mlflow-skinny (or mlflow) to export runs") from None
    from parity.tracking import artifacts as cas
    from parity.tracking.store import load_runs, metric_history, open_db, resolve_run

    database, owned = open_db(db)
    try:

        def read(tx):
            rid = resolve_run(tx, run_id)
            return load_runs(tx, [rid])[0], metric_history(tx, rid)

        run, history = database.run(read, write=False)
    finally:
        if owned:
            database.close()

    client = MlflowClient(tracking_uri)
    name = experiment or run["experiment"]
    exp = client.get_experiment_by_name(name)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(name)
    if not force:
        found = client.search_runs([exp_id], filter_string=f"tags.`parity.run_id` = '{run['id']}'", max_results=1)
        if found:
            return found[0].info.run_id

    tags: dict[str, str] = dict(run["tags"])
    tags.update(
        {
            "parity.run_id": run["id"],
            "parity.experiment": run["experiment"],
            "parity.datasets": json.dumps(run["datasets"]),
        }
    )
    code = run["code"]
    if code["git_commit"]:
        tags["mlflow.source.git.commit"] = code["git_commit"]
    if code["git_dirty"] is not None:
        tags["parity.git.dirty"] = str(code["git_dirty"]).lower()
    if code["git_diff_sha256"]:
        tags["parity.git.diff_sha256"] = code["git_diff_sha256"]
    if run["error"]:
        tags["parity.error"] = run["error"][:5000]

    mlrun = client.create_run(exp_id, start_time=_ms(run["started_at"]), tags=tags, run_name=run["name"] or run["id"])
    mid = mlrun.info.run_id
    params = [Param(k, v if isinstance(v, str) else json.dumps(v)) for k, v in run["params"].items()]
    metrics = [Metric(k, v, _ms(t), s) for k, rows in history.items() for s, v, t in rows]
    for i in range(0, len(params), 100):
        client.log_batch(mid, params=params[i : i + 100])
    for i in range(0, len(metrics), _BATCH):
        client.log_batch(mid, metrics=metrics[i : i + _BATCH])
    if run["artifacts"]:
        with tempfile.TemporaryDirectory(prefix="parity-mlflow-") as tmp:
            for a in run["artifacts"]:
                src = cas.verified_path(run["artifact_root"], a["sha256"])
                dest = Path(tmp) / a["name"]
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dest)
                parent = str(Path(a["name"]).parent.as_posix())
                client.log_artifact(mid, str(dest), artifact_path=None if parent == "." else parent)
    if run["status"] != "RUNNING":
        client.set_terminated(mid, status=run["status"], end_time=_ms(run["ended_at"]) if run["ended_at"] else None)
    return mid


def _ms(t: Any) -> int:
    return round(float(t) * 1000)


__all__ = ["export_to_mlflow"]
