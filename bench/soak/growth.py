"""Did anything grow? The service is measured idle (no stream running) three times: after the warm-up, at
half-time and at the end; what streams leave behind shows as the difference.

- Open fds (less the upstream keep-alive connections the SDK's pools hold on purpose), event-loop watchers (every
  connection, timer and waiting greenlet holds one), and the same worker processes: the end against the idle
  sample after the warm-up. Each comes back to its idle value once streams end, so the allowance is a few.
- Open streams, held stream slots, database sessions and upstream connections in use: 0 at the end.
- RSS, per worker: the end against half-time, at most ``rss_mib`` more. Not against the warm-up: the first
  minutes fill things that are bounded but not small (finished streams are kept 2 minutes for replay, the
  allocator's arenas, per-user limit counters). A leak keeps growing: 1 KB a stream is ~10 MiB over the second
  half of a 30-minute soak here (~680 streams a minute).
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.soak.probe import IDLE_GAUGES, Sample

MIB = 1 << 20


@dataclass(frozen=True)
class Tolerance:
    rss_mib: float = 8.0
    fds: int = 2
    watchers: int = 4

    def describe(self) -> str:
        return (
            f"RSS +{self.rss_mib:g} MiB a worker over the second half; fds +{self.fds} and watchers "
            f"+{self.watchers} against the idle service after the warm-up; open streams, slots, database sessions "
            "and upstream requests back to 0"
        )


def growth_problems(baseline: Sample, middle: Sample, final: Sample, tolerance: Tolerance) -> list[str]:
    if not baseline.pids == middle.pids == final.pids:
        pids = f"{baseline.pids}, {middle.pids}, {final.pids}"
        return [f"the workers changed ({pids}): one died or was restarted"]
    problems: list[str] = []
    for pid, before, after in zip(final.pids, middle.rss, final.rss, strict=True):
        if after - before > tolerance.rss_mib * MIB:
            problems.append(
                f"worker {pid} RSS grew {before / MIB:.1f} -> {after / MIB:.1f} MiB over the second half "
                f"(allowed +{tolerance.rss_mib:g})"
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


def growth_summary(baseline: Sample, middle: Sample, final: Sample) -> str:
    rss = ", ".join(
        f"{a / MIB:.1f} -> {b / MIB:.1f} -> {c / MIB:.1f} MiB"
        for a, b, c in zip(baseline.rss, middle.rss, final.rss, strict=False)
    )
    return (
        f"idle after warm-up -> at half-time -> at the end: RSS {rss}; fds {baseline.held_fds} -> "
        f"{middle.held_fds} -> {final.held_fds}; watchers {baseline.watchers:.0f} -> {middle.watchers:.0f} -> "
        f"{final.watchers:.0f}"
    )
