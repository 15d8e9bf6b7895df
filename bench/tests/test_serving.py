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
    assert serving.parse_selection(["mlp32", "grpc"], True, False, False) == (["ours"], ["grpc"])
    assert serving.parse_selection([], False, True, False)[0] == ["peer"]
    assert serving.parse_selection([], False, False, True)[0] == ["ours", "peer"]
    with pytest.raises(SystemExit):
        serving.parse_selection(["bogus"], False, False, False)


def test_format_cmd_and_cpu_list():
    cmd = serving.format_cmd(serving.DEFAULT_SERVER_CMD, python="/py", repo="/r x", http_port=1, grpc_port=2, root="/")
    assert cmd == ["/py", "-m", "parity", "serve", "--model-repository", "/r x", "--http-port", "1", "--grpc-port", "2"]
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
