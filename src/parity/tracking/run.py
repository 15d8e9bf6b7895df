"""Tracked runs.

    with start_run(experiment="fraud", params={"lr": 0.01}, db=url, tags={"team": "risk"}) as run:
        run.log_metric("loss", 0.3, step=1)
        run.log_metrics({"auc": 0.91, "loss": 0.25}, step=2)
        run.log_dataset(version.id, role="train")
        run.log_artifact("model.onnx")

On entry the run is RUNNING, with its parameters, tags, code version (git) and environment; a
daemon thread samples system metrics; on exit it is FINISHED, or FAILED when the block raised
(the error is recorded), or KILLED on KeyboardInterrupt (`sys.exit(0)` counts as FINISHED).
Every write goes to the database at once (nothing is buffered), so a crashed process leaves what it logged.
"""

from __future__ import annotations

import getpass
import json
import math
import os
import platform
import socket
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parity.errors import InvalidInput
from parity.sql import Database, Tx
from parity.tracking import artifacts as cas
from parity.tracking.code import CodeVersion, code_version
from parity.tracking.store import (
    STATUSES,
    SYSTEM_PREFIX,
    check_artifact_name,
    check_experiment,
    check_key,
    check_run_name,
    check_tag_value,
    open_db,
    param_json,
)
from parity.tracking.system import GpuReader, SystemSampler


@dataclass(frozen=True)
class ArtifactEntry:
    name: str
    sha256: str
    size: int
    path: Path  # where the bytes are, in the content-addressed store


