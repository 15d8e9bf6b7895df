"""The training pipeline behind `parity train --config FILE` (see docs/training.md).

    from parity.training.pipeline import train
    result = train("configs/training/fraud.yaml")          # -> TrainResult
    result.ref, result.metrics, result.holdout_labels, result.holdout_scores

Steps (each announced on stderr as ``[i/9] ...``, training with a tqdm bar):

1. snapshot the data: the label file and every source file (and push log) of the feature service's
   views, as content-addressed dataset versions (`parity.data.snapshot`), recorded in the run;
2. build the training set through the feature store: `get_historical_features(repo, labels,
   service)` -- the labelled events are the entity rows, so every row gets the features the online
   store could have served at its time;
3. split by time: the latest `holdout_fraction` of the events (by event time; events sharing the
   boundary time all go to the holdout) are the holdout, everything before is training data;
   rows with a missing (null) feature are dropped and counted -- the server would reject them under
   `on_missing: reject`; under `on_missing: default` the training set already holds the defaults,
   as served;
4. train the MLP (`parity.training.model`) on the service's features AS THEY ARE (no scaling fitted
   here: the server would not apply it), seeded and deterministic (Python, numpy and torch seeds,
   `torch.use_deterministic_algorithms`, `training.threads` intra-op threads), so a rerun on the
   same data and code reproduces the metrics exactly;
5. evaluate on the holdout: ROC AUC, accuracy and log loss (binary), RMSE and MAE (regression);
6. export to ONNX (input `x` FP32 [batch, N], output `score` FP32 [batch, 1]) and check that ONNX
   Runtime reproduces PyTorch on the holdout within `export.atol + export.rtol * |torch|`, else the
   run fails (`ExportMismatch`);
7. compute the reference profile (`parity.monitoring.profile.build_profile`);
8. register the version: the ONNX file, signature, metrics, profile, lineage (run id, dataset
   versions, git commit / dirty flag / diff hash of the run's code version), tags (the feature
   service, its features, the label); optionally point an alias (e.g. challenger) at it;
9. finish the tracked run: parameters (the whole config), metrics by epoch, the final metrics, the
   artifacts (model.onnx, profile.json, holdout.parquet, the resolved config).

Distributed: under torchrun (``WORLD_SIZE`` > 1; `python -m torch.distributed.run --nproc_per_node 2
-m parity.training.pipeline --config FILE`, or `parity train --config FILE --nproc 2`) the process
group is gloo; rank 0 snapshots and builds the training set and broadcasts it; every rank trains
DistributedDataParallel on its DistributedSampler shard (gradients all-reduced); rank 0 evaluates,
exports, registers and logs; the ranks check that they ended with identical weights.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import hashlib
import json
import math
import os
import random
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from parity.errors import ConfigError, InvalidInput, ParityError
from parity.training.config import TrainConfig, load_config

STEPS = 9
RESULT_FILE = "result.json"
HOLDOUT_FEATURES_KEY = "parity.features"  # holdout.parquet schema metadata: the model's input columns, in order


class TrainingFailed(ParityError):
    """The training run could not complete (the message says which step and why)."""


# -- the result --------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    run_id: str
    model_name: str
    model_version: int
    alias: str | None
    metrics: dict[str, float]
    datasets: dict[str, str]  # role -> dataset version id
    features: list[str]  # the model's input columns, in order (`<view>__<feature>`)
    rows: dict[str, int]  # labelled, train, holdout, dropped_* ...
    holdout_start: str  # ISO time of the first holdout event (every holdout event is at or after it)
    train_end: str  # ISO time of the last training event
    export_check: dict
    output_dir: str
    onnx_path: str
    holdout_path: str  # Parquet: keys, event_timestamp, y_true, score (ONNX), score_torch, the features
    profile_path: str
    world_size: int
    weights_sha256: str
    seconds: float
    history: dict[str, list[float]] = field(default_factory=dict)  # per-epoch metrics

    @property
    def ref(self) -> str:
        return f"{self.model_name}/{self.model_version}"

    def _holdout(self):
        import pyarrow.parquet as pq

        return pq.read_table(self.holdout_path, columns=["y_true", "score"])

    @property
    def holdout_labels(self) -> np.ndarray:
        return self._holdout().column("y_true").to_numpy()

    @property
    def holdout_scores(self) -> np.ndarray:
        """The exported (ONNX) model's scores on the holdout rows, in time order: what the promotion gate compares."""
        return self._holdout().column("score").to_numpy()

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ref"] = self.ref
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainResult":
        d = dict(d)
        d.pop("ref", None)
        return cls(**d)


# -- helpers -----------------------------------------------------------------------------------------


