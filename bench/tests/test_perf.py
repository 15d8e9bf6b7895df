from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import perf
from bench.perf import Measurement, Target, build_command, count_profile_requests, parse_csv

CSV = """Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency
8,588.926,8,1013,5154,142,6542,730,3,13767,16621,18010,21179
"""


def test_parse_csv_reads_the_perf_analyzer_report():
    (row,) = parse_csv(CSV)
    assert row["concurrency"] == 8
    assert row["throughput"] == pytest.approx(588.926)
    assert row["p50_us"] == 13767 and row["p99_us"] == 21179
    assert row["server_queue_us"] == 5154
    assert row["avg_us"] is None


def test_parse_csv_stops_at_the_verbose_tail_and_reads_avg():
    text = ("Concurrency,Inferences/Second,p50 latency,p90 latency,p95 latency,p99 latency,Avg latency\n"
            "1,100.5,900,950,990,1200,910\n\nServer Metrics\nfoo,bar\n1,2\n")
    (row,) = parse_csv(text)
    assert row["avg_us"] == 910 and row["client_send_us"] is None


def test_count_profile_requests(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"experiments": [{"requests": [{}] * 5}, {"requests": [{}] * 3}]}))
    assert count_profile_requests(path) == 8
    assert count_profile_requests(tmp_path / "missing.json") is None


def test_measurement_args():
    args = Measurement(request_count=200, stability_pct=15, max_trials=6, percentile=99).args()
    assert "--measurement-mode=count_windows" in args
    assert "--measurement-request-count=200" in args
    assert "--stability-percentage=15" in args and "--max-trials=6" in args and "--percentile=99" in args
    timed = Measurement(mode="time_windows", interval_ms=2500).args()
    assert "--measurement-interval=2500" in timed
    loose = Measurement().without_stability_check()
    assert loose.max_trials == 3 and not loose.fallback and loose.stability_pct > 1000
    with pytest.raises(ValueError):
        Measurement(mode="request_count").args()


def test_build_command_headers_follow_the_protocol(tmp_path):
    target = Target("t", 8000, 8001, headers={"h-http": "1"}, grpc_headers={"h-grpc": "2"})
    grpc = build_command(target, "m", "grpc", 8, 16, Measurement(), tmp_path / "x.csv", None,
                         shapes={"INPUT0": [4, 5]})
    assert grpc[grpc.index("-u") + 1] == "127.0.0.1:8001"
    assert grpc[grpc.index("-b") + 1] == "16"
    assert "--concurrency-range=8" in grpc
    assert grpc[grpc.index("-H") + 1] == "h-grpc:2"
    assert grpc[grpc.index("--shape") + 1] == "INPUT0:4,5"
    http = build_command(target, "m", "http", 1, 1, Measurement(), tmp_path / "x.csv", tmp_path / "p.json")
    assert http[http.index("-u") + 1] == "127.0.0.1:8000"
    assert http[http.index("-H") + 1] == "h-http:1"
    assert "--profile-export-file" in http
    with pytest.raises(ValueError):
        build_command(target, "m", "tcp", 1, 1, Measurement(), tmp_path / "x.csv", None)


def test_perf_env_puts_cudart_first():
    env = perf.perf_env({"LD_LIBRARY_PATH": "/somewhere"})
    libdir = perf.cudart_lib_dir()
    if libdir is None:
        assert env["LD_LIBRARY_PATH"] == "/somewhere"
    else:
        assert env["LD_LIBRARY_PATH"].split(os.pathsep) == [libdir, "/somewhere"]


def test_read_stat_survives_odd_process_names():
    code = "open('/proc/self/comm','w').write('a) (b c'); import time; time.sleep(5)"
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 5
        comm = Path(f"/proc/{proc.pid}/comm")
        while comm.read_text().strip() != "a) (b c" and time.monotonic() < deadline:
            time.sleep(0.02)
        fields = perf._read_stat(proc.pid)
        assert int(fields[1]) == os.getpid()  # ppid
        assert proc.pid in perf.process_tree(os.getpid())
    finally:
        proc.kill()
        proc.wait()


BUSY_PARENT = r"""
import subprocess, sys, time
burn = "import time\nt=time.process_time()\nwhile time.process_time()-t<{s}: pass"
# a child that finishes (its time moves into our cutime) and one still alive at the end
subprocess.run([sys.executable, "-c", burn.format(s=0.4)])
live = subprocess.Popen([sys.executable, "-c", burn.format(s=0.4) + "\ntime.sleep(30)"])
print("go", flush=True)
time.sleep(30)
"""


def test_cpu_seconds_counts_children_alive_and_exited():
    proc = subprocess.Popen([sys.executable, "-c", BUSY_PARENT], stdout=subprocess.PIPE, text=True)
    try:
        before = 0.0  # the whole tree started after this point
        assert proc.stdout.readline().strip() == "go"
        deadline = time.monotonic() + 10  # until the live child has burnt its 0.4 s too
        while perf.cpu_seconds(proc.pid) - before < 0.7 and time.monotonic() < deadline:
            time.sleep(0.02)
        total = perf.cpu_seconds(proc.pid)
        alone = perf.cpu_seconds(proc.pid, include_children=False)
        assert total - before >= 0.7  # two children x 0.4 s (+ interpreter start-up)
        assert total > alone
        assert len(perf.process_tree(proc.pid)) >= 2
    finally:
        for pid in perf.process_tree(proc.pid)[::-1]:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        proc.wait()
        proc.stdout.close()


def test_machine_busy_seconds_grows():
    a = perf.machine_busy_seconds()
    t = time.process_time()
    while time.process_time() - t < 0.2:
        pass
    assert perf.machine_busy_seconds() - a >= 0.1


def test_success_count_without_a_server_is_none():
    from bench.tests.conftest import free_port

    assert Target("nobody", free_port(), free_port()).success_count("m") is None
    assert not Target("nobody", free_port(), free_port()).is_ready()
