from __future__ import annotations

import json
import struct

import numpy as np

from bench.v2_payload import Settings, build_request, check_response, concrete_shape, decode_outputs

META = {
    "name": "m",
    "inputs": [
        {"name": "F", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "I", "datatype": "INT64", "shape": [-1, -1]},
        {"name": "S", "datatype": "BYTES", "shape": [-1, 2]},
        {"name": "B", "datatype": "BOOL", "shape": [2]},
    ],
    "outputs": [{"name": "OUT", "datatype": "FP32", "shape": [-1, 1]}],
}


def split_binary(body: bytes, headers: dict):
    length = int(headers["Inference-Header-Content-Length"])
    return json.loads(body[:length]), body[length:]


def test_settings_from_environment():
    s = Settings({"PARITY_MODEL": "x", "PARITY_BATCH": "4", "PARITY_BINARY": "1", "PARITY_HEADERS": "a: 1; b:2",
                  "PARITY_SHAPES": "F:2,3", "PARITY_MODEL_VERSION": "3"})
    assert s.model == "x" and s.batch == 4 and s.binary and s.binary_output
    assert s.headers == {"a": "1", "b": "2"} and s.shapes == {"F": [2, 3]}
    assert s.model_path == "/v2/models/x/versions/3"
    assert Settings({}).model_path == "/v2/models/mlp32" and not Settings({}).binary


def test_concrete_shape():
    assert concrete_shape([-1, 3], 1, 16) == [1, 3]
    assert concrete_shape([-1, -1, 5], 4, 8) == [4, 8, 5]
    assert concrete_shape([2, -1], 4, 8) == [2, 8]


def test_json_request():
    body, headers = build_request(META, Settings({"PARITY_VAR_DIM": "5"}), np.random.default_rng(0))
    assert headers == {"Content-Type": "application/json"}
    doc = json.loads(body)
    f, i, s, b = doc["inputs"]
    assert f["shape"] == [1, 3] and len(f["data"]) == 3 and f["datatype"] == "FP32"
    assert i["shape"] == [1, 5] and all(isinstance(v, int) for v in i["data"])
    assert s["shape"] == [1, 2] and all(isinstance(v, str) for v in s["data"])
    assert b["shape"] == [2] and all(isinstance(v, bool) for v in b["data"])
    assert doc["outputs"] == [{"name": "OUT"}]


def test_binary_request_layout():
    settings = Settings({"PARITY_BINARY": "1", "PARITY_BATCH": "2", "PARITY_VAR_DIM": "4"})
    body, headers = build_request(META, settings, np.random.default_rng(1))
    assert headers["Content-Type"] == "application/octet-stream"
    doc, blob = split_binary(body, headers)
    sizes = [t["parameters"]["binary_data_size"] for t in doc["inputs"]]
    assert sizes[0] == 2 * 3 * 4 and sizes[1] == 2 * 4 * 8 and sizes[3] == 2
    assert sum(sizes) == len(blob)
    assert all("data" not in t for t in doc["inputs"])
    # BYTES: four length-prefixed strings
    start = sizes[0] + sizes[1]
    strings, pos = 0, start
    while pos < start + sizes[2]:
        (n,) = struct.unpack_from("<I", blob, pos)
        pos += 4 + n
        strings += 1
    assert strings == 4 and pos == start + sizes[2]
    assert doc["outputs"] == [{"name": "OUT", "parameters": {"binary_data": True}}]


def test_binary_outputs_only():
    body, headers = build_request(META, Settings({"PARITY_BINARY_OUTPUT": "1"}), np.random.default_rng(2))
    doc, blob = split_binary(body, headers)
    assert blob == b"" and "data" in doc["inputs"][0]


def test_decode_and_check_responses():
    values = np.arange(4, dtype=np.float32).reshape(4, 1)
    header = json.dumps({"outputs": [{"name": "OUT", "datatype": "FP32", "shape": [4, 1],
                                      "parameters": {"binary_data_size": 16}}]}).encode()
    headers = {"Inference-Header-Content-Length": str(len(header))}
    body = header + values.tobytes()
    assert np.array_equal(decode_outputs(body, headers)["OUT"], values)
    assert check_response(body, headers, ["OUT"]) is None
    assert "missing" in check_response(body, headers, ["OTHER"])
    as_json = json.dumps({"outputs": [{"name": "OUT", "datatype": "FP32", "shape": [2], "data": [1.5, 2]}]}).encode()
    assert decode_outputs(as_json)["OUT"].tolist() == [1.5, 2.0]
    assert check_response(b'{"error": "boom"}', {}, ["OUT"]).startswith("server error")
    assert check_response(b"<html>", {}, ["OUT"]).startswith("response is not JSON")
