"""The Prometheus rules in configs/alerts, checked by promtool itself: the syntax of every rule
(`promtool check rules`) and the rules' own unit tests (`promtool test rules`), through
configs/alerts/check.sh, which fetches promtool from Debian's `prometheus` package when it is not
installed (PyPI has none).  Then a broken rule and a wrong expectation, to show the check bites."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "configs" / "alerts"
FIX = "run `bash configs/alerts/check.sh` by hand; it needs apt-get (Debian's package archive) or PROMTOOL=/path/to/promtool"


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=600, cwd=cwd)


@pytest.fixture(scope="module")
def promtool() -> str:
    r = run("bash", str(ALERTS / "check.sh"))
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}\n{FIX}"
    assert "rules found" in r.stdout and r.stdout.count("SUCCESS") == 2, r.stdout
    found = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if not found:
        found = str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "parity" / "promtool")
    assert os.access(found, os.X_OK), f"check.sh passed but promtool is not at {found}"
    return found


def test_every_rule_passes_promtool_and_the_rule_unit_tests_pass(promtool):
    r = run(promtool, "check", "rules", str(ALERTS / "parity.rules.yml"))
    assert r.returncode == 0, r.stdout + r.stderr
    n = int(r.stdout.split("SUCCESS:")[1].split()[0])
    assert n >= 30  # the drift, data-quality, performance, SLO, skew, serving and loop alerts
    r = run(promtool, "test", "rules", "parity.rules.test.yml", cwd=ALERTS)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def test_a_broken_rule_and_a_wrong_expectation_fail(promtool, tmp_path):
    rules = (ALERTS / "parity.rules.yml").read_text()
    broken = tmp_path / "broken.rules.yml"
    broken.write_text(rules.replace("max by (model, version, feature) (parity_drift_alarm) > 0", "max by (model, version, feature) (parity_drift_alarm >", 1))
    r = run(promtool, "check", "rules", str(broken))
    assert r.returncode != 0 and "parse error" in (r.stdout + r.stderr).lower(), r.stdout + r.stderr

    (tmp_path / "parity.rules.yml").write_text(rules)
    tests = (ALERTS / "parity.rules.test.yml").read_text()
    assert "eval_time: 20m\n        alertname: ParityFeatureDrift" in tests
    (tmp_path / "wrong.test.yml").write_text(tests.replace("component: drift, model: fraud, version: \"3\", feature: amount", "component: drift, model: fraud, version: \"3\", feature: hour", 1))
    r = run(promtool, "test", "rules", "wrong.test.yml", cwd=tmp_path)
    assert r.returncode != 0 and "FAILED" in (r.stdout + r.stderr), r.stdout + r.stderr
