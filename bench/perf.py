"""Runs perf_analyzer against a v2-protocol server and measures the server's CPU per request.

    from bench.perf import Target, Measurement, run_perf
    target = Target("peer", http_port=8100, grpc_port=8101, pid=server_pid)
    result = run_perf(target, "mlp32", protocol="grpc", concurrency=8)
    print(result.throughput, result.p50_us, result.p99_us, result.server_cpu_us_per_request)

perf_analyzer (shipped by ``tritonclient[all]``) needs libb64.so.0d and libcudart.so.12;
bench/setup.sh installs them and :func:`perf_env` puts libcudart's directory on
LD_LIBRARY_PATH for the child process, so nothing has to be exported by hand.

Figures come from perf_analyzer's CSV report (``-f``): throughput in inferences (rows)
per second and client-side latency percentiles in microseconds. The server's CPU time is
the change in utime+stime (+cutime+cstime, for children that exited) summed over the
server process and all its live descendants, read from /proc/<pid>/stat before and after
the perf_analyzer run, divided by the number of requests completed in that interval
(taken from the server's statistics endpoint when it has one, else from perf_analyzer's
profile export, which records every request it sent).
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class PerfAnalyzerError(RuntimeError):
    """perf_analyzer failed; ``output`` holds the tail of what it printed."""

    def __init__(self, message: str, output: str = "", returncode: Optional[int] = None):
        super().__init__(message + (f"\n--- perf_analyzer output (tail) ---\n{output[-3000:]}" if output else ""))
        self.message = message
        self.output = output
        self.returncode = returncode

    @property
    def summary(self) -> str:
        """One line: perf_analyzer's most telling error line if it printed one, else the message."""
        lines = [line.strip() for line in self.output.splitlines() if line.strip()]
        for needle in ("had error", "error", "failed"):
            for line in lines:
                if needle in line.lower():
                    return line
        return self.message.splitlines()[0]


# --------------------------------------------------------------------------- binary + env


def find_perf_analyzer() -> str:
    """Path of the perf_analyzer binary: $PERF_ANALYZER, next to this Python, or on PATH."""
    explicit = os.environ.get("PERF_ANALYZER")
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "perf_analyzer"
    if beside.exists():
        return str(beside)
    found = shutil.which("perf_analyzer")
    if found:
        return found
    raise FileNotFoundError("perf_analyzer not found: pip install 'tritonclient[all]' (or set PERF_ANALYZER)")


def cudart_lib_dir() -> Optional[str]:
    """Directory holding libcudart.so.12 from the nvidia-cuda-runtime-cu12 wheel, if installed."""
    spec = importlib.util.find_spec("nvidia")
    for base in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(base) / "cuda_runtime" / "lib"
        if (candidate / "libcudart.so.12").exists():
            return str(candidate)
    return None


