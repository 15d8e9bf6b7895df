"""Serving benchmark: our server vs. Triton (PyTriton), dynamic batching, raw ONNX Runtime.

One invocation:
  (a) builds the model repositories (mlp32 + mlp1024 with dynamic batching; mlp1024 without)
      into a temporary directory;
  (b) starts our server (``--server-cmd``, by default
      ``python -m parity serve --model-repository DIR --http-port P --grpc-port Q
      --grpc-transport fast``) and waits for GET /v2/health/ready and every model's /ready;
  (c) "ours":     perf_analyzer over gRPC and HTTP at concurrency 1, 8, 32 on mlp32
                  -> throughput, p50, p99, server CPU us per request;
  (c') "grpcio":  our server again with ``--grpc-transport grpcio`` (the reference transport),
                  mlp32 over gRPC only at the same concurrencies, and the ratios fast/grpcio;
  (d) "peer":     the same as (c) against Triton through PyTriton (bench/pytriton_peer.py), and
                  the ratios ours/theirs (fast/peer and grpcio/peer for gRPC);
  (e) "batching": mlp1024, one-row requests at concurrency 32, dynamic batching off vs. on;
      "rows":     mlp1024, 16-row requests (-b 16) at concurrency 8 vs. ONNX Runtime's own
                  rows/s at batch 64 in this process with the same thread settings;
  (f) prints tables and writes every figure to bench/results/serving-<timestamp>.json.

Pick pieces with --only (sections: ours, grpcio, peer, batching, rows; shorthands: mlp32 =
ours+grpcio+peer, mlp1024 = batching+rows; protocols: grpc, http), --skip-peer / --skip-ours
(also drops grpcio) / --skip-mlp1024, and --quick (short measurement windows). Examples::

    python bench/serving.py                          # everything (a few minutes)
    python bench/serving.py --quick --only peer,grpc # PyTriton over gRPC, < 1 minute
    python bench/serving.py --quick --only mlp32,grpc --concurrency 1 32
        # both gRPC transports of ours side by side with PyTriton
    python bench/serving.py --quick --skip-peer      # only our server
    python bench/serving.py --server-cmd "{python} bench/pytriton_peer.py --model-repository {repo} \\
        --http-port {http_port} --grpc-port {grpc_port}" --server-access-token parity-bench-token
        # the peer standing in for our server: exercises every section of the driver but
        # grpcio (add --grpcio-server-cmd with the same command to exercise that one too)

Placeholders in --server-cmd: {python} {repo} {http_port} {grpc_port} {root} {grpc_transport}.
{grpc_transport} is "fast" for the ours/batching/rows server and "grpcio" for the grpcio section;
--grpcio-server-cmd (same placeholders) overrides the grpcio section's command. Without either,
a --server-cmd with no {grpc_transport} cannot pick the transport, and the grpcio section is left
out (with a note). The servers run from the project root with <root>/src prepended to
PYTHONPATH, in their own process group, and are stopped with SIGTERM (SIGKILL after
--stop-timeout seconds).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import models as bench_models  # noqa: E402
from bench import perf  # noqa: E402
from bench.pytriton_peer import PEER_ACCESS_TOKEN, access_headers  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
DEFAULT_SERVER_CMD = ("{python} -m parity serve --model-repository {repo} --http-port {http_port} "
                      "--grpc-port {grpc_port} --grpc-transport {grpc_transport}")
TRANSPORT_PLACEHOLDER = "{grpc_transport}"
SECTIONS = ("ours", "grpcio", "peer", "batching", "rows")
SHORTHANDS = {"mlp32": ("ours", "grpcio", "peer"), "mlp1024": ("batching", "rows"), "all": SECTIONS}
PROTOCOLS = ("grpc", "http")
# The value of {grpc_transport} for each of our servers: "ours" (which also serves batching and
# rows) runs the fast transport, "grpcio" the reference one.
GRPC_TRANSPORTS = {"ours": "fast", "grpcio": "grpcio"}
# Sections measured over fewer protocols than --only selects: the grpcio section compares gRPC
# transports, so HTTP (the same code under either transport) is not measured there.
SECTION_PROTOCOLS = {"grpcio": ("grpc",)}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- servers


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class ServerError(RuntimeError):
    pass


class ManagedServer:
    """A server process started for the benchmark and stopped afterwards.

    Waits for /v2/health/ready and /v2/models/<m>/ready for each model in ``models``.
    """

    def __init__(
        self,
        name: str,
        cmd: List[str],
        http_port: int,
        grpc_port: int,
        models: Sequence[str],
        log_path: Path,
        headers: Optional[Dict[str, str]] = None,
        grpc_headers: Optional[Dict[str, str]] = None,
        env: Optional[Dict[str, str]] = None,
        ready_timeout: float = 120.0,
        stop_timeout: float = 30.0,
        cpu_affinity: Optional[Sequence[int]] = None,
    ):
        self.name = name
        self.cmd = cmd
        self.models = list(models)
        self.log_path = log_path
        self.env = env
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.cpu_affinity = cpu_affinity
        self.proc: Optional[subprocess.Popen] = None
        self.target = perf.Target(name, http_port, grpc_port, headers=dict(headers or {}),
                                  grpc_headers=dict(grpc_headers or {}))
        self.startup_s: Optional[float] = None
        self.exit_code: Optional[int] = None
        self.info: dict = {}  # what the benchmark records about this server

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def start(self) -> "ManagedServer":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        logfile = open(self.log_path, "wb")
        affinity = self.cpu_affinity

        def pin():
            if affinity:
                os.sched_setaffinity(0, set(affinity))

        started = time.monotonic()
        try:
            # Its own process group (stopped as one), but not its own session: Linux gives each
            # session its own scheduling autogroup, and a server alone in one takes a whole core
            # while perf_analyzer's 30-odd threads share the other. Its main thread, which closes
            # the measurement windows, then falls behind its own workers above ~30,000 infer/s,
            # and the run never ends (its memory grows by GBs). In one session, as when both are
            # started from one shell, threads are scheduled alike.
            self.proc = subprocess.Popen(
                self.cmd, stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=str(ROOT), env=self.env, process_group=0, preexec_fn=pin if affinity else None,
            )
        except OSError as exc:
            raise ServerError(f"{self.name}: cannot start {self.cmd[0]}: {exc}") from None
        finally:
            logfile.close()
        self.target.pid = self.proc.pid
        deadline = started + self.ready_timeout
        while True:
            if self.proc.poll() is not None:
                raise ServerError(
                    f"{self.name} exited with {self.proc.returncode} before it was ready\n"
                    f"command: {shlex.join(self.cmd)}\n--- log tail ({self.log_path}) ---\n{self.log_tail()}"
                )
            if self.target.is_ready() and all(self.target.is_ready(m) for m in self.models):
                break
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(
                    f"{self.name} not ready after {self.ready_timeout:.0f}s\n--- log tail ---\n{self.log_tail()}"
                )
            time.sleep(0.25)
        self.startup_s = time.monotonic() - started
        return self

    def stop(self) -> Optional[int]:
        if self.proc is None or self.proc.poll() is not None:
            if self.proc is not None:
                self.exit_code = self.proc.returncode
            return self.exit_code
        try:
            self.proc.send_signal(signal.SIGTERM)
            self.exit_code = self.proc.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            log(f"  {self.name} did not stop within {self.stop_timeout:.0f}s of SIGTERM; killing its process group")
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.exit_code = self.proc.wait()
        return self.exit_code

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def format_cmd(template: str, **values) -> List[str]:
    return [part.format(**values) for part in shlex.split(template)]


def grpcio_server_cmd(args: argparse.Namespace) -> Optional[str]:
    """The grpcio section's command template: --grpcio-server-cmd, else --server-cmd when it has
    the {grpc_transport} placeholder (filled in with "grpcio"), else None (cannot be started)."""
    if getattr(args, "grpcio_server_cmd", None):
        return args.grpcio_server_cmd
    if TRANSPORT_PLACEHOLDER in args.server_cmd:
        return args.server_cmd
    return None


def section_transport(args: argparse.Namespace, section: str) -> Optional[str]:
    """The gRPC transport our server runs for ``section`` ("ours" or "grpcio"); None where the
    command template does not say (no {grpc_transport} placeholder)."""
    template = args.server_cmd if section == "ours" else grpcio_server_cmd(args)
    if template is None or TRANSPORT_PLACEHOLDER not in template:
        return None
    return GRPC_TRANSPORTS[section]


def pytriton_installed() -> bool:
    return importlib.util.find_spec("pytriton") is not None


def server_env() -> Dict[str, str]:
    env = dict(os.environ)
    src = ROOT / "src"
    if src.is_dir():
        parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join([str(src)] + [p for p in parts if p != str(src)])
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


# --------------------------------------------------------------------------- ONNX Runtime alone


def ort_rows_per_second(model_path: Path, batch: int = 64, intra_op_threads: int = 1, inter_op_threads: int = 1,
                        seconds: float = 3.0, seed: int = 0) -> dict:
    """Rows/s of ONNX Runtime running the model in this process at a fixed batch size."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    meta = session.get_inputs()[0]
    features = [d for d in meta.shape[1:]]
    x = np.random.default_rng(seed).standard_normal([batch] + features, dtype=np.float32)
    feed = {meta.name: x}
    for _ in range(10):
        session.run(None, feed)
    runs = 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    while True:
        session.run(None, feed)
        runs += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            break
    cpu = time.process_time() - cpu0
    rows = runs * batch
    return {
        "model": model_path.parent.parent.name,
        "batch": batch,
        "intra_op_threads": intra_op_threads,
        "inter_op_threads": inter_op_threads,
        "runs": runs,
        "seconds": elapsed,
        "rows_per_s": rows / elapsed,
        "us_per_row": elapsed * 1e6 / rows,
        "cpu_us_per_row": cpu * 1e6 / rows,
    }


