"""Dataset versions: content-addressed snapshots of data files, their manifests in the metadata
database, and verification that the files still match (see `parity.data.versions` for the id rule).

    from parity.data import snapshot, verify
    v = snapshot(["data/transactions/"], db="sqlite:///.parity/metadata.db")
    verify(v.id, db=...).ok
"""

from parity.data.versions import (
    DatasetVersion,
    FileEntry,
    VerifyResult,
    get_version,
    list_versions,
    snapshot,
    verify,
    version_id,
)

__all__ = ["DatasetVersion", "FileEntry", "VerifyResult", "get_version", "list_versions", "snapshot", "verify", "version_id"]
