"""Serving from the model registry: endpoints routed to registry versions by routing files.

    parity serve --routes configs/routes [--db URL] [--artifacts DIR]

The router keeps, per endpoint (`parity.serving.routes`), the registry version each reference
(`fraud@champion`, `fraud/3`) resolves to, and the traffic table built from it.  Every
`registry_poll_secs` it resolves the references again and reloads the routing files when they
changed; the admin call POST /v1/routes/reload does both at once.

A deployment (a reference resolving to a new version):
  1. the version's artifacts are fetched from the registry, each checked against its sha256, into
     the serving cache (`<cache>/<model>/<version>/`), and the version is loaded and warmed beside
     the ones serving;
  2. the traffic table switches to it in one assignment (a request sees the old table or the new);
  3. the versions no longer referenced finish what they have queued and running, then unload;
  4. the deployment is written to the registry's audit log.
A version that fails its checksum or its load is refused; what served keeps serving, and the next
poll tries again.  A registry that cannot be reached changes nothing: the loaded versions keep
serving and the poll retries.

Request path: `pick(req)` is a weighted draw over the table (or, with `sticky`, a stable hash of
the sticky input's value, so the same user always gets the same target); shadows get a copy of the
request after the real one is queued, their answers are compared and recorded, never returned.

Canary: the canary reference gets `steps[i]` percent of the endpoint's traffic (taken from the
targets in proportion); each step must hold `interval_secs` with at least `min_requests` answered
and the canary's error rate and p99 within bounds; then the next step, and after the last the
`promote_to` alias moves to the canary's version (action "promote", with the observed figures as
evidence).  A step that breaks a bound rolls the canary back at once (share 0, action "rollback").
Every traffic change is in the audit log.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from parity.errors import ConfigError, NotFound, ParityError, Unavailable
from parity.serving.models import Repository, Version
from parity.serving.routes import Route, load_routes, split_ref

log = logging.getLogger("parity.router")

ACTOR = "parity-server"
# failures that say nothing about a version: a client that went away, an entity without features
CLIENT_ERRORS = ("cancelled", "not_found")


@dataclass
class CanaryState:
    version: int | None = None  # the canary version being rolled out
    step: int = -1  # index into steps; -1: not started
    state: str = "idle"  # idle | stepping | promoted | rolled_back
    since: float = 0.0
    base: tuple = ()  # the canary version's counters when the step started
    base_stable: dict = field(default_factory=dict)  # the targets' versions' counters then
    last: dict = field(default_factory=dict)  # the last evaluation's figures


class Deployment:
    """One endpoint's live state."""

    def __init__(self, route: Route):
        self.route = route
        self.table: list[tuple[float, Version]] = []
        self.shadows: list[Version] = []
        self.canary = CanaryState()
        self.canary_version: Version | None = None
        self.shadow_log: deque = deque(maxlen=100)

    def pick(self, req) -> Version:
        table = self.table
        if not table:
            raise Unavailable(f"endpoint '{self.route.endpoint}' has no version ready to serve; see GET /v1/routes")
        if len(table) == 1:
            return table[0][1]
        u = None
        if self.route.sticky_input:
            for t in req.inputs:
                if t.name == self.route.sticky_input:
                    u = _fraction(t.data)
                    break
        if u is None:
            u = random.random()
        for cum, version in table:
            if u < cum:
                return version
        return table[-1][1]

    def canary_share(self) -> float:
        c, s = self.route.canary, self.canary
        if c is None or self.canary_version is None or s.state != "stepping" or s.step < 0 or s.version != self.canary_version.number:
            return 0.0
        return c.steps[s.step] / 100.0


def _fraction(data) -> float:
    """A stable number in [0, 1) from the first value of an input (sticky assignment)."""
    first = data.reshape(-1)[0] if isinstance(data, np.ndarray) and data.size else data
    raw = first if isinstance(first, bytes) else (first.encode() if isinstance(first, str) else np.asarray(first).tobytes())
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big") / 2.0**64


