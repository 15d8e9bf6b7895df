"""The Open Inference Protocol's REST encoding: JSON inference requests and responses, with the
binary tensor extension (``Inference-Header-Content-Length``).  Pure functions, no I/O: the
connection code in `http.py` hands bodies in and gets bytes out.

Request body::

    {"id": "...", "parameters": {...},
     "inputs": [{"name", "shape", "datatype", "data" | parameters.binary_data_size, "parameters"}],
     "outputs": [{"name", "parameters": {"binary_data": bool}}]}
    [raw input tensors, in input order, when Inference-Header-Content-Length is given]

Every malformed field is an `InvalidInput` naming the field; nothing here raises anything else
for bad input.
"""

from __future__ import annotations

import json
import json.scanner
import zlib

import numpy as np

from parity.errors import InvalidInput, PayloadTooLarge
from parity.serving.datatypes import WIRE_DTYPES, decode_raw, encode_raw, from_json_data, to_json_data
from parity.types import InferRequest, InferResponse, RequestedOutput, Tensor

_loads = json.loads
_encode = json.JSONEncoder(separators=(",", ":")).encode

# Request parameters this server understands; anything else is passed to the model untouched
# (after its type is checked).
_SEQUENCE_PARAMS = ("sequence_id", "sequence_start", "sequence_end")


def dumps(obj) -> bytes:
    return _encode(obj).encode()


def _type_name(v) -> str:
    return "null" if v is None else {dict: "object", list: "array", str: "string", bool: "boolean"}.get(type(v), type(v).__name__)


def check_parameters(where: str, params) -> dict:
    """A `parameters` object: string keys, values string, number or boolean (the protocol's rule)."""
    if params is None:
        return {}
    if type(params) is not dict:
        raise InvalidInput(f"{where}: 'parameters' must be a JSON object, got {_type_name(params)}")
    for k, v in params.items():
        if not isinstance(v, (str, int, float)):  # bool is an int
            raise InvalidInput(f"{where}: parameter '{k}' must be a string, number or boolean, got {_type_name(v)}")
    return params


_decoder = json.JSONDecoder()
_scan = json.scanner.make_scanner(_decoder)  # the C scanner: json.loads without its Python layers
_WS = " \t\n\r"


def parse_json(body, what: str):
    """json.loads for request bodies (UTF-8), with errors as InvalidInput naming `what`."""
    try:
        s = body.decode() if type(body) is not str else body
        try:
            idx = 0
            if s[:1] in _WS:
                idx = len(s) - len(s.lstrip(_WS))
            obj, end = _scan(s, idx)
        except StopIteration as e:
            raise json.JSONDecodeError("Expecting value", s, e.value) from None
        if end != len(s) and s[end:].strip(_WS):
            raise json.JSONDecodeError("Extra data", s, end)
        return obj
    except RecursionError:
        raise InvalidInput(f"{what} is JSON nested too deeply") from None
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise InvalidInput(f"{what} is not valid JSON: {e}") from None


def decode_body(body: bytes, encoding: bytes, limit: int) -> bytes:
    """Undo a request's Content-Encoding (gzip or deflate), refusing more than `limit` bytes."""
    enc = encoding.strip().lower()
    if enc in (b"", b"identity"):
        return body
    if enc in (b"gzip", b"x-gzip"):
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif enc == b"deflate":
        d = zlib.decompressobj(32 + zlib.MAX_WBITS)  # zlib or gzip header, detected
    else:
        raise InvalidInput(f"unsupported Content-Encoding '{encoding.decode('latin-1')}'; use gzip, deflate or none")
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as e:
        raise InvalidInput(f"the body is not valid {enc.decode()} data: {e}") from None
    if len(out) > limit or d.unconsumed_tail:
        raise PayloadTooLarge(f"the decompressed body is larger than the server's limit of {limit} bytes")
    return out


class _Header:
    """What an inference request's JSON header says, validated.  Headers with only binary inputs
    are cached by their bytes: clients send the same header again and again (same shapes), and
    a dictionary look-up is much cheaper than parsing and checking the JSON each time."""

    __slots__ = ("binary_default", "binary_map", "cacheable", "inputs", "outputs", "params", "req_id", "timeout_us")


