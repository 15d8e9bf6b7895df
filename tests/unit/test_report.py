"""The HTML monitoring report and `parity monitor report`."""

from __future__ import annotations

import json
import re
import threading
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from parity.monitoring import metrics
from parity.monitoring.cli import add_commands, main
from parity.monitoring.performance import BurnWindow, PredictionLog, SloTracker
from parity.monitoring.profile import bin_index, build_profile
from parity.monitoring.report import render_report

EVIL = '<script>alert("x")</script>"><img src=x onerror=alert(1)>'


def _current_numeric(ref: dict, values: np.ndarray) -> dict:
    idx = bin_index(ref["edges"], values)
    return {"counts": np.bincount(idx[idx >= 0], minlength=len(ref["edges"]) + 1).tolist(), "missing": int((idx < 0).sum())}


def _current_categorical(ref: dict, values: list[str]) -> dict:
    tops = [t["value"] for t in ref["top"]]
    counts = [sum(1 for v in values if v == t) for t in tops]
    return {"counts": counts + [len(values) - sum(counts)]}


def _psi(ref_counts, cur_counts) -> float:
    r = np.asarray(ref_counts, float) + 0.5
    c = np.asarray(cur_counts, float) + 0.5
    r, c = r / r.sum(), c / c.sum()
    return float(np.sum((c - r) * np.log(c / r)))


def realistic_doc() -> dict:
    rng = np.random.default_rng(7)
    amount = rng.lognormal(3, 1, 5000)
    hour = rng.integers(0, 24, 5000).astype(float)
    country = rng.choice(["FR", "DE", "US", "GB", "<b>bold</b>"], 5000, p=[0.4, 0.3, 0.2, 0.08, 0.02]).tolist()
    weird = rng.normal(0, 1, 5000)
    score = rng.uniform(0, 1, 5000)
    profile = build_profile({"amount": amount, "hour": hour, "country": country, EVIL: weird}, {"score": score}, bins=10, top_k=5)

    cur_amount = rng.lognormal(3.6, 1, 800)  # drifted
    cur_hour = rng.integers(0, 24, 800).astype(float)
    cur_country = rng.choice(["FR", "DE", "US", "BR"], 800).tolist()
    cur_weird = rng.normal(0, 1, 800)
    cur_score = rng.uniform(0, 1, 800)

    def col(kind, ref, cur, alarm, quality):
        refpart = (
            {"edges": ref["edges"], "counts": ref["counts"]} if kind == "numeric" else {"top": ref["top"], "other": ref["other"]}
        )
        refcounts = ref["counts"] if kind == "numeric" else [t["count"] for t in ref["top"]] + [ref["other"]]
        return {
            "kind": kind, "reference": refpart, "current": cur,
            "statistics": {"psi": _psi(refcounts, cur["counts"]), "js": 0.12 if alarm else 0.01, "ks": 0.2 if alarm else 0.02,
                           "chi2_p": 1e-12 if alarm else 0.43, "p_adjusted": 1e-11 if alarm else 1.0},
            "thresholds": {"psi": 0.1, "p_adjusted": 0.01},
            "alarm": alarm, "quality": quality,
        }  # fmt: skip

    f = profile["features"]
    report = {
        "alarm": True,
        "correction": "holm",
        "false_alarm_rate": 0.01,
        "features": {
            "amount": col(
                "numeric",
                f["amount"],
                _current_numeric(f["amount"], cur_amount),
                True,
                {"missing_rate": 0.0, "out_of_range_rate": 0.04, "flags": ["out_of_range"]},
            ),
            "hour": col("numeric", f["hour"], _current_numeric(f["hour"], cur_hour), False, {"missing_rate": 0.0}),
            "country": col(
                "categorical",
                f["country"],
                _current_categorical(f["country"], cur_country),
                True,
                {"unseen_rate": 0.25, "flags": ["unseen_category"]},
            ),
            EVIL: col("numeric", f[EVIL], _current_numeric(f[EVIL], cur_weird), False, {"missing_rate": 0.0, "flags": [EVIL]}),
        },
        "outputs": {
            "score": col(
                "numeric", profile["outputs"]["score"], _current_numeric(profile["outputs"]["score"], cur_score), False, {}
            )
        },
    }

    clock = {"t": 1_800_000_000.0}
    log = PredictionLog(tasks={"fraud": "binary"}, clock=lambda: clock["t"])
    for i in range(50):
        p = rng.uniform(0, 1, 8)
        log.record(f"r{i}", "fraud", "3", p)
        log.feedback(f"r{i}", (rng.uniform(0, 1, 8) < p).astype(int))
    slo = SloTracker(burn_windows=[BurnWindow(3600, 300, 14.4)], clock=lambda: clock["t"])
    h = metrics.Histogram()
    for step in range(13):
        for _ in range(20):
            h.observe(float(rng.choice([0.002, 0.02, 0.3])))
        slo.sample("fraud", "3", 20 * step, step, h.bounds, h.counts)
        clock["t"] += 30

    return {
        "version": 1,
        "generated_at": "2026-11-27T21:00:00Z",
        "server": {"host": "replica-1", "workers": 2},
        "models": [
            {
                "model": "fraud",
                "version": "3",
                "windows": [
                    {
                        "kind": "count",
                        "rows": 800,
                        "start": 1_799_999_000.0,
                        "end": 1_800_000_000.0,
                        "closed": True,
                        "report": report,
                    },
                    {"kind": "time", "rows": 0, "start": "2026-11-27T20:55:00Z", "end": "2026-11-27T21:00:00Z", "closed": False},
                ],
                "performance": log.metrics("fraud", "3"),
                "slo": slo.evaluate("fraud", "3"),
            },
            {"model": "churn", "version": "1"},  # nothing yet
        ],
    }


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.stack: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _parse(html: str) -> _Collector:
    c = _Collector()
    c.feed(html)
    c.close()
    return c


