"""Model runners: one per (model version, instance).  A runner loads an artifact without executing
code from it, and runs whole batches: a list of input arrays in the config's input order in, a list
of output arrays in the config's output order out."""

from __future__ import annotations

from pathlib import Path

from parity.config import ModelConfig
from parity.errors import ModelLoadError
from parity.serving.runners.base import Runner


def create_runner(config: ModelConfig, path: Path) -> Runner:
    """The runner for a config's platform (imported lazily: torch is heavy and optional per model)."""
    if config.platform == "onnxruntime_onnx":
        from parity.serving.runners.onnx import OnnxRunner

        return OnnxRunner(config, path)
    if config.platform in ("pytorch_libtorch", "pytorch_export"):
        from parity.serving.runners.torch import TorchRunner

        return TorchRunner(config, path)
    raise ModelLoadError(f"model '{config.name}': no runner for platform '{config.platform}'")