_HEADER_CACHE: dict[bytes, _Header] = {}
_RESPONSE_CACHE: dict[tuple, tuple[bytes, bytes, bytes]] = {}  # (model, version, output, datatype, shape) -> JSON
_HEADER_CACHE_MAX = 1024


def decode_infer_request(
    body: bytes,
    header_length: bytes | None,
    model: str,
    version: str,
    now: float,
) -> tuple[InferRequest, bool, dict | None]:
    """(request, binary-by-default, {output name: binary} or None) from an infer body.

    `header_length` is the raw Inference-Header-Content-Length value (None when absent); `now` is
    `clock.now()`, the origin of the `timeout` parameter's deadline."""
    size = len(body)
    if header_length is None:
        hlen = size
        h = None
    else:
        try:
            hlen = int(header_length)
        except ValueError:
            hlen = -1
        if hlen < 0 or hlen > size:
            raise InvalidInput(
                f"Inference-Header-Content-Length is {header_length.decode('latin-1')!r}: it must be an integer "
                f"between 0 and the body's length ({size} bytes)"
            )
        key = body[:hlen] if hlen < size else body
        h = _HEADER_CACHE.get(key)
    if h is None:
        if hlen == 0:
            raise InvalidInput("the inference request has no JSON header: the body is empty")
        key = body[:hlen] if hlen < size else body
        h = _parse_header(key, header_length is not None, model)
        if h.cacheable and header_length is not None:
            if len(_HEADER_CACHE) >= _HEADER_CACHE_MAX:
                _HEADER_CACHE.clear()
            _HEADER_CACHE[key] = h

    inputs = []
    offset = hlen
    for name, datatype, shape, count, bsize, dtype, tparams, data in h.inputs:
        if bsize is not None:
            end = offset + bsize
            if end > size:
                raise InvalidInput(
                    f"input '{name}' declares binary_data_size {bsize} but only {size - offset} bytes of binary data "
                    "remain in the body"
                )
            if dtype is not None:
                data = np.frombuffer(body, dtype, count, offset)
                if len(shape) != 1:
                    data = data.reshape(shape)
            else:  # BYTES, or a size or datatype error that decode_raw words
                data = decode_raw(name, datatype, shape, memoryview(body)[offset:end])
            offset = end
        inputs.append(Tensor(name, datatype, shape, data, tparams))
    if offset != size:
        raise InvalidInput(f"the body has {size - offset} bytes of binary data beyond what the inputs' binary_data_size declare")
    deadline = now + h.timeout_us * 1e-6 if h.timeout_us else None
    req = InferRequest(model, version, h.req_id, inputs, h.outputs, h.params, deadline)
    return req, h.binary_default, h.binary_map


