"""Start a real Parity server in a subprocess, for tests and demos.

    with ServerProcess(repo_dir) as server:
        client = tritonclient.http.InferenceServerClient(server.http_url)
        ...
    assert server.returncode == 0   # drained and exited cleanly on SIGTERM
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path


def wait_for(predicate, timeout: float = 30.0, what: str = "the condition", interval: float = 0.05):
    """Poll `predicate` until it returns something true, and return that; AssertionError (with
    the last value) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")


def post_json(address: str, path: str, doc, headers: dict | None = None, timeout: float = 10) -> tuple[int, dict]:
    """POST `doc` as JSON to http://address/path: (status, the JSON answer), errors included."""
    import json

    req = urllib.request.Request(f"http://{address}{path}", data=json.dumps(doc).encode(), method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        with e:
            return e.code, json.loads(e.read())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, model_repository: Path, *args: str, env: dict | None = None, ready_timeout: float = 60.0, wait_ready: bool = True):
        self.model_repository = Path(model_repository)
        self.args = list(args)
        self.env = env
        self.ready_timeout = ready_timeout
        self.wait_ready = wait_ready
        self.http_port = free_port()
        self.grpc_port = free_port()
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="parity-server-", suffix=".log", delete=False)

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self) -> "ServerProcess":
        cmd = [
            sys.executable, "-m", "parity", "serve",
            "--model-repository", str(self.model_repository),
            "--host", "127.0.0.1",
            "--http-port", str(self.http_port),
            "--grpc-port", str(self.grpc_port),
            *self.args,
        ]  # fmt: skip
        env = dict(os.environ, **(self.env or {}))
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        if self.wait_ready:
            self.wait_until_ready()
        return self

    def wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode} before it was ready:\n{self.output()}")
            try:
                with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server not ready after {self.ready_timeout}s:\n{self.output()}")

    def output(self) -> str:
        return Path(self._log.name).read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.returncode = self.proc.returncode
        self._log.close()
        return self.returncode

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        try:
            os.unlink(self._log.name)
        except OSError:
            pass
