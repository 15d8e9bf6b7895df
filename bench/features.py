"""Online feature reads against the limit of the store and against Feast, in one run.

On a real Redis (default 127.0.0.1:6379, throwaway key prefix / Feast project, deleted afterwards)
and on the embedded SQLite store, for one view of `--features` float32 features (one repository
module, written to a temp dir, defines it for every path below):

- our online API in process (`FeatureServer.get_online_features`), 1 entity and `--entities`
  entities per call, on Redis and on SQLite;
- the same reads over HTTP (`POST /v1/features/online`, a keep-alive `http.client` connection,
  the JSON answer parsed) and over gRPC (`parity.v1.FeatureService/GetOnlineFeatures`, a grpcio
  stub, the protobuf answer parsed) against a `parity serve --feature-repository ...
  --online-store redis://...` process the benchmark starts (default fast gRPC transport) on the
  same Redis keys;
- the limit: a raw redis-py round trip reading the same keys (one MGET of the packed values,
  nothing decoded), and a PING; and the floor under both, the same MGET and PING with no client
  library (the command bytes packed once, written on one socket, the reply parsed by hiredis);
- the peer: Feast (`feast[redis]==0.67.0`) serving the same values from the same Redis (a project
  of its own), `FeatureStore.get_online_features` in process, run by bench/feast_peer.py in
  Feast's own virtualenv (`.venv-feast`, made by `bash bench/setup.sh --feast` on first use;
  `--no-feast` leaves it out; when it cannot be installed or run the benchmark says so and goes on);

every path first checks it serves the values written; then all rows are timed together, `--calls`
calls each in `--rounds` interleaved chunks (so that they share the background load of a shared
machine), warm-up calls excluded; prints p50 / p99 in ms and the ratios (p50), and writes the
figures to bench/results/features-<timestamp>.json.

    python bench/features.py [--features 50] [--entities 100] [--calls 2000] [--warmup 50] [--rounds 10]
        [--rewarm 10] [--redis-url redis://127.0.0.1:6379/0] [--no-feast] [--feast-python PATH]
        [--no-feast-install] [--skip-server]

(Feature-joined inference -- features fetched + the MLP-32 model run vs. plain-tensor inference --
is still to come: see FEATURE-JOINED INFERENCE in main().)
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

import redis  # noqa: E402

from parity.features.definitions import FeatureRepository  # noqa: E402
from parity.features.online import open_online_store  # noqa: E402
from parity.features.retrieval import FeatureServer  # noqa: E402

FEAST_VERSION = "0.67.0"  # what bench/setup.sh --feast installs
FEAST_PEER = ROOT / "bench" / "feast_peer.py"
SETUP = ROOT / "bench" / "setup.sh"

# The feature repository every path serves: written to a temp dir, loaded in process with
# FeatureRepository.load and given to the server with --feature-repository.
REPO_MODULE = '''"""The feature benchmark's repository (written by bench/features.py)."""
from parity.features.definitions import Entity, FeatureService, FeatureView, Field, FileSource

N_FEATURES = {n_features}
user = Entity("user", [Field("user_id", "int64")])
wide = FeatureView("wide", ["user"], FileSource("unused.parquet"),
                   [Field(f"f{{i}}", "float32") for i in range(N_FEATURES)], ttl_seconds=0)
