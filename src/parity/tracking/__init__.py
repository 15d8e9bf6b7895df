"""Experiment tracking: runs with parameters, metrics by step, system metrics, code and dataset
versions, artifacts, tags and status, in the metadata database (SQLite or PostgreSQL).

    from parity.tracking import start_run
    with start_run(experiment="fraud", params={"lr": 0.01}) as run:
        run.log_metric("loss", 0.3, step=1)

JSON views: `parity.tracking.api`; MLflow export: `export_to_mlflow` (needs MLflow installed).
"""

from parity.tracking.run import ArtifactEntry, Run, set_run_status, start_run


def export_to_mlflow(run_id: str, tracking_uri: str, **kwargs) -> str:
    """Export a run to MLflow (see `parity.tracking.mlflow_export`); MLflow is imported only now."""
    from parity.tracking.mlflow_export import export_to_mlflow as export

    return export(run_id, tracking_uri, **kwargs)


__all__ = ["ArtifactEntry", "Run", "set_run_status", "start_run", "export_to_mlflow"]
