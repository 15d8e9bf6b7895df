"""The model registry: versions, aliases, content-addressed artifacts, an append-only audit log.
See docs/registry.md."""

from parity.registry.artifacts import ArtifactStore, ChecksumMismatch, UnsafeArtifactPath
from parity.registry.names import Ref, parse_ref
from parity.registry.registry import (
    Artifact,
    AuditCheck,
    AuditEntry,
    Lineage,
    ModelVersion,
    RegisteredModel,
    Registry,
    default_actor,
)

__all__ = [
    "Artifact",
    "ArtifactStore",
    "AuditCheck",
    "AuditEntry",
    "ChecksumMismatch",
    "Lineage",
    "ModelVersion",
    "Ref",
    "RegisteredModel",
    "Registry",
    "UnsafeArtifactPath",
    "default_actor",
    "parse_ref",
]
