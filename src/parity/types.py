"""The request path's vocabulary: tensors, requests and responses, shared by every transport.

Transports decode the wire into these objects (checking only that each tensor is self-consistent:
bytes against shape and datatype); the core checks them against the model.  Arrays are numpy;
BYTES tensors are object arrays of ``bytes``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

Parameters = dict[str, Any]


@dataclass(slots=True)
class Tensor:
    name: str
    datatype: str  # an Open Inference Protocol datatype name: "FP32", "BYTES", ...
    shape: tuple[int, ...]
    data: np.ndarray
    parameters: Parameters = field(default_factory=dict)


@dataclass(slots=True)
class RequestedOutput:
    name: str
    parameters: Parameters = field(default_factory=dict)


@dataclass(slots=True)
class InferRequest:
    model_name: str
    model_version: str = ""  # "" means the model's default (newest ready) version
    id: str = ""
    inputs: list[Tensor] = field(default_factory=list)
    outputs: list[RequestedOutput] | None = None  # None: every output
    parameters: Parameters = field(default_factory=dict)
    # Absolute deadline on the event loop's clock (loop.time()), or None.
    deadline: float | None = None


@dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: str
    id: str
    outputs: list[Tensor]
    parameters: Parameters = field(default_factory=dict)
