"""Routing files: one YAML file per endpoint, in a routes directory.

    # routes/fraud.yaml
    endpoint: fraud                 # the model name clients call (default: the file's stem)
    serving:                        # how every version served here runs (a model config.yaml's fields)
      max_batch_size: 64
      dynamic_batching: {max_queue_delay_microseconds: 500}
      features: {service: fraud_detection}
    targets:                        # registry references and their traffic weights
      - {model: fraud@champion, weight: 90}
      - {model: fraud@challenger, weight: 10}
    sticky: {input: user_id}        # the same value of this input always gets the same target
    shadow:                         # copies whose answers are recorded, never returned
      - {model: fraud@shadow}
    canary:                         # a rollout in steps, promoted or rolled back on evidence
      model: fraud@canary
      steps: [5, 25, 50, 100]       # percent of the endpoint's traffic, step by step
      interval_secs: 30             # the time each step must hold
      min_requests: 100             # requests the canary must answer in a step before it is judged
      max_error_rate: 0.01
      max_p99_ms: 100
      promote_to: champion          # at the last step that holds: move this alias to the canary's version

Files are read with `yaml.safe_load` semantics; every error names the file, the line and the
reason, and a file with errors is refused as a whole (what was in force stays in force).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from parity.config import valid_name
from parity.errors import ConfigError

_ALIAS = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
_SERVING_KEYS = {"max_batch_size", "dynamic_batching", "features", "runtime", "warmup_batch_sizes", "parameters", "outputs", "inputs"}


@dataclass(frozen=True)
class Canary:
    ref: str
    steps: tuple[float, ...] = (5.0, 25.0, 50.0, 100.0)
    interval_secs: float = 30.0
    min_requests: int = 100
    max_error_rate: float = 0.01
    max_p99_ms: float = 0.0  # 0: no latency rule
    promote_to: str = ""  # "" = stay at the last step; else an alias moved to the canary's version


@dataclass(frozen=True)
class Route:
    endpoint: str
    source: str  # the file
    targets: tuple[tuple[str, float], ...]  # (reference, weight)
    sticky_input: str = ""
    shadows: tuple[str, ...] = ()
    canary: Canary | None = None
    serving: dict = field(default_factory=dict)

    def refs(self) -> list[str]:
        out = [r for r, _ in self.targets] + list(self.shadows)
        if self.canary is not None:
            out.append(self.canary.ref)
        return list(dict.fromkeys(out))


def split_ref(ref: str) -> tuple[str, str, str]:
    """'m@alias' -> (m, 'alias', ''); 'm/3' -> (m, '', '3'); 'm' -> (m, '', '')."""
    if "@" in ref:
        name, _, alias = ref.partition("@")
        return name, alias, ""
    if "/" in ref:
        name, _, version = ref.partition("/")
        return name, "", version
    return ref, "", ""


def check_ref(ref: object) -> str | None:
    """None if `ref` is a valid registry reference, else the problem."""
    if not isinstance(ref, str) or not ref:
        return "a model reference must be a string like name@alias, name/3 or name"
    name, alias, version = split_ref(ref)
    if not valid_name(name):
        return f"{name!r} is not a valid model name"
    if "@" in ref and not _ALIAS.match(alias):
        return f"{alias!r} is not a valid alias"
    if "/" in ref and not (version.isdigit() and int(version) > 0):
        return f"{version!r} is not a version number"
    return None


class _Loader(yaml.SafeLoader):
    """safe_load that remembers the line of each mapping key (for error messages)."""


class _Map(dict):
    line = 0
    lines: dict


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> _Map:
    out = _Map(loader.construct_mapping(node, deep=True))
    out.line = node.start_mark.line + 1
    out.lines = {k.value: k.start_mark.line + 1 for k, _ in node.value if isinstance(k, yaml.ScalarNode)}
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)


class _Errors:
    def __init__(self, source: str):
        self.source = source

    def fail(self, where: Any, key: str | None, problem: str):
        line = getattr(where, "lines", {}).get(key) if key is not None else None
        line = line or getattr(where, "line", 0)
        raise ConfigError(f"{self.source}:{line}" if line else self.source, key or "(routing)", problem)


def parse_route(text: str, source: str, default_endpoint: str) -> Route:
    err = _Errors(source)
    try:
        doc = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise ConfigError(f"{source}:{mark.line + 1}" if mark else source, "(yaml)", f"is not valid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(doc, dict):
        raise ConfigError(source, "(top level)", "must be a mapping with at least 'targets'")
    known = {"endpoint", "serving", "targets", "sticky", "shadow", "canary"}
    for k in doc:
        if k not in known:
            err.fail(doc, k, f"unknown field; known fields: {sorted(known)}")
    endpoint = doc.get("endpoint", default_endpoint)
    if not isinstance(endpoint, str) or not valid_name(endpoint):
        err.fail(doc, "endpoint", f"{endpoint!r} is not a valid endpoint name (letters, digits, '_', '.', '-')")

    targets = doc.get("targets")
    if not isinstance(targets, list) or not targets:
        err.fail(doc, "targets", "must list at least one {model: REF, weight: N}")
    parsed: list[tuple[str, float]] = []
    for t in targets:
        if not isinstance(t, dict):
            err.fail(doc, "targets", "each target must be a mapping {model: REF, weight: N}")
        for k in t:
            if k not in ("model", "weight"):
                err.fail(t, k, "unknown field of a target; known: model, weight")
        problem = check_ref(t.get("model"))
        if problem:
            err.fail(t, "model", problem)
        weight = t.get("weight", 100 if len(targets) == 1 else None)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            err.fail(t, "weight", "must be a number >= 0")
        if any(r == t["model"] for r, _ in parsed):
            err.fail(t, "model", f"{t['model']} is listed twice")
        parsed.append((t["model"], float(weight)))
    if sum(w for _, w in parsed) <= 0:
        err.fail(doc, "targets", "the weights must not all be 0")

    sticky = ""
    if doc.get("sticky") is not None:
        s = doc["sticky"]
        if not isinstance(s, dict) or set(s) != {"input"} or not isinstance(s["input"], str) or not valid_name(s["input"]):
            err.fail(doc, "sticky", "must be {input: NAME}, the request input whose value picks the target")
        sticky = s["input"]

    shadows: list[str] = []
    for s in doc.get("shadow") or []:
        if not isinstance(s, dict) or set(s) != {"model"}:
            err.fail(doc, "shadow", "each shadow must be {model: REF}")
        problem = check_ref(s["model"])
        if problem:
            err.fail(s, "model", problem)
        shadows.append(s["model"])
    if doc.get("shadow") is not None and not isinstance(doc.get("shadow"), list):
        err.fail(doc, "shadow", "must be a list of {model: REF}")

    canary = None
    c = doc.get("canary")
    if c is not None:
        if not isinstance(c, dict):
            err.fail(doc, "canary", "must be a mapping with at least 'model'")
        ckeys = {"model", "steps", "interval_secs", "min_requests", "max_error_rate", "max_p99_ms", "promote_to"}
        for k in c:
            if k not in ckeys:
                err.fail(c, k, f"unknown field of the canary; known: {sorted(ckeys)}")
        problem = check_ref(c.get("model"))
        if problem:
            err.fail(c, "model", problem)
        steps = c.get("steps", [5, 25, 50, 100])
        if (
            not isinstance(steps, list) or not steps
            or any(isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 < x <= 100 for x in steps)
            or any(b <= a for a, b in zip(steps, steps[1:]))
        ):  # fmt: skip
            err.fail(c, "steps", "must be increasing percentages in (0, 100]")

        def number(key: str, default, minimum: float, kind=(int, float)):
            v = c.get(key, default)
            if isinstance(v, bool) or not isinstance(v, kind) or v < minimum:
                err.fail(c, key, f"must be a number >= {minimum}")
            return v

        promote_to = c.get("promote_to", "")
        if promote_to and (not isinstance(promote_to, str) or not _ALIAS.match(promote_to)):
            err.fail(c, "promote_to", f"{promote_to!r} is not a valid alias")
        if promote_to and split_ref(c["model"])[1] == promote_to:
            err.fail(c, "promote_to", "must differ from the canary's own alias")
        canary = Canary(
            ref=c["model"],
            steps=tuple(float(x) for x in steps),
            interval_secs=float(number("interval_secs", 30.0, 0.0)),
            min_requests=int(number("min_requests", 100, 0, int)),
            max_error_rate=float(number("max_error_rate", 0.01, 0.0)),
            max_p99_ms=float(number("max_p99_ms", 0.0, 0.0)),
            promote_to=promote_to or "",
        )
        if any(r == canary.ref for r, _ in parsed):
            err.fail(c, "model", f"{canary.ref} is also a target; the canary takes its share from the targets")

    serving = doc.get("serving") or {}
    if not isinstance(serving, dict):
        err.fail(doc, "serving", "must be a mapping of model config fields")
    for k in serving:
        if k not in _SERVING_KEYS:
            err.fail(serving, k, f"is not a serving option; known: {sorted(_SERVING_KEYS)}")
    models = {split_ref(r)[0] for r, _ in parsed} | {split_ref(s)[0] for s in shadows} | ({split_ref(canary.ref)[0]} if canary else set())
    if len(models) > 1 and ("inputs" in serving or "outputs" in serving):
        err.fail(serving, "inputs" if "inputs" in serving else "outputs", "cannot be given for an endpoint over several models")
    return Route(endpoint, source, tuple(parsed), sticky, tuple(shadows), canary, _plain(serving))


def _plain(value):
    """Plain dicts and lists (the loader's line-numbered mappings are a dict subclass)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def load_routes(directory: Path) -> dict[str, Route]:
    """Every `*.yaml` / `*.yml` file of `directory`, by endpoint."""
    if not directory.is_dir():
        raise ConfigError(str(directory), "routes", "is not a directory of routing files")
    routes: dict[str, Route] = {}
    for path in sorted(directory.iterdir()):
        if path.suffix not in (".yaml", ".yml") or not path.is_file():
            continue
        route = parse_route(path.read_text(), str(path), path.stem)
        if route.endpoint in routes:
            raise ConfigError(str(path), "endpoint", f"'{route.endpoint}' is also routed by {routes[route.endpoint].source}")
        routes[route.endpoint] = route
    return routes


__all__ = ["Canary", "Route", "check_ref", "load_routes", "parse_route", "split_ref"]
