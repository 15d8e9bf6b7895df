"""Feature definitions: entities, feature views, on-demand views and feature services.

A feature repository is a Python module that creates these objects (see
`configs/features/example_repo.py`); `FeatureRepository.load` imports it, collects them and
validates them together, with messages that name the definition and the problem.

The one rule that gives the parity guarantee: a view's `transform` is a vectorised function over
columns -- a dict of numpy arrays in, a dict of numpy arrays out, one row out per row in -- and the
offline build (whole tables) and the online path (the rows of a batch) call the same function
through `apply_transform`, which checks names, lengths and dtypes the same way on both paths.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from parity.errors import ConfigError, InvalidInput

# The dtypes a feature or key may have, and the numpy dtype its column has.  Strings are numpy
# object arrays of Python str.
DTYPES: dict[str, np.dtype] = {
    "bool": np.dtype(np.bool_),
    "int32": np.dtype(np.int32),
    "int64": np.dtype(np.int64),
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
    "string": np.dtype(object),
}
KEY_DTYPES = ("int64", "string")

Columns = dict[str, np.ndarray]
Transform = Callable[[Columns], Mapping[str, np.ndarray]]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def _check_name(kind: str, name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{kind} {name!r}", "name", "must start with a letter or _ and hold only letters, digits and _ (at most 128)")


@dataclass(frozen=True)
class Field:
    name: str
    dtype: str  # a key of DTYPES

    def __post_init__(self) -> None:
        _check_name("field", self.name)
        if self.dtype not in DTYPES:
            raise ConfigError(f"field {self.name!r}", "dtype", f"{self.dtype!r} is not one of {sorted(DTYPES)}")


@dataclass(frozen=True)
class Entity:
    """What features are about (a user, a merchant).  Its join keys are columns of the sources
    and of the entity frames, and the ids a request sends."""

    name: str
    join_keys: tuple[Field, ...]

    def __post_init__(self) -> None:
        _check_name("entity", self.name)
        object.__setattr__(self, "join_keys", tuple(self.join_keys))
        if not self.join_keys:
            raise ConfigError(f"entity {self.name!r}", "join_keys", "needs at least one key")
        for k in self.join_keys:
            if k.dtype not in KEY_DTYPES:
                raise ConfigError(f"entity {self.name!r}", f"join_keys.{k.name}", f"key dtype must be one of {KEY_DTYPES}, not {k.dtype}")

    @property
    def key_names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.join_keys)


_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class FileSource:
    """Parquet file(s) (a file, a directory or a glob) with an event timestamp column and,
    optionally, a created timestamp column (ties between equal event times: the row created
    last wins).  Timestamps are UTC.

    `push_log`: the directory under which pushed rows are kept (`parity.features.push`), one
    subdirectory per feature view, read by the offline join and materialization together with
    `path`.  Default: next to the source -- `data/users.parquet` -> `data/users.push/`, a
    directory `data/users/` -> `data/users.push/`; a glob has no default (pushing to it needs an
    explicit `push_log`).  It must not lie inside `path` (its rows would be read twice)."""

    path: str
    timestamp_field: str = "event_timestamp"
    created_timestamp_field: str | None = None
    push_log: str | None = None

    def __post_init__(self) -> None:
        if self.push_log is not None and not any(c in _GLOB_CHARS for c in str(self.path)):
            src = os.path.normpath(os.path.abspath(self.path))
            log = os.path.normpath(os.path.abspath(self.push_log))
            if log == src or log.startswith(src + os.sep):
                raise ConfigError(f"source {self.path!r}", "push_log", f"{self.push_log!r} lies inside the source; put it next to it")

    def push_root(self) -> Path | None:
        """The push log's root directory (None: a glob source without an explicit `push_log`)."""
        if self.push_log is not None:
            return Path(self.push_log)
        path = str(self.path)
        if any(c in _GLOB_CHARS for c in path):
            return None
        p = Path(path.rstrip("/\\") or path)
        return p.with_suffix(".push") if p.suffix == ".parquet" else p.parent / (p.name + ".push")

    def push_dir(self, view: str) -> Path | None:
        """The directory of feature view `view`'s pushed rows (None: pushing is not set up)."""
        root = self.push_root()
        return None if root is None else root / view


