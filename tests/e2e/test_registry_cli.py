"""`parity registry ...` end to end: the command as a user runs it (a subprocess), then every
subcommand on SQLite and PostgreSQL: register, list, show, alias set/delete, history (the audit
log as a table), fetch, verify, verify-audit (which fails once the log was tampered with)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from parity.cli import main
from parity.testing.models import write_mlp_onnx
from parity.testing.postgres import temporary_database


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'meta.db'}"
    else:
        with temporary_database() as url:
            yield url


def test_parity_registry_is_a_command(tmp_path):
    write_mlp_onnx(tmp_path / "fraud.onnx", [4, 8, 1])
    where = ["--db", f"sqlite:///{tmp_path / 'meta.db'}", "--artifacts", str(tmp_path / "arts")]
    run = subprocess.run(
        [sys.executable, "-m", "parity", "registry", "register", "fraud", "--artifact", str(tmp_path / "fraud.onnx"), "--metric", "auc=0.9", *where],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("registered fraud/1 (model.onnx sha256:")
    run = subprocess.run([sys.executable, "-m", "parity", "registry", "show", "fraud@champion", *where], capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "model 'fraud' has no alias 'champion'" in run.stderr


def test_every_registry_command(db_url, tmp_path, capsys):
    write_mlp_onnx(tmp_path / "a.onnx", [4, 8, 1], seed=1)
    write_mlp_onnx(tmp_path / "b.onnx", [4, 8, 1], seed=2)
    (tmp_path / "profile.json").write_text(json.dumps({"rows": 10}))
    where = ["--db", db_url, "--artifacts", str(tmp_path / "arts")]

    def cli(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        rc = main(["registry", *args])
        out = capsys.readouterr()
        return rc, out.out, out.err

    rc, out, _ = cli("register", "fraud", "--artifact", str(tmp_path / "a.onnx"), "--metric", "auc=0.91", "--tag", "team=risk", "--run-id", "run-1",
                     "--dataset", "ds-1", "--profile", str(tmp_path / "profile.json"), "--actor", "ci", "--reason", "nightly", *where)  # fmt: skip
    assert rc == 0 and "registered fraud/1" in out
    rc, out, _ = cli("register", "fraud", "--artifact", f"model.onnx={tmp_path / 'b.onnx'}", "--metric", "auc=0.93", "--actor", "ci", *where)
    assert rc == 0 and "registered fraud/2" in out
    assert cli("alias", "set", "fraud", "champion", "1", "--reason", "first release", "--actor", "alice", *where)[:2] == (0, "fraud@champion -> version 1\n")
    rc, out, _ = cli("alias", "set", "fraud", "champion", "2", "--reason", "passed the gate", "--actor", "gate",
                     "--evidence", '{"test": "delong", "p_value": 0.01}', *where)  # fmt: skip
    assert rc == 0 and out == "fraud@champion moved from version 1 to 2\n"
    assert cli("alias", "set", "fraud", "canary", "1", "--reason", "try", "--actor", "bob", *where)[0] == 0
    assert cli("alias", "delete", "fraud", "canary", "--reason", "done", "--actor", "alice", *where)[:2] == (0, "fraud@canary deleted\n")

    rc, out, _ = cli("list", *where)
    assert rc == 0 and out.splitlines()[0].split() == ["MODEL", "LATEST", "VERSIONS", "ALIASES", "CREATED", "(UTC)"]
    assert out.splitlines()[1].split()[:4] == ["fraud", "2", "2", "champion->2"]
    rc, out, _ = cli("list", "fraud", *where)
    assert rc == 0 and "auc=0.91" in out and "run-1" in out and "champion" in out.splitlines()[2]
    rc, out, _ = cli("show", "fraud@champion", *where)
    assert rc == 0 and out.startswith("fraud/2  (@champion)") and "INPUT0  FP32  [-1, 4]" in out and "auc=0.93" in out
    rc, out, _ = cli("show", "fraud/1", "--json", *where)
    shown = json.loads(out)
    assert shown["metrics"] == {"auc": 0.91} and shown["profile"] == {"rows": 10} and shown["lineage"]["datasets"] == ["ds-1"]
    assert shown["tags"] == {"team": "risk"} and shown["created_by"] == "ci"

    rc, out, _ = cli("history", "fraud", *where)
    lines = out.splitlines()
    assert rc == 0 and lines[0].split() == ["TIME", "(UTC)", "ACTOR", "ACTION", "DETAILS", "REASON"]
    assert [line.split()[3] for line in lines[1:]] == ["register", "register", "alias.set", "alias.move", "alias.set", "alias.delete"]
    move = lines[4]
    assert "gate" in move and "@champion v1 -> v2" in move and '"p_value":0.01' in move and move.endswith("passed the gate")
    rc, out, _ = cli("history", "fraud", "--json", *where)
    assert [e["actor"] for e in json.loads(out)] == ["ci", "ci", "alice", "gate", "bob", "alice"]
    rc, out, _ = cli("history", "--all", "--limit", "2", *where)
    assert rc == 0 and out.splitlines()[0].split()[4] == "MODEL" and len(out.splitlines()) == 3

    rc, out, _ = cli("fetch", "fraud@champion", str(tmp_path / "models"), *where)
    assert rc == 0 and out.strip() == str(tmp_path / "models" / "fraud" / "2")
    assert (tmp_path / "models" / "fraud" / "2" / "model.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert cli("verify", "fraud/1", *where)[:2] == (0, "fraud/1: 1 artifact(s) match their sha256\n")
    rc, out, _ = cli("verify-audit", *where)
    assert rc == 0 and out.startswith("audit log intact: 6 entries, head sha256:")

    # what a user gets wrong is answered with what to do, exit status 1
    rc, _, err = cli("show", "fraud@shadow", *where)
    assert rc == 1 and "model 'fraud' has no alias 'shadow'; its aliases are champion -> 2" in err
    rc, _, err = cli("alias", "set", "fraud", "champion", "9", "--reason", "x", *where)
    assert rc == 1 and "model 'fraud' has no version 9; its versions are 1 to 2" in err
    rc, _, err = cli("alias", "set", "fraud", "123", "1", "--reason", "x", *where)
    assert rc == 1 and "alias '123' is not valid" in err
    rc, _, err = cli("register", "../evil", "--artifact", str(tmp_path / "a.onnx"), *where)
    assert rc == 1 and "model name '../evil' is not valid" in err
    rc, _, err = cli("register", "fraud", "--artifact", f"../x.onnx={tmp_path / 'a.onnx'}", *where)
    assert rc == 1 and "artifact name '../x.onnx' is not valid" in err
    with pytest.raises(SystemExit):  # --reason is required to move an alias
        main(["registry", "alias", "set", "fraud", "champion", "1", *where])

    # someone with database rights drops the trigger and edits an entry: verify-audit says so
    from parity.sql import Database

    with Database.open(db_url) as db, db.transaction() as tx:
        if db.dialect == "sqlite":
            tx.execute("DROP TRIGGER registry_audit_no_update")
        else:
            tx.execute("DROP TRIGGER registry_audit_no_change ON registry_audit")
        tx.execute("UPDATE registry_audit SET reason = 'nobody decided this' WHERE seq = 4")
    rc, _, err = cli("verify-audit", *where)
    assert rc == 1 and "entry 4 (alias.move fraud" in err and "TAMPERED" in err
