"""Benchmark models and Triton-style model repositories.

Builds two small MLPs with a fixed seed, exports them to ONNX (opset 17, dynamic
first dimension "batch", input INPUT0 / output OUTPUT0, both FP32) and lays them
out as a model repository that both our server and Triton understand::

    DIR/<model>/1/model.onnx
    DIR/<model>/config.yaml

Usage as a script::

    python bench/models.py DIR                    # both models, dynamic batching on
    python bench/models.py DIR --no-batching      # config.yaml without dynamic_batching
    python bench/models.py DIR --models mlp32 --max-batch-size 32

Usage as a library::

    from bench.models import build_repository
    paths = build_repository("/tmp/repo", batching=False)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import io
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence

INPUT_NAME = "INPUT0"
OUTPUT_NAME = "OUTPUT0"
BATCH_DIM = "batch"
OPSET = 17
DEFAULT_SEED = 0


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """An MLP: in_features -> [Linear hidden -> ReLU] * layers -> Linear out_features."""

    name: str
    in_features: int
    hidden: int
    hidden_layers: int = 2
    out_features: int = 1

    @property
    def input_shape(self) -> list:
        """Shape of one row (the batch dimension excluded)."""
        return [self.in_features]

    @property
    def output_shape(self) -> list:
        return [self.out_features]

    @property
    def flops_per_row(self) -> int:
        """Multiply-adds x 2 for one row (for rough rows/s sanity checks)."""
        dims = [self.in_features] + [self.hidden] * self.hidden_layers + [self.out_features]
        return sum(2 * a * b for a, b in zip(dims, dims[1:]))


MODELS: Dict[str, ModelSpec] = {
    "mlp32": ModelSpec("mlp32", in_features=32, hidden=256),
    "mlp1024": ModelSpec("mlp1024", in_features=256, hidden=1024),
}


@dataclasses.dataclass
class ModelConfig:
    """The fields of our server's config.yaml (see render_config)."""

    max_batch_size: int = 64
    batching: bool = True
    max_queue_delay_microseconds: int = 0
    preferred_batch_size: Sequence[int] = ()
    max_queue_size: int = 0
    intra_op_threads: int = 1
    inter_op_threads: int = 1


# --------------------------------------------------------------------------- torch side


def build_torch_model(spec: ModelSpec, seed: int = DEFAULT_SEED):
    """Returns the torch.nn.Sequential for ``spec`` with weights drawn from ``seed``.

    The global torch RNG state of the caller is left untouched.
    """
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers = []
        width = spec.in_features
        for _ in range(spec.hidden_layers):
            layers += [torch.nn.Linear(width, spec.hidden), torch.nn.ReLU()]
            width = spec.hidden
        layers.append(torch.nn.Linear(width, spec.out_features))
        model = torch.nn.Sequential(*layers)
    model.eval()
    return model


def _dynamo_exporter_available() -> bool:
    """The torch.export-based ONNX exporter needs the onnxscript package."""
    return importlib.util.find_spec("onnxscript") is not None


def _name_batch_dims(path: Path) -> None:
    """Makes sure the first dimension of INPUT0 and OUTPUT0 is the symbolic 'batch'.

    The legacy exporter already does this through dynamic_axes; the dynamo exporter
    names dimensions after its own symbols ("s0", ...), so both are normalised here.
    """
    import onnx

    proto = onnx.load(str(path))
    changed = False
    for value in list(proto.graph.input) + list(proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].dim_param != BATCH_DIM:
            dims[0].dim_param = BATCH_DIM
            changed = True
    if changed:
        onnx.save(proto, str(path))


