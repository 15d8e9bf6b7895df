"""Typed configuration, loaded and validated in one place.

Two kinds of file:
- a model's ``config.yaml`` in a model repository (``DIR/<model>/config.yaml``);
- the server's ``--config`` file (ports, limits, repository options), overridable by flags.

Every error names the file and the field and says what to write instead.  YAML is read with
``yaml.safe_load`` only: configs never execute code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from parity.errors import ConfigError

DEFAULT_MAX_BATCH_SIZE = 64  # used when a config is auto-completed from an ONNX file
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")

PLATFORMS = {
    "onnxruntime_onnx": "model.onnx",
    "pytorch_libtorch": "model.pt",
    "pytorch_export": "model.pt2",
}
DATATYPES = (
    "BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64",
    "FP16", "BF16", "FP32", "FP64", "BYTES",
)  # fmt: skip


def valid_name(name: str) -> bool:
    """Model and tensor names: letters, digits, '_', '.', '-'; no path separators, no leading dot."""
    return bool(NAME_RE.match(name)) and ".." not in name


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # without the batch dimension when the model batches; -1 = variable
    optional: bool = False


@dataclass(frozen=True, slots=True)
class DynamicBatching:
    max_queue_delay_microseconds: int = 0
    preferred_batch_size: tuple[int, ...] = ()
    max_queue_size: int = 0  # 0: unbounded
    default_timeout_microseconds: int = 0  # 0: no server-side default deadline


@dataclass(frozen=True, slots=True)
class VersionPolicy:
    kind: str = "latest"  # latest | all | specific
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def select(self, available: list[int]) -> list[int]:
        available = sorted(available)
        if self.kind == "all":
            return available
        if self.kind == "specific":
            return [v for v in available if v in self.versions]
        return available[-self.num_versions :] if available else []


@dataclass(frozen=True, slots=True)
class Runtime:
    device: str = "cpu"  # cpu | cuda | cuda:N
    intra_op_threads: int = 0  # 0: the runtime's default
    inter_op_threads: int = 0
    execution_providers: tuple[str, ...] = ()  # ONNX Runtime providers; () = by device
    # Where a batch runs: "inline" on the event loop (cheap models), "thread" in the runner's
    # own thread, or "auto": decided once at warm-up from the measured time of a full batch.
    execution: str = "auto"
    instances: int = 1  # runner instances (each takes its own batches)


@dataclass(frozen=True, slots=True)
class FeatureJoin:
    """`features:` in a model's config: the model's input tensor `input` is filled from the
    feature service `service` of the server's feature repository; clients send entity keys (and
    request-time values) instead of that tensor."""

    service: str
    input: str = ""  # "" = the model's only input


@dataclass(frozen=True, slots=True)
class ModelConfig:
    name: str
    platform: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    dynamic_batching: DynamicBatching | None = None
    version_policy: VersionPolicy = VersionPolicy()
    runtime: Runtime = Runtime()
    warmup_batch_sizes: tuple[int, ...] = ()  # () = 1 and max_batch_size (and preferred sizes)
    default_model_filename: str = ""
    parameters: dict[str, str] = field(default_factory=dict)
    auto_completed: bool = False
    features: FeatureJoin | None = None
    # A feature-joined model: `inputs` are what clients send (entity keys, request values, other
    # model inputs) and `model_inputs` the model's own tensors; () for every other model.
    model_inputs: tuple[TensorSpec, ...] = ()

    @property
    def batching(self) -> bool:
        return self.max_batch_size > 0

    @property
    def model_filename(self) -> str:
        return self.default_model_filename or PLATFORMS[self.platform]

    def warmup_sizes(self) -> tuple[int, ...]:
        if not self.batching:
            return (1,)
        if self.warmup_batch_sizes:
            return self.warmup_batch_sizes
        sizes = {1, self.max_batch_size}
        if self.dynamic_batching:
            sizes.update(self.dynamic_batching.preferred_batch_size)
        return tuple(sorted(sizes))

    def input(self, name: str) -> TensorSpec | None:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        return None


# ---------------------------------------------------------------------------------------------
# Parsing


class _Fields:
    """Reads one mapping, remembering which keys were used so unknown keys can be reported."""

    def __init__(self, data: Any, source: str, path: str):
        if not isinstance(data, dict):
            raise ConfigError(source, path or "(top level)", f"must be a mapping, got {type(data).__name__}")
        self.data, self.source, self.path, self.used = data, source, path, set()

    def _where(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, kind: type | tuple, default: Any = None, *, required: bool = False) -> Any:
        self.used.add(key)
        if key not in self.data or self.data[key] is None:
            if required:
                raise ConfigError(self.source, self._where(key), "is required")
            return default
        value = self.data[key]
        if kind is int and isinstance(value, bool) or not isinstance(value, kind):
            want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise ConfigError(self.source, self._where(key), f"must be a {want}, got {value!r}")
        return value

    def sub(self, key: str) -> "_Fields | None":
        self.used.add(key)
        if key not in self.data or self.data[key] is None:
            return None
        return _Fields(self.data[key], self.source, self._where(key))

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ConfigError(self.source, self._where(unknown[0]), f"unknown field; known fields: {sorted(self.used)}")


def _int_list(f: _Fields, key: str, *, minimum: int) -> tuple[int, ...]:
    values = f.get(key, list, [])
    out = []
    for i, v in enumerate(values):
        if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
            raise ConfigError(f.source, f"{f._where(key)}[{i}]", f"must be an integer >= {minimum}, got {v!r}")
        out.append(v)
    return tuple(out)


def _tensor_specs(f: _Fields, key: str) -> tuple[TensorSpec, ...]:
    items = f.get(key, list, required=True)
    if not items:
        raise ConfigError(f.source, key, "must list at least one tensor")
    specs, seen = [], set()
    for i, item in enumerate(items):
        t = _Fields(item, f.source, f"{key}[{i}]")
        name = t.get("name", str, required=True)
        if not valid_name(name):
            raise ConfigError(f.source, f"{key}[{i}].name", f"'{name}' is not a valid tensor name")
        if name in seen:
            raise ConfigError(f.source, f"{key}[{i}].name", f"duplicate tensor name '{name}'")
        seen.add(name)
        datatype = t.get("datatype", str, required=True).upper().removeprefix("TYPE_")
        if datatype == "STRING":
            datatype = "BYTES"
        if datatype not in DATATYPES:
            raise ConfigError(f.source, f"{key}[{i}].datatype", f"'{datatype}' is not one of {', '.join(DATATYPES)}")
        shape = _int_list(t, "shape", minimum=-1)
        if 0 in shape:
            raise ConfigError(f.source, f"{key}[{i}].shape", "dimensions must be positive or -1 (variable)")
        optional = t.get("optional", bool, False)
        t.finish()
        specs.append(TensorSpec(name, datatype, shape, optional))
    return tuple(specs)


def parse_model_config(data: Any, source: str, *, model_name: str) -> ModelConfig:
    """Validate a model config mapping (already YAML-decoded)."""
    f = _Fields(data if data is not None else {}, source, "")
    name = f.get("name", str, model_name)
    if name != model_name:
        raise ConfigError(source, "name", f"'{name}' differs from the model's directory name '{model_name}'")
    platform = f.get("platform", str, "")
    backend = f.get("backend", str, "")
    if not platform:
        platform = {"onnxruntime": "onnxruntime_onnx", "pytorch": "pytorch_libtorch", "": ""}.get(backend, "")
    if platform and platform not in PLATFORMS:
        raise ConfigError(source, "platform", f"'{platform}' is not one of {', '.join(PLATFORMS)}")
    max_batch_size = f.get("max_batch_size", int, 0)
    if max_batch_size < 0:
        raise ConfigError(source, "max_batch_size", "must be >= 0 (0 switches batching off)")
    inputs = _tensor_specs(f, "inputs")
    outputs = _tensor_specs(f, "outputs")

    dyn = None
    d = f.sub("dynamic_batching")
    if d is not None:
        if max_batch_size == 0:
            raise ConfigError(source, "dynamic_batching", "needs max_batch_size > 0")
        dyn = DynamicBatching(
            max_queue_delay_microseconds=d.get("max_queue_delay_microseconds", int, 0),
            preferred_batch_size=_int_list(d, "preferred_batch_size", minimum=1),
            max_queue_size=d.get("max_queue_size", int, 0),
            default_timeout_microseconds=d.get("default_timeout_microseconds", int, 0),
        )
        d.finish()
        for p in dyn.preferred_batch_size:
            if p > max_batch_size:
                raise ConfigError(source, "dynamic_batching.preferred_batch_size", f"{p} exceeds max_batch_size {max_batch_size}")
        for k in ("max_queue_delay_microseconds", "max_queue_size", "default_timeout_microseconds"):
            if getattr(dyn, k) < 0:
                raise ConfigError(source, f"dynamic_batching.{k}", "must be >= 0")

    policy = VersionPolicy()
    vp = f.sub("version_policy")
    if vp is not None:
        kinds = [k for k in ("latest", "all", "specific") if k in vp.data]
        if len(kinds) != 1:
            raise ConfigError(source, "version_policy", "must have exactly one of latest, all, specific")
        body = vp.sub(kinds[0]) or _Fields({}, source, f"version_policy.{kinds[0]}")
        if kinds[0] == "latest":
            policy = VersionPolicy("latest", num_versions=body.get("num_versions", int, 1))
            if policy.num_versions < 1:
                raise ConfigError(source, "version_policy.latest.num_versions", "must be >= 1")
        elif kinds[0] == "specific":
            policy = VersionPolicy("specific", versions=_int_list(body, "versions", minimum=1))
        else:
            policy = VersionPolicy("all")
        body.finish()
        vp.finish()

    runtime = Runtime()
    r = f.sub("runtime")
    if r is not None:
        runtime = Runtime(
            device=r.get("device", str, "cpu"),
            intra_op_threads=r.get("intra_op_threads", int, 0),
            inter_op_threads=r.get("inter_op_threads", int, 0),
            execution_providers=tuple(r.get("execution_providers", list, [])),
            execution=r.get("execution", str, "auto"),
            instances=r.get("instances", int, 1),
        )
        r.finish()
        if not re.fullmatch(r"cpu|cuda(:\d+)?", runtime.device):
            raise ConfigError(source, "runtime.device", f"'{runtime.device}' must be cpu, cuda or cuda:N")
        if runtime.execution not in ("auto", "inline", "thread"):
            raise ConfigError(source, "runtime.execution", "must be auto, inline or thread")
        if runtime.instances < 1:
            raise ConfigError(source, "runtime.instances", "must be >= 1")
        if runtime.intra_op_threads < 0 or runtime.inter_op_threads < 0:
            raise ConfigError(source, "runtime", "thread counts must be >= 0")

    warmup = _int_list(f, "warmup_batch_sizes", minimum=1)
    for w in warmup:
        if max_batch_size and w > max_batch_size:
            raise ConfigError(source, "warmup_batch_sizes", f"{w} exceeds max_batch_size {max_batch_size}")
    default_model_filename = f.get("default_model_filename", str, "")
    if default_model_filename and not valid_name(default_model_filename):
        raise ConfigError(source, "default_model_filename", "must be a plain file name inside the version directory")
    params = f.get("parameters", dict, {})
    features = None
    fj = f.sub("features")
    if fj is not None:
        service = fj.get("service", str, required=True)
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", service):
            raise ConfigError(source, "features.service", f"'{service}' is not a feature service name")
        tensor = fj.get("input", str, "")
        if tensor and not any(t.name == tensor for t in inputs):
            raise ConfigError(source, "features.input", f"'{tensor}' is not one of the model's inputs {[t.name for t in inputs]}")
        fj.finish()
        if max_batch_size == 0:
            raise ConfigError(source, "features", "needs max_batch_size > 0: a feature-joined model takes one row per entity")
        if not tensor and len(inputs) != 1:
            raise ConfigError(source, "features.input", f"is required: the model has several inputs {[t.name for t in inputs]}")
        features = FeatureJoin(service, tensor or inputs[0].name)
    f.finish()
    return ModelConfig(
        name=name,
        platform=platform,
        max_batch_size=max_batch_size,
        inputs=inputs,
        outputs=outputs,
        dynamic_batching=dyn,
        version_policy=policy,
        runtime=runtime,
        warmup_batch_sizes=warmup,
        default_model_filename=default_model_filename,
        parameters={str(k): str(v) for k, v in params.items()},
        features=features,
    )


def load_yaml(path: Path) -> Any:
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(str(path), "", f"cannot be read: {e.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(str(path), "", f"is not valid YAML: {e}") from None


# ---------------------------------------------------------------------------------------------
# Server configuration


GRPC_TRANSPORTS = ("fast", "grpcio")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    model_repository: Path
    host: str = "0.0.0.0"
    http_port: int = 8000
    grpc_port: int = 8001
    workers: int = 1
    model_control_mode: str = "poll"  # none | poll | explicit
    repository_poll_secs: float = 5.0
    max_body_bytes: int = 64 * 1024 * 1024
    max_header_bytes: int = 64 * 1024
    admin_token: str = ""  # required by repository load/unload; empty = those endpoints refuse
    drain_timeout_secs: float = 30.0
    # HTTP: a keep-alive connection with nothing in flight is closed after this long idle, and
    # one that stalls in the middle of a request (no bytes) after request_timeout_secs.
    keepalive_timeout_secs: float = 75.0
    request_timeout_secs: float = 60.0
    # "fast": gRPC on Parity's own HTTP/2 layer; "grpcio": the reference transport on grpcio.
    grpc_transport: str = "fast"
    # gRPC: the most concurrent streams per connection, the largest header list (bytes)
    grpc_max_concurrent_streams: int = 4096
    grpc_max_header_list_bytes: int = 16 * 1024
    # TLS for gRPC (ALPN h2) when both files are given (PEM)
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # the feature store: a feature repository module and the online store's URL
    feature_repository: str = ""
    online_store: str = "sqlite://"
    # the skew monitor: a sample of the feature vectors feature-joined models were given, logged
    # as Parquet under this directory for `parity features verify` ("" = off)
    feature_log_dir: str = ""
    feature_log_sample_rate: float = 0.01
    # the periodic skew check: every feature_verify_secs (0: off) the logged vectors are recomputed
    # through the training path of feature_verify_repository (default: the served repository)
    feature_verify_secs: float = 0.0
    feature_verify_repository: str = ""
    # monitoring: versions with a reference profile are binned per batch into count windows of
    # monitor_window_rows and time windows of monitor_time_window_secs, tested for drift at the
    # false-alarm rate; predictions of requests with an id are logged (up to prediction_log_rows
    # rows, for prediction_log_ttl_secs) to be joined with late labels (POST /v1/feedback);
    # alarms go to the log and to each alert webhook
    monitor_window_rows: int = 5000
    monitor_time_window_secs: float = 300.0
    monitor_false_alarm_rate: float = 0.01
    slo_sample_secs: float = 10.0  # the SLO tracker samples the request counters this often
    prediction_log_rows: int = 200_000
    prediction_log_ttl_secs: float = 7 * 86_400.0
    alert_webhooks: tuple[str, ...] = ()
    # serving from the model registry: a directory of routing files (one YAML per endpoint), the
    # registry's database and artifact store (defaults: parity.home), how often aliases and
    # routing files are checked, and where fetched versions are kept (the model repository)
    routes: str = ""
    retraining: str = ""  # a retraining controller config (parity.retraining.controller); needs routes
    registry_db: str = ""
    registry_artifacts: str = ""
    registry_poll_secs: float = 2.0
    server_name: str = "parity"
    log_level: str = "info"


_SERVER_FIELDS = {
    "model_repository": str, "host": str, "http_port": int, "grpc_port": int, "workers": int,
    "model_control_mode": str, "repository_poll_secs": (int, float), "max_body_bytes": int,
    "max_header_bytes": int, "admin_token": str, "drain_timeout_secs": (int, float),
    "keepalive_timeout_secs": (int, float), "request_timeout_secs": (int, float),
    "grpc_transport": str, "server_name": str, "log_level": str,
    "grpc_max_concurrent_streams": int, "grpc_max_header_list_bytes": int,
    "tls_cert_file": str, "tls_key_file": str, "feature_repository": str, "online_store": str,
    "monitor_window_rows": int, "monitor_time_window_secs": (int, float), "monitor_false_alarm_rate": (int, float), "slo_sample_secs": (int, float),
    "prediction_log_rows": int, "prediction_log_ttl_secs": (int, float), "alert_webhooks": list,
    "feature_log_dir": str, "feature_verify_secs": (int, float), "feature_verify_repository": str, "feature_log_sample_rate": (int, float), "routes": str, "retraining": str, "registry_db": str, "registry_artifacts": str, "registry_poll_secs": (int, float),
}  # fmt: skip


def load_server_config(path: Path | None, overrides: dict[str, Any]) -> ServerConfig:
    """Merge the --config file (if any) with command-line overrides (which win) and validate."""
    source = str(path) if path else "command line"
    values: dict[str, Any] = {}
    if path is not None:
        data = load_yaml(path) or {}
        f = _Fields(data, source, "")
        for key, kind in _SERVER_FIELDS.items():
            v = f.get(key, kind)
            if v is not None:
                values[key] = v
        f.finish()
    values.update({k: v for k, v in overrides.items() if v is not None})
    if values.get("routes"):
        # serving from the registry: the model repository is the cache of fetched versions,
        # loaded and unloaded by the router (never polled)
        from parity.home import home

        values.setdefault("model_repository", str(home() / "serving-cache"))
        Path(values["model_repository"]).mkdir(parents=True, exist_ok=True)
        values["model_control_mode"] = "explicit"
        if not Path(values["routes"]).is_dir():
            raise ConfigError(source, "routes", f"{values['routes']} is not a directory of routing files (one YAML per endpoint)")
    if "model_repository" not in values:
        raise ConfigError(source, "model_repository", "is required (--model-repository DIR, or --routes DIR to serve from the registry)")
    values["model_repository"] = Path(values["model_repository"])
    if "alert_webhooks" in values:
        hooks = values["alert_webhooks"]
        if not all(isinstance(h, str) and h.startswith(("http://", "https://")) for h in hooks):
            raise ConfigError(source, "alert_webhooks", "must be a list of http:// or https:// URLs")
        values["alert_webhooks"] = tuple(hooks)
    cfg = ServerConfig(**values)
    for port_field in ("http_port", "grpc_port"):
        port = getattr(cfg, port_field)
        if not 0 <= port <= 65535:
            raise ConfigError(source, port_field, f"{port} is not a TCP port")
    if cfg.workers < 1:
        raise ConfigError(source, "workers", "must be >= 1")
    if cfg.model_control_mode not in ("none", "poll", "explicit"):
        raise ConfigError(source, "model_control_mode", "must be none, poll or explicit")
    if cfg.grpc_transport not in GRPC_TRANSPORTS:
        raise ConfigError(source, "grpc_transport", f"must be one of {', '.join(GRPC_TRANSPORTS)}, not {cfg.grpc_transport!r}")
    if not 1 <= cfg.grpc_max_concurrent_streams <= 2**31 - 1:
        raise ConfigError(source, "grpc_max_concurrent_streams", "must be between 1 and 2^31-1")
    if cfg.grpc_max_header_list_bytes < 1024:
        raise ConfigError(source, "grpc_max_header_list_bytes", "must be at least 1024")
    if bool(cfg.tls_cert_file) != bool(cfg.tls_key_file):
        raise ConfigError(source, "tls_cert_file" if not cfg.tls_cert_file else "tls_key_file", "TLS needs both a certificate and its key (PEM files)")
    for tls_field in ("tls_cert_file", "tls_key_file"):
        value = getattr(cfg, tls_field)
        if value and not Path(value).is_file():
            raise ConfigError(source, tls_field, f"{value} is not a readable file")
    for secs in ("keepalive_timeout_secs", "request_timeout_secs", "drain_timeout_secs"):
        if getattr(cfg, secs) <= 0:
            raise ConfigError(source, secs, "must be > 0 seconds")
    if cfg.max_body_bytes < 1024:
        raise ConfigError(source, "max_body_bytes", "must be at least 1024")
    if cfg.monitor_window_rows < 10:
        raise ConfigError(source, "monitor_window_rows", "must be at least 10 rows")
    if cfg.retraining and not cfg.routes:
        raise ConfigError(source, "retraining", "needs --routes: the controller rolls new versions out through a routing file's canary")
    if not 0 < cfg.monitor_false_alarm_rate < 0.5:
        raise ConfigError(source, "monitor_false_alarm_rate", "must be within (0, 0.5)")
    if cfg.monitor_time_window_secs <= 0 or cfg.prediction_log_ttl_secs <= 0 or cfg.prediction_log_rows < 0:
        raise ConfigError(source, "monitor_time_window_secs", "windows, TTLs and sizes must be positive")
    if not 0 <= cfg.feature_log_sample_rate <= 1:
        raise ConfigError(source, "feature_log_sample_rate", "must be within [0, 1]")
    if cfg.slo_sample_secs <= 0:
        raise ConfigError(source, "slo_sample_secs", "must be > 0 seconds")
    if cfg.registry_poll_secs <= 0:
        raise ConfigError(source, "registry_poll_secs", "must be > 0 seconds")
    return cfg
