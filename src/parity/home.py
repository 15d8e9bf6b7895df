"""Where Parity keeps its metadata and artifacts when nothing else is said.

    PARITY_HOME      a directory (default: ./.parity)
    PARITY_DB        the metadata database URL (default: sqlite:///$PARITY_HOME/metadata.db);
                     postgresql://user@host:5432/dbname for shared use
    PARITY_ARTIFACTS the artifact store (default: $PARITY_HOME/artifacts)

Every command that reads or writes metadata also takes --db / --artifacts, which win.
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    return Path(os.environ.get("PARITY_HOME") or ".parity")


def default_db_url() -> str:
    return os.environ.get("PARITY_DB") or f"sqlite:///{home() / 'metadata.db'}"


def default_artifact_root() -> str:
    return os.environ.get("PARITY_ARTIFACTS") or str(home() / "artifacts")


__all__ = ["home", "default_db_url", "default_artifact_root"]
