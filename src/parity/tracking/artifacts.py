"""A content-addressed artifact directory: each file is stored once, under its sha256,

    <root>/sha256/<first two hex digits>/<all 64 hex digits>

written to a temporary file in <root>/tmp first and moved into place atomically, then made
read-only.  Runs record (name, sha256, size); the bytes are shared by every run that logged them.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

from parity.errors import InvalidInput, NotFound

CHUNK = 1 << 20
_HEX64 = re.compile(r"[0-9a-f]{64}")


def object_path(root: str | os.PathLike, sha256: str) -> Path:
    if not _HEX64.fullmatch(sha256 or ""):
        raise InvalidInput(f"{sha256!r} is not a sha256 (64 lowercase hex digits)")
    return Path(root) / "sha256" / sha256[:2] / sha256


def put(root: str | os.PathLike, source: str | os.PathLike) -> tuple[str, int]:
    """Copy `source` into the store (hashing while copying); returns (sha256, size)."""
    root = Path(root)
    tmpdir = root / "tmp"
    tmpdir.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    size = 0
    fd, tmp = tempfile.mkstemp(dir=tmpdir, prefix="put-")
    try:
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            while chunk := src.read(CHUNK):
                h.update(chunk)
                out.write(chunk)
                size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        digest = h.hexdigest()
        dest = object_path(root, digest)
        if dest.is_file() and dest.stat().st_size == size:
            os.unlink(tmp)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(tmp, 0o444)
            os.replace(tmp, dest)
        return digest, size
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def verified_path(root: str | os.PathLike, sha256: str) -> Path:
    """The stored file of `sha256`, after checking that its bytes still hash to it."""
    p = object_path(root, sha256)
    if not p.is_file():
        raise NotFound(f"artifact {sha256} is not in the artifact store {root}; was the store moved? pass its location")
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    if h.hexdigest() != sha256:
        raise InvalidInput(f"artifact {p} is corrupted: its sha256 is {h.hexdigest()}, not {sha256}")
    return p


__all__ = ["put", "object_path", "verified_path"]
