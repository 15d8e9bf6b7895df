"""Throwaway Redis servers for tests: a standalone redis-server, and a 3-master Redis Cluster,
each on free ports with a temporary directory, nothing saved to disk, always killed at the end.

    with RedisServer() as server:                   # redis-server on a free port
        url = server.url(prefix="t", timeout=0.5)
        server.kill(); server.restart()             # the same port again, empty

    with RedisCluster(masters=3) as cluster:        # redis-cli --cluster create ... --cluster-replicas 0
        url = cluster.url(prefix="t")               # redis://127.0.0.1:P0/0?...&cluster=true
        cluster.freeze_node(1); cluster.thaw_node(1)   # SIGSTOP / SIGCONT: a node that stops answering
        cluster.kill_node(1); cluster.restart_node(1)  # gone; back with its slots, empty
        cluster.move_slot(slot, to_port)                # a resharding step: old slot maps get MOVED

Needs the `redis-server` and `redis-cli` binaries on PATH.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> list[int]:
    """n distinct free ports (all held open while choosing, so none repeats)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def cluster_ports(n: int) -> list[int]:
    """n distinct free ports below 55536 whose cluster bus port (port + 10000) is free too."""
    socks: list[socket.socket] = []
    ports: list[int] = []
    try:
        for _ in range(1000):
            if len(ports) == n:
                return ports
            a = socket.socket()
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            if port > 55535:
                a.close()
                continue
            b = socket.socket()
            try:
                b.bind(("127.0.0.1", port + 10000))
            except OSError:
                a.close()
                b.close()
                continue
            socks += [a, b]
            ports.append(port)
        raise RuntimeError(f"found only {len(ports)} of {n} free port pairs (port, port + 10000) for a Redis Cluster")
    finally:
        for s in socks:
            s.close()


def _die_with_parent() -> list[str]:
    """A command prefix (Linux, util-linux's setpriv): the server gets SIGKILL when the process
    that started it dies, so a test run killed outright leaves no redis-server behind.  setpriv
    execs the server, so no Python runs between fork and exec (a preexec_fn in a process with
    threads can crash or deadlock the child).  Elsewhere: [] (teardown alone stops it)."""
    import shutil

    setpriv = shutil.which("setpriv") if sys.platform == "linux" else None
    return [setpriv, "--pdeathsig", "KILL"] if setpriv else []


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not on PATH; install Redis (apt-get install redis-server) to run these tests")
    return path