def perf_env(base: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """Environment for perf_analyzer: ``base`` (default os.environ) with libcudart on LD_LIBRARY_PATH."""
    env = dict(os.environ if base is None else base)
    libdir = cudart_lib_dir()
    if libdir:
        parts = [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p and p != libdir]
        env["LD_LIBRARY_PATH"] = os.pathsep.join([libdir] + parts)
    return env


def check_perf_analyzer() -> str:
    """Raises with a helpful message unless perf_analyzer can start; returns its path."""
    binary = find_perf_analyzer()
    proc = subprocess.run([binary, "--version"], env=perf_env(), capture_output=True, text=True, timeout=30)
    out = proc.stdout + proc.stderr
    if "error while loading shared libraries" in out:
        raise PerfAnalyzerError("perf_analyzer cannot load its libraries; run bench/setup.sh", out)
    return binary


# --------------------------------------------------------------------------- /proc CPU accounting


def _read_stat(pid: int) -> Optional[List[str]]:
    """Fields of /proc/<pid>/stat after the command name (field 3, 'state', is index 0)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read().decode("ascii", "replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) is in parentheses and may itself contain spaces or ')'.
    return raw[raw.rindex(")") + 2:].split()


def machine_busy_seconds() -> float:
    """Busy CPU seconds of the whole machine so far (all CPUs), from the first line of /proc/stat."""
    with open("/proc/stat") as fh:
        fields = fh.readline().split()[1:]
    values = [int(v) for v in fields]
    # user nice system idle iowait irq softirq steal (guest time is already inside user/nice)
    busy = values[0] + values[1] + values[2] + sum(values[5:8])
    return busy / CLK_TCK


def children_cpu_seconds() -> float:
    """CPU seconds of this process's waited-for children (perf_analyzer runs)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def process_tree(pid: int) -> List[int]:
    """``pid`` and all its live descendants (found through the ppid field in /proc/*/stat)."""
    children: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _read_stat(int(entry))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def cpu_seconds(pid: int, include_children: bool = True) -> float:
    """utime+stime+cutime+cstime in seconds of ``pid`` (and its live descendants).

    cutime/cstime carry the time of children that have exited and been waited for, so
    the difference of two readings is right even when a child ends in between.
    """
    pids = process_tree(pid) if include_children else [pid]
    ticks = 0
    for p in pids:
        fields = _read_stat(p)
        if fields is None:
            continue
        # utime, stime, cutime, cstime are stat fields 14..17 -> indexes 11..14 here.
        ticks += sum(int(v) for v in fields[11:15])
    return ticks / CLK_TCK


# --------------------------------------------------------------------------- targets


@dataclasses.dataclass
class Target:
    """A server to measure. ``pid`` (optional) is the process whose CPU time is accounted."""

    name: str
    http_port: int
    grpc_port: int
    host: str = "127.0.0.1"
    pid: Optional[int] = None
    headers: Dict[str, str] = dataclasses.field(default_factory=dict)  # HTTP headers, e.g. an access token
    grpc_headers: Dict[str, str] = dataclasses.field(default_factory=dict)  # gRPC metadata for perf_analyzer

    def url(self, protocol: str) -> str:
        port = self.grpc_port if protocol == "grpc" else self.http_port
        return f"{self.host}:{port}"

    @property
    def http_base(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def get_json(self, path: str, timeout: float = 5.0):
        request = urllib.request.Request(self.http_base + path, headers=self.headers)
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"null")

    def is_ready(self, model: Optional[str] = None, timeout: float = 2.0) -> bool:
        path = f"/v2/models/{model}/ready" if model else "/v2/health/ready"
        try:
            request = urllib.request.Request(self.http_base + path, headers=self.headers)
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    def success_count(self, model: str) -> Optional[int]:
        """Successful requests so far per the server's statistics endpoint; None if it has none."""
        try:
            stats = self.get_json(f"/v2/models/{model}/stats")
            total = 0
            for entry in stats.get("model_stats", []):
                total += int(entry["inference_stats"]["success"]["count"])
            return total
        except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError, AttributeError):
            return None


# --------------------------------------------------------------------------- measurement


@dataclasses.dataclass
class Measurement:
    """How perf_analyzer measures.

    mode "count_windows": windows of at least ``request_count`` requests; "time_windows":
    windows of ``interval_ms``. Either way perf_analyzer repeats windows until throughput and
    latency (the average, or ``percentile`` when set) of the last 3 agree within
    ``stability_pct``, for at most ``max_trials`` windows, and reports those 3 windows.

    On a busy machine that may never happen; with ``fallback`` the run is repeated once
    with the stability check switched off (exactly 3 windows, whatever their spread) and
    the result is marked ``stable=False``.

    (perf_analyzer's ``--request-count N`` mode is not offered: it ends its single window on
    a ~1 s tick, so its throughput is biased low, e.g. 200 requests in 0.8 s read 200/s.)
    """

    mode: str = "count_windows"
    request_count: int = 500
    interval_ms: int = 2000
    stability_pct: float = 15.0
    max_trials: int = 10
    percentile: Optional[int] = None  # e.g. 99: stabilise on p99 instead of the average
    fallback: bool = True

    def args(self) -> List[str]:
        if self.mode == "count_windows":
            out = ["--measurement-mode=count_windows", f"--measurement-request-count={self.request_count}"]
        elif self.mode == "time_windows":
            out = ["--measurement-mode=time_windows", f"--measurement-interval={self.interval_ms}"]
        else:
            raise ValueError(f"unknown measurement mode {self.mode!r}")
        out += [f"--stability-percentage={self.stability_pct:g}", f"--max-trials={self.max_trials}"]
        if self.percentile:
            out.append(f"--percentile={self.percentile}")
        return out

    def without_stability_check(self) -> "Measurement":
        return dataclasses.replace(self, stability_pct=100000.0, max_trials=3, fallback=False)


