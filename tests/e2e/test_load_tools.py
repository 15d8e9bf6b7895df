"""The load tools users reach for, run against the real server.

perf_analyzer (Triton's load generator) reads ModelMetadata, ModelConfig, ServerMetadata and
ModelStatistics before and during its windows and stops if any of them is missing or wrong; locust
drives the shipped locustfile.  `make test` installs both (bench/setup.sh, the `bench` extra)."""

import pytest

from bench.perf import Measurement, Target, check_perf_analyzer, run_perf
from parity.testing.models import mlp_config, write_config, write_mlp_onnx
from parity.testing.server import ServerProcess

SIZES = [32, 64, 1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    check_perf_analyzer()  # fails with what to run when bench/setup.sh has not been run
    root = tmp_path_factory.mktemp("repo")
    write_mlp_onnx(root / "mlp" / "1" / "model.onnx", SIZES)
    write_config(root / "mlp", mlp_config(SIZES))
    with ServerProcess(root) as s:
        yield s
    assert s.returncode == 0


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("batch_size", [1, 4])
def test_perf_analyzer_measures_the_server(server, protocol, batch_size, tmp_path):
    target = Target("parity", http_port=server.http_port, grpc_port=server.grpc_port, pid=server.proc.pid)
    quick = Measurement(mode="count_windows", request_count=100, stability_pct=1000, max_trials=3, fallback=False)
    result = run_perf(target, "mlp", protocol=protocol, concurrency=4, batch_size=batch_size, measurement=quick, keep_dir=tmp_path, timeout=120)
    assert result.throughput > 0
    assert result.p99_us > 0
    # the server's statistics counted what perf_analyzer sent
    assert result.server_cpu_us_per_request is not None and result.server_cpu_us_per_request > 0


def test_the_shipped_locustfile_drives_the_server(server, tmp_path):
    import csv
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PARITY_MODEL="mlp")
    prefix = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(root / "bench" / "locustfile.py"), "--headless", "-u", "4", "-r", "4",
         "-t", "3s", "--host", f"http://{server.http_url}", "--csv", str(prefix), "--only-summary"],
        env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    with open(f"{prefix}_stats.csv") as fh:
        rows = {r["Name"]: r for r in csv.DictReader(fh)}
    infer = next(r for name, r in rows.items() if "infer" in name.lower())
    assert int(infer["Request Count"]) > 10 and int(infer["Failure Count"]) == 0
