"""Content-addressed dataset versions.

A *version* of some data files is named by what the files contain, never by where they lie or
when they were written:

    id = sha256( b"parity-dataset-v1\\n"
                 + for each file, sorted by the UTF-8 bytes of its name:
                     name (UTF-8) + b"\\0" + size (decimal ASCII) + b"\\0" + sha256(content) (64 hex) + b"\\n" )

as 64 lowercase hex digits, where `name` is the file's path relative to the *snapshot root*,
with `/` as separator.  The snapshot root is the common directory of the arguments: a directory
argument stands for itself, a file argument for the directory it is in (`snapshot(["data/"])`
and `snapshot(["data/a.csv", "data/b.csv"])` both name files `a.csv`, `b.csv`; copying `data/`
anywhere else, or touching its files, keeps the id).  `root=` chooses another root (one that
contains every argument).  The same bytes under the same names give the same id; one changed
byte, a renamed, added or removed file gives a new one.  Empty files count; directories count only
through the files in them (an empty directory adds nothing).  Symbolic links to files are read
through; links to directories are not followed.

The manifest -- every file's name, size, sha256, and, for Parquet and CSV files, the schema and
the row count -- is stored in the metadata database (component "data").  Snapshotting the same
data again records nothing new (it only notes the location it was seen at).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from parity.errors import InvalidInput, NotFound
from parity.sql import Database, Tx

CHUNK = 1 << 20  # bytes read per step while hashing
PROGRESS_MIN_BYTES = 32 << 20  # show a progress bar when at least this much is hashed (progress=None)
ID_PREFIX_MIN = 6  # the shortest id prefix accepted where an id is asked for

MIGRATIONS = [
    """CREATE TABLE data_versions (
        id TEXT PRIMARY KEY,
        created_at {float} NOT NULL,
        file_count {bigint} NOT NULL,
        total_bytes {bigint} NOT NULL
    );
    CREATE TABLE data_files (
        version_id TEXT NOT NULL REFERENCES data_versions (id),
        name TEXT NOT NULL,
        size {bigint} NOT NULL,
        sha256 TEXT NOT NULL,
        format TEXT,
        row_count {bigint},
        schema_json TEXT,
        note TEXT,
        PRIMARY KEY (version_id, name)
    );
    CREATE TABLE data_locations (
        version_id TEXT NOT NULL REFERENCES data_versions (id),
        root TEXT NOT NULL,
        inputs_json TEXT NOT NULL,
        recorded_at {float} NOT NULL,
        PRIMARY KEY (version_id, root)
    );
    CREATE INDEX data_versions_by_time ON data_versions (created_at);""",
]


@dataclass(frozen=True)
class FileEntry:
    name: str  # relative to the snapshot root, "/"-separated
    size: int
    sha256: str
    format: str | None = None  # "parquet" | "csv" | None
    rows: int | None = None
    schema: list[dict[str, str]] | None = None  # [{"name": ..., "type": ...}] for Parquet/CSV
    note: str | None = None  # why a Parquet/CSV file has no schema (it could not be read)


@dataclass
class DatasetVersion:
    id: str
    files: list[FileEntry]
    created_at: float
    root: str | None = None  # where it was (last) seen
    inputs: list[str] = field(default_factory=list)  # the snapshot's arguments, relative to root
    created: bool = False  # True when this call recorded it for the first time

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def total_rows(self) -> int | None:
        rows = [f.rows for f in self.files if f.rows is not None]
        return sum(rows) if rows else None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created_at": _iso(self.created_at),
            "root": self.root,
            "inputs": list(self.inputs),
            "file_count": len(self.files),
            "total_bytes": self.total_bytes,
            "total_rows": self.total_rows,
            "files": [{k: v for k, v in asdict(f).items()} for f in self.files],
        }


@dataclass
class VerifyResult:
    id: str
    root: str
    changed: list[str] = field(default_factory=list)  # content (or size) differs
    missing: list[str] = field(default_factory=list)  # in the version, gone from disk
    added: list[str] = field(default_factory=list)  # under a snapshotted directory, not in the version

    @property
    def ok(self) -> bool:
        return not (self.changed or self.missing or self.added)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "root": self.root,
            "ok": self.ok,
            "changed": self.changed,
            "missing": self.missing,
            "added": self.added,
        }


# -- the id -----------------------------------------------------------------------------------------


def version_id(files: Iterable[tuple[str, int, str]]) -> str:
    """The version id of (name, size, sha256) triples (the rule in the module docstring)."""
    h = hashlib.sha256(b"parity-dataset-v1\n")
    for name, size, digest in sorted(files, key=lambda f: f[0].encode()):
        h.update(name.encode() + b"\0" + str(int(size)).encode() + b"\0" + digest.encode() + b"\n")
    return h.hexdigest()


def sha256_file(path: str | os.PathLike, progress=None) -> tuple[str, int]:
    """(sha256, size) of a file's bytes, read in chunks (`progress.update(n)` after each, when given)."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
            if progress is not None:
                progress.update(len(chunk))
    return h.hexdigest(), size