@dataclasses.dataclass
class PerfResult:
    target: str
    model: str
    protocol: str
    concurrency: int
    batch_size: int
    throughput: float  # inferences (rows) per second, as perf_analyzer counts them
    requests_per_s: float  # throughput / batch_size
    p50_us: float
    p90_us: float
    p95_us: float
    p99_us: float
    avg_us: Optional[float]
    client_send_us: Optional[float]
    network_us: Optional[float]  # "Network+Server Send/Recv"
    server_queue_us: Optional[float]
    server_compute_input_us: Optional[float]
    server_compute_infer_us: Optional[float]
    server_compute_output_us: Optional[float]
    client_recv_us: Optional[float]
    stable: bool  # False when the windowed run could not stabilise and the fallback was used
    mode: str
    requests_completed: Optional[int]  # during the whole perf_analyzer run
    requests_source: Optional[str]  # "server-stats" | "profile-export"
    server_cpu_s: Optional[float]
    server_cpu_us_per_request: Optional[float]
    server_cpu_us_per_row: Optional[float]
    client_cpu_s: Optional[float]  # perf_analyzer's own CPU time
    other_load: Optional[float]  # cores busy with anything but server, perf_analyzer and this process
    wall_s: float
    command: List[str]

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


_CSV_FIELDS = {
    "client_send_us": "Client Send",
    "network_us": "Network+Server Send/Recv",
    "server_queue_us": "Server Queue",
    "server_compute_input_us": "Server Compute Input",
    "server_compute_infer_us": "Server Compute Infer",
    "server_compute_output_us": "Server Compute Output",
    "client_recv_us": "Client Recv",
    "p50_us": "p50 latency",
    "p90_us": "p90 latency",
    "p95_us": "p95 latency",
    "p99_us": "p99 latency",
    "avg_us": "Avg latency",
}


def parse_csv(text: str) -> List[dict]:
    """Parses perf_analyzer's -f report into one dict per concurrency row.

    Keys: concurrency, throughput and the names of _CSV_FIELDS (absent columns -> None).
    Only the leading table is read: with --verbose-csv perf_analyzer appends more after a
    blank line.
    """
    lines = []
    for line in text.splitlines():
        if not line.strip():
            if lines:
                break
            continue
        lines.append(line)
    rows = []
    for raw in csv.DictReader(lines):
        raw = {k.strip(): (v.strip() if isinstance(v, str) else v) for k, v in raw.items() if k}
        if "Concurrency" not in raw or not raw["Concurrency"]:
            continue
        row = {
            "concurrency": int(float(raw["Concurrency"])),
            "throughput": float(raw["Inferences/Second"]),
        }
        for key, column in _CSV_FIELDS.items():
            value = raw.get(column)
            row[key] = float(value) if value not in (None, "") else None
        rows.append(row)
    return rows


