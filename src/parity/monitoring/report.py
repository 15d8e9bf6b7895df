"""The monitoring report: one self-contained HTML page (inline CSS, inline SVG, no scripts, nothing
fetched) from the JSON that the server serves at ``GET /v1/monitoring``.

    from parity.monitoring.report import render_report
    html = render_report(doc)          # doc: the JSON below, as a dict

``parity monitor report --server URL | --input FILE.json --output report.html`` writes it
(parity.monitoring.cli).

The document (``MONITORING_VERSION`` = 1)::

    {"version": 1,
     "generated_at": "2026-11-27T21:00:00Z",          # ISO 8601, or epoch seconds
     "server": {...},                                 # optional, free-form (shown as key: value)
     "models": [
       {"model": "fraud", "version": "3",
        "windows": [                                  # most recent first, any number
          {"kind": "count" | "time",                  # last N rows, or a time window
           "rows": 10000, "start": ISO | epoch, "end": ISO | epoch, "closed": true,
           "report": WindowReport}],                  # below; absent while a window is open
        "performance": {...},      # PredictionLog.metrics(): task, rows, metrics{name: value}, ...
        "slo": {...}}]}            # SloTracker.evaluate(): windows[], objectives[] with burn rates

``report`` is ``parity.monitoring.drift.WindowReport.to_dict()`` -- ``drift`` (bool),
``correction``, ``false_alarm_rate``, ``tests``, ``data_quality`` (flags), and ``columns``, one per
feature and output::

    {"part": "features" | "outputs", "name": "amount", "kind": "numeric" | "categorical",
     "present": n, "missing": m, "alarm": bool,
     "statistics": {"psi": {"value", "p_value", "threshold", "alarm", ...}, "js": {...},
                    "chi2": {...}, "ks": {...}},
     "data_quality": {"missing_rate": {"current", "flag", ...}, "outside_range": {"share", "flag", ...},
                      "unseen": {"share", "flag"} | null},
     # added by the server for the plots (the report itself holds no counts):
     "reference": {"edges": [e1, ..., ek], "counts": [c0, ..., ck]}           # numeric: the profile's
               | {"top": [{"value": v, "count": c}, ...], "other": o},        # categorical
     "current": {"counts": [c0, ..., ck]}}                                    # the window's bins,
                                                                              # same layout

The renderer also takes a simpler hand-written form: ``"alarm"`` instead of ``"drift"``,
``"features"``/``"outputs"`` as {name: result} (or lists of results with "name") instead of
``columns``, statistics as plain numbers (``{"psi": 0.02, "chi2_p": 0.41}``, with optional
``"thresholds": {"psi": 0.1}``), and ``"quality": {"flags": [...], "missing_rate": 0.0}`` instead
of ``data_quality``.

Every part is optional: a model without windows, a window without a report, a feature without
reference edges or statistics, ... each renders as "not available" rather than failing.  Every
string from the document is escaped (``html.escape``) -- feature names, category values and
summaries are data, not markup.  Counts are drawn as proportions (each histogram sums to 1), so a
window of 500 rows and a reference of 1,000,000 compare directly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from html import escape
from itertools import pairwise

MONITORING_VERSION = 1
STATISTICS = ("psi", "js", "chi2", "ks", "chi2_p", "p_adjusted")  # table order; others follow
_STAT_LABELS = {"psi": "PSI", "js": "JS distance", "chi2": "χ²", "ks": "KS", "chi2_p": "χ² p", "p_adjusted": "adjusted p"}

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:16px 28px}
header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#c6cbd6}
main{padding:16px 28px}
section.model{background:#fff;border:1px solid #dde1e8;border-radius:8px;margin:0 0 24px;padding:12px 20px}
h2{font-size:18px;margin:8px 0}
h3{font-size:15px;margin:18px 0 6px}
h4{font-size:14px;margin:0 0 4px;word-break:break-all}
table{border-collapse:collapse;margin:6px 0 12px}
th,td{border-bottom:1px solid #e6e9ef;padding:3px 10px;text-align:left;vertical-align:top}
th{background:#f0f2f6;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;border-radius:10px;padding:0 8px;font-size:12px;font-weight:600}
.alarm{background:#fde2e1;color:#a4161a}
.ok{background:#dff3e4;color:#1b5e20}
.warn{background:#fff1d6;color:#8a5300}
.na{color:#8a93a3}
.grid{display:flex;flex-wrap:wrap;gap:12px}
.card{border:1px solid #e1e5ec;border-radius:6px;padding:8px;width:380px;background:#fcfcfd}
.card.flagged{border-color:#e5989b;background:#fff8f8}
.legend span{display:inline-block;width:10px;height:10px;margin:0 4px 0 10px;vertical-align:middle}
.small{font-size:12px;color:#5a6375}
"""
_REF_COLOR = "#8fa3bf"
_CUR_COLOR = "#e07a2f"