class _Progress:
    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.t0 = time.monotonic()

    def step(self, i: int, text: str) -> None:
        if self.enabled:
            print(f"[{i}/{STEPS}] {text}", file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        if self.enabled:
            print(f"      {text}", file=sys.stderr, flush=True)


class _Dist:
    """This process's place in a torch.distributed job (world size 1 without one)."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        self.rank = int(os.environ.get("RANK", "0") or 0)
        self.initialized = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def init(self) -> None:
        if self.world > 1:
            import datetime as _dt

            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("gloo", timeout=_dt.timedelta(minutes=30))
                self.initialized = True
            self.world, self.rank = dist.get_world_size(), dist.get_rank()

    def broadcast(self, obj: Any) -> Any:
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list:
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out: list = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.initialized:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.initialized = False


def _iso_us(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def default_output_dir(cfg: TrainConfig) -> Path:
    from parity.home import home

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    return (home() / "training" / f"{cfg.registry.model}-{stamp}-{os.getpid()}-{uuid.uuid4().hex[:6]}").resolve()


def _service_plan(repo, service: str, src: str):
    """(stored views, join keys [(name, dtype)], request fields [(name, dtype)]) the service needs."""
    if service not in repo.services:
        raise ConfigError(src, "features.service", f"unknown feature service {service!r}; the repository has {sorted(repo.services)}")
    refs = repo.resolve(service)
    views: list = []
    requests: list = []
    for v, _ in refs:
        names = [v]
        if v in repo.on_demand:
            names = list(repo.on_demand[v].sources)
        for name in names:
            if name in repo.views and repo.views[name] not in views:
                views.append(repo.views[name])
            elif name in repo.request_sources and repo.request_sources[name] not in requests:
                requests.append(repo.request_sources[name])
    keys: list[tuple[str, str]] = []
    for view in views:
        for e in view.entities:
            for k in repo.entities[e].join_keys:
                if k.name not in [n for n, _ in keys]:
                    keys.append((k.name, k.dtype))
    fields: list[tuple[str, str]] = []
    for rs in requests:
        for f in rs.schema:
            if f.name not in [n for n, _ in fields]:
                fields.append((f.name, f.dtype))
    return refs, views, keys, fields


def _view_files(view) -> list[str]:
    from parity.features.offline import push_log_files

    path = view.source.path
    if any(ch in path for ch in "*?["):
        files = sorted(glob.glob(path, recursive=True))
    else:
        files = [path] if os.path.exists(path) else []
    return files + [str(p) for p in push_log_files(view)]


def _roc_auc(y: np.ndarray, s: np.ndarray) -> float:
    """ROC AUC by the Mann-Whitney statistic (ties count one half); NaN with a single class."""
    from scipy.stats import rankdata

    y = np.asarray(y).astype(bool)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    r = rankdata(np.asarray(s, dtype=np.float64))
    return float((r[y].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def evaluate(task: str, y: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """Holdout metrics: binary -> roc_auc, accuracy (score >= 0.5), log_loss; regression -> rmse, mae."""
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    s = np.asarray(score, dtype=np.float64).reshape(-1)
    if task == "binary":
        p = np.clip(s, 1e-7, 1 - 1e-7)
        return {
            "roc_auc": _roc_auc(y, s),
            "accuracy": float(np.mean((s >= 0.5) == (y >= 0.5))),
            "log_loss": float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p))),
            "positive_rate": float(y.mean()),
        }
    err = s - y
    return {"rmse": float(np.sqrt(np.mean(err**2))), "mae": float(np.mean(np.abs(err)))}


def _weights_sha256(module) -> str:
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@contextlib.contextmanager
def _torch_settings(seed: int, threads: int):
    """Seeds, deterministic algorithms and the thread count for the duration (restored after)."""
    import torch

    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    py_state, np_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det)
        random.setstate(py_state)
        np.random.set_state(np_state)


# -- step 1-3: the data --------------------------------------------------------------------------------


@dataclass
class _Data:
    features: list[str]
    x_train: np.ndarray
    y_train: np.ndarray
    x_hold: np.ndarray
    y_hold: np.ndarray
    train_table: Any  # Arrow: keys, event_timestamp, label, request values, features (training rows kept)
    hold_table: Any
    rows: dict[str, int]
    holdout_start_us: int
    train_end_us: int


def _label_table(cfg: TrainConfig, keys, fields, schema_only: bool = False):
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    src, lab = cfg.source, cfg.labels
    try:
        schema = pq.read_schema(lab.path) if lab.path.is_file() else pq.ParquetDataset(lab.path).schema
    except Exception as e:  # noqa: BLE001 - not Parquet
        raise ConfigError(src, "labels.path", f"{lab.path} cannot be read as Parquet: {e}") from None
    needed = [k for k, _ in keys] + [lab.timestamp] + [f for f, _ in fields] + [lab.label]
    missing = [c for c in dict.fromkeys(needed) if c not in schema.names]
    if missing:
        what = {lab.label: "labels.label", lab.timestamp: "labels.timestamp"}
        fieldname = what.get(missing[0], "labels.path")
        raise ConfigError(
            src, fieldname,
            f"{lab.path} has no column {missing[0]!r} (needed: join keys {[k for k, _ in keys]}, timestamp {lab.timestamp!r}, "
            f"request values {[f for f, _ in fields]} of service {cfg.features.service!r}, label {lab.label!r}); its columns: {schema.names}",
        )  # fmt: skip
    if lab.label in [k for k, _ in keys] + [f for f, _ in fields] or lab.label == lab.timestamp:
        raise ConfigError(src, "labels.label", f"{lab.label!r} is a join key, request value or the timestamp, not a label")
    if schema_only:
        return None
    table = pq.read_table(lab.path, columns=list(dict.fromkeys(needed)))
    if lab.timestamp != "event_timestamp":
        table = table.rename_columns(["event_timestamp" if c == lab.timestamp else c for c in table.column_names])
    ts_type = table.schema.field("event_timestamp").type
    if not pa.types.is_timestamp(ts_type):
        raise ConfigError(src, "labels.timestamp", f"column {lab.timestamp!r} of {lab.path} is {ts_type}, not a timestamp")
    label_type = table.schema.field(lab.label).type
    if cfg.labels.task == "binary":
        if not (pa.types.is_boolean(label_type) or pa.types.is_integer(label_type) or pa.types.is_floating(label_type)):
            raise ConfigError(src, "labels.label", f"a binary label must be bool or 0/1 numbers; {lab.label!r} is {label_type}")
        vals = table.column(lab.label).cast(pa.float64())
        bad = pc.sum(pc.and_(pc.not_equal(vals, 0.0), pc.not_equal(vals, 1.0))).as_py() or 0
        if bad:
            raise ConfigError(src, "labels.label", f"a binary label must be 0/1 (or true/false); {lab.label!r} has {bad} other value(s)")
    elif not (pa.types.is_integer(label_type) or pa.types.is_floating(label_type)):
        raise ConfigError(src, "labels.label", f"a regression label must be numeric; {lab.label!r} is {label_type}")
    return table


def _build_data(cfg: TrainConfig, repo, progress: _Progress) -> _Data:
    import pyarrow as pa
    import pyarrow.compute as pc

    from parity.features.offline import get_historical_features

    refs, views, keys, fields = _service_plan(repo, cfg.features.service, cfg.source)
    table = _label_table(cfg, keys, fields)
    label = cfg.labels.label
    n_labelled = table.num_rows
    # labels first: a row without a label teaches nothing
    has_label = pc.invert(pc.or_kleene(pc.is_null(table.column(label)), pc.is_nan(table.column(label).cast(pa.float64()))))
    has_label = pc.fill_null(has_label, False)
    has_ts = pc.is_valid(table.column("event_timestamp"))
    keep = pc.and_(has_label, has_ts)
    dropped_label = n_labelled - (pc.sum(keep).as_py() or 0)
    table = table.filter(keep)
    # time order (stable: equal times keep the file's order)
    ts = table.column("event_timestamp").cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy()
    order = np.argsort(ts, kind="stable")
    table = table.take(pa.array(order))
    ts = ts[order]
    n = table.num_rows
    if n < 2:
        raise InvalidInput(f"{cfg.labels.path}: {n} labelled event(s); training needs at least 2 (some for the holdout)")

    progress.step(2, f"building the training set: {n:,} labelled events x {len(refs)} features of service {cfg.features.service!r} (point-in-time join)")
    joined = get_historical_features(repo, table, cfg.features.service, output="arrow", full_feature_names=True)
    features = [f"{v}__{f}" for v, f in refs]

    progress.step(3, f"splitting by time: the latest {cfg.training.holdout_fraction:.0%} of events are the holdout")
    n_hold = max(1, math.ceil(n * cfg.training.holdout_fraction))
    cut = int(ts[n - n_hold])
    is_hold = ts >= cut
    if is_hold.all():
        raise InvalidInput(
            f"every labelled event is at or after {_iso_us(cut)}: no training rows before the holdout; lower training.holdout_fraction or add older events"
        )
    complete = np.ones(n, dtype=bool)
    for name in features:
        col = joined.column(name)
        if col.null_count:
            complete &= ~np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    train_rows = np.flatnonzero(~is_hold & complete)
    hold_rows = np.flatnonzero(is_hold & complete)
    rows = {
        "labelled": n_labelled,
        "dropped_no_label": int(dropped_label),
        "events": n,
        "train_events": int((~is_hold).sum()),
        "holdout_events": int(is_hold.sum()),
        "dropped_missing_train": int((~is_hold & ~complete).sum()),
        "dropped_missing_holdout": int((is_hold & ~complete).sum()),
        "train": len(train_rows),
        "holdout": len(hold_rows),
    }
    policy = repo.services[cfg.features.service].on_missing
    progress.note(
        f"{rows['train_events']:,} training events before {_iso_us(cut)}, {rows['holdout_events']:,} holdout events from then on; "
        f"dropped for a missing feature (service on_missing={policy}): {rows['dropped_missing_train']:,} training, "
        f"{rows['dropped_missing_holdout']:,} holdout rows" + (f"; {dropped_label:,} events without a label or time" if dropped_label else "")
    )
    if not len(train_rows) or not len(hold_rows):
        raise InvalidInput(
            f"after dropping rows with missing features there are {len(train_rows)} training and {len(hold_rows)} holdout rows; "
            f"both need some (are the feature sources and the labels from the same period?)"
        )

    def matrix(idx: np.ndarray) -> np.ndarray:
        # laid out exactly as the server's feature-joined inference does: float32 [rows, N] in the
        # service's order, each column cast by assignment from its own dtype
        x = np.empty((len(idx), len(features)), dtype=np.float32)
        for j, name in enumerate(features):
            x[:, j] = joined.column(name).take(pa.array(idx)).to_numpy(zero_copy_only=False)
        return x

    y = np.asarray(joined.column(label).cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float32)
    return _Data(
        features=features,
        x_train=matrix(train_rows),
        y_train=y[train_rows],
        x_hold=matrix(hold_rows),
        y_hold=y[hold_rows],
        train_table=joined.take(pa.array(train_rows)),
        hold_table=joined.take(pa.array(hold_rows)),
        rows=rows,
        holdout_start_us=cut,
        train_end_us=int(ts[~is_hold].max()),
    )


# -- step 4: training ----------------------------------------------------------------------------------


class _Indices:
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n


def _fit(cfg: TrainConfig, dist: _Dist, n_features: int, x_train: np.ndarray, y_train: np.ndarray, on_epoch) -> Any:
    """Train the MLP (DDP when distributed); returns the trained TabularMLP (eval mode)."""
    import torch
    from torch.utils.data.distributed import DistributedSampler

    from parity.training.model import TabularMLP

    t = cfg.training
    torch.manual_seed(t.seed)  # the same initial weights on every rank
    mlp = TabularMLP(n_features, cfg.model.hidden, cfg.model.dropout, cfg.model.input_norm)
    model = mlp
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(mlp)  # broadcasts rank 0's parameters; all-reduces gradients
    torch.manual_seed(t.seed + 1_000_003 * dist.rank)  # dropout masks: per rank, reproducible
    opt = torch.optim.Adam(model.parameters(), lr=t.learning_rate, weight_decay=t.weight_decay)
    loss_fn = torch.nn.BCEWithLogitsLoss() if cfg.labels.task == "binary" else torch.nn.MSELoss()
    xt = torch.from_numpy(np.ascontiguousarray(x_train, dtype=np.float32))
    yt = torch.from_numpy(np.ascontiguousarray(y_train, dtype=np.float32))
    sampler = DistributedSampler(_Indices(len(xt)), num_replicas=dist.world, rank=dist.rank, shuffle=True, seed=t.seed, drop_last=False)
    for epoch in range(t.epochs):
        sampler.set_epoch(epoch)
        idx = torch.tensor(list(iter(sampler)), dtype=torch.long)
        model.train()
        loss_sum, count = 0.0, 0
        for b in range(0, len(idx), t.batch_size):
            bi = idx[b : b + t.batch_size]
            opt.zero_grad(set_to_none=True)
            out = model(xt[bi]).squeeze(1)
            loss = loss_fn(out, yt[bi])
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach()) * len(bi)
            count += len(bi)
        if dist.world > 1:
            import torch.distributed as tdist

            tot = torch.tensor([loss_sum, float(count)], dtype=torch.float64)
            tdist.all_reduce(tot)
            loss_sum, count = float(tot[0]), int(tot[1])
        if dist.world > 1:
            _sync_buffers(mlp)
        mlp.eval()
        on_epoch(epoch, loss_sum / max(count, 1), mlp)
    mlp.eval()
    return mlp


def _sync_buffers(module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank: DDP broadcasts them before
    each forward, so after the last step each rank holds its own shard's update; rank 0's are kept."""
    import torch.distributed as tdist

    for buf in module.buffers():
        tdist.broadcast(buf, src=0)


# -- the pipeline ----------------------------------------------------------------------------------------


def run_pipeline(cfg: TrainConfig, *, progress: bool = True, output_dir: str | Path | None = None) -> TrainResult | None:
    """Run the pipeline in this process (one rank of a torch.distributed job when WORLD_SIZE > 1).
    Returns the result on rank 0, None on the other ranks."""
    dist = _Dist()
    dist.init()
    try:
        return _run(cfg, dist, _Progress(progress and dist.main), output_dir)
    finally:
        dist.close()


def _run(cfg: TrainConfig, dist: _Dist, progress: _Progress, output_dir) -> TrainResult | None:
    t0 = time.monotonic()
    if not dist.main:
        shared = dist.broadcast(None)
        if "error" in shared:
            raise TrainingFailed(f"rank 0 failed while preparing the data: {shared['error']}")
        _train_rank(cfg, dist, progress, shared, None, {})
        status = dist.broadcast(None)
        if status != "ok":
            raise TrainingFailed(f"rank 0 failed after training: {status}")
        return None
    try:
        prep = _prepare(cfg, dist, progress, output_dir)
    except BaseException as e:
        with contextlib.suppress(Exception):
            dist.broadcast({"error": f"{type(e).__name__}: {e}"})
        raise
    run = prep["run"]
    try:
        data = prep["data"]
        shared = dist.broadcast({"x": data.x_train, "y": data.y_train, "n_features": len(data.features), "out": str(prep["out"])})
        history: dict[str, list[float]] = {}
        mlp, digest = _train_rank(cfg, dist, progress, shared, prep, history)
        result = _finish(cfg, dist, progress, prep, mlp, digest, history, t0)
    except BaseException as e:
        with contextlib.suppress(Exception):
            dist.broadcast(f"{type(e).__name__}: {e}")
        if run.status == "RUNNING":
            run.__exit__(type(e), e, e.__traceback__)
        raise
    dist.broadcast("ok")
    return result


def _train_rank(cfg: TrainConfig, dist: _Dist, progress: _Progress, shared: dict, prep: dict | None, history: dict):
    """Train on this rank's shard; rank 0 evaluates every epoch.  Returns (model, weights sha256)
    after checking that every rank ended with the same weights."""
    out = Path(shared["out"])
    with _torch_settings(cfg.training.seed, cfg.training.threads):
        bar = None
        if progress.enabled:
            from tqdm import tqdm

            progress.step(4, f"training an MLP {list(cfg.model.hidden)} on {len(shared['x']):,} rows x {shared['n_features']} features"
                          + (f" ({dist.world} processes, DDP/gloo)" if dist.world > 1 else ""))  # fmt: skip
            bar = tqdm(total=cfg.training.epochs, unit="epoch", file=sys.stderr, dynamic_ncols=True, leave=True)

        def on_epoch(epoch: int, train_loss: float, mlp) -> None:
            if prep is None:
                return
            from parity.training.export import torch_predict
            from parity.training.model import ScoringModel

            data = prep["data"]
            scores = torch_predict(ScoringModel(mlp, cfg.labels.task), data.x_hold)
            m = evaluate(cfg.labels.task, data.y_hold, scores)
            row = {"train/loss": train_loss, **{f"holdout/{k}": v for k, v in m.items() if k != "positive_rate"}}
            prep["run"].log_metrics(row, step=epoch)
            for k, v in row.items():
                history.setdefault(k, []).append(v)
            if bar is not None:
                key = "holdout/roc_auc" if cfg.labels.task == "binary" else "holdout/rmse"
                bar.set_postfix_str(f"loss {train_loss:.4f} {key.split('/')[1]} {row[key]:.4f}", refresh=False)
                bar.update(1)

        try:
            mlp = _fit(cfg, dist, shared["n_features"], shared["x"], shared["y"], on_epoch)
        finally:
            if bar is not None:
                bar.close()
        digest = _weights_sha256(mlp)
    (out / f"weights.rank{dist.rank}.sha256").write_text(digest + "\n")
    digests = dist.gather(digest)
    if len(set(digests)) != 1:
        raise TrainingFailed(f"the ranks ended with different weights: {digests}")
    return mlp, digest


def _prepare(cfg: TrainConfig, dist: _Dist, progress: _Progress, output_dir) -> dict:
    from parity.data import snapshot
    from parity.features.definitions import FeatureRepository
    from parity.tracking import start_run

    out = Path(output_dir) if output_dir is not None else cfg.output_dir or default_output_dir(cfg)
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    repo = FeatureRepository.load(cfg.features.repository)
    refs, views, keys, fields = _service_plan(repo, cfg.features.service, cfg.source)
    _label_table(cfg, keys, fields, schema_only=True)  # the label file's columns, before anything is recorded

    progress.step(1, "snapshotting the data (content-addressed dataset versions)")
    targets: list[tuple[str, list[str]]] = [("labels", [str(cfg.labels.path)])]
    for view in views:
        files = _view_files(view)
        if not files:
            raise ConfigError(cfg.source, "features.repository", f"feature view {view.name!r}: its source {view.source.path} has no files")
        targets.append((f"features/{view.name}", files))
    if cfg.snapshot:
        targets.append(("extra", [str(p) for p in cfg.snapshot]))
    datasets: dict[str, str] = {}
    for role, paths in targets:
        v = snapshot(paths, db=cfg.tracking.db, progress=None)
        datasets[role] = v.id
        progress.note(f"{role}: {v.id[:12]} ({len(v.files)} file(s), {sum(f.size for f in v.files):,} bytes{', new' if v.created else ''})")

    params = cfg.to_params()
    params["output_dir"] = str(out)
    params["world_size"] = dist.world
    run = start_run(
        cfg.tracking.experiment,
        params=params,
        db=cfg.tracking.db,
        artifacts=cfg.tracking.artifacts,
        name=cfg.tracking.run_name,
        tags={"model": cfg.registry.model, "feature_service": cfg.features.service, "task": cfg.labels.task},
        system_metrics_interval=cfg.tracking.system_metrics_interval,
    )
    run.__enter__()
    try:
        for role, vid in datasets.items():
            run.log_dataset(vid, role=role)
        data = _build_data(cfg, repo, progress)
        run.log_params({"feature_columns": data.features, "data_rows": data.rows, "holdout_start": _iso_us(data.holdout_start_us)})
    except BaseException as e:
        run.__exit__(type(e), e, e.__traceback__)
        raise
    return {"out": out, "repo": repo, "datasets": datasets, "run": run, "data": data}


def _finish(cfg: TrainConfig, dist: _Dist, progress: _Progress, prep: dict, mlp, digest: str, history, t0: float) -> TrainResult:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from parity.monitoring.profile import build_profile
    from parity.registry import Lineage, Registry
    from parity.training.export import export_onnx, onnx_predict, signature, verify_onnx
    from parity.training.model import ScoringModel

    data: _Data = prep["data"]
    run = prep["run"]
    out: Path = prep["out"]
    task = cfg.labels.task
    scoring = ScoringModel(mlp, task).eval()

    progress.step(5, f"exporting to ONNX (opset {cfg.export.opset}) and checking ONNX Runtime against PyTorch on {len(data.x_hold):,} holdout rows")
    onnx_path = export_onnx(scoring, len(data.features), out / "model.onnx", opset=cfg.export.opset,
                            input_name=cfg.export.input_name, output_name=cfg.export.output_name)  # fmt: skip
    check, ort_hold, torch_hold = verify_onnx(onnx_path, scoring, data.x_hold, atol=cfg.export.atol, rtol=cfg.export.rtol)
    progress.note(f"max |onnx - torch| = {check.max_abs_diff:.3g} (allowed {cfg.export.atol:g} + {cfg.export.rtol:g}*|torch|)")

    progress.step(6, "evaluating on the holdout")
    metrics = evaluate(task, data.y_hold, ort_hold)
    run.log_metrics({f"holdout/{k}": v for k, v in metrics.items()}, step=cfg.training.epochs)
    run.log_metrics({"export/max_abs_diff": check.max_abs_diff}, step=0)

    progress.step(7, f"computing the reference profile ({cfg.profile.rows} rows)")
    if cfg.profile.rows == "holdout":
        prof_scores = ort_hold
    else:
        train_scores = onnx_predict(onnx_path, data.x_train)
        prof_scores = train_scores if cfg.profile.rows == "train" else np.concatenate([train_scores, ort_hold])
    # profiled as the model sees them -- the float32 input matrix the server assembles too -- so
    # served values fall into the same bins (a float64 value on a bin edge may round below it in
    # float32: profiling the float64 columns would show drift that is only a cast)
    xs = {"all": [data.x_train, data.x_hold], "train": [data.x_train], "holdout": [data.x_hold]}[cfg.profile.rows]
    x_prof = np.concatenate(xs) if len(xs) > 1 else xs[0]
    profile = build_profile({name: x_prof[:, j] for j, name in enumerate(data.features)}, {cfg.export.output_name: prof_scores.reshape(-1)},
                            bins=cfg.profile.bins, top_k=cfg.profile.top_k)  # fmt: skip
    profile_path = out / "profile.json"
    profile_path.write_text(json.dumps(profile, indent=1, allow_nan=False) + "\n")

    # the holdout predictions, for the promotion gate (`parity gate --challenger holdout.parquet`)
    keep = [c for c in data.hold_table.column_names if c not in data.features and c != cfg.labels.label]
    hold = data.hold_table.select(keep)
    hold = hold.append_column("y_true", pa.array(data.y_hold.astype(np.float64)))
    hold = hold.append_column("score", pa.array(ort_hold.reshape(-1)))
    hold = hold.append_column("score_torch", pa.array(torch_hold.reshape(-1)))
    for name in data.features:
        hold = hold.append_column(name, data.hold_table.column(name))
    hold = hold.replace_schema_metadata({HOLDOUT_FEATURES_KEY: json.dumps(data.features), "parity.run_id": run.id})
    holdout_path = out / "holdout.parquet"
    pq.write_table(hold, holdout_path)

    progress.step(8, f"registering model {cfg.registry.model!r}")
    code = run.code
    lineage = Lineage(
        run_id=run.id,
        datasets=tuple(dict.fromkeys(prep["datasets"].values())),
        git_commit=code.commit,
        git_dirty=code.dirty,
        diff_hash=code.diff_sha256 if code.dirty else None,
    )
    reg_metrics = {k: v for k, v in metrics.items() if math.isfinite(v)}
    tags = {
        **cfg.registry.tags,
        "feature_service": cfg.features.service,
        "feature_repository": str(cfg.features.repository),
        "features": ",".join(data.features),
        "label": cfg.labels.label,
        "task": task,
        "training_run": run.id,
        "holdout_start": _iso_us(data.holdout_start_us),
    }
    with Registry.open(cfg.registry.db, cfg.registry.artifacts) as reg:
        mv = reg.register(
            cfg.registry.model,
            {"model.onnx": onnx_path},
            signature=signature(len(data.features), cfg.export.input_name, cfg.export.output_name),
            metrics=reg_metrics,
            profile=profile,
            lineage=lineage,
            tags=tags,
            description=cfg.registry.description or f"MLP {list(cfg.model.hidden)} on feature service {cfg.features.service}, run {run.id}",
            actor=cfg.registry.actor,
            reason=cfg.registry.reason,
        )
        if cfg.registry.alias:
            reg.set_alias(cfg.registry.model, cfg.registry.alias, mv.version, actor=cfg.registry.actor,
                          reason=f"trained by run {run.id}", evidence={"run_id": run.id, "metrics": reg_metrics})  # fmt: skip

    progress.step(9, f"recording run {run.id}")
    resolved = out / "config.resolved.yaml"
    if not resolved.exists():
        import yaml

        resolved.write_text(yaml.safe_dump(cfg.to_params(), sort_keys=False))
    run.set_tags({"registered": f"{mv.name}/{mv.version}"})
    for path in (onnx_path, profile_path, holdout_path, resolved):
        run.log_artifact(path)
    result = TrainResult(
        run_id=run.id,
        model_name=mv.name,
        model_version=mv.version,
        alias=cfg.registry.alias,
        metrics=metrics,
        datasets=dict(prep["datasets"]),
        features=list(data.features),
        rows=dict(data.rows),
        holdout_start=_iso_us(data.holdout_start_us),
        train_end=_iso_us(data.train_end_us),
        export_check=check.to_dict(),
        output_dir=str(out),
        onnx_path=str(onnx_path),
        holdout_path=str(holdout_path),
        profile_path=str(profile_path),
        world_size=dist.world,
        weights_sha256=digest,
        seconds=round(time.monotonic() - t0, 3),
        history=history,
    )
    (out / RESULT_FILE).write_text(json.dumps(result.to_dict(), indent=1, allow_nan=True) + "\n")
    run.log_artifact(out / RESULT_FILE)
    run.__exit__(None, None, None)
    return result


# -- entry points ----------------------------------------------------------------------------------------


def train(
    config: TrainConfig | str | os.PathLike | dict,
    *,
    nproc: int = 1,
    progress: bool = True,
    output_dir: str | os.PathLike | None = None,
    db: str | None = None,
    artifacts: str | None = None,
) -> TrainResult:
    """Run the whole pipeline and return its result.  `nproc` > 1 runs it under torchrun with that
    many processes (DDP on gloo) and reads rank 0's result back."""
    cfg = load_config(config).with_overrides(db=db, artifacts=artifacts)
    if not isinstance(nproc, int) or nproc < 1:
        raise InvalidInput(f"nproc must be a positive integer, not {nproc!r}")
    if nproc == 1:
        result = run_pipeline(cfg, progress=progress, output_dir=output_dir)
        assert result is not None
        return result
    return launch(cfg, nproc=nproc, progress=progress, output_dir=output_dir)


def preflight(cfg: TrainConfig) -> None:
    """The checks that need the data but not the work: the repository loads, the service exists,
    the label file has the columns it needs (ConfigError naming the field otherwise)."""
    from parity.features.definitions import FeatureRepository

    repo = FeatureRepository.load(cfg.features.repository)
    _, _, keys, fields = _service_plan(repo, cfg.features.service, cfg.source)
    _label_table(cfg, keys, fields, schema_only=True)


def launch(cfg: TrainConfig, *, nproc: int, progress: bool = True, output_dir: str | os.PathLike | None = None) -> TrainResult:
    """Run the pipeline with `nproc` processes under torchrun (`torch.distributed.run --standalone`)."""
    import yaml

    preflight(cfg)  # a bad config fails here, once, naming the field -- not in every rank

    out = Path(output_dir).resolve() if output_dir is not None else (cfg.output_dir.resolve() if cfg.output_dir else default_output_dir(cfg))
    out.mkdir(parents=True, exist_ok=True)
    resolved = out / "config.resolved.yaml"
    resolved.write_text(yaml.safe_dump(cfg.to_params(), sort_keys=False))
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", str(nproc),
        "-m", "parity.training.pipeline", "--config", str(resolved), "--output-dir", str(out), "--quiet-result",
    ]  # fmt: skip
    if not progress:
        cmd.append("--no-progress")
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(cfg.training.threads))
    (out / RESULT_FILE).unlink(missing_ok=True)
    rc = subprocess.call(cmd, env=env)
    result_file = out / RESULT_FILE
    if rc != 0 or not result_file.exists():
        raise TrainingFailed(f"distributed training with {nproc} processes failed (torchrun exit status {rc}); its output above says why")
    return TrainResult.from_dict(json.loads(result_file.read_text()))