def count_profile_requests(path: os.PathLike) -> Optional[int]:
    """Number of requests recorded in a perf_analyzer --profile-export-file (all windows)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    total = 0
    for experiment in data.get("experiments", []):
        total += len(experiment.get("requests", []))
    return total


def build_command(
    target: Target,
    model: str,
    protocol: str,
    concurrency: int,
    batch_size: int,
    measurement: Measurement,
    csv_path: os.PathLike,
    profile_path: Optional[os.PathLike],
    shapes: Optional[Mapping[str, Sequence[int]]] = None,
    input_data: str = "random",
    extra_args: Sequence[str] = (),
) -> List[str]:
    if protocol not in ("grpc", "http"):
        raise ValueError(f"protocol must be grpc or http, not {protocol!r}")
    cmd = [
        find_perf_analyzer(),
        "-m", model,
        "-u", target.url(protocol),
        "-i", protocol,
        "-b", str(batch_size),
        f"--concurrency-range={concurrency}",
        f"--input-data={input_data}",
        "-f", str(csv_path),
    ]
    if profile_path is not None:
        cmd += ["--profile-export-file", str(profile_path)]
    for name, dims in (shapes or {}).items():
        cmd += ["--shape", f"{name}:{','.join(str(int(d)) for d in dims)}"]
    # perf_analyzer 2.51 sends -H entries as HTTP headers or as gRPC metadata.
    for key, value in (target.grpc_headers if protocol == "grpc" else target.headers).items():
        cmd += ["-H", f"{key}:{value}"]
    cmd += measurement.args()
    cmd += list(extra_args)
    return cmd


def _run_once(cmd: List[str], timeout: float, cpu_affinity: Optional[Sequence[int]]):
    def pin():
        if cpu_affinity:
            os.sched_setaffinity(0, set(cpu_affinity))

    proc = subprocess.run(
        cmd, env=perf_env(), capture_output=True, text=True, timeout=timeout,
        preexec_fn=pin if cpu_affinity else None,
    )
    return proc.returncode, proc.stdout + proc.stderr


def run_perf(
    target: Target,
    model: str,
    protocol: str = "grpc",
    concurrency: int = 1,
    batch_size: int = 1,
    measurement: Optional[Measurement] = None,
    shapes: Optional[Mapping[str, Sequence[int]]] = None,
    input_data: str = "random",
    extra_args: Sequence[str] = (),
    timeout: float = 300.0,
    cpu_affinity: Optional[Sequence[int]] = None,
    keep_dir: Optional[os.PathLike] = None,
) -> PerfResult:
    """Runs perf_analyzer once (one concurrency level) and returns its figures.

    shapes: ``--shape`` values for inputs with variable dimensions, e.g. {"INPUT0": [128]}.
    cpu_affinity: CPUs to pin perf_analyzer to (e.g. [1] with the server on [0]).
    keep_dir: where to leave the CSV / profile / log (default: a temporary directory).
    """
    measurement = measurement or Measurement()
    work = Path(keep_dir) if keep_dir else Path(tempfile.mkdtemp(prefix="perf-"))
    work.mkdir(parents=True, exist_ok=True)
    stem = f"{target.name}-{model}-{protocol}-c{concurrency}-b{batch_size}"
    csv_path, profile_path = work / f"{stem}.csv", work / f"{stem}.profile.json"
    try:
        attempts = [measurement]
        if measurement.fallback:
            attempts.append(measurement.without_stability_check())
        last_output = ""
        for attempt_no, attempt in enumerate(attempts):
            for stale in (csv_path, profile_path):
                stale.unlink(missing_ok=True)
            cmd = build_command(target, model, protocol, concurrency, batch_size, attempt, csv_path,
                                profile_path, shapes, input_data, extra_args)
            stats_before = target.success_count(model)
            cpu_before = cpu_seconds(target.pid) if target.pid else None
            client_before, busy_before, own_before = children_cpu_seconds(), machine_busy_seconds(), time.process_time()
            started = time.monotonic()
            try:
                rc, output = _run_once(cmd, timeout, cpu_affinity)
            except subprocess.TimeoutExpired as exc:
                raise PerfAnalyzerError(f"perf_analyzer timed out after {timeout}s: {' '.join(cmd)}",
                                        str(exc.output or "")) from None
            wall = time.monotonic() - started
            client_cpu = children_cpu_seconds() - client_before
            busy = machine_busy_seconds() - busy_before
            own = time.process_time() - own_before
            cpu_after = cpu_seconds(target.pid) if target.pid else None
            stats_after = target.success_count(model)
            (work / f"{stem}.log").write_text(output)
            last_output = output
            if rc == 0 and csv_path.exists():
                break
            unstable = "Failed to obtain stable measurement" in output
            if not (unstable and attempt_no + 1 < len(attempts)):
                raise PerfAnalyzerError(f"perf_analyzer exited with {rc}: {' '.join(cmd)}", output, rc)
        rows = parse_csv(csv_path.read_text())
        if not rows:
            raise PerfAnalyzerError(f"no rows in {csv_path}", last_output)
        row = rows[-1]

        requests, source = None, None
        if stats_before is not None and stats_after is not None and stats_after > stats_before:
            requests, source = stats_after - stats_before, "server-stats"
        else:
            counted = count_profile_requests(profile_path)
            if counted:
                requests, source = counted, "profile-export"
        cpu = (cpu_after - cpu_before) if cpu_before is not None and cpu_after is not None else None
        per_request = cpu * 1e6 / requests if cpu is not None and requests else None
        other_load = None
        if cpu is not None and wall > 0:
            other_load = max(0.0, busy - cpu - client_cpu - own) / wall
        return PerfResult(
            target=target.name,
            model=model,
            protocol=protocol,
            concurrency=concurrency,
            batch_size=batch_size,
            throughput=row["throughput"],
            requests_per_s=row["throughput"] / batch_size,
            p50_us=row["p50_us"],
            p90_us=row["p90_us"],
            p95_us=row["p95_us"],
            p99_us=row["p99_us"],
            avg_us=row["avg_us"],
            client_send_us=row["client_send_us"],
            network_us=row["network_us"],
            server_queue_us=row["server_queue_us"],
            server_compute_input_us=row["server_compute_input_us"],
            server_compute_infer_us=row["server_compute_infer_us"],
            server_compute_output_us=row["server_compute_output_us"],
            client_recv_us=row["client_recv_us"],
            stable=attempt is measurement,
            mode=attempt.mode,
            requests_completed=requests,
            requests_source=source,
            server_cpu_s=cpu,
            server_cpu_us_per_request=per_request,
            server_cpu_us_per_row=per_request / batch_size if per_request is not None else None,
            client_cpu_s=client_cpu,
            other_load=other_load,
            wall_s=wall,
            command=cmd,
        )
    finally:
        if not keep_dir:
            shutil.rmtree(work, ignore_errors=True)


def idle_cpu_rate(pid: int, seconds: float = 1.0) -> float:
    """CPU seconds per second the idle server (and its children) burns: background noise."""
    before = cpu_seconds(pid)
    time.sleep(seconds)
    return (cpu_seconds(pid) - before) / seconds


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Run perf_analyzer once and print the figures as JSON.")
    parser.add_argument("--model", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("-b", "--batch-size", type=int, default=1)
    parser.add_argument("--pid", type=int, default=None, help="server process for CPU accounting")
    parser.add_argument("-H", "--header", action="append", default=[],
                        help="'Name: value', sent as HTTP header or gRPC metadata (repeatable)")
    parser.add_argument("--access-token", default=None,
                        help="Triton access token: sent as triton-access-token (HTTP) or "
                             "triton-grpc-protocol-triton-access-token (gRPC)")
    parser.add_argument("--shape", action="append", default=[], help="NAME:d1,d2 for variable dims")
    parser.add_argument("--mode", choices=["count_windows", "time_windows"], default="count_windows")
    parser.add_argument("--request-count", type=int, default=500, help="per window (count_windows)")
    parser.add_argument("--interval-ms", type=int, default=2000, help="window length (time_windows)")
    parser.add_argument("--stability-pct", type=float, default=15.0)
    parser.add_argument("--percentile", type=int, default=None)
    args = parser.parse_args(argv)
    headers = dict(h.split(":", 1) for h in args.header)
    shapes = {s.split(":", 1)[0]: [int(d) for d in s.split(":", 1)[1].split(",")] for s in args.shape}
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    grpc_headers = dict(headers)
    if args.access_token:
        headers["triton-access-token"] = args.access_token
        grpc_headers["triton-grpc-protocol-triton-access-token"] = args.access_token
    target = Target("server", args.http_port, args.grpc_port, args.host, args.pid, headers, grpc_headers)
    result = run_perf(
        target, args.model, args.protocol, args.concurrency, args.batch_size,
        Measurement(mode=args.mode, request_count=args.request_count, interval_ms=args.interval_ms,
                    stability_pct=args.stability_pct, percentile=args.percentile),
        shapes=shapes or None,
    )
    print(json.dumps(result.as_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
