"""The retraining controller: sustained drift or degraded performance -> a new version, gated,
rolled out as a canary that the routing rules promote or roll back.

    parity serve --routes configs/routes --retraining configs/retraining/fraud.yaml ...

    # configs/retraining/fraud.yaml
    model: fraud                               # the registry model (served by a routing file)
    training_config: ../training/fraud.yaml    # what `parity train --config` runs
    champion_alias: champion
    canary_alias: canary                       # a routing file's canary reference: its rules take over
    trigger:
      drift_windows: 3                         # consecutive count windows of the champion that alarmed
      performance: {metric: roc_auc, below: 0.7, min_rows: 500}   # optional
    limits:
      min_interval_secs: 3600                  # debounce: at most one run per interval ...
      max_runs_per_day: 4                      # ... and this many per 24 hours (no retraining storms)
    gate: {metric: roc_auc, margin: 0.02}      # parity.training.gate.GateConfig

Every `check_secs` the controller reads the server's monitoring of the version `champion_alias`
points at.  When a trigger holds and the limits allow, it starts the training pipeline as a
separate process (`python -m parity train --config ... --json`), so a crash or a memory blow-up
of training never touches the server.  Then:

- training failed: production is untouched; an alert fires and the audit log records
  `retrain.failed` with the error;
- training succeeded: the promotion gate compares the new version with the champion on the new
  holdout (the champion's ONNX scored on the same rows); failing it records `gate.failed` and alerts;
  passing it moves `canary_alias` to the new version (action `canary`, the gate's evidence), and the
  routing file's canary rules roll it out step by step, then promote it or roll it back.

Each step is in the registry's audit log with its evidence (`retrain.start` carries the drift
windows or the performance figures that triggered it).  A trigger needs fresh evidence after a
run: the windows counted are those closed after the last run started.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from parity.errors import ConfigError, ParityError

log = logging.getLogger("parity.retraining")
ACTOR = "parity-retrainer"


@dataclass(frozen=True)
class RetrainingConfig:
    model: str
    training_config: Path
    champion_alias: str = "champion"
    canary_alias: str = "canary"
    drift_windows: int = 3
    performance_metric: str = ""
    performance_below: float = 0.0
    performance_min_rows: int = 500
    min_interval_secs: float = 3600.0
    max_runs_per_day: int = 4
    gate: dict = field(default_factory=lambda: {"metric": "roc_auc", "margin": 0.02})
    check_secs: float = 2.0
    timeout_secs: float = 3600.0

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RetrainingConfig":
        path = Path(path)
        try:
            doc = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(str(path), "(file)", f"cannot be read as YAML: {e}") from None
        if not isinstance(doc, dict):
            raise ConfigError(str(path), "(top level)", "must be a mapping with 'model' and 'training_config'")
        known = {"model", "training_config", "champion_alias", "canary_alias", "trigger", "limits", "gate", "check_secs", "timeout_secs"}
        for k in doc:
            if k not in known:
                raise ConfigError(str(path), k, f"unknown field; known: {sorted(known)}")
        for k in ("model", "training_config"):
            if not isinstance(doc.get(k), str) or not doc[k]:
                raise ConfigError(str(path), k, "is required (a string)")
        training = (path.parent / doc["training_config"]).resolve()
        if not training.is_file():
            raise ConfigError(str(path), "training_config", f"{training} is not a file")
        trigger = doc.get("trigger") or {}
        limits = doc.get("limits") or {}
        perf = trigger.get("performance") or {}
        if not isinstance(trigger, dict) or not isinstance(limits, dict) or not isinstance(perf, dict):
            raise ConfigError(str(path), "trigger", "trigger, trigger.performance and limits must be mappings")

        def num(where: dict, key: str, default, name: str, minimum: float):
            v = where.get(key, default)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < minimum:
                raise ConfigError(str(path), name, f"must be a number >= {minimum}")
            return v

        gate = doc.get("gate") or {"metric": "roc_auc", "margin": 0.02}
        from parity.training.gate import GateConfig

        try:
            GateConfig.from_dict(gate)
        except ParityError as e:
            raise ConfigError(str(path), "gate", e.message) from None
        return cls(
            model=doc["model"],
            training_config=training,
            champion_alias=doc.get("champion_alias", "champion"),
            canary_alias=doc.get("canary_alias", "canary"),
            drift_windows=int(num(trigger, "drift_windows", 3, "trigger.drift_windows", 1)),
            performance_metric=str(perf.get("metric", "")),
            performance_below=float(num(perf, "below", 0.0, "trigger.performance.below", -1e300)),
            performance_min_rows=int(num(perf, "min_rows", 500, "trigger.performance.min_rows", 1)),
            min_interval_secs=float(num(limits, "min_interval_secs", 3600.0, "limits.min_interval_secs", 0)),
            max_runs_per_day=int(num(limits, "max_runs_per_day", 4, "limits.max_runs_per_day", 1)),
            gate=dict(gate),
            check_secs=float(num(doc, "check_secs", 2.0, "check_secs", 0.05)),
            timeout_secs=float(num(doc, "timeout_secs", 3600.0, "timeout_secs", 1)),
        )


class RetrainingController:
    def __init__(self, config: RetrainingConfig, core, registry_factory, *, db: str, artifacts: str, alerter=None):
        self.config = config
        self.core = core
        self._registry = registry_factory
        self.db, self.artifacts = db, artifacts
        self.alerter = alerter
        self.runs: deque = deque(maxlen=50)  # what happened, newest last (GET /v1/retraining)
        self.started_at: deque = deque(maxlen=config.max_runs_per_day)
        self.running = False
        self.seen_windows = 0  # count windows of the champion already used as evidence
        self.checks = 0  # trigger checks made (for observers)
        self._task: asyncio.Task | None = None

    @property
    def registry(self):
        if callable(self._registry):
            self._registry = self._registry()
        return self._registry

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    async def _forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.check_secs)
            try:
                await self.check()
            except Exception:  # noqa: BLE001 - the loop goes on
                log.exception("retraining check failed; will try again")

    # -- deciding ---------------------------------------------------------------------------------

    def _champion_entry(self) -> tuple[int | None, dict | None]:
        try:
            version = self.registry.resolve(f"{self.config.model}@{self.config.champion_alias}").version
        except ParityError:
            return None, None
        for e in self.core.monitoring(self.config.model)["models"]:
            if e["version"] == str(version):
                return version, e
        return version, None

    def trigger(self) -> dict | None:
        """The evidence for a run if a trigger holds now (None otherwise)."""
        c = self.config
        version, entry = self._champion_entry()
        if entry is None:
            return None
        windows = [w for w in entry["windows"] if w["kind"] == "count"]
        closed = entry["windows_closed"]["count"]
        fresh = windows[-max(0, min(len(windows), closed - self.seen_windows)) :] if closed > self.seen_windows else []
        streak = 0
        for w in reversed(fresh):
            if not w["report"].get("alarm") and not w["report"].get("drift"):
                break
            streak += 1
        if streak >= c.drift_windows:
            drifted = sorted({k for w in fresh[-streak:] for part in ("features", "outputs") for k, col in (w["report"].get(part) or {}).items() if col.get("alarm")})
            return {"trigger": "drift", "version": version, "windows": streak, "drifted": drifted,
                    "window_ends": [w["end"] for w in fresh[-streak:]], "closed_windows": closed}  # fmt: skip
        perf = entry.get("performance") or {}
        if c.performance_metric and perf.get("rows", 0) >= c.performance_min_rows:
            value = (perf.get("metrics") or {}).get(c.performance_metric)
            if isinstance(value, (int, float)) and value < c.performance_below:
                return {"trigger": "performance", "version": version, "metric": c.performance_metric, "value": value,
                        "below": c.performance_below, "rows": perf["rows"], "closed_windows": closed}  # fmt: skip
        return None

    def allowed(self, now: float) -> str | None:
        """None when a run may start now, else why not (debounce, rate limit, one at a time)."""
        c = self.config
        if self.running:
            return "a retraining run is in progress"
        if self.started_at and now - self.started_at[-1] < c.min_interval_secs:
            return f"the last run started {now - self.started_at[-1]:.0f}s ago (min_interval_secs {c.min_interval_secs:g})"
        recent = [t for t in self.started_at if now - t < 86_400]
        if len(recent) >= c.max_runs_per_day:
            return f"{len(recent)} runs in the last 24 hours (max_runs_per_day {c.max_runs_per_day})"
        return None

    async def check(self) -> None:
        self.checks += 1
        evidence = self.trigger()
        if evidence is None:
            return
        why_not = self.allowed(time.time())
        if why_not is not None:
            log.info("retraining of %s held back: %s", self.config.model, why_not)
            return
        self.seen_windows = evidence["closed_windows"]
        await self.run(evidence)

    # -- acting -----------------------------------------------------------------------------------

    async def run(self, evidence: dict) -> dict:
        c = self.config
        self.running = True
        self.started_at.append(time.time())
        story: dict = {"started": _iso(time.time()), "evidence": evidence, "steps": []}
        self.runs.append(story)
        t0 = time.monotonic()
        try:
            await self._record("retrain.start", f"{evidence['trigger']} on {c.model}@{c.champion_alias} (version {evidence['version']})", evidence, evidence["version"])
            story["steps"].append(("training", round(time.monotonic() - t0, 2)))
            result, error = await self._train()
            if error is not None:
                story["outcome"] = "training failed"
                await self._record("retrain.failed", f"training failed; production untouched: {error[-300:]}", {"error": error[-2000:]}, None)
                self._alert("retraining_failed", "critical", f"retraining of {c.model} failed; production is untouched", {"error": error[-500:]})
                return story
            new = int(result["model_version"])
            story["steps"].append((f"trained version {new}", round(time.monotonic() - t0, 2)))
            gate = await asyncio.to_thread(self._gate, result)
            story["gate"] = gate.decision
            story["steps"].append(("gate " + ("passed" if gate.passed else "failed"), round(time.monotonic() - t0, 2)))
            if not gate.passed:
                story["outcome"] = "gate failed"
                await self._record("gate.failed", f"version {new} failed the promotion gate: {gate.decision}", gate.evidence, new)
                self._alert("retraining_gate_failed", "warning", f"retrained {c.model}/{new} failed the promotion gate", gate.evidence)
                return story
            await asyncio.to_thread(
                self.registry.set_alias, c.model, c.canary_alias, new, ACTOR, f"retrained on {evidence['trigger']}; passed the promotion gate",
                gate.evidence, action="canary",
            )  # fmt: skip
            story["outcome"] = f"version {new} is the canary"
            story["steps"].append((f"{c.model}@{c.canary_alias} -> {new}", round(time.monotonic() - t0, 2)))
            log.warning("retraining: %s/%d passed the gate and is the canary", c.model, new)
            return story
        except Exception as e:  # noqa: BLE001 - production stays untouched
            story["outcome"] = f"error: {e}"
            log.exception("retraining of %s failed", c.model)
            self._alert("retraining_failed", "critical", f"retraining of {c.model} failed: {e}", {})
            return story
        finally:
            story["seconds"] = round(time.monotonic() - t0, 2)
            self.running = False

    async def _train(self) -> tuple[dict | None, str | None]:
        """`parity train` in its own process: (result, None) or (None, what went wrong)."""
        with tempfile.TemporaryDirectory(prefix="parity-retrain-") as out:
            cmd = [sys.executable, "-m", "parity", "train", "--config", str(self.config.training_config), "--db", self.db,
                   "--artifacts", self.artifacts, "--no-progress", "--json", "--output-dir", out]  # fmt: skip
            proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            try:
                stdout, stderr = await asyncio.wait_for(proc.communicate(), self.config.timeout_secs)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
                return None, f"training ran past timeout_secs {self.config.timeout_secs:g}"
            if proc.returncode != 0:
                return None, f"parity train exited with {proc.returncode}: {stderr.decode(errors='replace').strip()}"
            try:
                result = json.loads(stdout.decode())
            except ValueError:
                return None, f"parity train printed no JSON result: {stdout.decode(errors='replace')[-500:]}"
            # keep the holdout for the gate: the output directory goes away with this block
            import shutil

            keep = Path(tempfile.mkdtemp(prefix="parity-retrain-holdout-"))
            for key in ("holdout_path", "onnx_path"):
                if result.get(key):
                    dest = keep / Path(result[key]).name
                    shutil.copy(result[key], dest)
                    result[key] = str(dest)
            return result, None

    def _gate(self, result: dict):
        from parity.training.gate import GateConfig, evaluate_gate
        from parity.training.pipeline import score_holdout

        c = self.config
        y, challenger = score_holdout(result["onnx_path"], result["holdout_path"])
        try:
            champion = self.registry.resolve(f"{c.model}@{c.champion_alias}")
        except ParityError:
            champion = None
        champion_scores = None
        if champion is not None:
            with tempfile.TemporaryDirectory(prefix="parity-champion-") as d:
                path = self.registry.fetch(champion.ref, d)
                _, champion_scores = score_holdout(path / "model.onnx", result["holdout_path"])
        return evaluate_gate(GateConfig.from_dict(c.gate), y, champion_scores, challenger)

    async def _record(self, action: str, reason: str, evidence: dict, version: int | None) -> None:
        try:
            await asyncio.to_thread(self.registry.record, action, self.config.model, ACTOR, reason=reason, evidence=evidence, version=version)
        except ParityError as e:
            log.warning("could not write the audit log: %s", e.message)

    def _alert(self, name: str, severity: str, summary: str, details: dict) -> None:
        from parity.monitoring.alerts import Alert

        alert = Alert(name=name, severity=severity, model=self.config.model, version="", summary=summary, details=details)
        if self.alerter is not None:
            self.alerter.fire(alert)
        else:
            log.error("%s", summary)

    def describe(self) -> dict:
        return {"model": self.config.model, "running": self.running, "runs": list(self.runs), "checks": self.checks}


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


__all__ = ["RetrainingConfig", "RetrainingController"]
