from __future__ import annotations

import json
import sys

import pytest

from bench import serving


def test_parse_selection():
    assert serving.parse_selection([], False, False, False) == (list(serving.SECTIONS), ["grpc", "http"])
    assert serving.parse_selection(["grpc"], False, False, False) == (list(serving.SECTIONS), ["grpc"])
    assert serving.parse_selection(["peer,http"], False, False, False) == (["peer"], ["http"])
    assert serving.parse_selection(["mlp1024"], False, False, False)[0] == ["batching", "rows"]
    assert serving.parse_selection(["mlp32", "grpc"], True, False, False) == (["ours", "grpcio"], ["grpc"])
    assert serving.parse_selection(["grpc,peer,grpcio,ours"], False, False, False) == (
        ["ours", "grpcio", "peer"], ["grpc"])
    assert serving.parse_selection([], False, True, False)[0] == ["peer"]
    assert serving.parse_selection([], False, False, True)[0] == ["ours", "grpcio", "peer"]
    assert serving.parse_selection(["mlp32"], False, False, False)[0] == ["ours", "grpcio", "peer"]
    with pytest.raises(SystemExit):
        serving.parse_selection(["bogus"], False, False, False)


def test_format_cmd_and_cpu_list():
    cmd = serving.format_cmd(serving.DEFAULT_SERVER_CMD, python="/py", repo="/r x", http_port=1, grpc_port=2, root="/",
                             grpc_transport="fast")
    assert cmd == ["/py", "-m", "parity", "serve", "--model-repository", "/r x", "--http-port", "1", "--grpc-port", "2",
                   "--grpc-transport", "fast"]
    # a template without {grpc_transport} ignores it
    assert serving.format_cmd("{python} x {grpc_port}", python="/py", grpc_port=2, grpc_transport="grpcio") == [
        "/py", "x", "2"]
    assert serving.cpu_list("0,2-3") == [0, 2, 3]
    assert serving.cpu_list(None) is None


def test_table_and_ratio():
    assert serving.ratio(2, 4) == 0.5 and serving.ratio(None, 1) is None and serving.ratio(1, 0) is None
    text = serving.table(["a", "bb"], [["1", "22"], ["333", "4"]])
    assert text.splitlines()[0] == "  a  bb" and text.splitlines()[3] == "333   4"


def test_ort_rows_per_second(mlp32_repo):
    result = serving.ort_rows_per_second(mlp32_repo / "mlp32" / "1" / "model.onnx", batch=8, seconds=0.2)
    assert result["rows_per_s"] > 0 and result["runs"] > 0 and result["batch"] == 8


def test_server_that_fails_to_start_is_reported(tmp_path, capsys):
    from bench.tests.conftest import perf_analyzer_usable

    assert perf_analyzer_usable(), "perf_analyzer is not runnable: run `bash bench/setup.sh`"
    rc = serving.main(["--quick", "--only", "ours,grpc", "--concurrency", "1", "--results-dir", str(tmp_path),
                       "--server-cmd", f"{sys.executable} -c 'import sys; sys.exit(3)'"])
    assert rc == 1
    (path,) = tmp_path.glob("serving-*.json")
    doc = json.loads(path.read_text())
    assert doc["results"] == []
    assert doc["errors"][0]["section"] == "startup" and "exited with 3" in doc["errors"][0]["error"]
    assert "error(s)" in capsys.readouterr().out


# --------------------------------------------------------------------------- the grpcio section
# Planning, counting, summaries and tables are checked on the driver's own objects; the run itself
# with servers and perf_analyzer replaced by fakes (the real ones run in test_peer_e2e.py).


def plan(argv):
    args = serving.parse_args(argv)
    sections, protocols = serving.parse_selection(args.only, args.skip_peer, args.skip_ours, args.skip_mlp1024)
    sections, notes = serving.plan_sections(args, sections, protocols)
    return args, sections, protocols, notes