def export_onnx(spec: ModelSpec, path: os.PathLike, seed: int = DEFAULT_SEED, exporter: str = "auto") -> Path:
    """Exports the model for ``spec`` to ``path`` (a single self-contained .onnx file).

    exporter: "legacy" (TorchScript-based, ``dynamo=False``), "dynamo" (the torch.export
    based exporter; needs the onnxscript package), or "auto": legacy while this torch still
    has it (deterministic bytes, no extra package, ~3x faster), else dynamo. Both produce the
    same function. All exporter chatter (warnings, log lines, prints) is swallowed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if exporter not in ("auto", "legacy", "dynamo"):
        raise ValueError(f"unknown exporter {exporter!r}")
    model = build_torch_model(spec, seed)
    if exporter in ("auto", "legacy"):
        try:
            _export_legacy(model, spec, path)
        except Exception:
            if exporter == "legacy" or not _dynamo_exporter_available():
                raise
            _export_dynamo(model, spec, path)
    else:
        if not _dynamo_exporter_available():
            raise RuntimeError("the dynamo ONNX exporter needs onnxscript (pip install onnxscript)")
        _export_dynamo(model, spec, path)
    _name_batch_dims(path)
    return path


@contextlib.contextmanager
def _quiet():
    """Silences warnings, prints and torch's exporter log lines for the duration."""
    import logging

    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    sink = io.StringIO()
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _export_legacy(model, spec: ModelSpec, path: Path) -> None:
    import torch

    example = torch.zeros(2, spec.in_features, dtype=torch.float32)
    with _quiet():
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: BATCH_DIM}, OUTPUT_NAME: {0: BATCH_DIM}},
            do_constant_folding=True,
        )


def _export_dynamo(model, spec: ModelSpec, path: Path) -> None:
    import torch

    example = torch.zeros(2, spec.in_features, dtype=torch.float32)
    batch = torch.export.Dim(BATCH_DIM, min=1, max=1 << 20)
    with _quiet():
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
            external_data=False,
            report=False,
            verbose=False,
        )
        program.save(str(path), external_data=False)


def verify_onnx(spec: ModelSpec, path: os.PathLike, seed: int = DEFAULT_SEED, rows: int = 5) -> float:
    """Checks the exported file: opset, names, dtypes, dynamic batch, and numerics vs torch.

    Returns the max absolute difference between ONNX Runtime and torch on random rows.
    """
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    opsets = {o.domain: o.version for o in proto.opset_import}
    if opsets.get("", opsets.get("ai.onnx")) != OPSET:
        raise AssertionError(f"{path}: opset {opsets} != {OPSET}")
    (inp,) = proto.graph.input
    (out,) = proto.graph.output
    for value, name in ((inp, INPUT_NAME), (out, OUTPUT_NAME)):
        if value.name != name:
            raise AssertionError(f"{path}: tensor {value.name!r}, expected {name!r}")
        if value.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise AssertionError(f"{path}: {name} is not FP32")
        if value.type.tensor_type.shape.dim[0].dim_param != BATCH_DIM:
            raise AssertionError(f"{path}: first dimension of {name} is not '{BATCH_DIM}'")

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(seed + 1).standard_normal((rows, spec.in_features), dtype=np.float32)
    got = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    with torch.no_grad():
        want = build_torch_model(spec, seed)(torch.from_numpy(x)).numpy()
    if got.shape != (rows, spec.out_features):
        raise AssertionError(f"{path}: output shape {got.shape}")
    diff = float(np.max(np.abs(got - want)))
    if diff > 1e-4:
        raise AssertionError(f"{path}: ONNX Runtime and torch differ by {diff}")
    return diff


# --------------------------------------------------------------------------- repository


def _flow_list(values: Iterable) -> str:
    return "[" + ", ".join(str(int(v)) for v in values) + "]"


def render_config(spec: ModelSpec, config: ModelConfig) -> str:
    """Renders our server's config.yaml for ``spec``.

    Without batching the ``dynamic_batching`` key is omitted altogether (that is what
    switches the batcher off); max_batch_size stays, so clients may still send batches.
    """
    lines = [
        f"max_batch_size: {int(config.max_batch_size)}",
        "inputs:",
        f"  - {{name: {INPUT_NAME}, datatype: FP32, shape: {_flow_list(spec.input_shape)}}}",
        "outputs:",
        f"  - {{name: {OUTPUT_NAME}, datatype: FP32, shape: {_flow_list(spec.output_shape)}}}",
    ]
    if config.batching:
        lines += [
            "dynamic_batching:",
            f"  max_queue_delay_microseconds: {int(config.max_queue_delay_microseconds)}",
            f"  preferred_batch_size: {_flow_list(config.preferred_batch_size)}",
            f"  max_queue_size: {int(config.max_queue_size)}",
        ]
    lines += [
        "runtime:",
        f"  intra_op_threads: {int(config.intra_op_threads)}",
        f"  inter_op_threads: {int(config.inter_op_threads)}",
    ]
    return "\n".join(lines) + "\n"