class Run:
    """A run in progress (see the module docstring).  Made by `start_run`."""

    def __init__(
        self, db: Database, owned: bool, run_id: str, experiment: str, name: str | None, artifact_root: Path, started_at: float
    ):
        self.db, self._owned = db, owned
        self.id, self.experiment, self.name = run_id, experiment, name
        self.artifact_root, self.started_at = artifact_root, started_at
        self.status = "RUNNING"
        self.code: CodeVersion = CodeVersion()
        self._steps: dict[str, int] = {}
        self._lock = threading.Lock()
        self._sampler: SystemSampler | None = None

    def __repr__(self) -> str:
        return f"Run(id={self.id!r}, experiment={self.experiment!r}, status={self.status!r})"

    # -- logging --------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.status != "RUNNING":
            raise InvalidInput(f"run {self.id} has ended ({self.status}); start a new run to log more")

    def log_param(self, key: str, value: Any) -> None:
        self.log_params({key: value})

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Parameters are set once: logging the same value again is a no-op, a different one an error."""
        self._check_open()
        items = [(check_key(k, "parameter"), param_json(k, v)) for k, v in params.items()]
        self.db.run(lambda tx: _write_params(tx, self.id, items))

    def log_metric(self, key: str, value: float, step: int | None = None, timestamp: float | None = None) -> None:
        self.log_metrics({key: value}, step=step, timestamp=timestamp)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None, timestamp: float | None = None) -> None:
        """One value per metric name and step; `step` defaults to the metric's previous step + 1
        (0 for its first value).  Logging a step again replaces its value.  NaN and ±inf are kept."""
        self._check_open()
        ts = time.time() if timestamp is None else float(timestamp)
        rows = []
        with self._lock:
            for key, value in metrics.items():
                check_key(key, "metric")
                if key.startswith(SYSTEM_PREFIX):
                    raise InvalidInput(
                        f"metric name {key!r}: names starting with {SYSTEM_PREFIX!r} are reserved for system metrics"
                    )
                try:
                    v = float(value)
                except (TypeError, ValueError):
                    raise InvalidInput(f"metric {key!r} must be a number, not {type(value).__name__} {value!r}") from None
                s = self._steps.get(key, -1) + 1 if step is None else _step(step)
                self._steps[key] = max(self._steps.get(key, -1), s)
                rows.append((key, s, None if math.isnan(v) else v, ts))
        self.db.run(lambda tx: _write_metrics(tx, self.id, rows))

    def set_tag(self, key: str, value: Any) -> None:
        self.set_tags({key: value})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._check_open()
        items = [(check_key(k, "tag"), check_tag_value(k, v)) for k, v in tags.items()]
        self.db.run(lambda tx: _write_tags(tx, self.id, items))

    def log_dataset(self, version: Any, role: str = "input") -> str:
        """Record that this run read a dataset version (a DatasetVersion, its id, or a unique prefix);
        returns the full id.  `role`: e.g. "train", "holdout" (default "input")."""
        from parity.data.versions import resolve_id

        self._check_open()
        check_key(role, "dataset role")
        ref = getattr(version, "id", version)

        def write(tx: Tx) -> str:
            vid = resolve_id(tx, str(ref))
            tx.execute(
                "INSERT INTO tracking_datasets (run_id, version_id, role, logged_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (run_id, version_id) DO UPDATE SET role = excluded.role",
                (self.id, vid, role, time.time()),
            )
            return vid

        return self.db.run(write)

    def log_artifact(self, path: str | os.PathLike, name: str | None = None) -> list[ArtifactEntry]:
        """Copy a file (or every file under a directory) into the content-addressed artifact store
        and record it under `name` (default: the file's name; for a directory, `name/<relative
        path>` with `name` defaulting to the directory's name).  Logging a name again replaces it."""
        self._check_open()
        src = Path(path)
        if src.is_file():
            pairs = [(check_artifact_name(src.name if name is None else name), src)]
        elif src.is_dir():
            prefix = check_artifact_name(src.resolve().name if name is None else name)
            pairs = []
            for dirpath, dirnames, filenames in os.walk(src):
                dirnames.sort()
                for fn in sorted(filenames):
                    fp = Path(dirpath) / fn
                    if fp.is_file():
                        pairs.append((check_artifact_name(f"{prefix}/{fp.relative_to(src).as_posix()}"), fp))
            if not pairs:
                raise InvalidInput(f"{path}: an empty directory, no artifact to log")
            pairs.sort(key=lambda pair: pair[0].encode())
        else:
            raise InvalidInput(f"{path}: no such file or directory to log as an artifact")
        entries = []
        for artifact_name, fp in pairs:
            digest, size = cas.put(self.artifact_root, fp)
            entries.append(ArtifactEntry(artifact_name, digest, size, cas.object_path(self.artifact_root, digest)))
        now = time.time()

        def write(tx: Tx) -> None:
            for e in entries:
                tx.execute(
                    "INSERT INTO tracking_artifacts (run_id, name, sha256, size, logged_at) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (run_id, name) DO UPDATE SET sha256 = excluded.sha256, size = excluded.size, "
                    "logged_at = excluded.logged_at",
                    (self.id, e.name, e.sha256, e.size, now),
                )

        self.db.run(write)
        return entries

    # -- the end --------------------------------------------------------------------------------

    def end(self, status: str = "FINISHED", error: str | None = None) -> None:
        """End the run (FINISHED, FAILED or KILLED); stops the system sampler after a last sample.
        Ending an ended run does nothing."""
        status = status.upper()
        if status not in STATUSES or status == "RUNNING":
            raise InvalidInput(f"a run ends as FINISHED, FAILED or KILLED, not {status!r}")
        if self.status != "RUNNING":
            return
        try:
            if self._sampler is not None:
                self._sampler.stop()
            now = time.time()
            self.db.run(
                lambda tx: tx.execute(
                    "UPDATE tracking_runs SET status = ?, ended_at = ?, heartbeat_at = ?, error = ? WHERE id = ? AND status = ?",
                    (status, now, now, None if error is None else error[:4000], self.id, "RUNNING"),
                )
            )
            self.status = status
        finally:
            if self._owned:
                self.db.close()

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.end("FINISHED")
        elif issubclass(exc_type, SystemExit) and exc.code in (0, None):
            self.end("FINISHED")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.end("KILLED", "KeyboardInterrupt")
        else:
            self.end("FAILED", f"{exc_type.__name__}: {exc}")


def start_run(
    experiment: str,
    params: Mapping[str, Any] | None = None,
    *,
    db: Database | str | None = None,
    tags: Mapping[str, Any] | None = None,
    name: str | None = None,
    datasets: list[Any] | None = None,
    artifacts: str | os.PathLike | None = None,
    code_dir: str | os.PathLike | None = None,
    save_diff: bool = False,
    system_metrics: bool = True,
    system_metrics_interval: float = 10.0,
) -> Run:
    """Start a run (RUNNING) and return it; use it as a context manager, or call `run.end()`.

    db: a Database, a URL, or None for the default ($PARITY_DB or sqlite:///$PARITY_HOME/metadata.db).
    artifacts: the artifact store root (default $PARITY_ARTIFACTS or $PARITY_HOME/artifacts).
    code_dir: where to read the git version (default: the working directory).
    save_diff: also store `git diff HEAD` as the artifact `code/git.diff` when the tree is dirty.
    system_metrics: sample CPU, memory, wall time (and GPUs) every `system_metrics_interval` s.
    """
    from parity.home import default_artifact_root

    check_experiment(experiment)
    check_run_name(name)
    param_items = [(check_key(k, "parameter"), param_json(k, v)) for k, v in (params or {}).items()]
    tag_items = [(check_key(k, "tag"), check_tag_value(k, v)) for k, v in (tags or {}).items()]
    root = Path(os.path.abspath(os.fspath(artifacts if artifacts is not None else default_artifact_root())))
    code = code_version(code_dir)
    gpu = GpuReader.detect() if system_metrics else None
    env = {
        "host": socket.gethostname(),
        "user": _user(),
        "pid": os.getpid(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "parity": _parity_version(),
        "cwd": os.getcwd(),
        "program": sys.argv[0] if sys.argv else None,  # not the arguments: they may hold secrets
        "git_branch": code.branch,
        "git_untracked_files": code.untracked_files,
        "gpus": gpu.names() if gpu is not None else [],
    }
    database, owned = open_db(db)
    run_id = uuid.uuid4().hex
    started = time.time()
    run = Run(database, owned, run_id, experiment, name, root, started)
    run.code = code
    try:

        def create(tx: Tx) -> None:
            tx.execute(
                "INSERT INTO tracking_runs (id, experiment, name, status, started_at, heartbeat_at, git_commit, git_dirty, "
                "git_diff_sha256, artifact_root, environment_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id, experiment, name, "RUNNING", started, started, code.commit,
                    None if code.dirty is None else int(code.dirty), code.diff_sha256, str(root), json.dumps(env),
                ),
            )  # fmt: skip
            _write_params(tx, run_id, param_items)
            _write_tags(tx, run_id, tag_items)

        database.run(create)
        for d in datasets or ():
            run.log_dataset(d)
        if save_diff and code.dirty and code.diff:
            _log_bytes(run, "code/git.diff", code.diff)
        if system_metrics:

            def write(step: int, values: dict[str, float]) -> None:
                now = time.time()

                def tx_write(tx: Tx) -> None:
                    _write_metrics(tx, run_id, [(k, step, v, now) for k, v in values.items()])
                    tx.execute("UPDATE tracking_runs SET heartbeat_at = ? WHERE id = ?", (now, run_id))

                database.run(tx_write)

            run._sampler = SystemSampler(
                write, interval=system_metrics_interval, started=started, gpu=gpu, on_exit=database.close
            ).start()
    except BaseException as e:
        if run._sampler is None:
            # the run row may exist: mark it failed rather than leave it RUNNING
            why = f"{type(e).__name__}: {e}"
            try:
                database.run(
                    lambda tx: tx.execute(
                        "UPDATE tracking_runs SET status = ?, ended_at = ?, error = ? WHERE id = ?",
                        ("FAILED", time.time(), why, run_id),
                    )
                )
            except Exception:  # noqa: BLE001 - the original error is the one to report
                pass
            if owned:
                database.close()
        raise
    return run


def set_run_status(run_ref: str, status: str, *, db: Database | str | None = None, reason: str | None = None) -> str:
    """Mark a RUNNING run as ended from outside it, e.g. KILLED when its process died; returns
    the run's full id.  A run that has already ended is refused."""
    from parity.errors import NotFound
    from parity.tracking.store import resolve_run

    status = status.upper()
    if status not in ("FINISHED", "FAILED", "KILLED"):
        raise InvalidInput(f"a run ends as FINISHED, FAILED or KILLED, not {status!r}")
    database, owned = open_db(db)
    try:

        def write(tx: Tx) -> str:
            rid = resolve_run(tx, run_ref)
            row = tx.one("SELECT status FROM tracking_runs WHERE id = ?", (rid,))
            if row is None:
                raise NotFound(f"no run {rid}")
            if row[0] != "RUNNING":
                raise InvalidInput(f"run {rid} has already ended ({row[0]})")
            now = time.time()
            tx.execute("UPDATE tracking_runs SET status = ?, ended_at = ?, error = ? WHERE id = ?", (status, now, reason, rid))
            return rid

        return database.run(write)
    finally:
        if owned:
            database.close()


# -- writes -----------------------------------------------------------------------------------------


def _step(step: Any) -> int:
    if isinstance(step, bool) or not isinstance(step, int) and not (hasattr(step, "__index__")):
        raise InvalidInput(f"step must be an integer, not {step!r}")
    s = int(step)
    if not 0 <= s < 2**62:
        raise InvalidInput(f"step must be between 0 and 2**62, not {s}")
    return s


def _write_params(tx: Tx, run_id: str, items: list[tuple[str, str]]) -> None:
    for key, value in items:
        tx.execute(
            "INSERT INTO tracking_params (run_id, key, value_json) VALUES (?, ?, ?) ON CONFLICT (run_id, key) DO NOTHING",
            (run_id, key, value),
        )
        old = tx.one("SELECT value_json FROM tracking_params WHERE run_id = ? AND key = ?", (run_id, key))
        if old[0] != value:
            raise InvalidInput(f"parameter {key!r} is already {old[0]} in run {run_id}: parameters cannot change ({value} given)")


def _write_metrics(tx: Tx, run_id: str, rows: list[tuple[str, int, float | None, float]]) -> None:
    for key, step, value, ts in rows:
        tx.execute(
            "INSERT INTO tracking_metrics (run_id, key, step, value, ts) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (run_id, key, step) DO UPDATE SET value = excluded.value, ts = excluded.ts",
            (run_id, key, step, value, ts),
        )


def _write_tags(tx: Tx, run_id: str, items: list[tuple[str, str]]) -> None:
    for key, value in items:
        tx.execute(
            "INSERT INTO tracking_tags (run_id, key, value) VALUES (?, ?, ?) "
            "ON CONFLICT (run_id, key) DO UPDATE SET value = excluded.value",
            (run_id, key, value),
        )


def _log_bytes(run: Run, name: str, data: bytes) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "blob"
        p.write_bytes(data)
        run.log_artifact(p, name=name)


def _user() -> str | None:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001
        return None


def _parity_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("parity")
    except Exception:  # noqa: BLE001
        return None


__all__ = ["Run", "ArtifactEntry", "start_run", "set_run_status"]