def test_grpcio_section_plan():
    args, sections, protocols, notes = plan([])
    assert sections == list(serving.SECTIONS) and notes == []
    assert serving.grpcio_server_cmd(args) == serving.DEFAULT_SERVER_CMD
    assert serving.section_transport(args, "ours") == "fast" and serving.section_transport(args, "grpcio") == "grpcio"
    # gRPC only: with HTTP alone there is nothing for it to measure
    _, sections, _, notes = plan(["--only", "mlp32,http"])
    assert sections == ["ours", "peer"] and "gRPC only" in notes[0]
    # a --server-cmd that cannot pick the transport leaves it out, unless --grpcio-server-cmd says how
    _, sections, _, notes = plan(["--only", "mlp32", "--server-cmd", "{python} srv.py {grpc_port}"])
    assert sections == ["ours", "peer"] and "--grpcio-server-cmd" in notes[0]
    args, sections, _, notes = plan(["--only", "grpcio", "--server-cmd", "{python} srv.py {grpc_port}",
                                     "--grpcio-server-cmd", "{python} srv.py --grpcio {grpc_port}"])
    assert sections == ["grpcio"] and notes == []
    assert serving.section_transport(args, "ours") is None and serving.section_transport(args, "grpcio") is None
    with pytest.raises(SystemExit, match="gRPC only"):
        serving.main(["--only", "grpcio,http"])


def test_grpcio_section_steps():
    def total(argv):
        args, sections, protocols, _ = plan(argv)
        return serving.Benchmark(args, sections, protocols).total

    assert total(["--only", "grpcio", "--concurrency", "1", "32"]) == 2  # gRPC only, though both protocols are on
    assert total(["--only", "mlp32", "--concurrency", "1", "32"]) == 2 * 2 + 2 + 2 * 2
    assert total(["--only", "mlp32,grpc", "--concurrency", "1", "8", "32"]) == 3 + 3 + 3
    assert total([]) == 2 * 3 + 3 + 2 * 3 + 2 * 2 + 2 + 1


def fake_result(target, model, protocol, concurrency, throughput, p99_us, cpu_us, batch_size=1):
    from bench import perf

    return perf.PerfResult(
        target=target, model=model, protocol=protocol, concurrency=concurrency, batch_size=batch_size,
        throughput=throughput, requests_per_s=throughput / batch_size, p50_us=p99_us / 2, p90_us=p99_us * 0.8,
        p95_us=p99_us * 0.9, p99_us=p99_us, avg_us=p99_us / 2, client_send_us=None, network_us=None,
        server_queue_us=None, server_compute_input_us=None, server_compute_infer_us=None,
        server_compute_output_us=None, client_recv_us=None, stable=True, mode="count_windows",
        requests_completed=1000, requests_source="server-stats", server_cpu_s=cpu_us * 1e-3,
        server_cpu_us_per_request=cpu_us, server_cpu_us_per_row=cpu_us / batch_size, client_cpu_s=0.1,
        other_load=0.0, wall_s=1.0, command=["perf_analyzer"],
    )


# (infer/s, p99 us, cpu us/request) per server and protocol, the same at every concurrency
FIGURES = {("ours", "grpc"): (3000.0, 2000.0, 150.0), ("ours", "http"): (6000.0, 1000.0, 100.0),
           ("grpcio", "grpc"): (1500.0, 8000.0, 600.0), ("peer", "grpc"): (1000.0, 20000.0, 3000.0),
           ("peer", "http"): (800.0, 25000.0, 3500.0)}


