"""The reference peer: Triton Inference Server (through PyTriton) serving the benchmark model.

The inference function runs ONNX Runtime on the very same model.onnx that our server
serves, with the same thread settings, behind Triton's dynamic batcher, so that the
comparison is about the serving stack and not the model.

    python bench/pytriton_peer.py --http-port 8100 --grpc-port 8101
    python bench/pytriton_peer.py --model-repository /tmp/repo --model mlp32 --http-port 8100 --grpc-port 8101

It prints one line ``READY http=<port> grpc=<port> ...`` on stdout once the model is
loaded and answers requests, and stops cleanly on SIGTERM or SIGINT (exit status 0).

Requires ``nvidia-pytriton`` 0.7.x (it ships the tritonserver binary).

Two things about running PyTriton here:

* Triton's Python backend stub links against libpython. Unless the directory of the
  *running* interpreter's libpython (sysconfig LIBDIR) comes first on LD_LIBRARY_PATH,
  the stub picks up the distribution's libpython of the same version and fails or
  misbehaves. This script puts it there before Triton starts (children inherit it).
* PyTriton 0.7 protects the statistics, model-repository, shared-memory, trace and
  logging endpoints with a random access token by default, and perf_analyzer reads the
  statistics endpoint. The token is therefore fixed here (``--access-token``, default
  ``PEER_ACCESS_TOKEN``). Clients send it as the HTTP header ``triton-access-token`` or,
  over gRPC, as the metadata key ``triton-grpc-protocol-triton-access-token``; perf_analyzer
  2.51 forwards ``-H 'key:value'`` on both protocols (despite its help text saying HTTP
  only), so pass the key matching the protocol (see ``access_headers``).
  ``--open-statistics`` leaves the statistics endpoint unrestricted instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PEER_ACCESS_TOKEN = "parity-bench-token"
ACCESS_HEADER = "triton-access-token"
GRPC_ACCESS_HEADER = "triton-grpc-protocol-triton-access-token"
# PyTriton 0.7's default list of token-protected endpoints.
DEFAULT_RESTRICTED = ["shared-memory", "model-repository", "statistics", "trace", "logging"]


def access_headers(protocol: str, token: str = PEER_ACCESS_TOKEN) -> dict:
    """The header (HTTP) or metadata entry (gRPC) that carries the peer's access token."""
    return {GRPC_ACCESS_HEADER if protocol == "grpc" else ACCESS_HEADER: token}


def prepend_python_libdir(env: dict) -> dict:
    """Puts the running interpreter's libpython directory first on LD_LIBRARY_PATH in ``env``."""
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    parts = [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    if libdir and (not parts or parts[0] != libdir):
        parts = [libdir] + [p for p in parts if p != libdir]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(parts)
    return env


def make_session(model_path: Path, intra_op_threads: int, inter_op_threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Serve a benchmark model with Triton through PyTriton.")
    parser.add_argument("--model-repository", type=Path, default=None,
                        help="repository built by bench/models.py (default: build one in a temp dir)")
    parser.add_argument("--model", default="mlp32", help="model name in the repository (default mlp32)")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=0, help="0 (default): metrics endpoint off")
    parser.add_argument("--address", default="127.0.0.1", help="bind address for HTTP and gRPC")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--no-batching", action="store_true", help="switch Triton's dynamic batcher off")
    parser.add_argument("--max-queue-delay-us", type=int, default=0)
    parser.add_argument("--instances", type=int, default=1, help="inference callables (model instances)")
    parser.add_argument("--intra-op-threads", type=int, default=1)
    parser.add_argument("--inter-op-threads", type=int, default=1)
    parser.add_argument("--access-token", default=PEER_ACCESS_TOKEN)
    parser.add_argument("--open-statistics", action="store_true",
                        help="do not restrict the statistics endpoint (clients then need no token for it)")
    parser.add_argument("--verbose", action="store_true")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    # Must happen before Triton (and so the Python backend stub) is started.
    prepend_python_libdir(os.environ)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")

    import numpy as np
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

    tmp = None
    repo = args.model_repository
    if repo is None:
        from bench.models import build_repository

        tmp = tempfile.TemporaryDirectory(prefix="pytriton-peer-")
        repo = Path(tmp.name)
        build_repository(repo, models=[args.model])
    model_path = repo / args.model / "1" / "model.onnx"
    if not model_path.exists():
        print(f"no model at {model_path}", file=sys.stderr)
        return 2

    sessions = [make_session(model_path, args.intra_op_threads, args.inter_op_threads) for _ in range(args.instances)]
    meta_in = sessions[0].get_inputs()[0]
    meta_out = sessions[0].get_outputs()[0]
    in_shape = tuple(-1 if not isinstance(d, int) else d for d in meta_in.shape[1:])
    out_shape = tuple(-1 if not isinstance(d, int) else d for d in meta_out.shape[1:])

    def make_infer(session):
        @batch
        def infer(**inputs):
            x = inputs[meta_in.name]
            if x.dtype != np.float32:
                x = x.astype(np.float32)
            (y,) = session.run([meta_out.name], {meta_in.name: x})
            return {meta_out.name: y}

        return infer

    restricted = [e for e in DEFAULT_RESTRICTED if not (args.open_statistics and e == "statistics")]
    config = TritonConfig(
        http_address=args.address,
        http_port=args.http_port,
        grpc_address=args.address,
        grpc_port=args.grpc_port,
        allow_metrics=args.metrics_port > 0,
        metrics_port=args.metrics_port if args.metrics_port > 0 else None,
        metrics_address=args.address if args.metrics_port > 0 else None,
        log_verbose=1 if args.verbose else 0,
        exit_timeout_secs=5,
    )
    security = TritonSecurityConfig(access_token=args.access_token, restricted_endpoints=restricted)
    batcher = DynamicBatcher(max_queue_delay_microseconds=args.max_queue_delay_us) if not args.no_batching else None
    model_config = ModelConfig(max_batch_size=args.max_batch_size, batching=not args.no_batching, batcher=batcher)

    stop = threading.Event()

    def on_signal(signum, _frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    triton = Triton(config=config, security_config=security)
    try:
        triton.bind(
            model_name=args.model,
            infer_func=[make_infer(s) for s in sessions],
            inputs=[Tensor(name=meta_in.name, dtype=np.float32, shape=in_shape)],
            outputs=[Tensor(name=meta_out.name, dtype=np.float32, shape=out_shape)],
            config=model_config,
            strict=False,
        )
        triton.run()  # returns once the server is up and the model is loaded
        print(
            f"READY http={args.http_port} grpc={args.grpc_port} model={args.model} pid={os.getpid()} "
            f"batching={'off' if args.no_batching else 'on'} token={args.access_token}",
            flush=True,
        )
        while not stop.wait(0.5):
            if not triton.is_alive():
                print("triton stopped unexpectedly", file=sys.stderr, flush=True)
                return 1
    finally:
        started = time.monotonic()
        triton.stop()
        if tmp is not None:
            tmp.cleanup()
        if args.verbose:
            print(f"stopped in {time.monotonic() - started:.1f}s", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
