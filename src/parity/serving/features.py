"""Feature-joined inference: a model whose config names a feature service gets its input tensor
from the online store, for a whole batch at once.

    DIR/<model>/config.yaml
        features:
          service: fraud_detection   # a feature service of the server's --feature-repository
          input: x                   # the model tensor it fills (default: the model's only input)

Decided once, when a version loads (`FeatureStage`): the service's read plan, the tensor layout,
and what clients send instead of the tensor -- one input per entity join key of the service's
stored views (INT64 or BYTES, named after the key, shape [batch, 1]), one per request-time field
of its on-demand views (named after the field, in the field's datatype), and the model's other
inputs unchanged.  That signature is what ModelMetadata and ModelConfig publish, so tritonclient
and perf_analyzer send entity ids as ordinary tensors.

Per batch: one online-store read for every entity of every request in the batch, sent from the
event loop without blocking it (Redis: on the loop's own connection, the reply handled by a
callback), the on-demand transforms, the features written into one [rows, N] array in the
service's order and the model input's datatype, then the model.  A service of stored features
only, on Redis, skips the per-feature columns: each view's values are copied from its blobs into
the array in a few slices (`codec.Direct`) whenever the whole batch is found, non-null and within
its TTL; any other batch is decoded the general way (the same bits either way).

A row with a missing feature (entity not found, value expired by TTL, or a null value) follows the
service's `on_missing` policy: "reject" fails the request that sent the row with NOT_FOUND naming
the entity and the view (the other requests of the batch are answered); "default" uses the
service's declared default for every missing feature.  Both are counted in
`parity_feature_missing_rows_total{policy}`.
"""

from __future__ import annotations

import time

import numpy as np

from parity.config import DATATYPES, ModelConfig, TensorSpec
from parity.errors import ConfigError, NotFound
from parity.features.definitions import FeatureService
from parity.features.online import codec
from parity.features.online.base import Status, entity_ids, is_expired, is_expired_one, relay, ttl_us
from parity.features.retrieval import FeatureServer, request_rows, view_keys
from parity.serving.datatypes import DTYPES

# feature dtype -> the datatype of a client input carrying it
_WIRE = {
    "bool": "BOOL", "int32": "INT32", "int64": "INT64", "float32": "FP32", "float64": "FP64", "string": "BYTES",
}  # fmt: skip
_NUMERIC = {d for d in DATATYPES if d not in ("BYTES", "BOOL")}