def test_grpc_transport_summary_and_tables(capsys):
    args, sections, protocols, _ = plan(["--only", "mlp32", "--concurrency", "1", "32"])
    bench = serving.Benchmark(args, sections, protocols)
    for (section, protocol), (tput, p99, cpu) in FIGURES.items():
        for c in (1, 32):
            if (section, c) == ("grpcio", 32):
                continue  # a failed measurement: no ratio, a "-" free table
            result = fake_result(section, "mlp32", protocol, c, tput, p99, cpu)
            bench.results.append({"section": section, "server": section, "variant": None,
                                  "grpc_transport": {"ours": "fast", "grpcio": "grpcio"}.get(section),
                                  **result.as_dict()})
    summary = bench.summarise()
    # backward compatible: the old keys are all there, with both protocols in ours_over_peer
    assert {"ours_over_peer", "batching", "rows_vs_ort"} <= set(summary)
    assert [(c["protocol"], c["concurrency"]) for c in summary["ours_over_peer"]] == [
        ("grpc", 1), ("grpc", 32), ("http", 1), ("http", 32)]
    (fg,) = summary["fast_over_grpcio"]
    assert (fg["protocol"], fg["concurrency"]) == ("grpc", 1)
    assert fg["throughput_ratio"] == 2.0 and fg["p99_ratio"] == 0.25 and fg["cpu_per_request_ratio"] == 0.25
    assert [c["concurrency"] for c in summary["fast_over_peer"]] == [1, 32]
    assert summary["fast_over_peer"][1]["throughput_ratio"] == 3.0
    assert summary["fast_over_peer"][1]["cpu_per_request_ratio"] == 0.05
    assert summary["fast_over_peer"] == [c for c in summary["ours_over_peer"] if c["protocol"] == "grpc"]
    (gp,) = summary["grpcio_over_peer"]
    assert gp["throughput_ratio"] == 1.5

    bench.print_tables(summary)
    out = capsys.readouterr().out
    assert "== our server (--grpc-transport fast), mlp32 ==" in out
    assert "== our server with --grpc-transport grpcio, mlp32 (gRPC only) ==" in out
    assert "== ours / peer" in out
    side = out.split("side by side ==\n")[1].split("\n\n")[0].splitlines()[2:]
    assert [line.split()[:3] for line in side] == [
        ["1", "fast", "3000.0"], ["1", "grpcio", "1500.0"], ["1", "peer", "1000.0"],
        ["32", "fast", "3000.0"], ["32", "peer", "1000.0"]]
    ratios = out.split("== gRPC ratios")[1].split("\n\n")[0].splitlines()[3:]
    assert [line.split() for line in ratios] == [
        ["fast", "/", "grpcio", "1", "2.00", "0.25", "0.25"],
        ["fast", "/", "peer", "1", "3.00", "0.10", "0.05"],
        ["fast", "/", "peer", "32", "3.00", "0.10", "0.05"]]


def test_no_grpc_transport_tables_without_grpcio(capsys):
    args, sections, protocols, _ = plan(["--only", "ours,grpc", "--concurrency", "1"])
    bench = serving.Benchmark(args, sections, protocols)
    bench.results.append({"section": "ours", "server": "ours", "variant": None, "grpc_transport": "fast",
                          **fake_result("ours", "mlp32", "grpc", 1, 3000.0, 2000.0, 150.0).as_dict()})
    summary = bench.summarise()
    assert summary["fast_over_grpcio"] == [] and summary["fast_over_peer"] == []
    bench.print_tables(summary)
    out = capsys.readouterr().out
    assert "our server (--grpc-transport fast)" in out and "side by side" not in out and "gRPC ratios" not in out


@pytest.fixture
def fake_driver(monkeypatch):
    """serving.main() with fake servers and perf_analyzer: records the commands and measurements."""
    from bench import perf

    calls = {"started": [], "measured": [], "fail": set()}

    def start(self):
        calls["started"].append((self.name, list(self.cmd)))
        if self.name in calls["fail"]:
            raise serving.ServerError(f"{self.name} exited with 3 before it was ready")
        self.startup_s, self.target.pid = 0.1, 12345
        return self

    def run_perf(target, model, protocol, concurrency, batch_size=1, **_):
        calls["measured"].append((target.name, model, protocol, concurrency))
        tput, p99, cpu = FIGURES.get((target.name, protocol), (100.0, 1000.0, 100.0))
        return fake_result(target.name, model, protocol, concurrency, tput, p99, cpu, batch_size)

    monkeypatch.setattr(serving.ManagedServer, "start", start)
    monkeypatch.setattr(serving.ManagedServer, "stop", lambda self: 0)
    monkeypatch.setattr(serving.Benchmark, "shapes", lambda self, server, model: None)
    monkeypatch.setattr(serving.bench_models, "build_repository", lambda *a, **k: {})
    monkeypatch.setattr(serving, "pytriton_installed", lambda: True)
    monkeypatch.setattr(perf, "check_perf_analyzer", lambda: "perf_analyzer")
    monkeypatch.setattr(perf, "find_perf_analyzer", lambda: "perf_analyzer")
    monkeypatch.setattr(perf, "idle_cpu_rate", lambda pid, seconds=1.0: 0.0)
    monkeypatch.setattr(perf, "run_perf", run_perf)
    return calls