wide_service = FeatureService("wide_service", ["wide:*"])
'''


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def sampler(fn):
    """A row's timer: (calls, warmup) -> `warmup` untimed calls, then one perf_counter_ns sample
    (ns) per call.  bench/feast_peer.py times Feast the same way."""

    def run(calls: int, warmup: int) -> np.ndarray:
        for _ in range(warmup):
            fn()
        samples = np.empty(calls, np.int64)
        for i in range(calls):
            t = time.perf_counter_ns()
            fn()
            samples[i] = time.perf_counter_ns() - t
        return samples

    return run


def stats(samples: np.ndarray) -> dict:
    return {"p50_ms": float(np.percentile(samples, 50)) / 1e6, "p99_ms": float(np.percentile(samples, 99)) / 1e6,
            "calls": int(len(samples))}  # fmt: skip


def run_rounds(rows: dict, calls: int, warmup: int, rewarm: int, rounds: int) -> tuple[dict, dict]:
    """Times every row `calls` times in `rounds` interleaved chunks: round r runs a chunk of each
    row in turn (the order rotated by one each round), so that rows measured in one run see the
    same background load on a shared machine.  The first chunk of a row follows `warmup` untimed
    calls, later chunks `rewarm` (caches cooled by the other rows).  p50 / p99 over all of a row's
    samples; also the lowest and highest per-round p50.  A row whose call raises is dropped and
    reported (second value: label -> error)."""
    labels = list(rows)
    rounds = max(1, min(rounds, calls))
    samples: dict = {label: [] for label in labels}
    failed: dict = {}
    t0 = time.monotonic()
    for r in range(rounds):
        k = calls // rounds + (1 if r < calls % rounds else 0)
        shift = r % len(labels)
        for label in labels[shift:] + labels[:shift]:
            if label in failed:
                continue
            try:
                samples[label].append(rows[label](k, warmup if r == 0 else rewarm))
            except Exception as e:  # noqa: BLE001 - the row is dropped and reported; the others go on
                failed[label] = f"{type(e).__name__}: {e}"
                log(f"  {label} FAILED: {failed[label]}")
        log(f"  round {r + 1}/{rounds} done ({time.monotonic() - t0:.0f} s)")
    figures = {}
    for label in labels:
        if label in failed or not samples[label]:
            continue
        fig = stats(np.concatenate(samples[label]))
        per_round = [float(np.percentile(s, 50)) / 1e6 for s in samples[label]]
        fig["p50_ms_round_min"], fig["p50_ms_round_max"] = min(per_round), max(per_round)
        figures[label] = fig
    return figures, failed


# -- the data -----------------------------------------------------------------------------------


class Data:
    """The values every path serves: `n_entities` users (keys 0..n-1), `n_features` float32
    columns from a fixed seed, one event time (a whole second, one second ago) for all."""

    def __init__(self, n_features: int, n_entities: int):
        rng = np.random.default_rng(0)
        self.names = [f"f{i}" for i in range(n_features)]
        self.keys = np.arange(n_entities, dtype=np.int64)
        self.cols = {n: rng.standard_normal(n_entities).astype(np.float32) for n in self.names}
        self.event_ns = (time.time_ns() // 10**9 - 1) * 10**9

    def write(self, store, view) -> None:
        ts = np.full(len(self.keys), self.event_ns, np.int64)
        store.write(view, self.keys, self.cols, ts, ts)

    def write_parquet(self, path: Path) -> None:
        """The same rows for Feast: user_id, event_timestamp, created, f0..f{n-1}."""
        import pandas as pd

        ts = pd.to_datetime(np.full(len(self.keys), self.event_ns), utc=True)
        df = pd.DataFrame({"user_id": self.keys, "event_timestamp": ts, "created": ts})
        for n in self.names:
            df[n] = self.cols[n]
        df.to_parquet(path, index=False)

    def check(self, path: str, n: int, columns: dict) -> None:
        """`columns`: feature name ("wide__f0" or "f0") -> the n values a path served."""
        for name in self.names:
            have = columns.get(f"wide__{name}", columns.get(name))
            if have is None:
                raise AssertionError(f"{path}: no column for feature {name}")
            have = np.asarray(have, dtype=np.float32)
            if not np.array_equal(have.view(np.uint32), self.cols[name][:n].view(np.uint32)):
                raise AssertionError(f"{path}: {name} differs from the values written: {have[:3]} != {self.cols[name][:3]}")


# -- our server over HTTP and gRPC --------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RawRedis:
    """The floor of a Redis read from Python: a command packed once (RESP), written on one
    TCP_NODELAY socket, the reply parsed by hiredis.Reader; no pool, no retries, no callbacks."""

    def __init__(self, url: str):
        import hiredis
        from urllib.parse import urlparse

        u = urlparse(url)
        self.sock = socket.create_connection((u.hostname or "127.0.0.1", u.port or 6379), timeout=5)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = hiredis.Reader()
        db = u.path.lstrip("/")
        if db and db != "0":
            self.command(self.pack("SELECT", db))

    @staticmethod
    def pack(*args: str) -> bytes:
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            b = a.encode()
            out.append(b"$%d\r\n%s\r\n" % (len(b), b))
        return b"".join(out)

    def command(self, packed: bytes):
        self.sock.sendall(packed)
        while True:
            reply = self.reader.gets()
            if reply is not False:
                return reply
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("Redis closed the connection")
            self.reader.feed(chunk)

    def close(self) -> None:
        self.sock.close()


def commands_processed(r: redis.Redis) -> int:
    return int(r.info("stats")["total_commands_processed"])


def counting_commands(r: redis.Redis, run, counts: list):
    """Wraps a row's timer: adds the Redis server's commands during each chunk (less our INFO) and
    the chunk's calls to `counts`."""

    def counted(calls: int, warmup: int) -> np.ndarray:
        before = commands_processed(r)
        out = run(calls, warmup)
        counts[0] += commands_processed(r) - before - 1
        counts[1] += calls + warmup
        return out

    return counted


class FeatureHttpServer:
    """`parity serve --feature-repository MODULE --online-store URL` as a child process (an empty
    model repository, the default fast gRPC transport), on free loopback ports (new ones, up to 3
    times, when another process took one first)."""

    def __init__(self, module: Path, online_store: str, workdir: Path, ready_timeout: float = 120.0):
        (workdir / "models").mkdir(exist_ok=True)
        self.workdir, self.module, self.online_store = workdir, module, online_store
        self.log_path = workdir / "server.log"
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen | None = None
        self.http_port = self.grpc_port = 0
        self.cmd: list[str] = []

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def _ready(self) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=2)
        try:
            conn.request("GET", "/v2/health/ready")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def __enter__(self) -> "FeatureHttpServer":
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src")] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        for attempt in range(3):
            self.http_port, self.grpc_port = free_port(), free_port()
            self.cmd = [
                sys.executable, "-m", "parity", "serve", "--model-repository", str(self.workdir / "models"),
                "--feature-repository", str(self.module), "--online-store", self.online_store,
                "--host", "127.0.0.1", "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
                "--grpc-transport", "fast", "--model-control-mode", "none", "--log-level", "warning",
            ]  # fmt: skip
            with open(self.log_path, "wb") as logfile:
                self.proc = subprocess.Popen(self.cmd, stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             cwd=str(ROOT), env=env, start_new_session=True)  # fmt: skip
            deadline = time.monotonic() + self.ready_timeout
            while not self._ready():
                if self.proc.poll() is not None:
                    tail = self.log_tail()
                    if ("address already in use" in tail.lower() or "using the port" in tail) and attempt < 2:
                        break  # a port taken meanwhile: try new ones
                    raise RuntimeError(f"the server exited with {self.proc.returncode} before it was ready:\n{tail}")
                if time.monotonic() > deadline:
                    self.__exit__()
                    raise RuntimeError(f"the server was not ready after {self.ready_timeout:.0f}s:\n{self.log_tail()}")
                time.sleep(0.2)
            else:
                return self
            log(f"  the server could not bind its ports ({self.http_port}, {self.grpc_port}); trying others")
        raise AssertionError("unreachable")

    def __exit__(self, *exc) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def http_reader(port: int, n: int):
    """One call: POST the (pre-encoded) request on a keep-alive connection, read and parse the JSON
    answer.  Returns the call, a function giving the answer's columns (for the check), and close."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    body = json.dumps({"features": "wide_service", "entities": {"user_id": list(range(n))}}).encode()
    headers = {"content-type": "application/json"}

    def call():
        conn.request("POST", "/v1/features/online", body, headers)
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"POST /v1/features/online: {resp.status} {data[:300]!r}")
        return json.loads(data)

    def columns():
        return {f["name"]: f["values"] for f in call()["features"]}

    return call, columns, conn.close


def grpc_reader(port: int, n: int):
    """One call: GetOnlineFeatures through a grpcio stub on one channel; the request is built once,
    the answer parsed by the stub.  Returns the call, the columns function and close, as http_reader."""
    import grpc

    from parity._proto.parity.v1 import features_pb2 as fpb
    from parity._proto.parity.v1 import features_pb2_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(channel).result(timeout=30)
    stub = features_pb2_grpc.FeatureServiceStub(channel)
    request = fpb.GetOnlineFeaturesRequest(
        feature_service="wide_service",
        entities={"user_id": fpb.EntityValues(int64_values=fpb.Int64List(values=list(range(n))))},
    )

    def call():
        return stub.GetOnlineFeatures(request, timeout=10)

    def columns():
        return {f.name: list(f.float_values.values) for f in call().features}

    return call, columns, channel.close


# -- Feast ----------------------------------------------------------------------------------------


def feast_python(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    venv = os.environ.get("FEAST_VENV")
    return (Path(venv) if venv else ROOT / ".venv-feast") / "bin" / "python"


class FeastUnavailable(RuntimeError):
    pass


def unavailable(reason: str) -> dict:
    return {"ok": False, "error": reason}


class FeastPeer:
    """bench/feast_peer.py --serve in Feast's virtualenv: set up on the data (it checks the values
    it serves), then timing chunks of its rows on request.  Its stderr is ours."""

    def __init__(self, python: Path, parquet: Path, features: int, entities: list[int], redis_url: str):
        cmd = [str(python), str(FEAST_PEER), "--serve", "--data", str(parquet), "--features", str(features),
               "--entities", *map(str, entities), "--redis-url", redis_url]  # fmt: skip
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
                                         env=dict(os.environ, PYTHONWARNINGS="ignore"))  # fmt: skip
        except OSError as e:
            raise FeastUnavailable(f"bench/feast_peer.py could not start: {e}") from None
        try:
            hello = self._read()
        except FeastUnavailable:
            self._dispose()
            raise
        if not hello.get("ok"):
            self._dispose()
            raise FeastUnavailable(hello.get("error", "bench/feast_peer.py failed"))
        self.labels: list[str] = hello.pop("labels")
        self.meta: dict = {k: v for k, v in hello.items() if k != "ok"}

    def _dispose(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise FeastUnavailable(f"bench/feast_peer.py exited with {self.proc.wait()} (its output is above)")
        return json.loads(line)

    def sampler(self, label: str):
        def run(calls: int, warmup: int) -> np.ndarray:
            self.proc.stdin.write(json.dumps({"label": label, "calls": calls, "warmup": warmup}) + "\n")
            self.proc.stdin.flush()
            reply = self._read()
            if "samples" not in reply:
                raise FeastUnavailable(reply.get("error", f"bench/feast_peer.py answered {reply}"))
            return np.asarray(reply["samples"], np.int64)

        return run

    def close(self) -> dict:
        """Tears the Feast project down; returns what the peer says about it (keys_left)."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"quit": True}) + "\n")
                self.proc.stdin.close()
                final = self._read()
                self.meta.update({k: v for k, v in final.items() if k != "ok"})
            except (OSError, ValueError, FeastUnavailable) as e:
                self.meta["close_error"] = str(e)
        self._dispose()
        return self.meta


def open_feast_peer(python: Path, parquet: Path, features: int, entities: list[int], redis_url: str,
                    install: bool = True) -> FeastPeer:  # fmt: skip
    """Makes (or checks) Feast's virtualenv when `install`, then starts the peer; raises
    FeastUnavailable with the reason (and the command that installs Feast) when it cannot."""
    if install:
        # idempotent: makes the virtualenv when it is missing or broken, else only checks it
        log(f"  bash bench/setup.sh --feast (feast[redis]=={FEAST_VERSION} in {python.parent.parent}; installs it if missing)")
        env = dict(os.environ, FEAST_VENV=str(python.parent.parent))
        try:
            proc = subprocess.run(["bash", str(SETUP), "--feast"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, timeout=1800)  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as e:
            raise FeastUnavailable(f"Feast could not be installed: bash bench/setup.sh --feast failed: {e}") from None
        if proc.returncode != 0 or not python.exists():
            tail = "\n".join(line for line in proc.stderr.splitlines() if not line.startswith("WARNING: Location"))[-1500:]
            why = f"Feast could not be installed: bash bench/setup.sh --feast failed (exit {proc.returncode})"
            raise FeastUnavailable(f"{why}:\n{tail}")
    elif not python.exists():
        raise FeastUnavailable(f"no Feast virtualenv at {python.parent.parent} (install it with: bash bench/setup.sh --feast)")
    return FeastPeer(python, parquet, features, entities, redis_url)


def merge_feast(results: dict, peer: dict) -> None:
    """Puts the peer's figures into `results["figures"]` and its facts into `results["feast"]`;
    a peer that did not run leaves the figures alone and records why."""
    if peer.get("ok"):
        results["figures"].update(peer["figures"])
        results["feast"] = {k: v for k, v in peer.items() if k != "figures"}
        if peer.get("feast_version") != FEAST_VERSION:
            results.setdefault("notes", []).append(f"Feast {peer.get('feast_version')} ran, not the pinned {FEAST_VERSION}")
    else:
        results["feast"] = {"ok": False, "error": peer.get("error", "unknown error")}


def feast_status_line(results: dict) -> str:
    feast = results.get("feast")
    if feast is None:
        return "Feast peer: not run (--no-feast)"
    if feast.get("ok"):
        version, python = feast["feast_version"], feast.get("python", "?")
        return f"Feast peer: feast {version} (Python {python}), same Redis, project {feast['project']}"
    return f"Feast peer UNAVAILABLE, its rows are missing: {feast['error']}"


# -- the report -----------------------------------------------------------------------------------


def compute_ratios(f: dict, n_features: int, entities: int) -> dict:
    """p50 ratios, for what the figures allow (a missing row leaves its ratios out)."""
    ratios = {}

    def put(name, a, b):
        if a in f and b in f:
            ratios[name] = f[a]["p50_ms"] / f[b]["p50_ms"]

    ns = (1, entities)
    shape = {n: f"{n}x{n_features}" for n in ns}
    put("ours-redis-1/ping", f"ours/redis/{shape[1]}", "ping")
    put("ours-redis-1/raw-socket-ping", f"ours/redis/{shape[1]}", "raw-socket-ping")
    for n in ns:
        put(f"ours-redis/raw-mget/{n}", f"ours/redis/{shape[n]}", f"raw-mget/{n}")
    for n in ns:
        put(f"ours-redis/raw-socket-mget/{n}", f"ours/redis/{shape[n]}", f"raw-socket-mget/{n}")
    for proto in ("http", "grpc"):
        for n in ns:
            put(f"{proto}/in-process/{n}", f"{proto}/redis/{shape[n]}", f"ours/redis/{shape[n]}")
    for peer, ours in (("feast", "ours"), ("feast-to-dict", "ours"), ("feast", "http"), ("feast", "grpc")):
        for n in ns:
            put(f"{peer}/{ours if ours == 'ours' else 'ours-' + ours}/{n}", f"{peer}/{shape[n]}",
                f"{'ours' if ours == 'ours' else ours}/redis/{shape[n]}")
    put("http-1/ping", f"http/redis/{shape[1]}", "ping")
    put("grpc-1/ping", f"grpc/redis/{shape[1]}", "ping")
    return ratios


RATIO_NOTES = {
    "ours-redis-1/ping": "our in-process read of 1 entity / a bare Redis round trip",
    "ours-redis-1/raw-socket-ping": "our in-process read of 1 entity / a PING with no client library",
    "ours-redis/raw-mget": "our in-process read / redis-py MGET of the same keys, nothing decoded",
    "ours-redis/raw-socket-mget": "our in-process read / the same MGET with no client library (the floor)",
    "http/in-process": "over HTTP (JSON) / the same read in process",
    "grpc/in-process": "over gRPC (grpcio client, fast transport) / in process",
    "feast/ours": "Feast get_online_features / ours in process (> 1: Feast is slower)",
    "feast-to-dict/ours": "Feast get_online_features(...).to_dict() / ours in process",
    "feast/ours-http": "Feast in process / ours over HTTP",
    "feast/ours-grpc": "Feast in process / ours over gRPC",
    "http-1/ping": "1 entity over HTTP / PING",
    "grpc-1/ping": "1 entity over gRPC / PING",
}


def report(results: dict) -> str:
    f = results["figures"]
    rounds = results.get("rounds", 1)
    lines = [f"== online reads, {results['features']} float32 features, {results['calls']} calls a row in {rounds} interleaved "
             f"rounds, after {results['warmup']} warm-up calls (p50 / p99 ms; [lowest - highest p50 of a round]) =="]  # fmt: skip
    for label, v in f.items():
        spread = f"   [{v['p50_ms_round_min']:.3f} - {v['p50_ms_round_max']:.3f}]" if "p50_ms_round_min" in v else ""
        extra = f"   {v['redis_commands_per_call']:.2f} Redis commands/call" if "redis_commands_per_call" in v else ""
        lines.append(f"  {label:30s} {v['p50_ms']:7.3f} / {v['p99_ms']:7.3f}{spread}{extra}")
    lines.append(f"  {feast_status_line(results)}")
    for note in results.get("notes", []):
        lines.append(f"  note: {note}")
    lines.append("\n== ratios (p50; 1.0 is parity with the right-hand side) ==")
    for k, v in results["ratios"].items():
        note = RATIO_NOTES.get(k.rsplit("/", 1)[0] if k.rsplit("/", 1)[-1].isdigit() else k, "")
        lines.append(f"  {k:30s} {v:7.2f}x   {note}")
    return "\n".join(lines)


# -- the run ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", type=int, default=50)
    ap.add_argument("--entities", type=int, default=100)
    ap.add_argument("--calls", type=int, default=2000, help="timed calls per row")
    ap.add_argument("--warmup", type=int, default=50, help="untimed calls before a row's first chunk")
    ap.add_argument("--rounds", type=int, default=10, help="interleaved chunks per row (see run_rounds)")
    ap.add_argument("--rewarm", type=int, default=10, help="untimed calls before each later chunk of a row")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--results-dir", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--no-json", action="store_true")
    ap.add_argument("--skip-server", action="store_true", help="leave out the HTTP and gRPC rows")
    ap.add_argument("--no-feast", action="store_true", help="leave out the Feast peer")
    ap.add_argument("--feast-python", help="a python with Feast installed (used as it is); default: $FEAST_VENV/bin/python "
                    "or .venv-feast/bin/python, made or checked with bench/setup.sh --feast first")
    ap.add_argument("--no-feast-install", action="store_true",
                    help="do not run bench/setup.sh --feast first (a missing Feast virtualenv is then reported, not made)")
    a = ap.parse_args(argv)

    prefix = f"parity_bench_{uuid.uuid4().hex[:10]}"
    online_url = f"{a.redis_url}?prefix={prefix}&timeout=2"
    sizes = (1, a.entities)
    results: dict = {
        "features": a.features, "entities": a.entities, "calls": a.calls, "warmup": a.warmup, "rounds": a.rounds,
        "rewarm": a.rewarm, "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": platform.node(),
        "cpus": os.cpu_count(), "loadavg_start": os.getloadavg(), "python": platform.python_version(), "figures": {},
    }  # fmt: skip
    data = Data(a.features, a.entities)
    r = redis.Redis.from_url(a.redis_url)
    results["redis_version"] = r.info("server").get("redis_version")
    results["redis_prefix"] = prefix
    failures = []
    rows: dict = {}  # label -> sampler, in the order of the table
    command_counts: dict = {}  # ours/redis label -> [Redis commands, calls]
    peer: FeastPeer | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="parity-features-bench-") as tmp_name, contextlib.ExitStack() as stack:
            tmp = Path(tmp_name)
            module = tmp / "bench_feature_repo.py"
            module.write_text(REPO_MODULE.format(n_features=a.features))
            repo = FeatureRepository.load(module)
            view = repo.views["wide"]

            # Set every row up (each checks once that it serves the values written), then time them
            # all together in interleaved rounds.

            # 1. ours, in process, on Redis and on SQLite
            for backend, url in (("redis", online_url), ("sqlite", f"sqlite:///{tmp / 'bench.db'}")):
                store = open_online_store(url)
                stack.callback(store.close)
                data.write(store, view)
                server = FeatureServer(repo, store)
                for n in sizes:
                    keys = {"user_id": np.arange(n, dtype=np.int64)}
                    label = f"ours/{backend}/{n}x{a.features}"
                    data.check(label, n, server.get_online_features("wide_service", keys).values)
                    run = sampler(lambda server=server, keys=keys: server.get_online_features("wide_service", keys))
                    if backend == "redis":
                        run = counting_commands(r, run, command_counts.setdefault(label, [0, 0]))
                    rows[label] = run

            # 2. the limit: the same keys read raw with redis-py, and a bare round trip; and the same
            #    with no client library
            raw = RawRedis(a.redis_url)
            stack.callback(raw.close)
            for n in sizes:
                keys = [f"{prefix}:{{i{k}}}:wide" for k in range(n)]
                got = r.mget(keys)
                if any(v is None for v in got):
                    raise AssertionError(f"raw MGET: keys missing (the store's key layout changed?): {keys[:2]}")
                rows[f"raw-mget/{n}"] = sampler(lambda keys=keys: r.mget(keys))
            rows["ping"] = sampler(r.ping)
            for n in sizes:
                keys = [f"{prefix}:{{i{k}}}:wide" for k in range(n)]
                packed = raw.pack("MGET", *keys)
                if raw.command(packed) != r.mget(keys):
                    raise AssertionError("the raw-socket MGET read other bytes than redis-py's")
                rows[f"raw-socket-mget/{n}"] = sampler(lambda packed=packed: raw.command(packed))
            ping = raw.pack("PING")
            rows["raw-socket-ping"] = sampler(lambda: raw.command(ping))

            # 3. ours over HTTP and gRPC: one server process on the same Redis keys
            if not a.skip_server:
                try:
                    log("  starting parity serve --feature-repository ... --online-store redis://... ...")
                    srv = stack.enter_context(FeatureHttpServer(module, online_url, tmp))
                    results["server"] = {"cmd": " ".join(srv.cmd[1:]), "grpc_transport": "fast"}
                    for proto, make, port in (("http", http_reader, srv.http_port), ("grpc", grpc_reader, srv.grpc_port)):
                        for n in sizes:
                            call, columns, close = make(port, n)
                            stack.callback(close)
                            label = f"{proto}/redis/{n}x{a.features}"
                            data.check(label, n, columns())
                            rows[label] = sampler(call)
                except Exception as e:  # noqa: BLE001 - reported; the other rows still stand
                    failures.append(f"server rows: {type(e).__name__}: {e}")
                    log(f"  server rows FAILED: {e}")
                    rows = {k: v for k, v in rows.items() if not k.startswith(("http/", "grpc/"))}

            # 4. the peer: Feast on the same values, same Redis, its own project, its own process
            if not a.no_feast:
                parquet = tmp / "wide.parquet"
                data.write_parquet(parquet)
                python = feast_python(a.feast_python)
                log(f"  Feast peer ({python}) ...")
                try:
                    peer = open_feast_peer(python, parquet, a.features, list(sizes), a.redis_url,
                                           install=not (a.no_feast_install or a.feast_python))  # fmt: skip
                    for label in peer.labels:
                        rows[label] = peer.sampler(label)
                except FeastUnavailable as e:
                    merge_feast(results, unavailable(str(e)))
                    log(f"  {feast_status_line(results)}")

            # 5. FEATURE-JOINED INFERENCE (to come; not implemented here): features fetched for the
            #    entities + the MLP-32 model run on them, against plain-tensor inference of the same
            #    rows.  Planned rows: "joined/<proto>/<n>x32" and "plain/<proto>/<n>x32" (p50 / p99),
            #    ratio "joined/plain/<n>"; a 32-feature view in REPO_MODULE, the model from
            #    bench/models.py in the server's --model-repository (now empty).  Add the rows to
            #    `rows` here, so that they are interleaved with the others and compute_ratios() and
            #    report() pick them up.

            # 6. time everything, interleaved
            log(f"  timing {len(rows)} rows: {a.calls} calls each in {a.rounds} interleaved rounds ...")
            figures, failed = run_rounds(rows, a.calls, a.warmup, a.rewarm, a.rounds)
            results["figures"] = figures
            for label, (commands, calls) in command_counts.items():
                if label in figures and calls:
                    # the server's commands per call (other clients of a shared Redis add to it;
                    # below 1 would mean calls answered without a round trip)
                    per_call = commands / calls
                    figures[label]["redis_commands_per_call"] = round(per_call, 3)
                    if per_call < 1:
                        failures.append(f"{label}: {per_call:.2f} Redis commands per call; reads are not reaching Redis")
            feast_failed = {k: v for k, v in failed.items() if k.startswith("feast")}
            failures.extend(f"{k}: {v}" for k, v in failed.items() if k not in feast_failed)
            if peer is not None:
                meta = peer.close()
                if feast_failed:
                    merge_feast(results, unavailable(f"bench/feast_peer.py failed: {next(iter(feast_failed.values()))}"))
                    for k in peer.labels:
                        figures.pop(k, None)
                else:
                    merge_feast(results, {"ok": True, **meta, "figures": {}})
                    if meta.get("keys_left"):
                        failures.append(f"Feast left {meta['keys_left']} keys after teardown (deleted by the peer)")
    finally:
        if peer is not None:
            peer.close()
        ks = list(r.scan_iter(match=f"{prefix}:*", count=1000))
        if ks:
            r.delete(*ks)
        r.close()

    results["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    results["loadavg_end"] = os.getloadavg()
    results["ratios"] = compute_ratios(results["figures"], a.features, a.entities)
    if failures:
        results["errors"] = failures
    print()
    print(report(results))
    for failure in failures:
        print(f"\nFAILED: {failure}")
    print(f"\n{results['started']} .. {results['finished']}, load average {results['loadavg_start'][0]:.2f} -> "
          f"{results['loadavg_end'][0]:.2f} on {results['cpus']} CPUs")  # fmt: skip
    if not a.no_json:
        out = Path(a.results_dir) / f"features-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1))
        print(f"wrote {out}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
