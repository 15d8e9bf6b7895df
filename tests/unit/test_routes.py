"""Routing files: what is accepted, and errors that name the file, the line and the reason."""

from __future__ import annotations

import pytest

from parity.errors import ConfigError
from parity.serving.routes import check_ref, load_routes, parse_route, split_ref

FULL = """\
endpoint: scoring
serving:
  max_batch_size: 32
  features: {service: fraud_detection}
targets:
  - {model: fraud@champion, weight: 90}
  - {model: fraud/3, weight: 10}
sticky: {input: user_id}
shadow:
  - {model: fraud@shadow}
canary:
  model: fraud@canary
  steps: [10, 50, 100]
  interval_secs: 60
  min_requests: 200
  max_error_rate: 0.02
  max_p99_ms: 25
  promote_to: champion
"""


def test_a_full_routing_file():
    r = parse_route(FULL, "routes/scoring.yaml", "scoring")
    assert r.endpoint == "scoring" and r.targets == (("fraud@champion", 90.0), ("fraud/3", 10.0))
    assert r.sticky_input == "user_id" and r.shadows == ("fraud@shadow",)
    assert r.canary.steps == (10.0, 50.0, 100.0) and r.canary.promote_to == "champion" and r.canary.max_p99_ms == 25
    assert r.serving == {"max_batch_size": 32, "features": {"service": "fraud_detection"}}
    assert r.refs() == ["fraud@champion", "fraud/3", "fraud@shadow", "fraud@canary"]


def test_defaults_a_single_target_takes_all_traffic_and_the_endpoint_is_the_file_name():
    r = parse_route("targets:\n  - {model: fraud}\n", "routes/fraud.yaml", "fraud")
    assert r.endpoint == "fraud" and r.targets == (("fraud", 100.0),) and r.canary is None and not r.shadows


@pytest.mark.parametrize(
    "text, line, problem",
    [
        ("targets: []\n", 1, "at least one"),
        ("targets:\n  - {model: fraud@champion, weight: -1}\n", 2, "weight: must be a number >= 0"),
        ("targets:\n  - {model: fraud@champion, weight: 1}\n  - {model: 'x/y/z', weight: 1}\n", 3, "'y/z' is not a version number"),
        ("targets:\n  - {model: fraud@champion}\n  - {model: fraud@other}\n", 2, "weight: must be a number"),
        ("targets:\n  - {model: '../etc@x', weight: 1}\n", 2, "not a valid model name"),
        ("targets:\n  - {model: fraud@1bad}\n", 2, "not a valid alias"),
        ("targets:\n  - {model: a, weight: 0}\n", 1, "must not all be 0"),
        ("targets:\n  - {model: a}\ncolour: red\n", 3, "colour: unknown field"),
        ("targets:\n  - {model: a}\ncanary:\n  model: a@c\n  steps: [50, 20]\n", 5, "increasing percentages"),
        ("targets:\n  - {model: a}\ncanary:\n  model: a@c\n  promote_to: c\n", 5, "must differ"),
        ("targets:\n  - {model: a}\nsticky: user_id\n", 3, "must be {input: NAME}"),
        ("targets:\n  - {model: a}\nserving:\n  max_batch: 3\n", 4, "is not a serving option"),
        ("targets:\n  - {model: a@x\n", 3, "not valid YAML"),
    ],
)
def test_errors_name_the_file_the_line_and_the_reason(text, line, problem):
    with pytest.raises(ConfigError) as info:
        parse_route(text, "routes/e.yaml", "e")
    assert f"routes/e.yaml:{line}" in info.value.message and problem in info.value.message, info.value.message


def test_refs():
    assert split_ref("m@champion") == ("m", "champion", "") and split_ref("m/4") == ("m", "", "4") and split_ref("m") == ("m", "", "")
    assert check_ref("m@champion") is None and check_ref("m/2") is None
    assert "not a version number" in check_ref("m/0") and "valid alias" in check_ref("m@") and check_ref(3)


def test_a_directory_of_files_and_duplicate_endpoints(tmp_path):
    (tmp_path / "a.yaml").write_text("targets:\n  - {model: a}\n")
    (tmp_path / "b.yml").write_text("endpoint: bee\ntargets:\n  - {model: b}\n")
    (tmp_path / "notes.txt").write_text("ignored")
    assert sorted(load_routes(tmp_path)) == ["a", "bee"]
    (tmp_path / "c.yaml").write_text("endpoint: a\ntargets:\n  - {model: c}\n")
    with pytest.raises(ConfigError, match="also routed by"):
        load_routes(tmp_path)
    with pytest.raises(ConfigError, match="not a directory"):
        load_routes(tmp_path / "nope")
