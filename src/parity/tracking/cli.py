"""`parity runs list | show | compare | end | export | serve`."""

from __future__ import annotations

import argparse
import json


def add_commands(subparsers) -> None:
    r = subparsers.add_parser("runs", help="experiment tracking: list, show and compare runs")
    rsub = r.add_subparsers(dest="runs_command", required=True)

    ls = rsub.add_parser("list", help="runs, newest first, with their params and final metrics")
    ls.add_argument("--experiment", help="only this experiment's runs")
    ls.add_argument("--status", choices=["RUNNING", "FINISHED", "FAILED", "KILLED"], type=str.upper)
    ls.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    _common(ls)
    ls.set_defaults(func=_list)

    sh = rsub.add_parser("show", help="one run: status, code and data versions, params, metrics, artifacts")
    sh.add_argument("id", help="a run id or a unique prefix of it (6+ hex digits)")
    _common(sh)
    sh.set_defaults(func=_show)

    cmp = rsub.add_parser("compare", help="runs side by side; rows whose values differ are marked with *")
    cmp.add_argument("ids", nargs="+", metavar="ID", help="two or more run ids (or unique prefixes)")
    _common(cmp)
    cmp.set_defaults(func=_compare)

    end = rsub.add_parser("end", help="mark a RUNNING run as ended, e.g. KILLED when its process died")
    end.add_argument("id")
    end.add_argument("--status", default="KILLED", choices=["FINISHED", "FAILED", "KILLED"], type=str.upper)
    end.add_argument("--reason", help="recorded as the run's error text")
    end.add_argument("--db", help=_DB_HELP)
    end.set_defaults(func=_end)

    ex = rsub.add_parser("export", help="copy a run into MLflow (needs mlflow or mlflow-skinny installed)")
    ex.add_argument("id")
    ex.add_argument("--mlflow", required=True, metavar="TRACKING_URI", help="e.g. http://mlflow:5000 or file:///path/mlruns")
    ex.add_argument("--experiment", help="the MLflow experiment (default: the run's)")
    ex.add_argument("--force", action="store_true", help="export again even if this run was exported before")
    ex.add_argument("--db", help=_DB_HELP)
    ex.set_defaults(func=_export)

    sv = rsub.add_parser("serve", help="serve the runs as JSON over HTTP: /v1/runs, /v1/runs/{id}, /v1/runs/compare?ids=a,b")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    sv.add_argument("--port", type=int, default=8090, help="port (default 8090; 0 picks a free one)")
    sv.add_argument("--db", help=_DB_HELP)
    sv.set_defaults(func=_serve)


_DB_HELP = "metadata database URL (default: $PARITY_DB or sqlite:///$PARITY_HOME/metadata.db)"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", help=_DB_HELP)
    p.add_argument("--json", action="store_true", help="print the same JSON as the HTTP API")


def _list(args: argparse.Namespace) -> int:
    from parity.tracking.api import runs_json
    from parity.tracking.tables import table

    body = runs_json(args.db, experiment=args.experiment, status=args.status, limit=args.limit)
    if args.json:
        print(json.dumps(body, indent=1))
        return 0
    runs = body["runs"]
    if not runs:
        print("no runs recorded" + (f" in experiment {args.experiment}" if args.experiment else ""))
        return 0
    metric_names = sorted({k for r in runs for k in r["metrics"]})[:6]
    headers = ["ID", "EXPERIMENT", "NAME", "STATUS", "STARTED (UTC)", "DURATION", "PARAMS", *metric_names]
    rows = []
    for r in runs:
        params = " ".join(f"{k}={_short(v)}" for k, v in r["params"].items())
        rows.append([r["id"][:12], r["experiment"], r["name"], r["status"], r["started_at"][:19].replace("T", " "),
                     _duration(r["duration_s"]), params, *[r["metrics"].get(m) for m in metric_names]])  # fmt: skip
    print(table(headers, rows, max_width=40))
    return 0


