"""`parity monitor ...`: the monitoring report.

    parity monitor report --server http://localhost:8000 --output report.html
    parity monitor report --input monitoring.json --output report.html

``--server`` fetches ``GET {URL}/v1/monitoring`` (the JSON described in parity.monitoring.report);
``--input`` reads the same JSON from a file (``-`` for standard input).  Hooked into `parity` by
parity.cli.build_parser via ``add_commands(subparsers)``; ``python -m parity.monitoring.cli`` runs
it on its own.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

from parity.errors import InvalidInput, Unavailable


def add_commands(subparsers) -> None:
    m = subparsers.add_parser("monitor", help="monitoring: drift, data quality, performance and SLO reports")
    msub = m.add_subparsers(dest="monitor_command", required=True)
    r = msub.add_parser("report", help="write an HTML report (histograms against the reference, tests, performance, SLOs)")
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("--server", metavar="URL", help="a Parity server's HTTP address: fetches GET URL/v1/monitoring")
    src.add_argument("--input", metavar="FILE", help="a saved monitoring JSON document ('-' for standard input)")
    r.add_argument(
        "--output",
        "-o",
        default="monitoring-report.html",
        help="the HTML file to write (default monitoring-report.html; '-' for standard output)",
    )
    r.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the server (default 30)")
    r.add_argument("--save-json", metavar="FILE", help="also write the fetched JSON document here")
    r.set_defaults(func=_report)


def fetch(server: str, timeout: float = 30.0) -> dict:
    """GET {server}/v1/monitoring as a dict."""
    if not server.startswith(("http://", "https://")):
        server = "http://" + server
    url = server.rstrip("/") + "/v1/monitoring"
    req = urllib.request.Request(url, headers={"Accept": "application/json", "User-Agent": "parity-monitor/1"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read()
    except urllib.error.HTTPError as e:
        detail = e.read()[:300].decode("utf-8", "replace")
        e.close()
        raise Unavailable(f"GET {url} answered HTTP {e.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as e:
        raise Unavailable(f"could not reach {url}: {getattr(e, 'reason', e)}") from None
    try:
        doc = json.loads(body)
    except ValueError as e:
        raise InvalidInput(f"GET {url} did not answer JSON: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidInput(f"GET {url} answered a JSON {type(doc).__name__}, not an object")
    return doc


def _load(path: str) -> dict:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise InvalidInput(f"cannot read {path}: {e.strerror or e}") from None
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise InvalidInput(f"{path} is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidInput(f"{path} holds a JSON {type(doc).__name__}, not an object")
    return doc


def _report(args: argparse.Namespace) -> int:
    from parity.monitoring.report import render_report

    doc = fetch(args.server, args.timeout) if args.server else _load(args.input)
    if args.save_json:
        Path(args.save_json).write_text(json.dumps(doc, indent=1), encoding="utf-8")
    html = render_report(doc)
    if args.output == "-":
        sys.stdout.write(html)
        return 0
    out = Path(args.output)
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html, encoding="utf-8")
    models = doc.get("models") if isinstance(doc.get("models"), list) else []
    print(f"wrote {out} ({len(models)} model version(s), {len(html):,} bytes)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="parity")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (InvalidInput, Unavailable) as e:
        print(f"parity monitor: {e.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
