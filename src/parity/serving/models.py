"""The model repository: finds models on disk, loads and warms versions, swaps them atomically.

Layout (as Triton's)::

    DIR/<model>/config.yaml          optional for ONNX models whose file declares their tensors
    DIR/<model>/<version>/model.onnx | model.pt (TorchScript) | model.pt2 (torch.export)

A new version is loaded and warmed before it takes traffic; the versions it replaces finish their
queued and running requests, then close.  A version that fails to load is reported in the index
and in metrics, and whatever served before keeps serving.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from parity.config import DEFAULT_MAX_BATCH_SIZE, PLATFORMS, ModelConfig, load_yaml, parse_model_config, valid_name
from parity.errors import ConfigError, ModelLoadError, NotFound, ParityError, Unavailable
from parity.serving.datatypes import DTYPES
from parity.serving.runners import create_runner
from parity.serving.scheduler import INLINE_THRESHOLD_S, Scheduler
from parity.serving.stats import VersionStats

log = logging.getLogger("parity.models")


@dataclass
class Version:
    """One loaded, warmed version: what a request is routed to."""

    model: str
    number: int
    config: ModelConfig
    scheduler: Scheduler
    stats: VersionStats
    fingerprint: tuple
    plan: object = None  # the core's validation plan, built once at load

    @property
    def label(self) -> str:
        return str(self.number)


@dataclass
class Model:
    name: str
    config: ModelConfig | None = None
    versions: dict[int, Version] = field(default_factory=dict)
    default: Version | None = None
    # version -> (state, reason) for the repository index; "" version = the model as a whole
    states: dict[int, tuple[str, str]] = field(default_factory=dict)
    error: str = ""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Repository:
    def __init__(self, root: Path, *, on_load=None):
        self.root = root
        self.models: dict[str, Model] = {}
        self.stats: dict[tuple[str, str], VersionStats] = {}
        self.load_events: dict[tuple[str, str, str], int] = {}
        self._on_load = on_load  # callback(version) to build per-version plans
        self.features = None  # the server's FeatureServer, for models whose config names a feature service
        self.feature_log = None  # a ServedFeatureLog sampling what feature-joined models were given
        self.monitor_config = None  # parity.monitoring.tap.MonitorConfig: versions with a profile are monitored
        self.alerter = None  # parity.monitoring.alerts.Alerter for drift alarms
        self.monitor_forward = None  # with --workers N (not the hub): where closed drift windows go
        self._retiring: set[asyncio.Task] = set()

    # -- lookup (request path) ------------------------------------------------------------------

    def lookup(self, name: str, version: str) -> Version:
        model = self.models.get(name)
        if model is None or (model.default is None and not model.versions):
            if model is not None and model.error:
                raise Unavailable(f"model '{name}' is not ready: {model.error}")
            raise NotFound(f"unknown model '{name}'; GET /v2/repository/index lists the models served")
        if not version:
            if model.default is None:
                raise Unavailable(f"model '{name}' has no ready version")
            return model.default
        try:
            number = int(version)
        except ValueError:
            raise NotFound(f"model '{name}': version '{version}' is not a version number") from None
        v = model.versions.get(number)
        if v is None:
            raise NotFound(f"model '{name}' has no ready version {number}; ready versions: {sorted(model.versions)}")
        return v

    # -- discovery ------------------------------------------------------------------------------

    def scan(self) -> list[str]:
        if not self.root.is_dir():
            raise ConfigError(str(self.root), "model_repository", "is not a directory")
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and valid_name(p.name))

    def _read_config(self, name: str, number: int | None = None) -> ModelConfig:
        """The model's config; with `number`, that version's own `config.<number>.yaml` when there
        is one (the router writes one per registry version: versions may differ in signature)."""
        mdir = self.root / name
        cfg_path = mdir / "config.yaml"
        versions = self._version_dirs(mdir)
        if number is not None:
            cfg_path = mdir / f"config.{number}.yaml"
            versions = [number]
        data = load_yaml(cfg_path) if cfg_path.exists() else None
        data = dict(data) if isinstance(data, dict) else ({} if data is None else data)
        auto = False
        if isinstance(data, dict) and ("inputs" not in data or "outputs" not in data):
            onnx_file = next((mdir / str(v) / "model.onnx" for v in reversed(versions) if (mdir / str(v) / "model.onnx").exists()), None)
            if onnx_file is None:
                raise ConfigError(
                    str(cfg_path), "inputs", "is required: only ONNX models can have their inputs and outputs read from the file"
                )
            from parity.serving.runners.onnx import read_onnx_signature

            inputs, outputs, batching = read_onnx_signature(onnx_file, str(cfg_path))
            data.setdefault("platform", "onnxruntime_onnx")
            data["inputs"] = [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in inputs]
            data["outputs"] = [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in outputs]
            if batching and "max_batch_size" not in data:
                data["max_batch_size"] = DEFAULT_MAX_BATCH_SIZE
                data.setdefault("dynamic_batching", {})
            auto = True
        if isinstance(data, dict) and not data.get("platform") and not data.get("backend"):
            found = [p for p, fname in PLATFORMS.items() if any((mdir / str(v) / fname).exists() for v in versions)]
            if len(found) != 1:
                raise ConfigError(str(cfg_path), "platform", f"cannot be inferred from the version directories (found {found or 'no model files'}); set it")
            data["platform"] = found[0]
        config = parse_model_config(data, str(cfg_path), model_name=name)
        if auto:
            config = replace(config, auto_completed=True)
        return config

    @staticmethod
    def _version_dirs(mdir: Path) -> list[int]:
        out = []
        for p in mdir.iterdir():
            if p.is_dir() and p.name.isdigit() and not p.name.startswith("0"):
                out.append(int(p.name))
        return sorted(out)

    def _fingerprint(self, name: str, config_hash: str, config: ModelConfig, number: int) -> tuple:
        f = self.root / name / str(number) / config.model_filename
        st = f.stat()
        return (config_hash, st.st_size, st.st_mtime_ns)

    # -- loading --------------------------------------------------------------------------------

    async def load_model(self, name: str) -> Model:
        """Load (or reload what changed of) one model.  Raises if nothing of it could be served."""
        if not valid_name(name):
            raise NotFound(f"'{name}' is not a valid model name")
        mdir = self.root / name
        if not mdir.is_dir():
            raise NotFound(f"model '{name}' is not in the repository {self.root}")
        model = self.models.get(name)
        if model is None:
            model = self.models[name] = Model(name)
        async with model.lock:
            cfg_path = mdir / "config.yaml"
            try:
                config = self._read_config(name)
                stage = self._feature_stage(config, str(cfg_path))
                if stage is not None:
                    config = stage.client_config(config)
            except ParityError as e:
                model.error = e.message
                self._event(name, "", "failure")
                log.error("model %s: %s", name, e.message)
                raise
            config_hash = hashlib.sha256(cfg_path.read_bytes()).hexdigest() if cfg_path.exists() else "auto"
            wanted = config.version_policy.select(self._version_dirs(mdir))
            if not wanted:
                model.error = f"no version directory with a {config.model_filename} under {mdir}"
                raise ConfigError(str(mdir), "", model.error + "; add one, e.g. 1/" + config.model_filename)
            new_versions: dict[int, Version] = {}
            errors = []
            for number in wanted:
                old = model.versions.get(number)
                vconfig, vstage, vhash = config, stage, config_hash
                own = mdir / f"config.{number}.yaml"
                if own.exists():  # this version's own config (serving from the registry)
                    try:
                        vconfig = self._read_config(name, number)
                        vstage = self._feature_stage(vconfig, str(own))
                        if vstage is not None:
                            vconfig = vstage.client_config(vconfig)
                    except ParityError as e:
                        model.states[number] = ("UNAVAILABLE", e.message)
                        errors.append(f"version {number}: {e.message}")
                        if old is not None:
                            new_versions[number] = old
                        continue
                    vhash = hashlib.sha256(own.read_bytes()).hexdigest()
                try:
                    fp = self._fingerprint(name, vhash, vconfig, number)
                except OSError:
                    model.states[number] = ("UNAVAILABLE", f"{config.model_filename} missing in version {number}")
                    errors.append(model.states[number][1])
                    if old is not None:
                        new_versions[number] = old
                    continue
                if old is not None and old.fingerprint == fp:
                    new_versions[number] = old
                    continue
                model.states[number] = ("LOADING", "")
                try:
                    new_versions[number] = await self._load_version(name, number, vconfig, fp, vstage)
                    model.states[number] = ("READY", "")
                    self._event(name, str(number), "success")
                except ParityError as e:
                    self._event(name, str(number), "failure")
                    log.error("model %s version %d failed to load: %s", name, number, e.message)
                    errors.append(f"version {number}: {e.message}")
                    model.states[number] = ("UNAVAILABLE", e.message)
                    if old is not None:
                        new_versions[number] = old  # keep the old one serving
            if errors:
                # Something wanted failed: what served before keeps serving beside what loaded.
                for n, v in model.versions.items():
                    new_versions.setdefault(n, v)
            retired = [v for n, v in model.versions.items() if new_versions.get(n) is not v]
            # The swap: plain assignments, no await between them, so a request sees old or new.
            model.config = new_versions[max(new_versions)].config if new_versions else config
            model.versions = new_versions
            model.default = new_versions[max(new_versions)] if new_versions else None
            model.error = "; ".join(errors) if not new_versions else ""
            for v in retired:
                if v.number not in new_versions:
                    model.states[v.number] = ("UNAVAILABLE", "unloaded")
                self._retire(v)
            if errors:
                serving = f"; version(s) {sorted(new_versions)} keep serving" if new_versions else ""
                raise ModelLoadError(f"model '{name}': {'; '.join(errors)}{serving}")
            return model

    def _feature_stage(self, config: ModelConfig, source: str):
        """The feature plan of a model whose config names a feature service (None otherwise)."""
        if config.features is None:
            return None
        if self.features is None:
            raise ConfigError(
                source, "features", f"names feature service '{config.features.service}' but the server has no feature "
                "repository; start it with --feature-repository FILE --online-store URL",
            )  # fmt: skip
        from parity.serving.features import FeatureStage

        stage = FeatureStage(config, self.features)
        stage.log = self.feature_log
        return stage

    async def _load_version(self, name: str, number: int, config: ModelConfig, fp: tuple, stage=None) -> Version:
        path = self.root / name / str(number) / config.model_filename
        t0 = time.perf_counter()
        run_config = config if stage is None else stage.runner_config(config)  # the model's own tensors
        runners = [create_runner(run_config, path) for _ in range(config.runtime.instances)]
        loop = asyncio.get_running_loop()

        def load_and_warm() -> dict[int, float]:
            for r in runners:
                r.load()
            timings = [warm_up(r, run_config) for r in runners]
            return {size: max(t[size] for t in timings) for size in timings[0]}

        try:
            timings = await loop.run_in_executor(None, load_and_warm)
        except ParityError:
            raise
        except Exception as e:
            raise ModelLoadError(f"model '{name}' version {number}: {type(e).__name__}: {e}") from None
        inline_max_rows = inline_rows(config, timings)
        key = (name, str(number))
        stats = self.stats.get(key)
        if stats is None:
            stats = self.stats[key] = VersionStats(name, str(number))
        scheduler = Scheduler(config, runners, stats, inline_max_rows=inline_max_rows, stage=stage)
        if self.monitor_config is not None:
            from parity.monitoring.tap import build_monitor

            scheduler.monitor = build_monitor(
                name, str(number), path.parent, run_config.inputs, run_config.outputs,
                feature_input=config.features.input if config.features else None, config=self.monitor_config, alerter=self.alerter,
            )  # fmt: skip
            if scheduler.monitor is not None:
                scheduler.monitor.forward = self.monitor_forward
        version = Version(name, number, config, scheduler, stats, fp)
        if self._on_load is not None:
            self._on_load(version)
        log.info(
            "model %s version %d ready in %.2fs (%s; warm-up µs by batch size %s; batches up to %d rows run on the event loop)",
            name, number, time.perf_counter() - t0, config.platform,
            {k: round(v * 1e6) for k, v in timings.items()}, inline_max_rows,
        )  # fmt: skip
        return version

    def _retire(self, version: Version) -> None:
        async def retire():
            await version.scheduler.drain()
            version.scheduler.close()
            self._event(version.model, version.label, "unload")
            log.info("model %s version %d unloaded after draining", version.model, version.number)

        task = asyncio.get_running_loop().create_task(retire())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def unload_model(self, name: str) -> None:
        model = self.models.get(name)
        if model is None:
            raise NotFound(f"unknown model '{name}'")
        async with model.lock:
            versions = list(model.versions.values())
            model.versions = {}
            model.default = None
            for v in versions:
                model.states[v.number] = ("UNAVAILABLE", "unloaded")
                self._retire(v)
        del self.models[name]
        await self.settle()

    async def settle(self) -> None:
        """Wait until every retired version has drained and closed."""
        while self._retiring:
            await asyncio.gather(*list(self._retiring), return_exceptions=True)

    async def load_all(self) -> list[str]:
        """Load every model in the repository; returns the messages of those that failed."""
        failures = []
        for name in self.scan():
            try:
                await self.load_model(name)
            except ParityError as e:
                failures.append(f"{name}: {e.message}")
        return failures

    async def poll(self) -> None:
        """One repository poll: load new models and changed versions, unload removed ones."""
        names = set(self.scan())
        for name in sorted(names):
            try:
                await self.load_model(name)
            except ParityError:
                pass  # reported in the index and the logs; what served keeps serving
        for name in set(self.models) - names:
            await self.unload_model(name)

    def _event(self, model: str, version: str, result: str) -> None:
        key = (model, version, result)
        self.load_events[key] = self.load_events.get(key, 0) + 1

    # -- reporting ------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return all(m.default is not None for m in self.models.values())

    def index(self, ready_only: bool = False) -> list[dict]:
        out = []
        names = set(self.models)
        try:
            names |= set(self.scan())
        except ConfigError:
            pass
        for name in sorted(names):
            model = self.models.get(name)
            if model is None:
                if not ready_only:
                    out.append({"name": name, "version": "", "state": "UNAVAILABLE", "reason": "not loaded"})
                continue
            if not model.states and model.error and not ready_only:
                out.append({"name": name, "version": "", "state": "UNAVAILABLE", "reason": model.error})
            for number, (state, reason) in sorted(model.states.items()):
                if number in model.versions:
                    state, reason = "READY", ""
                if ready_only and state != "READY":
                    continue
                out.append({"name": name, "version": str(number), "state": state, "reason": reason})
        return out

    async def close(self) -> None:
        for name in list(self.models):
            await self.unload_model(name)


def warm_up(runner, config: ModelConfig) -> dict[int, float]:
    """Run the configured warm-up batch sizes and the powers of two up to max_batch_size; check
    the output datatypes; return the best of two run times per size (seconds)."""
    sizes = set(config.warmup_sizes())
    if config.batching:
        p = 1
        while p < config.max_batch_size:
            sizes.add(p)
            p *= 2
    names = [t.name for t in config.outputs]
    timings: dict[int, float] = {}
    for size in sorted(sizes):
        inputs = [_dummy(spec, size if config.batching else None) for spec in config.inputs]
        best = float("inf")
        for _ in range(2):
            t = time.perf_counter()
            outs = runner.run(inputs, names)
            best = min(best, time.perf_counter() - t)
        timings[size] = best
        for spec, arr in zip(config.outputs, outs):
            expected = DTYPES[spec.datatype]
            if arr.dtype != expected and not (spec.datatype == "BYTES" and arr.dtype.kind in "OSU"):
                raise ModelLoadError(
                    f"model '{config.name}': output '{spec.name}' is {arr.dtype} but config.yaml declares "
                    f"{spec.datatype}; fix the datatype in config.yaml"
                )
    return timings


def inline_rows(config: ModelConfig, timings: dict[int, float]) -> int:
    """The largest batch (rows) cheap enough to run on the event loop, from warm-up timings."""
    top = max(config.max_batch_size, 1)
    mode = config.runtime.execution
    if mode == "inline":
        return top
    if mode == "thread" or config.runtime.device.startswith("cuda"):
        return 0
    cheap = [size for size, t in timings.items() if t < INLINE_THRESHOLD_S]
    return max(cheap) if cheap else 0


def _dummy(spec, batch: int | None) -> np.ndarray:
    shape = tuple(1 if d == -1 else d for d in spec.shape)
    if batch is not None:
        shape = (batch,) + shape
    if spec.datatype == "BYTES":
        return np.full(shape, b"", dtype=object)
    return np.zeros(shape, dtype=DTYPES[spec.datatype])


__all__ = ["Repository", "Version", "Model"]
