"""Benchmark tooling for the parity inference server (not part of the installed package).

Modules:
    models         -- builds the benchmark ONNX models and Triton-style model repositories
    perf           -- runs perf_analyzer and measures the server's CPU time per request
    pytriton_peer  -- a Triton (PyTriton) server for the same model, used as the reference peer
    serving        -- the serving benchmark driver (ours vs. the peer, batching, raw ONNX Runtime)
    locustfile     -- a locust load test for any model served over the v2 HTTP protocol
    features       -- online feature reads: ours in process, over HTTP and gRPC, Feast, raw Redis
    feast_peer     -- the Feast side of the feature benchmark (runs in its own virtualenv)
    offline_join   -- point-in-time joins against pandas merge_asof, and at 10 million rows
    feature_join   -- feature-joined inference against plain-tensor inference (perf_analyzer)
    monitoring_overhead -- the monitoring tap's cost on serving throughput
    drift_eval     -- drift detectors against Evidently, Alibi Detect and scipy's KS on shift streams
    drift_peers    -- the peers' side of drift_eval (runs in its own virtualenv)
"""