def _e(x) -> str:
    return escape("" if x is None else str(x), quote=True)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _fmt(v, digits: int = 4) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if not _is_num(v):
        return '<span class="na">–</span>' if v is None or isinstance(v, (int, float)) else _e(v)
    if isinstance(v, int):
        return f"{v:,}"
    if v != 0 and (abs(v) < 10 ** -(digits - 1) or abs(v) >= 1e6):
        return f"{v:.{max(1, digits - 2)}e}"
    return f"{v:.{digits}g}" if abs(v) >= 1 else f"{v:.{digits}f}".rstrip("0").rstrip(".") or "0"


def _pct(v) -> str:
    return f"{100 * v:.2f}%" if _is_num(v) else '<span class="na">–</span>'


def _time(v) -> str:
    if _is_num(v):
        try:
            return datetime.fromtimestamp(float(v), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        except (OverflowError, OSError, ValueError):
            return _e(v)
    return _e(v) if v not in (None, "") else '<span class="na">–</span>'


def _badge(flag, yes: str = "alarm", no: str = "ok") -> str:
    if flag is None:
        return '<span class="na">–</span>'
    return f'<span class="badge alarm">{_e(yes)}</span>' if flag else f'<span class="badge ok">{_e(no)}</span>'


def _mapping(v) -> dict:
    return v if isinstance(v, Mapping) else {}


def _columns(v) -> list[tuple[str, dict]]:
    """Feature results given as {name: result} or [{"name": ..., ...}]."""
    if isinstance(v, Mapping):
        return [(str(k), _mapping(x)) for k, x in v.items()]
    if isinstance(v, list):
        return [(str(x.get("name", f"#{i}")), x) for i, x in enumerate(v) if isinstance(x, Mapping)]
    return []


def _numbers(v) -> list[float] | None:
    if not isinstance(v, list) or not v:
        return None
    out = []
    for x in v:
        if not _is_num(x) or x < 0:
            return None
        out.append(float(x))
    return out


# -- charts -------------------------------------------------------------------------------------------


def _short(x, n: int = 10) -> str:
    s = _fmt_edge(x) if _is_num(x) else str(x)
    return s if len(s) <= n else s[: n - 1] + "…"


def _fmt_edge(x: float) -> str:
    if x == 0:
        return "0"
    if abs(x) >= 1e5 or abs(x) < 1e-3:
        return f"{x:.2g}"
    return f"{x:.4g}"


def _bin_labels(col: Mapping, n: int) -> list[str]:
    ref = _mapping(col.get("reference"))
    edges = ref.get("edges")
    if isinstance(edges, list) and len(edges) == n - 1 and all(_is_num(e) for e in edges):
        if n == 1:
            return ["all"]
        labels = [f"< {_fmt_edge(edges[0])}"]
        labels += [f"[{_fmt_edge(a)}, {_fmt_edge(b)})" for a, b in pairwise(edges)]
        labels.append(f"≥ {_fmt_edge(edges[-1])}")
        return labels
    top = ref.get("top")
    if isinstance(top, list):
        values = [str(t.get("value")) if isinstance(t, Mapping) else str(t) for t in top]
        if len(values) == n - 1:
            return values + ["(other)"]
        if len(values) == n:
            return values
    return [f"bin {i}" for i in range(n)]


def _reference_counts(col: Mapping) -> list[float] | None:
    ref = _mapping(col.get("reference"))
    counts = _numbers(ref.get("counts"))
    if counts is not None:
        return counts
    top = ref.get("top")
    if isinstance(top, list) and top:
        counts = _numbers([t.get("count") if isinstance(t, Mapping) else None for t in top])
        if counts is not None:
            other = ref.get("other", 0)
            return counts + [float(other) if _is_num(other) and other >= 0 else 0.0]
    return None


def histogram_svg(labels: list[str], reference: list[float] | None, current: list[float] | None, title: str = "",
                  width: int = 360, height: int = 165) -> str:  # fmt: skip
    """Grouped bars: the reference's and the current window's share of rows per bin."""
    series = [
        (name, counts, color)
        for name, counts, color in (("reference", reference, _REF_COLOR), ("current", current, _CUR_COLOR))
        if counts
    ]
    if not series:
        return '<p class="na">no histogram</p>'
    n = max(len(c) for _, c, _ in series)
    shares = []
    for name, counts, color in series:
        total = sum(counts)
        shares.append((name, [c / total if total else 0.0 for c in counts] + [0.0] * (n - len(counts)), color))
    top = max(max(s) for _, s, _ in shares) or 1.0
    left, bottom, pad_top = 40, 50, 8
    plot_w, plot_h = width - left - 6, height - bottom - pad_top
    slot = plot_w / n
    bar = max(1.0, slot * 0.8 / len(shares))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}">',
        f"<title>{_e(title)}</title>",
        f'<line x1="{left}" y1="{pad_top + plot_h}" x2="{width - 6}" y2="{pad_top + plot_h}" stroke="#9aa3b2"/>',
        f'<line x1="{left}" y1="{pad_top}" x2="{left}" y2="{pad_top + plot_h}" stroke="#9aa3b2"/>',
        f'<text x="{left - 4}" y="{pad_top + 8}" font-size="9" text-anchor="end" fill="#5a6375">{100 * top:.0f}%</text>',
        f'<text x="{left - 4}" y="{pad_top + plot_h}" font-size="9" text-anchor="end" fill="#5a6375">0</text>',
    ]
    for i in range(n):
        x0 = left + i * slot + slot * 0.1
        for j, (name, s, color) in enumerate(shares):
            h = plot_h * s[i] / top
            x = x0 + j * bar
            y = pad_top + plot_h - h
            label = labels[i] if i < len(labels) else f"bin {i}"
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" fill="{color}">'
                f"<title>{_e(label)}: {_e(name)} {100 * s[i]:.2f}%</title></rect>"
            )
    step = max(1, math.ceil(n / 8))
    for i in range(0, n, step):
        cx = left + (i + 0.5) * slot
        lab = labels[i] if i < len(labels) else f"bin {i}"
        parts.append(
            f'<text x="{cx:.1f}" y="{pad_top + plot_h + 10}" font-size="9" text-anchor="end" fill="#5a6375" '
            f'transform="rotate(-30 {cx:.1f} {pad_top + plot_h + 10})">{_e(_short(lab, 12))}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


# -- column results: either shape -------------------------------------------------------------------


def _stat_of(col: Mapping, name: str) -> dict:
    """{"value", "p", "threshold", "alarm"} of one statistic of a column, from either shape: a
    number (with ``thresholds[name]`` beside it) or drift's dict (value, p_value, threshold,
    alarm)."""
    v = _mapping(col.get("statistics")).get(name)
    if isinstance(v, Mapping):
        alarm = v.get("alarm") if isinstance(v.get("alarm"), bool) else None
        return {"value": v.get("value"), "p": v.get("p_value"), "threshold": v.get("threshold"), "alarm": alarm}
    th = _mapping(col.get("thresholds")).get(name)
    alarm = None
    if _is_num(v) and _is_num(th):
        alarm = v < th if name.endswith("_p") or name.startswith("p_") else v > th
    return {"value": v, "p": None, "threshold": th, "alarm": alarm}


def column_statistics(col: Mapping) -> dict[str, dict]:
    """Every statistic of a column result, normalised to {"value", "p", "threshold", "alarm"}."""
    stats = _mapping(col.get("statistics"))
    return {str(k): _stat_of(col, k) for k, v in stats.items() if v is None or _is_num(v) or isinstance(v, Mapping)}


def column_quality(col: Mapping) -> tuple[list[str], dict[str, float]]:
    """(raised data-quality flags, rates) of a column result: ``quality`` {"flags": [...],
    "<check>_rate": x} or drift's ``data_quality`` {check: {"flag", "current" | "share", ...}}."""
    flags: list[str] = []
    rates: dict[str, float] = {}
    q = _mapping(col.get("quality"))
    if isinstance(q.get("flags"), list):
        flags += [str(f) for f in q["flags"]]
    for k, v in q.items():
        if k != "flags" and _is_num(v):
            rates[str(k)] = float(v)
    for check, d in _mapping(col.get("data_quality")).items():
        if not isinstance(d, Mapping):
            continue
        if d.get("flag") is True:
            flags.append(str(check))
        rate = d.get("current") if _is_num(d.get("current")) else d.get("share")
        if _is_num(rate):
            rates[str(check)] = float(rate)
    return flags, rates


def column_alarm(col: Mapping) -> bool | None:
    a = col.get("alarm")
    return a if isinstance(a, bool) else None


def report_columns(report: Mapping) -> dict[str, list[tuple[str, dict]]]:
    """{"features": [(name, result)], "outputs": [...]} from ``features``/``outputs`` (mappings or
    lists of results with "name") or drift's ``columns`` list (each with "part" and "name")."""
    out = {"features": _columns(report.get("features")), "outputs": _columns(report.get("outputs"))}
    cols = report.get("columns")
    if isinstance(cols, list):
        for i, c in enumerate(cols):
            if isinstance(c, Mapping):
                part = "outputs" if c.get("part") == "outputs" else "features"
                out[part].append((str(c.get("name", f"#{i}")), c))
    return out


def report_alarm(report: Mapping) -> bool | None:
    for key in ("alarm", "drift"):
        if isinstance(report.get(key), bool):
            return report[key]
    return None


def attach_histograms(report: Mapping, profile: Mapping, counts: Mapping) -> dict:
    """A copy of a drift ``WindowReport.to_dict()`` whose columns carry what the plots need:
    ``reference`` from the version's profile (numeric: edges and counts; categorical: top and
    other) and ``current`` from the window's ``Counts.to_dict()`` (counts, missing, below, above).
    Columns missing from either are left as they are."""
    out = dict(report)
    cur_cols = _mapping(_mapping(counts).get("columns"))
    cols = []
    for c in report.get("columns") or []:
        if not isinstance(c, Mapping):
            continue
        c = dict(c)
        part, name = c.get("part", "features"), c.get("name")
        prof = _mapping(_mapping(_mapping(profile).get(part)).get(name))
        if prof.get("kind") == "numeric":
            c["reference"] = {"edges": prof.get("edges"), "counts": prof.get("counts")}
        elif prof.get("kind") == "categorical":
            c["reference"] = {"top": prof.get("top"), "other": prof.get("other")}
        cur = cur_cols.get(c.get("key") or f"{part}/{name}")
        if isinstance(cur, Mapping):
            c["current"] = dict(cur)
        cols.append(c)
    out["columns"] = cols
    return out


# -- sections -----------------------------------------------------------------------------------------


def _stat_cell(s: dict | None) -> str:
    if s is None or (s["value"] is None and s["p"] is None):
        return '<td class="num"><span class="na">–</span></td>'
    cell = _fmt(s["value"])
    if s["alarm"] is True:
        cell = f'<span class="badge alarm">{cell}</span>'
    extra = []
    if _is_num(s["threshold"]):
        extra.append(f"limit {_fmt(s['threshold'])}")
    if _is_num(s["p"]):
        extra.append(f"p {_fmt(s['p'])}")
    if extra:
        cell += f'<br><span class="small">{" · ".join(extra)}</span>'
    return f'<td class="num">{cell}</td>'


def _quality_cell(col: Mapping) -> str:
    flags, rates = column_quality(col)
    bits = []
    if flags:
        bits.append(" ".join(f'<span class="badge warn">{_e(f)}</span>' for f in flags))
    for k, v in rates.items():
        bits.append(f'<span class="small">{_e(k.replace("_", " "))} {_pct(v)}</span>')
    return "<td>" + "<br>".join(bits) + "</td>" if bits else '<td><span class="na">–</span></td>'


def _stat_names(cols: list[tuple[str, dict]]) -> list[str]:
    seen: list[str] = []
    for _, col in cols:
        for k in column_statistics(col):
            if k not in seen:
                seen.append(k)
    order = {s: i for i, s in enumerate(STATISTICS)}
    return sorted(seen, key=lambda s: (order.get(s, len(order)), seen.index(s)))


def _columns_section(title: str, cols: list[tuple[str, dict]]) -> str:
    if not cols:
        return ""
    names = _stat_names(cols)
    head = "".join(f"<th>{_e(_STAT_LABELS.get(s, s))}</th>" for s in names)
    rows = []
    for name, col in cols:
        stats = column_statistics(col)
        rows.append(
            f"<tr><td>{_e(name)}</td><td>{_e(col.get('kind', ''))}</td><td>{_badge(column_alarm(col))}</td>"
            + "".join(_stat_cell(stats.get(s)) for s in names)
            + _quality_cell(col)
            + "</tr>"
        )
    table = f"<table><tr><th>{_e(title)}</th><th>kind</th><th>drift</th>{head}<th>data quality</th></tr>{''.join(rows)}</table>"
    cards = []
    for name, col in cols:
        ref = _reference_counts(col)
        cur = _numbers(_mapping(col.get("current")).get("counts"))
        n = max(len(ref or []), len(cur or []))
        labels = _bin_labels(col, n) if n else []
        svg = histogram_svg(labels, ref, cur, title=f"{name}: reference against current")
        missing = _mapping(col.get("current")).get("missing", col.get("missing"))
        note = f'<div class="small">missing in the window: {_fmt(missing)}</div>' if _is_num(missing) else ""
        cards.append(
            f'<div class="card{" flagged" if column_alarm(col) else ""}" data-feature="{_e(name)}">'
            f"<h4>{_e(name)} {_badge(column_alarm(col))}</h4>{svg}{note}</div>"
        )
    legend = (
        f'<div class="legend small"><span style="background:{_REF_COLOR}"></span>reference (training)'
        f'<span style="background:{_CUR_COLOR}"></span>current window</div>'
    )
    return f'{table}{legend}<div class="grid">{"".join(cards)}</div>'


def _window_section(w: Mapping, index: int) -> str:
    kind = w.get("kind")
    head = f"{'Count window' if kind == 'count' else 'Time window' if kind == 'time' else 'Window'} {index + 1}"
    meta = (
        f'<p class="small">rows {_fmt(w.get("rows"))} · from {_time(w.get("start"))} to {_time(w.get("end"))}'
        + (" · closed" if w.get("closed") is True else " · open" if w.get("closed") is False else "")
        + "</p>"
    )
    report = w.get("report")
    if not isinstance(report, Mapping):
        return f'<h3>{_e(head)}</h3>{meta}<p class="na">no drift report for this window</p>'
    opts = []
    for key in ("correction", "false_alarm_rate", "tests", "calibrated_rows"):
        if key in report and (isinstance(report[key], str) or _is_num(report[key])):
            opts.append(f"{_e(key.replace('_', ' '))}: {_fmt(report[key])}")
    dq = report.get("data_quality")
    if isinstance(dq, list) and dq:
        opts.append("data-quality flags: " + ", ".join(_e(x) for x in dq))
    alarm = report_alarm(report)
    badge = _badge(alarm) if alarm is not None else ""
    cols = report_columns(report)
    body = _columns_section("feature", cols["features"]) + _columns_section("output", cols["outputs"])
    if not body:
        body = '<p class="na">the report has no per-feature results</p>'
    extra = f'<p class="small">{" · ".join(opts)}</p>' if opts else ""
    return f"<h3>{_e(head)} {badge}</h3>{meta}{extra}{body}"


def _performance_section(perf) -> str:
    if not isinstance(perf, Mapping) or not perf:
        return '<h3>Performance</h3><p class="na">no labelled rows yet (send ground truth to the feedback API)</p>'
    metrics = _mapping(perf.get("metrics"))
    rows = "".join(f'<tr><td>{_e(k)}</td><td class="num">{_fmt(v)}</td></tr>' for k, v in metrics.items())
    window = _mapping(perf.get("window"))
    info = (
        f'<p class="small">task {_e(perf.get("task") or "unknown")}'
        + (" (declared)" if perf.get("task_declared") is True else " (inferred)" if perf.get("task_declared") is False else "")
        + (f" · threshold {_fmt(perf.get('threshold'))}" if _is_num(perf.get("threshold")) else "")
        + f" · {_fmt(perf.get('rows'))} labelled rows in the window"
        + (f" (last {_fmt(window.get('max_rows'))} rows" if _is_num(window.get("max_rows")) else "")
        + (f", served in the last {_fmt(window.get('secs'))} s" if _is_num(window.get("secs")) else "")
        + (")" if _is_num(window.get("max_rows")) else "")
        + (f" · {_fmt(perf.get('labelled_rows_total'))} joined in all" if _is_num(perf.get("labelled_rows_total")) else "")
        + "</p>"
    )
    table = f"<table><tr><th>metric</th><th>value</th></tr>{rows}</table>" if rows else '<p class="na">no metrics yet</p>'
    return f"<h3>Performance</h3>{info}{table}"


def _slo_section(slo) -> str:
    if not isinstance(slo, Mapping) or not slo:
        return '<h3>SLOs</h3><p class="na">no SLO data yet</p>'
    out = ["<h3>SLOs</h3>"]
    windows = [w for w in slo.get("windows", []) if isinstance(w, Mapping)] if isinstance(slo.get("windows"), list) else []
    if windows:
        qs: list[str] = []
        for w in windows:
            for q in _mapping(w.get("latency")):
                if q not in qs:
                    qs.append(q)
        head = "".join(f"<th>p{_e(_quantile_label(q))}</th>" for q in qs)
        rows = []
        for w in windows:
            lat = _mapping(w.get("latency"))
            rows.append(
                f'<tr><td>{_e(w.get("window"))}</td><td class="num">{_fmt(w.get("requests"))}</td><td class="num">{_fmt(w.get("errors"))}</td>'
                + "".join(f'<td class="num">{_ms(lat.get(q))}</td>' for q in qs)
                + f'<td class="num">{_fmt(w.get("covered_secs"))}</td></tr>'
            )
        out.append(
            f"<table><tr><th>window</th><th>requests</th><th>errors</th>{head}<th>covered (s)</th></tr>{''.join(rows)}</table>"
        )
    objectives = (
        [o for o in slo.get("objectives", []) if isinstance(o, Mapping)] if isinstance(slo.get("objectives"), list) else []
    )
    for o in objectives:
        burn = _mapping(o.get("burn_rate"))
        ratio = _mapping(o.get("bad_ratio"))
        names = list(dict.fromkeys(list(burn) + list(ratio)))
        target = f"{_pct(o.get('objective'))}" + (
            f" within {_ms(o.get('threshold_secs'))}" if _is_num(o.get("threshold_secs")) else ""
        )
        firing = o.get("firing") if isinstance(o.get("firing"), list) else []
        badge = " ".join(f'<span class="badge alarm">{_e(f)}</span>' for f in firing) or '<span class="badge ok">ok</span>'
        rows = "".join(
            f'<tr><td>{_e(n)}</td><td class="num">{_pct(ratio.get(n))}</td><td class="num">{_fmt(burn.get(n))}</td></tr>'
            for n in names
        )
        rules = o.get("rules") if isinstance(o.get("rules"), list) else []
        rule_txt = "; ".join(
            f"{_e(r.get('window'))} &gt; {_fmt(r.get('factor'))} ({_e(r.get('severity'))}){' firing' if r.get('firing') is True else ''}"
            for r in rules
            if isinstance(r, Mapping)
        )
        out.append(
            f'<h4>{_e(o.get("name"))} <span class="small">({_e(o.get("kind"))}: {target})</span> {badge}</h4>'
            + (f"<table><tr><th>window</th><th>bad</th><th>burn rate</th></tr>{rows}</table>" if rows else "")
            + (f'<p class="small">burn-rate rules: {rule_txt}</p>' if rule_txt else "")
        )
    if len(out) == 1:
        out.append('<p class="na">no SLO data yet</p>')
    return "".join(out)


def _quantile_label(q: str) -> str:
    try:
        return f"{float(q) * 100:g}"
    except (TypeError, ValueError):
        return str(q)


def _ms(v) -> str:
    return f"{1000 * v:.3g} ms" if _is_num(v) else '<span class="na">–</span>'


def _model_section(m: Mapping) -> str:
    name, version = m.get("model", "?"), m.get("version", "?")
    windows = [w for w in m.get("windows", []) if isinstance(w, Mapping)] if isinstance(m.get("windows"), list) else []
    alarms = sum(1 for w in windows if report_alarm(_mapping(w.get("report"))) is True)
    badge = (
        f'<span class="badge alarm">{alarms} window(s) in alarm</span>'
        if alarms
        else ('<span class="badge ok">no drift alarm</span>' if windows else "")
    )
    parts = [f'<section class="model" id="{_e(_anchor(name, version))}"><h2>{_e(name)} · version {_e(version)} {badge}</h2>']
    parts.append(_performance_section(m.get("performance")))
    parts.append(_slo_section(m.get("slo")))
    if windows:
        parts += [_window_section(w, i) for i, w in enumerate(windows)]
    else:
        parts.append('<h3>Drift</h3><p class="na">no monitoring window yet</p>')
    parts.append("</section>")
    return "".join(parts)


def _anchor(model, version) -> str:
    return "m-" + "".join(c if c.isalnum() or c in "-_" else "_" for c in f"{model}-{version}")


def render_report(doc) -> str:
    """The HTML page for a monitoring document (see the module docstring).  Never raises on a
    malformed or partial document: what cannot be read is shown as not available."""
    doc = _mapping(doc)
    models = [m for m in doc.get("models", []) if isinstance(m, Mapping)] if isinstance(doc.get("models"), list) else []
    server = _mapping(doc.get("server"))
    server_line = " · ".join(f"{_e(k)}: {_e(v)}" for k, v in server.items() if isinstance(v, (str, int, float, bool)))
    toc = "".join(
        f'<li><a href="#{_e(_anchor(m.get("model", "?"), m.get("version", "?")))}">{_e(m.get("model", "?"))} · version {_e(m.get("version", "?"))}</a></li>'
        for m in models
    )
    body = "".join(_model_section(m) for m in models) or '<p class="na">no model versions are monitored</p>'
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>Parity monitoring report</title>"
        f"<style>{_CSS}</style></head><body>"
        f"<header><h1>Parity monitoring report</h1><p>generated {_time(doc.get('generated_at'))}"
        + (f" · {server_line}" if server_line else "")
        + "</p></header><main>"
        + (f"<ul>{toc}</ul>" if toc else "")
        + body
        + "</main></body></html>\n"
    )


__all__ = [
    "MONITORING_VERSION", "STATISTICS", "attach_histograms", "column_alarm", "column_quality", "column_statistics", "histogram_svg", "render_report",
    "report_alarm", "report_columns",
]  # fmt: skip
