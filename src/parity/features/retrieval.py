"""Online retrieval: entity keys (and request values) in, feature columns with statuses and ages
out -- the online twin of `offline.get_historical_features`.

Decided once per feature set (`plan`): which stored views to read, with which key columns, and
which on-demand views to compute.  Per call: one `OnlineStore.read` for every stored view of the
call (one round trip), then the on-demand transforms through `apply_transform`, over columns
named `<view>__<feature>` and `<request source>__<field>` exactly as the offline join builds them.
An entity row where an on-demand input is null gets null on-demand features, as offline.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from parity.errors import InvalidInput
from parity.features.definitions import DTYPES, FeatureRepository, FeatureService, FeatureView, OnDemandFeatureView, apply_transform
from parity.features.online.base import OnlineStore, Status

_STATUS_NAMES = {int(s): s.name for s in Status}


@dataclass
class OnlineFeatures:
    """One column per requested feature, in the requested order, with its nulls, per-row status
    (PRESENT, NOT_FOUND, EXPIRED; on-demand features take the worst status of their inputs) and
    the age of the stored value in ns (-1 where not found; on-demand: the oldest input)."""

    names: list[str]  # "view__feature" per requested feature
    values: dict[str, np.ndarray]
    nulls: dict[str, np.ndarray]
    status: dict[str, np.ndarray]  # int8, Status values
    age_ns: dict[str, np.ndarray]
    rows: int

    def status_names(self, name: str) -> list[str]:
        return [_STATUS_NAMES[int(s)] for s in self.status[name]]


@dataclass
class _Plan:
    refs: list[tuple[str, str]]
    stored: list[FeatureView]  # views to read (requested or feeding an on-demand view)
    on_demand: list[OnDemandFeatureView]
    keys: dict[str, list[tuple[str, str]]]  # view -> [(key name, key dtype)] in the view's order
    request_fields: dict[str, list[tuple[str, str]]]  # request source -> [(field, dtype)]


class FeatureServer:
    def __init__(self, repo: FeatureRepository, store: OnlineStore) -> None:
        self.repo = repo
        self.store = store
        self._plans: dict[object, _Plan] = {}

    # -- planning ---------------------------------------------------------------------------------

    def plan(self, features: FeatureService | str | list[str] | tuple[str, ...]) -> _Plan:
        key = features if isinstance(features, str) else (features.name if isinstance(features, FeatureService) else tuple(features))
        cached = self._plans.get(key)
        if cached is not None:
            return cached
        repo = self.repo
        if isinstance(features, (str, FeatureService)) and (not isinstance(features, str) or features in repo.services):
            refs = repo.resolve(features)
        else:
            names = [features] if isinstance(features, str) else list(features)
            refs = repo.resolve(FeatureService("request", tuple(names)))
        stored: dict[str, FeatureView] = {}
        on_demand: dict[str, OnDemandFeatureView] = {}
        request_fields: dict[str, list[tuple[str, str]]] = {}
        for view_name, _ in refs:
            if view_name in repo.views:
                stored[view_name] = repo.views[view_name]
            else:
                odv = repo.on_demand[view_name]
                on_demand[view_name] = odv
                for s in odv.sources:
                    if s in repo.views:
                        stored[s] = repo.views[s]
                    else:
                        request_fields[s] = [(f.name, f.dtype) for f in repo.request_sources[s].schema]
        keys = {
            name: [(k.name, k.dtype) for e in view.entities for k in repo.entities[e].join_keys]
            for name, view in stored.items()
        }
        plan = _Plan(refs, list(stored.values()), list(on_demand.values()), keys, request_fields)
        self._plans[key] = plan
        return plan

    # -- retrieval --------------------------------------------------------------------------------

    def get_online_features(
        self,
        features: FeatureService | str | list[str],
        entities: dict[str, object],
        request_values: dict[str, object] | None = None,
        now_ns: int | None = None,
    ) -> OnlineFeatures:
        """`entities`: join key name -> column (one value per row); `request_values`: field name ->
        column, for on-demand views' request sources."""
        plan = self.plan(features)
        rows = _rows(entities, request_values)
        if now_ns is None:
            now_ns = time.time_ns()
        requests = []
        for view in plan.stored:
            cols = []
            for name, dtype in plan.keys[view.name]:
                if name not in entities:
                    raise InvalidInput(f"feature view {view.name!r} needs entity key {name!r}; the request has {sorted(entities)}")
                cols.append(_key_column(name, dtype, entities[name]))
            keys = cols[0] if len(cols) == 1 and cols[0].dtype != object else list(zip(*[c.tolist() for c in cols]))
            requests.append((view, keys))
        results = {r.view.name: r for r in self.store.read(requests, now_ns)} if requests else {}
        out = OnlineFeatures([], {}, {}, {}, {}, rows)
        odv_cache: dict[str, tuple] = {}
        for view_name, feat in plan.refs:
            name = f"{view_name}__{feat}"
            out.names.append(name)
            if view_name in results:
                r = results[view_name]
                out.values[name] = r.values[feat]
                out.nulls[name] = r.nulls[feat]
                out.status[name] = r.status
                out.age_ns[name] = r.age_ns
            else:
                if view_name not in odv_cache:
                    odv_cache[view_name] = self._on_demand(self.repo.on_demand[view_name], results, request_values or {}, rows)
                values, nulls, status, age = odv_cache[view_name]
                out.values[name] = values[feat]
                out.nulls[name] = nulls
                out.status[name] = status
                out.age_ns[name] = age
        return out

    def _on_demand(self, odv: OnDemandFeatureView, results: dict, request_values: dict, rows: int):
        repo = self.repo
        columns: dict[str, np.ndarray] = {}
        incomplete = np.zeros(rows, dtype=bool)
        status = np.full(rows, Status.PRESENT, dtype=np.int8)
        age = np.zeros(rows, dtype=np.int64)
        for s in odv.sources:
            if s in repo.views:
                r = results[s]
                for f in repo.views[s].feature_names:
                    columns[f"{s}__{f}"] = r.values[f]
                    incomplete |= r.nulls[f]
                status = np.maximum(status, r.status)
                age = np.maximum(age, r.age_ns)
            else:
                for fname, dtype in ((f.name, f.dtype) for f in repo.request_sources[s].schema):
                    if fname not in request_values:
                        raise InvalidInput(f"on-demand feature view {odv.name!r} needs request value {fname!r} (request source {s!r})")
                    col = _typed(fname, dtype, request_values[fname], rows)
                    columns[f"{s}__{fname}"] = col
        complete = ~incomplete
        values = {f.name: np.zeros(rows, dtype=DTYPES[f.dtype]) if f.dtype != "string" else np.full(rows, "", dtype=object) for f in odv.schema}
        n = int(complete.sum())
        if n:
            part = {k: v[complete] for k, v in columns.items()} if n < rows else columns
            computed = apply_transform(odv.name, odv.transform, part, odv.schema, n)
            for k, v in computed.items():
                if n < rows:
                    values[k][complete] = v
                else:
                    values[k] = v
        return values, incomplete, status, age