def test_report_renders_every_feature_with_a_chart():
    doc = realistic_doc()
    json.dumps(doc, allow_nan=False)  # the document is strict JSON, as the server will serve it
    html = render_report(doc)
    parsed = _parse(html)
    tags = [t for t, _ in parsed.tags]
    assert "script" not in tags and "img" not in tags and "link" not in tags  # nothing active, nothing fetched
    assert not re.search(r"\b(src|href)=\"(https?:)?//", html)
    cards = [a for t, a in parsed.tags if t == "div" and "card" in a.get("class", "")]
    assert sorted(a["data-feature"] for a in cards) == sorted(["amount", "hour", "country", EVIL, "score"])
    # one SVG per feature and output card, each with bars for both histograms
    assert tags.count("svg") == 5
    for chunk in html.split('<div class="card')[1:]:
        svg = chunk[chunk.index("<svg") : chunk.index("</svg>") + 6]
        assert svg.count("<rect") >= 2
        assert "reference" in svg and "current" in svg
        ET.fromstring(svg)  # well-formed XML as well as HTML
    text = "".join(parsed.text)
    assert "fraud · version 3" in text and "churn · version 1" in text
    assert "PSI" in text and "holm" in text
    assert "unseen_category" in text and "out_of_range" in text
    assert "roc_auc" in text and "accuracy" in text  # rolling performance
    assert "availability" in text and "latency" in text and "burn rate" in text  # SLOs
    assert "no drift report for this window" in text  # the open time window
    assert "no labelled rows yet" in text and "no monitoring window yet" in text  # churn


def test_report_escapes_every_string():
    html = render_report(realistic_doc())
    assert "<script" not in html and "<img" not in html and "<b>bold</b>" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
    assert "&lt;b&gt;bold&lt;/b&gt;" in html  # a category value
    # and in attributes: the data-feature attribute round-trips to the exact name
    parsed = _parse(html)
    assert any(a.get("data-feature") == EVIL for t, a in parsed.tags if t == "div")
    evil_doc = {
        "generated_at": EVIL,
        "server": {EVIL: EVIL},
        "models": [{"model": EVIL, "version": EVIL, "performance": {"task": EVIL, "metrics": {EVIL: 0.5}}}],
    }
    html = render_report(evil_doc)
    assert "<script" not in html and "<img" not in html


