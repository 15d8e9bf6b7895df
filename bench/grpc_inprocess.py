"""The fast gRPC transport's own cost per request, in process, without sockets.

Feeds a GrpcConnection the bytes a C++ gRPC client (perf_analyzer) sends for ModelInfer on the
MLP-32 model (HEADERS of indexed fields, WINDOW_UPDATEs, one DATA frame), `--per-read` requests
per read, and lets the real core, batcher and ONNX Runtime answer them; the answers go to a
transport that only counts bytes.  What it prints (median of --repeats runs of --requests
requests) is the CPU the server spends per request apart from the socket system calls, which
perf_analyzer runs cannot separate.  With --profile it prints the hottest functions instead.

    python bench/grpc_inprocess.py [--per-read 8] [--requests 20000] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import hpack  # noqa: E402
import numpy as np  # noqa: E402

from parity._proto.inference import grpc_service_pb2 as pb  # noqa: E402
from parity.config import ServerConfig  # noqa: E402
from parity.serving.core import InferenceCore  # noqa: E402
from parity.serving.models import Repository  # noqa: E402
from parity.serving.transport import http2  # noqa: E402
from parity.serving.transport.grpc_fast import FastGrpcTransport, GrpcConnection  # noqa: E402
from parity.testing.models import mlp_config, write_config, write_mlp_onnx  # noqa: E402

SIZES = [32, 256, 256, 1]


class CountingTransport:
    """Stands in for the socket: keeps nothing, counts what would be written."""

    def __init__(self) -> None:
        self.bytes = 0
        self.writes = 0

    def write(self, data) -> None:
        self.writes += 1
        self.bytes += len(data)

    def writelines(self, items) -> None:
        self.writes += 1
        self.bytes += sum(len(x) for x in items)

    def get_extra_info(self, name, default=None):
        return default

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def request_bytes(encoder: hpack.Encoder, sid: int, body: bytes) -> bytes:
    headers = [
        (":scheme", "http"), (":method", "POST"), (":authority", "127.0.0.1:8001"),
        (":path", "/inference.GRPCInferenceService/ModelInfer"), ("te", "trailers"),
        ("content-type", "application/grpc"), ("user-agent", "grpc-c++/1.48.0 grpc-c/26.0.0 (linux; chttp2)"),
        ("grpc-accept-encoding", "identity, deflate, gzip"),
    ]  # fmt: skip
    block = encoder.encode(headers)
    msg = b"\x00" + len(body).to_bytes(4, "big") + body
    return (
        http2.frame(http2.HEADERS, http2.END_HEADERS, sid, block)
        + http2.frame(http2.WINDOW_UPDATE, 0, sid, struct.pack(">L", 5))
        + http2.frame(http2.DATA, http2.END_STREAM, sid, msg)
        + http2.frame(http2.WINDOW_UPDATE, 0, 0, struct.pack(">L", len(msg)))
    )


async def run(args) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="parity-grpc-inproc-"))
    write_mlp_onnx(tmp / "mlp" / "1" / "model.onnx", SIZES)
    write_config(tmp / "mlp", mlp_config(SIZES, max_batch_size=64))
    config = ServerConfig(model_repository=tmp, grpc_transport="fast")
    repo = Repository(tmp)
    core = InferenceCore(config, repo)
    repo.scan()
    failures = await repo.load_all()
    if failures:
        raise SystemExit(f"model failed to load: {failures}")
    core.started = True
    gc.collect()  # as the server does once its models are loaded
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    owner = FastGrpcTransport(core, config)
    loop = asyncio.get_running_loop()

    req = pb.ModelInferRequest(model_name="mlp")
    req.parameters["triton_enable_empty_final_response"].bool_param = False
    inp = req.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 32])
    del inp
    req.raw_input_contents.append(np.random.default_rng(0).random((1, 32), dtype=np.float32).tobytes())
    body = req.SerializeToString()

    conn = GrpcConnection(owner)
    sink = CountingTransport()
    conn.connection_made(sink)
    conn.data_received(http2.PREFACE + http2.frame(http2.SETTINGS, 0, 0, b""))
    encoder = hpack.Encoder()
    sid = 1
    done_before = 0

    async def one_run(n: int, prof: cProfile.Profile | None = None) -> float:
        nonlocal sid, done_before
        # what the client sends, prepared before the clock starts
        chunks = []
        sent = 0
        while sent < n:
            k = min(args.per_read, n - sent)
            chunks.append(b"".join(request_bytes(encoder, sid + 2 * i, body) for i in range(k)))
            sid += 2 * k
            sent += k
        if prof is not None:
            prof.enable()
        t0 = time.process_time()
        # Each read is a loop callback, as the event loop calls data_received; the batcher's and
        # the writer's callbacks run between reads.  After every --reads-per-batch reads the
        # feeder waits (by rescheduling itself) until every answer is written.
        finished = loop.create_future()
        it = iter(enumerate(chunks))

        def feed() -> None:
            if conn.streams and pending[0] >= args.reads_per_batch:
                loop.call_soon(feed)
                return
            nxt = next(it, None)
            if nxt is None:
                if conn.streams:
                    loop.call_soon(feed)
                else:
                    finished.set_result(None)
                return
            pending[0] = pending[0] + 1 if conn.streams else 1
            conn.data_received(nxt[1])
            loop.call_soon(feed)

        pending = [0]
        loop.call_soon(feed)
        await finished
        await asyncio.sleep(0)
        spent = time.process_time() - t0
        if prof is not None:
            prof.disable()
        done_before += n
        return spent / n * 1e6

    await one_run(2000)  # warm-up
    if args.profile:
        prof = cProfile.Profile()
        await one_run(args.requests, prof)
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
        return
    runs = [await one_run(args.requests) for _ in range(args.repeats)]
    print(
        f"fast gRPC transport in process, MLP-32, {args.per_read} request(s) per read, {args.reads_per_batch} read(s) per batch: "
        f"median {statistics.median(runs):.1f} us CPU per request, best {min(runs):.1f} (runs: {', '.join(f'{r:.1f}' for r in runs)}; "
        f"{sink.writes / max(done_before, 1):.2f} writes per request)"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-read", type=int, default=8, help="requests that arrive in one read (default 8)")
    p.add_argument("--reads-per-batch", type=int, default=1, help="reads before the event loop runs the batch (default 1)")
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--profile", action="store_true", help="print a cProfile of one run instead")
    args = p.parse_args()
    try:
        import uvloop

        uvloop.run(run(args))
    except ImportError:
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
