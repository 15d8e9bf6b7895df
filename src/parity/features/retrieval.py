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
from parity.features.online.base import OnlineStore, Status, build_result, relay

_STATUS_NAMES = {int(s): s.name for s in Status}


@dataclass
class OnlineFeatures:
    """One column per requested feature, in the requested order, with its nulls, per-row status
    (PRESENT, NOT_FOUND, EXPIRED; on-demand features take the worst status of their inputs) and
    the age of the stored value in ns (-1 where not found; on-demand: the oldest input).

    The arrays of one call may be shared: the features of one view share their status and age
    arrays, and where nothing of a view is null its features share one read-only all-False null
    column (also across calls).  A feature's value column is its own (a row of a per-call block)."""

    names: list[str]  # "view__feature" per requested feature
    values: dict[str, np.ndarray]
    nulls: dict[str, np.ndarray]
    status: dict[str, np.ndarray]  # int8, Status values
    age_ns: dict[str, np.ndarray]
    rows: int
    clean: bool = False  # True: no value of any feature is null (every null column is all False)

    def status_names(self, name: str) -> list[str]:
        return [_STATUS_NAMES[int(s)] for s in self.status[name]]


@dataclass
class _Plan:
    refs: list[tuple[str, str]]
    stored: list[FeatureView]  # views to read (requested or feeding an on-demand view)
    on_demand: list[OnDemandFeatureView]
    keys: dict[str, list[tuple[str, str]]]  # view -> [(key name, key dtype)] in the view's order
    request_fields: dict[str, list[tuple[str, str]]]  # request source -> [(field, dtype)]
    # decided once, used per call:
    names: tuple[str, ...] = ()  # "view__feature" per ref, in order
    # per stored view: (output names, the same as a dict's keys -- dict.fromkeys copies those
    # presized --, the view's feature indices they take, None: all of them in schema order)
    outputs: tuple[tuple[tuple[str, ...], dict, tuple[int, ...] | None], ...] = ()
    on_demand_refs: tuple[tuple[str, str, str], ...] = ()  # (output name, on-demand view, feature), in ref order
    in_order: bool = True  # stored views' outputs, then the on-demand ones, come out in ref order


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
        names = tuple(f"{v}__{f}" for v, f in refs)
        outputs = []
        for view in stored.values():
            mine = [(f"{v}__{f}", f) for v, f in refs if v == view.name]
            idx = tuple(view.feature_names.index(f) for _, f in mine)
            out = tuple(n for n, _ in mine)
            outputs.append((out, dict.fromkeys(out), None if idx == tuple(range(len(view.feature_names))) else idx))
        on_demand_refs = tuple((f"{v}__{f}", v, f) for v, f in refs if v not in stored)
        assembled = [n for out, _, _ in outputs for n in out] + [n for n, _, _ in on_demand_refs]
        plan = _Plan(
            refs, list(stored.values()), list(on_demand.values()), keys, request_fields,
            names=names, outputs=tuple(outputs), on_demand_refs=on_demand_refs, in_order=assembled == list(names),
        )  # fmt: skip
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
        plan, rows, requests, now_ns = self._requests(features, entities, request_values, now_ns)
        read = self.store.read(requests, now_ns) if requests else []
        return self._assemble(plan, rows, read, request_values)

    async def get_online_features_async(
        self,
        features: FeatureService | str | list[str],
        entities: dict[str, object],
        request_values: dict[str, object] | None = None,
        now_ns: int | None = None,
    ) -> OnlineFeatures:
        """`get_online_features` for an event loop: the store is read without blocking the loop
        (`OnlineStore.read_async`: Redis on the loop's own connection)."""
        plan, rows, requests, now_ns = self._requests(features, entities, request_values, now_ns)
        read = await self.store.read_async(requests, now_ns) if requests else []
        return self._assemble(plan, rows, read, request_values)

    def start_online_features(self, features, entities: dict, request_values: dict | None, now_ns: int, done) -> bool:
        """`get_online_features_async` without a coroutine, for the request path: True when the
        read was sent (`done(features, None)` or `done(None, error)` follows, on the loop), False
        when the store has no such way now (use `get_online_features_async`).  Invalid input
        raises here, before anything is sent."""
        start = getattr(self.store, "read_start", None)
        if start is None:
            return False
        plan, rows, requests, now_ns = self._requests(features, entities, request_values, now_ns)
        if not requests:
            return False

        return start(requests, now_ns, relay(done, lambda read: self._assemble(plan, rows, read, request_values)))

    def from_blobs(self, plan: _Plan, rows: int, blobs: list, now_ns: int) -> OnlineFeatures:
        """`get_online_features`'s answer from the blobs of one read of `plan.stored`, in order
        (no request values): the request path's general way when it reads blobs itself."""
        return self._assemble(plan, rows, [build_result(view, b, now_ns) for view, b in zip(plan.stored, blobs)], None)

    def _requests(self, features, entities: dict, request_values: dict | None, now_ns: int | None):
        plan = self.plan(features)
        rows = request_rows(entities, request_values)
        if now_ns is None:
            now_ns = time.time_ns()
        requests = [(view, view_keys(view.name, plan.keys[view.name], entities)) for view in plan.stored]
        return plan, rows, requests, now_ns

    def _assemble(self, plan: _Plan, rows: int, read: list, request_values: dict | None) -> OnlineFeatures:
        values: dict[str, np.ndarray] = {}
        nulls: dict[str, np.ndarray] = {}
        status: dict[str, np.ndarray] = {}
        ages: dict[str, np.ndarray] = {}
        clean = True
        for r, (names, keyset, idx) in zip(read, plan.outputs):
            if not names:
                continue  # read only for an on-demand view
            decoded = r.columns
            if decoded is not None:
                vl, nl = decoded.value_list(), decoded.null_list()
            else:  # a store that hands back plain dicts
                vl = [r.values[f] for f in r.view.feature_names]
                nl = [r.nulls[f] for f in r.view.feature_names]
            if nl is not None:
                clean = False
            if idx is not None:
                vl = [vl[i] for i in idx]
                nl = None if nl is None else [nl[i] for i in idx]
            if not values:  # the first view: make the dicts (no copy through update)
                values = dict(zip(names, vl))
                nulls = _no_null_dict(names, decoded.no_nulls()) if nl is None else dict(zip(names, nl))
                status = dict.fromkeys(keyset, r.status)
                ages = dict.fromkeys(keyset, r.age_ns)
                continue
            values.update(zip(names, vl))
            if nl is None:
                nulls.update(_no_null_dict(names, decoded.no_nulls()))
            else:
                nulls.update(zip(names, nl))
            status.update(dict.fromkeys(keyset, r.status))
            ages.update(dict.fromkeys(keyset, r.age_ns))
        if plan.on_demand_refs:
            results = {r.view.name: r for r in read}
            odv_cache: dict[str, tuple] = {}
            for name, view_name, feat in plan.on_demand_refs:
                if view_name not in odv_cache:
                    odv_cache[view_name] = self._on_demand(self.repo.on_demand[view_name], results, request_values or {}, rows)
                    if clean and odv_cache[view_name][1].any():
                        clean = False
                v, n, st, ag = odv_cache[view_name]
                values[name] = v[feat]
                nulls[name] = n
                status[name] = st
                ages[name] = ag
        if not plan.in_order:
            values, nulls, status, ages = ({n: d[n] for n in plan.names} for d in (values, nulls, status, ages))
        return OnlineFeatures(list(plan.names), values, nulls, status, ages, rows, clean)

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


