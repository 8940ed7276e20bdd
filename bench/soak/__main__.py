"""Soak test: mixed chat traffic through real gunicorn for a long time, then a check that nothing was lost and
nothing grew.

    .venv/bin/python -m bench.soak                        # 30 minutes, SQLite, one worker
    .venv/bin/python -m bench.soak --seconds 60           # the CI version
    .venv/bin/python -m bench.soak --minutes 10 --database-url postgresql+psycopg://postgres@127.0.0.1/test \\
        --redis redis://127.0.0.1:6379/4 --workers 2

Prints a table row every minute (every sixth of a run shorter than 6 minutes) and three rows of the service idle
(after the warm-up, at half-time, at the end), then the verdict; exits 0 when every started stream is saved
exactly as its client received it and nothing grew (``bench/soak/growth.py``), else 1. Problems are printed on
standard error as they happen. ``--summary FILE`` also writes the verdict and the counts as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.soak import service
from bench.soak.growth import Tolerance, growth_problems, growth_summary
from bench.soak.logs import journaled, severe_lines
from bench.soak.probe import IDLE_GAUGES, Sample, sample
from bench.soak.report import HEADER, RULE, row
from bench.soak.traffic import COUNTED, COUNTED_AS, KINDS, Limits, Traffic
from bench.soak.verify import check_saved, write_attempts

QUIET_TIMEOUT_SECONDS = 60.0


@dataclass
class Plan:
    seconds: float
    warmup: float
    every: float
    loops: int
    kinds: tuple[str, ...] = KINDS

    @classmethod
    def of(
        cls, seconds: float, loops: int, every: float | None, warmup: float | None, kinds: tuple[str, ...] = KINDS
    ) -> Plan:
        return cls(
            seconds=seconds,
            warmup=warmup if warmup is not None else min(60.0, seconds / 4),
            every=every if every is not None else (60.0 if seconds >= 360 else max(5.0, seconds / 6)),
            loops=loops,
            kinds=kinds,
        )


@dataclass
class Outcome:
    baseline: Sample | None = None
    middle: Sample | None = None
    final: Sample | None = None
    problems: list[str] = field(default_factory=list)
    rows: list[str] = field(default_factory=list)
    reported: int = 0  # problems already printed as they happened


def _print(line: str) -> None:
    print(line, flush=True)


async def _quiet(traffic: Traffic, master: int, started: float, note: str, outcome: Outcome) -> Sample:
    """Waits until no stream runs (each idle gauge at 0), then samples the service idle."""
    deadline = time.monotonic() + QUIET_TIMEOUT_SECONDS
    while True:
        found = await sample(traffic.client, master, time.monotonic() - started)
        if all(found.gauges.get(name) == 0 for name in IDLE_GAUGES) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    await asyncio.sleep(1.5)  # the host gauges are sampled every second
    found = await sample(traffic.client, master, time.monotonic() - started)
    _row(found, traffic, outcome, note)
    return found


def _row(found: Sample, traffic: Traffic, outcome: Outcome, note: str = "") -> None:
    """The table's row, after any problem that came up since the last one (on standard error)."""
    problems = _problems(traffic)
    for text in problems[outcome.reported :]:
        print(f"problem: {text}", file=sys.stderr, flush=True)
    outcome.reported = len(problems)
    line = row(found, traffic.counts, len(problems), note)
    outcome.rows.append(line)
    _print(line)


def _problems(traffic: Traffic) -> list[str]:
    return traffic.problems + [text for attempt in traffic.attempts for text in attempt.problems]


async def _rows(traffic: Traffic, master: int, started: float, every: float, outcome: Outcome) -> None:
    tick = 1
    while True:
        await asyncio.sleep(max(0.0, started + tick * every - time.monotonic()))
        _row(await sample(traffic.client, master, time.monotonic() - started), traffic, outcome)
        tick += 1


async def _drive(plan: Plan, traffic: Traffic, master: int, outcome: Outcome) -> None:
    started = time.monotonic()
    _print(HEADER)
    _print(RULE)
    rows = asyncio.create_task(_rows(traffic, master, started, plan.every, outcome))
    try:
        await traffic.run(plan.loops, started + plan.warmup)
        outcome.baseline = await _quiet(traffic, master, started, "idle after warm-up", outcome)
        await traffic.run(plan.loops, started + plan.seconds / 2)
        outcome.middle = await _quiet(traffic, master, started, "idle at half-time", outcome)
        await traffic.run(plan.loops, started + plan.seconds)
        rows.cancel()
        outcome.final = await _quiet(traffic, master, started, "idle at the end", outcome)
    finally:
        rows.cancel()
        await traffic.close()


