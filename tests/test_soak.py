"""The soak test (``python -m bench.soak``) for one minute through real gunicorn, and its checks shown to fail
when a reply is saved other than as the client received it, or when the service holds more after the run."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench.soak.growth import MIB, Tolerance, growth_problems
from bench.soak.probe import IDLE_GAUGES, Sample
from bench.soak.traffic import COUNTED
from bench.soak.verify import check_saved, read_attempts
from tests.servers import ROOT


@dataclass(frozen=True)
class SoakRun:
    returncode: int
    output: str
    summary: dict[str, Any]
    folder: Path


@pytest.fixture(scope="module")
def soak(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoakRun]:
    folder = tmp_path_factory.mktemp("soak")
    summary = folder / "summary.json"
    command = [sys.executable, "-m", "bench.soak", "--seconds", "60", "--folder", str(folder / "run")]
    command += ["--summary", str(summary)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    loaded = json.loads(summary.read_text()) if summary.exists() else {}
    yield SoakRun(result.returncode, result.stdout + result.stderr, loaded, folder / "run")


def test_a_one_minute_soak_of_mixed_traffic_loses_nothing_and_grows_nothing(soak: SoakRun) -> None:
    assert soak.summary.get("verdict") == "PASS", soak.output[-6000:]
    assert soak.returncode == 0
    assert "VERDICT: PASS" in soak.output
    counts = soak.summary["counts"]
    assert all(counts[name] > 0 for name in COUNTED), counts
    assert soak.summary["streams_started"] >= 100
    assert soak.summary["problems"] == []


def test_the_table_has_a_row_per_interval_and_three_idle_samples(soak: SoakRun) -> None:
    rows = [line for line in soak.output.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) >= 6, soak.output[-3000:]
    assert any("idle after warm-up" in line for line in rows)
    assert any("idle at half-time" in line for line in rows)
    assert rows[-1].endswith("idle at the end |")


def test_the_database_check_names_every_reply_not_saved_as_received(soak: SoakRun) -> None:
    """The same check the soak passed, on its database after three replies were altered behind its back."""
    attempts = read_attempts(soak.folder / "attempts.jsonl")
    database = soak.folder / "soak.sqlite3"
    assert check_saved(f"sqlite:///{database}", attempts) == []
    completed = next(item for item in attempts if item.kind == "completed")
    cancelled = next(item for item in attempts if item.kind == "cancelled")
    abandoned = next(item for item in attempts if item.kind == "abandoned")
    with sqlite3.connect(database) as connection:
        connection.execute("UPDATE messages SET content = content || 'x' WHERE id = ?", (completed.message_id,))
        connection.execute("UPDATE messages SET status = 'complete' WHERE id = ?", (cancelled.message_id,))
        connection.execute("DELETE FROM messages WHERE conversation_id = ?", (abandoned.conversation_id,))
        connection.execute("DELETE FROM conversations WHERE id = ?", (abandoned.conversation_id,))
    problems = check_saved(f"sqlite:///{database}", attempts)
    assert len(problems) == 3, problems
    assert any(completed.stream_id in text and "the client received" in text for text in problems)
    assert any(cancelled.stream_id in text and "saved complete, not incomplete" in text for text in problems)
    assert any(abandoned.stream_id in text and "no conversation" in text for text in problems)


def _idle(rss_mib: float, fds: int, watchers: float, pids: tuple[int, ...] = (10,), **gauges: float) -> Sample:
    found = {name: 0.0 for name in IDLE_GAUGES} | {"chat_process_event_loop_watchers": watchers} | gauges
    return Sample(0.0, pids, (int(rss_mib * MIB),), (fds,), found)


def test_growth_is_judged_against_the_idle_service_within_the_stated_tolerance() -> None:
    """RSS against half-time (the first minutes fill bounded caches), fds and watchers against the warm-up."""
    baseline, middle = _idle(130, 40, 4), _idle(170, 41, 5)
    tolerance = Tolerance()
    assert growth_problems(baseline, middle, _idle(177.9, 42, 8), tolerance) == []
    grown = growth_problems(baseline, middle, _idle(180, 43, 9, chat_streams_open=1.0), tolerance)
    assert len(grown) == 4, grown
    assert "RSS grew 170.0 -> 180.0 MiB over the second half" in grown[0]
    assert "open fds grew 40 -> 43" in grown[1]
    assert "watchers grew 4 -> 9" in grown[2]
    assert "chat_streams_open is 1.0" in grown[3]
    restarted = growth_problems(baseline, middle, _idle(130, 40, 4, pids=(11,)), tolerance)
    assert restarted == ["the workers changed ((10,), (10,), (11,)): one died or was restarted"]