def _parse_header(raw: bytes, has_binary: bool, model: str) -> _Header:
    doc = parse_json(raw, "the inference request")
    if type(doc) is not dict:
        raise InvalidInput(f"the inference request must be a JSON object, got {_type_name(doc)}")
    h = _Header()
    h.cacheable = True

    req_id = doc.get("id", "")
    if type(req_id) is not str:
        raise InvalidInput(f"request 'id' must be a string, got {_type_name(req_id)}")
    h.req_id = req_id

    params = doc.get("parameters")
    timeout_us = 0
    binary_default = False
    if params is not None:
        params = check_parameters("request", params)
        if params:
            t = params.get("timeout")
            if t is not None:
                if type(t) is not int or t < 0:
                    raise InvalidInput(f"request parameter 'timeout' must be a non-negative integer of microseconds, got {t!r}")
                timeout_us = t
            b = params.get("binary_data_output")
            if b is not None:
                if type(b) is not bool:
                    raise InvalidInput(f"request parameter 'binary_data_output' must be a boolean, got {b!r}")
                binary_default = b
            p = params.get("priority")
            if p is not None and (type(p) is not int or p < 0):
                raise InvalidInput(f"request parameter 'priority' must be a non-negative integer, got {p!r}")
            if params.get("sequence_id") not in (None, 0, ""):
                raise InvalidInput(f"model '{model}' does not use sequence batching: remove the 'sequence_id' parameter")
    else:
        params = {}
    h.params, h.timeout_us, h.binary_default = params, timeout_us, binary_default

    raw_inputs = doc.get("inputs")
    if type(raw_inputs) is not list:
        if raw_inputs is None:
            raise InvalidInput("the inference request has no 'inputs'")
        raise InvalidInput(f"'inputs' must be an array, got {_type_name(raw_inputs)}")
    inputs = []
    for i, d in enumerate(raw_inputs):
        if type(d) is not dict:
            raise InvalidInput(f"inputs[{i}] must be a JSON object, got {_type_name(d)}")
        name = d.get("name")
        datatype = d.get("datatype")
        raw_shape = d.get("shape")
        if type(name) is not str or not name:
            raise InvalidInput(f"inputs[{i}] needs a 'name' (a non-empty string)")
        if type(datatype) is not str:
            raise InvalidInput(f"input '{name}' needs a 'datatype' (a string such as \"FP32\")")
        if type(raw_shape) is not list:
            raise InvalidInput(f"input '{name}' needs a 'shape' (an array of integers)")
        count = 1
        for dim in raw_shape:
            if type(dim) is not int or dim < 0:
                raise InvalidInput(f"input '{name}': shape must be an array of non-negative integers, got {raw_shape!r}")
            count *= dim
        shape = tuple(raw_shape)
        tparams = check_parameters(f"input '{name}'", d.get("parameters"))
        bsize = tparams.get("binary_data_size") if tparams else None
        if bsize is not None and (type(bsize) is not int or bsize < 0):
            raise InvalidInput(f"input '{name}': parameter 'binary_data_size' must be a non-negative integer, got {bsize!r}")
        if "shared_memory_region" in tparams:
            raise InvalidInput(
                f"input '{name}': shared memory is not supported by this server; send the data in the request body"
            )
        if bsize is not None:
            if "data" in d:
                raise InvalidInput(f"input '{name}' has both 'data' and parameter 'binary_data_size'; send one")
            if not has_binary:
                raise InvalidInput(
                    f"input '{name}' declares binary_data_size but the request has no Inference-Header-Content-Length header"
                )
            dtype = WIRE_DTYPES.get(datatype)
            if dtype is None or datatype == "BYTES" or bsize != count * dtype.itemsize:
                dtype = None  # decoded (or refused, with the reason) by decode_raw
            inputs.append((name, datatype, shape, count, bsize, dtype, tparams, None))
        else:
            if "data" not in d:
                raise InvalidInput(f"input '{name}' has no 'data' and no parameter 'binary_data_size'")
            h.cacheable = False
            inputs.append((name, datatype, shape, count, None, None, tparams, from_json_data(name, datatype, shape, d["data"])))
    h.inputs = inputs

    outputs = None
    binary_map = None
    raw_outputs = doc.get("outputs")
    if raw_outputs is not None:
        if type(raw_outputs) is not list:
            raise InvalidInput(f"'outputs' must be an array, got {_type_name(raw_outputs)}")
        if raw_outputs:
            outputs = []
            binary_map = {}
            for i, d in enumerate(raw_outputs):
                if type(d) is not dict:
                    raise InvalidInput(f"outputs[{i}] must be a JSON object, got {_type_name(d)}")
                name = d.get("name")
                if type(name) is not str or not name:
                    raise InvalidInput(f"outputs[{i}] needs a 'name' (a non-empty string)")
                oparams = check_parameters(f"output '{name}'", d.get("parameters"))
                binary = binary_default
                b = oparams.get("binary_data")
                if b is not None:
                    if type(b) is not bool:
                        raise InvalidInput(f"output '{name}': parameter 'binary_data' must be a boolean, got {b!r}")
                    binary = b
                if "shared_memory_region" in oparams:
                    raise InvalidInput(f"output '{name}': shared memory is not supported by this server")
                if oparams.get("classification"):
                    raise InvalidInput(f"output '{name}': the classification extension is not supported by this server")
                outputs.append(RequestedOutput(name, oparams))
                binary_map[name] = binary
    h.outputs, h.binary_map = outputs, binary_map
    return h


