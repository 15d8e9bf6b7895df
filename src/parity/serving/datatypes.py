"""Open Inference Protocol datatypes: names, numpy dtypes, and the BYTES wire encoding.

BYTES elements travel as a 4-byte little-endian length followed by the bytes, back to back.
"""

from __future__ import annotations

import numpy as np

from parity.errors import InvalidInput

# numpy has no bfloat16; BF16 travels as raw 2-byte words (uint16) and is converted by runners.
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "FP16": np.dtype(np.float16),
    "BF16": np.dtype(np.uint16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
# Little-endian wire forms, used to decode raw contents.
WIRE_DTYPES: dict[str, np.dtype] = {k: (v if k == "BYTES" else v.newbyteorder("<")) for k, v in DTYPES.items()}

DATATYPES = frozenset(DTYPES)


def element_count(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def decode_raw(name: str, datatype: str, shape: tuple[int, ...], raw) -> np.ndarray:
    """Turn raw little-endian contents into an array of `shape`, checking the byte length."""
    dtype = WIRE_DTYPES.get(datatype)
    if dtype is None:
        raise InvalidInput(f"input '{name}': unknown datatype '{datatype}'; use one of {sorted(DATATYPES)}")
    count = element_count(shape)
    if datatype == "BYTES":
        return decode_bytes(name, shape, raw)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InvalidInput(
            f"input '{name}': raw content is {len(raw)} bytes but shape {list(shape)} of {datatype} "
            f"needs {expected} bytes"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def decode_bytes(name: str, shape: tuple[int, ...], raw) -> np.ndarray:
    """Decode length-prefixed BYTES elements; a truncated prefix or element is bad input."""
    mv = memoryview(raw)
    count = element_count(shape)
    out = np.empty(count, dtype=object)
    pos, end = 0, len(mv)
    for i in range(count):
        if pos + 4 > end:
            raise InvalidInput(
                f"input '{name}': BYTES content is truncated: element {i} of {count} has no complete "
                "4-byte length prefix"
            )
        n = int.from_bytes(mv[pos : pos + 4], "little")
        pos += 4
        if pos + n > end:
            raise InvalidInput(
                f"input '{name}': BYTES element {i} declares {n} bytes but only {end - pos} remain"
            )
        out[i] = bytes(mv[pos : pos + n])
        pos += n
    if pos != end:
        raise InvalidInput(
            f"input '{name}': BYTES content has {end - pos} bytes beyond the {count} elements of shape {list(shape)}"
        )
    return out.reshape(shape)


def encode_bytes(array: np.ndarray) -> bytes:
    """Length-prefix every element of a BYTES (object/str/bytes) array."""
    parts = []
    for item in array.reshape(-1):
        b = item if isinstance(item, bytes) else str(item).encode() if not isinstance(item, (bytearray, memoryview)) else bytes(item)
        parts.append(len(b).to_bytes(4, "little"))
        parts.append(b)
    return b"".join(parts)


def encode_raw(datatype: str, array: np.ndarray) -> bytes:
    """Raw little-endian bytes of an output array."""
    if datatype == "BYTES":
        return encode_bytes(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return array.tobytes()


def from_json_data(name: str, datatype: str, shape: tuple[int, ...], data) -> np.ndarray:
    """Build an array from JSON tensor data (flat or nested lists), checking the element count."""
    if datatype not in DTYPES:
        raise InvalidInput(f"input '{name}': unknown datatype '{datatype}'; use one of {sorted(DATATYPES)}")
    count = element_count(shape)
    if datatype == "BYTES":
        flat = _flatten(data)
        if len(flat) != count:
            raise InvalidInput(f"input '{name}': {len(flat)} elements given, shape {list(shape)} needs {count}")
        out = np.empty(count, dtype=object)
        for i, v in enumerate(flat):
            if isinstance(v, str):
                out[i] = v.encode()
            elif isinstance(v, (bytes, bytearray)):
                out[i] = bytes(v)
            else:
                raise InvalidInput(f"input '{name}': BYTES elements must be strings, got {type(v).__name__}")
        return out.reshape(shape)
    dtype = DTYPES[datatype]
    try:
        if dtype.kind in "iu":
            raw = np.asarray(data)
            if raw.dtype.kind not in "iub":
                raise InvalidInput(f"input '{name}': {datatype} data must be integers, got {raw.dtype.name} values")
            info = np.iinfo(dtype)
            if raw.size and (raw.min() < info.min or raw.max() > info.max):
                raise InvalidInput(f"input '{name}': values outside the {datatype} range {info.min}..{info.max}")
            arr = raw.astype(dtype)
        elif dtype.kind == "b":
            arr = np.asarray(data)
            if arr.dtype.kind != "b":
                raise InvalidInput(f"input '{name}': BOOL data must be true/false, got {arr.dtype.name} values")
        else:
            arr = np.asarray(data, dtype=dtype)
    except (TypeError, ValueError, OverflowError) as e:
        raise InvalidInput(f"input '{name}': data does not fit {datatype}: {e}") from None
    if arr.size != count:
        raise InvalidInput(f"input '{name}': {arr.size} elements given, shape {list(shape)} needs {count}")
    return arr.reshape(shape)


def _flatten(data) -> list:
    if not isinstance(data, list):
        return [data]
    out: list = []
    stack = [iter(data)]
    while stack:
        for v in stack[-1]:
            if isinstance(v, list):
                stack.append(iter(v))
                break
            out.append(v)
        else:
            stack.pop()
    return out


def to_json_data(datatype: str, array: np.ndarray) -> list:
    """Flat row-major list for a JSON response."""
    if datatype == "BYTES":
        return [v.decode("utf-8", "replace") if isinstance(v, (bytes, bytearray)) else str(v) for v in array.reshape(-1)]
    if datatype == "FP16":
        array = array.astype(np.float32)
    return array.reshape(-1).tolist()
