"""Wiring only: build the repository and the core, start the transports, poll the repository,
drain on SIGTERM.  With --workers N a parent process starts N of these sharing the ports."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from parity.config import ServerConfig
from parity.serving.core import InferenceCore
from parity.serving.models import Repository
from parity.serving.workers import METRICS_DIR_ENV, WORKER_COUNT_ENV, WORKER_ENV, WorkerGroup

log = logging.getLogger("parity.server")


def make_transports(core: InferenceCore, config: ServerConfig) -> list:
    from parity.serving.transport.http import HttpTransport

    if config.grpc_transport == "fast":
        from parity.serving.transport.grpc_fast import FastGrpcTransport as GrpcTransport
    else:
        from parity.serving.transport.grpc import GrpcTransport
    return [HttpTransport(core, config), GrpcTransport(core, config)]


def open_feature_server(config: ServerConfig):
    """The feature repository and the online store named in the config (loaded at start: a
    broken repository stops the server with the file and the problem named)."""
    from parity.features.definitions import FeatureRepository
    from parity.features.online import open_online_store
    from parity.features.retrieval import FeatureServer

    repo = FeatureRepository.load(config.feature_repository)
    return FeatureServer(repo, open_online_store(config.online_store))


class Server:
    """One serving process."""

    def __init__(self, config: ServerConfig):
        self.config = config
        self.repository = Repository(config.model_repository)
        self.core = InferenceCore(config, self.repository)
        self.transports: list = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        cfg = self.config
        self.repository.scan()  # a missing directory fails here, with its name
        group = self.core.workers = WorkerGroup.from_env(self.core)  # with --workers N (see parity.serving.workers)
        if cfg.feature_repository:
            self.core.features = self.repository.features = open_feature_server(cfg)
            if cfg.feature_log_dir:
                from parity.features.skew import ServedFeatureLog

                self.repository.feature_log = ServedFeatureLog(cfg.feature_log_dir, cfg.feature_log_sample_rate)
                if cfg.feature_verify_secs > 0 and (group is None or group.is_hub):  # every worker's log, checked once
                    self._tasks.append(asyncio.get_running_loop().create_task(self._verify_skew_forever()))
        self.transports = make_transports(self.core, cfg)
        # A lone server listens first, so liveness answers while models load and readiness waits
        # for them.  A worker sharing its ports listens only once loaded: the kernel spreads new
        # connections over every listener, and none should land on a worker that cannot serve yet.
        shared_ports = os.environ.get(WORKER_ENV) is not None
        if group is not None:
            await group.start()  # siblings may send windows and feedback as soon as any serves
            if not group.is_hub:
                self.repository.monitor_forward = group.forward_window
        if not shared_ports:
            for t in self.transports:
                await t.start()
        self._start_monitoring()
        if cfg.routes:
            await self._start_router()
        else:
            failures = await self.repository.load_all()
            for f in failures:
                log.error("not serving %s", f)
        self.core.started = True
        # Everything loaded so far lives as long as the server: keep it out of the collector's
        # scans, and collect young objects less often (fewer pauses on the request path).
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 50, 100)
        if shared_ports:
            for t in self.transports:
                await t.start()
        if cfg.model_control_mode == "poll" and cfg.repository_poll_secs > 0:
            self._tasks.append(asyncio.create_task(self._poll_forever()))
        if group is not None:
            self.core.extra_metrics.append(group.other_metrics)
            self.core.extra_stats.append(group.other_stats)
            group.start_publishing()
        ports = ", ".join(f"{t.name} on {cfg.host}:{t.port}" for t in self.transports)
        log.info("serving %d model(s): %s%s", len(self.repository.models), ports, "" if self.core.ready else " (NOT ready: see errors above)")

    def _start_monitoring(self) -> None:
        """Drift monitoring of versions with a profile, the prediction log for late labels,
        alerts to the log and the webhooks."""
        from parity.monitoring.alerts import Alerter, WebhookNotifier
        from parity.monitoring.performance import PredictionLog
        from parity.monitoring.tap import MonitorConfig

        cfg = self.config
        self.repository.monitor_config = MonitorConfig(cfg.monitor_window_rows, cfg.monitor_time_window_secs, cfg.monitor_false_alarm_rate)
        self.alerter = self.repository.alerter = Alerter([WebhookNotifier(list(cfg.alert_webhooks))] if cfg.alert_webhooks else [])
        group = self.core.workers
        if cfg.prediction_log_rows:
            self.core.prediction_log = PredictionLog(capacity=cfg.prediction_log_rows, ttl_secs=cfg.prediction_log_ttl_secs)
            self.core.prediction_log.forward_joined = group is not None and not group.is_hub
        if group is not None and not group.is_hub:
            return  # the hub (worker 0) tracks the SLOs over every worker's counters
        # SLOs (latency: 99% within 100 ms; availability: 99.9%) with multi-window burn rates,
        # sampled every 10 s from the server's own request metrics (summed over the workers)
        from parity.monitoring.performance import SloTracker

        slo = self.core.slo = SloTracker(resolution_secs=cfg.slo_sample_secs)
        self.core.extra_metrics.append(slo.families)
        if group is not None:
            group.published.append(slo.families)  # whichever worker answers /metrics shows them

        async def sample_slo():
            while True:
                try:
                    slo.sample_families(group.all_metrics() if group is not None else self.core.metric_families())
                except Exception:  # noqa: BLE001 - SLO sampling never stops the server
                    log.exception("SLO sampling failed")
                await asyncio.sleep(cfg.slo_sample_secs)

        self._tasks.append(asyncio.get_running_loop().create_task(sample_slo()))

    async def _verify_skew_forever(self) -> None:
        """The periodic skew check: the logged served vectors recomputed through the training
        path; mismatch rates in /metrics and GET /v1/monitoring, an alert when any differ."""
        from parity.features.definitions import FeatureRepository
        from parity.features.skew import verify
        from parity.monitoring.alerts import Alert

        cfg = self.config
        log_dir = Path(cfg.feature_log_dir)
        while True:
            await asyncio.sleep(cfg.feature_verify_secs)
            try:
                repo = self.core.features.repo if not cfg.feature_verify_repository else FeatureRepository.load(cfg.feature_verify_repository)
                await asyncio.to_thread(self.repository.feature_log.flush)
                for service in sorted(p.name for p in log_dir.iterdir() if p.is_dir()) if log_dir.is_dir() else []:
                    report = await asyncio.to_thread(verify, repo, log_dir, service)
                    self.core.skew[service] = report.to_dict()
                    if report.mismatched_rows and getattr(self, "alerter", None) is not None:
                        bad = sorted(n for n, f in report.features.items() if f["mismatches"])
                        self.alerter.fire(Alert(name="feature_skew", severity="critical", summary=(
                            f"feature service {service}: {report.mismatched_rows} of {report.rows} served rows differ from the training path"),
                            details={"service": service, "features": bad, "mismatch_rate": report.mismatch_rate}))  # fmt: skip
            except Exception:  # noqa: BLE001 - the check never stops the server
                log.exception("the periodic skew check failed; will try again")

    async def _start_router(self) -> None:
        """Serve from the registry: endpoints from the routing files, versions fetched into the
        model repository (the serving cache) and swapped as aliases move."""
        from parity.home import default_artifact_root, default_db_url
        from parity.registry import Registry
        from parity.serving.router import Router

        cfg = self.config
        def open_registry():
            return Registry.open(cfg.registry_db or default_db_url(), cfg.registry_artifacts or default_artifact_root())

        router = Router(self.repository, Path(cfg.routes), open_registry, cfg.model_repository, poll_secs=cfg.registry_poll_secs)
        self.core.router = router
        self.core.extra_metrics.append(router.families)
        group = self.core.workers
        if group is not None:  # one canary judgment and one audit trail for all the workers
            group.published_extra["counters"] = router.local_counters
            group.published.append(lambda: [f for f in router.families() if f.kind == "counter"])
            if group.is_hub:
                router.peer_counters = lambda key: [c[key] for c in group.peer_extras("counters") if key in c]
                group.published_extra["canary"] = router.canary_states
                router.on_canary_change = group.push_canary_states
            else:
                router.follow = lambda: group.hub_extra("canary")
                router.audits = False
        await router.start()
        self._router = router
        if cfg.retraining and (self.core.workers is None or self.core.workers.is_hub):  # one controller per group
            from parity.retraining.controller import RetrainingConfig, RetrainingController

            controller = RetrainingController(
                RetrainingConfig.load(cfg.retraining), self.core, open_registry,
                db=cfg.registry_db or default_db_url(), artifacts=cfg.registry_artifacts or default_artifact_root(), alerter=self.alerter,
            )  # fmt: skip
            self.core.retraining = controller
            controller.start()

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.repository_poll_secs)
            try:
                await self.repository.poll()
            except Exception:  # a poll must never stop the server
                log.exception("repository poll failed; will try again")

    def request_stop(self) -> None:
        self._stop.set()

    async def run_until_stopped(self) -> None:
        await self._stop.wait()
        await self.shutdown()

    async def shutdown(self) -> None:
        """Stop accepting, answer everything accepted, unload, exit."""
        log.info("draining: not ready, finishing accepted requests")
        self.core.draining = True
        for t in self._tasks:
            t.cancel()
        grace = self.config.drain_timeout_secs
        await asyncio.gather(*(t.stop(grace) for t in self.transports))
        if getattr(self.core, "retraining", None) is not None:
            await self.core.retraining.stop()
        if getattr(self, "_router", None) is not None:
            await self._router.stop()
        if self.core.features is not None:
            await self.core.features.store.close_async()
        await self.repository.close()
        if self.repository.feature_log is not None:
            self.repository.feature_log.close()  # the last samples to disk
        if getattr(self, "alerter", None) is not None:
            self.alerter.close()
        if self.core.workers is not None:
            await self.core.workers.stop()
        log.info("stopped")


async def _serve(config: ServerConfig) -> int:
    server = Server(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.request_stop)
    await server.start()
    await server.run_until_stopped()
    return 0


def run_server(config: ServerConfig) -> int:
    """Run one serving process (on uvloop) until SIGTERM/SIGINT; returns the exit status."""
    import uvloop

    if config.workers > 1 and os.environ.get(WORKER_ENV) is None:
        return _run_workers(config)
    return uvloop.run(_serve(config))


def _run_workers(config: ServerConfig) -> int:
    """Start N worker processes sharing the ports (SO_REUSEPORT) and supervise them."""
    if config.http_port == 0 or config.grpc_port == 0:
        print("--workers > 1 needs fixed ports (not 0): the workers share them", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="parity-metrics-") as mdir:
        children = []
        for i in range(config.workers):
            env = dict(os.environ, **{WORKER_ENV: str(i), METRICS_DIR_ENV: mdir, WORKER_COUNT_ENV: str(config.workers)})
            children.append(subprocess.Popen([sys.executable, "-m", "parity", *sys.argv[1:]], env=env))
        stopping = False

        def forward(signum, _frame):
            nonlocal stopping
            stopping = True
            for c in children:
                if c.poll() is None:
                    c.send_signal(signum)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        status = 0
        while children:
            for c in list(children):
                rc = c.poll()
                if rc is None:
                    continue
                children.remove(c)
                if rc != 0:
                    status = rc
                    if not stopping:
                        log.error("worker %d exited with %d; stopping the others", c.pid, rc)
                        forward(signal.SIGTERM, None)
            time.sleep(0.1)
        return status
