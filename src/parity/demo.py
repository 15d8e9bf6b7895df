"""`parity demo`: the quickstart, end to end on the embedded defaults.

Exports a small MLP to ONNX (and, when PyTorch is installed, to TorchScript), serves the model
repository, queries it with the Triton clients over gRPC and HTTP, prints the answers next to the
model run directly and the server's metrics, and stops the server with SIGTERM.
"""

from __future__ import annotations

import sys
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

from parity.testing.models import mlp_config, mlp_reference, write_config, write_mlp_onnx
from parity.testing.server import ServerProcess

SIZES = [32, 256, 256, 1]


def _step(msg: str) -> None:
    print(f"\n== {msg}", flush=True)


def run_demo() -> int:
    try:
        import tritonclient.grpc as grpcclient
        import tritonclient.http as httpclient
    except ImportError:
        print("parity demo uses the Triton clients: pip install 'parity[dev]' (or run `make demo`)", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="parity-demo-") as tmp:
        repo = Path(tmp) / "models"
        _step(f"exporting models into {repo}")
        weights = write_mlp_onnx(repo / "mlp" / "1" / "model.onnx", SIZES, seed=0)
        write_config(repo / "mlp", mlp_config(SIZES, max_batch_size=64))
        print("  mlp/1/model.onnx        (ONNX, 32 -> 256 -> 256 -> 1, dynamic batching on)")
        try:
            from parity.testing.models import write_torchscript_mlp

            write_torchscript_mlp(repo / "mlp_torch" / "1" / "model.pt", SIZES, seed=0)
            cfg = mlp_config(SIZES, max_batch_size=64)
            cfg["platform"] = "pytorch_libtorch"
            write_config(repo / "mlp_torch", cfg)
            print("  mlp_torch/1/model.pt    (TorchScript, the same weights)")
            models = ["mlp", "mlp_torch"]
        except ImportError:
            models = ["mlp"]

        _step("starting the server (gRPC and HTTP)")
        with ServerProcess(repo) as server:
            print(f"  ready: HTTP {server.http_url}, gRPC {server.grpc_url}")
            x = np.random.default_rng(7).standard_normal((4, 32)).astype(np.float32)
            expected = mlp_reference(x, weights)[:, 0]

            g = grpcclient.InferenceServerClient(server.grpc_url)
            meta = g.get_server_metadata()
            print(f"  server {meta.name} {meta.version}, extensions: {', '.join(meta.extensions)}")
            for model in models:
                _step(f"gRPC ModelInfer on '{model}' (4 rows, raw tensors)")
                inp = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
                inp.set_data_from_numpy(x)
                res = g.infer(model, [inp])
                got = res.as_numpy("OUTPUT0")[:, 0]
                print(f"  served:   {np.round(got, 5).tolist()}")
                print(f"  directly: {np.round(expected, 5).tolist()}")
                if not np.allclose(got, expected, rtol=1e-4, atol=1e-5):
                    print("  MISMATCH between served and direct answers", file=sys.stderr)
                    return 1
            g.close()

            h = httpclient.InferenceServerClient(server.http_url)
            for binary in (True, False):
                _step(f"HTTP infer on 'mlp' ({'binary tensor extension' if binary else 'JSON tensors'})")
                inp = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
                inp.set_data_from_numpy(x, binary_data=binary)
                out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)
                got = h.infer("mlp", [inp], outputs=[out]).as_numpy("OUTPUT0")[:, 0]
                print(f"  served:   {np.round(got, 5).tolist()}")
                if not np.allclose(got, expected, rtol=1e-4, atol=1e-5):
                    print("  MISMATCH between served and direct answers", file=sys.stderr)
                    return 1
            stats = h.get_inference_statistics("mlp")["model_stats"][0]
            print(f"  statistics: {stats['inference_count']} rows in {stats['execution_count']} executions")
            h.close()

            _step("GET /metrics (the 'mlp' model's lines)")
            with urllib.request.urlopen(f"http://{server.http_url}/metrics", timeout=5) as r:
                text = r.read().decode()
            for line in text.splitlines():
                if 'model="mlp"' in line and "_bucket" not in line:
                    print("  " + line)

            _step("stopping the server (SIGTERM: drain, then exit)")
        print(f"  server exited with status {server.returncode}")
        return 0 if server.returncode == 0 else 1
