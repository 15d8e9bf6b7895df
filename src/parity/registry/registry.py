"""The model registry: registered models, numbered versions with their artifacts, aliases, and
an append-only, hash-chained audit log of every change.  Metadata lives in SQL (parity.sql:
SQLite by default, PostgreSQL for shared use), artifacts in a content-addressed store
(parity.registry.artifacts).

    reg = Registry.open()                              # PARITY_DB / PARITY_ARTIFACTS, or ./.parity
    v = reg.register("fraud", artifacts={"model.onnx": "out/model.onnx"}, metrics={"auc": 0.91},
                     actor="ci", reason="nightly training")
    reg.set_alias("fraud", "champion", v.version, actor="alice", reason="passed the gate", evidence={...})
    reg.resolve("fraud@champion")                      # -> ModelVersion
    reg.fetch("fraud@champion", "models/")             # -> models/fraud/<version>/model.onnx, verified
"""

from __future__ import annotations

import getpass
import hashlib
import json
import math
import os
import subprocess
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from parity import home
from parity.errors import Conflict, InvalidInput, NotFound
from parity.registry.artifacts import ArtifactStore, ChecksumMismatch, inspect_artifact, remove_tree, safe_child, sha256_file
from parity.registry.names import (
    Ref,
    artifact_kind,
    check_action,
    check_alias,
    check_artifact_name,
    check_key,
    check_model_name,
    check_version,
    parse_ref,
)
from parity.registry.schema import COMPONENT, migrations_for
from parity.sql import Database, Tx

GENESIS = "0" * 64
WRITE_LOCK = "parity-registry"  # serializes registry writes on PostgreSQL (SQLite: BEGIN IMMEDIATE)
_DATATYPES = frozenset(
    {"BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "FP16", "BF16", "FP32", "FP64", "BYTES"}
)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _canonical(obj: Any, what: str) -> str:
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InvalidInput(f"{what} must be a JSON document (dicts, lists, strings, finite numbers, booleans, null): {e}") from None


def default_actor() -> str:
    """Who is acting when no actor is named: $PARITY_ACTOR, else the operating-system user."""
    actor = os.environ.get("PARITY_ACTOR")
    if actor:
        return actor
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user entry in a container
        return f"uid:{os.getuid()}"


def _check_actor(actor: str | None) -> str:
    actor = default_actor() if actor is None else actor
    if not isinstance(actor, str) or not actor.strip() or len(actor) > 256:
        raise InvalidInput(f"actor {actor!r} is not valid: name who is acting (1-256 characters)")
    return actor.strip()


def _check_reason(reason: object, required: bool) -> str:
    if reason is None:
        reason = ""
    if not isinstance(reason, str):
        raise InvalidInput(f"reason {reason!r} must be text")
    if required and not reason.strip():
        raise InvalidInput("a reason is required for this change: say why (e.g. --reason 'passed the promotion gate')")
    return reason.strip()


# -- records ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Artifact:
    name: str
    kind: str  # onnx | torchscript
    sha256: str
    size: int


@dataclass(frozen=True)
class Lineage:
    """Where a version came from: the training run, the dataset versions it read, the code."""

    run_id: str | None = None
    datasets: tuple[str, ...] = ()
    git_commit: str | None = None
    git_dirty: bool | None = None
    diff_hash: str | None = None

    @classmethod
    def coerce(cls, value: "Lineage | Mapping | None") -> "Lineage":
        if value is None:
            return cls()
        if isinstance(value, Lineage):
            data = value.to_dict()
        elif isinstance(value, Mapping):
            data = dict(value)
        else:
            raise InvalidInput(f"lineage must be a Lineage or a dict, not {type(value).__name__}")
        unknown = set(data) - {"run_id", "datasets", "git_commit", "git_dirty", "diff_hash"}
        if unknown:
            raise InvalidInput(f"lineage has unknown fields {sorted(unknown)}; use run_id, datasets, git_commit, git_dirty, diff_hash")
        datasets = data.get("datasets") or ()
        if isinstance(datasets, str) or not all(isinstance(d, str) and d for d in datasets):
            raise InvalidInput(f"lineage datasets must be a list of dataset version ids, not {datasets!r}")
        for key in ("run_id", "git_commit", "diff_hash"):
            if data.get(key) is not None and not isinstance(data[key], str):
                raise InvalidInput(f"lineage {key} must be text, not {data[key]!r}")
        dirty = data.get("git_dirty")
        if dirty is not None and not isinstance(dirty, bool):
            raise InvalidInput(f"lineage git_dirty must be true or false, not {dirty!r}")
        return cls(data.get("run_id"), tuple(datasets), data.get("git_commit"), dirty, data.get("diff_hash"))

    @classmethod
    def from_git(cls, path: str | os.PathLike = ".", *, run_id: str | None = None, datasets=()) -> "Lineage":
        """The code version of the git work tree at `path`: HEAD, whether it is dirty, and the
        sha256 of `git diff HEAD` (empty when clean).  No git, or not a repository: no code version."""

        def git(*args: str) -> str | None:
            try:
                r = subprocess.run(["git", "-C", str(path), *args], capture_output=True, timeout=30, env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
            except (OSError, subprocess.TimeoutExpired):
                return None
            return r.stdout.decode("utf-8", "replace") if r.returncode == 0 else None

        commit = git("rev-parse", "HEAD")
        if commit is None:
            return cls(run_id=run_id, datasets=tuple(datasets))
        status = git("status", "--porcelain", "--untracked-files=no") or ""
        diff = git("diff", "HEAD", "--binary") or ""
        dirty = bool(status.strip())
        return cls(run_id, tuple(datasets), commit.strip(), dirty, hashlib.sha256(diff.encode()).hexdigest() if dirty else None)

    def to_dict(self) -> dict:
        return {
            "run_id": self.run_id,
            "datasets": list(self.datasets),
            "git_commit": self.git_commit,
            "git_dirty": self.git_dirty,
            "diff_hash": self.diff_hash,
        }


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    created_at: str
    created_by: str
    description: str
    artifacts: tuple[Artifact, ...]
    signature: dict
    metrics: dict[str, float]
    lineage: Lineage
    tags: dict[str, str]
    aliases: tuple[str, ...] = ()
    profile: Any = None

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.version}"

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "ref": self.ref,
            "created_at": self.created_at,
            "created_by": self.created_by,
            "description": self.description,
            "artifacts": [a.__dict__ for a in self.artifacts],
            "signature": self.signature,
            "metrics": self.metrics,
            "lineage": self.lineage.to_dict(),
            "tags": self.tags,
            "aliases": list(self.aliases),
            "profile": self.profile,
        }


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    created_at: str
    created_by: str
    latest_version: int | None
    version_count: int
    aliases: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    at: str
    actor: str
    action: str
    model: str | None
    version: int | None
    alias: str | None
    reason: str
    evidence: dict
    details: dict
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class AuditCheck:
    """The result of `Registry.verify_audit()`: ok when every entry's hash and link hold."""

    entries: int
    head: str  # the newest entry's hash: keep it somewhere else to detect a rewritten chain
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