def score_holdout(model_path: str | os.PathLike, holdout_path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(y_true, scores) of another ONNX model (e.g. the champion, `Registry.fetch`ed) on a run's
    holdout rows, in the file's order: the same features the challenger was scored on, so the two
    can go to the promotion gate as paired predictions."""
    import pyarrow.parquet as pq

    from parity.training.export import onnx_predict

    table = pq.read_table(holdout_path)
    meta = table.schema.metadata or {}
    raw = meta.get(HOLDOUT_FEATURES_KEY.encode())
    if raw is None:
        raise InvalidInput(f"{holdout_path} is not a holdout file written by parity train (no {HOLDOUT_FEATURES_KEY} metadata)")
    features = json.loads(raw)
    x = np.empty((table.num_rows, len(features)), dtype=np.float32)
    for j, name in enumerate(features):
        x[:, j] = table.column(name).to_numpy(zero_copy_only=False)
    return table.column("y_true").to_numpy(), onnx_predict(Path(model_path), x).reshape(-1)


def summary(result: TrainResult) -> str:
    lines = [f"registered {result.ref}" + (f" (@{result.alias})" if result.alias else "") + f" from run {result.run_id}"]
    lines.append("holdout: " + ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items()))
    lines.append(
        f"rows: {result.rows['train']:,} training, {result.rows['holdout']:,} holdout (from {result.holdout_start}); "
        f"dropped for missing features: {result.rows['dropped_missing_train'] + result.rows['dropped_missing_holdout']:,}"
    )
    lines.append(f"onnx vs torch: max |diff| {result.export_check['max_abs_diff']:.3g}; processes: {result.world_size}; {result.seconds:.1f}s")
    lines.append(f"outputs: {result.output_dir}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`python -m parity.training.pipeline --config FILE` (what torchrun starts on every rank)."""
    ap = argparse.ArgumentParser(prog="python -m parity.training.pipeline", description="the Parity training pipeline (one rank)")
    ap.add_argument("--config", required=True)
    ap.add_argument("--output-dir")
    ap.add_argument("--db")
    ap.add_argument("--artifacts")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--quiet-result", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    try:
        cfg = load_config(a.config).with_overrides(db=a.db, artifacts=a.artifacts)
        result = run_pipeline(cfg, progress=not a.no_progress, output_dir=a.output_dir)
    except ConfigError as e:
        print(f"parity train: {e.message}", file=sys.stderr)
        return 2
    except ParityError as e:
        print(f"parity train: {e.message}", file=sys.stderr)
        return 1
    if result is not None and not a.quiet_result:
        print(json.dumps(result.to_dict(), indent=1) if a.json else summary(result))
    return 0


if __name__ == "__main__":
    code = main()
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        # a rank under torchrun: everything is written and the process group destroyed; leave
        # without running C++ static destructors, which can abort ("terminate called without an
        # active exception") when a runtime's worker threads are torn down at interpreter exit
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)