# --------------------------------------------------------------------------- tables


def fmt(value, spec: str = ".0f", missing: str = "-") -> str:
    if value is None:
        return missing
    return format(value, spec)


def ratio(a, b) -> Optional[float]:
    if a is None or b in (None, 0):
        return None
    return a / b


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h)) for i, h in enumerate(headers)]
    line = "  ".join(str(h).rjust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    for r in rows:
        out.append("  ".join(str(c).rjust(w) for c, w in zip(r, widths)))
    return "\n".join(out)


# --------------------------------------------------------------------------- the benchmark


class Benchmark:
    def __init__(self, args: argparse.Namespace, sections: Sequence[str], protocols: Sequence[str],
                 notes: Sequence[str] = ()):
        self.args = args
        self.sections = list(sections)
        self.protocols = list(protocols)
        self.notes = list(notes)  # what the plan left out and why (recorded in meta)
        self.results: List[dict] = []
        self.errors: List[dict] = []
        self.servers: List[dict] = []
        self.ort: Optional[dict] = None
        self.step = 0
        self.total = self.count_steps()
        self.measurement = perf.Measurement(
            mode=args.measurement_mode,
            request_count=args.request_count,
            interval_ms=args.interval_ms,
            stability_pct=args.stability_pct,
            max_trials=args.max_trials,
            percentile=args.percentile,
        )
        self.started = time.monotonic()
        self.loadavg_start = list(os.getloadavg())
        self.workdir: Optional[Path] = None

    def section_protocols(self, section: str) -> List[str]:
        """The selected protocols that ``section`` measures (grpcio: gRPC only)."""
        allowed = SECTION_PROTOCOLS.get(section, PROTOCOLS)
        return [p for p in self.protocols if p in allowed]

    def count_steps(self) -> int:
        n_proto, n_conc = len(self.protocols), len(self.args.concurrency)
        steps = 0
        steps += n_proto * n_conc if "ours" in self.sections else 0
        steps += len(self.section_protocols("grpcio")) * n_conc if "grpcio" in self.sections else 0
        steps += n_proto * n_conc if "peer" in self.sections else 0
        steps += 2 * n_proto if "batching" in self.sections else 0
        steps += n_proto + 1 if "rows" in self.sections else 0
        return steps

    def progress(self, label: str) -> str:
        self.step += 1
        return f"[{self.step}/{self.total} {time.monotonic() - self.started:5.0f}s] {label}"

    # -- pieces ------------------------------------------------------------------------

    def build_repositories(self, root: Path) -> Dict[str, Path]:
        a = self.args
        repos: Dict[str, Path] = {}
        common = dict(max_batch_size=a.max_batch_size, intra_op_threads=a.intra_op_threads,
                      inter_op_threads=a.inter_op_threads, max_queue_delay_microseconds=a.max_queue_delay_us,
                      onnx_cache=root / "onnx-cache")
        need_main = [m for m, needed in (("mlp32", {"ours", "grpcio", "peer"}), ("mlp1024", {"batching", "rows"}))
                     if needed & set(self.sections)]
        if need_main:
            t0 = time.monotonic()
            repos["batching"] = root / "repo-batching"
            bench_models.build_repository(repos["batching"], batching=True, models=need_main, **common)
            log(f"built {repos['batching']} ({', '.join(need_main)}; dynamic batching on) "
                f"in {time.monotonic() - t0:.1f}s")
        if "batching" in self.sections:
            repos["nobatch"] = root / "repo-nobatch"
            bench_models.build_repository(repos["nobatch"], batching=False, models=["mlp1024"], **common)
            log(f"built {repos['nobatch']} (mlp1024; dynamic batching off)")
        return repos

    def measure(self, server: ManagedServer, section: str, model: str, protocol: str, concurrency: int,
                batch_size: int = 1, variant: Optional[str] = None) -> Optional[dict]:
        label = f"{server.name:<6} {model:<8} {protocol:<4} c={concurrency:<3} b={batch_size:<3}"
        if variant:
            label += f" {variant}"
        print(f"{self.progress(label)} ... ", end="", file=sys.stderr, flush=True)
        started = time.monotonic()
        if server.proc is not None and server.proc.poll() is not None:
            summary = f"{server.name} has exited ({server.proc.returncode}); see {server.log_path}"
            log(f"FAILED: {summary}")
            self.errors.append({"section": section, "server": server.name, "model": model, "protocol": protocol,
                                "concurrency": concurrency, "batch_size": batch_size, "variant": variant,
                                "summary": summary, "error": summary + "\n" + server.log_tail()})
            return None
        try:
            result = perf.run_perf(
                server.target, model, protocol=protocol, concurrency=concurrency, batch_size=batch_size,
                measurement=self.measurement, shapes=self.shapes(server, model), timeout=self.args.perf_timeout,
                cpu_affinity=self.args.client_cpus,
                keep_dir=(self.workdir / "perf") if self.args.keep_work else None,
            )
        except (perf.PerfAnalyzerError, FileNotFoundError, OSError) as exc:
            summary = exc.summary if isinstance(exc, perf.PerfAnalyzerError) else str(exc).splitlines()[0]
            log(f"FAILED: {summary}")
            self.errors.append({"section": section, "server": server.name, "model": model, "protocol": protocol,
                                "concurrency": concurrency, "batch_size": batch_size, "variant": variant,
                                "summary": summary, "error": str(exc)})
            return None
        record = {"section": section, "server": server.name, "variant": variant,
                  "grpc_transport": server.info.get("grpc_transport"), **result.as_dict()}
        self.results.append(record)
        cpu = fmt(result.server_cpu_us_per_request)
        log(f"{result.throughput:8.1f} infer/s  p50 {result.p50_us / 1000:6.2f} ms  "
            f"p99 {result.p99_us / 1000:6.2f} ms  cpu {cpu} us/req"
            f"{'' if result.stable else '  (unstable)'}{self.busy_note(result)}  [{time.monotonic() - started:.0f}s]")
        return record

    def busy_note(self, result: perf.PerfResult) -> str:
        if result.other_load is not None and result.other_load >= self.args.busy_threshold:
            return f"  (machine busy: {result.other_load:.1f} cores used by other work)"
        return ""

    def shapes(self, server: ManagedServer, model: str) -> Optional[Dict[str, List[int]]]:
        """--shape values for inputs with variable (non-batch) dimensions, from the model metadata."""
        try:
            meta = server.target.get_json(f"/v2/models/{model}")
        except Exception:  # metadata is optional for perf_analyzer's purposes
            return None
        shapes = {}
        for tensor in meta.get("inputs", []):
            dims = list(tensor.get("shape", []))
            if dims and dims[0] == -1:
                dims = dims[1:]  # the batch dimension
            if any(d == -1 for d in dims):
                shapes[tensor["name"]] = [self.args.var_dim if d == -1 else d for d in dims]
        return shapes or None

    def start_server(self, kind: str, repo: Path, models: Sequence[str], variant: str) -> Optional[ManagedServer]:
        """Starts "ours" (fast gRPC transport), "grpcio" (our server on grpcio) or "peer"."""
        a = self.args
        http_port, grpc_port = free_port(), free_port()
        name = kind if kind in ("ours", "grpcio") else "peer"
        transport = None
        if kind in ("ours", "grpcio"):
            template = a.server_cmd if kind == "ours" else grpcio_server_cmd(a)
            if template is None:  # main() leaves the section out first; this is for direct callers
                message = (f"--server-cmd has no {TRANSPORT_PLACEHOLDER} placeholder and there is no "
                           f"--grpcio-server-cmd: cannot start our server on grpcio")
                log(f"  cannot start {name}: {message}")
                self.errors.append({"section": "startup", "server": name, "variant": variant, "summary": message,
                                    "error": message})
                self.servers.append({"server": name, "variant": variant, "error": message})
                return None
            transport = section_transport(a, kind)
            cmd = format_cmd(template, python=sys.executable, repo=str(repo), http_port=http_port,
                             grpc_port=grpc_port, root=str(ROOT), grpc_transport=GRPC_TRANSPORTS[kind])
            headers = dict(a.server_header)
            grpc_headers = dict(a.server_header)
            if a.server_access_token:
                headers.update(access_headers("http", a.server_access_token))
                grpc_headers.update(access_headers("grpc", a.server_access_token))
        else:
            if not pytriton_installed():
                message = "nvidia-pytriton is not installed (bash bench/setup.sh --peer), or use --skip-peer"
                log(f"  cannot start the peer: {message}")
                self.errors.append({"section": "startup", "server": "peer", "variant": variant, "summary": message,
                                    "error": message})
                self.servers.append({"server": "peer", "variant": variant, "error": message})
                return None
            cmd = [sys.executable, str(BENCH / "pytriton_peer.py"), "--model-repository", str(repo),
                   "--http-port", str(http_port), "--grpc-port", str(grpc_port),
                   "--access-token", PEER_ACCESS_TOKEN]
            for m in models:
                cmd += ["--model", m]
            headers, grpc_headers = access_headers("http"), access_headers("grpc")
        server = ManagedServer(
            name, cmd, http_port, grpc_port, models, self.workdir / "logs" / f"{name}-{variant}.log",
            headers=headers, grpc_headers=grpc_headers, env=server_env(), ready_timeout=a.ready_timeout,
            stop_timeout=a.stop_timeout, cpu_affinity=a.server_cpus,
        )
        log(f"starting {name} ({variant}): {shlex.join(cmd)}")
        info = {"server": name, "variant": variant, "command": cmd, "http_port": http_port, "grpc_port": grpc_port,
                "grpc_transport": transport}
        try:
            server.start()
        except ServerError as exc:
            log(f"  FAILED to start {name}: {exc}")
            self.errors.append({"section": "startup", "server": name, "variant": variant, "error": str(exc)})
            info["error"] = str(exc).splitlines()[0]
            self.servers.append(info)
            return None
        info["startup_s"] = server.startup_s
        info["idle_cpu_per_s"] = perf.idle_cpu_rate(server.target.pid, 1.0)
        log(f"  ready in {server.startup_s:.1f}s (pid {server.target.pid}, idle cpu "
            f"{info['idle_cpu_per_s'] * 100:.1f}% of a core)")
        self.servers.append(info)
        server.info = info
        return server

    def stop_server(self, server: ManagedServer) -> None:
        started = time.monotonic()
        code = server.stop()
        server.info["exit_code"] = code
        server.info["stop_s"] = time.monotonic() - started
        log(f"  stopped {server.name} (exit {code}, {server.info['stop_s']:.1f}s)")

    def skip_steps(self, count: int, why: str) -> None:
        for _ in range(count):
            self.progress("")
        log(f"  skipped {count} measurement(s): {why}")

    # -- the plan ------------------------------------------------------------------------

    def run(self) -> int:
        a = self.args
        perf.check_perf_analyzer()
        tmp = tempfile.TemporaryDirectory(prefix="parity-bench-")
        self.workdir = Path(a.work_dir) if a.work_dir else Path(tmp.name)
        self.workdir.mkdir(parents=True, exist_ok=True)
        log(f"sections: {', '.join(self.sections)}; protocols: {', '.join(self.protocols)}; "
            f"concurrency: {' '.join(map(str, a.concurrency))}; {self.total} measurements; work dir {self.workdir}")
        try:
            repos = self.build_repositories(self.workdir)
            n_p, n_c = len(self.protocols), len(a.concurrency)

            if "rows" in self.sections:
                print(f"{self.progress(f'ONNX Runtime in-process, mlp1024, batch {a.ort_batch}')} ... ",
                      end="", file=sys.stderr, flush=True)
                self.ort = ort_rows_per_second(
                    repos["batching"] / "mlp1024" / "1" / "model.onnx", batch=a.ort_batch,
                    intra_op_threads=a.intra_op_threads, inter_op_threads=a.inter_op_threads,
                    seconds=a.ort_seconds,
                )
                log(f"{self.ort['rows_per_s']:.0f} rows/s, {self.ort['cpu_us_per_row']:.1f} cpu us/row")

            ours_main = [s for s in ("ours", "batching", "rows") if s in self.sections]
            if ours_main:
                models = (["mlp32"] if "ours" in ours_main else []) + (
                    ["mlp1024"] if {"batching", "rows"} & set(ours_main) else [])
                planned = (n_p * n_c if "ours" in ours_main else 0) + (n_p if "batching" in ours_main else 0) + (
                    n_p if "rows" in ours_main else 0)
                server = self.start_server("ours", repos["batching"], models, "batching-on")
                if server is None:
                    self.skip_steps(planned, "our server did not start")
                else:
                    try:
                        if "ours" in ours_main:
                            for protocol in self.protocols:
                                for c in a.concurrency:
                                    self.measure(server, "ours", "mlp32", protocol, c)
                        if "batching" in ours_main:
                            for protocol in self.protocols:
                                self.measure(server, "batching", "mlp1024", protocol, a.batching_concurrency,
                                             variant="batching-on")
                        if "rows" in ours_main:
                            for protocol in self.protocols:
                                self.measure(server, "rows", "mlp1024", protocol, a.rows_concurrency,
                                             batch_size=a.rows_batch)
                    finally:
                        self.stop_server(server)

            if "grpcio" in self.sections:
                grpcio_protocols = self.section_protocols("grpcio")
                server = self.start_server("grpcio", repos["batching"], ["mlp32"], "batching-on")
                if server is None:
                    self.skip_steps(len(grpcio_protocols) * n_c, "our server on grpcio did not start")
                else:
                    try:
                        for protocol in grpcio_protocols:
                            for c in a.concurrency:
                                self.measure(server, "grpcio", "mlp32", protocol, c)
                    finally:
                        self.stop_server(server)

            if "batching" in self.sections:
                server = self.start_server("ours", repos["nobatch"], ["mlp1024"], "batching-off")
                if server is None:
                    self.skip_steps(n_p, "our server did not start")
                else:
                    try:
                        for protocol in self.protocols:
                            self.measure(server, "batching", "mlp1024", protocol, a.batching_concurrency,
                                         variant="batching-off")
                    finally:
                        self.stop_server(server)

            if "peer" in self.sections:
                server = self.start_server("peer", repos["batching"], ["mlp32"], "batching-on")
                if server is None:
                    self.skip_steps(n_p * n_c, "the peer did not start")
                else:
                    try:
                        for protocol in self.protocols:
                            for c in a.concurrency:
                                self.measure(server, "peer", "mlp32", protocol, c)
                    finally:
                        self.stop_server(server)
        except KeyboardInterrupt:
            log("interrupted; writing what was measured so far")
            self.errors.append({"section": "all", "error": "interrupted"})
        finally:
            summary = self.summarise()
            self.print_tables(summary)
            path = self.write_json(summary)
            if path:
                log(f"\nwrote {path}")
            if not a.work_dir:
                tmp.cleanup()
        return 1 if self.errors else 0

    # -- reporting ------------------------------------------------------------------------

    def find(self, **match) -> Optional[dict]:
        for r in self.results:
            if all(r.get(k) == v for k, v in match.items()):
                return r
        return None

    def compare(self, section_a: str, section_b: str, protocols: Sequence[str]) -> List[dict]:
        """Per protocol and concurrency, section_a's figures over section_b's (where both ran)."""
        out = []
        for protocol in protocols:
            for c in self.args.concurrency:
                a = self.find(section=section_a, protocol=protocol, concurrency=c)
                b = self.find(section=section_b, protocol=protocol, concurrency=c)
                if a and b:
                    out.append({
                        "protocol": protocol, "concurrency": c,
                        "throughput_ratio": ratio(a["throughput"], b["throughput"]),
                        "p50_ratio": ratio(a["p50_us"], b["p50_us"]),
                        "p99_ratio": ratio(a["p99_us"], b["p99_us"]),
                        "cpu_per_request_ratio": ratio(a["server_cpu_us_per_request"],
                                                       b["server_cpu_us_per_request"]),
                    })
        return out

    def summarise(self) -> dict:
        a = self.args
        batching, rows = [], []
        comparisons = self.compare("ours", "peer", self.protocols)
        grpc = [p for p in self.protocols if p == "grpc"]
        for protocol in self.protocols:
            on = self.find(section="batching", protocol=protocol, variant="batching-on")
            off = self.find(section="batching", protocol=protocol, variant="batching-off")
            if on and off:
                batching.append({
                    "protocol": protocol, "concurrency": a.batching_concurrency,
                    "throughput_on_over_off": ratio(on["throughput"], off["throughput"]),
                    "p99_on_over_off": ratio(on["p99_us"], off["p99_us"]),
                    "cpu_per_request_on_over_off": ratio(on["server_cpu_us_per_request"],
                                                         off["server_cpu_us_per_request"]),
                })
            r = self.find(section="rows", protocol=protocol)
            if r and self.ort:
                rows.append({
                    "protocol": protocol, "concurrency": r["concurrency"], "batch_size": r["batch_size"],
                    "server_rows_per_s": r["throughput"], "ort_rows_per_s": self.ort["rows_per_s"],
                    "server_over_ort": ratio(r["throughput"], self.ort["rows_per_s"]),
                    "server_cpu_us_per_row": r["server_cpu_us_per_row"],
                    "ort_cpu_us_per_row": self.ort["cpu_us_per_row"],
                })
        # The gRPC transports: "ours" runs the fast one, "grpcio" the reference (gRPC only).
        return {"ours_over_peer": comparisons, "batching": batching, "rows_vs_ort": rows,
                "fast_over_grpcio": self.compare("ours", "grpcio", grpc),
                "fast_over_peer": self.compare("ours", "peer", grpc),
                "grpcio_over_peer": self.compare("grpcio", "peer", grpc)}

    def print_tables(self, summary: dict) -> None:
        def perf_rows(section):
            out = []
            for r in self.results:
                if r["section"] != section:
                    continue
                out.append([r["protocol"], r["concurrency"], r["batch_size"], r.get("variant") or "",
                            fmt(r["throughput"], ".1f"), fmt(r["p50_us"] / 1000, ".2f"),
                            fmt(r["p99_us"] / 1000, ".2f"), fmt(r["server_cpu_us_per_request"]),
                            fmt(r.get("other_load"), ".1f"), "" if r["stable"] else "unstable"])
            return out

        headers = ["proto", "conc", "batch", "variant", "infer/s", "p50 ms", "p99 ms", "cpu us/req", "other load",
                   "note"]
        ours_transport = " (--grpc-transport fast)" if TRANSPORT_PLACEHOLDER in self.args.server_cmd else ""
        titles = {"ours": f"our server{ours_transport}, mlp32",
                  "grpcio": "our server with --grpc-transport grpcio, mlp32 (gRPC only)",
                  "peer": "Triton via PyTriton (peer), mlp32",
                  "batching": f"mlp1024, one-row requests at concurrency {self.args.batching_concurrency}",
                  "rows": f"mlp1024, {self.args.rows_batch}-row requests at concurrency {self.args.rows_concurrency}"}
        print()
        for section in SECTIONS:
            body = perf_rows(section)
            if body:
                print(f"== {titles[section]} ==")
                print(table(headers, body))
                print()
        if summary["ours_over_peer"]:
            print("== ours / peer (throughput > 1 is better for us; latency and CPU < 1 are) ==")
            print(table(["proto", "conc", "infer/s", "p50", "p99", "cpu/req"], [
                [c["protocol"], c["concurrency"], fmt(c["throughput_ratio"], ".2f"), fmt(c["p50_ratio"], ".2f"),
                 fmt(c["p99_ratio"], ".2f"), fmt(c["cpu_per_request_ratio"], ".2f")]
                for c in summary["ours_over_peer"]]))
            print()
        self.print_grpc_transports(summary)
        if summary["batching"]:
            print("== dynamic batching on / off (mlp1024) ==")
            print(table(["proto", "conc", "infer/s", "p99", "cpu/req"], [
                [b["protocol"], b["concurrency"], fmt(b["throughput_on_over_off"], ".2f"),
                 fmt(b["p99_on_over_off"], ".2f"), fmt(b["cpu_per_request_on_over_off"], ".2f")]
                for b in summary["batching"]]))
            print()
        if self.ort:
            print(f"== ONNX Runtime in-process, mlp1024, batch {self.ort['batch']}, "
                  f"{self.ort['intra_op_threads']}/{self.ort['inter_op_threads']} threads: "
                  f"{self.ort['rows_per_s']:.0f} rows/s, {self.ort['cpu_us_per_row']:.1f} cpu us/row ==")
            if summary["rows_vs_ort"]:
                print(table(["proto", "conc", "batch", "server rows/s", "ORT rows/s", "server/ORT",
                             "server cpu us/row", "ORT cpu us/row"], [
                    [r["protocol"], r["concurrency"], r["batch_size"], fmt(r["server_rows_per_s"]),
                     fmt(r["ort_rows_per_s"]), fmt(r["server_over_ort"], ".2f"), fmt(r["server_cpu_us_per_row"], ".1f"),
                     fmt(r["ort_cpu_us_per_row"], ".1f")] for r in summary["rows_vs_ort"]]))
            print()
        if self.errors:
            print(f"== {len(self.errors)} error(s) ==")
            for e in self.errors:
                where = " ".join(str(e[k]) for k in ("section", "server", "protocol", "concurrency") if e.get(k))
                print(f"- {where}: {e.get('summary') or e['error'].splitlines()[0]}")
            print()

    def print_grpc_transports(self, summary: dict) -> None:
        """gRPC, mlp32: fast (ours), grpcio and the peer side by side, then the ratios."""
        if not self.find(section="grpcio"):
            return  # without grpcio this is the gRPC half of the ours / peer table
        names = [("ours", "fast"), ("grpcio", "grpcio"), ("peer", "peer")]
        body = []
        for c in self.args.concurrency:
            for section, label in names:
                r = self.find(section=section, protocol="grpc", concurrency=c)
                if r:
                    body.append([c, label, fmt(r["throughput"], ".1f"), fmt(r["p50_us"] / 1000, ".2f"),
                                 fmt(r["p99_us"] / 1000, ".2f"), fmt(r["server_cpu_us_per_request"]),
                                 "" if r["stable"] else "unstable"])
        print("== gRPC, mlp32: our server on fast and on grpcio, and the peer, side by side ==")
        print(table(["conc", "server", "infer/s", "p50 ms", "p99 ms", "cpu us/req", "note"], body))
        print()
        lines = [(label, c) for key, label in (("fast_over_grpcio", "fast / grpcio"), ("fast_over_peer", "fast / peer"))
                 for c in summary.get(key, [])]
        if lines:
            print("== gRPC ratios, mlp32 (infer/s > 1 is better for fast; p99 and CPU < 1 are) ==")
            print(table(["ratio", "conc", "infer/s", "p99", "cpu/req"], [
                [label, c["concurrency"], fmt(c["throughput_ratio"], ".2f"), fmt(c["p99_ratio"], ".2f"),
                 fmt(c["cpu_per_request_ratio"], ".2f")] for label, c in lines]))
            print()

    def meta(self) -> dict:
        def version(dist):
            try:
                from importlib.metadata import version as _v

                return _v(dist)
            except Exception:
                return None

        try:
            commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                    timeout=10).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            commit = None
        a = self.args
        return {
            "timestamp": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "host": platform.node(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "loadavg_start": self.loadavg_start,
            "loadavg_end": list(os.getloadavg()),
            "git_commit": commit,
            "versions": {d: version(d) for d in ("onnxruntime", "tritonclient", "nvidia-pytriton", "torch", "numpy")},
            "perf_analyzer": perf.find_perf_analyzer(),
            "sections": self.sections,
            "protocols": self.protocols,
            "concurrency": a.concurrency,
            "server_cmd": a.server_cmd,
            "grpcio_server_cmd": grpcio_server_cmd(a),
            "grpc_transports": {s: section_transport(a, s) for s in ("ours", "grpcio") if s in self.sections},
            "notes": self.notes,
            "measurement": {
                "mode": self.measurement.mode, "request_count": self.measurement.request_count,
                "interval_ms": self.measurement.interval_ms, "stability_pct": self.measurement.stability_pct,
                "max_trials": self.measurement.max_trials, "percentile": self.measurement.percentile,
            },
            "model_config": {"max_batch_size": a.max_batch_size, "intra_op_threads": a.intra_op_threads,
                             "inter_op_threads": a.inter_op_threads, "max_queue_delay_us": a.max_queue_delay_us},
            "server_cpus": a.server_cpus,
            "client_cpus": a.client_cpus,
            "quick": a.quick,
            "wall_s": time.monotonic() - self.started,
        }

    def write_json(self, summary: dict) -> Optional[Path]:
        if self.args.no_json:
            return None
        out_dir = Path(self.args.results_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = out_dir / f"serving-{stamp}.json"
        doc = {"meta": self.meta(), "servers": self.servers, "results": self.results, "ort": self.ort,
               "summary": summary, "errors": self.errors}
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        os.replace(tmp, path)
        return path


# --------------------------------------------------------------------------- command line


def parse_selection(only: Sequence[str], skip_peer: bool, skip_ours: bool, skip_mlp1024: bool):
    tokens = [t.strip().lower() for item in (only or []) for t in item.split(",") if t.strip()]
    sections, protocols = [], []
    for t in tokens:
        if t in PROTOCOLS:
            protocols.append(t)
        elif t in SECTIONS:
            sections.append(t)
        elif t in SHORTHANDS:
            sections.extend(SHORTHANDS[t])
        else:
            raise SystemExit(f"--only: unknown piece {t!r} (sections {', '.join(SECTIONS)}; "
                             f"shorthands {', '.join(SHORTHANDS)}; protocols {', '.join(PROTOCOLS)})")
    sections = [s for s in SECTIONS if s in sections] or list(SECTIONS)
    protocols = [p for p in PROTOCOLS if p in protocols] or list(PROTOCOLS)
    if skip_peer:
        sections = [s for s in sections if s != "peer"]
    if skip_ours:
        sections = [s for s in sections if s == "peer"]
    if skip_mlp1024:
        sections = [s for s in sections if s not in ("batching", "rows")]
    return sections, protocols


def plan_sections(args: argparse.Namespace, sections: Sequence[str], protocols: Sequence[str]):
    """Leaves out sections that cannot run as selected; returns (sections, notes).

    The grpcio section measures gRPC only (nothing to do with --only ...,http), and needs a way to
    start our server on grpcio: the {grpc_transport} placeholder or --grpcio-server-cmd.
    """
    sections, notes = list(sections), []
    if "grpcio" in sections:
        why = None
        if "grpc" not in protocols:
            why = "the grpcio section measures gRPC only, and gRPC is not selected"
        elif grpcio_server_cmd(args) is None:
            why = (f"--server-cmd has no {TRANSPORT_PLACEHOLDER} placeholder to pick the gRPC transport; "
                   f"add it or pass --grpcio-server-cmd")
        if why:
            sections.remove("grpcio")
            notes.append(f"grpcio section left out: {why}")
    return sections, notes


def cpu_list(text: Optional[str]) -> Optional[List[int]]:
    if not text:
        return None
    cpus: List[int] = []
    for part in text.split(","):
        if "-" in part:
            lo, hi = part.split("-")
            cpus.extend(range(int(lo), int(hi) + 1))
        else:
            cpus.append(int(part))
    return cpus


def header_pair(text: str):
    if ":" not in text:
        raise argparse.ArgumentTypeError("expected 'Name: value'")
    key, value = text.split(":", 1)
    return key.strip(), value.strip()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="See docs/benchmarks.md.")
    sel = p.add_argument_group("what to run")
    sel.add_argument("--only", action="append", default=[], metavar="PIECES",
                     help="comma-separated: ours, grpcio, peer, batching, rows, mlp32 (= ours,grpcio,peer), "
                          "mlp1024 (= batching,rows), grpc, http (repeatable); default: everything")
    sel.add_argument("--skip-peer", action="store_true", help="do not run the PyTriton peer")
    sel.add_argument("--skip-ours", action="store_true", help="only the peer (no ours, grpcio, batching, rows)")
    sel.add_argument("--skip-mlp1024", action="store_true", help="no batching / rows sections")
    sel.add_argument("--quick", action="store_true",
                     help="short windows (150 requests, 25%% stability, 4 trials) and a 1 s ORT run")
    sel.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])

    srv = p.add_argument_group("servers")
    srv.add_argument("--server-cmd", default=DEFAULT_SERVER_CMD,
                     help="our server's command; placeholders {python} {repo} {http_port} {grpc_port} {root} "
                          "{grpc_transport} (fast for the ours/batching/rows server, grpcio for the grpcio "
                          "section). Default: %(default)s")
    srv.add_argument("--grpcio-server-cmd", default=None, metavar="CMD",
                     help="the grpcio section's command, same placeholders (default: --server-cmd with "
                          "{grpc_transport}=grpcio; without that placeholder the section is left out)")
    srv.add_argument("--server-header", type=header_pair, action="append", default=[], metavar="'NAME: VALUE'",
                     help="header (HTTP) / metadata (gRPC) to send to our server, repeatable")
    srv.add_argument("--server-access-token", default=None,
                     help="send Triton's access-token header to our server (for a Triton-like stand-in)")
    srv.add_argument("--ready-timeout", type=float, default=120.0)
    srv.add_argument("--stop-timeout", type=float, default=30.0)
    srv.add_argument("--server-cpus", type=cpu_list, default=None, metavar="LIST",
                     help="pin the servers to these CPUs, e.g. 0 (default: no pinning)")
    srv.add_argument("--client-cpus", type=cpu_list, default=None, metavar="LIST",
                     help="pin perf_analyzer to these CPUs, e.g. 1")

    mdl = p.add_argument_group("models")
    mdl.add_argument("--max-batch-size", type=int, default=64)
    mdl.add_argument("--max-queue-delay-us", type=int, default=0)
    mdl.add_argument("--intra-op-threads", type=int, default=1)
    mdl.add_argument("--inter-op-threads", type=int, default=1)
    mdl.add_argument("--var-dim", type=int, default=16, help="size for variable (-1) input dims, via --shape")

    mes = p.add_argument_group("measurement")
    mes.add_argument("--measurement-mode", choices=["count_windows", "time_windows"], default="count_windows")
    mes.add_argument("--request-count", type=int, default=None, help="requests per window (default 500, quick 150)")
    mes.add_argument("--interval-ms", type=int, default=2000, help="window length in time_windows mode")
    mes.add_argument("--stability-pct", type=float, default=None, help="default 15, quick 25")
    mes.add_argument("--max-trials", type=int, default=None, help="default 10, quick 4")
    mes.add_argument("--percentile", type=int, default=None, help="stabilise on this percentile (e.g. 99)")
    mes.add_argument("--busy-threshold", type=float, default=0.3,
                     help="flag runs during which other work used at least this many cores")
    mes.add_argument("--perf-timeout", type=float, default=300.0, help="seconds per perf_analyzer run")
    mes.add_argument("--batching-concurrency", type=int, default=32)
    mes.add_argument("--rows-batch", type=int, default=16)
    mes.add_argument("--rows-concurrency", type=int, default=8)
    mes.add_argument("--ort-batch", type=int, default=64)
    mes.add_argument("--ort-seconds", type=float, default=None, help="default 3, quick 1")

    out = p.add_argument_group("output")
    out.add_argument("--results-dir", default=str(BENCH / "results"))
    out.add_argument("--no-json", action="store_true")
    out.add_argument("--work-dir", default=None, help="keep repositories and server logs here (default: temp dir)")
    out.add_argument("--keep-work", action="store_true", help="also keep perf_analyzer CSV/logs (needs --work-dir)")
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line with the --quick-dependent defaults filled in."""
    args = build_parser().parse_args(argv)
    q = args.quick
    args.request_count = args.request_count or (150 if q else 500)
    args.stability_pct = args.stability_pct if args.stability_pct is not None else (25.0 if q else 15.0)
    args.max_trials = args.max_trials or (4 if q else 10)
    args.ort_seconds = args.ort_seconds or (1.0 if q else 3.0)
    args.server_header = list(args.server_header)
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    sections, protocols = parse_selection(args.only, args.skip_peer, args.skip_ours, args.skip_mlp1024)
    sections, notes = plan_sections(args, sections, protocols)
    for note in notes:
        log(note)
    if not sections:
        raise SystemExit("nothing to run" + "".join(f"; {n}" for n in notes))
    return Benchmark(args, sections, protocols, notes).run()


if __name__ == "__main__":
    sys.exit(main())
