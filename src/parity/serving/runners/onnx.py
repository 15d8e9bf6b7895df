"""ONNX Runtime runner: CPU by default; CUDA and TensorRT execution providers where installed.

On CUDA, inputs are bound with IO binding (copied once to the device) and outputs are allocated
on the device by ONNX Runtime and copied back in one step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from parity.config import ModelConfig, TensorSpec
from parity.errors import ConfigError, InternalError, ModelLoadError
from parity.serving.runners.base import Runner

# ONNX tensor element types, as ONNX Runtime names them, to OIP datatypes.
ORT_TYPES = {
    "tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(float16)": "FP16",
    "tensor(bfloat16)": "BF16", "tensor(int8)": "INT8", "tensor(int16)": "INT16",
    "tensor(int32)": "INT32", "tensor(int64)": "INT64", "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16", "tensor(uint32)": "UINT32", "tensor(uint64)": "UINT64",
    "tensor(bool)": "BOOL", "tensor(string)": "BYTES",
}  # fmt: skip


def _providers(config: ModelConfig) -> list:
    import onnxruntime as ort

    available = ort.get_available_providers()
    rt = config.runtime
    if rt.execution_providers:
        wanted = list(rt.execution_providers)
    elif rt.device.startswith("cuda"):
        wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    else:
        wanted = ["CPUExecutionProvider"]
    missing = [p for p in wanted if p not in available]
    if missing:
        raise ModelLoadError(
            f"model '{config.name}': execution provider(s) {missing} are not available in this "
            f"onnxruntime (available: {available}); install onnxruntime-gpu (pip install 'parity[gpu]') "
            "or set runtime.device: cpu"
        )
    device_id = int(rt.device.split(":")[1]) if ":" in rt.device else 0
    out: list = []
    for p in wanted:
        if p in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
            out.append((p, {"device_id": device_id}))
        else:
            out.append(p)
    return out


def _session_options(config: ModelConfig):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if config.runtime.intra_op_threads:
        so.intra_op_num_threads = config.runtime.intra_op_threads
    if config.runtime.inter_op_threads:
        so.inter_op_num_threads = config.runtime.inter_op_threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return so


class OnnxRunner(Runner):
    def load(self) -> None:
        import onnxruntime as ort

        try:
            self.session = ort.InferenceSession(
                str(self.path), sess_options=_session_options(self.config), providers=_providers(self.config)
            )
        except ModelLoadError:
            raise
        except Exception as e:  # onnxruntime raises its own exception types
            raise ModelLoadError(f"model '{self.config.name}': {self.path} is not a loadable ONNX model: {e}") from None
        self._check_io()
        self.on_cuda = self.session.get_providers()[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
        # The inputs were validated against the model's signature at load and per request by the
        # core, so the batch goes straight to the C++ session when this onnxruntime exposes it
        # (InferenceSession.run re-checks every input in Python first: a fifth of a small model's time).
        inner = getattr(self.session, "_sess", None)
        self._run_fast = inner.run if inner is not None and hasattr(inner, "run") else None
        self._has_bytes = any(spec.datatype == "BYTES" for spec in self.config.inputs)
        self._device_id = int(self.device.split(":")[1]) if ":" in self.device else 0

    def _check_io(self) -> None:
        declared = {i.name: i for i in self.session.get_inputs()}
        for spec in self.config.inputs:
            if spec.name not in declared:
                raise ModelLoadError(
                    f"model '{self.config.name}': config input '{spec.name}' is not an input of {self.path.name} "
                    f"(its inputs: {sorted(declared)})"
                )
            actual = ORT_TYPES.get(declared[spec.name].type)
            if actual != spec.datatype:
                raise ModelLoadError(
                    f"model '{self.config.name}': input '{spec.name}' is {actual} in the model file but "
                    f"{spec.datatype} in config.yaml"
                )
        outputs = {o.name for o in self.session.get_outputs()}
        for spec in self.config.outputs:
            if spec.name not in outputs:
                raise ModelLoadError(
                    f"model '{self.config.name}': config output '{spec.name}' is not an output of {self.path.name} "
                    f"(its outputs: {sorted(outputs)})"
                )

    def run(self, inputs: list[np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        if self._has_bytes:
            inputs = [
                np.vectorize(lambda b: b.decode("utf-8", "replace"), otypes=[object])(a) if a.dtype == object else a
                for a in inputs
            ]  # BYTES -> ONNX string tensors
        feed = dict(zip(self.input_names, inputs))
        try:
            if self.on_cuda:
                return self._run_bound(feed, outputs)
            if self._run_fast is not None:
                return self._run_fast(outputs, feed, None)
            return self.session.run(outputs, feed)
        except Exception as e:
            raise InternalError(f"model '{self.config.name}': ONNX Runtime failed: {e}") from None

    def _run_bound(self, feed: dict, outputs: list[str]) -> list[np.ndarray]:
        binding = self.session.io_binding()
        for name, arr in feed.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(arr))
        for name in outputs:
            binding.bind_output(name, "cuda", self._device_id)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    def close(self) -> None:
        self.session = None


def read_onnx_signature(path: Path, source: str) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...], bool]:
    """Inputs and outputs declared by an ONNX file, for configs left out (Triton's auto-complete).

    Returns (inputs, outputs, batching): batching is True when every input and output has a
    dynamic first dimension, which is then left out of the shapes."""
    import onnxruntime as ort

    try:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        sess = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ConfigError(source, "", f"no config.yaml, and {path} cannot be read to complete one: {e}") from None

    def dims(shape) -> list[int]:
        return [d if isinstance(d, int) and d > 0 else -1 for d in shape]

    ios = list(sess.get_inputs()) + list(sess.get_outputs())
    batching = all(len(t.shape) > 0 and dims(t.shape)[0] == -1 for t in ios)

    def spec(t) -> TensorSpec:
        datatype = ORT_TYPES.get(t.type)
        if datatype is None:
            raise ConfigError(source, "", f"tensor '{t.name}' has type {t.type}, which has no OIP datatype; write a config.yaml")
        d = dims(t.shape)
        return TensorSpec(t.name, datatype, tuple(d[1:] if batching else d))

    return (
        tuple(spec(t) for t in sess.get_inputs()),
        tuple(spec(t) for t in sess.get_outputs()),
        batching,
    )
