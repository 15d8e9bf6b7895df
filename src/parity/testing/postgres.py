"""Throwaway PostgreSQL databases for tests: each test module gets its own, dropped afterwards.

    with temporary_database() as url:      # postgresql://postgres@127.0.0.1:5432/parity_test_<random>
        db = Database.open(url)

The server is the one named by PARITY_TEST_POSTGRES (default postgresql://postgres@127.0.0.1:5432/postgres,
trust authentication).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

BASE = os.environ.get("PARITY_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


@contextlib.contextmanager
def temporary_database(prefix: str = "parity_test") -> Iterator[str]:
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(BASE, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = BASE.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(BASE, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