_AUDIT_COLUMNS = "seq, at, actor, action, model, version, alias, reason, evidence, details, prev_hash, hash"


def _entry_hash(prev_hash: str, seq: int, at: str, actor: str, action: str, model, version, alias, reason: str, evidence: str, details: str) -> str:
    payload = json.dumps(
        [seq, at, actor, action, model, version, alias, reason, evidence, details], separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256((prev_hash + "\n" + payload).encode("utf-8")).hexdigest()


# -- validation ------------------------------------------------------------------------------------


def _check_signature(signature: object) -> dict:
    if not isinstance(signature, Mapping) or set(signature) - {"inputs", "outputs"} or "inputs" not in signature or "outputs" not in signature:
        raise InvalidInput(
            "signature must be {'inputs': [...], 'outputs': [...]}, each tensor {'name': ..., 'datatype': 'FP32', 'shape': [-1, 32]}"
        )
    out: dict[str, list] = {}
    for part in ("inputs", "outputs"):
        tensors = signature[part]
        if not isinstance(tensors, (list, tuple)):
            raise InvalidInput(f"signature {part} must be a list of tensors")
        seen: set[str] = set()
        out[part] = []
        for t in tensors:
            if not isinstance(t, Mapping) or set(t) != {"name", "datatype", "shape"}:
                raise InvalidInput(f"signature {part}: {t!r} must have exactly name, datatype and shape")
            name, datatype, shape = t["name"], t["datatype"], t["shape"]
            if not isinstance(name, str) or not name or name in seen:
                raise InvalidInput(f"signature {part}: tensor name {name!r} is empty, not text, or repeated")
            if datatype not in _DATATYPES:
                raise InvalidInput(f"signature {part}: tensor {name!r} has datatype {datatype!r}; use one of {sorted(_DATATYPES)}")
            if not isinstance(shape, (list, tuple)) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= -1 for d in shape):
                raise InvalidInput(f"signature {part}: tensor {name!r} has shape {shape!r}; use a list of sizes, -1 for a variable one")
            seen.add(name)
            out[part].append({"name": name, "datatype": datatype, "shape": list(shape)})
    return out


