"""`parity registry ...`: register versions, list and show them, move aliases, print the audit log.

Hooked into `parity` by parity.cli.build_parser via `add_commands(subparsers)`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from parity.errors import InvalidInput


def add_commands(subparsers) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", help="metadata database: sqlite:///PATH or postgresql://USER@HOST:PORT/DB (default: $PARITY_DB or sqlite:///.parity/metadata.db)")
    common.add_argument("--artifacts", help="artifact store: a directory or an fsspec URL (default: $PARITY_ARTIFACTS or .parity/artifacts)")
    who = argparse.ArgumentParser(add_help=False)
    who.add_argument("--actor", help="who is acting (default: $PARITY_ACTOR or the login name)")

    r = subparsers.add_parser("registry", help="the model registry: versions, aliases, artifacts, the audit log")
    rsub = r.add_subparsers(dest="registry_command", required=True)

    p = rsub.add_parser("register", parents=[common, who], help="store artifacts and record a new version of a model")
    p.add_argument("name", help="the model's name")
    p.add_argument("--artifact", action="append", required=True, metavar="[NAME=]PATH",
                   help="an ONNX (.onnx) or TorchScript (.pt) file; stored as model.onnx / model.pt unless NAME= is given (repeatable)")
    p.add_argument("--metric", action="append", default=[], metavar="NAME=NUMBER", help="an evaluation metric (repeatable)")
    p.add_argument("--tag", action="append", default=[], metavar="NAME=TEXT", help="a tag (repeatable)")
    p.add_argument("--signature", type=Path, help="JSON file {inputs: [...], outputs: [...]} (default: read from the ONNX file)")
    p.add_argument("--profile", type=Path, help="JSON file: the reference profile for drift monitoring")
    p.add_argument("--run-id", help="the training run that made it")
    p.add_argument("--dataset", action="append", default=[], metavar="ID", help="a dataset version it was trained on (repeatable)")
    p.add_argument("--code", type=Path, metavar="DIR", help="record the git commit, dirty flag and diff hash of the work tree at DIR")
    p.add_argument("--description", default="")
    p.add_argument("--reason", default="", help="why it is registered")
    p.set_defaults(func=_register)

    p = rsub.add_parser("list", parents=[common], help="the registered models, or one model's versions")
    p.add_argument("name", nargs="?", help="list this model's versions")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_list)

    p = rsub.add_parser("show", parents=[common], help="one version: NAME, NAME/VERSION or NAME@ALIAS")
    p.add_argument("ref")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_show)

    a = rsub.add_parser("alias", help="point aliases (champion, canary, ...) at versions")
    asub = a.add_subparsers(dest="alias_command", required=True)
    p = asub.add_parser("set", parents=[common, who], help="point NAME@ALIAS at VERSION (recorded in the audit log)")
    p.add_argument("name")
    p.add_argument("alias")
    p.add_argument("version")
    p.add_argument("--reason", required=True, help="why (recorded in the audit log)")
    p.add_argument("--evidence", help="a JSON object, or @FILE holding one (e.g. the promotion gate's result)")
    p.set_defaults(func=_alias_set)
    p = asub.add_parser("delete", parents=[common, who], help="remove NAME@ALIAS (recorded in the audit log)")
    p.add_argument("name")
    p.add_argument("alias")
    p.add_argument("--reason", required=True)
    p.add_argument("--evidence", help="a JSON object, or @FILE holding one")
    p.set_defaults(func=_alias_delete)

    p = rsub.add_parser("history", parents=[common], help="the audit log of a model (or of everything with --all)")
    p.add_argument("name", nargs="?")
    p.add_argument("--all", action="store_true", help="every model's entries")
    p.add_argument("--limit", type=int, help="only the newest N entries")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_history)

    p = rsub.add_parser("fetch", parents=[common], help="copy a version's artifacts, verified, to DEST/<name>/<version>/")
    p.add_argument("ref")
    p.add_argument("dest", type=Path)
    p.set_defaults(func=_fetch)

    p = rsub.add_parser("verify", parents=[common], help="check a version's stored artifacts against their sha256")
    p.add_argument("ref")
    p.set_defaults(func=_verify)

    p = rsub.add_parser("verify-audit", parents=[common], help="check the audit log's hash chain (exit 1 if it was tampered with)")
    p.set_defaults(func=_verify_audit)


def _open(args):
    from parity.registry import Registry

    return Registry.open(args.db, args.artifacts)


def _pairs(values: list[str], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values:
        k, sep, val = v.partition("=")
        if not sep or not k:
            raise InvalidInput(f"--{what} {v!r}: use NAME=VALUE")
        if k in out:
            raise InvalidInput(f"--{what} {k!r} is given twice")
        out[k] = val
    return out


def _json_file(path: Path | None, what: str):
    if path is None:
        return None
    try:
        return json.loads(path.read_text())
    except OSError as e:
        raise InvalidInput(f"--{what} {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise InvalidInput(f"--{what} {path}: not JSON ({e})") from None


def _json_arg(value: str | None, what: str) -> dict | None:
    if value is None:
        return None
    if value.startswith("@"):
        data = _json_file(Path(value[1:]), what)
    else:
        try:
            data = json.loads(value)
        except json.JSONDecodeError as e:
            raise InvalidInput(f"--{what}: not JSON ({e}); pass a JSON object or @FILE") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"--{what} must be a JSON object")
    return data


def _register(args) -> int:
    from parity.registry import Lineage
    from parity.registry.names import artifact_kind

    artifacts: dict[str, str] = {}
    for spec in args.artifact:
        name, sep, path = spec.partition("=")
        if not sep:
            path = spec
            name = "model" + Path(spec).suffix
            artifact_kind(name)
        if name in artifacts:
            raise InvalidInput(f"two artifacts would be stored as {name}; name them: --artifact NAME=PATH")
        artifacts[name] = path
    metrics = {}
    for k, v in _pairs(args.metric, "metric").items():
        try:
            metrics[k] = float(v)
        except ValueError:
            raise InvalidInput(f"--metric {k}={v}: {v!r} is not a number") from None
    if args.code:
        lineage = Lineage.from_git(args.code, run_id=args.run_id, datasets=args.dataset)
    else:
        lineage = Lineage(run_id=args.run_id, datasets=tuple(args.dataset))
    with _open(args) as reg:
        mv = reg.register(
            args.name, artifacts,
            signature=_json_file(args.signature, "signature"), metrics=metrics, profile=_json_file(args.profile, "profile"),
            lineage=lineage, tags=_pairs(args.tag, "tag"), description=args.description, actor=args.actor, reason=args.reason,
        )  # fmt: skip
    print(f"registered {mv.ref} ({', '.join(f'{a.name} sha256:{a.sha256[:12]}' for a in mv.artifacts)})")
    return 0


def _table(headers: list[str], rows: list[list[str]]) -> str:
    rows = [[str(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def _fmt_metrics(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.6g}" for k, v in metrics.items()) or "-"


def _list(args) -> int:
    with _open(args) as reg:
        if args.name:
            versions = reg.versions(args.name)
            if args.json:
                print(json.dumps([v.to_dict() for v in versions], indent=2))
                return 0
            rows = [[v.version, v.created_at[:19].replace("T", " "), v.created_by, ",".join(v.aliases) or "-", _fmt_metrics(v.metrics), v.lineage.run_id or "-"] for v in versions]
            print(_table(["VERSION", "CREATED (UTC)", "BY", "ALIASES", "METRICS", "RUN"], rows))
            return 0
        models = reg.models()
    if args.json:
        print(json.dumps([m.__dict__ for m in models], indent=2))
        return 0
    if not models:
        print("no models registered; add one with: parity registry register NAME --artifact model.onnx")
        return 0
    rows = [[m.name, m.latest_version or "-", m.version_count, " ".join(f"{a}->{v}" for a, v in m.aliases.items()) or "-", m.created_at[:19].replace("T", " ")] for m in models]
    print(_table(["MODEL", "LATEST", "VERSIONS", "ALIASES", "CREATED (UTC)"], rows))
    return 0


def _show(args) -> int:
    with _open(args) as reg:
        mv = reg.resolve(args.ref)
    if args.json:
        print(json.dumps(mv.to_dict(), indent=2))
        return 0
    lin = mv.lineage
    code = "-" if not lin.git_commit else f"{lin.git_commit[:12]}" + (f" (dirty, diff sha256:{(lin.diff_hash or '')[:12]})" if lin.git_dirty else "")
    print(f"{mv.ref}" + (f"  ({', '.join('@' + a for a in mv.aliases)})" if mv.aliases else ""))
    print(f"  created      {mv.created_at} by {mv.created_by}")
    if mv.description:
        print(f"  description  {mv.description}")
    for a in mv.artifacts:
        print(f"  artifact     {a.name}  {a.kind}  {a.size:,} bytes  sha256:{a.sha256}")
    for part in ("inputs", "outputs"):
        for t in mv.signature[part]:
            print(f"  {part[:-1]:<12} {t['name']}  {t['datatype']}  {t['shape']}")
    print(f"  metrics      {_fmt_metrics(mv.metrics)}")
    print(f"  run          {lin.run_id or '-'}")
    print(f"  datasets     {', '.join(lin.datasets) or '-'}")
    print(f"  code         {code}")
    if mv.tags:
        print(f"  tags         {' '.join(f'{k}={v}' for k, v in mv.tags.items())}")
    print(f"  profile      {'stored' if mv.profile is not None else '-'}")
    return 0


def _alias_set(args) -> int:
    with _open(args) as reg:
        before = None
        try:
            before = reg.resolve(f"{args.name}@{args.alias}").version
        except Exception:  # noqa: BLE001 - not set yet (or invalid: set_alias says why)
            pass
        mv = reg.set_alias(args.name, args.alias, args.version, actor=args.actor, reason=args.reason, evidence=_json_arg(args.evidence, "evidence"))
    if before == mv.version:
        print(f"{args.name}@{args.alias} already points at version {mv.version}; nothing changed")
    elif before is None:
        print(f"{args.name}@{args.alias} -> version {mv.version}")
    else:
        print(f"{args.name}@{args.alias} moved from version {before} to {mv.version}")
    return 0


def _alias_delete(args) -> int:
    with _open(args) as reg:
        reg.delete_alias(args.name, args.alias, actor=args.actor, reason=args.reason, evidence=_json_arg(args.evidence, "evidence"))
    print(f"{args.name}@{args.alias} deleted")
    return 0


def _details(e) -> str:
    d = dict(e.details)
    parts = []
    if e.action == "register":
        parts.append(f"v{e.version}")
        parts += [f"{k} sha256:{v[:12]}" for k, v in d.pop("artifacts", {}).items()]
        m = d.pop("metrics", {})
        if m:
            parts.append(_fmt_metrics(m))
    else:
        target = f"@{e.alias}" if e.alias else ""
        if "from" in d and "to" in d:
            parts.append(f"{target} v{d.pop('from')} -> v{d.pop('to')}")
        elif "to" in d:
            parts.append(f"{target} -> v{d.pop('to')}")
        elif "from" in d:
            parts.append(f"{target} (was v{d.pop('from')})")
        elif e.version is not None:
            parts.append(f"{target} v{e.version}".strip())
        elif target:
            parts.append(target)
    parts += [f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in d.items()]
    if e.evidence:
        parts.append("evidence " + json.dumps(e.evidence, separators=(",", ":"), sort_keys=True))
    return " ".join(p for p in parts if p)


def _history(args) -> int:
    if not args.name and not args.all:
        raise InvalidInput("name a model, or pass --all for every model's entries")
    with _open(args) as reg:
        entries = reg.history(None if args.all else args.name, limit=args.limit)
    if args.json:
        print(json.dumps([e.__dict__ for e in entries], indent=2))
        return 0
    rows = [[e.at[:19].replace("T", " "), e.actor, e.action] + ([e.model or "-"] if args.all else []) + [_details(e), e.reason] for e in entries]
    headers = ["TIME (UTC)", "ACTOR", "ACTION"] + (["MODEL"] if args.all else []) + ["DETAILS", "REASON"]
    print(_table(headers, rows))
    return 0


def _fetch(args) -> int:
    with _open(args) as reg:
        path = reg.fetch(args.ref, args.dest)
    print(path)
    return 0


def _verify(args) -> int:
    with _open(args) as reg:
        mv = reg.verify(args.ref)
    print(f"{mv.ref}: {len(mv.artifacts)} artifact(s) match their sha256")
    return 0


def _verify_audit(args) -> int:
    with _open(args) as reg:
        check = reg.verify_audit()
    if check.ok:
        print(f"audit log intact: {check.entries} entries, head sha256:{check.head}")
        return 0
    for p in check.problems:
        print(f"audit log: {p}", file=sys.stderr)
    print(f"audit log TAMPERED: {len(check.problems)} problem(s) in {check.entries} entries", file=sys.stderr)
    return 1
