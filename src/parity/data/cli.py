"""`parity data snapshot | verify | list | show`."""

from __future__ import annotations

import argparse
import json
import sys
import time


def add_commands(subparsers) -> None:
    d = subparsers.add_parser("data", help="dataset versions: content-addressed snapshots of data files")
    dsub = d.add_subparsers(dest="data_command", required=True)

    s = dsub.add_parser("snapshot", help="record a version of files and directories (id = hash of their content and names)")
    s.add_argument("paths", nargs="+", metavar="PATH", help="files or directories (a directory: every file under it)")
    s.add_argument("--root", help="the directory file names are relative to (default: the arguments' common directory)")
    _db(s)
    bar = s.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None, help="always show a progress bar")
    bar.add_argument("--no-progress", dest="progress", action="store_false", help="never show a progress bar")
    s.add_argument("--json", action="store_true", help="print the manifest as JSON")
    s.add_argument("-q", "--quiet", action="store_true", help="print only the version id")
    s.set_defaults(func=_snapshot)

    v = dsub.add_parser("verify", help="check that a version's files still hold the same bytes (exit 0: they do, 1: they do not)")
    v.add_argument("id", help="a version id or a unique prefix of it")
    v.add_argument("--root", help="where the files are (default: where the version was last snapshotted)")
    _db(v)
    vbar = v.add_mutually_exclusive_group()
    vbar.add_argument("--progress", dest="progress", action="store_true", default=None)
    vbar.add_argument("--no-progress", dest="progress", action="store_false")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=_verify)

    ls = dsub.add_parser("list", help="recorded versions, newest first")
    _db(ls)
    ls.add_argument("--limit", type=int, help="at most this many")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_list)

    sh = dsub.add_parser("show", help="a version's manifest: files, sizes, sha256, schema and rows")
    sh.add_argument("id", help="a version id or a unique prefix of it")
    _db(sh)
    sh.add_argument("--json", action="store_true")
    sh.set_defaults(func=_show)


def _db(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", help="metadata database URL (default: $PARITY_DB or sqlite:///$PARITY_HOME/metadata.db)")


def _snapshot(args: argparse.Namespace) -> int:
    from parity.data.versions import snapshot
    from parity.tracking.tables import human_bytes

    v = snapshot(
        args.paths, db=args.db, root=args.root, progress=False if args.quiet and args.progress is None else args.progress
    )
    if args.json:
        print(json.dumps(v.to_json(), indent=1))
    elif args.quiet:
        print(v.id)
    else:
        rows = f", {v.total_rows:,} rows" if v.total_rows is not None else ""
        state = "recorded" if v.created else "already recorded (same content)"
        print(f"dataset version {v.id}: {len(v.files)} files, {human_bytes(v.total_bytes)}{rows} under {v.root}; {state}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from parity.data.versions import verify

    r = verify(args.id, db=args.db, root=args.root, progress=args.progress)
    if args.json:
        print(json.dumps(r.to_json(), indent=1))
        return 0 if r.ok else 1
    if r.ok:
        print(f"dataset version {r.id}: every file matches under {r.root}")
        return 0
    print(f"dataset version {r.id}: the files under {r.root} do NOT match", file=sys.stderr)
    for what, names in (("changed", r.changed), ("missing", r.missing), ("added", r.added)):
        for name in names:
            print(f"  {what}: {name}", file=sys.stderr)
    return 1


def _list(args: argparse.Namespace) -> int:
    from parity.data.versions import list_versions
    from parity.tracking.tables import human_bytes, table

    versions = list_versions(db=args.db, limit=args.limit)
    if args.json:
        print(json.dumps([{k: v for k, v in x.to_json().items() if k != "files"} for x in versions], indent=1))
        return 0
    if not versions:
        print("no dataset versions recorded; `parity data snapshot PATH...` records one")
        return 0
    rows = [
        (v.id[:16], _when(v.created_at), len(v.files), human_bytes(v.total_bytes), v.total_rows, v.root)
        for v in versions
    ]  # fmt: skip
    print(table(["ID", "CREATED (UTC)", "FILES", "SIZE", "ROWS", "LAST SEEN AT"], rows, max_width=80))
    return 0


def _show(args: argparse.Namespace) -> int:
    from parity.data.versions import get_version
    from parity.tracking.tables import human_bytes, table

    v = get_version(args.id, db=args.db)
    if args.json:
        print(json.dumps(v.to_json(), indent=1))
        return 0
    print(f"dataset version {v.id}")
    print(f"  created   {_when(v.created_at)} UTC")
    print(f"  last seen {v.root} (arguments: {' '.join(v.inputs)})")
    print(
        f"  {len(v.files)} files, {human_bytes(v.total_bytes)}" + (f", {v.total_rows:,} rows" if v.total_rows is not None else "")
    )
    print()
    rows = []
    for f in v.files:
        schema = ", ".join(f"{c['name']}:{c['type']}" for c in f.schema) if f.schema else (f.note or "-")
        rows.append((f.name, f.size, f.sha256[:16], f.format, f.rows, schema))
    print(table(["FILE", "BYTES", "SHA256", "FORMAT", "ROWS", "SCHEMA"], rows, max_width=100))
    return 0


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))
