"""The configuration of `parity train`: one YAML file, loaded with `yaml.safe_load` and validated
here; every error is a `ConfigError` naming the file and the field (``training.epochs``).

Relative paths are relative to the directory of the config file (for a dict given in Python: the
working directory, or ``base_dir=``).  Path strings may use ``${VAR}`` and ``${VAR:-default}``
(environment variables).  See docs/training.md for every field; configs/training/fraud.yaml is the
example.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from parity.errors import ConfigError

TASKS = ("binary", "regression")
PROFILE_ROWS = ("all", "train", "holdout")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_ALIAS = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
_TENSOR = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,127}$")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True)
class FeaturesConfig:
    repository: Path  # the feature repository module
    service: str  # the feature service: the model's inputs, in order


@dataclass(frozen=True)
class LabelsConfig:
    path: Path  # Parquet file (or directory) of labelled events: entity keys, timestamp, request values, label
    label: str
    task: str = "binary"
    timestamp: str = "event_timestamp"


@dataclass(frozen=True)
class ModelConfig:
    hidden: tuple[int, ...] = (64, 32)
    dropout: float = 0.0
    input_norm: str = "none"  # none | batchnorm (a BatchNorm1d layer on the inputs, part of the exported graph)


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    holdout_fraction: float = 0.2
    threads: int = 1  # torch intra-op threads per process (1: bit-reproducible and polite on shared machines)


@dataclass(frozen=True)
class ExportConfig:
    opset: int = 17
    atol: float = 1e-5  # ONNX Runtime vs PyTorch on the holdout: |ort - torch| <= atol + rtol * |torch|
    rtol: float = 1e-4
    input_name: str = "x"
    output_name: str = "score"


@dataclass(frozen=True)
class ProfileConfig:
    bins: int = 10
    top_k: int = 20
    rows: str = "all"  # which rows the reference profile describes: all | train | holdout


@dataclass(frozen=True)
class RegistryConfig:
    model: str
    db: str | None = None  # default $PARITY_DB or sqlite:///$PARITY_HOME/metadata.db
    artifacts: str | None = None  # default $PARITY_ARTIFACTS or $PARITY_HOME/artifacts
    alias: str | None = None  # e.g. challenger: set to the new version
    description: str = ""
    reason: str = "trained by parity train"
    actor: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TrackingConfig:
    experiment: str
    db: str | None = None  # default: the registry's database (the datasets, the run and the version in one place)
    artifacts: str | None = None  # default: the registry's artifact store
    run_name: str | None = None
    system_metrics_interval: float = 10.0


@dataclass(frozen=True)
class TrainConfig:
    features: FeaturesConfig
    labels: LabelsConfig
    registry: RegistryConfig
    tracking: TrackingConfig
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    export: ExportConfig = ExportConfig()
    profile: ProfileConfig = ProfileConfig()
    snapshot: tuple[Path, ...] = ()  # extra files/directories to snapshot (the label file and the service's sources always are)
    output_dir: Path | None = None  # default $PARITY_HOME/training/<model>-<time>-<pid>
    source: str = "<config>"  # where the config came from (for messages)

    def to_params(self) -> dict:
        """The configuration as JSON values (the tracked run's parameters)."""

        def plain(v: Any) -> Any:
            if isinstance(v, Path):
                return str(v)
            if isinstance(v, tuple):
                return [plain(x) for x in v]
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            return v

        d = asdict(self)
        d.pop("source")
        return plain(d)

    def with_overrides(self, *, db: str | None = None, artifacts: str | None = None, output_dir: str | Path | None = None) -> "TrainConfig":
        cfg = self
        if db is not None:
            cfg = replace(cfg, registry=replace(cfg.registry, db=db), tracking=replace(cfg.tracking, db=db))
        if artifacts is not None:
            cfg = replace(cfg, registry=replace(cfg.registry, artifacts=artifacts), tracking=replace(cfg.tracking, artifacts=artifacts))
        if output_dir is not None:
            cfg = replace(cfg, output_dir=Path(output_dir))
        return cfg


# -- loading -----------------------------------------------------------------------------------------


class _Section:
    """Reads one mapping of the YAML document, naming `prefix.key` in every error."""

    def __init__(self, src: str, prefix: str, data: Any, base: Path):
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(src, prefix, f"must be a mapping of settings, not {type(data).__name__}")
        self.src, self.prefix, self.data, self.base = src, prefix, dict(data), base
        self.used: set[str] = set()

    def name(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def err(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.src, self.name(key), problem)

    def get(self, key: str, default: Any = ..., required: bool = False) -> Any:
        self.used.add(key)
        if key not in self.data or self.data[key] is None:
            if required or default is ...:
                raise self.err(key, "is required")
            return default
        return self.data[key]

    def integer(self, key: str, default: Any = ..., lo: int | None = None, hi: int | None = None) -> int:
        v = self.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.err(key, f"must be an integer, not {v!r}")
        if lo is not None and v < lo:
            raise self.err(key, f"must be >= {lo}, not {v}")
        if hi is not None and v > hi:
            raise self.err(key, f"must be <= {hi}, not {v}")
        return v

    def number(self, key: str, default: Any = ..., lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False) -> float:
        v = self.get(key, default)
        if isinstance(v, str):
            try:
                v = float(v)  # YAML reads 1e-3 (no dot) as a string
            except ValueError:
                pass
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v in (float("inf"), float("-inf")):
            raise self.err(key, f"must be a finite number, not {v!r}")
        v = float(v)
        if lo is not None and (v < lo or (lo_open and v == lo)):
            raise self.err(key, f"must be {'>' if lo_open else '>='} {lo}, not {v}")
        if hi is not None and (v > hi or (hi_open and v == hi)):
            raise self.err(key, f"must be {'<' if hi_open else '<='} {hi}, not {v}")
        return v

    def text(self, key: str, default: Any = ..., pattern: re.Pattern | None = None, choices: tuple[str, ...] | None = None, what: str = "") -> str:
        v = self.get(key, default)
        if v is None:
            return v
        if not isinstance(v, str) or not v.strip():
            raise self.err(key, f"must be non-empty text, not {v!r}")
        if choices is not None and v not in choices:
            raise self.err(key, f"must be one of {', '.join(choices)}, not {v!r}")
        if pattern is not None and not pattern.match(v):
            raise self.err(key, f"{v!r} is not a valid {what or 'name'}")
        return v

    def path(self, key: str, default: Any = ..., must_exist: bool = True) -> Path | None:
        v = self.get(key, default)
        if v is None:
            return None
        return self.resolve_path(key, v, must_exist)

    def resolve_path(self, key: str, v: Any, must_exist: bool) -> Path:
        if not isinstance(v, (str, os.PathLike)) or not str(v).strip():
            raise self.err(key, f"must be a path, not {v!r}")
        p = Path(os.path.expanduser(expand_vars(str(v))))
        if not p.is_absolute():
            p = self.base / p
        p = Path(os.path.normpath(p))
        if must_exist and not p.exists():
            raise self.err(key, f"{p} does not exist")
        return p

    def location(self, key: str) -> str | None:
        """A database URL or artifact location: a relative sqlite path or directory is relative to the config."""
        v = self.get(key, None)
        if v is None:
            return None
        if not isinstance(v, str) or not v.strip():
            raise self.err(key, f"must be text, not {v!r}")
        v = expand_vars(v)
        if v.startswith("sqlite:///") and not v.startswith("sqlite:////"):
            rest = v[len("sqlite:///"):]
            if rest and not Path(rest).is_absolute():
                return "sqlite:///" + str(self.base / rest)
            return v
        if "://" in v:
            return v
        p = Path(os.path.expanduser(v))
        return str(p if p.is_absolute() else self.base / p)

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise self.err(unknown[0], f"is not a known setting; the settings here are {', '.join(sorted(self.used))}")


def expand_vars(text: str) -> str:
    """``${VAR}`` -> the variable (an error when unset), ``${VAR:-default}`` -> it or the default."""

    def sub(m: re.Match) -> str:
        name, default = m.group(1), m.group(2)
        value = os.environ.get(name)
        if value:
            return value
        if default is not None:
            return default
        raise ValueError(f"environment variable {name} is not set (write ${{{name}:-default}} for a default)")

    return _VAR.sub(sub, text)


def load_config(source: str | os.PathLike | Mapping, *, base_dir: str | os.PathLike | None = None) -> TrainConfig:
    """A `TrainConfig` from a YAML file or a dict (a `TrainConfig` is returned as it is)."""
    if isinstance(source, TrainConfig):
        return source
    if isinstance(source, Mapping):
        src = "training config"
        data = dict(source)
        base = Path(base_dir) if base_dir is not None else Path.cwd()
    else:
        path = Path(source)
        src = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(src, "", "no such file") from None
        except OSError as e:
            raise ConfigError(src, "", f"cannot be read: {e}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
            raise ConfigError(src, "", f"is not valid YAML: {where}{getattr(e, 'problem', None) or e}") from None
        base = Path(base_dir) if base_dir is not None else path.resolve().parent
    try:
        return _parse(src, data, base)
    except ValueError as e:  # an unset environment variable
        raise ConfigError(src, "", str(e)) from None


def _parse(src: str, data: Any, base: Path) -> TrainConfig:
    top = _Section(src, "", data, base)

    f = _Section(src, "features", top.get("features", required=True), base)
    features = FeaturesConfig(repository=f.path("repository"), service=f.text("service", pattern=_NAME, what="feature service name"))
    f.done()

    lab = _Section(src, "labels", top.get("labels", required=True), base)
    labels = LabelsConfig(
        path=lab.path("path"),
        label=lab.text("label"),
        task=lab.text("task", "binary", choices=TASKS),
        timestamp=lab.text("timestamp", "event_timestamp"),
    )
    lab.done()

    m = _Section(src, "model", top.get("model", {}), base)
    hidden = m.get("hidden", [64, 32])
    if isinstance(hidden, int) and not isinstance(hidden, bool):
        hidden = [hidden]
    if not isinstance(hidden, list) or not all(isinstance(h, int) and not isinstance(h, bool) and 1 <= h <= 65536 for h in hidden):
        raise m.err("hidden", f"must be a list of layer widths (integers 1..65536), e.g. [64, 32]; not {hidden!r}")
    model = ModelConfig(
        hidden=tuple(hidden),
        dropout=m.number("dropout", 0.0, lo=0.0, hi=1.0, hi_open=True),
        input_norm=m.text("input_norm", "none", choices=("none", "batchnorm")),
    )
    m.done()

    t = _Section(src, "training", top.get("training", {}), base)
    training = TrainingConfig(
        epochs=t.integer("epochs", 10, lo=1, hi=100_000),
        batch_size=t.integer("batch_size", 128, lo=1),
        learning_rate=t.number("learning_rate", 1e-3, lo=0.0, lo_open=True),
        weight_decay=t.number("weight_decay", 0.0, lo=0.0),
        seed=t.integer("seed", 0, lo=0, hi=2**63 - 1),
        holdout_fraction=t.number("holdout_fraction", 0.2, lo=0.0, hi=1.0, lo_open=True, hi_open=True),
        threads=t.integer("threads", 1, lo=1, hi=1024),
    )
    t.done()

    e = _Section(src, "export", top.get("export", {}), base)
    export = ExportConfig(
        opset=e.integer("opset", 17, lo=9, hi=23),
        atol=e.number("atol", 1e-5, lo=0.0),
        rtol=e.number("rtol", 1e-4, lo=0.0),
        input_name=e.text("input_name", "x", pattern=_TENSOR, what="tensor name"),
        output_name=e.text("output_name", "score", pattern=_TENSOR, what="tensor name"),
    )
    if export.input_name == export.output_name:
        raise e.err("output_name", f"must differ from input_name ({export.input_name!r})")
    e.done()

    p = _Section(src, "profile", top.get("profile", {}), base)
    profile = ProfileConfig(bins=p.integer("bins", 10, lo=1, hi=1000), top_k=p.integer("top_k", 20, lo=0, hi=10_000), rows=p.text("rows", "all", choices=PROFILE_ROWS))
    p.done()

    r = _Section(src, "registry", top.get("registry", required=True), base)
    tags = r.get("tags", {})
    if not isinstance(tags, Mapping) or not all(isinstance(k, str) and isinstance(v, (str, int, float, bool)) for k, v in tags.items()):
        raise r.err("tags", f"must be a mapping of name -> text, not {tags!r}")
    registry = RegistryConfig(
        model=r.text("model", pattern=_NAME, what="model name (1-128 letters, digits, _ . -, starting with a letter or digit)"),
        db=r.location("db"),
        artifacts=r.location("artifacts"),
        alias=r.text("alias", None, pattern=_ALIAS, what="alias (1-64 letters, digits, _ -, starting with a letter)"),
        description=_description(r),
        reason=r.text("reason", "trained by parity train"),
        actor=r.text("actor", None),
        tags={k: str(v) for k, v in tags.items()},
    )
    if registry.alias is not None and (registry.alias.isdigit() or registry.alias == "latest"):
        raise r.err("alias", f"{registry.alias!r} is reserved; choose another alias (e.g. challenger)")
    r.done()

    tr = _Section(src, "tracking", top.get("tracking", required=True), base)
    tracking = TrackingConfig(
        experiment=tr.text("experiment", pattern=_NAME, what="experiment name (1-128 letters, digits, _ . -)"),
        db=tr.location("db") or registry.db,
        artifacts=tr.location("artifacts") or registry.artifacts,
        run_name=tr.text("run_name", None),
        system_metrics_interval=tr.number("system_metrics_interval", 10.0, lo=0.0, lo_open=True),
    )
    tr.done()

    snap = top.get("snapshot", [])
    if isinstance(snap, str):
        snap = [snap]
    if not isinstance(snap, list):
        raise top.err("snapshot", f"must be a list of paths, not {snap!r}")
    snapshot = tuple(top.resolve_path(f"snapshot[{i}]", s, True) for i, s in enumerate(snap))
    output_dir = top.path("output_dir", None, must_exist=False)
    top.done()
    return TrainConfig(
        features=features, labels=labels, registry=registry, tracking=tracking, model=model, training=training,
        export=export, profile=profile, snapshot=snapshot, output_dir=output_dir, source=src,
    )  # fmt: skip


def _description(r: _Section) -> str:
    v = r.get("description", "")
    if not isinstance(v, str):
        raise r.err("description", f"must be text, not {v!r}")
    return v


__all__ = [
    "ExportConfig", "FeaturesConfig", "LabelsConfig", "ModelConfig", "ProfileConfig", "RegistryConfig",
    "TrackingConfig", "TrainConfig", "TrainingConfig", "expand_vars", "load_config",
]  # fmt: skip
