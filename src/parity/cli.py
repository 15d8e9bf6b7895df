"""The `parity` command."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from parity.errors import ConfigError, ParityError


def _serve(args: argparse.Namespace) -> int:
    from parity.config import load_server_config
    from parity.serving.app import run_server

    overrides = {
        "model_repository": args.model_repository,
        "host": args.host,
        "http_port": args.http_port,
        "grpc_port": args.grpc_port,
        "workers": args.workers,
        "model_control_mode": args.model_control_mode,
        "repository_poll_secs": args.repository_poll_secs,
        "admin_token": args.admin_token or os.environ.get("PARITY_ADMIN_TOKEN") or None,
        "max_body_bytes": args.max_body_bytes,
        "log_level": args.log_level,
        "grpc_transport": args.grpc_transport,
        "tls_cert_file": args.tls_cert,
        "tls_key_file": args.tls_key,
        "feature_repository": args.feature_repository,
        "online_store": args.online_store,
        "monitor_window_rows": args.monitor_window_rows,
        "monitor_time_window_secs": args.monitor_time_window_secs,
        "monitor_false_alarm_rate": args.monitor_false_alarm_rate,
        "slo_sample_secs": args.slo_sample_secs,
        "alert_webhooks": args.alert_webhook,
        "feature_log_dir": args.feature_log,
        "feature_log_sample_rate": args.feature_log_sample_rate,
        "feature_verify_secs": args.feature_verify_secs,
        "feature_verify_repository": args.feature_verify_repo,
        "routes": args.routes,
        "retraining": args.retraining,
        "registry_db": args.db,
        "registry_artifacts": args.artifacts,
        "registry_poll_secs": args.registry_poll_secs,
    }
    try:
        config = load_server_config(args.config, overrides)
    except ConfigError as e:
        print(f"parity serve: {e.message}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, config.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s",
    )
    try:
        return run_server(config)
    except ConfigError as e:
        print(f"parity serve: {e.message}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"parity serve: {e}; is another server using the port? choose others with --http-port/--grpc-port", file=sys.stderr)
        return 1


def _features_materialize(args: argparse.Namespace) -> int:
    from parity.features.definitions import FeatureRepository
    from parity.features.materialize import Watermarks, materialize
    from parity.features.online import open_online_store

    repo = FeatureRepository.load(args.repo)
    marks = Watermarks(args.state) if args.state else Watermarks(Path(args.repo).with_suffix(".watermarks.json"))
    if args.incremental and args.start:
        print("parity features materialize: --incremental continues from the stored watermark; drop --start", file=sys.stderr)
        return 2
    with open_online_store(args.online_store) as store:
        runs = materialize(
            repo, store, args.views or None,
            start=_parse_time(args.start), end=_parse_time(args.end), incremental=args.incremental, watermarks=marks,
        )  # fmt: skip
    for r in runs:
        since = "the beginning" if r.start_us is None else _iso(r.start_us)
        print(f"{r.view}: {r.rows:,} entities written in {r.seconds:.1f}s (rows available after {since}, up to {_iso(r.end_us)})")
    return 0


def _features_push(args: argparse.Namespace) -> int:
    import json

    from parity.features.definitions import FeatureRepository
    from parity.features.online import open_online_store
    from parity.features.push import check_push_request, push

    repo = FeatureRepository.load(args.repo)
    path = Path(args.rows)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        rows = {name: table.column(name).to_pylist() for name in table.column_names}
    else:
        try:
            rows = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            print(f"parity features push: cannot read {path}: {e}", file=sys.stderr)
            return 2
    check_push_request(args.view, rows)
    with open_online_store(args.online_store) as store:
        done = push(repo, store, args.view, rows)
    print(f"{done.view}: {done.rows:,} rows pushed, {done.entities:,} entities written online" + (f", logged in {done.file}" if done.file else ""))
    return 0


def _features_verify(args: argparse.Namespace) -> int:
    import json

    from parity.features.definitions import FeatureRepository
    from parity.features.skew import verify

    repo = FeatureRepository.load(args.repo)
    services = [args.service] if args.service else sorted(p.name for p in Path(args.log).iterdir() if p.is_dir()) if Path(args.log).is_dir() else []
    if not services:
        print(f"parity features verify: no served-feature log under {args.log}; serve with --feature-log {args.log}", file=sys.stderr)
        return 2
    worst = 0.0
    reports = []
    for service in services:
        r = verify(repo, args.log, service)
        reports.append(r.to_dict())
        worst = max(worst, r.mismatch_rate)
        if not args.json:
            print(f"{service}: {r.rows:,} served rows checked, {r.mismatched_rows:,} differ from the training path ({100 * r.mismatch_rate:.2f}%)")
            for name, f in r.features.items():
                if f["mismatches"]:
                    print(f"  {name}: {f['mismatches']:,} ({100 * f['rate']:.2f}%), e.g. {f['examples'][0]}")
    if args.json:
        print(json.dumps(reports, indent=1, default=str))
    return 0 if worst <= args.max_mismatch_rate else 1


def _features_get(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    from parity.features.definitions import FeatureRepository
    from parity.features.online import open_online_store
    from parity.features.retrieval import FeatureServer

    repo = FeatureRepository.load(args.repo)
    entities: dict[str, list] = {}
    for item in args.entity:
        key, _, value = item.partition("=")
        entities.setdefault(key, []).append(int(value) if value.lstrip("-").isdigit() else value)
    request: dict[str, list] = {}
    for item in args.value or ():
        key, _, value = item.partition("=")
        request.setdefault(key, []).append(int(value) if value.lstrip("-").isdigit() else float(value))
    with open_online_store(args.online_store) as store:
        got = FeatureServer(repo, store).get_online_features(args.features, entities, request or None)
    rows = []
    for i in range(got.rows):
        row = {}
        for name in got.names:
            v = got.values[name][i]
            row[name] = {
                "value": None if got.nulls[name][i] else (v.item() if isinstance(v, np.generic) else v),
                "status": got.status_names(name)[i],
                "age_s": None if got.age_ns[name][i] < 0 else got.age_ns[name][i] / 1e9,
            }
        rows.append(row)
    print(json.dumps(rows, indent=1))
    return 0


def _iso(us: int) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(us / 1e6, tz=timezone.utc).isoformat(timespec="seconds")


def _parse_time(value: str | None):
    if value is None:
        return None
    from datetime import datetime, timezone

    t = datetime.fromisoformat(value)
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _demo(args: argparse.Namespace) -> int:
    from parity.demo import run_demo

    return run_demo()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parity", description="Parity model server")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve every model in a model repository over gRPC and HTTP")
    s.add_argument("--model-repository", type=Path, help="directory laid out as <model>/config.yaml and <model>/<version>/model.*")
    s.add_argument("--config", type=Path, help="server config YAML (flags override it)")
    s.add_argument("--host", help="address to bind (default 0.0.0.0)")
    s.add_argument("--http-port", type=int, help="HTTP port (default 8000; 0 picks a free one)")
    s.add_argument("--grpc-port", type=int, help="gRPC port (default 8001; 0 picks a free one)")
    s.add_argument("--workers", type=int, help="serving processes sharing the ports (default 1)")
    s.add_argument("--model-control-mode", choices=["none", "poll", "explicit"], help="poll: pick up new versions by polling (default)")
    s.add_argument("--repository-poll-secs", type=float, help="seconds between repository polls (default 5)")
    s.add_argument("--admin-token", help="token for repository load/unload (or PARITY_ADMIN_TOKEN)")
    s.add_argument("--max-body-bytes", type=int, help="largest request body or message (default 64 MiB)")
    s.add_argument("--grpc-transport", choices=["fast", "grpcio"], help="fast: Parity's own HTTP/2 layer; grpcio: the reference")
    s.add_argument("--tls-cert", help="PEM certificate: gRPC is served over TLS (ALPN h2)")
    s.add_argument("--tls-key", help="PEM private key of --tls-cert")
    s.add_argument("--feature-repository", help="a feature repository module: serves POST /v1/features/online")
    s.add_argument("--online-store", help="sqlite:///PATH (default ./parity_online.db) or redis://HOST:PORT/DB?prefix=P")
    s.add_argument("--monitor-window-rows", type=int, help="drift monitoring: rows per count window (default 5000)")
    s.add_argument("--monitor-time-window-secs", type=float, help="drift monitoring: seconds per time window (default 300)")
    s.add_argument("--monitor-false-alarm-rate", type=float, help="drift monitoring: false alarms per window (default 0.01)")
    s.add_argument("--slo-sample-secs", type=float, help="SLO tracking: seconds between samples of the request counters (default 10)")
    s.add_argument("--alert-webhook", action="append", help="POST every alarm to this URL (repeat for more)")
    s.add_argument("--feature-log", help="skew monitor: log a sample of the feature vectors feature-joined models are given under this directory")
    s.add_argument("--feature-verify-secs", type=float, help="skew monitor: recompute the logged vectors through the training path this often (0: off)")
    s.add_argument("--feature-verify-repo", help="skew monitor: the training side's feature repository (default: the served one)")
    s.add_argument("--feature-log-sample-rate", type=float, help="the share of rows logged (default 0.01)")
    s.add_argument("--routes", help="serve from the model registry: a directory of routing files, one YAML per endpoint (docs/routing.md)")
    s.add_argument("--retraining", help="a retraining controller config: sustained drift or degraded performance -> train, gate, canary (docs/monitoring.md)")
    s.add_argument("--db", help="the registry's database (default: $PARITY_DB or sqlite:///.parity/metadata.db)")
    s.add_argument("--artifacts", help="the registry's artifact store (default: $PARITY_ARTIFACTS or .parity/artifacts)")
    s.add_argument("--registry-poll-secs", type=float, help="how often aliases and routing files are checked (default 2)")
    s.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    s.set_defaults(func=_serve)
    f = sub.add_parser("features", help="the feature store: materialize views, read online features")
    fsub = f.add_subparsers(dest="features_command", required=True)
    m = fsub.add_parser("materialize", help="write each view's latest values (as of --end, default now) into the online store")
    m.add_argument("--repo", required=True, help="the feature repository module (e.g. configs/features/example_repo.py)")
    m.add_argument("--online-store", default="sqlite://", help="sqlite:///PATH (default: ./parity_online.db) or redis://HOST:PORT/DB?prefix=P")
    m.add_argument("--views", nargs="*", help="only these feature views (default: all)")
    m.add_argument("--start", help="only rows available after this UTC time (ISO 8601)")
    m.add_argument("--end", help="rows available up to this UTC time (ISO 8601; default now)")
    m.add_argument("--incremental", action="store_true", help="continue from each view's watermark (the end of its last run)")
    m.add_argument("--state", help="watermark file (default: next to the repository module)")
    m.set_defaults(func=_features_materialize)
    p = fsub.add_parser("push", help="push fresh source rows to a feature view: transformed, logged for training, written online")
    p.add_argument("--repo", required=True, help="the feature repository module")
    p.add_argument("--online-store", default="sqlite://", help="sqlite:///PATH (default: ./parity_online.db) or redis://HOST:PORT/DB?prefix=P")
    p.add_argument("--view", required=True, help="the feature view")
    p.add_argument("--rows", required=True, help='a JSON file {"column": [values, ...]} or a Parquet file of source rows')
    p.set_defaults(func=_features_push)
    v = fsub.add_parser("verify", help="skew check: recompute logged served feature vectors through the training path and compare")
    v.add_argument("--repo", required=True, help="the feature repository module (the training side)")
    v.add_argument("--log", required=True, help="the served-feature log directory (parity serve --feature-log DIR)")
    v.add_argument("--service", help="only this feature service (default: every service in the log)")
    v.add_argument("--max-mismatch-rate", type=float, default=0.0, help="exit 1 when a service's mismatch rate is above this (default 0)")
    v.add_argument("--json", action="store_true", help="print the reports as JSON")
    v.set_defaults(func=_features_verify)
    g = fsub.add_parser("get", help="read online features for entities, as JSON")
    g.add_argument("--repo", required=True)
    g.add_argument("--online-store", default="sqlite://")
    g.add_argument("--features", required=True, help="a feature service name")
    g.add_argument("--entity", action="append", required=True, metavar="KEY=VALUE", help="a join key value (repeat for more rows)")
    g.add_argument("--value", action="append", metavar="FIELD=NUMBER", help="a request value for on-demand views")
    g.set_defaults(func=_features_get)
    from parity.data.cli import add_commands as _add_data_commands
    from parity.tracking.cli import add_commands as _add_runs_commands

    _add_data_commands(sub)
    _add_runs_commands(sub)
    from parity.registry.cli import add_commands as add_registry_commands

    add_registry_commands(sub)
    from parity.monitoring.cli import add_commands as add_monitor_commands

    add_monitor_commands(sub)
    from parity.training.cli import add_commands as add_gate_commands

    add_gate_commands(sub)
    from parity.training.train_cli import add_commands as add_train_commands

    add_train_commands(sub)
    d = sub.add_parser("demo", help="export a model, serve it, query it over gRPC and HTTP, print the metrics, stop")
    d.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"parity {args.command}: {e.message}", file=sys.stderr)
        return 2
    except ParityError as e:
        print(f"parity {args.command}: {e.message}", file=sys.stderr)
        return 1