def test_run_with_the_grpcio_section(fake_driver, tmp_path, capsys):
    rc = serving.main(["--quick", "--only", "mlp32", "--concurrency", "1", "32", "--results-dir", str(tmp_path)])
    assert rc == 0
    started = dict(fake_driver["started"])
    assert list(started) == ["ours", "grpcio", "peer"]  # the two transports one after the other
    assert started["ours"][-2:] == ["--grpc-transport", "fast"]
    assert started["grpcio"][-2:] == ["--grpc-transport", "grpcio"]
    assert [m for m in fake_driver["measured"] if m[0] == "grpcio"] == [
        ("grpcio", "mlp32", "grpc", 1), ("grpcio", "mlp32", "grpc", 32)]
    assert len(fake_driver["measured"]) == 10
    captured = capsys.readouterr()
    assert "[10/10" in captured.err and "[11/" not in captured.err
    assert "side by side" in captured.out and "fast / grpcio" in captured.out
    (path,) = tmp_path.glob("serving-*.json")
    doc = json.loads(path.read_text())
    assert doc["errors"] == []
    assert {r["section"] for r in doc["results"]} == {"ours", "grpcio", "peer"}
    assert {(r["section"], r["grpc_transport"]) for r in doc["results"]} == {
        ("ours", "fast"), ("grpcio", "grpcio"), ("peer", None)}
    assert [s["grpc_transport"] for s in doc["servers"]] == ["fast", "grpcio", None]
    assert doc["meta"]["grpc_transports"] == {"ours": "fast", "grpcio": "grpcio"}
    assert doc["meta"]["sections"] == ["ours", "grpcio", "peer"]
    summary = doc["summary"]
    assert [c["concurrency"] for c in summary["fast_over_grpcio"]] == [1, 32]
    assert summary["fast_over_grpcio"][0]["throughput_ratio"] == 2.0
    assert len(summary["ours_over_peer"]) == 4 and len(summary["fast_over_peer"]) == 2


def test_grpcio_server_that_fails_to_start_is_skipped(fake_driver, tmp_path, capsys):
    fake_driver["fail"].add("grpcio")
    rc = serving.main(["--quick", "--only", "ours,grpcio,grpc", "--concurrency", "1", "32",
                       "--results-dir", str(tmp_path)])
    assert rc == 1
    assert [m[0] for m in fake_driver["measured"]] == ["ours", "ours"]
    captured = capsys.readouterr()
    assert "[2/4" in captured.err and "skipped 2 measurement(s): our server on grpcio did not start" in captured.err
    assert "our server (--grpc-transport fast)" in captured.out and "side by side" not in captured.out
    assert "1 error(s)" in captured.out
    (path,) = tmp_path.glob("serving-*.json")
    doc = json.loads(path.read_text())
    (error,) = doc["errors"]
    assert error["section"] == "startup" and error["server"] == "grpcio" and "exited with 3" in error["error"]
    assert doc["summary"]["fast_over_grpcio"] == []
    assert {r["section"] for r in doc["results"]} == {"ours"}


def test_custom_server_cmd_without_the_placeholder(fake_driver, tmp_path, capsys):
    rc = serving.main(["--quick", "--only", "mlp32,grpc", "--concurrency", "1", "--results-dir", str(tmp_path),
                       "--server-cmd", "{python} srv.py --grpc-port {grpc_port}"])
    assert rc == 0
    assert [name for name, _ in fake_driver["started"]] == ["ours", "peer"]
    captured = capsys.readouterr()
    assert "grpcio section left out" in captured.err
    assert "== our server, mlp32 ==" in captured.out
    (path,) = tmp_path.glob("serving-*.json")
    doc = json.loads(path.read_text())
    assert doc["meta"]["notes"] and doc["meta"]["grpcio_server_cmd"] is None
    assert doc["servers"][0]["grpc_transport"] is None
