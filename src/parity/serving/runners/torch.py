"""PyTorch runner: TorchScript (model.pt) and torch.export programs (model.pt2).

Neither format runs pickled Python code when loaded.  Batches run under torch.inference_mode.
On CUDA, inputs are staged in pinned host buffers (kept per input and grown as needed) and copied
with non_blocking=True, so the copy overlaps the previous work on the stream.
"""

from __future__ import annotations

import warnings

import numpy as np

from parity.errors import InternalError, ModelLoadError
from parity.serving.runners.base import Runner

_TORCH_DTYPES = {
    "BOOL": "bool", "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
    "UINT8": "uint8", "FP16": "float16", "BF16": "bfloat16", "FP32": "float32", "FP64": "float64",
}  # fmt: skip


class TorchRunner(Runner):
    def load(self) -> None:
        import torch

        self.torch = torch
        for spec in self.config.inputs:
            if spec.datatype not in _TORCH_DTYPES:
                raise ModelLoadError(f"model '{self.config.name}': input '{spec.name}': PyTorch has no {spec.datatype} tensors")
        self.dev = torch.device(self.device)
        if self.dev.type == "cuda" and not torch.cuda.is_available():
            raise ModelLoadError(f"model '{self.config.name}': runtime.device is {self.device} but CUDA is not available; set runtime.device: cpu")
        if self.config.runtime.intra_op_threads:
            torch.set_num_threads(self.config.runtime.intra_op_threads)
        try:
            if self.config.platform == "pytorch_export":
                program = torch.export.load(str(self.path))
                self.module = program.module().to(self.dev)
            else:
                with warnings.catch_warnings():  # deprecated for authoring in PyTorch 2.x; still served
                    warnings.simplefilter("ignore", DeprecationWarning)
                    self.module = torch.jit.load(str(self.path), map_location=self.dev)
                self.module.eval()
        except Exception as e:
            raise ModelLoadError(f"model '{self.config.name}': {self.path} is not a loadable {self.config.platform} artifact: {e}") from None
        self._pinned: dict[int, "torch.Tensor"] = {}
        self._bf16 = [spec.datatype == "BF16" for spec in self.config.inputs]
        self._out_index = {name: i for i, name in enumerate(self.output_names)}

    def _to_device(self, i: int, arr: np.ndarray):
        torch = self.torch
        if not arr.flags.writeable or not arr.flags.c_contiguous:
            arr = np.ascontiguousarray(arr).copy() if not arr.flags.writeable else np.ascontiguousarray(arr)
        t = torch.from_numpy(arr)
        if self._bf16[i]:
            t = t.view(torch.bfloat16)
        if self.dev.type != "cuda":
            return t
        buf = self._pinned.get(i)
        if buf is None or buf.numel() < t.numel() or buf.dtype != t.dtype:
            buf = self._pinned[i] = torch.empty(t.numel(), dtype=t.dtype, pin_memory=True)
        staged = buf[: t.numel()].view(t.shape)
        staged.copy_(t)
        return staged.to(self.dev, non_blocking=True)

    def run(self, inputs: list[np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        torch = self.torch
        try:
            with torch.inference_mode():
                args = [self._to_device(i, a) for i, a in enumerate(inputs)]
                result = self.module(*args)
                if isinstance(result, dict):
                    tensors = [result[name] for name in outputs]
                else:
                    if isinstance(result, torch.Tensor):
                        result = (result,)
                    result = list(result)
                    if len(result) != len(self.output_names):
                        raise InternalError(
                            f"model '{self.config.name}' returned {len(result)} outputs but config.yaml declares {len(self.output_names)}"
                        )
                    tensors = [result[self._out_index[name]] for name in outputs]
                out = []
                for t in tensors:
                    t = t.detach()
                    if t.dtype == torch.bfloat16:
                        t = t.view(torch.uint16) if hasattr(torch, "uint16") else t.float()
                    out.append(t.cpu().numpy())
                return out
        except InternalError:
            raise
        except Exception as e:
            raise InternalError(f"model '{self.config.name}': PyTorch failed: {e}") from None

    def close(self) -> None:
        self.module = None
        self._pinned = {}