@pytest.mark.parametrize(
    "doc",
    [
        {},
        None,
        [],
        {"models": None},
        {"models": [None, 3, "x", {}]},
        {"models": [{"model": "m", "version": "1", "windows": "nope", "performance": [], "slo": 5}]},
        {
            "models": [
                {
                    "model": "m",
                    "windows": [{"report": {"features": [{"name": "a"}, {"kind": "numeric", "current": {"counts": [1, 2]}}, 7]}}],
                }
            ]
        },
        {
            "models": [
                {
                    "model": "m",
                    "windows": [
                        {
                            "report": {
                                "features": {
                                    "a": {
                                        "reference": {"edges": [1, 2], "counts": [1, "x", 2]},
                                        "current": {"counts": [float("nan")]},
                                        "statistics": {"psi": "high", "js": None},
                                        "quality": {"flags": "oops"},
                                        "alarm": "maybe",
                                    }
                                }
                            }
                        }
                    ],
                }
            ]
        },
        {
            "models": [
                {
                    "model": "m",
                    "slo": {
                        "windows": [{"window": "5m", "latency": {"0.99": None}}],
                        "objectives": [{"name": "x", "burn_rate": {"5m": None}}],
                    },
                }
            ]
        },
        {"generated_at": 1e300, "models": [{"model": "m", "windows": [{"start": -1e300, "end": float("inf")}]}]},
    ],
)
def test_report_survives_missing_and_malformed_pieces(doc):
    html = render_report(doc)
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    _parse(html)


def test_a_feature_without_reference_still_gets_its_current_histogram():
    doc = {
        "models": [
            {
                "model": "m",
                "version": "1",
                "windows": [{"kind": "count", "report": {"features": {"x": {"current": {"counts": [3, 1, 0]}}}}}],
            }
        ]
    }
    html = render_report(doc)
    svg = html[html.index("<svg") : html.index("</svg>")]
    assert svg.count("<rect") == 3


# -- the CLI -------------------------------------------------------------------------------------------


def test_cli_report_from_a_file(tmp_path, capsys):
    src = tmp_path / "monitoring.json"
    src.write_text(json.dumps(realistic_doc()))
    out = tmp_path / "sub" / "report.html"
    assert main(["monitor", "report", "--input", str(src), "--output", str(out)]) == 0
    assert out.read_text().count("<svg") == 5
    assert "wrote" in capsys.readouterr().out
    assert main(["monitor", "report", "--input", str(tmp_path / "missing.json"), "--output", str(out)]) == 1
    (tmp_path / "bad.json").write_text("{not json")
    assert main(["monitor", "report", "--input", str(tmp_path / "bad.json"), "--output", str(out)]) == 1
    assert "not JSON" in capsys.readouterr().err


def test_cli_report_from_a_server(tmp_path, monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    doc = realistic_doc()
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.path)
            body = json.dumps(doc).encode() if self.path == "/v1/monitoring" else b"{}"
            self.send_response(200 if self.path == "/v1/monitoring" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        out = tmp_path / "r.html"
        saved = tmp_path / "doc.json"
        assert main(["monitor", "report", "--server", url, "--output", str(out), "--save-json", str(saved)]) == 0
        assert seen == ["/v1/monitoring"]
        assert out.read_text().count("<svg") == 5
        assert json.loads(saved.read_text())["models"][0]["model"] == "fraud"
    finally:
        server.shutdown()
        server.server_close()
    # the server is gone: a clear error, exit status 1
    assert main(["monitor", "report", "--server", url, "--output", str(out), "--timeout", "5"]) == 1


def test_add_commands_plugs_into_a_parser():
    import argparse

    parser = argparse.ArgumentParser(prog="parity")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["monitor", "report", "--input", "x.json"])
    assert args.output == "monitoring-report.html" and callable(args.func)
    with pytest.raises(SystemExit):
        parser.parse_args(["monitor", "report", "--input", "x.json", "--server", "http://h"])


