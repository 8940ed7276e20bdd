"""What the soak watches in the service: each worker's RSS and open fds (from /proc) and the gauges its
``/metrics`` gives (event-loop watchers, open streams, held slots, database sessions, upstream connections)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.run import PAGE, children

GAUGE = re.compile(r"^(chat_\w+) ([0-9.e+-]+)$", re.MULTILINE)
IDLE_GAUGES = (  # each is 0 when no stream runs; anything else is a stream, a slot or a connection left behind
    "chat_streams_open",
    "chat_stream_slots_held",
    "chat_db_sessions_open",
    "chat_upstream_connections_in_use",
)


@dataclass(frozen=True)
class Sample:
    elapsed: float
    pids: tuple[int, ...]
    rss: tuple[int, ...]  # bytes, per worker
    fds: tuple[int, ...]  # per worker
    gauges: dict[str, float] = field(default_factory=dict)

    @property
    def watchers(self) -> float:
        return self.gauges.get("chat_process_event_loop_watchers", float("nan"))

    @property
    def held_fds(self) -> int:
        """The workers' fds less the upstream keep-alive connections their pools hold on purpose (bounded by the
        pools and reused by the next request): a leaked socket is in no pool, so it still counts."""
        return sum(self.fds) - int(self.gauges.get("chat_upstream_connections_pooled", 0))


def worker_pids(master: int) -> tuple[int, ...]:
    return tuple(sorted(children(master)))


def _rss(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def scrape(client: httpx.AsyncClient, workers: int) -> dict[str, float]:
    """The chat_* gauges. Host-wide gauges are the same from any worker; a ``chat_process_*`` gauge describes the
    worker that answered, so with several workers it is scraped a few times and the largest value kept."""
    found: dict[str, float] = {}
    for _ in range(1 if workers == 1 else 3 * workers):
        text = (await client.get("/metrics")).text
        for name, value in GAUGE.findall(text):
            number = float(value)
            found[name] = max(found.get(name, number), number) if name.startswith("chat_process_") else number
    return found


async def sample(client: httpx.AsyncClient, master: int, elapsed: float) -> Sample:
    pids = worker_pids(master)
    gauges = await scrape(client, len(pids))
    return Sample(elapsed, pids, tuple(_rss(pid) for pid in pids), tuple(_fds(pid) for pid in pids), gauges)