def _rows(entities: dict, request_values: dict | None) -> int:
    lengths = {len(np.asarray(v, dtype=object) if isinstance(v, (list, tuple)) else np.atleast_1d(v)) for v in entities.values()}
    if request_values:
        lengths |= {len(np.atleast_1d(np.asarray(v, dtype=object) if isinstance(v, (list, tuple)) else v)) for v in request_values.values()}
    if len(lengths) > 1:
        raise InvalidInput(f"entity and request columns have different lengths: {sorted(lengths)}")
    if not lengths:
        raise InvalidInput("the request names no entities")
    return lengths.pop()


def _key_column(name: str, dtype: str, values) -> np.ndarray:
    if dtype == "int64":
        arr = np.atleast_1d(np.asarray(values))
        if arr.dtype.kind not in "iu":
            raise InvalidInput(f"entity key {name!r} is int64; got {arr.dtype} values")
        return arr.astype(np.int64)
    arr = np.atleast_1d(np.asarray(values, dtype=object))
    out = np.empty(len(arr), dtype=object)
    for i, v in enumerate(arr):
        if isinstance(v, bytes):
            v = v.decode("utf-8")
        if not isinstance(v, str):
            raise InvalidInput(f"entity key {name!r} is a string; got {type(v).__name__} {v!r}")
        out[i] = v
    return out


def _typed(name: str, dtype: str, values, rows: int) -> np.ndarray:
    want = DTYPES[dtype]
    if dtype == "string":
        arr = np.atleast_1d(np.asarray(values, dtype=object))
        arr = np.array([v.decode("utf-8") if isinstance(v, bytes) else v for v in arr], dtype=object)
    else:
        arr = np.atleast_1d(np.asarray(values))
        if arr.dtype != want:
            if not np.can_cast(arr.dtype, want, casting="same_kind"):
                raise InvalidInput(f"request value {name!r} is {dtype}; got {arr.dtype}")
            arr = arr.astype(want)
    if len(arr) != rows:
        raise InvalidInput(f"request value {name!r} has {len(arr)} values for {rows} rows")
    return arr


__all__ = ["FeatureServer", "OnlineFeatures"]