def _soak(plan: Plan, options: service.ServiceOptions, tolerance: Tolerance) -> tuple[Outcome, Traffic]:
    upstream, upstream_port = service.start_upstream(options.folder)
    outcome = Outcome()
    try:
        gunicorn, port = service.start_service(options, upstream_port)
        limits = Limits(service.TOKEN_BUDGET_PER_HOUR, service.RESUME_GRACE_SECONDS, service.NORMAL_USERS)
        traffic = Traffic(f"http://127.0.0.1:{port}", options.secret, secrets.token_hex(4), limits, plan.kinds)
        try:
            asyncio.run(_drive(plan, traffic, gunicorn.pid, outcome))
        finally:
            status = service.stop(gunicorn)
        if status != 0:
            outcome.problems.append(f"gunicorn exited with status {status} (see {options.folder}/gunicorn.log)")
    finally:
        service.stop(upstream, timeout=5)
    outcome.problems.extend(_problems(traffic))
    if outcome.baseline is None or outcome.middle is None or outcome.final is None:
        outcome.problems.append("the run ended before the three idle samples were taken")
    else:
        outcome.problems.extend(growth_problems(outcome.baseline, outcome.middle, outcome.final, tolerance))
    outcome.problems.extend(severe_lines(options.folder / "gunicorn.log"))
    outcome.problems.extend(journaled(options.folder))
    outcome.problems.extend(check_saved(options.database, traffic.attempts))
    write_attempts(options.folder / "attempts.jsonl", traffic.attempts)
    return outcome, traffic


def _verdict(outcome: Outcome, traffic: Traffic, tolerance: Tolerance) -> dict[str, object]:
    expected = [name for kind in traffic.kinds for name in COUNTED_AS[kind]]
    missing = [name for name in expected if not traffic.counts[name]]
    problems = outcome.problems + [f"no traffic of kind {name!r} ran" for name in missing]
    samples = (outcome.baseline, outcome.middle, outcome.final)
    growth = growth_summary(*samples) if all(samples) else ""  # type: ignore[arg-type]
    return {
        "verdict": "PASS" if not problems else "FAIL",
        "streams_started": len(traffic.attempts),
        "counts": {name: traffic.counts[name] for name in COUNTED},
        "growth": growth,
        "tolerance": tolerance.describe(),
        "problems": problems,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, help="how long the traffic runs (default 30)")
    length.add_argument("--seconds", type=float, help="the same in seconds")
    parser.add_argument("--loops", type=int, default=16, help="client loops running at once (default 16)")
    parser.add_argument("--workers", type=int, default=1, help="gunicorn workers (more than 1 needs --redis)")
    parser.add_argument("--database-url", help="SQLAlchemy URL (default: a new SQLite file in the run's folder)")
    parser.add_argument("--redis", metavar="URL", help="run the service with REDIS_URL")
    parser.add_argument(
        "--only", metavar="KIND,...", help=f"run only these kinds of traffic, of: {','.join(KINDS)} (to find a leak)"
    )
    parser.add_argument("--every", type=float, help="seconds between table rows")
    parser.add_argument("--warmup", type=float, help="seconds of traffic before the baseline (default min(60, 1/4))")
    parser.add_argument(
        "--rss-mib", type=float, default=Tolerance.rss_mib, help="RSS growth allowed over the second half, MiB"
    )
    parser.add_argument(
        "--fds", type=int, default=Tolerance.fds, help="fds growth allowed (Redis and PostgreSQL pools keep a peak's)"
    )
    parser.add_argument("--summary", type=Path, help="also write the verdict as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the run's folder (logs, SQLite file, attempts)")
    parser.add_argument("--folder", type=Path, help="the run's folder (default: a new temporary one)")
    args = parser.parse_args(argv)
    if args.only and not set(args.only.split(",")) <= set(KINDS):
        parser.error(f"--only takes kinds among {','.join(KINDS)}")
    if args.workers > 1 and not args.redis:
        parser.error("--workers above 1 needs --redis: without it a resume may reach a worker that lacks the stream")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seconds = args.seconds if args.seconds is not None else 60.0 * (args.minutes if args.minutes else 30.0)
    kinds = tuple(args.only.split(",")) if args.only else KINDS
    plan = Plan.of(seconds, args.loops, args.every, args.warmup, kinds)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    folder = args.folder or Path(tempfile.mkdtemp(prefix="soak-"))
    folder.mkdir(parents=True, exist_ok=True)
    options = service.ServiceOptions(args.workers, folder, secrets.token_hex(32), args.database_url, args.redis)
    tolerance = Tolerance(rss_mib=args.rss_mib, fds=args.fds)
    _print(f"soak: {seconds:g} s of traffic, {args.loops} client loops, {args.workers} worker(s), {options.database}")
    _print(f"logs: {folder}")
    outcome, traffic = _soak(plan, options, tolerance)
    verdict = _verdict(outcome, traffic, tolerance)
    _print("")
    _print(f"growth: {verdict['growth']}")
    _print(f"tolerance: {verdict['tolerance']}")
    _print(f"streams started and checked in the database: {verdict['streams_started']:,}")
    problems: list[str] = verdict["problems"]  # type: ignore[assignment]
    for text in problems[:30]:
        _print(f"  problem: {text}")
    if len(problems) > 30:
        _print(f"  ... and {len(problems) - 30} more")
    _print(f"VERDICT: {verdict['verdict']}")
    if args.summary:
        args.summary.write_text(json.dumps(verdict, indent=2))
    if not args.keep and not args.folder and verdict["verdict"] == "PASS":
        shutil.rmtree(folder, ignore_errors=True)
    return 0 if verdict["verdict"] == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
