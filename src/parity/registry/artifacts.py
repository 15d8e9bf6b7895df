"""The content-addressed artifact store: every file is stored once, under its sha256, and
checked against it whenever it is read.

Local directory (the default)::

    ROOT/sha256/ab/ab12...ef      the bytes whose sha256 is ab12...ef (read-only)
    ROOT/tmp/                     files being written (then fsync'ed and renamed into place)

Or an fsspec URL (`s3://bucket/prefix`, `gs://...`, `memory://...`) when the matching fsspec
filesystem package is installed: the same keys under the prefix.

Object paths are made only from a validated hex digest, so no name can lead outside the store; a
local object is opened without following a symlink, and a path that resolves outside the store is
refused.  A file whose bytes no longer match its digest is refused with both digests named.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import uuid
import zipfile
from pathlib import Path
from typing import BinaryIO

from parity.errors import ConfigError, InvalidInput, ModelLoadError, NotFound

CHUNK = 1 << 20
SHA_RE = re.compile(r"^[0-9a-f]{64}$")


class ChecksumMismatch(ModelLoadError):
    """A stored artifact whose bytes do not match the sha256 it was registered with: never served."""

    reason = "checksum_mismatch"


class UnsafeArtifactPath(ModelLoadError):
    """An artifact path that would leave the store (a symlink, or a path resolving elsewhere)."""

    reason = "unsafe_path"


def sha256_file(path: str | os.PathLike) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _check_sha(sha: str) -> str:
    if not isinstance(sha, str) or not SHA_RE.match(sha):
        raise InvalidInput(f"{sha!r} is not a sha256 digest (64 lower-case hex digits)")
    return sha


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _mismatch(label: str, sha: str, size: int, got_sha: str, got_size: int, where: str) -> ChecksumMismatch:
    return ChecksumMismatch(
        f"artifact {label}: checksum mismatch: registered sha256 {sha} ({size} bytes) but the stored object {where} "
        f"has sha256 {got_sha} ({got_size} bytes); it was changed or damaged and is refused: restore the file from a "
        "backup or the original (storing the original bytes again repairs it)"
    )


class ArtifactStore:
    """Base: `put(file) -> (sha256, size)`, `open(sha)`, `copy_to(sha, size, dest, label)`."""

    location: str

    @staticmethod
    def open_store(location: str | os.PathLike) -> "ArtifactStore":
        loc = os.fspath(location)
        if "://" in loc and not loc.startswith("file://"):
            return FsspecStore(loc)
        return LocalStore(Path(loc.removeprefix("file://")).expanduser())

    def put(self, src: str | os.PathLike) -> tuple[str, int]:
        raise NotImplementedError

    def exists(self, sha: str) -> bool:
        raise NotImplementedError

    def _open(self, sha: str) -> tuple[BinaryIO, str]:
        raise NotImplementedError

    def read_verified(self, sha: str, size: int, label: str) -> bytes:
        """The whole object, checked (for small artifacts and tests)."""
        h = hashlib.sha256()
        f, where = self._open(sha)
        with f:
            data = f.read()
        h.update(data)
        if h.hexdigest() != sha or len(data) != size:
            raise _mismatch(label, sha, size, h.hexdigest(), len(data), where)
        return data

    def verify(self, sha: str, size: int, label: str) -> None:
        h, n = hashlib.sha256(), 0
        f, where = self._open(sha)
        with f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
                n += len(chunk)
        if h.hexdigest() != sha or n != size:
            raise _mismatch(label, sha, size, h.hexdigest(), n, where)

    def copy_to(self, sha: str, size: int, dest: Path, label: str) -> None:
        """Write the object to `dest` (temp file, fsync, rename), checking its sha256 on the way;
        on a mismatch nothing is left at `dest`."""
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
        h, n = hashlib.sha256(), 0
        f, where = self._open(sha)
        try:
            with f, open(tmp, "xb") as out:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
                    n += len(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if h.hexdigest() != sha or n != size:
                raise _mismatch(label, sha, size, h.hexdigest(), n, where)
            os.replace(tmp, dest)
        finally:
            if tmp.exists():
                tmp.unlink()


class LocalStore(ArtifactStore):
    def __init__(self, root: Path):
        self.root = Path(root)
        self.location = str(self.root)

    def _path(self, sha: str) -> Path:
        _check_sha(sha)
        return self.root / "sha256" / sha[:2] / sha

    def _inside(self, path: Path) -> None:
        root = os.path.realpath(self.root)
        real = os.path.realpath(path)
        if real != root and not real.startswith(root + os.sep):
            raise UnsafeArtifactPath(
                f"artifact object {path} resolves to {real}, outside the artifact store {root}; refused "
                "(a symlink in the store?): remove it and restore the file"
            )

    def exists(self, sha: str) -> bool:
        return self._path(sha).exists()

    def put(self, src: str | os.PathLike) -> tuple[str, int]:
        src = Path(src)
        if not src.is_file():
            raise InvalidInput(f"artifact file {src} does not exist or is not a file")
        tmpdir = self.root / "tmp"
        try:
            tmpdir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(str(self.root), "artifacts", f"cannot create the artifact store: {e.strerror}") from None
        tmp = tmpdir / f"{uuid.uuid4().hex}.part"
        h, size = hashlib.sha256(), 0
        try:
            with open(src, "rb") as f, open(tmp, "xb") as out:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            sha = h.hexdigest()
            final = self._path(sha)
            final.parent.mkdir(parents=True, exist_ok=True)
            self._inside(final.parent)
            if final.exists() and not final.is_symlink():
                try:
                    self.verify(sha, size, sha)
                    return sha, size  # deduplicated: the same bytes are already stored
                except ChecksumMismatch:
                    pass  # a damaged copy: replaced by these good bytes below
            os.chmod(tmp, 0o444)
            os.replace(tmp, final)  # atomic; a racing writer of the same bytes writes the same file
            _fsync_dir(final.parent)
            return sha, size
        finally:
            if tmp.exists():
                tmp.unlink()

    def _open(self, sha: str) -> tuple[BinaryIO, str]:
        path = self._path(sha)
        if not path.exists() and not path.is_symlink():
            raise NotFound(f"artifact object {sha} is missing from the artifact store {self.root}; restore it from a backup")
        self._inside(path.parent)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise UnsafeArtifactPath(f"artifact object {path} is a symlink; refused: replace it with the file itself") from None
            raise
        return os.fdopen(fd, "rb"), str(path)


class FsspecStore(ArtifactStore):
    def __init__(self, url: str):
        try:
            import fsspec
        except ImportError:
            raise ConfigError(url, "artifacts", "an fsspec URL needs the fsspec package: pip install fsspec (and s3fs/gcsfs for the cloud)") from None
        try:
            self.fs, self.prefix = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as e:
            raise ConfigError(url, "artifacts", f"cannot open this artifact store: {e}") from None
        self.prefix = self.prefix.rstrip("/")
        self.location = url

    def _key(self, sha: str) -> str:
        _check_sha(sha)
        return f"{self.prefix}/sha256/{sha[:2]}/{sha}"

    def exists(self, sha: str) -> bool:
        return self.fs.exists(self._key(sha))

    def put(self, src: str | os.PathLike) -> tuple[str, int]:
        src = Path(src)
        if not src.is_file():
            raise InvalidInput(f"artifact file {src} does not exist or is not a file")
        sha, size = sha256_file(src)
        key = self._key(sha)
        if self.fs.exists(key):
            try:
                self.verify(sha, size, sha)
                return sha, size
            except ChecksumMismatch:
                pass
        # an object store's PUT is atomic: readers see the old object or the whole new one
        self.fs.put_file(str(src), key)
        return sha, size

    def _open(self, sha: str) -> tuple[BinaryIO, str]:
        key = self._key(sha)
        if not self.fs.exists(key):
            raise NotFound(f"artifact object {sha} is missing from the artifact store {self.location}; restore it from a backup")
        return self.fs.open(key, "rb"), key


# -- what an artifact is allowed to be ---------------------------------------------------------

_ONNX_TO_OIP = {
    1: "FP32", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32", 7: "INT64", 8: "BYTES",
    9: "BOOL", 10: "FP16", 11: "FP64", 12: "UINT32", 13: "UINT64", 16: "BF16",
}  # fmt: skip


def inspect_artifact(name: str, path: Path, kind: str) -> dict | None:
    """Check that the file is what its name says, without running anything from it.  Returns the
    signature an ONNX file declares (None for TorchScript)."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:1] == b"\x80":
        raise InvalidInput(
            f"artifact {name} ({path}) is a Python pickle; pickles run code when loaded and are never accepted: "
            "export to ONNX (torch.onnx.export) or TorchScript (torch.jit.script(model).save(path))"
        )
    if kind == "onnx":
        return _inspect_onnx(name, path)
    _inspect_torchscript(name, path)
    return None


