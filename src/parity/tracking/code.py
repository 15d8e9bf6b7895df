"""The code version of a run: git commit, whether the work tree differs from it, and the sha256 of
`git diff HEAD --binary` (staged and unstaged changes of tracked files; untracked files are only
counted).  Outside a git work tree, or without git, every field is None."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class CodeVersion:
    commit: str | None = None
    branch: str | None = None
    dirty: bool | None = None
    diff_sha256: str | None = None
    untracked_files: int | None = None
    diff: bytes | None = None  # the diff itself (kept only in memory; saved as an artifact on request)


def _git(cwd: str, *args: str) -> bytes | None:
    try:
        out = subprocess.run(
            ["git", *args],
            cwd=cwd,
            capture_output=True,
            timeout=30,
            # never take the index lock: other git commands may be running in the same checkout
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def code_version(directory: str | os.PathLike | None = None) -> CodeVersion:
    cwd = os.fspath(directory) if directory is not None else os.getcwd()
    if shutil.which("git") is None or not os.path.isdir(cwd):
        return CodeVersion()
    head = _git(cwd, "rev-parse", "--verify", "HEAD")
    if head is None:
        return CodeVersion()
    branch = _git(cwd, "rev-parse", "--abbrev-ref", "HEAD")
    diff = _git(cwd, "diff", "HEAD", "--binary", "--no-color", "--no-ext-diff")
    untracked = _git(cwd, "ls-files", "--others", "--exclude-standard", "-z")
    return CodeVersion(
        commit=head.decode().strip(),
        branch=branch.decode().strip() if branch else None,
        dirty=None if diff is None else bool(diff),
        diff_sha256=None if diff is None else hashlib.sha256(diff).hexdigest(),
        untracked_files=None if untracked is None else len([p for p in untracked.split(b"\0") if p]),
        diff=diff,
    )


__all__ = ["CodeVersion", "code_version"]