@dataclass(frozen=True)
class FeatureView:
    """Features of `entities`, computed by `transform` from the source's columns `inputs`
    (default: the schema's names, read as they are), valid for `ttl_seconds` after their event
    time (0: forever).  An input given as a `Field` has a declared dtype: every path hands the
    transform that dtype (a lossless-kind cast, e.g. int64 -> float64, or an error naming the
    column), so a transform cannot see int64 on one path and float64 on another."""

    name: str
    entities: tuple[str, ...]
    source: FileSource
    schema: tuple[Field, ...]
    ttl_seconds: float = 0.0
    transform: Transform | None = None
    inputs: tuple[str | Field, ...] | None = None
    description: str = ""

    def __post_init__(self) -> None:
        _check_name("feature view", self.name)
        object.__setattr__(self, "entities", tuple(self.entities))
        object.__setattr__(self, "schema", tuple(self.schema))
        if self.inputs is not None:
            object.__setattr__(self, "inputs", tuple(self.inputs))
        if not self.schema:
            raise ConfigError(f"feature view {self.name!r}", "schema", "declares no features")
        if self.ttl_seconds < 0:
            raise ConfigError(f"feature view {self.name!r}", "ttl_seconds", "must be >= 0 (0: values never expire)")

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.schema)

    @property
    def input_names(self) -> tuple[str, ...]:
        if self.inputs is None:
            return self.feature_names
        return tuple(i.name if isinstance(i, Field) else i for i in self.inputs)

    @property
    def input_fields(self) -> tuple[Field, ...]:
        """The inputs declared with a dtype."""
        return tuple(i for i in (self.inputs or ()) if isinstance(i, Field))


@dataclass(frozen=True)
class RequestSource:
    """Values a request brings with it (not stored), for on-demand views."""

    name: str
    schema: tuple[Field, ...]

    def __post_init__(self) -> None:
        _check_name("request source", self.name)
        object.__setattr__(self, "schema", tuple(self.schema))


@dataclass(frozen=True)
class OnDemandFeatureView:
    """Features computed at request time (and after the point-in-time join offline) by
    `transform` from stored features and request values.  `sources` name feature views and
    request sources; the transform sees their features as columns named `<source>__<feature>`."""

    name: str
    sources: tuple[str, ...]
    schema: tuple[Field, ...]
    transform: Transform

    def __post_init__(self) -> None:
        _check_name("on-demand feature view", self.name)
        object.__setattr__(self, "sources", tuple(self.sources))
        object.__setattr__(self, "schema", tuple(self.schema))

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.schema)


@dataclass(frozen=True)
class FeatureService:
    """The ordered features a model consumes: references `view:feature` (or `view:*`).  A
    missing entity is rejected (`on_missing="reject"`) or filled with `defaults` per reference
    (`on_missing="default"`)."""

    name: str
    features: tuple[str, ...]
    on_missing: str = "reject"
    defaults: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_name("feature service", self.name)
        object.__setattr__(self, "features", tuple(self.features))
        if self.on_missing not in ("reject", "default"):
            raise ConfigError(f"feature service {self.name!r}", "on_missing", "must be 'reject' or 'default'")


def _representable(value, dtype: str) -> bool:
    """Whether `value` is exactly a value of the feature dtype (a default must not change when cast)."""
    if dtype == "string":
        return isinstance(value, str)
    if isinstance(value, str) or value is None:
        return False
    if dtype == "bool":
        return isinstance(value, (bool, np.bool_))
    try:
        cast = np.array([value]).astype(DTYPES[dtype])
    except (TypeError, ValueError, OverflowError):
        return False
    with np.errstate(all="ignore"):
        return bool(cast[0] == value) or (isinstance(value, float) and np.isnan(value) and dtype.startswith("float"))


