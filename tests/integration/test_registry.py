"""The model registry on a real SQLite file and a real PostgreSQL server: versions numbered per
model, aliases, `name@alias` / `name/N` / `name` resolution, a content-addressed artifact store
verified on every read, an audit log the database itself refuses to change, and processes
registering at the same time without losing anything."""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import pickle
import subprocess
import uuid
import zipfile
from pathlib import Path

import pytest

from parity.errors import InvalidInput, NotFound
from parity.registry import ChecksumMismatch, Lineage, Registry, UnsafeArtifactPath
from parity.testing.models import write_mlp_onnx, write_torchscript_mlp
from parity.testing.postgres import temporary_database


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def db_url(request, tmp_path_factory):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('registry') / 'meta.db'}"
    else:
        with temporary_database() as url:
            yield url


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("files")
    write_mlp_onnx(d / "a.onnx", [4, 8, 1], seed=1)
    write_mlp_onnx(d / "b.onnx", [4, 8, 1], seed=2)
    return {"a": d / "a.onnx", "b": d / "b.onnx", "dir": d}


@pytest.fixture()
def reg(db_url, tmp_path):
    with Registry.open(db_url, tmp_path / "artifacts") as r:
        yield r


def _name(prefix: str = "m") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


SIG = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}], "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}]}


def test_register_stores_everything_and_numbers_versions_per_model(reg, files):
    name, other = _name("fraud"), _name("churn")
    profile = {"features": {"amount": {"bins": [0, 1.5, 10], "counts": [3, 4]}}, "rows": 7}
    lineage = Lineage(run_id="run-42", datasets=("ds-aaa", "ds-bbb"), git_commit="c0ffee", git_dirty=True, diff_hash="d1ff")
    v1 = reg.register(
        name, {"model.onnx": files["a"]}, metrics={"auc": 0.91, "loss": 1}, profile=profile, lineage=lineage,
        tags={"team": "risk"}, description="first", actor="alice", reason="nightly",
    )  # fmt: skip
    assert (v1.name, v1.version, v1.created_by, v1.ref) == (name, 1, "alice", f"{name}/1")
    assert reg.register(other, {"model.onnx": files["a"]}, actor="bob").version == 1  # numbered per model
    v2 = reg.register(name, {"model.onnx": files["b"]}, signature=SIG, actor="alice")
    assert v2.version == 2
    got = reg.get(name, 1)
    assert got.metrics == {"auc": 0.91, "loss": 1.0} and got.profile == profile and got.lineage == lineage
    assert got.tags == {"team": "risk"} and got.description == "first" and got.created_at.endswith("Z")
    # the signature is read from the ONNX file when not given
    assert got.signature == {
        "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "OUTPUT0", "datatype": "FP32", "shape": [-1, 1]}],
    }
    assert reg.get(name, "2").signature == SIG
    (art,) = got.artifacts
    assert (art.name, art.kind, art.size) == ("model.onnx", "onnx", files["a"].stat().st_size) and len(art.sha256) == 64
    assert [v.version for v in reg.versions(name)] == [1, 2]
    assert reg.resolve(name).version == 2 and reg.resolve(f"{name}@latest").version == 2 and reg.resolve(f"{name}/1").version == 1
    models = {m.name: m for m in reg.models()}
    assert (models[name].latest_version, models[name].version_count) == (2, 2)


def test_unknown_models_versions_and_aliases_are_named(reg, files):
    name = _name()
    with pytest.raises(NotFound, match=f"model '{name}' is not registered"):
        reg.resolve(f"{name}@champion")
    reg.register(name, {"model.onnx": files["a"]})
    with pytest.raises(NotFound, match=f"model '{name}' has no version 7; its versions are 1 to 1"):
        reg.resolve(f"{name}/7")
    with pytest.raises(NotFound, match=f"model '{name}' has no alias 'champion'; it has no aliases"):
        reg.resolve(f"{name}@champion")
    with pytest.raises(NotFound, match="has no version 3"):
        reg.set_alias(name, "champion", 3, reason="x")
    with pytest.raises(NotFound, match="no alias 'canary'"):
        reg.delete_alias(name, "canary", reason="x")
    with pytest.raises(NotFound, match="not registered"):
        reg.history(_name())


