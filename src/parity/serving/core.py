"""The inference core that every transport calls: validation, routing to a version, batching.

Transports decode the wire into `InferRequest`s and encode `InferResponse`s; everything between
is here, once.  Validation plans are built when a version loads, so the per-request work is a few
dictionary look-ups and comparisons.
"""

from __future__ import annotations

import asyncio
import hmac
import time

from parity import __version__
from parity.config import ModelConfig, ServerConfig
from parity.errors import (
    Cancelled,
    InvalidInput,
    NotFound,
    ParityError,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
    as_parity_error,
)
from parity.monitoring import metrics
from parity.serving import clock
from parity.serving import stats as stats_mod
from parity.serving.models import Repository, Version
from parity.types import InferRequest, InferResponse, Tensor

EXTENSIONS = ("model_repository", "model_configuration", "statistics", "binary_tensor_data", "schedule_policy")


class Plan:
    """A version's request checks, decided once at load."""

    __slots__ = (
        "version", "config", "specs", "order", "required", "outputs", "output_set", "batching", "max_batch",
        "variable", "label", "model_name", "output_types", "stats", "scheduler",
    )  # fmt: skip

    def __init__(self, version: Version):
        cfg = version.config
        self.version = version
        self.config = cfg
        self.specs = {t.name: t for t in cfg.inputs}
        self.order = {t.name: i for i, t in enumerate(cfg.inputs)}
        self.required = [t.name for t in cfg.inputs if not t.optional]
        self.outputs = [t.name for t in cfg.outputs]
        self.output_set = set(self.outputs)
        self.batching = cfg.batching
        self.max_batch = cfg.max_batch_size
        self.variable = any(-1 in t.shape for t in cfg.inputs)
        self.label = version.label
        self.model_name = version.model
        self.output_types = {t.name: t.datatype for t in cfg.outputs}
        self.stats = version.stats
        self.scheduler = version.scheduler

    def check(self, req: InferRequest) -> tuple[tuple, int, list, list[str]]:
        """(signature, rows, inputs in config order, output names) or InvalidInput."""
        name = self.model_name
        specs = self.specs
        arrays: list = [None] * len(self.order)
        rows = -1
        for t in req.inputs:
            spec = specs.get(t.name)
            if spec is None:
                raise InvalidInput(f"model '{name}' has no input '{t.name}'; its inputs are {list(self.order)}")
            idx = self.order[t.name]
            if arrays[idx] is not None:
                raise InvalidInput(f"input '{t.name}' is given twice")
            if t.datatype != spec.datatype:
                raise InvalidInput(f"input '{t.name}' has datatype {t.datatype} but model '{name}' expects {spec.datatype}")
            shape = t.shape
            dims = spec.shape
            if self.batching:
                if len(shape) != len(dims) + 1:
                    raise InvalidInput(
                        f"input '{t.name}' has shape {list(shape)} but model '{name}' expects [batch] + {list(dims)}"
                    )
                b = shape[0]
                if b < 1 or b > self.max_batch:
                    raise InvalidInput(
                        f"input '{t.name}': batch size {b} is outside 1..{self.max_batch} (max_batch_size of model '{name}'); "
                        "split the request"
                    )
                if rows == -1:
                    rows = b
                elif b != rows:
                    raise InvalidInput(f"inputs of one request must share the batch size: '{t.name}' has {b}, others {rows}")
                tail = shape[1:]
            else:
                tail = shape
                if len(shape) != len(dims):
                    raise InvalidInput(f"input '{t.name}' has shape {list(shape)} but model '{name}' expects {list(dims)}")
            for d, want in zip(tail, dims):
                if want != -1 and d != want:
                    expect = ([-1] if self.batching else []) + list(dims)
                    raise InvalidInput(f"input '{t.name}' has shape {list(shape)} but model '{name}' expects {expect} (-1: any)")
            arrays[idx] = t.data
        if any(a is None for a in arrays):
            missing = [n for n in self.required if arrays[self.order[n]] is None]
            if missing:
                raise InvalidInput(f"model '{name}' needs input(s) {missing}; the request has {[t.name for t in req.inputs]}")
        if req.outputs is None:
            outputs = self.outputs
        else:
            outputs = []
            for o in req.outputs:
                if o.name not in self.output_set:
                    raise InvalidInput(f"model '{name}' has no output '{o.name}'; its outputs are {self.outputs}")
                outputs.append(o.name)
        signature = tuple(a.shape[1:] if self.batching else a.shape for a in arrays if a is not None) if self.variable else ()
        return signature, (rows if rows > 0 else 1), arrays, outputs


