"""The soak's table: one row per interval, what the service holds and how much of each kind of traffic ran."""

from __future__ import annotations

from collections import Counter

from bench.soak.growth import MIB
from bench.soak.probe import Sample
from bench.soak.traffic import COUNTED

HEADER = (
    "| elapsed | RSS MiB (per worker) | fds | pooled | watchers | open | "
    + " | ".join(COUNTED)
    + " | problems | note |"
)
RULE = "| ---: | ---: | ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in COUNTED) + " | ---: | --- |"


def _clock(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}:{rest:02d}"


def row(sample: Sample, counts: Counter[str], problems: int, note: str = "") -> str:
    rss = " / ".join(f"{value / MIB:.1f}" for value in sample.rss)
    gauges = sample.gauges
    cells = [
        _clock(sample.elapsed),
        rss,
        str(sum(sample.fds)),
        f"{gauges.get('chat_upstream_connections_pooled', 0):.0f}",
        f"{sample.watchers:.0f}",
        f"{gauges.get('chat_streams_open', 0):.0f}",
        *(f"{counts[name]:,}" for name in COUNTED),
        str(problems),
        note,
    ]
    return "| " + " | ".join(cells) + " |"