# -- walking the arguments --------------------------------------------------------------------------


def _collect(paths: Sequence[str | os.PathLike], root: str | os.PathLike | None) -> tuple[Path, list[str], dict[str, Path]]:
    """(root, inputs relative to root, {name: absolute path}) for the snapshot arguments."""
    if not paths:
        raise InvalidInput("no paths to snapshot: name files or directories")
    absolute = []
    for p in paths:
        a = Path(os.path.abspath(os.fspath(p)))
        if not a.exists():
            raise InvalidInput(f"{p}: no such file or directory")
        if not (a.is_file() or a.is_dir()):
            raise InvalidInput(f"{p}: not a regular file or a directory")
        absolute.append(a)
    if root is None:
        base = Path(os.path.commonpath([str(a if a.is_dir() else a.parent) for a in absolute]))
    else:
        base = Path(os.path.abspath(os.fspath(root)))
        for p, a in zip(paths, absolute):
            if a != base and base not in a.parents:
                raise InvalidInput(f"{p} is not under the snapshot root {root}: choose a root that contains every path")
    files: dict[str, Path] = {}
    inputs: list[str] = []
    for a in absolute:
        inputs.append(_relname(a, base) if a != base else ".")
        if a.is_file():
            files[_relname(a, base)] = a
            continue
        for dirpath, dirnames, filenames in os.walk(a, followlinks=False):
            dirnames.sort()
            for fn in sorted(filenames):
                fp = Path(dirpath) / fn
                if fp.is_file():  # through links to files; skips dangling links, sockets, fifos
                    files[_relname(fp, base)] = fp
    if not files:
        raise InvalidInput(f"no files under {', '.join(os.fspath(p) for p in paths)}: nothing to snapshot")
    return base, sorted(set(inputs)), dict(sorted(files.items(), key=lambda kv: kv[0].encode()))


