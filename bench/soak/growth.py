"""Did anything grow? The service is measured idle (no stream running) twice: after the warm-up and after the
last stream of the run; what a stream leaves behind shows as the difference.

- RSS, per worker: at most ``max(rss_mib MiB, rss_fraction x baseline)`` more. The first minute fills the
  allocator's arenas, the database pool and the per-user limit counters; a leak of 1 KB a stream grows a worker
  by ~10 MiB in a 30-minute soak, which this catches, while the allocator's own variation stays well under it.
- Open fds (less the upstream keep-alive connections the SDK's pools hold on purpose): at most ``fds`` more.
- Event-loop watchers (every connection, timer and waiting greenlet holds one): at most ``watchers`` more.
- Open streams, held stream slots, database sessions and upstream connections in use: back to 0.
- The same worker processes at both ends (a worker that died and was replaced would hide a leak and lose streams).
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.soak.probe import IDLE_GAUGES, Sample

MIB = 1 << 20


@dataclass(frozen=True)
class Tolerance:
    rss_mib: float = 8.0
    rss_fraction: float = 0.10
    fds: int = 2
    watchers: int = 4

    def describe(self) -> str:
        return (
            f"RSS +{self.rss_mib:g} MiB or +{self.rss_fraction:.0%} a worker, fds +{self.fds}, "
            f"watchers +{self.watchers}, open streams/slots/sessions/upstream requests back to 0"
        )


def growth_problems(baseline: Sample, final: Sample, tolerance: Tolerance) -> list[str]:
    problems: list[str] = []
    if baseline.pids != final.pids:
        problems.append(f"the workers changed from {baseline.pids} to {final.pids} (one died or was restarted)")
        return problems
    for pid, before, after in zip(final.pids, baseline.rss, final.rss, strict=True):
        allowed = max(tolerance.rss_mib * MIB, tolerance.rss_fraction * before)
        if after - before > allowed:
            problems.append(
                f"worker {pid} RSS grew {before / MIB:.1f} -> {after / MIB:.1f} MiB (allowed +{allowed / MIB:.1f})"
            )
    if final.held_fds - baseline.held_fds > tolerance.fds:
        problems.append(f"open fds grew {baseline.held_fds} -> {final.held_fds} (allowed +{tolerance.fds})")
    if final.watchers - baseline.watchers > tolerance.watchers:
        problems.append(
            f"event-loop watchers grew {baseline.watchers:.0f} -> {final.watchers:.0f} (allowed +{tolerance.watchers})"
        )
    for name in IDLE_GAUGES:
        value = final.gauges.get(name)
        if value != 0:
            problems.append(f"{name} is {value} with no stream running")
    return problems


def growth_summary(baseline: Sample, final: Sample) -> str:
    rss = ", ".join(
        f"{before / MIB:.1f} -> {after / MIB:.1f} MiB" for before, after in zip(baseline.rss, final.rss, strict=False)
    )
    return (
        f"idle after warm-up vs idle at the end: RSS {rss}; fds {baseline.held_fds} -> {final.held_fds}; "
        f"watchers {baseline.watchers:.0f} -> {final.watchers:.0f}"
    )
