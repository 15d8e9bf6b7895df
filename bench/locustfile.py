"""Locust load test for any model served over the Open Inference Protocol v2 (HTTP).

    PARITY_MODEL=mlp32 locust -f bench/locustfile.py --headless -u 16 -r 16 -t 30s \\
        --host http://127.0.0.1:8000

Each simulated user reads the model's metadata once (GET /v2/models/{model}), builds a
pool of random requests that match it (datatype and shape of every input; the first
variable dimension is the batch, set to PARITY_BATCH, other variable dimensions are
PARITY_VAR_DIM), and then POSTs /v2/models/{model}/infer as fast as it can (or with
PARITY_WAIT seconds between requests), cycling through the pool. Responses are checked
(status 200, every requested output present); anything else is a locust failure.

Environment variables:
    PARITY_MODEL          model name (default mlp32)
    PARITY_MODEL_VERSION  model version ('' = server's choice)
    PARITY_BATCH          rows per request for a leading variable dimension (default 1)
    PARITY_VAR_DIM        size used for the other variable dimensions (default 16)
    PARITY_SHAPES         explicit shapes, overriding the above: 'INPUT0:1,32;INPUT1:1,8'
    PARITY_BINARY         1: send inputs with the binary tensor data extension (default 0: JSON)
    PARITY_BINARY_OUTPUT  1: ask for binary outputs (default: same as PARITY_BINARY)
    PARITY_POOL           distinct random requests to cycle through (default 16)
    PARITY_SEED           random seed (default 0)
    PARITY_WAIT           seconds each user waits between requests (default 0)
    PARITY_HEADERS        extra headers, 'Name: value; Other: value' (e.g. an access token)
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
from locust import FastHttpUser, constant, task

sys.path.insert(0, str(Path(__file__).resolve().parent))
from v2_payload import Settings, build_request, check_response  # noqa: E402

SETTINGS = Settings()


class InferenceUser(FastHttpUser):
    """Sends v2 inference requests for PARITY_MODEL."""

    wait_time = constant(SETTINGS.wait)
    _user_ids = itertools.count()

    def on_start(self):
        settings = SETTINGS
        self.headers = dict(settings.headers)
        with self.client.get(settings.model_path, name="GET model metadata", headers=self.headers,
                             catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"metadata: HTTP {response.status_code} {response.text[:200]}")
                self.requests = []
                return
            metadata = response.json()
        user_id = next(self._user_ids)
        rng = np.random.default_rng(settings.seed + user_id)
        self.expected_outputs = [o["name"] for o in metadata.get("outputs", [])]
        self.requests = [build_request(metadata, settings, rng) for _ in range(settings.pool)]
        self.cycle = itertools.cycle(self.requests)
        self.infer_path = settings.model_path + "/infer"

    @task
    def infer(self):
        if not self.requests:
            self.stop()
            return
        body, extra = next(self.cycle)
        headers = {**self.headers, **extra}
        with self.client.post(self.infer_path, data=body, headers=headers, name="POST infer",
                              catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
                return
            problem = check_response(response.content or b"", response.headers, self.expected_outputs)
            if problem:
                response.failure(problem)

