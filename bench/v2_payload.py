"""Building and checking Open Inference Protocol v2 HTTP requests (JSON and binary tensors).

Used by bench/locustfile.py; kept free of locust imports (locust monkey-patches the
standard library when imported) so that it can be tested and reused on its own.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

# v2 datatype -> numpy dtype (BYTES and BF16 are handled on their own)
NUMPY_TYPES = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}


def env_int(name: str, default: int, environ: Mapping[str, str] = os.environ) -> int:
    value = environ.get(name, "").strip()
    return int(value) if value else default


def env_flag(name: str, default: bool, environ: Mapping[str, str] = os.environ) -> bool:
    value = environ.get(name, "").strip().lower()
    if not value:
        return default
    return value in ("1", "true", "yes", "on")


def parse_headers(text: str) -> Dict[str, str]:
    headers = {}
    for item in text.split(";"):
        if ":" in item:
            key, value = item.split(":", 1)
            headers[key.strip()] = value.strip()
    return headers


def parse_shapes(text: str) -> Dict[str, List[int]]:
    shapes = {}
    for item in text.split(";"):
        if ":" in item:
            name, dims = item.split(":", 1)
            shapes[name.strip()] = [int(d) for d in dims.split(",") if d.strip()]
    return shapes


class Settings:
    """Load-test settings from PARITY_* environment variables (see bench/locustfile.py)."""

    def __init__(self, environ: Mapping[str, str] = os.environ):
        self.model = environ.get("PARITY_MODEL", "mlp32")
        self.version = environ.get("PARITY_MODEL_VERSION", "").strip()
        self.batch = env_int("PARITY_BATCH", 1, environ)
        self.var_dim = env_int("PARITY_VAR_DIM", 16, environ)
        self.shapes = parse_shapes(environ.get("PARITY_SHAPES", ""))
        self.binary = env_flag("PARITY_BINARY", False, environ)
        self.binary_output = env_flag("PARITY_BINARY_OUTPUT", self.binary, environ)
        self.pool = max(1, env_int("PARITY_POOL", 16, environ))
        self.seed = env_int("PARITY_SEED", 0, environ)
        self.wait = float(environ.get("PARITY_WAIT", "0") or 0)
        self.headers = parse_headers(environ.get("PARITY_HEADERS", ""))

    @property
    def model_path(self) -> str:
        path = f"/v2/models/{self.model}"
        return path + (f"/versions/{self.version}" if self.version else "")


# --------------------------------------------------------------------------- request building


def concrete_shape(dims: Sequence[int], batch: int, var_dim: int) -> List[int]:
    """Replaces variable (-1) dims: the first one (the batch) by ``batch``, the others by ``var_dim``."""
    out = []
    for i, d in enumerate(dims):
        d = int(d)
        out.append((batch if i == 0 else var_dim) if d < 0 else d)
    return out


def random_tensor(datatype: str, shape: Sequence[int], rng: np.random.Generator):
    """A random tensor for a v2 datatype: an ndarray, or a list of bytes objects for BYTES."""
    count = int(np.prod(shape)) if len(shape) else 1
    if datatype == "BYTES":
        return [bytes(rng.integers(97, 123, size=int(rng.integers(1, 16)), dtype=np.uint8)) for _ in range(count)]
    if datatype == "BF16":
        return rng.standard_normal(shape).astype(np.float32)
    if datatype not in NUMPY_TYPES:
        raise ValueError(f"unsupported datatype {datatype}")
    dtype = NUMPY_TYPES[datatype]
    if datatype == "BOOL":
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    return rng.integers(0, 100, size=shape).astype(dtype)


def json_data(datatype: str, value) -> list:
    """Flat row-major list for the JSON 'data' field."""
    if datatype == "BYTES":
        return [v.decode("utf-8", "replace") for v in value]
    return np.asarray(value).reshape(-1).tolist()


def raw_bytes(datatype: str, value) -> bytes:
    """The tensor as the binary tensor data extension lays it out (little-endian, row-major)."""
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v)) + v for v in value)
    if datatype == "BF16":
        as_u32 = np.ascontiguousarray(value, dtype="<f4").view("<u4")
        return (as_u32 >> 16).astype("<u2").tobytes()
    array = np.ascontiguousarray(value)
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def build_request(metadata: dict, settings: Settings, rng: np.random.Generator) -> Tuple[bytes, Dict[str, str]]:
    """One request body (and its extra headers) for ``metadata``."""
    inputs, blobs = [], []
    for spec in metadata.get("inputs", []):
        name, datatype = spec["name"], spec["datatype"]
        shape = settings.shapes.get(name) or concrete_shape(spec.get("shape", []), settings.batch, settings.var_dim)
        value = random_tensor(datatype, shape, rng)
        entry = {"name": name, "shape": shape, "datatype": datatype}
        if settings.binary:
            blob = raw_bytes(datatype, value)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = json_data(datatype, value)
        inputs.append(entry)
    body: dict = {"inputs": inputs}
    outputs = [o["name"] for o in metadata.get("outputs", [])]
    if outputs:
        body["outputs"] = [
            {"name": o, "parameters": {"binary_data": True}} if settings.binary_output else {"name": o}
            for o in outputs
        ]
    header = json.dumps(body, separators=(",", ":")).encode()
    if not blobs and not settings.binary_output:
        return header, {"Content-Type": "application/json"}
    extra = {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}
    return header + b"".join(blobs), extra


def check_response(body: bytes, headers, expected_outputs: Sequence[str]) -> Optional[str]:
    """None when the response carries every expected output, else what is wrong."""
    length = None
    for key in ("Inference-Header-Content-Length", "inference-header-content-length"):
        value = headers.get(key) if headers is not None else None
        if value:
            length = int(value)
            break
    try:
        doc = json.loads(body[:length] if length is not None else body)
    except (ValueError, UnicodeDecodeError) as exc:
        return f"response is not JSON: {exc}"
    if "error" in doc:
        return f"server error: {doc['error']}"
    names = {o.get("name") for o in doc.get("outputs", [])}
    missing = [n for n in expected_outputs if n not in names]
    if missing:
        return f"missing outputs {missing}"
    return None


def decode_outputs(body: bytes, headers: Optional[Mapping[str, str]] = None) -> Dict[str, np.ndarray]:
    """Output tensors of a v2 response (JSON data or binary tensor data) as numpy arrays."""
    length = None
    for key, value in (headers or {}).items():
        if key.lower() == "inference-header-content-length":
            length = int(value)
    doc = json.loads(body[:length] if length is not None else body)
    offset = length or 0
    outputs = {}
    for out in doc.get("outputs", []):
        datatype, shape = out["datatype"], out["shape"]
        size = (out.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            blob = body[offset:offset + size]
            offset += size
            if datatype == "BYTES":
                items, pos = [], 0
                while pos < len(blob):
                    (n,) = struct.unpack_from("<I", blob, pos)
                    items.append(blob[pos + 4:pos + 4 + n])
                    pos += 4 + n
                outputs[out["name"]] = np.array(items, dtype=object).reshape(shape)
            elif datatype == "BF16":
                u32 = np.frombuffer(blob, dtype="<u2").astype("<u4") << 16
                outputs[out["name"]] = u32.view("<f4").reshape(shape)
            else:
                outputs[out["name"]] = np.frombuffer(blob, dtype=np.dtype(NUMPY_TYPES[datatype]).newbyteorder("<")).reshape(shape)
        else:
            dtype = object if datatype == "BYTES" else NUMPY_TYPES.get(datatype, np.float32)
            outputs[out["name"]] = np.array(out["data"], dtype=dtype).reshape(shape)
    return outputs