class FeatureStage:
    """One feature-joined model version's feature plan, built at load."""

    def __init__(self, config: ModelConfig, server: FeatureServer):
        spec = config.features
        assert spec is not None
        repo = server.repo
        where = f"model '{config.name}' config.yaml"
        service = repo.services.get(spec.service)
        if service is None:
            raise ConfigError(
                where, "features.service", f"'{spec.service}' is not a feature service of the feature repository; known: {sorted(repo.services)}"
            )
        self.server = server
        self.service: FeatureService = service
        self.model = config.name
        plan = server.plan(service)
        self.names = [f"{v}__{f}" for v, f in plan.refs]
        width = len(self.names)

        # the model tensor the features fill
        model_inputs = config.model_inputs or config.inputs
        target = next(t for t in model_inputs if t.name == spec.input)
        if target.datatype not in _NUMERIC:
            raise ConfigError(where, "features.input", f"input '{target.name}' is {target.datatype}; it must be a numeric tensor to take features")
        if len(target.shape) != 1 or target.shape[0] not in (-1, width):
            raise ConfigError(
                where, "features.input",
                f"input '{target.name}' has shape {list(target.shape)} (without the batch dimension) but feature service "
                f"'{service.name}' has {width} features; the model must take [batch, {width}]",
            )  # fmt: skip
        self.dtype = DTYPES[target.datatype]
        self._nan_fill = self.dtype.kind == "f"
        dtypes = _feature_dtypes(repo, plan.refs)
        for (view, feat), dt in zip(plan.refs, dtypes):
            if dt == "string":
                raise ConfigError(
                    where, "features.service",
                    f"feature '{view}:{feat}' of service '{service.name}' is a string; a model tensor takes numbers "
                    "(hash or bucketize it in the view's transform)",
                )  # fmt: skip

        # what clients send instead of the tensor
        client: list[TensorSpec] = []
        seen: dict[str, str] = {}

        def add(name: str, datatype: str, what: str) -> None:
            if name in seen:
                if seen[name] != datatype:
                    raise ConfigError(where, "features.service", f"'{name}' is both {seen[name]} and {datatype} in service '{service.name}'")
                return
            seen[name] = datatype
            client.append(TensorSpec(name, datatype, (1,)))
            self._sources.append((what, name))

        self._sources: list[tuple[str, str]] = []  # ("key" | "value", name) per client input
        for view in plan.stored:
            for key, dtype in plan.keys[view.name]:
                add(key, "INT64" if dtype == "int64" else "BYTES", "key")
        for fields in plan.request_fields.values():
            for fname, dtype in fields:
                add(fname, _WIRE[dtype], "value")
        self._model_order: list[int] = []  # per model input: -1 = the features, else a client input index
        for t in model_inputs:
            if t.name == target.name:
                self._model_order.append(-1)
                continue
            if t.name in seen:
                raise ConfigError(where, "inputs", f"model input '{t.name}' has the name of an entity key or request value of service '{service.name}'; rename one")
            seen[t.name] = t.datatype
            self._model_order.append(len(client))
            client.append(t)
            self._sources.append(("model", t.name))
        self.client_inputs = tuple(client)
        self.model_inputs = tuple(model_inputs)
        self._keys = [(i, n) for i, (what, n) in enumerate(self._sources) if what == "key"]
        self._values = [(i, n) for i, (what, n) in enumerate(self._sources) if what == "value"]
        self._start_read = getattr(server, "start_online_features", None)  # the callback read, where there is one
        self._ref_views = [v for v, _ in plan.refs]
        self._view_keys = {v.name: [k for k, _ in plan.keys[v.name]] for v in plan.stored}
        self._on_demand = {o.name: o for o in plan.on_demand}
        self.log = None  # a parity.features.skew.ServedFeatureLog: samples of what was served
        self._runs: list[tuple[int, int, list[str]]] = []  # (first, end, names): features of one dtype in a row
        for j, dt in enumerate(dtypes):
            if self._runs and dtypes[self._runs[-1][0]] == dt:
                first, _, names = self._runs[-1]
                self._runs[-1] = (first, j + 1, names + [self.names[j]])
            else:
                self._runs.append((j, j + 1, [self.names[j]]))
        self._plan = plan
        self._view_keys_of = [(view.name, plan.keys[view.name]) for view in plan.stored]
        # the store's request-path blob reader and the per-view copies, where the direct copy applies
        self._reader, self._direct = self._direct_plan(server, plan)
        # every stored view keyed by the same one INT64 key: its client input, sent as ints
        self._int_key: int | None = None
        shared = {tuple(plan.keys[v.name]) for v in plan.stored}
        if len(shared) == 1 and len(self._keys) == 1:
            (only,) = shared
            if len(only) == 1 and only[0][1] == "int64":
                self._int_key = self._keys[0][0]
        self.defaults: np.ndarray | None = None
        if service.on_missing == "default":
            self.defaults = np.array([service.defaults[f"{v}:{f}"] for v, f in plan.refs], dtype=self.dtype)

    def _direct_plan(self, server, plan):
        """(the store's blob reader, per stored view (codec.Direct, TTL in us)): the blobs' values
        copied straight into the input matrix on the request path, where the service takes stored
        features only and the store hands the request path its blobs (Redis).  (None, None): the
        general path always."""
        if plan.on_demand or plan.request_fields or not plan.stored:
            return None, None
        make_reader = getattr(server.store, "blob_reader", None)
        reader = make_reader(plan.stored) if make_reader is not None else None
        if reader is None:
            return None, None
        direct = []
        covered: list[int] = []
        for view in plan.stored:
            columns = [j for j, (v, _) in enumerate(plan.refs) if v == view.name]
            features = [view.feature_names.index(plan.refs[j][1]) for j in columns]
            direct.append((codec.Direct(codec.layout(view), features, columns, self.dtype), ttl_us(view)))
            covered += columns
        if sorted(covered) != list(range(len(self.names))):
            return None, None
        return reader, tuple(direct)

    def client_config(self, config: ModelConfig) -> ModelConfig:
        from dataclasses import replace

        return replace(config, inputs=self.client_inputs, model_inputs=self.model_inputs)

    def runner_config(self, config: ModelConfig) -> ModelConfig:
        from dataclasses import replace

        return replace(config, inputs=self.model_inputs, model_inputs=())

    def assemble(self, inputs: list[np.ndarray]) -> tuple[list[np.ndarray], "Missing | None", int, int]:
        """The model's inputs for a batch of client inputs (in `client_inputs` order), the rows
        to reject (None: none), the number of rows given defaults, and the time taken (ns).
        Reads the store synchronously: call it off the event loop (`fetch` is the loop's way)."""
        t0, entities, values, now_ns = self._request(inputs)
        got = self.server.get_online_features(self.service, entities, values or None, now_ns)
        return self._build(inputs, entities, values, got, now_ns, t0)

    async def fetch(self, inputs: list[np.ndarray]) -> tuple[list[np.ndarray], "Missing | None", int, int]:
        """`assemble` for the event loop: the store is read without blocking the loop (Redis: on
        the loop's own connection; other stores: on a worker thread)."""
        t0, entities, values, now_ns = self._request(inputs)
        read = getattr(self.server, "get_online_features_async", None)
        if read is not None:
            got = await read(self.service, entities, values or None, now_ns)
        else:
            import asyncio

            got = await asyncio.to_thread(self.server.get_online_features, self.service, entities, values or None, now_ns)
        return self._build(inputs, entities, values, got, now_ns, t0)

    def start(self, inputs: list[np.ndarray], done, loop=None) -> bool:
        """`fetch` without a task where the store allows it (Redis, on the connection of `loop`,
        the running one): True when the read was sent and `done(result, None)` /
        `done(None, error)` follows with what `fetch` returns; False: use `fetch`."""
        if self._start_read is None:
            return False
        if self._direct is not None and self.log is None:
            return self._start_direct(inputs, done, loop)
        t0, entities, values, now_ns = self._request(inputs)
        got_it = relay(done, lambda got: self._build(inputs, entities, values, got, now_ns, t0))
        return self._start_read(self.service, entities, values or None, now_ns, got_it)

    def _start_direct(self, inputs: list[np.ndarray], done, loop) -> bool:
        """`start` for a service of stored features only: the blobs are copied into the input
        matrix as they come (`codec.Direct`); a batch where some value is missing, null or
        expired is decoded the general way, so both give the same bits and the same errors.

        The MGET goes out first; the read's time and the matrix are taken while Redis answers."""
        t0 = time.perf_counter_ns()
        # entities, matrix and now_ns are set below, before the reply can come (from the loop)
        got_blobs = relay(done, lambda blobs: self._fill(inputs, entities, blobs, matrix, now_ns, t0))
        key = self._int_key
        if key is not None and inputs[key].dtype == np.int64:
            ints = inputs[key].reshape(-1).tolist()
            if not ints or not self._reader.send_ints(loop, ints, got_blobs):
                return False
            entities = None  # made from the inputs only if the batch needs the general decode
            rows = len(ints)
        else:
            entities = {name: inputs[i].reshape(-1) for i, name in self._keys}
            rows = request_rows(entities, None)  # the key columns agree on the rows
            ids = [entity_ids(view_keys(view, keys, entities)) for view, keys in self._view_keys_of]
            if not rows or not self._reader.send(loop, ids, got_blobs):
                return False
        now_ns = time.time_ns()
        matrix = np.empty((rows, len(self.names)), dtype=self.dtype)
        return True

    def _fill(self, inputs, entities, blobs: list, matrix: np.ndarray, now_ns: int, t0: int):
        rows = len(blobs[0])
        for (direct, ttl), view_blobs in zip(self._direct, blobs):
            ev = direct.fill(matrix, view_blobs)
            if ev is None or (ttl > 0 and (is_expired_one(ev, now_ns, ttl) if rows == 1 else is_expired(ev, now_ns, ttl).any())):
                got = self.server.from_blobs(self._plan, rows, blobs, now_ns)
                if entities is None:
                    entities = {name: inputs[i].reshape(-1) for i, name in self._keys}
                return self._build(inputs, entities, {}, got, now_ns, t0)
        return [matrix if i < 0 else inputs[i] for i in self._model_order], None, 0, time.perf_counter_ns() - t0

    def _request(self, inputs: list[np.ndarray]) -> tuple[int, dict, dict, int]:
        """(start time, entity key columns, request value columns, the read's time)."""
        t0 = time.perf_counter_ns()
        entities = {name: inputs[i].reshape(-1) for i, name in self._keys}
        values = {name: inputs[i].reshape(-1) for i, name in self._values}
        return t0, entities, values, time.time_ns()

    def _build(self, inputs, entities, values, got, now_ns: int, t0: int):
        if self.log is not None:
            self.log.record(self.service.name, entities, values, got, now_ns)
        rows = got.rows
        matrix = np.empty((rows, len(self.names)), dtype=self.dtype)
        vals = got.values
        # one assignment per run of features of one dtype, cast straight into the input's dtype
        # (exactly what a column-by-column assignment gives): the run's columns are the rows of
        # the transposed matrix
        mt = matrix.T
        for start, stop, names in self._runs:
            if stop - start == 1:
                matrix[:, start] = vals[names[0]]
            else:
                mt[start:stop] = [vals[n] for n in names]
        if got.clean:  # nothing null: no row to reject or fill
            return [matrix if i < 0 else inputs[i] for i in self._model_order], None, 0, time.perf_counter_ns() - t0
        missing: np.ndarray | None = None
        seen: dict[int, bool] = {}  # null columns are shared (per view, and all-False ones across calls)
        all_nulls = got.nulls
        for j, name in enumerate(self.names):
            nulls = all_nulls[name]
            key = id(nulls)
            hit = seen.get(key)
            if hit is None:
                hit = seen[key] = bool(nulls.any())
            if hit:
                if missing is None:
                    missing = np.zeros(rows, dtype=bool)
                missing |= nulls
                if self.defaults is not None:
                    matrix[nulls, j] = self.defaults[j]
                elif self._nan_fill:
                    matrix[nulls, j] = np.nan  # a rejected row: missing for the monitoring tap, never answered
        out = [matrix if i < 0 else inputs[i] for i in self._model_order]
        reject = None
        defaulted = 0
        if missing is not None:
            if self.defaults is None:
                reject = Missing(self, got, entities, missing)
            else:
                defaulted = int(missing.sum())
        return out, reject, defaulted, time.perf_counter_ns() - t0

    def describe(self, got, entities: dict, row: int) -> str:
        for j, name in enumerate(self.names):
            if not got.nulls[name][row]:
                continue
            view = self._ref_views[j]
            status = Status(int(got.status[name][row])).name
            if view in self._on_demand:
                keys = sorted({k for s in self._on_demand[view].sources for k in self._view_keys.get(s, ())})
                what = f"on-demand feature view '{view}' lacks a stored input ({status})"
            else:
                keys = self._view_keys[view]
                what = (
                    f"feature view '{view}' has no value for it ({status})"
                    if status != "PRESENT"
                    else f"its feature '{view}:{name.split('__', 1)[1]}' is null"
                )
            ident = ", ".join(f"{k}={_show(entities[k][row])}" for k in keys)
            return (
                f"model '{self.model}': entity {ident}: {what}; feature service '{self.service.name}' rejects "
                "missing entities (write the entity's features first, or declare on_missing='default' with defaults)"
            )
        return f"model '{self.model}': row {row} has a missing feature"


class Missing:
    """The rows of a batch that the service's reject policy refuses."""

    __slots__ = ("stage", "got", "entities", "rows")

    def __init__(self, stage: FeatureStage, got, entities: dict, rows: np.ndarray):
        self.stage, self.got, self.entities, self.rows = stage, got, entities, rows

    def error(self, start: int, end: int) -> NotFound | None:
        """The error for the request holding rows [start, end), or None when all of them are complete."""
        hit = np.flatnonzero(self.rows[start:end])
        if not len(hit):
            return None
        return NotFound(self.stage.describe(self.got, self.entities, start + int(hit[0])))

    def count(self) -> int:
        return int(self.rows.sum())


def _show(v) -> str:
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    return repr(v) if isinstance(v, str) else str(v)


def _feature_dtypes(repo, refs) -> list[str]:
    out = []
    for view, feat in refs:
        schema = repo.views[view].schema if view in repo.views else repo.on_demand[view].schema
        out.append(next(f.dtype for f in schema if f.name == feat))
    return out


__all__ = ["FeatureStage", "Missing"]