def test_aliases_move_atomically_and_every_change_is_audited(reg, files):
    name = _name("fraud")
    for _ in range(3):
        reg.register(name, {"model.onnx": files["a"]}, actor="ci", reason="trained")
    gate = {"test": "delong", "statistic": 2.1, "p_value": 0.018, "n": 5000, "margin": 0.005}
    assert reg.set_alias(name, "champion", 1, actor="alice", reason="first release").aliases == ("champion",)
    reg.set_alias(name, "challenger", 2, actor="ci", reason="candidate")
    moved = reg.set_alias(name, "champion", 2, actor="gate", reason="challenger passed the gate", evidence=gate, action="promote")
    assert set(moved.aliases) == {"champion", "challenger"}
    reg.set_alias(name, "champion", 2, actor="gate", reason="again")  # no change: nothing recorded
    reg.set_alias(name, "canary", 3, actor="alice", reason="10% canary")
    reg.record("traffic", name, actor="router", reason="canary weight 10 -> 50", version=3, alias="canary", evidence={"error_rate": 0.001}, details={"weight": 50})
    reg.set_alias(name, "champion", 1, actor="router", reason="p99 regressed", evidence={"p99_ms": 41.0}, action="rollback")
    reg.delete_alias(name, "canary", actor="alice", reason="canary over")
    assert reg.resolve(f"{name}@champion").version == 1 and reg.resolve(f"{name}@challenger").version == 2
    with pytest.raises(NotFound):
        reg.resolve(f"{name}@canary")

    log = reg.history(name)
    assert [(e.action, e.actor, e.version, e.alias) for e in log] == [
        ("register", "ci", 1, None), ("register", "ci", 2, None), ("register", "ci", 3, None),
        ("alias.set", "alice", 1, "champion"), ("alias.set", "ci", 2, "challenger"),
        ("promote", "gate", 2, "champion"), ("alias.set", "alice", 3, "canary"),
        ("traffic", "router", 3, "canary"), ("rollback", "router", 1, "champion"), ("alias.delete", "alice", 3, "canary"),
    ]  # fmt: skip
    promote = log[5]
    assert promote.evidence == gate and promote.details == {"from": 1, "to": 2} and promote.reason == "challenger passed the gate"
    assert log[8].details == {"from": 2, "to": 1} and log[7].details == {"weight": 50}
    assert all(e.at.endswith("Z") for e in log) and [e.seq for e in log] == sorted(e.seq for e in log)
    assert reg.history(name, limit=2) == log[-2:]
    assert reg.verify_audit().ok

    # the API refuses what would make an entry meaningless
    with pytest.raises(InvalidInput, match="reason is required"):
        reg.set_alias(name, "champion", 2, reason="  ")
    with pytest.raises(InvalidInput, match="JSON"):
        reg.record("promote", name, reason="x", evidence={"p": float("nan")})
    with pytest.raises(NotFound, match="has no version 9"):
        reg.record("promote", name, reason="x", version=9)
    with pytest.raises(NotFound, match="not registered"):
        reg.record("promote", _name(), reason="x")
    # and offers no way to change or remove an entry
    assert not [m for m in dir(reg) if any(w in m.lower() for w in ("update_audit", "delete_audit", "edit", "purge"))]