def build_repository(
    dir: os.PathLike,
    batching: bool = True,
    models: Optional[Sequence[str]] = None,
    *,
    max_batch_size: int = 64,
    max_queue_delay_microseconds: int = 0,
    preferred_batch_size: Sequence[int] = (),
    max_queue_size: int = 0,
    intra_op_threads: int = 1,
    inter_op_threads: int = 1,
    seed: int = DEFAULT_SEED,
    exporter: str = "auto",
    verify: bool = True,
    onnx_cache: Optional[os.PathLike] = None,
) -> Dict[str, Path]:
    """Builds a model repository in ``dir`` and returns {model name: path of its model.onnx}.

    models: names from MODELS (default: all). ``onnx_cache`` is an optional directory of
    already-exported files (``<cache>/<model>-seed<seed>.onnx``) that are copied instead of
    exporting again, and filled when missing; handy when building several repositories.
    """
    root = Path(dir)
    root.mkdir(parents=True, exist_ok=True)
    names = list(models) if models else list(MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; known: {sorted(MODELS)}")
    config = ModelConfig(
        max_batch_size=max_batch_size,
        batching=batching,
        max_queue_delay_microseconds=max_queue_delay_microseconds,
        preferred_batch_size=tuple(preferred_batch_size),
        max_queue_size=max_queue_size,
        intra_op_threads=intra_op_threads,
        inter_op_threads=inter_op_threads,
    )
    built: Dict[str, Path] = {}
    for name in names:
        spec = MODELS[name]
        model_dir = root / name
        onnx_path = model_dir / "1" / "model.onnx"
        onnx_path.parent.mkdir(parents=True, exist_ok=True)
        cached = Path(onnx_cache) / f"{name}-seed{seed}.onnx" if onnx_cache else None
        if cached is not None and cached.exists():
            shutil.copyfile(cached, onnx_path)
        else:
            # Export to a temporary name first so a crash never leaves a half-written model.
            with tempfile.TemporaryDirectory(dir=onnx_path.parent) as tmp:
                tmp_path = export_onnx(spec, Path(tmp) / "model.onnx", seed=seed, exporter=exporter)
                if verify:
                    verify_onnx(spec, tmp_path, seed=seed)
                os.replace(tmp_path, onnx_path)
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(onnx_path, cached)
        (model_dir / "config.yaml").write_text(render_config(spec, config))
        built[name] = onnx_path
    return built


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Build the benchmark model repository (ONNX + config.yaml).")
    parser.add_argument("dir", help="repository directory to create or update")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=None, help="default: all")
    parser.add_argument("--no-batching", action="store_true", help="omit dynamic_batching from config.yaml")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--max-queue-delay-us", type=int, default=0)
    parser.add_argument("--preferred-batch-size", type=int, nargs="*", default=[])
    parser.add_argument("--max-queue-size", type=int, default=0)
    parser.add_argument("--intra-op-threads", type=int, default=1)
    parser.add_argument("--inter-op-threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--exporter", choices=["auto", "legacy", "dynamo"], default="auto")
    parser.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime vs torch check")
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)

    built = build_repository(
        args.dir,
        batching=not args.no_batching,
        models=args.models,
        max_batch_size=args.max_batch_size,
        max_queue_delay_microseconds=args.max_queue_delay_us,
        preferred_batch_size=args.preferred_batch_size,
        max_queue_size=args.max_queue_size,
        intra_op_threads=args.intra_op_threads,
        inter_op_threads=args.inter_op_threads,
        seed=args.seed,
        exporter=args.exporter,
        verify=not args.no_verify,
    )
    if not args.quiet:
        for name, path in built.items():
            print(f"{name}: {path} ({path.stat().st_size} bytes), {path.parent.parent / 'config.yaml'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
