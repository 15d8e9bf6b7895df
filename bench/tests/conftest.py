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


needs_perf_analyzer = pytest.mark.skipif(not perf_analyzer_usable(), reason="perf_analyzer not runnable (bench/setup.sh)")
needs_pytriton = pytest.mark.skipif(not pytriton_available(), reason="nvidia-pytriton not installed")


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