_NO_NULL_DICTS: dict[tuple, dict] = {}


def _no_null_dict(names: tuple[str, ...], column: np.ndarray) -> dict[str, np.ndarray]:
    """{name: column} for every name, where `column` is a shared read-only all-False column: a copy
    of a dict kept per (names, column) -- cheaper than building it."""
    key = (names, id(column))
    hit = _NO_NULL_DICTS.get(key)
    if hit is None or next(iter(hit.values())) is not column:
        if len(_NO_NULL_DICTS) >= 256:
            _NO_NULL_DICTS.clear()
        hit = _NO_NULL_DICTS[key] = dict.fromkeys(names, column)
    return hit.copy()


def _length(v) -> int:
    if isinstance(v, (list, tuple)) or (isinstance(v, np.ndarray) and v.ndim):
        return len(v)  # the length of its first axis, as np.asarray(v, dtype=object) has it
    return len(np.atleast_1d(v))


def request_rows(entities: dict, request_values: dict | None) -> int:
    if len(entities) == 1 and not request_values:  # one key column
        for v in entities.values():
            return _length(v)
    lengths = {_length(v) for v in entities.values()}
    if request_values:
        lengths |= {_length(v) for v in request_values.values()}
    if len(lengths) > 1:
        raise InvalidInput(f"entity and request columns have different lengths: {sorted(lengths)}")
    if not lengths:
        raise InvalidInput("the request names no entities")
    return lengths.pop()


def view_keys(view: str, keys: list[tuple[str, str]], entities: dict):
    """One view's entity keys (what `OnlineStore.read` takes) from the request's key columns:
    `keys` is the view's [(key name, dtype)] (`_Plan.keys`)."""
    cols = []
    for name, dtype in keys:
        if name not in entities:
            raise InvalidInput(f"feature view {view!r} needs entity key {name!r}; the request has {sorted(entities)}")
        cols.append(_key_column(name, dtype, entities[name]))
    return cols[0] if len(cols) == 1 and cols[0].dtype != object else list(zip(*[c.tolist() for c in cols]))


def _key_column(name: str, dtype: str, values) -> np.ndarray:
    if dtype == "int64" and isinstance(values, np.ndarray) and values.dtype == np.int64 and values.ndim == 1:
        return values
    if dtype == "int64":
        arr = np.atleast_1d(np.asarray(values))
        if arr.dtype.kind not in "iu":
            raise InvalidInput(f"entity key {name!r} is int64; got {arr.dtype} values")
        return arr if arr.dtype == np.int64 else arr.astype(np.int64)
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
