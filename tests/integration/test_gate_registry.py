"""The promotion gate against a real registry on SQLite and on PostgreSQL: a passing challenger
moves the alias with a "promote" entry carrying the gate's evidence; a failing one leaves the alias
and records "gate.failed" with its evidence."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest

from parity.errors import InvalidInput, NotFound
from parity.registry import Registry
from parity.testing.models import write_mlp_onnx
from parity.testing.postgres import temporary_database
from parity.training.gate import GATE_FAILED, GateConfig, evaluate_gate, promote_if_passes


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def db_url(request, tmp_path_factory):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('gate') / 'meta.db'}"
    else:
        with temporary_database() as url:
            yield url


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("files") / "m.onnx"
    write_mlp_onnx(path, [4, 8, 1], seed=1)
    return path


@pytest.fixture()
def reg(db_url, tmp_path):
    with Registry.open(db_url, tmp_path / "artifacts") as r:
        yield r


@pytest.fixture(scope="module")
def holdout():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    return {"y": y, "weak": y + rng.normal(0, 1.2, 400), "strong": y + rng.normal(0, 0.6, 400)}


def _model(reg, onnx_file, versions: int) -> str:
    name = f"fraud-{uuid.uuid4().hex[:8]}"
    for _ in range(versions):
        reg.register(name, {"model.onnx": onnx_file}, actor="ci", reason="trained")
    return name


def test_a_passing_challenger_is_promoted_with_the_evidence(reg, onnx_file, holdout):
    name = _model(reg, onnx_file, 2)
    reg.set_alias(name, "champion", 1, actor="alice", reason="first release")
    cfg = GateConfig(metric="roc_auc", margin=0.01)
    result = promote_if_passes(
        reg, name, 2, config=cfg, y_true=holdout["y"], champion_outputs=holdout["weak"], challenger_outputs=holdout["strong"], actor="gate",
    )  # fmt: skip
    assert result.passed and reg.resolve(f"{name}@champion").version == 2
    entry = reg.history(name)[-1]
    assert (entry.action, entry.actor, entry.version, entry.alias, entry.details) == ("promote", "gate", 2, "champion", {"from": 1, "to": 2})
    assert entry.evidence == result.evidence == json.loads(json.dumps(result.evidence))
    ev = entry.evidence
    assert (ev["test"], ev["n"], ev["champion_version"], ev["challenger_version"], ev["model"]) == ("delong", 400, 1, 2, name)
    plain = evaluate_gate(cfg, holdout["y"], holdout["weak"], holdout["strong"]).evidence
    assert {k: ev[k] for k in plain} == plain  # the stored evidence is the gate's, plus who was compared
    assert "passed the promotion gate" in entry.reason and reg.verify_audit().ok


def test_a_failing_challenger_leaves_the_alias_and_the_failure_is_recorded(reg, onnx_file, holdout):
    name = _model(reg, onnx_file, 2)
    reg.set_alias(name, "champion", 1, actor="alice", reason="first release")
    before = len(reg.history(name))
    result = promote_if_passes(
        reg, name, 2, "champion", config={"metric": "roc_auc", "margin": 0.01}, y_true=holdout["y"],
        champion_outputs=holdout["strong"], challenger_outputs=holdout["weak"], actor="gate", reason="nightly candidate",
    )  # fmt: skip
    assert not result.passed and reg.resolve(f"{name}@champion").version == 1
    log = reg.history(name)
    assert len(log) == before + 1
    entry = log[-1]
    assert (entry.action, entry.actor, entry.version, entry.alias, entry.reason) == (GATE_FAILED, "gate", 2, "champion", "nightly candidate")
    assert entry.evidence == result.evidence and entry.evidence["passed"] is False and entry.details == {"champion": 1}
    assert entry.evidence["noninferiority"]["passed"] is False and entry.evidence["p_value"] < 0.05

    # accuracy and a bootstrap metric go through the same path
    labels_strong, labels_weak = (holdout["strong"] > 0.5) * 1, (holdout["weak"] > 0.5) * 1
    acc = promote_if_passes(
        reg, name, 2, config={"metric": "accuracy", "margin": 0.0, "require_superiority": True}, y_true=holdout["y"],
        champion_outputs=labels_strong, challenger_outputs=labels_weak,
    )  # fmt: skip
    assert not acc.passed and reg.history(name)[-1].evidence["test"] == "mcnemar"
    mae = promote_if_passes(
        reg, name, 2, config={"metric": "mae", "margin": 0.05, "n_resamples": 500}, y_true=holdout["y"].astype(float),
        champion_outputs=np.clip(holdout["weak"], 0, 1), challenger_outputs=np.clip(holdout["strong"], 0, 1),
    )  # fmt: skip
    assert mae.passed and reg.resolve(f"{name}@champion").version == 2
    assert reg.history(name)[-1].evidence["test"] == "paired_bootstrap" and reg.verify_audit().ok


def test_first_champion_already_champion_and_missing_inputs(reg, onnx_file, holdout):
    name = _model(reg, onnx_file, 2)
    first = promote_if_passes(reg, name, 1, config=GateConfig(), y_true=holdout["y"], challenger_outputs=holdout["weak"], actor="gate")
    assert first.passed and first.evidence["test"] == "none" and first.evidence["champion_version"] is None
    entry = reg.history(name)[-1]
    assert (entry.action, entry.version, entry.details) == ("promote", 1, {"to": 1}) and entry.evidence["reason"] == "no champion"
    n = len(reg.history(name))
    again = promote_if_passes(reg, name, 1, config=GateConfig(), y_true=holdout["y"], challenger_outputs=holdout["weak"])
    assert again.passed and again.evidence["reason"] == "already champion" and len(reg.history(name)) == n
    with pytest.raises(InvalidInput, match="is version 1: give its outputs"):
        promote_if_passes(reg, name, 2, config=GateConfig(), y_true=holdout["y"], challenger_outputs=holdout["strong"])
    with pytest.raises(NotFound, match="has no version 7"):
        promote_if_passes(reg, name, 7, config=GateConfig(), y_true=holdout["y"], challenger_outputs=holdout["strong"])
    assert len(reg.history(name)) == n and reg.resolve(f"{name}@champion").version == 1


def test_a_promotion_never_replaces_a_champion_it_was_not_compared_with(tmp_path):
    """The alias move is a compare-and-set against the champion the gate read."""
    from parity.errors import Conflict
    from parity.registry import Registry
    from parity.testing.models import write_mlp_onnx

    with Registry.open(f"sqlite:///{tmp_path / 'm.db'}", tmp_path / "a") as reg:
        for seed in (1, 2, 3):
            path = tmp_path / f"m{seed}.onnx"
            write_mlp_onnx(path, [2, 2, 1], seed=seed)
            reg.register("cas", {"model.onnx": path}, actor="t")
        reg.set_alias("cas", "champion", 1, actor="t", reason="first")
        # someone moved the champion to 2 after a gate compared against 1
        reg.set_alias("cas", "champion", 2, actor="t", reason="meanwhile")
        with pytest.raises(Conflict, match="points at version 2, not version 1"):
            reg.set_alias("cas", "champion", 3, actor="gate", reason="won against 1", action="promote", expect=1)
        assert reg.resolve("cas@champion").version == 2
        with pytest.raises(Conflict, match="not nothing"):
            reg.set_alias("cas", "champion", 3, actor="gate", reason="first ever", expect=0)
        assert reg.set_alias("cas", "champion", 3, actor="gate", reason="won against 2", action="promote", expect=2).version == 3
        assert [h.action for h in reg.history("cas")][-1] == "promote"
