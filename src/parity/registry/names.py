"""Names in the registry and the references that point at versions.

    fraud            the newest version of model `fraud`
    fraud/3          version 3
    fraud@champion   the version the alias `champion` points at

Model names are letters, digits, '_', '.', '-' (first a letter or digit, at most 128, no '..');
aliases start with a letter (so `fraud/3` and `fraud@x` can never be confused, and an alias is
never all digits); artifact names are plain file names ending in .onnx or .pt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from parity.errors import InvalidInput

MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
ALIAS_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
VERSION_RE = re.compile(r"^[1-9][0-9]{0,17}$")
ARTIFACT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
ACTION_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
KEY_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./:-]{0,127}$")  # metric and tag names

# Artifact kinds by file extension.  Only formats whose loading runs no code from the file:
# ONNX (a protobuf graph) and TorchScript (a zip of TorchScript code compiled by torch.jit,
# never unpickled as Python objects).  Plain pickles (torch.save of a module) are refused.
KINDS = {".onnx": "onnx", ".pt": "torchscript"}
# `latest` always means the newest version; it cannot be set.
RESERVED_ALIASES = frozenset({"latest"})


def check_model_name(name: object) -> str:
    if not isinstance(name, str) or not MODEL_RE.match(name) or ".." in name:
        raise InvalidInput(
            f"model name {name!r} is not valid: use 1-128 letters, digits, '_', '.' or '-', starting with a "
            "letter or digit, without '..'"
        )
    return name


def check_alias(alias: object, *, settable: bool = False) -> str:
    if not isinstance(alias, str) or not ALIAS_RE.match(alias):
        raise InvalidInput(
            f"alias {alias!r} is not valid: use 1-64 letters, digits, '_' or '-', starting with a letter "
            "(e.g. champion, challenger, canary, shadow)"
        )
    if settable and alias in RESERVED_ALIASES:
        raise InvalidInput(f"alias {alias!r} is reserved (it always means the newest version); choose another name")
    return alias


def check_version(version: object) -> int:
    if isinstance(version, bool):
        version = None
    if isinstance(version, str) and VERSION_RE.match(version):
        version = int(version)
    if not isinstance(version, int) or version < 1:
        raise InvalidInput(f"version {version!r} is not valid: versions are whole numbers from 1")
    return version


def check_artifact_name(name: object) -> str:
    """A plain file name (no directories, no '..', not absolute) ending in .onnx or .pt."""
    if not isinstance(name, str) or not ARTIFACT_RE.match(name) or ".." in name:
        raise InvalidInput(
            f"artifact name {name!r} is not valid: use a plain file name such as model.onnx or model.pt "
            "(letters, digits, '_', '.', '-'; no directories, no '..')"
        )
    artifact_kind(name)
    return name


def artifact_kind(name: str) -> str:
    for ext, kind in KINDS.items():
        if name.endswith(ext):
            return kind
    raise InvalidInput(
        f"artifact {name!r}: only ONNX (.onnx) and TorchScript (.pt) artifacts are accepted; "
        "export the model with torch.onnx.export or torch.jit.script/trace + save"
    )


def check_action(action: object) -> str:
    if not isinstance(action, str) or not ACTION_RE.match(action):
        raise InvalidInput(f"audit action {action!r} is not valid: use lower-case letters, digits, '_', '.', '-' (e.g. promote)")
    return action


def check_key(kind: str, key: object) -> str:
    if not isinstance(key, str) or not KEY_RE.match(key):
        raise InvalidInput(f"{kind} name {key!r} is not valid: use 1-128 letters, digits, '_', '.', '/', ':', '-'")
    return key


@dataclass(frozen=True)
class Ref:
    """A parsed reference: exactly one of `version` and `alias` is set, or neither (= latest)."""

    model: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.model}/{self.version}"
        if self.alias is not None:
            return f"{self.model}@{self.alias}"
        return self.model


def parse_ref(ref: object) -> Ref:
    if not isinstance(ref, str):
        raise InvalidInput(f"model reference {ref!r} is not valid: use NAME, NAME/VERSION or NAME@ALIAS")
    if "@" in ref:
        model, _, alias = ref.partition("@")
        check_model_name(model)
        check_alias(alias)
        if alias in RESERVED_ALIASES:
            return Ref(model)
        return Ref(model, alias=alias)
    if "/" in ref:
        model, _, version = ref.partition("/")
        check_model_name(model)
        if not VERSION_RE.match(version):
            raise InvalidInput(f"model reference {ref!r}: {version!r} is not a version number; use NAME/VERSION (e.g. {model}/1)")
        return Ref(model, version=int(version))
    return Ref(check_model_name(ref))
