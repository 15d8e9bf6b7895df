"""Serving from the model registry, with real server processes, a real registry (SQLite file and
artifact directory) and tritonclient: `name@alias` endpoints from routing files, alias moves
deployed without a failed request, checksum failures refused, routing files reloaded (or refused
with the line), weights, sticky assignment, shadows, canaries promoted and rolled back, all in the
audit log."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient

from parity.registry import Registry
from parity.testing.models import mlp_reference, write_identity_onnx, write_mlp_onnx
from parity.testing.server import ServerProcess, wait_for

SIZES = [4, 8, 1]
TOKEN = "s3cret"


def write_route(routes: Path, endpoint: str, text: str) -> None:
    routes.mkdir(parents=True, exist_ok=True)
    tmp = routes / f".{endpoint}.tmp"
    tmp.write_text(text)
    tmp.replace(routes / f"{endpoint}.yaml")


class Env:
    def __init__(self, root: Path):
        self.root = root
        self.db = f"sqlite:///{root / 'meta.db'}"
        self.artifacts = root / "artifacts"
        self.routes = root / "routes"
        self.registry = Registry.open(self.db, self.artifacts)
        self.weights: dict[int, list] = {}

    def register(self, name: str, seed: int) -> int:
        path = self.root / "build" / f"{name}-{seed}.onnx"
        weights = write_mlp_onnx(path, SIZES, seed=seed)
        mv = self.registry.register(name, {"model.onnx": path}, actor="test", reason=f"seed {seed}")
        self.weights[(name, mv.version)] = weights
        return mv.version

    def alias(self, name: str, alias: str, version: int) -> None:
        self.registry.set_alias(name, alias, version, actor="test", reason="test moves it")

    def server(self, *extra: str) -> ServerProcess:
        return ServerProcess(
            self.root / "unused",
            "--routes", str(self.routes), "--db", self.db, "--artifacts", str(self.artifacts),
            "--registry-poll-secs", "0.2", "--admin-token", TOKEN, *extra,
        )  # fmt: skip


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    yield e
    e.registry.close()


def infer(server, endpoint: str, x: np.ndarray):
    client = httpclient.InferenceServerClient(server.http_url)
    inp = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer(endpoint, [inp])
    return result.get_response()["model_version"], result.as_numpy("OUTPUT0")


def get_json(server, path: str):
    with urllib.request.urlopen(f"http://{server.http_url}{path}", timeout=10) as r:
        return json.loads(r.read())


def post(server, path: str, token: str | None = TOKEN) -> tuple[int, dict]:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(f"http://{server.http_url}{path}", data=b"", method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        with e:
            return e.code, json.loads(e.read())


X = np.random.default_rng(0).standard_normal((3, SIZES[0])).astype(np.float32)


def test_an_alias_endpoint_follows_alias_moves_without_a_failed_request(env):
    v1, v2 = env.register("fraud", 1), env.register("fraud", 2)
    env.alias("fraud", "champion", v1)
    write_route(env.routes, "fraud", "targets:\n  - {model: fraud@champion}\n")
    with env.server() as server:
        version, out = infer(server, "fraud", X)
        assert version == "1"
        np.testing.assert_allclose(out, mlp_reference(X, env.weights[("fraud", v1)]), rtol=1e-5, atol=1e-5)
        # name@alias and name + version also resolve
        assert infer(server, "fraud@champion", X)[0] == "1"

        failures: list = []
        answered: dict[str, int] = {}
        stop = False

        async def load():
            client = grpcaio.InferenceServerClient(server.grpc_url)
            try:
                while not stop:
                    inp = grpcaio.InferInput("INPUT0", list(X.shape), "FP32")
                    inp.set_data_from_numpy(X)
                    try:
                        r = await client.infer("fraud", [inp])
                        v = r.get_response().model_version
                        answered[v] = answered.get(v, 0) + 1
                    except Exception as e:  # noqa: BLE001 - every failure is the test's failure
                        failures.append(repr(e))
            finally:
                await client.close()

        async def moves():
            nonlocal stop
            loop = asyncio.get_running_loop()
            for i in range(10):
                target = v2 if i % 2 == 0 else v1
                await loop.run_in_executor(None, env.alias, "fraud", "champion", target)
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    doc = await loop.run_in_executor(None, get_json, server, "/v1/routes")
                    if doc["endpoints"]["fraud"]["targets"][0]["version"] == target:
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError(f"move {i} to version {target} was not deployed")
                await asyncio.sleep(0.2)
            stop = True

        async def main():
            await asyncio.gather(moves(), *(load() for _ in range(4)))

        asyncio.run(main())
        assert failures == [], failures[:5]
        assert answered.get("1", 0) > 0 and answered.get("2", 0) > 0, answered
        assert infer(server, "fraud", X)[0] == "1"  # ten moves: back on version 1
    history = env.registry.history("fraud")
    deploys = [h for h in history if h.action == "deploy"]
    assert len(deploys) >= 10 and all(h.actor == "parity-server" for h in deploys)


def test_a_corrupted_version_is_refused_and_the_old_one_keeps_serving(env):
    v1, v2 = env.register("fraud", 1), env.register("fraud", 2)
    env.alias("fraud", "champion", v1)
    write_route(env.routes, "fraud", "targets:\n  - {model: fraud@champion}\n")
    with env.server() as server:
        assert infer(server, "fraud", X)[0] == "1"
        # flip one byte of version 2's stored artifact, then point the alias at it
        sha = env.registry.get("fraud", v2).artifacts[0].sha256
        obj = next(env.artifacts.rglob(sha))
        obj.chmod(0o644)
        data = bytearray(obj.read_bytes())
        data[len(data) // 2] ^= 0xFF
        obj.write_bytes(bytes(data))
        env.alias("fraud", "champion", v2)
        doc = wait_for(lambda: (d := get_json(server, "/v1/routes"))["errors"] and d, what="the refusal")
        assert any("sha256" in m or "checksum" in m.lower() for m in doc["errors"].values()), doc["errors"]
        for _ in range(5):
            assert infer(server, "fraud", X)[0] == "1"


def test_weights_sticky_assignment_and_routing_files_reloaded_or_refused_with_the_line(env):
    v1, v2 = env.register("fraud", 1), env.register("fraud", 2)
    env.alias("fraud", "champion", v1)
    env.alias("fraud", "challenger", v2)
    write_route(env.routes, "fraud", "targets:\n  - {model: fraud@champion, weight: 50}\n  - {model: fraud@challenger, weight: 50}\nsticky: {input: INPUT0}\n")
    with env.server() as server:
        rng = np.random.default_rng(5)
        seen = {}
        for i in range(60):
            x = rng.standard_normal((1, SIZES[0])).astype(np.float32)
            v, _ = infer(server, "fraud", x)
            seen.setdefault(v, 0)
            seen[v] += 1
            # the same sticky value always gets the same version
            assert infer(server, "fraud", x)[0] == v
        assert set(seen) == {"1", "2"} and min(seen.values()) >= 10, seen

        # an admin reload needs the token
        assert post(server, "/v1/routes/reload", token=None)[0] == 401
        assert post(server, "/v1/routes/reload", token="wrong")[0] == 403
        # a broken file is refused with its line; the routing in force stays
        write_route(env.routes, "fraud", "targets:\n  - {model: fraud@champion, weight: 100}\n  - {model: 'bad name@x', weight: 1}\n")
        status, doc = post(server, "/v1/routes/reload")
        assert status == 400 and "fraud.yaml:3" in doc["error"] and "not a valid model name" in doc["error"], doc
        assert {infer(server, "fraud", rng.standard_normal((1, 4)).astype(np.float32))[0] for _ in range(30)} == {"1", "2"}
        # a good file takes effect: everything to the champion
        write_route(env.routes, "fraud", "targets:\n  - {model: fraud@champion, weight: 100}\n")
        status, doc = post(server, "/v1/routes/reload")
        assert status == 200 and doc["endpoints"]["fraud"]["traffic"] == [{"model": "fraud", "version": 1, "share": 1.0}], doc
        assert {infer(server, "fraud", rng.standard_normal((1, 4)).astype(np.float32))[0] for _ in range(20)} == {"1"}
    actions = [h.action for h in env.registry.history("fraud")]
    assert actions.count("traffic") >= 2


def test_shadows_answer_in_the_background_and_are_recorded(env):
    v1, v2 = env.register("fraud", 1), env.register("fraud", 2)
    env.alias("fraud", "champion", v1)
    env.alias("fraud", "shadow", v2)
    write_route(env.routes, "fraud", "targets:\n  - {model: fraud@champion}\nshadow:\n  - {model: fraud@shadow}\n")
    with env.server() as server:
        for _ in range(10):
            version, out = infer(server, "fraud", X)
            assert version == "1"  # the real answer, never the shadow's
            np.testing.assert_allclose(out, mlp_reference(X, env.weights[("fraud", v1)]), rtol=1e-5, atol=1e-5)
        doc = wait_for(lambda: (d := get_json(server, "/v1/routes"))["shadow"]["answered"] >= 10 and d, what="shadow answers")
        log = doc["endpoints"]["fraud"]["shadow_log"]
        assert log and log[-1]["primary"] == "fraud/1" and log[-1]["shadow"] == "fraud/2"
        want = np.max(np.abs(mlp_reference(X, env.weights[("fraud", v1)]) - mlp_reference(X, env.weights[("fraud", v2)])))
        assert abs(log[-1]["max_abs_difference"]["OUTPUT0"] - want) < 1e-4
        with urllib.request.urlopen(f"http://{server.http_url}/metrics", timeout=10) as r:
            assert 'parity_shadow_requests_total{result="answered"}' in r.read().decode()


@contextlib.contextmanager
def serving(env, workers: int):
    """The server with `workers` processes, once every one of them listens (so that connections,
    one per request here, reach all of them)."""
    with (env.server("--workers", str(workers)) if workers > 1 else env.server()) as server:
        wait_for(lambda: server.output().count(" model(s): http on ") >= workers, what=f"{workers} workers listening")
        yield server


@pytest.mark.parametrize("workers", [1, 2])
def test_a_canary_that_holds_is_promoted_and_one_that_fails_is_rolled_back(env, workers):
    """With two workers, worker 0 judges the canary on both workers' traffic and the other
    follows: one promotion, one record per step, one rollback -- not one per worker."""
    v1, v2 = env.register("fraud", 1), env.register("fraud", 2)
    env.alias("fraud", "champion", v1)
    env.alias("fraud", "canary", v2)
    write_route(
        env.routes, "fraud",
        "targets:\n  - {model: fraud@champion}\n"
        "canary: {model: fraud@canary, steps: [20, 50], interval_secs: 0.5, min_requests: 10, max_error_rate: 0.05, promote_to: champion}\n",
    )  # fmt: skip
    with serving(env, workers) as server:
        def promoted():
            for _ in range(10):
                infer(server, "fraud", X)
            return env.registry.resolve("fraud@champion").version == v2

        wait_for(promoted, timeout=60, what="the canary's promotion")
        wait_for(lambda: infer(server, "fraud", X)[0] == "2", what="traffic on the promoted version")
        promote = [h for h in env.registry.history("fraud") if h.action == "promote"]
        assert len(promote) == 1 and promote[0].version == v2 and promote[0].evidence["requests"] >= 10
        steps = [h.reason for h in env.registry.history("fraud") if h.action == "traffic" and h.version == v2]
        assert sorted(steps) == sorted(["canary fraud@canary starts at 20%", "canary fraud@canary held; now 50%"]), steps

    # a canary that fails: an identity model whose output name does not match the endpoint's
    # clients (OUTPUT0 missing): every canary request fails -> rolled back at once
    bad = env.root / "build" / "bad.onnx"
    from onnx import TensorProto

    write_identity_onnx(bad, TensorProto.FLOAT, ["batch", 3])  # takes [batch, 3]: every [1, 4] request fails
    v3 = env.registry.register("fraud", {"model.onnx": bad}, actor="test", reason="broken on purpose").version
    env.alias("fraud", "canary", v3)
    with serving(env, workers) as server:
        def rolled_back():
            for _ in range(10):
                try:
                    infer(server, "fraud", X)
                except Exception:  # noqa: BLE001 - the canary's failures are the point
                    pass
            # every worker says so (each GET may reach either): worker 0 decided, the other follows
            return all(get_json(server, "/v1/routes")["endpoints"]["fraud"]["canary"]["state"] == "rolled_back" for _ in range(4 * workers))

        wait_for(rolled_back, timeout=60, what="the rollback")
        for _ in range(10):
            assert infer(server, "fraud", X)[0] == "2"  # all traffic back on the champion
    assert [h.version for h in env.registry.history("fraud") if h.action == "rollback"] == [v3]


class _Proxy:
    """A TCP proxy to PostgreSQL that the test can cut and restore (the database 'unreachable')."""

    def __init__(self, port: int):
        import socket
        import threading

        self.target = ("127.0.0.1", port)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.sock.listen(16)
        self.up = True
        self.conns: list = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass

    def cut(self) -> None:
        import socket

        self.up = False
        with self.lock:
            for s in self.conns:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.conns = []

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self.cut()
        self.sock.close()


def test_the_registry_database_unreachable_keeps_serving_and_recovers(tmp_path):
    from parity.testing.postgres import temporary_database

    with temporary_database() as url:
        env = Env(tmp_path)
        env.registry.close()
        env.db = url
        env.registry = Registry.open(url, env.artifacts)
        proxy = _Proxy(int(url.rsplit(":", 1)[1].split("/")[0]))
        try:
            v1, v2 = env.register("fraud", 1), env.register("fraud", 2)
            env.alias("fraud", "champion", v1)
            write_route(env.routes, "fraud", "targets:\n  - {model: fraud@champion}\n")
            env.db = url.replace(url.rsplit(":", 1)[1].split("/")[0], str(proxy.port), 1)
            with env.server() as server:
                assert infer(server, "fraud", X)[0] == "1"
                proxy.cut()
                wait_for(lambda: "registry" in get_json(server, "/v1/routes")["errors"], what="the registry error")
                message = get_json(server, "/v1/routes")["errors"]["registry"]
                assert "PostgreSQL" in message, message
                for _ in range(10):
                    assert infer(server, "fraud", X)[0] == "1"  # what is loaded keeps serving
                checks = get_json(server, "/v1/routes")["registry_checks"]
                env.alias("fraud", "champion", v2)  # moved while the server cannot see the database
                wait_for(lambda: get_json(server, "/v1/routes")["registry_checks"] >= checks + 2, what="two polls during the cut")
                assert infer(server, "fraud", X)[0] == "1"
                proxy.restore()
                wait_for(lambda: infer(server, "fraud", X)[0] == "2", what="the move once the database is back")
                assert "registry" not in get_json(server, "/v1/routes")["errors"]
        finally:
            proxy.close()
            env.registry.close()
