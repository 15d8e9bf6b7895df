"""Dataset versions on a real SQLite file and a real PostgreSQL server: ids from content and
relative names only (the documented rule, recomputed here), idempotent snapshots, manifests with
Parquet/CSV schemas and row counts, verification naming what changed, and the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from parity.cli import main
from parity.data import get_version, list_versions, snapshot, verify
from parity.data.versions import CHUNK
from parity.errors import InvalidInput, NotFound
from parity.sql import Database
from parity.testing.postgres import temporary_database


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def url(request, tmp_path_factory):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('data') / 'meta.db'}"
    else:
        with temporary_database() as u:
            yield u


@pytest.fixture
def db(url):
    with Database.open(url) as database:
        yield database


def make_data(root: Path, tag: str = "") -> Path:
    """A small dataset: a Parquet file, a CSV in a subdirectory, a text file, an empty file."""
    (root / "sub").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"user": [1, 2, 3], "amount": [9.5, 3.25, 1.0], "tag": [tag, "b", "c"]}), root / "tx.parquet")
    (root / "sub" / "labels.csv").write_text("user,label\n1,0\n2,1\n3,0\n4,1\n")
    (root / "README.txt").write_text(f"transactions {tag}\n")
    (root / "empty").write_bytes(b"")
    return root


def documented_id(root: Path) -> str:
    """The version id rule of docs/tracking.md, written out independently of the implementation."""
    entries = []
    for p in sorted(root.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            entries.append((p.relative_to(root).as_posix().encode(), len(data), hashlib.sha256(data).hexdigest()))
    h = hashlib.sha256(b"parity-dataset-v1\n")
    for name, size, digest in sorted(entries):
        h.update(name + b"\0" + str(size).encode() + b"\0" + digest.encode() + b"\n")
    return h.hexdigest()


def test_the_id_is_content_and_relative_names_only(db, tmp_path):
    a = make_data(tmp_path / "a", "same")
    v = snapshot([a], db=db)
    assert v.id == documented_id(a) and len(v.id) == 64
    assert v.created and v.root == str(a) and v.inputs == ["."]
    assert [f.name for f in v.files] == ["README.txt", "empty", "sub/labels.csv", "tx.parquet"]
    # a copy elsewhere, with other modification times, is the same version
    b = tmp_path / "elsewhere" / "copy"
    shutil.copytree(a, b)
    for p in b.rglob("*"):
        os.utime(p, (1_000_000, 1_000_000))
    again = snapshot([b], db=db)
    assert again.id == v.id and not again.created and again.root == str(b)
    # naming the files instead of their directory gives the same names, hence the same id
    files = snapshot([a / "README.txt", a / "empty", a / "sub", a / "tx.parquet"], db=db)
    assert files.id == v.id and not files.created
    with db.transaction(write=False) as tx:
        assert tx.one("SELECT COUNT(*) FROM data_versions WHERE id = ?", (v.id,))[0] == 1
        assert tx.one("SELECT COUNT(*) FROM data_files WHERE version_id = ?", (v.id,))[0] == 4
        assert tx.one("SELECT COUNT(*) FROM data_locations WHERE version_id = ?", (v.id,))[0] == 2


def test_one_changed_byte_a_rename_or_a_new_empty_file_is_a_new_version(db, tmp_path):
    d = make_data(tmp_path / "d", "x")
    base = snapshot(d, db=db).id
    raw = bytearray((d / "sub" / "labels.csv").read_bytes())
    raw[-2] ^= 1  # "1" -> "0"
    (d / "sub" / "labels.csv").write_bytes(bytes(raw))
    changed = snapshot(d, db=db)
    assert changed.id != base and changed.created and changed.id == documented_id(d)
    raw[-2] ^= 1
    (d / "sub" / "labels.csv").write_bytes(bytes(raw))
    assert snapshot(d, db=db).id == base  # restored bytes: the old version again
    (d / "README.txt").rename(d / "README.md")
    renamed = snapshot(d, db=db).id
    (d / "README.md").rename(d / "README.txt")
    (d / "sub" / "new").write_bytes(b"")
    added = snapshot(d, db=db).id
    assert len({base, changed.id, renamed, added}) == 4


def test_the_manifest_has_sizes_hashes_schemas_and_row_counts(db, tmp_path):
    d = make_data(tmp_path / "m", "schema")
    (d / "broken.csv").write_text("a,b\n1\n1,2,3\n")
    v = snapshot(d, db=db)
    files = {f.name: f for f in get_version(v.id, db=db).files}
    parquet = files["tx.parquet"]
    assert parquet.format == "parquet" and parquet.rows == 3
    assert parquet.schema == [
        {"name": "user", "type": "int64"},
        {"name": "amount", "type": "double"},
        {"name": "tag", "type": "string"},
    ]
    assert parquet.size == (d / "tx.parquet").stat().st_size
    assert parquet.sha256 == hashlib.sha256((d / "tx.parquet").read_bytes()).hexdigest()
    csv = files["sub/labels.csv"]
    assert (
        csv.format == "csv"
        and csv.rows == 4
        and csv.schema == [{"name": "user", "type": "int64"}, {"name": "label", "type": "int64"}]
    )
    assert files["README.txt"].format is None and files["README.txt"].rows is None and files["README.txt"].schema is None
    assert files["empty"].size == 0 and files["empty"].sha256 == hashlib.sha256(b"").hexdigest()
    broken = files["broken.csv"]  # kept in the version, with the reason it has no schema
    assert broken.schema is None and broken.rows is None and "not readable as csv" in broken.note
    assert v.total_rows == 7 and v.to_json()["file_count"] == 5
    json.dumps(v.to_json())


def test_verify_names_each_changed_missing_and_added_file(db, tmp_path):
    d = make_data(tmp_path / "v", "verify")
    v = snapshot(d, db=db)
    assert verify(v.id, db=db).ok
    copy = shutil.copytree(d, tmp_path / "copy")
    (d / "README.txt").write_text("transactions verify\n!")  # size changes
    raw = bytearray((d / "tx.parquet").read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size, other bytes
    (d / "tx.parquet").write_bytes(bytes(raw))
    (d / "empty").unlink()
    (d / "sub" / "extra.csv").write_text("x\n1\n")
    r = verify(v.id[:10], db=db)
    assert not r.ok and r.root == str(d)
    assert r.changed == ["README.txt", "tx.parquet"] and r.missing == ["empty"] and r.added == ["sub/extra.csv"]
    assert verify(v.id, db=db, root=copy).ok  # the untouched copy still matches


def test_a_snapshot_of_named_files_ignores_their_neighbours(db, tmp_path):
    d = make_data(tmp_path / "n", "named")
    v = snapshot([d / "tx.parquet", d / "sub" / "labels.csv"], db=db)
    assert [f.name for f in v.files] == ["sub/labels.csv", "tx.parquet"] and v.root == str(d)
    (d / "another").write_text("not part of it")
    assert verify(v.id, db=db).ok
    # an explicit root changes the names, hence the id
    other = snapshot([d / "tx.parquet"], db=db, root=tmp_path)
    assert [f.name for f in other.files] == ["n/tx.parquet"]
    with pytest.raises(InvalidInput, match="not under the snapshot root"):
        snapshot([d / "tx.parquet"], db=db, root=d / "sub")


def test_big_files_are_streamed_with_a_progress_bar(db, tmp_path, capsys):
    big = tmp_path / "big" / "blob.bin"
    big.parent.mkdir()
    block = os.urandom(1 << 16)
    with open(big, "wb") as f:
        for _ in range((3 * CHUNK) // len(block) + 1):
            f.write(block)
    v = snapshot(big.parent, db=db, progress=True)
    assert v.files[0].sha256 == hashlib.sha256(big.read_bytes()).hexdigest() and v.files[0].size == big.stat().st_size
    assert "hashing" in capsys.readouterr().err
    assert verify(v.id, db=db, progress=True).ok
    assert "verifying" in capsys.readouterr().err


def test_concurrent_snapshots_of_the_same_data_record_it_once(url, tmp_path):
    d = make_data(tmp_path / "c", "concurrent")
    results, errors = [], []

    def work():
        try:
            with Database.open(url) as own:
                results.append(snapshot(d, db=own))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len({r.id for r in results}) == 1 and sum(r.created for r in results) == 1
    with Database.open(url) as db, db.transaction(write=False) as tx:
        assert tx.one("SELECT COUNT(*) FROM data_files WHERE version_id = ?", (results[0].id,))[0] == 4


def test_lookups_and_bad_input(db, tmp_path):
    d = make_data(tmp_path / "l", "lookup")
    v = snapshot(d, db=db)
    assert v.id in [x.id for x in list_versions(db=db)]
    assert list_versions(db=db, limit=1)[0].created_at >= v.created_at
    assert get_version(v.id[:8].upper(), db=db).id == v.id
    with pytest.raises(NotFound, match="parity data list"):
        get_version("ab" * 32, db=db)
    with pytest.raises(NotFound):
        get_version("abcdef0123", db=db)
    with pytest.raises(InvalidInput, match="too short"):
        get_version(v.id[:3], db=db)
    with pytest.raises(InvalidInput, match="not a dataset version id"):
        get_version("../etc/passwd", db=db)
    with pytest.raises(InvalidInput, match="no such file"):
        snapshot([tmp_path / "nope"], db=db)
    (tmp_path / "void").mkdir()
    with pytest.raises(InvalidInput, match="no files"):
        snapshot([tmp_path / "void"], db=db)


def test_cli(url, tmp_path, capsys):
    d = make_data(tmp_path / "cli", "cli")
    assert main(["data", "snapshot", str(d), "--db", url, "-q"]) == 0
    vid = capsys.readouterr().out.strip()
    assert vid == documented_id(d)
    assert main(["data", "snapshot", str(d), "--db", url]) == 0
    assert "already recorded" in capsys.readouterr().out
    assert main(["data", "list", "--db", url]) == 0
    assert vid[:16] in capsys.readouterr().out
    assert main(["data", "show", vid[:12], "--db", url]) == 0
    out = capsys.readouterr().out
    assert "tx.parquet" in out and "user:int64" in out and "sub/labels.csv" in out
    assert main(["data", "show", vid, "--db", url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == vid
    assert main(["data", "verify", vid, "--db", url]) == 0
    assert "every file matches" in capsys.readouterr().out
    (d / "sub" / "labels.csv").write_text("user,label\n1,1\n")
    (d / "README.txt").unlink()
    assert main(["data", "verify", vid, "--db", url]) == 1
    err = capsys.readouterr().err
    assert "changed: sub/labels.csv" in err and "missing: README.txt" in err
    assert main(["data", "verify", vid, "--db", url, "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["missing"] == ["README.txt"]
    assert main(["data", "show", "ab" * 32, "--db", url]) == 1
    assert "no dataset version" in capsys.readouterr().err