def typed_inputs(name: str, columns: Columns, inputs: tuple[Field, ...]) -> Columns:
    """The columns with each declared input in its declared dtype: a cast within the same kind
    of number (or a widening one: int -> float), else InvalidInput naming the column."""
    if not inputs:
        return columns
    out = dict(columns)
    for f in inputs:
        if f.name not in out:
            raise InvalidInput(f"the transform of {name!r} needs input {f.name!r}; got {sorted(out)}")
        arr = np.asarray(out[f.name])
        want = DTYPES[f.dtype]
        if arr.dtype != want:
            if f.dtype == "string" or arr.dtype == object or not np.can_cast(arr.dtype, want, casting="same_kind"):
                raise InvalidInput(f"input {f.name!r} of {name!r} is declared {f.dtype} but the values are {arr.dtype}")
            arr = arr.astype(want)
        out[f.name] = arr
    return out


def apply_transform(
    name: str, transform: Transform | None, columns: Columns, schema: tuple[Field, ...], rows: int, inputs: tuple[Field, ...] = ()
) -> Columns:
    """Run a view's transform over `rows` rows (its declared `inputs` cast to their dtypes first)
    and check what it returns: every declared feature, `rows` values each, the declared dtype.
    The offline and the online paths both call this, so both get the same values and the same
    errors."""
    columns = typed_inputs(name, columns, inputs)
    if transform is None:
        out = {f.name: columns[f.name] for f in schema}
    else:
        try:
            # the same floating-point error handling on every path, whatever the caller's
            # numpy settings or warning filters: inf - inf is NaN, never an exception
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                out = transform(dict(columns))
        except Exception as e:  # noqa: BLE001 - a user's transform: name it in the error
            raise InvalidInput(f"the transform of {name!r} failed: {type(e).__name__}: {e}") from e
        if not isinstance(out, Mapping):
            raise InvalidInput(f"the transform of {name!r} must return a dict of column name -> numpy array, not {type(out).__name__}")
    result: Columns = {}
    for f in schema:
        if f.name not in out:
            raise InvalidInput(f"the transform of {name!r} did not return feature {f.name!r} (it returned {sorted(out)})")
        arr = np.asarray(out[f.name])
        if arr.ndim != 1 or len(arr) != rows:
            raise InvalidInput(
                f"the transform of {name!r} returned {f.name!r} with shape {list(arr.shape)} for {rows} rows; "
                "a transform returns one value per input row"
            )
        want = DTYPES[f.dtype]
        if arr.dtype != want:
            raise InvalidInput(f"the transform of {name!r} returned {f.name!r} as {arr.dtype}, but the schema declares {f.dtype}")
        result[f.name] = arr
    return result


