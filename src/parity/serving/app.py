"""Wiring only: build the repository and the core, start the transports, poll the repository,
drain on SIGTERM.  With --workers N a parent process starts N of these sharing the ports."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from parity.config import ServerConfig
from parity.monitoring import metrics
from parity.serving.core import InferenceCore
from parity.serving.models import Repository

log = logging.getLogger("parity.server")

METRICS_DIR_ENV = "PARITY_WORKER_METRICS_DIR"
WORKER_ENV = "PARITY_WORKER_INDEX"


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
        # A lone server listens first, so liveness answers while models load and readiness waits
        # for them.  A worker sharing its ports listens only once loaded: the kernel spreads new
        # connections over every listener, and none should land on a worker that cannot serve yet.
        if cfg.feature_repository:
            self.core.features = self.repository.features = open_feature_server(cfg)
            if cfg.feature_log_dir:
                from parity.features.skew import ServedFeatureLog

                self.repository.feature_log = ServedFeatureLog(cfg.feature_log_dir, cfg.feature_log_sample_rate)
                if cfg.feature_verify_secs > 0:
                    self._tasks.append(asyncio.get_running_loop().create_task(self._verify_skew_forever()))
        self.transports = make_transports(self.core, cfg)
        shared_ports = os.environ.get(WORKER_ENV) is not None
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
        self._setup_worker_metrics()
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
        if cfg.prediction_log_rows:
            self.core.prediction_log = PredictionLog(capacity=cfg.prediction_log_rows, ttl_secs=cfg.prediction_log_ttl_secs)
        # SLOs (latency: 99% within 100 ms; availability: 99.9%) with multi-window burn rates,
        # sampled every 10 s from the server's own request metrics
        from parity.monitoring.performance import SloTracker

        slo = self.core.slo = SloTracker()
        self.core.extra_metrics.append(slo.families)

        async def sample_slo():
            while True:
                try:
                    slo.sample_families(self.core.metric_families())
                except Exception:  # noqa: BLE001 - SLO sampling never stops the server
                    log.exception("SLO sampling failed")
                await asyncio.sleep(10.0)

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
        await router.start()
        self._router = router
        if cfg.retraining:
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

    def _setup_worker_metrics(self) -> None:
        """With several workers each one publishes its samples to a shared directory every second,
        and answers /metrics with the sum over all workers."""
        mdir = os.environ.get(METRICS_DIR_ENV)
        if not mdir:
            return
        me = os.environ.get(WORKER_ENV, str(os.getpid()))
        path = Path(mdir) / f"worker-{me}.json"

        async def publish():
            while True:
                data = json.dumps({"metrics": metrics.to_json(self.core.metric_families()), "stats": self.core.model_statistics(local=True)})
                tmp = path.with_suffix(".tmp")
                tmp.write_text(data)
                os.replace(tmp, path)
                await asyncio.sleep(1.0)

        def others() -> list[dict]:
            docs = []
            for p in Path(mdir).glob("worker-*.json"):
                if p != path:
                    try:
                        docs.append(json.loads(p.read_text()))
                    except (OSError, ValueError):
                        pass  # a worker gone or its file unreadable: skip it this time
            return docs

        def other_metrics() -> list:
            fams: list = []
            for doc in others():
                metrics.merge(fams, metrics.from_json(doc["metrics"]))
            return fams

        self.core.extra_metrics.append(other_metrics)
        self.core.extra_stats.append(lambda: [st for doc in others() for st in doc["stats"]])
        self._tasks.append(asyncio.create_task(publish()))

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
            env = dict(os.environ, **{WORKER_ENV: str(i), METRICS_DIR_ENV: mdir})
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