def _inspect_torchscript(name: str, path: Path) -> None:
    if not zipfile.is_zipfile(path):
        raise InvalidInput(f"artifact {name} ({path}) is not a TorchScript archive; save one with torch.jit.script(model).save(path)")
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    prefixes = {n.split("/", 1)[0] for n in names}
    is_script = len(prefixes) == 1 and any("/code/" in n for n in names) and any(n.endswith("/constants.pkl") for n in names)
    if not is_script:
        raise InvalidInput(
            f"artifact {name} ({path}) is a torch.save archive of pickled Python objects, not TorchScript; "
            "save the model with torch.jit.script(model).save(path) (or export it to ONNX)"
        )


def _inspect_onnx(name: str, path: Path) -> dict:
    import onnx

    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf raises several kinds
        raise InvalidInput(f"artifact {name} ({path}) is not an ONNX model ({type(e).__name__}: {e}); export one with torch.onnx.export") from None
    if not model.graph.output:
        raise InvalidInput(f"artifact {name} ({path}) is not an ONNX model with outputs; export one with torch.onnx.export")
    for tensor in _all_tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            raise InvalidInput(
                f"artifact {name} ({path}): tensor {tensor.name!r} is stored in an external file, which the registry does not "
                "follow; save the model with every tensor inside it (onnx.save_model(model, path, save_as_external_data=False))"
            )
    initializers = {t.name for t in model.graph.initializer}

    def spec(v) -> dict:
        t = v.type.tensor_type
        datatype = _ONNX_TO_OIP.get(t.elem_type)
        shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in t.shape.dim]
        return {"name": v.name, "datatype": datatype or f"onnx:{t.elem_type}", "shape": shape}

    return {
        "inputs": [spec(v) for v in model.graph.input if v.name not in initializers],
        "outputs": [spec(v) for v in model.graph.output],
    }


def _all_tensors(graph):
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for g in attr.graphs:
                yield from _all_tensors(g)


def safe_child(parent: Path, name: str) -> Path:
    """`parent / name`, refused if it resolves outside `parent` (a symlink planted there)."""
    child = parent / name
    root = os.path.realpath(parent)
    real = os.path.realpath(child)
    if not real.startswith(root + os.sep):
        raise UnsafeArtifactPath(f"{child} resolves to {real}, outside {root}; refused: remove the symlink")
    return child


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