def _kill(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.kill()
    if proc is not None:
        proc.wait()


def wait_for_ping(port: int, proc: subprocess.Popen | None = None, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    """Wait until a Redis on `port` answers PING (raise RuntimeError after `timeout` or when `proc` exits)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            with redis.Redis(host=host, port=port, socket_connect_timeout=0.2, socket_timeout=0.5) as r:
                if r.ping():
                    return
        except redis.RedisError as e:
            last = e
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"redis-server on port {port} exited with {proc.returncode} before answering PING")
        if time.monotonic() > deadline:
            raise RuntimeError(f"redis-server on port {port} did not answer PING within {timeout}s ({last})")
        time.sleep(0.05)


def start_redis(port: int, workdir: str | Path, *extra: str, timeout: float = 10.0) -> subprocess.Popen:
    """A redis-server on 127.0.0.1:`port` with no persistence, its files in `workdir`; returns once
    it answers PING (killed, with an error, if it does not within `timeout`)."""
    Path(workdir).mkdir(parents=True, exist_ok=True)
    log = Path(workdir) / f"redis-{port}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [*_die_with_parent(), _binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(workdir), *extra],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for_ping(port, proc, timeout)
    except RuntimeError as e:
        _kill(proc)
        tail = log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{e}; its log:\n{tail}") from None
    except BaseException:
        _kill(proc)
        raise
    return proc


def _url(port: int, prefix: str, timeout: float, cluster: bool) -> str:
    return f"redis://127.0.0.1:{port}/0?prefix={prefix}&timeout={timeout}" + ("&cluster=true" if cluster else "")


class RedisServer:
    """A throwaway standalone redis-server on a free port (or `port`)."""

    def __init__(self, port: int | None = None, workdir: str | Path | None = None):
        self.port = port or free_port()
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="parity-redis-")
        self.workdir = Path(workdir) if workdir else Path(self._tmp.name)
        self.proc: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        if not self.running:
            self.proc = start_redis(self.port, self.workdir)
        return self

    def kill(self) -> None:
        """SIGKILL: gone at once, nothing saved (the next start is empty)."""
        _kill(self.proc)

    def restart(self) -> RedisServer:
        self.kill()
        return self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def url(self, prefix: str = "parity", timeout: float = 0.5) -> str:
        return _url(self.port, prefix, timeout, cluster=False)

    def client(self, **kw) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5, socket_connect_timeout=5, **kw)

    def close(self) -> None:
        self.kill()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


class RedisCluster:
    """A throwaway Redis Cluster of `masters` redis-server processes (no replicas) on free ports,
    slots spread by `redis-cli --cluster create`; ready once every node says cluster_state:ok."""

    def __init__(self, masters: int = 3, workdir: str | Path | None = None, ready_timeout: float = 30.0):
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        self.ports = cluster_ports(masters)
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="parity-redis-cluster-")
        self.workdir = Path(workdir) if workdir else Path(self._tmp.name)
        self.ready_timeout = ready_timeout
        self.procs: list[subprocess.Popen | None] = [None] * masters

    @property
    def port(self) -> int:
        """The seed node's port (the one a store url names)."""
        return self.ports[0]

    def start(self) -> RedisCluster:
        try:
            for i in range(len(self.ports)):
                self._start_node(i)
            create = subprocess.run(
                [_binary("redis-cli"), "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                 "--cluster-replicas", "0", "--cluster-yes"],
                capture_output=True, text=True, timeout=self.ready_timeout,
            )  # fmt: skip
            if create.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed ({create.returncode}):\n{create.stdout}\n{create.stderr}")
            self.wait_ok()
        except BaseException:
            self.close()
            raise
        return self

    def _start_node(self, i: int) -> None:
        port = self.ports[i]
        d = self.workdir / f"node-{port}"
        # nodes.conf keeps the node's id and slots across a restart (the data goes: nothing is saved)
        self.procs[i] = start_redis(
            port, d, "--cluster-enabled", "yes", "--cluster-config-file", str(d / "nodes.conf"),
            "--cluster-node-timeout", "2000", timeout=self.ready_timeout,
        )  # fmt: skip

    def restart_node(self, i: int) -> None:
        """Start node i again (after `kill_node`) on its port, with its slots and no data; returns
        once the cluster is ok again."""
        _kill(self.procs[i])
        self._start_node(i)
        self.wait_ok()

    def cluster_info(self, port: int) -> dict[str, str]:
        with redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1, decode_responses=True) as r:
            return r.cluster("INFO")

    def wait_ok(self, timeout: float | None = None) -> None:
        """Until every running node reports cluster_state:ok and knows all slots assigned."""
        deadline = time.monotonic() + (timeout or self.ready_timeout)
        while True:
            states = {}
            for port, proc in zip(self.ports, self.procs):
                if proc is None or proc.poll() is not None:
                    continue
                try:
                    info = self.cluster_info(port)
                    states[port] = (info.get("cluster_state"), info.get("cluster_slots_ok"), info.get("cluster_known_nodes"))
                except redis.RedisError as e:
                    states[port] = (f"error: {e}",)
            want = ("ok", "16384", str(len(self.ports)))
            if states and all(s == want for s in states.values()):
                return
            if time.monotonic() > deadline:
                waited = timeout or self.ready_timeout
                raise RuntimeError(f"the Redis Cluster on {self.ports} is not ok after {waited}s: {states}")
            time.sleep(0.1)

    def kill_node(self, i: int) -> None:
        """SIGKILL node i: its connections are refused (the others mark it failed after the node timeout, 2 s)."""
        _kill(self.procs[i])

    def freeze_node(self, i: int) -> None:
        """SIGSTOP node i: connections are accepted by the kernel but nothing answers (`thaw_node` resumes it)."""
        self.procs[i].send_signal(signal.SIGSTOP)

    def thaw_node(self, i: int) -> None:
        self.procs[i].send_signal(signal.SIGCONT)

    def slot_owners(self) -> list[int]:
        """The port of the master owning each of the 16384 slots (as the seed node sees it)."""
        owners = [0] * 16384
        with redis.Redis(port=self.port, socket_timeout=5, decode_responses=True) as r:
            for start, end, master, *_ in r.execute_command("CLUSTER", "SLOTS"):
                owners[int(start) : int(end) + 1] = [int(master[1])] * (int(end) - int(start) + 1)
        return owners

    def node_of_slot(self, slot: int) -> int:
        """The port of the master that owns `slot`."""
        return self.slot_owners()[slot]

    def node_id(self, port: int) -> str:
        with redis.Redis(port=port, socket_timeout=5, decode_responses=True) as r:
            return r.execute_command("CLUSTER", "MYID")

    def move_slot(self, slot: int, to_port: int) -> None:
        """Migrate `slot` and its keys to the master on `to_port`, as a resharding does (IMPORTING /
        MIGRATING, MIGRATE of every key, SETSLOT NODE on every master); clients that cached the old
        slot map get MOVED afterwards."""
        from_port = self.node_of_slot(slot)
        if from_port == to_port:
            return
        src, dst = self.node_id(from_port), self.node_id(to_port)
        with self.client(from_port) as a, self.client(to_port) as b:
            b.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src)
            a.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst)
            while keys := a.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
                a.execute_command("MIGRATE", "127.0.0.1", to_port, "", 0, 5000, "KEYS", *keys)
            for port, proc in zip(self.ports, self.procs):
                if proc is not None and proc.poll() is None:
                    with self.client(port) as r:
                        r.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst)
        self.wait_ok()

    def url(self, prefix: str = "parity", timeout: float = 0.5) -> str:
        return _url(self.port, prefix, timeout, cluster=True)

    def client(self, port: int, **kw) -> redis.Redis:
        """A plain (non-cluster) client of one node."""
        return redis.Redis(port=port, socket_timeout=5, socket_connect_timeout=5, **kw)

    def close(self) -> None:
        for proc in self.procs:
            _kill(proc)
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["RedisCluster", "RedisServer", "cluster_ports", "free_port", "free_ports", "start_redis", "wait_for_ping"]