def drift_shaped_report() -> dict:
    """A report in the shape of parity.monitoring.drift.WindowReport.to_dict()."""

    def stat(value, p, threshold, alarm):
        return {"value": value, "normalised": value * 10, "p_value": p, "threshold": threshold, "tested": True, "alarm": alarm}

    return {
        "drift": True, "drifted": ["features/amount"], "drifted_features": ["amount"], "drifted_outputs": [],
        "data_quality": ["features/country:unseen"], "rows": 1000, "calibrated_rows": 1000, "false_alarm_rate": 0.01,
        "correction": "bh", "tests": 7, "profile_hash": "abc",
        "columns": [
            {"part": "features", "name": "amount", "key": "features/amount", "kind": "numeric", "present": 1000, "missing": 0, "alarm": True,
             "statistics": {"psi": stat(0.28, 0.0004, 0.038, True), "js": stat(0.22, 0.0004, 0.083, True),
                            "chi2": {**stat(215.2, 0.0004, 32.1, True), "dof": 9, "p_value_asymptotic": 2e-41},
                            "ks": stat(0.21, 0.0004, 0.079, True)},
             "data_quality": {"missing_rate": {"reference": 0.0, "current": 0.0, "p_value": 1.0, "flag": False},
                              "outside_range": {"share": 0.001, "below": 1, "above": 0, "expected_share": 0.0004, "p_value": 0.3, "flag": False}}},
            {"part": "features", "name": "country", "key": "features/country", "kind": "categorical", "present": 1000, "missing": 0, "alarm": False,
             "statistics": {"psi": stat(0.01, 0.6, 0.04, False), "js": stat(0.02, 0.6, 0.08, False), "chi2": stat(1.2, 0.6, 9.0, False)},
             "data_quality": {"missing_rate": {"reference": 0.0, "current": 0.0, "p_value": 1.0, "flag": False},
                              "unseen": {"share": 0.31, "count": 310, "flag": True}}},
            {"part": "outputs", "name": "score", "key": "outputs/score", "kind": "numeric", "present": 1000, "missing": 0, "alarm": False,
             "statistics": {}, "data_quality": {"missing_rate": {"current": 0.0, "flag": False}}},
        ],
    }  # fmt: skip


def test_report_takes_the_drift_window_report_with_attached_histograms():
    from parity.monitoring.report import attach_histograms, column_quality, report_columns

    rng = np.random.default_rng(3)
    profile = build_profile(
        {"amount": rng.normal(0, 1, 2000), "country": rng.choice(["a", "b", "c"], 2000).tolist()},
        {"score": rng.uniform(0, 1, 2000)},
    )
    counts = {
        "version": 1, "profile_hash": "abc", "rows": 1000,
        "columns": {
            "features/amount": {"counts": [50] * 10, "missing": 0, "below": 1, "above": 0},
            "features/country": {"counts": [300, 200, 190, 310], "missing": 0, "below": 0, "above": 0},
        },
    }  # fmt: skip
    report = attach_histograms(drift_shaped_report(), profile, counts)
    cols = report_columns(report)
    assert [n for n, _ in cols["features"]] == ["amount", "country"] and [n for n, _ in cols["outputs"]] == ["score"]
    country = dict(cols["features"])["country"]
    assert country["reference"]["top"] == profile["features"]["country"]["top"]
    assert country["current"]["counts"] == [300, 200, 190, 310]
    assert column_quality(country) == (["unseen"], {"missing_rate": 0.0, "unseen": 0.31})
    doc = {"models": [{"model": "fraud", "version": "4", "windows": [{"kind": "count", "rows": 1000, "report": report}]}]}
    html = render_report(doc)
    assert html.count("<svg") == 3  # score has a reference (from the profile) but no current counts
    assert html.count("<rect") >= 2 * 10 + 2 * 4  # amount: 10 bins x 2, country: 4 bins x 2
    text = "".join(_parse(html).text)
    assert "χ²" in text and "limit 32.1" in text and "bh" in text and "features/country:unseen" in text
    assert "1 window(s) in alarm" in text