def encode_infer_response(resp: InferResponse, binary_default: bool, binary_map: dict | None) -> tuple[bytes, list | None]:
    """(JSON header, raw output buffers or None).  With raw buffers the body is header + buffers
    and the header's length goes in Inference-Header-Content-Length."""
    if resp.parameters:
        return _encode_general(resp, binary_default, binary_map)
    outs = resp.outputs
    if len(outs) == 1:  # the common case, with its JSON header cached by shape
        t = outs[0]
        binary = binary_map.get(t.name, binary_default) if binary_map is not None else binary_default
        if binary and t.datatype != "BYTES":
            key = (resp.model_name, resp.model_version, t.name, t.datatype, t.shape)
            tpl = _RESPONSE_CACHE.get(key)
            arr = t.data
            if arr.dtype.byteorder == ">":
                arr = arr.astype(arr.dtype.newbyteorder("<"))
            raw = arr.tobytes()
            if tpl is None:
                shape = ",".join([str(d) for d in t.shape])
                prefix = f'{{"model_name":"{resp.model_name}","model_version":"{resp.model_version}"'.encode()
                suffix = (
                    f',"outputs":[{{"name":"{t.name}","datatype":"{t.datatype}","shape":[{shape}],'
                    f'"parameters":{{"binary_data_size":{len(raw)}}}}}]}}'
                ).encode()
                tpl = (prefix + suffix, prefix, suffix)
                if len(_RESPONSE_CACHE) >= 1024:
                    _RESPONSE_CACHE.clear()
                _RESPONSE_CACHE[key] = tpl
            if resp.id:
                return b"".join((tpl[1], b',"id":', _encode(resp.id).encode(), tpl[2])), [raw]
            return tpl[0], [raw]
    # Written by hand: names and datatypes come from the validated model config (no characters
    # that JSON escapes), only the request id needs escaping.
    parts = []
    raws = None
    for t in resp.outputs:
        binary = binary_map.get(t.name, binary_default) if binary_map is not None else binary_default
        shape = ",".join([str(d) for d in t.shape])
        if binary:
            raw = encode_raw(t.datatype, t.data)
            parts.append(
                f'{{"name":"{t.name}","datatype":"{t.datatype}","shape":[{shape}],"parameters":{{"binary_data_size":{len(raw)}}}}}'
            )
            if raws is None:
                raws = [raw]
            else:
                raws.append(raw)
        else:
            data = _encode(to_json_data(t.datatype, t.data))
            parts.append(f'{{"name":"{t.name}","datatype":"{t.datatype}","shape":[{shape}],"data":{data}}}')
    rid = f',"id":{_encode(resp.id)}' if resp.id else ""
    head = f'{{"model_name":"{resp.model_name}","model_version":"{resp.model_version}"{rid},"outputs":[{",".join(parts)}]}}'
    return head.encode(), raws


def _encode_general(resp: InferResponse, binary_default: bool, binary_map: dict | None) -> tuple[bytes, list | None]:
    outs = []
    raws = None
    for t in resp.outputs:
        binary = binary_map.get(t.name, binary_default) if binary_map is not None else binary_default
        if binary:
            raw = encode_raw(t.datatype, t.data)
            outs.append({"name": t.name, "datatype": t.datatype, "shape": t.shape, "parameters": {"binary_data_size": len(raw)}})
            if raws is None:
                raws = [raw]
            else:
                raws.append(raw)
        else:
            outs.append({"name": t.name, "datatype": t.datatype, "shape": t.shape, "data": to_json_data(t.datatype, t.data)})
    doc: dict = {"model_name": resp.model_name, "model_version": resp.model_version}
    if resp.id:
        doc["id"] = resp.id
    if resp.parameters:
        doc["parameters"] = resp.parameters
    doc["outputs"] = outs
    return dumps(doc), raws