def _relname(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


# -- schema and rows --------------------------------------------------------------------------------


def _format_of(name: str) -> str | None:
    lower = name.lower()
    if lower.endswith((".parquet", ".pq")):
        return "parquet"
    if lower.endswith((".csv", ".csv.gz", ".csv.bz2", ".csv.zst")):
        return "csv"
    return None


def describe(path: Path, fmt: str | None) -> tuple[int | None, list[dict[str, str]] | None, str | None]:
    """(row count, schema, note) of a Parquet or CSV file; a file that cannot be read as its
    extension says is still part of the version, with a note saying why it has no schema."""
    if fmt is None:
        return None, None, None
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            with pq.ParquetFile(path) as pf:
                schema = pf.schema_arrow
                rows = pf.metadata.num_rows
        else:
            import pyarrow.csv as pacsv

            rows = 0
            with pacsv.open_csv(str(path)) as reader:
                schema = reader.schema
                for batch in reader:
                    rows += batch.num_rows
    except Exception as e:  # noqa: BLE001 - any unreadable file is recorded, not refused
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return None, None, f"not readable as {fmt}: {first}"[:500]
    return int(rows), [{"name": f.name, "type": str(f.type)} for f in schema], None


# -- the database -----------------------------------------------------------------------------------


def _open(db: Database | str | None) -> tuple[Database, bool]:
    """(database, whether we opened it and must close it), migrated."""
    if isinstance(db, Database):
        owned = False
    else:
        from parity.home import default_db_url

        db, owned = Database.open(db or default_db_url()), True
    try:
        migrate_once(db, "data", MIGRATIONS)
    except BaseException:
        if owned:
            db.close()
        raise
    return db, owned


_migrated: weakref.WeakKeyDictionary[Database, set[str]] = weakref.WeakKeyDictionary()
_migrated_lock = threading.Lock()


def migrate_once(db: Database, component: str, migrations: Sequence[str]) -> None:
    """`db.migrate(component, migrations)`, skipped when this Database object has already done it
    (so the read paths that an HTTP server calls per request do not re-check the schema)."""
    with _migrated_lock:
        if component in _migrated.get(db, ()):
            return
    db.migrate(component, migrations)
    with _migrated_lock:
        _migrated.setdefault(db, set()).add(component)


def resolve_id(tx: Tx, ref: str) -> str:
    """The full id of a version named by its id or a unique prefix of it (at least 6 hex digits)."""
    ref = (ref or "").strip().lower()
    if not ref or any(c not in "0123456789abcdef" for c in ref):
        raise InvalidInput(f"{ref!r} is not a dataset version id (64 hex digits, or a unique prefix of at least {ID_PREFIX_MIN})")
    if len(ref) == 64:
        if tx.one("SELECT 1 FROM data_versions WHERE id = ?", (ref,)):
            return ref
        raise NotFound(f"no dataset version {ref}; `parity data list` shows the recorded ones")
    if len(ref) < ID_PREFIX_MIN:
        raise InvalidInput(f"dataset version prefix {ref!r} is too short: give at least {ID_PREFIX_MIN} hex digits")
    rows = tx.all("SELECT id FROM data_versions WHERE id LIKE ? ORDER BY id LIMIT 5", (ref + "%",))
    if not rows:
        raise NotFound(f"no dataset version starts with {ref}; `parity data list` shows the recorded ones")
    if len(rows) > 1:
        raise InvalidInput(
            f"dataset version prefix {ref} is ambiguous ({', '.join(r[0][:12] for r in rows)}...): give more digits"
        )
    return rows[0][0]


def _load(tx: Tx, vid: str) -> DatasetVersion:
    head = tx.one("SELECT id, created_at FROM data_versions WHERE id = ?", (vid,))
    if head is None:
        raise NotFound(f"no dataset version {vid}; `parity data list` shows the recorded ones")
    files = [
        FileEntry(name, int(size), sha, fmt, None if rows is None else int(rows), json.loads(schema) if schema else None, note)
        for name, size, sha, fmt, rows, schema, note in tx.all(
            "SELECT name, size, sha256, format, row_count, schema_json, note FROM data_files WHERE version_id = ?", (vid,)
        )
    ]
    files.sort(key=lambda f: f.name.encode())
    loc = tx.one(
        "SELECT root, inputs_json FROM data_locations WHERE version_id = ? ORDER BY recorded_at DESC, root LIMIT 1", (vid,)
    )
    return DatasetVersion(
        id=head[0], files=files, created_at=float(head[1]),
        root=loc[0] if loc else None, inputs=json.loads(loc[1]) if loc else [],
    )  # fmt: skip


# -- the API ----------------------------------------------------------------------------------------


def _bar(total: int, progress: bool | None, desc: str):
    show = progress if progress is not None else total >= PROGRESS_MIN_BYTES
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, file=sys.stderr, leave=False)