def test_the_database_refuses_to_change_the_audit_log(db_url, reg, files):
    name = _name()
    reg.register(name, {"model.onnx": files["a"]}, metrics={"auc": 0.5})
    reg.set_alias(name, "champion", 1, "alice", "release")
    raw = [
        "UPDATE registry_audit SET reason = 'forged'",
        "DELETE FROM registry_audit",
        "DELETE FROM registry_audit WHERE seq = (SELECT MAX(seq) FROM registry_audit)",
        "UPDATE registry_versions SET created_by = 'mallory'",
        "UPDATE registry_artifacts SET sha256 = 'x'",
        "UPDATE registry_metrics SET value = 1",
    ]
    for sql in raw:
        with pytest.raises(Exception, match="append-only|immutable") as info:
            with reg.db.transaction() as tx:
                tx.execute(sql)
        assert "refused" in str(info.value)
    if reg.db.dialect == "postgresql":
        with pytest.raises(Exception, match="append-only"):
            with reg.db.transaction() as tx:
                tx.execute("TRUNCATE registry_audit")
    assert [e.reason for e in reg.history(name)] == ["registered", "release"] and reg.verify_audit().ok


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_hash_chain_shows_tampering_by_someone_who_drops_the_triggers(backend, tmp_path, files):
    where = contextlib.nullcontext(f"sqlite:///{tmp_path / 'tamper.db'}") if backend == "sqlite" else temporary_database()
    with where as url, Registry.open(url, tmp_path / "arts") as reg:
        name = _name()
        for _ in range(3):
            reg.register(name, {"model.onnx": files["a"]}, actor="ci")
        reg.set_alias(name, "champion", 2, actor="alice", reason="ok")
        good = reg.verify_audit()
        assert good.ok and good.entries == 4 and len(good.head) == 64
        with reg.db.transaction() as tx:
            if backend == "sqlite":
                tx.execute("DROP TRIGGER registry_audit_no_update")
                tx.execute("DROP TRIGGER registry_audit_no_delete")
            else:
                tx.execute("DROP TRIGGER registry_audit_no_change ON registry_audit")
            tx.execute("UPDATE registry_audit SET actor = 'mallory' WHERE seq = 4")
        bad = reg.verify_audit()
        assert [p for p in bad.problems] == [p for p in bad.problems if "entry 4" in p] and "edited" in bad.problems[0]
        with reg.db.transaction() as tx:
            tx.execute("DELETE FROM registry_audit WHERE seq = 2")
        problems = reg.verify_audit().problems
        assert any("entry 3" in p and "missing" in p for p in problems) and any("entry 3" in p and "link" in p for p in problems)


def test_names_are_validated_and_artifact_paths_cannot_escape(reg, files, tmp_path):
    for bad in ["", "../x", "a/b", "a..b", ".hidden", "-x", "x" * 129, "a b", "a@b", "/abs"]:
        with pytest.raises(InvalidInput, match="model name"):
            reg.register(bad, {"model.onnx": files["a"]})
    name = _name()
    reg.register(name, {"model.onnx": files["a"]})
    for bad in ["1", "42", "9lives", "", "a b", "a.b", "x" * 65, "café"]:
        with pytest.raises(InvalidInput, match="alias"):
            reg.set_alias(name, bad, 1, reason="x")
    with pytest.raises(InvalidInput, match="reserved"):
        reg.set_alias(name, "latest", 1, reason="x")
    for bad_ref in [f"{name}/0", f"{name}/x", f"{name}@3", f"{name}/1/2", "../etc@x"]:
        with pytest.raises(InvalidInput):
            reg.resolve(bad_ref)
    for bad in ["../model.onnx", "/etc/model.onnx", "sub/model.onnx", "..onnx", ".model.onnx", "model.pkl", "model.pt2", "model.bin"]:
        with pytest.raises(InvalidInput, match="artifact"):
            reg.register(name, {bad: files["a"]})
    with pytest.raises(InvalidInput, match="does not exist"):
        reg.register(name, {"model.onnx": tmp_path / "missing.onnx"})
    with pytest.raises(InvalidInput, match="at least one artifact"):
        reg.register(name, {})
    with pytest.raises(InvalidInput, match="finite"):
        reg.register(name, {"model.onnx": files["a"]}, metrics={"auc": float("nan")})
    with pytest.raises(InvalidInput, match="datatype"):
        reg.register(name, {"model.onnx": files["a"]}, signature={"inputs": [{"name": "x", "datatype": "FLOAT", "shape": [1]}], "outputs": []})
    assert [v.version for v in reg.versions(name)] == [1]  # nothing half-registered


