"""gRPC over TLS on both transports: a self-signed certificate (made with the openssl command),
tritonclient with ssl=True as the client, ALPN h2 checked with Python's ssl module."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from parity.testing.models import mlp_config, mlp_reference, write_config, write_mlp_onnx
from parity.testing.server import ServerProcess

SIZES = [8, 16, 1]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "server.crt", d / "server.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    root = tmp_path_factory.mktemp("tls-repo")
    weights = write_mlp_onnx(root / "mlp" / "1" / "model.onnx", SIZES)
    write_config(root / "mlp", mlp_config(SIZES, max_batch_size=8))
    return root, weights


@pytest.fixture(scope="module", params=["fast", "grpcio"])
def tls_server(request, certificate, repository):
    cert, key = certificate
    root, weights = repository
    with ServerProcess(root, "--grpc-transport", request.param, "--tls-cert", str(cert), "--tls-key", str(key)) as server:
        yield server, weights


def test_tls_call_answers_correctly(tls_server, certificate):
    server, weights = tls_server
    client = grpcclient.InferenceServerClient(f"localhost:{server.grpc_port}", ssl=True, root_certificates=str(certificate[0]))
    x = np.random.default_rng(3).standard_normal((4, SIZES[0])).astype(np.float32)
    inp = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    out = client.infer("mlp", [inp]).as_numpy("OUTPUT0")
    np.testing.assert_allclose(out, mlp_reference(x, weights), rtol=1e-5, atol=1e-5)
    assert client.is_server_ready()


def test_alpn_selects_h2(tls_server, certificate):
    server, _ = tls_server
    ctx = ssl.create_default_context(cafile=str(certificate[0]))
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", server.grpc_port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.selected_alpn_protocol() == "h2"
            assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_plaintext_client_is_refused_and_the_server_keeps_serving(tls_server, certificate):
    server, _ = tls_server
    plain = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    with pytest.raises(InferenceServerException) as info:
        plain.is_server_live(client_timeout=5)
    assert "UNAVAILABLE" in info.value.status() or "DEADLINE_EXCEEDED" in info.value.status(), info.value
    client = grpcclient.InferenceServerClient(f"localhost:{server.grpc_port}", ssl=True, root_certificates=str(certificate[0]))
    assert client.is_server_live()


def test_certificate_without_key_is_refused_at_startup(certificate, repository):
    root, _ = repository
    proc = subprocess.run(
        [sys.executable, "-m", "parity", "serve", "--model-repository", str(root), "--tls-cert", str(certificate[0])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "tls_key_file" in proc.stderr and "both a certificate and its key" in proc.stderr
