"""Export a trained model to ONNX and check that ONNX Runtime reproduces PyTorch.

    path = export_onnx(scoring_model, n_features, "out/model.onnx", opset=17, input_name="x", output_name="score")
    check = verify_onnx(path, scoring_model, holdout_x, atol=1e-5, rtol=1e-4)   # raises ExportMismatch

The file is one self-contained ONNX model (no external data, as the registry requires) with a
symbolic batch dimension: input `x` FP32 `[batch, N]`, output `score` FP32 `[batch, 1]`; the
server's feature-joined inference fills exactly such an input from the feature service.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from parity.errors import ParityError

BATCH_DIM = "batch"


class ExportMismatch(ParityError):
    """ONNX Runtime's outputs differ from PyTorch's by more than the stated tolerance."""


@dataclass(frozen=True)
class ExportCheck:
    rows: int
    max_abs_diff: float
    max_rel_diff: float
    atol: float
    rtol: float

    def to_dict(self) -> dict:
        return dict(rows=self.rows, max_abs_diff=self.max_abs_diff, max_rel_diff=self.max_rel_diff, atol=self.atol, rtol=self.rtol)


@contextlib.contextmanager
def _quiet():
    """The exporter's warnings and log lines are not the user's business (and pytest turns warnings into errors)."""
    names = ("torch.onnx", "torch.export", "torch._dynamo", "torch.jit")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    sink = io.StringIO()
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_onnx(model, n_features: int, path: str | Path, *, opset: int = 17, input_name: str = "x", output_name: str = "score") -> Path:
    """Write `model` (eval mode is set) as ONNX to `path` with a dynamic batch dimension."""
    import onnx
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    example = torch.zeros(2, n_features, dtype=torch.float32)
    with _quiet(), torch.no_grad():
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,  # the TorchScript-based exporter: no extra package, deterministic bytes
            opset_version=opset,
            input_names=[input_name],
            output_names=[output_name],
            dynamic_axes={input_name: {0: BATCH_DIM}, output_name: {0: BATCH_DIM}},
            do_constant_folding=True,
        )
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    for value in list(proto.graph.input) + list(proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].dim_param != BATCH_DIM:
            dims[0].dim_param = BATCH_DIM
            onnx.save(proto, str(path))
    return path


def onnx_session(path: str | Path):
    """A single-threaded ONNX Runtime CPU session (deterministic, and polite on a shared machine)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def onnx_predict(path_or_session, x: np.ndarray, batch: int = 65536) -> np.ndarray:
    """The ONNX model's output for every row of `x` (float32 `[rows, N]`), as float32 `[rows, 1]`."""
    sess = onnx_session(path_or_session) if isinstance(path_or_session, (str, Path)) else path_or_session
    name = sess.get_inputs()[0].name
    x = np.ascontiguousarray(x, dtype=np.float32)
    if len(x) == 0:
        return np.zeros((0, 1), dtype=np.float32)
    parts = [sess.run(None, {name: x[i : i + batch]})[0] for i in range(0, len(x), batch)]
    return np.concatenate(parts).astype(np.float32, copy=False)


def torch_predict(model, x: np.ndarray, batch: int = 65536) -> np.ndarray:
    import torch

    model.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            outs.append(model(torch.from_numpy(np.ascontiguousarray(x[i : i + batch], dtype=np.float32))).numpy())
    return np.concatenate(outs).astype(np.float32, copy=False) if outs else np.zeros((0, 1), dtype=np.float32)


def compare_outputs(ort_out: np.ndarray, torch_out: np.ndarray, *, atol: float, rtol: float) -> ExportCheck:
    """Check |ort - torch| <= atol + rtol * |torch| elementwise (NaN must match NaN); ExportMismatch if not."""
    a = np.asarray(ort_out, dtype=np.float64)
    b = np.asarray(torch_out, dtype=np.float64)
    if a.shape != b.shape:
        raise ExportMismatch(f"ONNX Runtime returned shape {list(a.shape)}, PyTorch {list(b.shape)}")
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    if (nan_a != nan_b).any():
        i = int(np.flatnonzero((nan_a != nan_b).reshape(-1))[0])
        raise ExportMismatch(f"ONNX Runtime and PyTorch disagree on NaN at row {i}: {a.reshape(-1)[i]} vs {b.reshape(-1)[i]}")
    ok = ~nan_a
    with np.errstate(all="ignore"):
        diff = np.where(ok, np.abs(a - b), 0.0)
        rel = np.where(ok & (b != 0), diff / np.abs(b), 0.0)
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = float(rel.max()) if rel.size else 0.0
    bad = diff > atol + rtol * np.abs(np.where(ok, b, 0.0))
    if bad.any():
        i = int(np.flatnonzero(bad.reshape(-1))[0])
        raise ExportMismatch(
            f"ONNX Runtime does not reproduce PyTorch within atol={atol:g} + rtol={rtol:g}*|torch|: "
            f"{int(bad.sum())} of {bad.size} outputs differ (max |diff| {max_abs:.3g}; first at row {i}: "
            f"onnx {a.reshape(-1)[i]!r}, torch {b.reshape(-1)[i]!r}); the exported graph is not the trained model"
        )
    return ExportCheck(rows=int(a.shape[0]) if a.ndim else 0, max_abs_diff=max_abs, max_rel_diff=max_rel, atol=atol, rtol=rtol)


def verify_onnx(path: str | Path, model, x: np.ndarray, *, atol: float, rtol: float) -> tuple[ExportCheck, np.ndarray, np.ndarray]:
    """Run the ONNX file and the PyTorch model on `x` and compare; returns (check, onnx outputs, torch outputs)."""
    ort_out = onnx_predict(path, x)
    torch_out = torch_predict(model, x)
    return compare_outputs(ort_out, torch_out, atol=atol, rtol=rtol), ort_out, torch_out


def signature(n_features: int, input_name: str = "x", output_name: str = "score") -> dict:
    return {
        "inputs": [{"name": input_name, "datatype": "FP32", "shape": [-1, n_features]}],
        "outputs": [{"name": output_name, "datatype": "FP32", "shape": [-1, 1]}],
    }


__all__ = ["ExportCheck", "ExportMismatch", "compare_outputs", "export_onnx", "onnx_predict", "onnx_session", "signature", "torch_predict", "verify_onnx"]