def _show(args: argparse.Namespace) -> int:
    from parity.tracking.api import run_json
    from parity.tracking.tables import human_bytes, table

    r = run_json(args.db, args.id, history=args.json)
    if args.json:
        print(json.dumps(r, indent=1))
        return 0
    env = r["environment"]
    print(f"run {r['id']}" + (f" ({r['name']})" if r["name"] else ""))
    print(f"  experiment  {r['experiment']}")
    print(
        f"  status      {r['status']}  started {r['started_at']}, "
        f"{'ran' if r['ended_at'] else 'running for'} {_duration(r['duration_s'])}"
    )
    if r["error"]:
        print(f"  error       {r['error']}")
    print(f"  code        {_code(r['code'])}" + (f", branch {env['git_branch']}" if env.get("git_branch") else ""))
    print(f"  host        {env.get('host')} (pid {env.get('pid')}, user {env.get('user')}, python {env.get('python')})")
    if env.get("gpus"):
        print(f"  gpus        {', '.join(env['gpus'])}")
    if r["datasets"]:
        print(f"  datasets    {', '.join(d['id'][:16] + ' (' + d['role'] + ')' for d in r['datasets'])}")
    if r["tags"]:
        print(f"  tags        {', '.join(f'{k}={v}' for k, v in r['tags'].items())}")
    if r["params"]:
        print("\nparams")
        print(_indent(table(["NAME", "VALUE"], sorted(r["params"].items()), max_width=80)))
    summary = r["metric_summary"]
    for title, names in (
        ("metrics", [k for k in summary if not k.startswith("system/")]),
        ("system metrics", [k for k in summary if k.startswith("system/")]),
    ):
        if names:
            print(f"\n{title}")
            rows = [
                [k, _f(summary[k]["last"]), summary[k]["step"], _f(summary[k]["min"]), _f(summary[k]["max"]), summary[k]["count"]]
                for k in sorted(names)
            ]
            print(_indent(table(["NAME", "LAST", "STEP", "MIN", "MAX", "VALUES"], rows)))
    if r["artifacts"]:
        print(f"\nartifacts (in {r['artifact_root']})")
        rows = [[a["name"], human_bytes(a["size"]), a["sha256"][:16]] for a in r["artifacts"]]
        print(_indent(table(["NAME", "SIZE", "SHA256"], rows, max_width=80)))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from parity.tracking.api import compare_json
    from parity.tracking.tables import table

    body = compare_json(args.db, args.ids)
    if args.json:
        print(json.dumps(body, indent=1))
        return 0
    runs = body["runs"]

    def row(label: str, values: list, differs: bool | None = None) -> list:
        if differs is None:
            differs = len({json.dumps(v, sort_keys=True, default=str) for v in values}) > 1
        return ["*" if differs else "", label, *values]

    rows = [
        row("experiment", [r["experiment"] for r in runs]),
        row("name", [r["name"] for r in runs]),
        row("status", [r["status"] for r in runs]),
        ["", "duration", *[_duration(r["duration_s"]) for r in runs]],
        row("code", [_code(r["code"], short=True) for r in runs]),
        row("datasets", [" ".join(d["id"][:12] for d in r["datasets"]) or None for r in runs]),
    ]
    if body["params"]:
        rows.append(["", "-- params", *[""] * len(runs)])
        rows += [row(p["name"], [_short(v) for v in p["values"]], p["differs"]) for p in body["params"]]
    if body["metrics"]:
        rows.append(["", "-- metrics (last step)", *[""] * len(runs)])
        rows += [row(m["name"], [_f(v) for v in m["values"]], m["differs"]) for m in body["metrics"]]
    print(table(["", "RUN", *[r["id"][:12] for r in runs]], rows, max_width=40))
    print("\n* the runs differ")
    return 0


def _end(args: argparse.Namespace) -> int:
    from parity.tracking.run import set_run_status

    rid = set_run_status(args.id, args.status, db=args.db, reason=args.reason)
    print(f"run {rid}: {args.status}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from parity.tracking.mlflow_export import export_to_mlflow

    mid = export_to_mlflow(args.id, args.mlflow, db=args.db, experiment=args.experiment, force=args.force)
    print(f"exported to MLflow run {mid} at {args.mlflow}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from parity.tracking.http import make_server

    server = make_server(args.db or _default_db(), args.host, args.port)
    host, port = server.server_address[:2]
    print(f"serving runs on http://{host}:{port}/v1/runs (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _default_db() -> str:
    from parity.home import default_db_url

    return default_db_url()


def _code(code: dict, short: bool = False) -> str:
    if not code.get("git_commit"):
        return "not a git work tree"
    c = code["git_commit"][:12] if short else code["git_commit"]
    if code.get("git_dirty"):
        return (
            f"{c} dirty (diff {code['git_diff_sha256'][:12]})"
            if short
            else f"git {c}, dirty (diff sha256 {code['git_diff_sha256']})"
        )
    return c if short else f"git {c}, clean"


def _duration(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 60:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


def _f(v):
    """API numbers back to floats for the table ('NaN' strings included)."""
    if isinstance(v, str) and v in ("NaN", "Infinity", "-Infinity"):
        return float(v.replace("Infinity", "inf"))
    return v


def _short(v) -> str:
    return v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())
