"""End-to-end check of the CUDA paths, for a machine with an NVIDIA GPU.

    pip install 'parity[gpu]' && python bench/gpu_check.py

It serves the same MLP on CPU and on CUDA (ONNX Runtime with the CUDA provider and IO binding;
PyTorch TorchScript and torch.export with pinned host buffers), sends batches of several sizes
through the real server with tritonclient, checks every CUDA answer against the CPU one, and
prints per-path timings. Exits 0 when every path that the machine supports passed, 1 on a
mismatch or failure, 2 when there is no GPU at all.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from parity.testing.models import mlp_config, write_config, write_exported_mlp, write_mlp_onnx, write_torchscript_mlp
from parity.testing.server import ServerProcess

SIZES = [256, 1024, 1024, 1]


def gpu_present() -> tuple[bool, bool, str]:
    ort_cuda = torch_cuda = False
    name = ""
    try:
        import onnxruntime as ort

        ort_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    except ImportError:
        pass
    try:
        import torch

        torch_cuda = torch.cuda.is_available()
        name = torch.cuda.get_device_name(0) if torch_cuda else ""
    except ImportError:
        pass
    return ort_cuda, torch_cuda, name


def build(repo: Path, ort_cuda: bool, torch_cuda: bool) -> list[str]:
    models = []
    for device in ["cpu"] + (["cuda"] if ort_cuda else []):
        name = f"onnx_{device}"
        write_mlp_onnx(repo / name / "1" / "model.onnx", SIZES)
        cfg = mlp_config(SIZES, max_batch_size=64)
        cfg["runtime"] = {"device": device}
        write_config(repo / name, cfg)
        models.append(name)
    if torch_cuda:
        for platform, fname, writer in (("pytorch_libtorch", "model.pt", write_torchscript_mlp), ("pytorch_export", "model.pt2", write_exported_mlp)):
            name = f"{platform}_cuda"
            writer(repo / name / "1" / fname, SIZES)
            cfg = mlp_config(SIZES, max_batch_size=64)
            cfg["platform"] = platform
            cfg["runtime"] = {"device": "cuda"}
            write_config(repo / name, cfg)
            models.append(name)
    return models


def main() -> int:
    ort_cuda, torch_cuda, gpu = gpu_present()
    print(f"GPU: {gpu or 'none'}; onnxruntime CUDA provider: {ort_cuda}; torch CUDA: {torch_cuda}")
    if not (ort_cuda or torch_cuda):
        print("no CUDA path available on this machine: nothing to check")
        return 2
    import tritonclient.grpc as grpcclient

    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        models = build(repo, ort_cuda, torch_cuda)
        with ServerProcess(repo, ready_timeout=300) as server:
            client = grpcclient.InferenceServerClient(server.grpc_url)
            rng = np.random.default_rng(0)
            for rows in (1, 7, 64):
                x = rng.standard_normal((rows, SIZES[0])).astype(np.float32)
                inp = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
                inp.set_data_from_numpy(x)
                reference = client.infer("onnx_cpu", [inp]).as_numpy("OUTPUT0")
                for model in models[1:]:
                    t = time.perf_counter()
                    for _ in range(20):
                        got = client.infer(model, [inp]).as_numpy("OUTPUT0")
                    ms = (time.perf_counter() - t) / 20 * 1e3
                    good = np.allclose(got, reference, rtol=1e-3, atol=1e-3)
                    ok &= good
                    print(f"{model:28s} rows={rows:3d}  {'ok ' if good else 'MISMATCH'}  {ms:.2f} ms/request")
            for st in client.get_inference_statistics(as_json=True)["model_stats"]:
                print(f"{st['name']:28s} executions={st.get('execution_count', 0)} rows={st.get('inference_count', 0)}")
            client.close()
        print(f"server exit status: {server.returncode}")
        ok &= server.returncode == 0
    print("ALL CUDA PATHS OK" if ok else "FAILURES ABOVE")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