def snapshot(
    paths: Sequence[str | os.PathLike] | str | os.PathLike,
    *,
    db: Database | str | None = None,
    root: str | os.PathLike | None = None,
    progress: bool | None = None,
) -> DatasetVersion:
    """Record a content-addressed version of the files at `paths` (files or directories) and return
    it; `.created` is False when the same data was recorded before (nothing new is stored then).
    `progress`: a progress bar on stderr (None: only when 32 MiB or more are hashed)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    base, inputs, found = _collect(list(paths), root)
    sizes = {name: p.stat().st_size for name, p in found.items()}
    bar = _bar(sum(sizes.values()), progress, "hashing")
    entries: list[FileEntry] = []
    try:
        for name, p in found.items():
            if bar is not None:
                bar.set_postfix_str(name[-40:], refresh=False)
            digest, size = sha256_file(p, bar)
            fmt = _format_of(name)
            rows, schema, note = describe(p, fmt)
            entries.append(FileEntry(name, size, digest, fmt, rows, schema, note))
    finally:
        if bar is not None:
            bar.close()
    vid = version_id((f.name, f.size, f.sha256) for f in entries)
    now = time.time()
    database, owned = _open(db)
    try:

        def record(tx: Tx) -> bool:
            tx.lock(f"data:{vid}")
            created = tx.one("SELECT 1 FROM data_versions WHERE id = ?", (vid,)) is None
            if created:
                tx.execute(
                    "INSERT INTO data_versions (id, created_at, file_count, total_bytes) VALUES (?, ?, ?, ?)",
                    (vid, now, len(entries), sum(f.size for f in entries)),
                )
                for f in entries:
                    tx.execute(
                        "INSERT INTO data_files (version_id, name, size, sha256, format, row_count, schema_json, note) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            vid,
                            f.name,
                            f.size,
                            f.sha256,
                            f.format,
                            f.rows,
                            None if f.schema is None else json.dumps(f.schema),
                            f.note,
                        ),
                    )
            tx.execute(
                "INSERT INTO data_locations (version_id, root, inputs_json, recorded_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (version_id, root) DO UPDATE SET inputs_json = excluded.inputs_json, "
                "recorded_at = excluded.recorded_at",
                (vid, str(base), json.dumps(inputs), now),
            )
            return created

        created = database.run(record)
        version = database.run(lambda tx: _load(tx, vid), write=False)
    finally:
        if owned:
            database.close()
    version.created = created
    return version


def get_version(ref: str, *, db: Database | str | None = None) -> DatasetVersion:
    """The recorded version with this id (or unique id prefix); NotFound if there is none."""
    database, owned = _open(db)
    try:
        return database.run(lambda tx: _load(tx, resolve_id(tx, ref)), write=False)
    finally:
        if owned:
            database.close()


def list_versions(*, db: Database | str | None = None, limit: int | None = None) -> list[DatasetVersion]:
    """Recorded versions, newest first (their files included)."""
    database, owned = _open(db)
    try:

        def read(tx: Tx) -> list[DatasetVersion]:
            sql = "SELECT id FROM data_versions ORDER BY created_at DESC, id"
            ids = [r[0] for r in (tx.all(sql + " LIMIT ?", (int(limit),)) if limit else tx.all(sql))]
            return [_load(tx, i) for i in ids]

        return database.run(read, write=False)
    finally:
        if owned:
            database.close()


def verify(
    ref: str,
    *,
    db: Database | str | None = None,
    root: str | os.PathLike | None = None,
    progress: bool | None = None,
) -> VerifyResult:
    """Whether the files of a version still hold the same bytes, at the root it was last seen at (or
    `root`).  Files of the version that changed or are missing, and files that appeared under a
    directory that was snapshotted, are named; `.ok` is True exactly when snapshotting the same
    arguments again would give the same id."""
    version = get_version(ref, db=db)
    base = Path(os.path.abspath(os.fspath(root))) if root is not None else Path(version.root or ".")
    result = VerifyResult(id=version.id, root=str(base))
    present: list[tuple[FileEntry, Path]] = []
    for f in version.files:
        p = base / f.name
        if not p.is_file():
            result.missing.append(f.name)
        elif p.stat().st_size != f.size:
            result.changed.append(f.name)
        else:
            present.append((f, p))
    bar = _bar(sum(f.size for f, _ in present), progress, "verifying")
    try:
        for f, p in present:
            if sha256_file(p, bar) != (f.sha256, f.size):
                result.changed.append(f.name)
    finally:
        if bar is not None:
            bar.close()
    known = {f.name for f in version.files}
    for inp in version.inputs:
        d = base if inp == "." else base / inp
        if d.is_dir():
            for dirpath, dirnames, filenames in os.walk(d, followlinks=False):
                dirnames.sort()
                for fn in sorted(filenames):
                    fp = Path(dirpath) / fn
                    name = _relname(fp, base)
                    if fp.is_file() and name not in known:
                        result.added.append(name)
    for names in (result.changed, result.missing, result.added):
        names.sort(key=str.encode)
    return result


def _iso(t: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


__all__ = [
    "DatasetVersion",
    "FileEntry",
    "VerifyResult",
    "snapshot",
    "verify",
    "get_version",
    "list_versions",
    "resolve_id",
    "version_id",
    "sha256_file",
    "MIGRATIONS",
    "migrate_once",
]
