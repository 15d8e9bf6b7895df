"""A standalone JSON server for runs (stdlib http.server), for use without the model server:

    GET /v1/runs[?experiment=X&status=S&limit=N]
    GET /v1/runs/{id}[?history=0]
    GET /v1/runs/compare?ids=a,b[,c...]

Bodies are the dicts of `parity.tracking.api`; errors are {"error": "..."} with the status of the
error (400 bad id or name, 404 unknown run, 503 database unreachable).
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

from parity.errors import NotFound, as_parity_error
from parity.sql import Database
from parity.tracking.api import compare_json, run_json, runs_json

log = logging.getLogger("parity.tracking.http")


def route(db: Database, path: str, query: str) -> dict:
    """The JSON body for a GET of `path?query` (raises ParityError for errors)."""
    q = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    parts = [unquote(p) for p in path.strip("/").split("/")]
    if parts[:2] != ["v1", "runs"] or len(parts) > 3:
        raise NotFound(f"no such path {path}: use /v1/runs, /v1/runs/{{id}} or /v1/runs/compare?ids=a,b")
    if len(parts) == 2:
        limit = int(q["limit"]) if q.get("limit", "").isdigit() else 1000
        return runs_json(db, experiment=q.get("experiment") or None, status=q.get("status") or None, limit=limit)
    if parts[2] == "compare":
        return compare_json(db, [i.strip() for i in q.get("ids", "").split(",") if i.strip()])
    return run_json(db, parts[2], history=q.get("history", "1") not in ("0", "false", "no"))


class _Handler(BaseHTTPRequestHandler):
    server_version = "parity-runs"
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        url = urlsplit(self.path)
        db: Database = self.server.db  # type: ignore[attr-defined]
        try:
            body, status = route(db, url.path, url.query), 200
        except Exception as e:  # noqa: BLE001 - every error becomes a JSON answer
            err = as_parity_error(e)
            body, status = {"error": err.message}, err.http_status
        finally:
            db.close()  # this request thread's connection
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        log.debug("%s " + format, self.address_string(), *args)


def make_server(db: Database | str, host: str = "127.0.0.1", port: int = 8090) -> ThreadingHTTPServer:
    """A bound server (port 0 picks a free one: `server.server_address[1]`); call serve_forever()."""
    from parity.tracking.store import open_db

    database, _ = open_db(db)
    database.close()  # the migrations ran on this thread; requests open their own connections
    server = ThreadingHTTPServer((host, port), _Handler)
    server.daemon_threads = True
    server.db = database  # type: ignore[attr-defined]
    return server


def serve_in_thread(db: Database | str, host: str = "127.0.0.1", port: int = 0) -> tuple[ThreadingHTTPServer, threading.Thread]:
    server = make_server(db, host, port)
    t = threading.Thread(target=server.serve_forever, name="parity-runs-http", daemon=True)
    t.start()
    return server, t


__all__ = ["route", "make_server", "serve_in_thread"]
