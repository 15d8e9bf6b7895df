"""Model and server configs: valid ones parse, broken ones are refused naming file and field."""

import pytest

from parity.config import load_server_config, parse_model_config, valid_name
from parity.errors import ConfigError

GOOD = {
    "platform": "onnxruntime_onnx",
    "max_batch_size": 32,
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [4, -1]}],
    "outputs": [{"name": "y", "datatype": "TYPE_FP32", "shape": [1]}],
    "dynamic_batching": {"max_queue_delay_microseconds": 100, "preferred_batch_size": [8, 16], "max_queue_size": 10},
    "version_policy": {"all": {}},
    "runtime": {"intra_op_threads": 2, "execution": "thread"},
}


def test_a_full_config_parses():
    cfg = parse_model_config(GOOD, "m/config.yaml", model_name="m")
    assert cfg.max_batch_size == 32 and cfg.batching
    assert cfg.inputs[0].shape == (4, -1)
    assert cfg.outputs[0].datatype == "FP32"  # Triton's TYPE_ prefix accepted
    assert cfg.dynamic_batching.preferred_batch_size == (8, 16)
    assert cfg.version_policy.select([3, 1, 2]) == [1, 2, 3]
    assert cfg.warmup_sizes() == (1, 8, 16, 32)
    assert cfg.model_filename == "model.onnx"


@pytest.mark.parametrize(
    "change, field",
    [
        ({"inputs": None}, "inputs"),
        ({"inputs": [{"name": "x", "datatype": "FLOAT", "shape": [1]}]}, "inputs[0].datatype"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [0]}]}, "inputs[0].shape"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": "4"}]}, "inputs[0].shape"),
        ({"inputs": [{"name": "../x", "datatype": "FP32", "shape": [1]}]}, "inputs[0].name"),
        ({"max_batch_size": -1}, "max_batch_size"),
        ({"max_batch_size": "8"}, "max_batch_size"),
        ({"platform": "tensorflow"}, "platform"),
        ({"dynamic_batching": {"preferred_batch_size": [64]}}, "dynamic_batching.preferred_batch_size"),
        ({"dynamic_batching": {"max_queue_delay": 5}}, "dynamic_batching.max_queue_delay"),
        ({"runtime": {"device": "tpu"}}, "runtime.device"),
        ({"version_policy": {"latest": {}, "all": {}}}, "version_policy"),
        ({"name": "other"}, "name"),
        ({"max_batch_sise": 3}, "max_batch_sise"),
    ],
)
def test_broken_configs_name_the_file_and_the_field(change, field):
    data = {**GOOD, **change}
    with pytest.raises(ConfigError) as e:
        parse_model_config(data, "repo/m/config.yaml", model_name="m")
    assert e.value.source == "repo/m/config.yaml"
    assert e.value.field == field
    assert str(e.value).startswith(f"repo/m/config.yaml: {field}: ")


def test_dynamic_batching_needs_batching():
    with pytest.raises(ConfigError, match="needs max_batch_size > 0"):
        parse_model_config({**GOOD, "max_batch_size": 0}, "c.yaml", model_name="m")


def test_names_are_validated():
    assert valid_name("mlp-32.v2")
    for bad in ("", "../etc", "a/b", ".hidden", "a..b", "x" * 200):
        assert not valid_name(bad)


def test_server_config_merges_file_and_flags(tmp_path):
    f = tmp_path / "server.yaml"
    f.write_text("model_repository: /models\nhttp_port: 9000\nworkers: 2\n")
    cfg = load_server_config(f, {"http_port": 9100, "grpc_port": None})
    assert cfg.http_port == 9100 and cfg.workers == 2 and cfg.grpc_port == 8001
    f.write_text("model_repository: /models\nhttp_prot: 9000\n")
    with pytest.raises(ConfigError, match="http_prot: unknown field"):
        load_server_config(f, {})
    with pytest.raises(ConfigError, match="model_repository: is required"):
        load_server_config(None, {})


def test_the_shipped_example_configs_are_valid():
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[2] / "configs"
    data = yaml.safe_load((root / "model-config.example.yaml").read_text())
    cfg = parse_model_config(data, "model-config.example.yaml", model_name="example")
    assert cfg.batching and cfg.dynamic_batching is not None
    server = load_server_config(root / "server.yaml", {})
    assert server.http_port == 8000 and server.grpc_port == 8001
