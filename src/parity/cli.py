"""The `parity` command."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from parity.errors import ConfigError


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
    s.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    s.set_defaults(func=_serve)
    d = sub.add_parser("demo", help="export a model, serve it, query it over gRPC and HTTP, print the metrics, stop")
    d.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