class InferenceCore:
    def __init__(self, config: ServerConfig, repository: Repository):
        self.config = config
        self.repository = repository
        repository._on_load = self._build_plan
        self.draining = False
        self.started = False
        self.server_failures: dict[str, int] = {"not_found": 0, "bad_input": 0, "rejected": 0}
        self.extra_metrics: list = []  # callables returning Families (other workers, later issues)
        self.extra_stats: list = []  # callables returning statistics dicts of other workers
        self.features = None  # a parity.features.retrieval.FeatureServer when a feature repository is served
        self.router = None  # a parity.serving.router.Router when serving from the registry (--routes)
        self.prediction_log = None  # a parity.monitoring.performance.PredictionLog (late labels)
        self.retraining = None  # a parity.retraining.controller.RetrainingController
        self.slo = None  # a parity.monitoring.performance.SloTracker
        self.workers = None  # a parity.serving.workers.WorkerGroup with --workers N
        self.skew: dict[str, dict] = {}  # feature service -> the periodic skew check's last report

    @staticmethod
    def _build_plan(version: Version) -> None:
        version.plan = Plan(version)

    # -- inference --------------------------------------------------------------------------------

    def submit(self, req: InferRequest, callback=None) -> tuple:
        """Validate and queue a request: (future, plan, t0); the future resolves to
        {output name: array}.  With `callback`, a `Ticket` replaces the future and the callback
        gets it when the request is answered (no event-loop round trip).  Errors raised here
        are already counted."""
        t0 = time.perf_counter_ns()
        if self.draining or not self.started:
            self.server_failures["rejected"] += 1
            if self.draining:
                raise Unavailable("server is shutting down; retry on another replica")
            raise Unavailable("server is starting: models are loading; retry when /v2/health/ready answers 200")
        shadows = None
        try:
            routed = None if self.router is None else self.router.lookup(req.model_name, req.model_version, req)
            if routed is None:
                version = self.repository.lookup(req.model_name, req.model_version)
            else:
                version, shadows = routed
        except ParityError as e:
            self.server_failures[e.reason if e.reason in self.server_failures else "not_found"] += 1
            raise
        plan: Plan = version.plan
        try:
            signature, rows, arrays, outputs = plan.check(req)
            deadline = req.deadline
            if deadline is None:
                dyn = plan.config.dynamic_batching
                if dyn is not None and dyn.default_timeout_microseconds:
                    deadline = clock.now() + dyn.default_timeout_microseconds * 1e-6
            fut = plan.scheduler.submit(signature, rows, arrays, outputs, deadline, t0, callback)
        except ParityError as e:
            plan.stats.record_failure(e.reason, time.perf_counter_ns() - t0)
            raise
        if callback is not None:
            fut.context = (plan, t0)
        if shadows:
            self.router.mirror(req, version, shadows, fut)
        if req.id and self.prediction_log is not None:
            fut.add_done_callback(self._prediction_logger(req.id, plan))
        return fut, plan, t0

    def _prediction_logger(self, request_id: str, plan: Plan):
        """Log the request's first output (one prediction per row) for POST /v1/feedback."""
        log_ = self.prediction_log

        def record(fut) -> None:
            try:
                outputs = fut.result()
            except BaseException:  # noqa: BLE001 - a failed request has nothing to label
                return
            try:
                first = outputs.get(plan.outputs[0]) if plan.outputs else None
                if first is not None and first.dtype.kind in "fiub":
                    log_.record(request_id, plan.model_name, plan.label, first)
            except Exception:  # noqa: BLE001 - never fails the request
                pass

        return record

    async def feedback(self, request_id: str, labels, rows=None) -> dict:
        """Join late labels with the request's logged predictions (in whichever worker logged it)."""
        if self.prediction_log is None:
            raise NotFound("this server keeps no prediction log (prediction_log_rows is 0)")
        if not isinstance(request_id, str) or not request_id:
            raise InvalidInput("feedback needs the 'id' of the inference request")
        group = self.workers
        result = self.prediction_log.feedback(request_id, labels, rows, count_missing=group is None)
        if group is None:
            return result
        return await group.feedback(result, request_id, labels, rows)

    async def monitoring_doc(self, model: str | None = None) -> dict:
        """GET /v1/monitoring as served: the monitoring hub's document when this is one of
        several workers (drift, performance and SLOs are kept there), else `monitoring()`."""
        group = self.workers
        if group is not None and not group.is_hub:
            try:
                doc = await group.ask(0, {"op": "monitoring", "model": model})
                if doc.get("ok") is False:  # the hub could not make it: it said why
                    raise ValueError(doc.get("error", "refused"))
                return doc
            except (OSError, TimeoutError, ValueError) as e:
                doc = self.monitoring(model)
                doc["warning"] = f"the monitoring hub (worker 0) did not answer ({e}): this is worker {group.index}'s own view"
                return doc
        return self.monitoring(model)

    def monitors(self) -> list:
        return [
            v.scheduler.monitor for m in list(self.repository.models.values()) for v in list(m.versions.values())
            if v.scheduler.monitor is not None
        ]  # fmt: skip

    def monitoring(self, model: str | None = None) -> dict:
        """GET /v1/monitoring: drift windows, rolling performance per model version."""
        entries = [m.entry() for m in self.monitors() if model is None or m.model == model]
        perf = self.prediction_log.summary() if self.prediction_log is not None else {}
        by_version = {(p.get("model"), str(p.get("version"))): p for p in perf.get("models", [])}
        slo = {(r.get("model"), str(r.get("version"))): r for r in (self.slo.report() if self.slo is not None else [])}
        for e in entries:
            e["performance"] = by_version.get((e["model"], e["version"]))
            e["slo"] = slo.get((e["model"], e["version"]))
        doc = {"generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "models": entries, "performance": perf,
               "slo": self.slo.report() if self.slo is not None else []}  # fmt: skip
        if self.retraining is not None:
            doc["retraining"] = self.retraining.describe()
        if self.skew:
            doc["skew"] = self.skew
        if self.workers is not None:
            doc["workers"] = {"count": self.workers.count, "hub": self.workers.index, "members": self.workers.members()}
        return doc

    def finish(self, req: InferRequest, plan: Plan, t0: int, outputs: dict) -> InferResponse:
        self.succeeded(plan, t0)
        types = plan.output_types
        return InferResponse(
            plan.model_name, plan.label, req.id, [Tensor(n, types[n], arr.shape, arr) for n, arr in outputs.items()]
        )

    @staticmethod
    def succeeded(plan: Plan, t0: int) -> None:
        """Count a success, for transports that encode the outputs themselves (`finish` without
        building an InferResponse)."""
        plan.stats.record_success(time.perf_counter_ns() - t0)

    def fail(self, plan: Plan, t0: int, exc: BaseException) -> ParityError:
        err = Cancelled("the client cancelled the request") if isinstance(exc, asyncio.CancelledError) else as_parity_error(exc)
        plan.stats.record_failure(err.reason, time.perf_counter_ns() - t0)
        return err

    async def infer(self, req: InferRequest) -> InferResponse:
        fut, plan, t0 = self.submit(req)
        try:
            outputs = await fut
        except BaseException as e:
            err = self.fail(plan, t0, e)
            if isinstance(e, asyncio.CancelledError):
                raise
            raise err from None
        return self.finish(req, plan, t0, outputs)

    # -- server and model information ------------------------------------------------------------

    @property
    def live(self) -> bool:
        return True

    @property
    def ready(self) -> bool:
        return self.started and not self.draining and self.repository.ready and (self.router is None or self.router.ready)

    def server_metadata(self) -> dict:
        return {"name": self.config.server_name, "version": __version__, "extensions": list(EXTENSIONS)}

    def version(self, name: str, version: str = "") -> Version:
        return self.repository.lookup(name, version)

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            self.repository.lookup(name, version)
        except ParityError:
            return False
        return not self.draining

    def model_metadata(self, name: str, version: str = "") -> dict:
        v = self.repository.lookup(name, version)
        cfg = v.config
        batch = [-1] if cfg.batching else []
        return {
            "name": name,
            "versions": [str(n) for n in sorted(self.repository.models[name].versions)],
            "platform": cfg.platform,
            "inputs": [{"name": t.name, "datatype": t.datatype, "shape": batch + list(t.shape)} for t in cfg.inputs],
            "outputs": [{"name": t.name, "datatype": t.datatype, "shape": batch + list(t.shape)} for t in cfg.outputs],
        }

    def model_config(self, name: str, version: str = "") -> dict:
        """The model's configuration in Triton's JSON form (what perf_analyzer and tritonclient read);
        the gRPC transport parses the same dict into the ModelConfig message."""
        return triton_config(self.repository.lookup(name, version).config)

    def model_statistics(self, name: str = "", version: str = "", *, local: bool = False) -> list[dict]:
        """Statistics of the served versions; with several workers, summed over all of them
        (`local` gives this process's own)."""
        if name:
            if version:
                own = [self.repository.lookup(name, version).stats.to_dict()]
            else:
                model = self.repository.models.get(name)
                if model is None:
                    raise NotFound(f"unknown model '{name}'")
                own = [v.stats.to_dict() for _, v in sorted(model.versions.items())]
        else:
            own = [v.stats.to_dict() for m in self.repository.models.values() for _, v in sorted(m.versions.items())]
        if local or not self.extra_stats:
            return own
        by_key = {(st["name"], st["version"]): st for st in own}
        for source in self.extra_stats:
            for st in source():
                mine = by_key.get((st["name"], st["version"]))
                if mine is not None:
                    stats_mod.add_statistics(mine, st)
        return own

    def repository_index(self, ready_only: bool = False) -> list[dict]:
        return self.repository.index(ready_only)

    # -- administration --------------------------------------------------------------------------

    def metadata_db(self):
        """The metadata database (runs, registry) named by the config, opened on first use."""
        db = getattr(self, "_metadata_db", None)
        if db is None:
            from parity.home import default_db_url
            from parity.sql import Database

            db = self._metadata_db = Database.open(self.config.registry_db or default_db_url())
        return db

    def authorize_admin(self, token: str | None) -> None:
        expected = self.config.admin_token
        if not expected:
            raise PermissionDenied(
                "admin endpoints (repository load/unload, routing reload, feature push) are switched off: start the server with --admin-token "
                "(or PARITY_ADMIN_TOKEN) and send it as 'authorization: Bearer <token>'"
            )
        if not token:
            raise Unauthenticated("this endpoint needs the admin token: send 'authorization: Bearer <token>'")
        if not hmac.compare_digest(token.encode(), expected.encode()):
            raise PermissionDenied("the admin token is not valid")

    async def load_model(self, name: str, token: str | None) -> None:
        self.authorize_admin(token)
        await self.repository.load_model(name)

    async def unload_model(self, name: str, token: str | None) -> None:
        self.authorize_admin(token)
        await self.repository.unload_model(name)

    # -- metrics -----------------------------------------------------------------------------------

    def metric_families(self) -> list[metrics.Family]:
        all_stats = list(self.repository.stats.values())
        fams = stats_mod.families(all_stats, self.server_failures, self.repository.load_events)
        ready = metrics.Family("parity_server_ready", "gauge", "1 when the server is ready to serve (models warm, not draining).")
        ready.add((), 1 if self.ready else 0)
        fams.append(ready)
        from parity.monitoring import tap

        fams += tap.families(self.monitors())
        if self.prediction_log is not None:
            fams += self.prediction_log.families()
        if self.skew:
            rate = metrics.Family("parity_feature_skew_rate", "gauge", "The periodic skew check: share of logged served rows whose features differ from the training path.")
            checked = metrics.Family("parity_feature_skew_rows", "gauge", "The periodic skew check: logged served rows checked.")
            for service, r in self.skew.items():
                rate.add((("service", service),), r["mismatch_rate"])
                checked.add((("service", service),), r["rows"])
            fams += [rate, checked]
        return fams

    def metrics_text(self) -> str:
        fams = self.metric_families()
        for extra in self.extra_metrics:
            metrics.merge(fams, extra())
        return metrics.render(fams)


