"""Prometheus exposition without a client library on the hot path.

Counters are plain attributes that the request path increments; histograms are fixed bucket arrays.
Both are collected into text only when /metrics is scraped.  Samples from several worker processes
merge by adding (`merge_samples`), so one scrape can show the whole server.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

# Seconds; spans 50 µs .. 10 s for request-path durations.
DURATION_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Histogram:
    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple[float, ...] = DURATION_BUCKETS):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last slot is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1


Labels = tuple[tuple[str, str], ...]


@dataclass
class Family:
    name: str
    kind: str  # counter | gauge | histogram
    help: str
    samples: dict[Labels, object] = field(default_factory=dict)  # number, or Histogram

    def add(self, labels: Labels, value) -> None:
        self.samples[labels] = value


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt_labels(labels: Labels, extra: str = "") -> str:
    parts = [f'{k}="{_escape(v)}"' for k, v in labels]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(v: float) -> str:
    if v == float("inf"):
        return "+Inf"
    if isinstance(v, int) or float(v).is_integer():
        return str(int(v))
    return repr(float(v))


def render(families: list[Family]) -> str:
    """Prometheus text format 0.0.4."""
    out: list[str] = []
    for fam in families:
        out.append(f"# HELP {fam.name} {fam.help}")
        out.append(f"# TYPE {fam.name} {fam.kind}")
        for labels, value in sorted(fam.samples.items()):
            if isinstance(value, Histogram):
                cumulative = 0
                for bound, c in zip(value.bounds + (float("inf"),), value.counts):
                    cumulative += c
                    le = 'le="' + _num(bound) + '"'
                    out.append(f"{fam.name}_bucket{_fmt_labels(labels, le)} {cumulative}")
                out.append(f"{fam.name}_sum{_fmt_labels(labels)} {_num(value.sum)}")
                out.append(f"{fam.name}_count{_fmt_labels(labels)} {value.count}")
            else:
                out.append(f"{fam.name}{_fmt_labels(labels)} {_num(value)}")
    out.append("")
    return "\n".join(out)


def merge(into: list[Family], other: list[Family]) -> list[Family]:
    """Add `other`'s samples into `into` (families matched by name): counters, gauges and
    histograms all sum, which is right for per-process counts and pending gauges."""
    by_name = {f.name: f for f in into}
    for fam in other:
        mine = by_name.get(fam.name)
        if mine is None:
            into.append(fam)
            by_name[fam.name] = fam
            continue
        for labels, value in fam.samples.items():
            cur = mine.samples.get(labels)
            if cur is None:
                mine.samples[labels] = value
            elif isinstance(cur, Histogram):
                h = Histogram(cur.bounds)
                h.counts = [a + b for a, b in zip(cur.counts, value.counts)]
                h.sum, h.count = cur.sum + value.sum, cur.count + value.count
                mine.samples[labels] = h
            else:
                mine.samples[labels] = cur + value
    return into


def to_json(families: list[Family]) -> list:
    """A JSON-able form, for handing samples between worker processes."""
    out = []
    for fam in families:
        samples = []
        for labels, v in fam.samples.items():
            if isinstance(v, Histogram):
                samples.append([list(map(list, labels)), {"b": list(v.bounds), "c": v.counts, "s": v.sum, "n": v.count}])
            else:
                samples.append([list(map(list, labels)), v])
        out.append([fam.name, fam.kind, fam.help, samples])
    return out


def from_json(data: list) -> list[Family]:
    fams = []
    for name, kind, help_, samples in data:
        fam = Family(name, kind, help_)
        for labels, v in samples:
            key = tuple((k, val) for k, val in labels)
            if isinstance(v, dict):
                h = Histogram(tuple(v["b"]))
                h.counts, h.sum, h.count = list(v["c"]), v["s"], v["n"]
                fam.samples[key] = h
            else:
                fam.samples[key] = v
        fams.append(fam)
    return fams
