"""Shared helpers for the benchmark tooling's tests (run with: pytest bench/tests)."""

from __future__ import annotations

import importlib.util
import socket
import subprocess

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def perf_analyzer_usable() -> bool:
    try:
        from bench.perf import check_perf_analyzer

        check_perf_analyzer()
        return True
    except Exception:
        return False


def pytriton_available() -> bool:
    return importlib.util.find_spec("pytriton") is not None


# `make test` installs both (the `bench` extra and bench/setup.sh): a missing one is an error with
# the command that fixes it, never a silent skip.
@pytest.fixture
def perf_analyzer_required():
    if not perf_analyzer_usable():
        pytest.fail("perf_analyzer is not runnable: run `bash bench/setup.sh` (or `make install`)")


@pytest.fixture(scope="module")
def pytriton_required():
    if not pytriton_available():
        pytest.fail("nvidia-pytriton is not installed: run `bash bench/setup.sh --peer` (or `make install`)")


needs_perf_analyzer = pytest.mark.usefixtures("perf_analyzer_required")
needs_pytriton = pytest.mark.usefixtures("pytriton_required")


@pytest.fixture(scope="session")
def mlp32_repo(tmp_path_factory):
    from bench.models import build_repository

    root = tmp_path_factory.mktemp("repo")
    build_repository(root, models=["mlp32"])
    return root


def stop(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    if proc.poll() is None:
        proc.terminate()
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
    return proc.returncode
