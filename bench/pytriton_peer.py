"""The reference peer: Triton Inference Server (through PyTriton) serving the benchmark model.

The inference function runs ONNX Runtime on the very same model.onnx that our server
serves, with the same thread settings, behind Triton's dynamic batcher, so that the
comparison is about the serving stack and not the model.

    python bench/pytriton_peer.py --http-port 8100 --grpc-port 8101      # builds and serves mlp32
    python bench/pytriton_peer.py --model-repository /tmp/repo --model mlp32 --http-port 8100 --grpc-port 8101
    python bench/pytriton_peer.py --model-repository /tmp/repo --http-port 8100 --grpc-port 8101  # every model

Each model's batching settings come from its config.yaml in the repository (the same
file our server reads): max_batch_size, dynamic_batching present or not (and its
max_queue_delay_microseconds / preferred_batch_size), runtime thread counts. Without
config.yaml (or PyYAML) the defaults are max_batch_size 64, dynamic batching on, 1 thread.
Command-line flags override the file. With the command-line defaults it can stand in for
our server: ``python bench/pytriton_peer.py --model-repository DIR --http-port P --grpc-port Q``.

It prints one line ``READY http=<port> grpc=<port> ...`` on stdout once the model is
loaded and answers requests, and stops cleanly on SIGTERM or SIGINT (exit status 0).

Requires ``nvidia-pytriton`` 0.7.x (it ships the tritonserver binary).

Two things about running PyTriton here:

* Triton's Python backend stub links against libpython3.11.so.1.0. Unless the directory
  of the *running* interpreter's libpython (sysconfig LIBDIR) comes first on
  LD_LIBRARY_PATH, the stub loads Debian's /usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0
  (3.11.2) with the venv interpreter's 3.11.7 standard library, and loading the model
  fails with "AttributeError: '_thread.RLock' object has no attribute '_recursion_count'".
  This script puts LIBDIR there before Triton starts (children inherit it).
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
import socket
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


def port_in_use(address: str, port: int) -> bool:
    """True when something already listens on address:port.

    Checked before starting, because PyTriton's readiness check would otherwise happily
    talk to whatever server already answers on the HTTP port.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError:
            return True
    return False


def make_session(model_path: Path, intra_op_threads: int, inter_op_threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


def read_model_config(model_dir: Path) -> dict:
    """Batching and runtime settings from <model_dir>/config.yaml, with defaults filled in."""
    settings = {
        "max_batch_size": 64,
        "batching": True,
        "max_queue_delay_microseconds": 0,
        "preferred_batch_size": [],
        "intra_op_threads": 1,
        "inter_op_threads": 1,
    }
    path = model_dir / "config.yaml"
    if not path.exists():
        return settings
    try:
        import yaml
    except ImportError:  # pragma: no cover - PyYAML is normally there
        return settings
    data = yaml.safe_load(path.read_text()) or {}
    settings["max_batch_size"] = int(data.get("max_batch_size", settings["max_batch_size"]))
    batching = data.get("dynamic_batching")
    settings["batching"] = "dynamic_batching" in data
    if isinstance(batching, dict):
        settings["max_queue_delay_microseconds"] = int(batching.get("max_queue_delay_microseconds", 0) or 0)
        settings["preferred_batch_size"] = [int(b) for b in (batching.get("preferred_batch_size") or [])]
    runtime = data.get("runtime") or {}
    settings["intra_op_threads"] = int(runtime.get("intra_op_threads", 1))
    settings["inter_op_threads"] = int(runtime.get("inter_op_threads", 1))
    return settings


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Serve benchmark models with Triton through PyTriton.")
    parser.add_argument("--model-repository", type=Path, default=None,
                        help="repository built by bench/models.py (default: build mlp32 in a temp dir)")
    parser.add_argument("--model", action="append", default=None,
                        help="model to serve (repeatable; default: mlp32 without a repository, else all)")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=0, help="0 (default): metrics endpoint off")
    parser.add_argument("--address", default="127.0.0.1", help="bind address for HTTP and gRPC")
    parser.add_argument("--max-batch-size", type=int, default=None, help="override config.yaml")
    parser.add_argument("--no-batching", action="store_true", help="switch Triton's dynamic batcher off")
    parser.add_argument("--max-queue-delay-us", type=int, default=None, help="override config.yaml")
    parser.add_argument("--instances", type=int, default=1, help="inference callables (model instances) per model")
    parser.add_argument("--intra-op-threads", type=int, default=None, help="override config.yaml")
    parser.add_argument("--inter-op-threads", type=int, default=None, help="override config.yaml")
    parser.add_argument("--access-token", default=PEER_ACCESS_TOKEN)
    parser.add_argument("--open-statistics", action="store_true",
                        help="do not restrict the statistics endpoint (clients then need no token for it)")
    parser.add_argument("--verbose", action="store_true")
    return parser.parse_args(argv)


