"""Benchmark tooling for the parity inference server (not part of the installed package).

Modules:
    models         -- builds the benchmark ONNX models and Triton-style model repositories
    perf           -- runs perf_analyzer and measures the server's CPU time per request
    pytriton_peer  -- a Triton (PyTriton) server for the same model, used as the reference peer
    serving        -- the serving benchmark driver (ours vs. the peer, batching, raw ONNX Runtime)
    locustfile     -- a locust load test for any model served over the v2 HTTP protocol
"""