class Router:
    def __init__(self, repository: Repository, routes_dir: Path, registry, cache_dir: Path, *, poll_secs: float = 2.0):
        self.repository = repository
        self.routes_dir = Path(routes_dir)
        self._registry = registry  # a Registry, or a callable opening one (retried while it fails)
        self.cache = Path(cache_dir)
        self.poll_secs = poll_secs
        self.endpoints: dict[str, Deployment] = {}
        self.refs: dict[str, tuple[str, int]] = {}  # reference -> (model, version) in force
        self.errors: dict[str, str] = {}  # what is wrong now (routing file, registry, a reference)
        self._routes_stamp: tuple = ()
        # versions refused (checksum, load failure): not tried again until an admin reload
        self.refused: dict[tuple[str, int], str] = {}
        self._lock = asyncio.Lock()
        self._task: asyncio.Task | None = None
        self.shadow_counts = {"answered": 0, "failed": 0, "dropped": 0}
        self.checks = 0  # registry resolutions attempted (each poll and reload), for observers
        # With --workers N (parity.serving.workers): worker 0 judges the canaries on the counters
        # of every worker (`peer_counters(key)`: the other workers' (ok, bad, histogram) of a
        # "model/version") and writes the audit log; the others follow its canary states
        # (`follow()`: {endpoint: state}) and write nothing.
        self.peer_counters: Callable[[str], list] | None = None
        self.follow: Callable[[], dict] | None = None
        self.on_canary_change: Callable[[dict], None] | None = None  # worker 0 pushes its states with it
        self.audits = True

    @property
    def registry(self):
        if callable(self._registry):
            self._registry = self._registry()  # Unavailable while the database is down: retried next time
        return self._registry

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        self.cache.mkdir(parents=True, exist_ok=True)
        try:
            await self.reload(reason="server start")
        except ConfigError as e:
            raise ConfigError(e.source, e.field, e.problem) from None
        self._task = asyncio.get_running_loop().create_task(self._forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    async def _forever(self) -> None:
        tick = min(1.0, self.poll_secs)
        last_poll = time.monotonic()
        while True:
            await asyncio.sleep(tick)
            try:
                self._canary_tick()
                if time.monotonic() - last_poll >= self.poll_secs:
                    last_poll = time.monotonic()
                    await self.reload(reason="poll", only_if_changed=True)
            except Exception:  # noqa: BLE001 - the loop must go on
                log.exception("routing poll failed; will try again")

    # -- reloading --------------------------------------------------------------------------------

    def _stamp(self) -> tuple:
        try:
            return tuple(sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in self.routes_dir.iterdir() if p.suffix in (".yaml", ".yml")))
        except OSError:
            return ()

    async def reload(self, reason: str = "admin", only_if_changed: bool = False) -> dict:
        """Re-read the routing files (if changed) and re-resolve every reference; deploy what
        moved.  Raises ConfigError for a routing file with errors (the routing in force stays)."""
        async with self._lock:
            if not only_if_changed:
                self.refused.clear()
            stamp = self._stamp()
            routes = None
            if not only_if_changed or stamp != self._routes_stamp:
                try:
                    routes = load_routes(self.routes_dir)
                except ConfigError as e:
                    self.errors["routes"] = e.message
                    self._routes_stamp = stamp
                    log.error("routing files refused (the routing in force stays): %s", e.message)
                    raise
                self.errors.pop("routes", None)
                self._routes_stamp = stamp
            await self._apply(routes, reason)
            return self.describe()

    async def _apply(self, routes: dict[str, Route] | None, reason: str) -> None:
        old_routes = {name: d.route for name, d in self.endpoints.items()}
        new_routes = routes if routes is not None else old_routes
        wanted = {ref for r in new_routes.values() for ref in r.refs()}
        try:
            resolved = await asyncio.to_thread(self._resolve, wanted)
        except Unavailable as e:
            self.checks += 1
            self.errors["registry"] = e.message
            log.warning("registry unreachable; serving what is loaded: %s", e.message)
            resolved = {}
            if routes is None:
                return
        else:
            self.checks += 1
            self.errors.pop("registry", None)
        new_refs = dict(self.refs)
        for ref in wanted:
            if ref in resolved:
                new_refs[ref] = resolved[ref]
        for ref in list(new_refs):
            if ref not in wanted:
                del new_refs[ref]
        # serving options per model, from the endpoints that use it
        serving: dict[str, dict] = {}
        for r in new_routes.values():
            for ref in r.refs():
                serving.setdefault(split_ref(ref)[0], r.serving)
        # 1. fetch and load what is new, beside what serves
        needed: dict[str, set[int]] = {}
        for model, number in list(self.refs.values()) + list(new_refs.values()):
            needed.setdefault(model, set()).add(number)
        failed: set[tuple[str, int]] = set(self.refused)
        for model, numbers in needed.items():
            missing = {n for n in numbers if not self._loaded(model, n) and (model, n) not in self.refused}
            if missing:
                ok = await self._deploy(model, missing, serving.get(model, {}))
                failed |= {(model, n) for n, good in ok.items() if not good}
        for ref, target in list(new_refs.items()):
            if target in failed:
                if ref in self.refs:
                    new_refs[ref] = self.refs[ref]  # the old one keeps serving
                    self.errors[ref] = f"version {target[1]} of {target[0]} failed to load; version {self.refs[ref][1]} keeps serving"
                else:
                    del new_refs[ref]
                    self.errors[ref] = f"version {target[1]} of {target[0]} failed to load"
            elif ref in resolved:
                self.errors.pop(ref, None)
        # 2. switch, in one go
        moved = [(ref, self.refs.get(ref), t) for ref, t in new_refs.items() if self.refs.get(ref) != t]
        self.refs = new_refs
        endpoints = {}
        for name, route in new_routes.items():
            dep = self.endpoints.get(name)
            if dep is None or dep.route != route:
                fresh_dep = Deployment(route)
                if dep is not None and dep.route.canary == route.canary:
                    fresh_dep.canary, fresh_dep.shadow_log = dep.canary, dep.shadow_log
                dep = fresh_dep
            endpoints[name] = dep
        self.endpoints = endpoints
        self._rebuild()
        # 3. retire what nothing references any more
        keep: dict[str, set[int]] = {}
        for model, number in self.refs.values():
            keep.setdefault(model, set()).add(number)
        for model, numbers in needed.items():
            stale = numbers - keep.get(model, set())
            if stale:
                for n in stale:
                    _remove_dir(self.cache / model / str(n))
                    (self.cache / model / f"config.{n}.yaml").unlink(missing_ok=True)
                    (self.cache / model / f"profile.{n}.json").unlink(missing_ok=True)
                if keep.get(model):
                    await self._load(model)
                else:
                    try:
                        await self.repository.unload_model(model)
                    except NotFound:
                        pass
        # 4. the audit log
        if moved or (routes is not None and routes != old_routes):
            await asyncio.to_thread(self._audit, moved, old_routes, new_routes, reason)

    def _resolve(self, refs: set[str]) -> dict[str, tuple[str, int]]:
        out = {}
        for ref in refs:
            try:
                mv = self.registry.resolve(ref)
            except NotFound as e:
                self.errors[ref] = e.message
                continue
            out[ref] = (mv.name, mv.version)
        return out

    def _loaded(self, model: str, number: int) -> bool:
        m = self.repository.models.get(model)
        return m is not None and number in m.versions

    async def _deploy(self, model: str, numbers: set[int], serving: dict) -> dict[int, bool]:
        """Fetch (checksum-verified) and load the versions of a model; {version: loaded?}."""
        ok: dict[int, bool] = {}
        for n in sorted(numbers):
            try:
                await asyncio.to_thread(self._fetch, model, n, serving)
                ok[n] = True
            except Exception as e:  # noqa: BLE001 - a version that cannot be fetched is refused, never fatal
                message = e.message if isinstance(e, ParityError) else f"{type(e).__name__}: {e}"
                if not isinstance(e, ParityError):
                    log.exception("fetching %s/%d failed", model, n)
                log.error("refusing %s/%d: %s", model, n, message)
                self.errors[f"{model}/{n}"] = message
                _remove_dir(self.cache / model / str(n))
                (self.cache / model / f"config.{n}.yaml").unlink(missing_ok=True)
                ok[n] = False
        await self._load(model)
        for n in ok:
            ok[n] = ok[n] and self._loaded(model, n)
            if not ok[n]:
                self.refused[(model, n)] = self.errors.get(f"{model}/{n}") or f"version {n} of {model} failed to load (see the server log)"
                _remove_dir(self.cache / model / str(n))
                (self.cache / model / f"config.{n}.yaml").unlink(missing_ok=True)
        if not all(ok.values()):
            await self._load(model)  # forget the refused version's directory
        return ok

    def _fetch(self, model: str, number: int, serving: dict) -> None:
        path = self.registry.fetch(f"{model}/{number}", self.cache)
        profile = self.registry.get(model, number).profile
        profile_path = self.cache / model / f"profile.{number}.json"
        if profile:  # the reference profile: the version is monitored for drift
            import json

            tmp = profile_path.with_name(f".{profile_path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(profile))
            tmp.replace(profile_path)
        else:
            profile_path.unlink(missing_ok=True)
        config = {k: v for k, v in serving.items()}
        if (path / "model.onnx").exists():
            config.setdefault("platform", "onnxruntime_onnx")
        elif (path / "model.pt").exists():
            config.setdefault("platform", "pytorch_libtorch")
            if "inputs" not in config:
                sig = self.registry.get(model, number).signature
                batch = config.get("max_batch_size", 0) > 0

                def spec(t):
                    shape = list(t["shape"])[1:] if batch and t["shape"] else list(t["shape"])
                    return {"name": t["name"], "datatype": t["datatype"], "shape": shape}

                config["inputs"] = [spec(t) for t in sig.get("inputs", [])]
                config["outputs"] = [spec(t) for t in sig.get("outputs", [])]
        config["version_policy"] = {"all": {}}
        text = yaml.safe_dump(config, sort_keys=True)
        # this version's own config (versions of one model may differ in signature), and the
        # model's (what the repository reads first) as a copy of it
        for cfg in (self.cache / model / f"config.{number}.yaml", self.cache / model / "config.yaml"):
            if not cfg.exists() or cfg.read_text() != text:
                tmp = cfg.with_name(f".{cfg.name}.{os.getpid()}.tmp")  # several workers may write at once
                tmp.write_text(text)
                tmp.replace(cfg)

    async def _load(self, model: str) -> None:
        try:
            await self.repository.load_model(model)
        except ParityError as e:
            log.error("loading %s: %s", model, e.message)

    def _rebuild(self) -> None:
        """The traffic tables, from the references in force and the loaded versions."""
        for dep in self.endpoints.values():
            route = dep.route
            targets = []
            for ref, weight in route.targets:
                v = self._version(ref)
                if v is not None and weight > 0:
                    targets.append((weight, v))
            dep.shadows = [v for v in (self._version(s) for s in route.shadows) if v is not None]
            dep.canary_version = self._version(route.canary.ref) if route.canary else None
            if route.canary is not None:
                self._canary_notice(dep)
            share = dep.canary_share()
            total = sum(w for w, _ in targets)
            table, cum = [], 0.0
            if dep.canary_version is not None and share > 0:
                cum = share
                table.append((cum, dep.canary_version))
            for w, v in targets:
                cum += (1.0 - share) * w / total
                table.append((cum, v))
            if table:
                table[-1] = (1.0, table[-1][1])
            dep.table = table

    def _version(self, ref: str) -> Version | None:
        target = self.refs.get(ref)
        if target is None:
            return None
        m = self.repository.models.get(target[0])
        return None if m is None else m.versions.get(target[1])

    def _audit(self, moved, old_routes, new_routes, reason: str) -> None:
        if not self.audits:
            return
        try:
            for ref, old, new in moved:
                self.registry.record(
                    "deploy", new[0], ACTOR, reason=f"{ref} now served by version {new[1]} ({reason})",
                    version=new[1], details={"reference": ref, "from": old[1] if old else None, "to": new[1],
                                              "endpoints": sorted(n for n, r in new_routes.items() if ref in r.refs())},
                )  # fmt: skip
            for name, route in new_routes.items():
                if old_routes.get(name) != route:
                    model = split_ref(route.targets[0][0])[0]
                    self.registry.record(
                        "traffic", model, ACTOR, reason=f"routing of endpoint '{name}' {'changed' if name in old_routes else 'set'} ({reason})",
                        details={"endpoint": name, "targets": [[r, w] for r, w in route.targets], "shadows": list(route.shadows),
                                 "canary": route.canary.ref if route.canary else None, "file": route.source},
                    )  # fmt: skip
        except ParityError as e:
            log.warning("could not write the audit log: %s", e.message)

    # -- the request path -------------------------------------------------------------------------

    def lookup(self, name: str, version: str, req) -> tuple[Version, list[Version]] | None:
        """The version a request to `name` goes to and its shadows, or None when `name` is not
        routed here (the repository answers it)."""
        dep = self.endpoints.get(name)
        if dep is not None and not version:
            return dep.pick(req), dep.shadows
        if "@" in name:
            v = self._version(name)
            if v is None:
                raise NotFound(f"'{name}' is not served here; served references: {sorted(self.refs)}")
            return v, []
        return None

    def mirror(self, req, primary: Version, shadows: list[Version], primary_fut) -> None:
        """Queue a copy of `req` on each shadow version, after the real request: its answer is
        compared with the real one and recorded, never returned.  A shadow whose queue is more than
        half full is skipped (counted as dropped): shadows never hold up real traffic."""
        dep = self.endpoints.get(req.model_name)
        record = _ShadowRecord(self, dep, req.id, primary)
        primary_fut.add_done_callback(record.primary_done)
        for shadow in shadows:
            sched = shadow.scheduler
            if len(sched.batcher) * 2 > (sched.batcher.max_queue_size or 1024):
                self.shadow_counts["dropped"] += 1
                continue
            try:
                signature, rows, arrays, outputs = shadow.plan.check(req)
                ticket = sched.submit(signature, rows, arrays, outputs, None, time.perf_counter_ns(), record.shadow_done(shadow))
            except ParityError:
                self.shadow_counts["failed"] += 1
                continue
            record.pending += 1
            del ticket

    # -- canary -----------------------------------------------------------------------------------

    def _canary_notice(self, dep: Deployment) -> None:
        """A canary reference that moved to a new version starts its rollout from the first step."""
        v = dep.canary_version
        s = dep.canary
        if v is None or self.follow is not None:  # a follower takes its canary states from worker 0
            return
        if any(self._version(ref) is v for ref, _ in dep.route.targets):
            if s.version != v.number:  # the canary is a version the targets already serve: nothing to roll out
                s.version, s.step, s.state, s.last = v.number, -1, "idle", {"note": "the canary reference is a version the targets serve"}
            return
        if s.version != v.number:
            s.version, s.step, s.state, s.since, s.last = v.number, 0, "stepping", time.monotonic(), {}
            s.base, s.base_stable = self._all_counters(v), self._stable_counters(dep)
            self._record_async("traffic", v, f"canary {dep.route.canary.ref} starts at {dep.route.canary.steps[0]:g}%", {"endpoint": dep.route.endpoint, "step": 0})

    def _all_counters(self, v: Version) -> tuple:
        """(successes, server-side failures, request-duration histogram) of a version: this
        process's, plus the other workers' when this is worker 0 of several."""
        ok, bad, hist = _counters(v)
        if self.peer_counters is not None:
            for pok, pbad, phist in self.peer_counters(f"{v.model}/{v.number}"):
                ok, bad = ok + pok, bad + pbad
                if len(phist) == len(hist):
                    hist = [a + b for a, b in zip(hist, phist)]
        return ok, bad, hist

    def local_counters(self) -> dict:
        """This process's counters of every loaded version, by "model/version" (published for
        worker 0)."""
        return {f"{m.name}/{n}": _counters(v) for m in list(self.repository.models.values()) for n, v in list(m.versions.items())}

    def canary_states(self) -> dict:
        """{endpoint: the canary's version, step and state} (what followers take)."""
        return {name: {"version": d.canary.version, "step": d.canary.step, "state": d.canary.state, "last": d.canary.last}
                for name, d in self.endpoints.items() if d.route.canary is not None}  # fmt: skip

    def _follow_states(self) -> None:
        self.apply_canary_states(self.follow() or {})

    def apply_canary_states(self, states: dict) -> None:
        """Take worker 0's canary states (pushed when they change, and read each tick)."""
        changed = False
        for name, dep in self.endpoints.items():
            st = states.get(name)
            s = dep.canary
            if dep.route.canary is None or not isinstance(st, dict):
                continue
            if (s.version, s.step, s.state) != (st.get("version"), st.get("step"), st.get("state")):
                s.version, s.step, s.state, s.last = st.get("version"), st.get("step", -1), st.get("state", "idle"), st.get("last") or {}
                changed = True
        if changed:
            self._rebuild()

    def _canary_tick(self) -> None:
        if self.follow is not None:
            self._follow_states()
            return
        changed = False
        for dep in self.endpoints.values():
            c, s, v = dep.route.canary, dep.canary, dep.canary_version
            if c is None or v is None or s.state != "stepping":
                continue
            stable_n, stable_bad = 0, 0
            for key, (ok0, bad0, _) in s.base_stable.items():
                sv = self._stable_version(dep, key)
                if sv is not None:
                    ok1, bad1, _ = self._all_counters(sv)
                    stable_n += (ok1 - ok0) + (bad1 - bad0)
                    stable_bad += bad1 - bad0
            stable_rate = stable_bad / stable_n if stable_n else 0.0
            ok, done, n, rate, p99 = _judge(v, s.base, self._all_counters(v), c, stable_rate)
            s.last = {"requests": n, "error_rate": rate, "stable_error_rate": stable_rate, "p99_ms": p99, "step_percent": c.steps[s.step]}
            evidence = dict(s.last, max_error_rate=c.max_error_rate, max_p99_ms=c.max_p99_ms, min_requests=c.min_requests)
            if not ok:
                s.state = "rolled_back"
                changed = True
                log.warning("canary %s (version %d) rolled back: %s", c.ref, v.number, s.last)
                self._record_async("rollback", v, f"canary {c.ref} broke its bounds at {c.steps[s.step]:g}%; traffic to it stopped", evidence)
                continue
            if not done or time.monotonic() - s.since < c.interval_secs:
                continue
            if s.step + 1 < len(c.steps):
                s.step += 1
                s.since, s.base, s.base_stable = time.monotonic(), self._all_counters(v), self._stable_counters(dep)
                changed = True
                self._record_async("traffic", v, f"canary {c.ref} held; now {c.steps[s.step]:g}%", evidence)
            else:
                s.state = "promoted"
                changed = True
                if c.promote_to:
                    model = split_ref(c.ref)[0]
                    self._spawn(self._promote(model, c.promote_to, v.number, c.ref, evidence))
                else:
                    self._record_async("traffic", v, f"canary {c.ref} held at every step", evidence)
        if changed:
            self._rebuild()
            if self.on_canary_change is not None:
                self.on_canary_change(self.canary_states())

    def _stable_counters(self, dep: Deployment) -> dict:
        out = {}
        for ref, _ in dep.route.targets:
            v = self._version(ref)
            if v is not None and v is not dep.canary_version:
                out[(v.model, v.number)] = self._all_counters(v)
        return out

    def _stable_version(self, dep: Deployment, key: tuple) -> Version | None:
        m = self.repository.models.get(key[0])
        return None if m is None else m.versions.get(key[1])

    async def _promote(self, model: str, alias: str, number: int, ref: str, evidence: dict) -> None:
        try:
            await asyncio.to_thread(
                self.registry.set_alias, model, alias, number, ACTOR, f"canary {ref} held at every step", evidence, action="promote"
            )
        except ParityError as e:
            log.error("promoting %s/%d to %s failed: %s", model, number, alias, e.message)
            return
        await self.reload(reason=f"promotion of {model}/{number} to {alias}", only_if_changed=True)

    def _record_async(self, action: str, version: Version, reason: str, evidence: dict) -> None:
        if not self.audits:
            return

        def write():
            try:
                self.registry.record(action, version.model, ACTOR, reason=reason, evidence=evidence, version=version.number)
            except ParityError as e:
                log.warning("could not write the audit log: %s", e.message)

        self._spawn(asyncio.to_thread(write))

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        _TASKS.add(task)
        task.add_done_callback(_TASKS.discard)

    # -- reporting --------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Every endpoint has a version to send traffic to."""
        return bool(self.endpoints) and all(dep.table for dep in self.endpoints.values())

    def families(self) -> list:
        """Prometheus families: shadow outcomes, canary state and traffic shares."""
        from parity.monitoring.metrics import Family

        shadow = Family("parity_shadow_requests_total", "counter", "Mirrored requests to shadow versions, by result (answered, failed, dropped).")
        for result, n in self.shadow_counts.items():
            shadow.add((("result", result),), n)
        share = Family("parity_route_traffic_share", "gauge", "The share of an endpoint's traffic each version gets.")
        canary = Family("parity_canary_step_percent", "gauge", "The canary's current step (percent of traffic); 0 when rolled back or idle.")
        for name, dep in self.endpoints.items():
            prev = 0.0
            for cum, v in dep.table:
                share.add((("endpoint", name), ("model", v.model), ("version", str(v.number))), round(cum - prev, 6))
                prev = cum
            if dep.route.canary is not None:
                canary.add((("endpoint", name), ("state", dep.canary.state)), 100 * dep.canary_share())
        return [shadow, share, canary]

    def describe(self) -> dict:
        out = {}
        for name, dep in self.endpoints.items():
            r = dep.route
            out[name] = {
                "file": r.source,
                "targets": [{"model": ref, "weight": w, "version": self.refs.get(ref, (None, None))[1]} for ref, w in r.targets],
                "traffic": [{"model": v.model, "version": v.number, "share": round(cum - prev, 6)}
                            for (prev, (cum, v)) in zip([0.0] + [c for c, _ in dep.table], dep.table)],
                "sticky": r.sticky_input or None,
                "shadows": [{"model": s, "version": self.refs.get(s, (None, None))[1]} for s in r.shadows],
                "canary": None if r.canary is None else {
                    "model": r.canary.ref, "version": dep.canary.version, "state": dep.canary.state,
                    "step_percent": r.canary.steps[dep.canary.step] if dep.canary.step >= 0 else None, "last": dep.canary.last,
                },
                "shadow_log": list(dep.shadow_log)[-10:],
            }  # fmt: skip
        return {"endpoints": out, "errors": dict(self.errors), "shadow": dict(self.shadow_counts), "registry_checks": self.checks}


_TASKS: set = set()


class _ShadowRecord:
    """One mirrored request: the real answer and the shadows', compared when both are in."""

    __slots__ = ("router", "dep", "id", "primary", "primary_out", "waiting", "pending", "t0")

    def __init__(self, router: Router, dep: Deployment | None, request_id: str, primary: Version):
        self.router, self.dep, self.id, self.primary = router, dep, request_id, primary
        self.primary_out = None
        self.waiting: list = []  # shadow results that came before the real answer
        self.pending = 0
        self.t0 = time.perf_counter()

    def primary_done(self, fut) -> None:
        try:
            self.primary_out = fut.result()
        except BaseException:  # noqa: BLE001 - the real request failed: nothing to compare
            self.primary_out = False
        for shadow, out in self.waiting:
            self._compare(shadow, out)
        self.waiting = []

    def shadow_done(self, shadow: Version):
        def done(ticket) -> None:
            try:
                out = ticket.result()
            except BaseException:  # noqa: BLE001 - counted, never surfaces
                self.router.shadow_counts["failed"] += 1
                return
            self.router.shadow_counts["answered"] += 1
            if self.primary_out is None:
                self.waiting.append((shadow, out))
            else:
                self._compare(shadow, out)

        return done

    def _compare(self, shadow: Version, out: dict) -> None:
        if self.dep is None or not self.primary_out:
            return
        diffs = {}
        for name, arr in out.items():
            real = self.primary_out.get(name)
            if real is not None and real.shape == arr.shape and arr.dtype.kind in "fiub":
                diffs[name] = float(np.max(np.abs(real.astype(np.float64) - arr.astype(np.float64)))) if arr.size else 0.0
        self.dep.shadow_log.append({
            "id": self.id, "primary": f"{self.primary.model}/{self.primary.number}", "shadow": f"{shadow.model}/{shadow.number}",
            "max_abs_difference": diffs, "ms": round((time.perf_counter() - self.t0) * 1000, 3),
        })  # fmt: skip


def _counters(v: Version) -> tuple:
    s = v.stats
    bad = sum(n for reason, n in s.failures.items() if reason not in CLIENT_ERRORS)
    return (s.success_count, bad, list(s.request_hist.counts))


def _judge(v: Version, base: tuple, now: tuple, c, stable_rate: float = 0.0) -> tuple[bool, bool, int, float, float | None]:
    """(bounds hold, enough evidence, requests, error rate, p99 ms) of the canary between its
    counters `base` and `now`.
    The error rule is relative: the canary's error rate may exceed the stable versions' (over the
    same time) by at most max_error_rate, so clients sending bad requests to every version do not
    roll a canary back.  A canary whose failures already exceed that bound over min_requests is
    rolled back before min_requests are in."""
    ok0, bad0, hist0 = base
    ok1, bad1, hist1 = now
    good, bad = ok1 - ok0, bad1 - bad0
    n = good + bad
    rate = bad / n if n else 0.0
    deltas = [b - a for a, b in zip(hist0, hist1)]
    p99 = None
    total = sum(deltas)
    if total:
        bounds = v.stats.request_hist.bounds
        acc = 0
        for i, d in enumerate(deltas):
            acc += d
            if acc >= 0.99 * total:
                p99 = (bounds[i] if i < len(bounds) else float("inf")) * 1000
                break
    enough = n >= max(c.min_requests, 1)
    allowed = stable_rate + c.max_error_rate
    broken = (enough and rate > allowed) or bad > allowed * max(c.min_requests, n)
    if enough and c.max_p99_ms and p99 is not None and p99 > c.max_p99_ms:
        broken = True
    return not broken, enough, n, rate, p99


def _remove_dir(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


__all__ = ["Router", "Deployment"]