def triton_config(cfg: ModelConfig) -> dict:
    def tensor(t) -> dict:
        return {"name": t.name, "data_type": f"TYPE_{'STRING' if t.datatype == 'BYTES' else t.datatype}", "dims": list(t.shape)}

    out: dict = {
        "name": cfg.name,
        "platform": cfg.platform,
        "backend": "onnxruntime" if cfg.platform.startswith("onnx") else "pytorch",
        "max_batch_size": cfg.max_batch_size,
        "input": [tensor(t) | ({"optional": True} if t.optional else {}) for t in cfg.inputs],
        "output": [tensor(t) for t in cfg.outputs],
        "instance_group": [
            {
                "name": f"{cfg.name}_0",
                "kind": "KIND_GPU" if cfg.runtime.device.startswith("cuda") else "KIND_CPU",
                "count": cfg.runtime.instances,
                **({"gpus": [int(cfg.runtime.device.partition(":")[2] or 0)]} if cfg.runtime.device.startswith("cuda") else {}),
            }
        ],
        "default_model_filename": cfg.model_filename,
        "parameters": {k: {"string_value": v} for k, v in cfg.parameters.items()},
    }
    if cfg.features is not None:  # a feature-joined model: where its feature tensor comes from
        out["parameters"]["feature_service"] = {"string_value": cfg.features.service}
        out["parameters"]["feature_input"] = {"string_value": cfg.features.input}
    vp = cfg.version_policy
    if vp.kind == "latest":
        out["version_policy"] = {"latest": {"num_versions": vp.num_versions}}
    elif vp.kind == "all":
        out["version_policy"] = {"all": {}}
    else:
        out["version_policy"] = {"specific": {"versions": list(vp.versions)}}
    dyn = cfg.dynamic_batching
    if dyn is not None:
        out["dynamic_batching"] = {
            "preferred_batch_size": list(dyn.preferred_batch_size),
            "max_queue_delay_microseconds": dyn.max_queue_delay_microseconds,
            "default_queue_policy": {
                "max_queue_size": dyn.max_queue_size,
                "default_timeout_microseconds": dyn.default_timeout_microseconds,
                "allow_timeout_override": True,
            },
        }
    return out


def bearer(value: str | None) -> str | None:
    """The token of an 'authorization: Bearer <token>' header value."""
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None
