"""The skew monitor: a sample of the feature vectors the server served, checked later against the
training path.

Serving (`ServedFeatureLog`): for a sampled share of the rows a feature-joined model is given, the
server logs the entity keys, the request values, the time of the read (microseconds) and the
feature values it served, in Parquet files under `<dir>/<service>/` (written by a background
flusher, each file complete or absent: temp file + rename).  Sampling and logging never fail a
request: errors are counted and logged.

Checking (`verify`, `parity features verify`): the logged rows become an entity frame (keys, the
read time as the event timestamp, the request values), the offline point-in-time join recomputes
the same service's features for it, and every served value is compared with the recomputed one bit
for bit (NaN equals NaN; a null equals a null).  The report gives the mismatch rate per feature
and examples.  A mismatch means the two paths disagree: a transform changed on one side only, a
different repository or data on one side, or an online store that lags the sources (an entity
materialized before its latest source rows were written).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger("parity.features.skew")

TS = "served_at_us"


class ServedFeatureLog:
    def __init__(self, directory: str | os.PathLike, sample_rate: float = 0.01, *, flush_rows: int = 5000, flush_secs: float = 5.0, seed: int | None = None):
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError("sample_rate must be within [0, 1]")
        self.dir = Path(directory)
        self.rate = sample_rate
        self.flush_rows = flush_rows
        self.flush_secs = flush_secs
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._buffers: dict[str, list[dict]] = {}
        self._rows = 0
        self.counts = {"logged": 0, "errors": 0, "files": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._flusher, name="parity-feature-log", daemon=True)
        self._thread.start()

    def record(self, service: str, entities: dict, request_values: dict, got, now_ns: int) -> None:
        """Log the sampled rows of one served batch (`got`: the OnlineFeatures of the read)."""
        try:
            rows = got.rows
            pick = np.flatnonzero(self._rng.random(rows) < self.rate) if self.rate < 1.0 else np.arange(rows)
            if not len(pick):
                return
            cols: dict[str, object] = {TS: np.full(len(pick), now_ns // 1000, dtype=np.int64)}
            for name, arr in list(entities.items()) + list((request_values or {}).items()):
                a = np.asarray(arr).reshape(-1)[pick]
                cols[name] = [v.decode("utf-8") if isinstance(v, bytes) else v for v in a.tolist()] if a.dtype == object else a
            for name in got.names:
                values = np.asarray(got.values[name])[pick]
                nulls = np.asarray(got.nulls[name])[pick]
                cols[name] = [None if n else v for v, n in zip(values.tolist(), nulls.tolist())]
            with self._lock:
                self._buffers.setdefault(service, []).append(cols)
                self._rows += len(pick)
                self.counts["logged"] += len(pick)
                full = self._rows >= self.flush_rows
            if full:
                self.flush()
        except Exception:  # noqa: BLE001 - the log never fails a request
            self.counts["errors"] += 1
            log.exception("logging served features failed")

    def _flusher(self) -> None:
        while not self._stop.wait(self.flush_secs):
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        with self._lock:
            buffers, self._buffers, self._rows = self._buffers, {}, 0
        for service, parts in buffers.items():
            try:
                table = pa.concat_tables([pa.table(p) for p in parts], promote_options="default")
                target = self.dir / service
                target.mkdir(parents=True, exist_ok=True)
                name = f"served-{time.time_ns()}-{os.getpid()}-{uuid.uuid4().hex[:6]}.parquet"
                tmp = target / f".{name}.tmp"
                pq.write_table(table, tmp)
                os.replace(tmp, target / name)
                self.counts["files"] += 1
            except Exception:  # noqa: BLE001
                self.counts["errors"] += 1
                log.exception("writing the served-feature log of %s failed", service)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.flush()


@dataclass
class SkewReport:
    service: str
    rows: int
    mismatched_rows: int
    features: dict[str, dict] = field(default_factory=dict)  # name -> {"mismatches", "rate", "examples"}

    @property
    def mismatch_rate(self) -> float:
        return self.mismatched_rows / self.rows if self.rows else 0.0

    def to_dict(self) -> dict:
        return {"service": self.service, "rows": self.rows, "mismatched_rows": self.mismatched_rows, "mismatch_rate": self.mismatch_rate, "features": self.features}


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) and isinstance(b, float):
        return np.float64(a).tobytes() == np.float64(b).tobytes() or (a != a and b != b)
    return a == b


def verify(repo, log_dir: str | os.PathLike, service: str, *, examples: int = 5) -> SkewReport:
    """Recompute the logged served rows of `service` through the offline path and compare."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    from parity.features.offline import get_historical_features

    directory = Path(log_dir) / service
    files = sorted(directory.glob("served-*.parquet")) if directory.is_dir() else []
    if not files:
        return SkewReport(service, 0, 0)
    served = ds.dataset([str(f) for f in files], format="parquet").to_table()
    names = [f"{v}__{f}" for v, f in repo.resolve(service)]
    keys = [c for c in served.column_names if c != TS and c not in names]
    entity = {c: served.column(c) for c in keys}
    entity["event_timestamp"] = pa.array(served.column(TS).to_numpy(), pa.timestamp("us", tz="UTC"))
    offline = get_historical_features(repo, pa.table(entity), service, output="arrow", full_feature_names=True, apply_defaults=False)
    report = SkewReport(service, served.num_rows, 0)
    bad_rows = np.zeros(served.num_rows, dtype=bool)
    for name in names:
        online_vals = served.column(name).to_pylist() if name in served.column_names else [None] * served.num_rows
        offline_vals = offline.column(name).to_pylist()
        bad = [i for i, (a, b) in enumerate(zip(online_vals, offline_vals)) if not _same(a, b)]
        bad_rows[bad] = True
        report.features[name] = {
            "mismatches": len(bad),
            "rate": len(bad) / served.num_rows,
            "examples": [
                {**{k: served.column(k)[i].as_py() for k in keys}, "served_at_us": served.column(TS)[i].as_py(), "served": online_vals[i], "training": offline_vals[i]}
                for i in bad[:examples]
            ],
        }
    report.mismatched_rows = int(bad_rows.sum())
    return report


__all__ = ["ServedFeatureLog", "SkewReport", "verify"]