def _model_settings(args, model_dir: Path) -> dict:
    settings = read_model_config(model_dir)
    if args.max_batch_size is not None:
        settings["max_batch_size"] = args.max_batch_size
    if args.no_batching:
        settings["batching"] = False
    if args.max_queue_delay_us is not None:
        settings["max_queue_delay_microseconds"] = args.max_queue_delay_us
    if args.intra_op_threads is not None:
        settings["intra_op_threads"] = args.intra_op_threads
    if args.inter_op_threads is not None:
        settings["inter_op_threads"] = args.inter_op_threads
    return settings


def main(argv=None) -> int:
    args = parse_args(argv)
    ports = [args.http_port, args.grpc_port] + ([args.metrics_port] if args.metrics_port > 0 else [])
    busy = [port for port in ports if port_in_use(args.address, port)]
    if busy:
        print(f"port(s) already in use on {args.address}: {busy}", file=sys.stderr)
        return 2
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
    names = args.model
    if repo is None:
        from bench.models import build_repository

        names = names or ["mlp32"]
        tmp = tempfile.TemporaryDirectory(prefix="pytriton-peer-")
        repo = Path(tmp.name)
        build_repository(repo, models=names)
    elif not names:
        names = sorted(p.name for p in repo.iterdir() if (p / "1" / "model.onnx").exists())
    missing = [n for n in names if not (repo / n / "1" / "model.onnx").exists()]
    if missing or not names:
        print(f"no model.onnx for {missing or 'any model'} in {repo}", file=sys.stderr)
        return 2

    def make_infer(session, in_name, out_name):
        @batch
        def infer(**inputs):
            x = inputs[in_name]
            if x.dtype != np.float32:
                x = x.astype(np.float32)
            (y,) = session.run([out_name], {in_name: x})
            return {out_name: y}

        return infer

    def dims(shape):
        return tuple(d if isinstance(d, int) else -1 for d in shape[1:])

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

    stop = threading.Event()

    def on_signal(signum, _frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    triton = Triton(config=config, security_config=security)
    summary = []
    try:
        for name in names:
            settings = _model_settings(args, repo / name)
            sessions = [
                make_session(repo / name / "1" / "model.onnx", settings["intra_op_threads"], settings["inter_op_threads"])
                for _ in range(args.instances)
            ]
            meta_in, meta_out = sessions[0].get_inputs()[0], sessions[0].get_outputs()[0]
            batcher = None
            if settings["batching"]:
                batcher = DynamicBatcher(
                    max_queue_delay_microseconds=settings["max_queue_delay_microseconds"],
                    preferred_batch_size=settings["preferred_batch_size"] or None,
                )
            # batching=True keeps the batch dimension (max_batch_size) in Triton's model config;
            # batcher=None means Triton's default scheduler, i.e. no dynamic batching.
            model_config = ModelConfig(batching=True, max_batch_size=settings["max_batch_size"], batcher=batcher)
            triton.bind(
                model_name=name,
                infer_func=[make_infer(s, meta_in.name, meta_out.name) for s in sessions],
                inputs=[Tensor(name=meta_in.name, dtype=np.float32, shape=dims(meta_in.shape))],
                outputs=[Tensor(name=meta_out.name, dtype=np.float32, shape=dims(meta_out.shape))],
                config=model_config,
                strict=False,
            )
            summary.append(f"{name}(batching={'on' if settings['batching'] else 'off'},"
                           f"max_batch_size={settings['max_batch_size']})")
        triton.run()  # returns once the server is up and the models are loaded
        print(
            f"READY http={args.http_port} grpc={args.grpc_port} pid={os.getpid()} "
            f"models={' '.join(summary)}",
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