def test_artifacts_are_content_addressed_deduplicated_and_verified_on_fetch(reg, files, tmp_path):
    name = _name()
    v1 = reg.register(name, {"model.onnx": files["a"]})
    v2 = reg.register(name, {"model.onnx": files["a"]})
    v3 = reg.register(name, {"model.onnx": files["b"]})
    sha = v1.artifacts[0].sha256
    assert v2.artifacts[0].sha256 == sha != v3.artifacts[0].sha256
    objects = [p for p in (tmp_path / "artifacts" / "sha256").rglob("*") if p.is_file()]
    assert sorted(p.name for p in objects) == sorted({sha, v3.artifacts[0].sha256})  # stored once each
    assert not list((tmp_path / "artifacts" / "tmp").iterdir())  # no temp file left behind

    reg.set_alias(name, "champion", 3, reason="x")
    out = reg.fetch(f"{name}@champion", tmp_path / "models")
    assert out == tmp_path / "models" / name / "3"
    assert (out / "model.onnx").read_bytes() == files["b"].read_bytes()
    assert json.loads((out / "registry.json").read_text())["ref"] == f"{name}/3"
    assert reg.fetch(f"{name}/3", tmp_path / "models") == out  # reused
    (out / "model.onnx").write_bytes(b"changed locally")
    assert reg.fetch(f"{name}/3", tmp_path / "models") == out and (out / "model.onnx").read_bytes() == files["b"].read_bytes()

    # a stored object damaged on disk: refused on every read, with both digests named
    obj = tmp_path / "artifacts" / "sha256" / sha[:2] / sha
    os.chmod(obj, 0o644)
    obj.write_bytes(obj.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ChecksumMismatch, match=f"checksum mismatch: registered sha256 {sha}") as info:
        reg.fetch(f"{name}/1", tmp_path / "models")
    assert info.value.message.count("sha256") >= 2
    assert not (tmp_path / "models" / name / "1").exists() and not list((tmp_path / "models" / name).glob(".tmp-*"))
    with pytest.raises(ChecksumMismatch):
        reg.verify(f"{name}/2")
    # storing the original bytes again repairs it
    reg.register(name, {"model.onnx": files["a"]})
    assert reg.verify(f"{name}/1").version == 1


def test_symlinks_cannot_lead_outside_the_store_or_the_destination(reg, files, tmp_path):
    name = _name()
    v = reg.register(name, {"model.onnx": files["a"]})
    sha = v.artifacts[0].sha256
    store = tmp_path / "artifacts"
    outside = tmp_path / "outside"
    outside.mkdir()
    # an object replaced by a symlink (even to the very same bytes) is refused
    (outside / "copy.onnx").write_bytes(files["a"].read_bytes())
    obj = store / "sha256" / sha[:2] / sha
    obj.unlink()
    obj.symlink_to(outside / "copy.onnx")
    with pytest.raises(UnsafeArtifactPath, match="symlink"):
        reg.fetch(name, tmp_path / "models")
    # a shard directory that is a symlink to somewhere else is refused too
    obj.unlink()
    shard = store / "sha256" / sha[:2]
    shard.rmdir()
    (outside / sha).write_bytes(files["a"].read_bytes())
    shard.symlink_to(outside)
    with pytest.raises(UnsafeArtifactPath, match="outside the artifact store"):
        reg.verify(name)
    shard.unlink()
    reg.register(name, {"model.onnx": files["a"]})  # restores the object
    # the destination: a model directory planted as a symlink elsewhere is not written through
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / name).symlink_to(outside)
    with pytest.raises(UnsafeArtifactPath, match="outside"):
        reg.fetch(name, dest)
    assert not (outside / "2").exists()


def test_only_onnx_and_torchscript_are_accepted_and_nothing_is_executed(reg, files, tmp_path, torchscript):
    name = _name()
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(InvalidInput, match="pickle"):
        reg.register(name, {"model.pt": tmp_path / "evil.pt"}, signature=SIG)
    # a torch.save archive (pickled objects in a zip) is not TorchScript
    with zipfile.ZipFile(tmp_path / "saved.pt", "w") as z:
        z.writestr("saved/data.pkl", pickle.dumps(Evil()))
        z.writestr("saved/version", "3")
    with pytest.raises(InvalidInput, match="torch.save archive"):
        reg.register(name, {"model.pt": tmp_path / "saved.pt"}, signature=SIG)
    (tmp_path / "garbage.onnx").write_bytes(b"\x01\x02not a model")
    with pytest.raises(InvalidInput, match="not an ONNX model"):
        reg.register(name, {"model.onnx": tmp_path / "garbage.onnx"})
    # an ONNX file whose weights live in another file (which could be anywhere) is refused
    import onnx

    model = onnx.load(str(files["a"]))
    from onnx.external_data_helper import set_external_data

    tensor = model.graph.initializer[0]
    set_external_data(tensor, location="../../../etc/w.bin")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.ClearField("raw_data")
    (tmp_path / "ext.onnx").write_bytes(model.SerializeToString())
    with pytest.raises(InvalidInput, match="external file"):
        reg.register(name, {"model.onnx": tmp_path / "ext.onnx"})
    assert not marker.exists()
    # real TorchScript is accepted (it declares no signature, so one must be given), next to ONNX
    with pytest.raises(InvalidInput, match="TorchScript artifact does not declare"):
        reg.register(name, {"model.pt": torchscript})
    v = reg.register(name, {"model.pt": torchscript, "model.onnx": files["a"]}, signature=SIG)
    assert {(a.name, a.kind) for a in v.artifacts} == {("model.pt", "torchscript"), ("model.onnx", "onnx")}
    out = reg.fetch(v.ref, tmp_path / "models")
    assert (out / "model.pt").read_bytes() == torchscript.read_bytes()
    assert not marker.exists()


