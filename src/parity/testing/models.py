"""Small, real ONNX and TorchScript models for tests, demos and benchmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml


def mlp_weights(sizes: list[int], seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        ((rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32), (rng.standard_normal(b) * 0.1).astype(np.float32))
        for a, b in zip(sizes[:-1], sizes[1:])
    ]


def mlp_reference(x: np.ndarray, weights) -> np.ndarray:
    """The MLP in numpy (ReLU between layers), to check served answers against."""
    h = x.astype(np.float32)
    for i, (w, b) in enumerate(weights):
        h = h @ w + b
        if i < len(weights) - 1:
            h = np.maximum(h, 0)
    return h


def write_mlp_onnx(path: Path, sizes: list[int], seed: int = 0, *, input_name="INPUT0", output_name="OUTPUT0", batch_dim="batch") -> list:
    """An MLP as an ONNX graph (MatMul, Add, Relu), built directly with onnx.helper."""
    from onnx import TensorProto, helper, numpy_helper

    weights = mlp_weights(sizes, seed)
    nodes, inits = [], []
    cur = input_name
    for i, (w, b) in enumerate(weights):
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("MatMul", [cur, f"w{i}"], [f"mm{i}"]))
        last = i == len(weights) - 1
        nodes.append(helper.make_node("Add", [f"mm{i}", f"b{i}"], [output_name if last else f"a{i}"]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"a{i}"], [f"r{i}"]))
            cur = f"r{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch_dim, sizes[0]])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch_dim, sizes[-1]])],
        inits,
    )
    save_onnx_graph(graph, path)
    return weights


def save_onnx_graph(graph, path: Path) -> None:
    """Wrap an onnx.helper graph in a model (opset 17), check it and save it."""
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def write_identity_onnx(path: Path, elem_type: int, dims: list) -> None:
    """OUT = Identity(IN) for an ONNX element type; string dims are symbolic (variable)."""
    from onnx import helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["IN"], ["OUT"])],
        "identity",
        [helper.make_tensor_value_info("IN", elem_type, dims)],
        [helper.make_tensor_value_info("OUT", elem_type, dims)],
    )
    save_onnx_graph(graph, path)


def write_add_onnx(path: Path, width: int) -> None:
    """SUM = A + B: two FP32 inputs of shape [batch, width]."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["A", "B"], ["SUM"])],
        "add",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", width]) for n in ("A", "B")],
        [helper.make_tensor_value_info("SUM", TensorProto.FLOAT, ["batch", width])],
    )
    save_onnx_graph(graph, path)


def write_add_model(root: Path, width: int = 4, max_batch_size: int = 8, name: str = "add") -> None:
    """A two-input model (SUM = A + B, FP32 [batch, width]) with its config, dynamic batching on."""
    write_add_onnx(root / name / "1" / "model.onnx", width)
    write_config(
        root / name,
        {
            "platform": "onnxruntime_onnx",
            "max_batch_size": max_batch_size,
            "inputs": [{"name": n, "datatype": "FP32", "shape": [width]} for n in ("A", "B")],
            "outputs": [{"name": "SUM", "datatype": "FP32", "shape": [width]}],
            "dynamic_batching": {},
        },
    )


def write_monitored_mlp(models: Path, sizes: list[int], *, name: str = "mlp", seed: int = 2, max_batch_size: int = 64) -> list:
    """An ONNX MLP in `models/<name>/1` with a reference profile (profile.json) of its inputs
    (features f0..fN-1, drawn from a standard normal) and its output: a monitored version.
    Returns the weights (for `mlp_reference`)."""
    import json

    from parity.monitoring.profile import build_profile

    weights = write_mlp_onnx(models / name / "1" / "model.onnx", sizes, seed=seed)
    write_config(models / name, mlp_config(sizes, max_batch_size=max_batch_size))
    train = np.random.default_rng(0).standard_normal((5000, sizes[0])).astype(np.float32)
    profile = build_profile({f"f{i}": train[:, i] for i in range(sizes[0])}, {"OUTPUT0": mlp_reference(train, weights)[:, 0]})
    (models / name / "1" / "profile.json").write_text(json.dumps(profile))
    return weights


def write_config(model_dir: Path, config: dict) -> None:
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def mlp_config(sizes: list[int], *, max_batch_size: int = 64, batching: bool = True, **dyn) -> dict:
    cfg = {
        "platform": "onnxruntime_onnx",
        "max_batch_size": max_batch_size,
        "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [sizes[0]]}],
        "outputs": [{"name": "OUTPUT0", "datatype": "FP32", "shape": [sizes[-1]]}],
        "runtime": {"intra_op_threads": 1, "inter_op_threads": 1},
    }
    if batching:
        cfg["dynamic_batching"] = dict(dyn)
    return cfg


def torch_mlp(sizes: list[int], seed: int = 0):
    """The MLP as a torch.nn.Module with the weights of `mlp_weights(sizes, seed)`."""
    import torch

    weights = mlp_weights(sizes, seed)
    layers: list = []
    for i, (w, b) in enumerate(weights):
        lin = torch.nn.Linear(w.shape[0], w.shape[1])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w.T.copy()))
            lin.bias.copy_(torch.from_numpy(b))
        layers.append(lin)
        if i < len(weights) - 1:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers).eval(), weights


def write_torchscript_mlp(path: Path, sizes: list[int], seed: int = 0) -> list:
    """The MLP as TorchScript (same weights as `write_mlp_onnx` for the same seed)."""
    import warnings

    import torch

    module, weights = torch_mlp(sizes, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # TorchScript is deprecated for authoring, still a serving format
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(module), str(path))
    return weights


def write_exported_mlp(path: Path, sizes: list[int], seed: int = 0) -> list:
    """The MLP as a torch.export program (model.pt2) with a dynamic batch dimension."""
    import torch

    module, weights = torch_mlp(sizes, seed)
    batch = torch.export.Dim("batch", min=1, max=1024)
    example = (torch.zeros(2, sizes[0]),)
    program = torch.export.export(module, example, dynamic_shapes=({0: batch},))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(path))
    return weights