def _check_metrics(metrics: object) -> dict[str, float]:
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        raise InvalidInput("metrics must be a dict of name -> number")
    out = {}
    for k, v in metrics.items():
        check_key("metric", k)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            raise InvalidInput(f"metric {k!r} = {v!r} must be a finite number")
        out[k] = float(v)
    return out


def _check_tags(tags: object) -> dict[str, str]:
    if tags is None:
        return {}
    if not isinstance(tags, Mapping):
        raise InvalidInput("tags must be a dict of name -> text")
    for k, v in tags.items():
        check_key("tag", k)
        if not isinstance(v, str) or len(v) > 4096:
            raise InvalidInput(f"tag {k!r} must be text of at most 4096 characters, not {v!r}")
    return dict(tags)


# -- the registry ----------------------------------------------------------------------------------


class Registry:
    def __init__(self, db: Database, store: ArtifactStore):
        self.db, self.store = db, store

    @classmethod
    def open(cls, db_url: str | None = None, artifacts: str | os.PathLike | None = None) -> "Registry":
        """Open (and migrate) the registry; defaults from parity.home (PARITY_DB, PARITY_ARTIFACTS)."""
        db = Database.open(db_url or home.default_db_url())
        db.migrate(COMPONENT, migrations_for(db.dialect))
        return cls(db, ArtifactStore.open_store(artifacts if artifacts is not None else home.default_artifact_root()))

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Registry":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- writing -----------------------------------------------------------------------------------

    def register(
        self,
        name: str,
        artifacts: Mapping[str, str | os.PathLike],
        *,
        signature: Mapping | None = None,
        metrics: Mapping[str, float] | None = None,
        profile: Any = None,
        lineage: Lineage | Mapping | None = None,
        tags: Mapping[str, str] | None = None,
        description: str = "",
        actor: str | None = None,
        reason: str = "",
    ) -> ModelVersion:
        """Store the artifacts and record a new version (the next number for this model)."""
        check_model_name(name)
        actor = _check_actor(actor)
        reason = _check_reason(reason, required=False) or "registered"
        if not isinstance(artifacts, Mapping) or not artifacts:
            raise InvalidInput("a version needs at least one artifact: artifacts={'model.onnx': PATH} (ONNX) or {'model.pt': PATH} (TorchScript)")
        if not isinstance(description, str):
            raise InvalidInput("description must be text")
        metrics = _check_metrics(metrics)
        tags = _check_tags(tags)
        lineage = Lineage.coerce(lineage)
        profile_json = None if profile is None else _canonical(profile, "the reference profile")
        inferred = None
        files: list[tuple[str, str, Path]] = []
        for art_name, path in sorted(artifacts.items()):
            check_artifact_name(art_name)
            kind = artifact_kind(art_name)
            path = Path(path)
            if not path.is_file():
                raise InvalidInput(f"artifact {art_name}: {path} does not exist or is not a file")
            declared = inspect_artifact(art_name, path, kind)
            if inferred is None and declared is not None:
                inferred = declared
            files.append((art_name, kind, path))
        if signature is not None:
            signature = _check_signature(signature)
        elif inferred is not None:
            try:
                signature = _check_signature(inferred)
            except InvalidInput as e:
                raise InvalidInput(f"the ONNX file's own signature cannot be used ({e.message}); pass signature=...") from None
        else:
            raise InvalidInput(
                "a TorchScript artifact does not declare its inputs and outputs: pass signature={'inputs': [...], 'outputs': [...]}"
            )
        # the bytes first (content-addressed, so a failure below leaves at worst an unreferenced file)
        stored = [Artifact(art_name, kind, *self.store.put(path)) for art_name, kind, path in files]
        sig_json = _canonical(signature, "signature")
        lineage_json = _canonical(lineage.to_dict(), "lineage")
        tags_json = _canonical(tags, "tags")

        def write(tx: Tx) -> ModelVersion:
            tx.lock(WRITE_LOCK)
            now = _now()
            model_id = self._model_id(tx, name, required=False)
            if model_id is None:
                model_id = tx.insert("INSERT INTO registry_models (name, created_at, created_by) VALUES (?, ?, ?)", (name, now, actor))
            last = tx.one("SELECT MAX(version) FROM registry_versions WHERE model_id = ?", (model_id,))[0]
            number = (last or 0) + 1
            vid = tx.insert(
                "INSERT INTO registry_versions (model_id, version, created_at, created_by, description, signature, profile, lineage, tags, run_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (model_id, number, now, actor, description, sig_json, profile_json, lineage_json, tags_json, lineage.run_id),
            )
            for a in stored:
                tx.execute(
                    "INSERT INTO registry_artifacts (version_id, name, kind, sha256, size) VALUES (?, ?, ?, ?, ?)",
                    (vid, a.name, a.kind, a.sha256, a.size),
                )
            for k, v in sorted(metrics.items()):
                tx.execute("INSERT INTO registry_metrics (version_id, name, value) VALUES (?, ?, ?)", (vid, k, v))
            details = {"artifacts": {a.name: a.sha256 for a in stored}, "metrics": metrics}
            if lineage.run_id:
                details["run_id"] = lineage.run_id
            self._append(tx, now, actor, "register", name, number, None, reason, {}, details)
            return ModelVersion(name, number, now, actor, description, tuple(stored), signature, metrics, lineage, tags, (), profile)

        return self.db.run(write)

    def set_alias(
        self,
        name: str,
        alias: str,
        version: int | str,
        actor: str | None = None,
        reason: str = "",
        evidence: Mapping | None = None,
        *,
        action: str | None = None,
        expect: int | None = None,
    ) -> ModelVersion:
        """Point `name@alias` at a version, atomically, and record it ("alias.set" for a new alias,
        "alias.move" for a moved one, or `action`, e.g. "promote" or "rollback").  Setting an alias to
        the version it already points at changes nothing and records nothing.

        `expect` makes it a compare-and-set: the alias must point at version `expect` (0: must not
        exist yet) or nothing changes and `Conflict` is raised -- what a promotion decided against
        one champion uses, so it never replaces a champion it was not compared with."""
        check_model_name(name)
        check_alias(alias, settable=True)
        number = check_version(version)
        actor = _check_actor(actor)
        reason = _check_reason(reason, required=True)
        evidence_json = _canonical(dict(evidence or {}), "evidence")
        if action is not None:
            check_action(action)

        def write(tx: Tx) -> ModelVersion:
            tx.lock(WRITE_LOCK)
            model_id = self._model_id(tx, name)
            vid = self._version_id(tx, model_id, name, number)
            row = tx.one(
                "SELECT a.version_id, v.version FROM registry_aliases a JOIN registry_versions v ON v.id = a.version_id "
                "WHERE a.model_id = ? AND a.alias = ?",
                (model_id, alias),
            )
            now = _now()
            if expect is not None and (row[1] if row is not None else 0) != int(expect):
                current = f"version {row[1]}" if row is not None else "nothing"
                want = f"version {expect}" if expect else "nothing"
                raise Conflict(
                    f"{name}@{alias} points at {current}, not {want} as expected: it moved meanwhile; "
                    "decide again against the current version"
                )
            if row is None:
                tx.execute(
                    "INSERT INTO registry_aliases (model_id, alias, version_id, updated_at, updated_by) VALUES (?, ?, ?, ?, ?)",
                    (model_id, alias, vid, now, actor),
                )
                details = {"to": number}
            elif row[1] != number:
                tx.execute(
                    "UPDATE registry_aliases SET version_id = ?, updated_at = ?, updated_by = ? WHERE model_id = ? AND alias = ?",
                    (vid, now, actor, model_id, alias),
                )
                details = {"from": row[1], "to": number}
            else:
                return self._load(tx, model_id, name, number)
            kind = action or ("alias.set" if row is None else "alias.move")
            self._append(tx, now, actor, kind, name, number, alias, reason, json.loads(evidence_json), details)
            return self._load(tx, model_id, name, number)

        return self.db.run(write)

    def delete_alias(self, name: str, alias: str, actor: str | None = None, reason: str = "", evidence: Mapping | None = None) -> None:
        check_model_name(name)
        check_alias(alias)
        actor = _check_actor(actor)
        reason = _check_reason(reason, required=True)
        evidence_json = _canonical(dict(evidence or {}), "evidence")

        def write(tx: Tx) -> None:
            tx.lock(WRITE_LOCK)
            model_id = self._model_id(tx, name)
            row = tx.one(
                "SELECT v.version FROM registry_aliases a JOIN registry_versions v ON v.id = a.version_id WHERE a.model_id = ? AND a.alias = ?",
                (model_id, alias),
            )
            if row is None:
                raise NotFound(f"model '{name}' has no alias '{alias}'; {self._alias_hint(tx, model_id, name)}")
            tx.execute("DELETE FROM registry_aliases WHERE model_id = ? AND alias = ?", (model_id, alias))
            self._append(tx, _now(), actor, "alias.delete", name, row[0], alias, reason, json.loads(evidence_json), {"from": row[0]})

        self.db.run(write)

    def record(
        self,
        action: str,
        model: str,
        actor: str | None = None,
        reason: str = "",
        evidence: Mapping | None = None,
        *,
        version: int | None = None,
        alias: str | None = None,
        details: Mapping | None = None,
    ) -> AuditEntry:
        """Append an entry to the audit log (promotion decisions, rollbacks, traffic changes,
        deployments): who, when, why, and the evidence (e.g. the promotion gate's result)."""
        check_action(action)
        check_model_name(model)
        actor = _check_actor(actor)
        reason = _check_reason(reason, required=True)
        evidence_obj = json.loads(_canonical(dict(evidence or {}), "evidence"))
        details_obj = json.loads(_canonical(dict(details or {}), "details"))
        number = None if version is None else check_version(version)
        if alias is not None:
            check_alias(alias)

        def write(tx: Tx) -> AuditEntry:
            tx.lock(WRITE_LOCK)
            model_id = self._model_id(tx, model)
            if number is not None:
                self._version_id(tx, model_id, model, number)
            return self._append(tx, _now(), actor, action, model, number, alias, reason, evidence_obj, details_obj)

        return self.db.run(write)

    # -- reading -----------------------------------------------------------------------------------

    def resolve(self, ref: str | Ref) -> ModelVersion:
        """`name` (the newest version), `name/3`, or `name@alias` -> the version; NotFound names what
        is missing."""
        r = ref if isinstance(ref, Ref) else parse_ref(ref)

        def read(tx: Tx) -> ModelVersion:
            model_id = self._model_id(tx, r.model)
            if r.alias is not None:
                row = tx.one(
                    "SELECT v.version FROM registry_aliases a JOIN registry_versions v ON v.id = a.version_id WHERE a.model_id = ? AND a.alias = ?",
                    (model_id, r.alias),
                )
                if row is None:
                    raise NotFound(f"model '{r.model}' has no alias '{r.alias}'; {self._alias_hint(tx, model_id, r.model)}")
                number = row[0]
            elif r.version is not None:
                number = r.version
                self._version_id(tx, model_id, r.model, number)
            else:
                number = tx.one("SELECT MAX(version) FROM registry_versions WHERE model_id = ?", (model_id,))[0]
                if number is None:
                    raise NotFound(f"model '{r.model}' has no versions yet; register one with parity registry register {r.model} --artifact PATH")
            return self._load(tx, model_id, r.model, number)

        return self.db.run(read, write=False)

    def get(self, name: str, version: int | str) -> ModelVersion:
        return self.resolve(Ref(check_model_name(name), version=check_version(version)))

    def versions(self, name: str) -> list[ModelVersion]:
        check_model_name(name)

        def read(tx: Tx) -> list[ModelVersion]:
            model_id = self._model_id(tx, name)
            numbers = [r[0] for r in tx.all("SELECT version FROM registry_versions WHERE model_id = ? ORDER BY version", (model_id,))]
            return [self._load(tx, model_id, name, n) for n in numbers]

        return self.db.run(read, write=False)

    def models(self) -> list[RegisteredModel]:
        def read(tx: Tx) -> list[RegisteredModel]:
            rows = tx.all(
                "SELECT m.id, m.name, m.created_at, m.created_by, MAX(v.version), COUNT(v.id) FROM registry_models m "
                "LEFT JOIN registry_versions v ON v.model_id = m.id GROUP BY m.id, m.name, m.created_at, m.created_by ORDER BY m.name"
            )
            aliases: dict[int, dict[str, int]] = {}
            for model_id, alias, number in tx.all(
                "SELECT a.model_id, a.alias, v.version FROM registry_aliases a JOIN registry_versions v ON v.id = a.version_id ORDER BY a.alias"
            ):
                aliases.setdefault(model_id, {})[alias] = number
            return [RegisteredModel(r[1], r[2], r[3], r[4], r[5], aliases.get(r[0], {})) for r in rows]

        return self.db.run(read, write=False)

    def history(self, name: str | None = None, *, limit: int | None = None) -> list[AuditEntry]:
        """The audit log (of one model, or all of it), oldest first; `limit` keeps the newest N."""
        if name is not None:
            check_model_name(name)

        def read(tx: Tx) -> list[AuditEntry]:
            if name is None:
                rows = tx.all(f"SELECT {_AUDIT_COLUMNS} FROM registry_audit ORDER BY seq")
            else:
                rows = tx.all(f"SELECT {_AUDIT_COLUMNS} FROM registry_audit WHERE model = ? ORDER BY seq", (name,))
                if not rows:
                    self._model_id(tx, name)
            return [_entry(r) for r in rows]

        entries = self.db.run(read, write=False)
        return entries[-limit:] if limit else entries

    def verify_audit(self) -> AuditCheck:
        """Recompute the hash chain: any edited, removed, reordered or inserted entry breaks it."""

        def read(tx: Tx) -> list[tuple]:
            return tx.all(f"SELECT {_AUDIT_COLUMNS} FROM registry_audit ORDER BY seq")

        rows = self.db.run(read, write=False)
        problems: list[str] = []
        prev = GENESIS
        for i, r in enumerate(rows, start=1):
            seq, at, actor, action, model, version, alias, reason, evidence, details, prev_hash, h = r
            if seq != i:
                problems.append(f"entry {seq}: expected sequence number {i} (an entry is missing or was inserted)")
            if prev_hash != prev:
                problems.append(f"entry {seq}: its link to the previous entry does not match (an entry before it was changed or removed)")
            if _entry_hash(prev_hash, seq, at, actor, action, model, version, alias, reason, evidence, details) != h:
                problems.append(f"entry {seq} ({action} {model or ''} at {at}): its contents do not match its hash (it was edited)")
            prev = h
        return AuditCheck(len(rows), prev, tuple(problems))

    # -- artifacts ---------------------------------------------------------------------------------

    def fetch(self, ref: str | Ref, dest_dir: str | os.PathLike) -> Path:
        """Copy the version's artifacts to `dest_dir/<name>/<version>/` (a Triton-style version
        directory), each checked against its sha256; returns that directory.  A directory already
        there with the right bytes is reused; a corrupted artifact raises ChecksumMismatch and
        leaves nothing behind."""
        mv = self.resolve(ref)
        dest_root = Path(dest_dir)
        model_dir = dest_root / mv.name
        model_dir.mkdir(parents=True, exist_ok=True)
        safe_child(dest_root, mv.name)
        target = safe_child(model_dir, str(mv.version))
        if target.exists() and _matches(target, mv):
            return target
        tmp = model_dir / f".tmp-{mv.version}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            for a in mv.artifacts:
                self.store.copy_to(a.sha256, a.size, tmp / a.name, f"{mv.ref}:{a.name}")
            manifest = {"ref": mv.ref, "artifacts": {a.name: {"sha256": a.sha256, "size": a.size} for a in mv.artifacts}, "signature": mv.signature}
            (tmp / "registry.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            if target.exists() or target.is_symlink():
                if target.is_symlink() or not target.is_dir():
                    target.unlink()
                elif _matches(target, mv):
                    return target  # a concurrent fetch finished first
                else:
                    remove_tree(target)
            try:
                os.rename(tmp, target)
            except OSError:
                if target.exists() and _matches(target, mv):
                    return target
                raise
            return target
        finally:
            if tmp.exists():
                remove_tree(tmp)

    def verify(self, ref: str | Ref) -> ModelVersion:
        """Check every artifact of a version against its sha256 in the store (ChecksumMismatch if not)."""
        mv = self.resolve(ref)
        for a in mv.artifacts:
            self.store.verify(a.sha256, a.size, f"{mv.ref}:{a.name}")
        return mv

    # -- internals ---------------------------------------------------------------------------------

    def _model_id(self, tx: Tx, name: str, required: bool = True) -> int | None:
        row = tx.one("SELECT id FROM registry_models WHERE name = ?", (name,))
        if row is None and required:
            raise NotFound(f"model '{name}' is not registered; `parity registry list` shows the registered models")
        return None if row is None else int(row[0])

    def _version_id(self, tx: Tx, model_id: int, name: str, number: int) -> int:
        row = tx.one("SELECT id FROM registry_versions WHERE model_id = ? AND version = ?", (model_id, number))
        if row is None:
            last = tx.one("SELECT MAX(version) FROM registry_versions WHERE model_id = ?", (model_id,))[0]
            have = f"its versions are 1 to {last}" if last else "it has no versions yet"
            raise NotFound(f"model '{name}' has no version {number}; {have}")
        return int(row[0])

    def _alias_hint(self, tx: Tx, model_id: int, name: str) -> str:
        rows = tx.all(
            "SELECT a.alias, v.version FROM registry_aliases a JOIN registry_versions v ON v.id = a.version_id WHERE a.model_id = ? ORDER BY a.alias",
            (model_id,),
        )
        if not rows:
            return f"it has no aliases: set one with parity registry alias set {name} ALIAS VERSION --reason ..."
        return "its aliases are " + ", ".join(f"{a} -> {v}" for a, v in rows)

    def _load(self, tx: Tx, model_id: int, name: str, number: int) -> ModelVersion:
        row = tx.one(
            "SELECT id, created_at, created_by, description, signature, profile, lineage, tags FROM registry_versions WHERE model_id = ? AND version = ?",
            (model_id, number),
        )
        if row is None:
            raise NotFound(f"model '{name}' has no version {number}")
        vid = row[0]
        artifacts = tuple(
            Artifact(n, k, s, int(z)) for n, k, s, z in tx.all("SELECT name, kind, sha256, size FROM registry_artifacts WHERE version_id = ? ORDER BY name", (vid,))
        )
        metrics = {n: float(v) for n, v in tx.all("SELECT name, value FROM registry_metrics WHERE version_id = ? ORDER BY name", (vid,))}
        aliases = tuple(a for (a,) in tx.all("SELECT alias FROM registry_aliases WHERE version_id = ? ORDER BY alias", (vid,)))
        return ModelVersion(
            name=name,
            version=number,
            created_at=row[1],
            created_by=row[2],
            description=row[3],
            artifacts=artifacts,
            signature=json.loads(row[4]),
            metrics=metrics,
            lineage=Lineage.coerce(json.loads(row[6])),
            tags=json.loads(row[7]),
            aliases=aliases,
            profile=None if row[5] is None else json.loads(row[5]),
        )

    def _append(self, tx: Tx, at: str, actor: str, action: str, model, version, alias, reason: str, evidence: dict, details: dict) -> AuditEntry:
        """Append one hash-chained audit entry (the caller holds the registry write lock)."""
        last = tx.one("SELECT seq, hash FROM registry_audit ORDER BY seq DESC LIMIT 1")
        seq, prev = (1, GENESIS) if last is None else (int(last[0]) + 1, last[1])
        ev, de = _canonical(evidence, "evidence"), _canonical(details, "details")
        h = _entry_hash(prev, seq, at, actor, action, model, version, alias, reason, ev, de)
        tx.execute(
            f"INSERT INTO registry_audit ({_AUDIT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (seq, at, actor, action, model, version, alias, reason, ev, de, prev, h),
        )
        return AuditEntry(seq, at, actor, action, model, version, alias, reason, evidence, details, prev, h)


def _entry(r: tuple) -> AuditEntry:
    seq, at, actor, action, model, version, alias, reason, evidence, details, prev_hash, h = r
    return AuditEntry(int(seq), at, actor, action, model, version, alias, reason, json.loads(evidence), json.loads(details), prev_hash, h)


def _matches(directory: Path, mv: ModelVersion) -> bool:
    """Whether a fetched directory holds exactly the version's bytes (checked, not trusted)."""
    if directory.is_symlink() or not directory.is_dir():
        return False
    for a in mv.artifacts:
        p = directory / a.name
        if p.is_symlink() or not p.is_file():
            return False
        try:
            if sha256_file(p) != (a.sha256, a.size):
                return False
        except OSError:
            return False
    return True


__all__ = [
    "Artifact",
    "AuditCheck",
    "AuditEntry",
    "ChecksumMismatch",
    "Lineage",
    "ModelVersion",
    "RegisteredModel",
    "Registry",
    "default_actor",
]