@pytest.fixture(scope="module")
def torchscript(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ts") / "model.pt"
    write_torchscript_mlp(path, [4, 1])
    return path


def _register_many(db_url: str, artifacts: str, name: str, worker: int, count: int, model: str, barrier, out) -> None:
    barrier.wait(60)
    done = []
    with Registry.open(db_url, artifacts) as reg:
        for i in range(count):
            v = reg.register(name, {"model.onnx": model}, metrics={"worker": worker, "i": i}, actor=f"worker-{worker}")
            done.append(v.version)
            reg.set_alias(name, "canary", v.version, actor=f"worker-{worker}", reason=f"w{worker} i{i}")
    out.put((worker, done))


def test_processes_registering_at_once_get_distinct_versions_and_lose_nothing(db_url, files, tmp_path):
    workers, count = 3, 4
    name = _name("race")
    artifacts = tmp_path / "artifacts"
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(workers), ctx.Queue()
    procs = [
        ctx.Process(target=_register_many, args=(db_url, str(artifacts), name, w, count, str(files["a" if w % 2 else "b"]), barrier, out))
        for w in range(workers)
    ]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    numbers = sorted(v for done in results.values() for v in done)
    assert numbers == list(range(1, workers * count + 1))  # distinct, no gaps
    with Registry.open(db_url, artifacts) as reg:
        versions = reg.versions(name)
        assert sorted((int(v.metrics["worker"]), int(v.metrics["i"])) for v in versions) == [(w, i) for w in range(workers) for i in range(count)]
        for v in versions:  # each version holds its own worker's bytes
            assert v.created_by == f"worker-{int(v.metrics['worker'])}"
            assert v.artifacts[0].sha256 == reg.verify(v.ref).artifacts[0].sha256
        log = reg.history(name)
        assert sum(e.action == "register" for e in log) == workers * count
        # alias moves were serialized: each one starts where the previous one left the alias
        moves = [e for e in log if e.alias == "canary"]
        assert len(moves) == workers * count
        for before, after in zip(moves, moves[1:]):
            assert after.details["from"] == before.details["to"]
        assert reg.resolve(f"{name}@canary").version == moves[-1].details["to"]
        assert reg.verify_audit().ok


def test_lineage_from_git_records_commit_dirty_flag_and_diff_hash(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x"}
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "x", "--allow-empty"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True, env=env)
    (repo / "train.py").write_text("print(1)\n")
    subprocess.run(["git", "-C", str(repo), "add", "."], check=True, env=env)
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", "y"], check=True, env=env)
    clean = Lineage.from_git(repo, run_id="r1", datasets=["d1"])
    assert len(clean.git_commit) == 40 and clean.git_dirty is False and clean.diff_hash is None
    assert clean.run_id == "r1" and clean.datasets == ("d1",)
    (repo / "train.py").write_text("print(2)\n")
    dirty = Lineage.from_git(repo)
    assert dirty.git_commit == clean.git_commit and dirty.git_dirty is True and len(dirty.diff_hash) == 64
    assert Lineage.from_git(tmp_path).git_commit is None  # not a repository: no code version


def test_an_fsspec_url_works_as_the_artifact_store(tmp_path, files):
    import fsspec

    url = f"memory://parity-test-{uuid.uuid4().hex[:8]}/artifacts"
    with Registry.open(f"sqlite:///{tmp_path / 'meta.db'}", url) as reg:
        v = reg.register("m", {"model.onnx": files["a"]})
        out = reg.fetch("m", tmp_path / "models")
        assert (out / "model.onnx").read_bytes() == files["a"].read_bytes()
        fs, root = fsspec.core.url_to_fs(url)
        sha = v.artifacts[0].sha256
        fs.pipe(f"{root}/sha256/{sha[:2]}/{sha}", b"tampered")
        with pytest.raises(ChecksumMismatch, match=sha):
            reg.fetch("m/1", tmp_path / "other")