class FeatureRepository:
    """Every definition of one feature repository, validated together."""

    def __init__(self, objects: list) -> None:
        self.entities: dict[str, Entity] = {}
        self.views: dict[str, FeatureView] = {}
        self.request_sources: dict[str, RequestSource] = {}
        self.on_demand: dict[str, OnDemandFeatureView] = {}
        self.services: dict[str, FeatureService] = {}
        kinds = (
            (Entity, self.entities, "entity"),
            (FeatureView, self.views, "feature view"),
            (RequestSource, self.request_sources, "request source"),
            (OnDemandFeatureView, self.on_demand, "on-demand feature view"),
            (FeatureService, self.services, "feature service"),
        )
        for obj in objects:
            for cls, table, kind in kinds:
                if isinstance(obj, cls):
                    if obj.name in table and table[obj.name] is not obj:
                        raise ConfigError(f"{kind} {obj.name!r}", "name", "is defined twice")
                    table[obj.name] = obj
        self.validate()

    @classmethod
    def load(cls, path: str | Path) -> "FeatureRepository":
        """Import a feature repository module and collect its definitions."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(str(path), "feature repository", "is not a file; point at the Python module that defines the features")
        spec = importlib.util.spec_from_file_location(f"parity_feature_repo_{abs(hash(str(path.resolve())))}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        try:
            spec.loader.exec_module(module)
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001
            raise ConfigError(str(path), "feature repository", f"failed to import: {type(e).__name__}: {e}") from e
        return cls([v for k, v in vars(module).items() if not k.startswith("__")])

    def validate(self) -> None:
        for view in self.views.values():
            where = f"feature view {view.name!r}"
            if not view.entities:
                raise ConfigError(where, "entities", "names no entity")
            for e in view.entities:
                if e not in self.entities:
                    raise ConfigError(where, "entities", f"unknown entity {e!r}; known: {sorted(self.entities)}")
            names = view.feature_names
            dup = {n for n in names if names.count(n) > 1}
            if dup:
                raise ConfigError(where, "schema", f"duplicate feature name(s) {sorted(dup)}")
            keys = {k for e in view.entities for k in self.entities[e].key_names}
            clash = keys & set(names)
            if clash:
                raise ConfigError(where, "schema", f"feature(s) {sorted(clash)} have the name of a join key")
        for odv in self.on_demand.values():
            where = f"on-demand feature view {odv.name!r}"
            if odv.name in self.views:
                raise ConfigError(where, "name", "is also the name of a feature view")
            for s in odv.sources:
                if s not in self.views and s not in self.request_sources:
                    raise ConfigError(where, "sources", f"unknown source {s!r}; feature views and request sources: {sorted(self.views) + sorted(self.request_sources)}")
        for svc in self.services.values():
            refs = self.resolve(svc)
            where = f"feature service {svc.name!r}"
            seen = set()
            for view, feat in refs:
                if (view, feat) in seen:
                    raise ConfigError(where, "features", f"{view}:{feat} is listed twice")
                seen.add((view, feat))
            if svc.on_missing == "default":
                missing = [f"{v}:{f}" for v, f in refs if f"{v}:{f}" not in svc.defaults]
                if missing:
                    raise ConfigError(where, "defaults", f"on_missing='default' needs a default for {missing}")
            listed = {f"{v}:{f}" for v, f in refs}
            for ref, value in svc.defaults.items():
                if ref not in listed:
                    raise ConfigError(where, "defaults", f"{ref!r} is not one of the service's features {sorted(listed)}")
                view, feat = ref.split(":", 1)
                schema = self.views[view].schema if view in self.views else self.on_demand[view].schema
                dtype = next(f.dtype for f in schema if f.name == feat)
                if not _representable(value, dtype):
                    raise ConfigError(where, "defaults", f"the default {value!r} of {ref!r} is not a {dtype} value")

    def resolve(self, service: FeatureService | str) -> list[tuple[str, str]]:
        """The service's features as (view, feature) pairs, in order (`view:*` expanded)."""
        if isinstance(service, str):
            if service not in self.services:
                raise InvalidInput(f"unknown feature service {service!r}; known: {sorted(self.services)}")
            service = self.services[service]
        out: list[tuple[str, str]] = []
        for ref in service.features:
            view_name, sep, feat = ref.partition(":")
            where = f"feature service {service.name!r}"
            if not sep or not feat:
                raise ConfigError(where, "features", f"{ref!r} is not a 'view:feature' reference")
            view = self.views.get(view_name) or self.on_demand.get(view_name)
            if view is None:
                raise ConfigError(where, "features", f"{ref!r}: unknown feature view {view_name!r}")
            names = view.feature_names
            if feat == "*":
                out += [(view_name, n) for n in names]
            elif feat not in names:
                raise ConfigError(where, "features", f"{ref!r}: view {view_name!r} has no feature {feat!r}; its features: {list(names)}")
            else:
                out.append((view_name, feat))
        return out

    def field(self, view: str, feature: str) -> Field:
        v = self.views.get(view) or self.on_demand.get(view)
        if v is None:
            raise InvalidInput(f"unknown feature view {view!r}")
        for f in v.schema:
            if f.name == feature:
                return f
        raise InvalidInput(f"feature view {view!r} has no feature {feature!r}")


__all__ = [
    "DTYPES", "Entity", "FeatureRepository", "FeatureService", "FeatureView", "Field", "FileSource",
    "OnDemandFeatureView", "RequestSource", "apply_transform", "typed_inputs",
]  # fmt: skip
