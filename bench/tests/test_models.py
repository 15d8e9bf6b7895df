from __future__ import annotations

import hashlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml

from bench.models import MODELS, ModelConfig, build_repository, render_config, verify_onnx


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_config_with_batching_matches_the_server_format():
    text = render_config(MODELS["mlp32"], ModelConfig())
    assert yaml.safe_load(text) == {
        "max_batch_size": 64,
        "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [32]}],
        "outputs": [{"name": "OUTPUT0", "datatype": "FP32", "shape": [1]}],
        "dynamic_batching": {"max_queue_delay_microseconds": 0, "preferred_batch_size": [], "max_queue_size": 0},
        "runtime": {"intra_op_threads": 1, "inter_op_threads": 1},
    }


def test_config_without_batching_omits_the_key():
    config = yaml.safe_load(render_config(MODELS["mlp1024"], ModelConfig(batching=False, intra_op_threads=2)))
    assert "dynamic_batching" not in config
    assert config["max_batch_size"] == 64
    assert config["inputs"][0]["shape"] == [256]
    assert config["runtime"] == {"intra_op_threads": 2, "inter_op_threads": 1}


def test_repository_layout_and_onnx_contract(tmp_path):
    built = build_repository(tmp_path, models=["mlp32"])
    path = built["mlp32"]
    assert path == tmp_path / "mlp32" / "1" / "model.onnx"
    assert (tmp_path / "mlp32" / "config.yaml").exists()
    proto = onnx.load(str(path))
    assert {o.domain: o.version for o in proto.opset_import}.get("", None) == 17
    assert [i.name for i in proto.graph.input] == ["INPUT0"]
    assert [o.name for o in proto.graph.output] == ["OUTPUT0"]
    for value in (proto.graph.input[0], proto.graph.output[0]):
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for rows in (1, 7, 64):
        out = session.run(None, {"INPUT0": np.zeros((rows, 32), np.float32)})[0]
        assert out.shape == (rows, 1) and out.dtype == np.float32
    assert verify_onnx(MODELS["mlp32"], path) < 1e-4


def test_export_is_deterministic_and_seeded(tmp_path):
    a = build_repository(tmp_path / "a", models=["mlp32"])["mlp32"]
    b = build_repository(tmp_path / "b", models=["mlp32"])["mlp32"]
    c = build_repository(tmp_path / "c", models=["mlp32"], seed=1)["mlp32"]
    assert digest(a) == digest(b)
    assert digest(a) != digest(c)


def test_mlp1024_shape_and_cache(tmp_path):
    cache = tmp_path / "cache"
    first = build_repository(tmp_path / "on", models=["mlp1024"], onnx_cache=cache)["mlp1024"]
    assert (cache / "mlp1024-seed0.onnx").exists()
    second = build_repository(tmp_path / "off", batching=False, models=["mlp1024"], onnx_cache=cache)["mlp1024"]
    assert digest(first) == digest(second)
    proto = onnx.load(str(first))
    assert proto.graph.input[0].type.tensor_type.shape.dim[1].dim_value == 256
    assert [n.op_type for n in proto.graph.node].count("Gemm") == 3


def test_unknown_model_is_rejected(tmp_path):
    with pytest.raises(ValueError):
        build_repository(tmp_path, models=["nope"])


def test_cli(tmp_path, capsys):
    from bench.models import main

    assert main([str(tmp_path), "--models", "mlp32", "--no-batching", "--max-batch-size", "8"]) == 0
    config = yaml.safe_load((tmp_path / "mlp32" / "config.yaml").read_text())
    assert config["max_batch_size"] == 8 and "dynamic_batching" not in config
    assert "mlp32" in capsys.readouterr().out
