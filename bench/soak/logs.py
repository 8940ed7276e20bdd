"""What the service's own log says about the run: any line at ERROR or above (a 500, a crash, a failed save)
is a problem, whatever the clients saw; so is a save that went to the save journal instead of the database."""

from __future__ import annotations

import json
from pathlib import Path

SEVERE = {"ERROR", "CRITICAL"}


def severe_lines(log: Path, limit: int = 20) -> list[str]:
    """The log's lines at ERROR or above (JSON lines; a traceback or a non-JSON line that says ERROR counts too)."""
    found: list[str] = []
    if not log.exists():
        return found
    with log.open(errors="replace") as lines:
        for line in lines:
            try:
                record = json.loads(line)
                severe = isinstance(record, dict) and str(record.get("level", "")).upper() in SEVERE
            except ValueError:
                severe = "Traceback" in line or " ERROR " in line or " CRITICAL " in line
            if severe:
                found.append(f"service log: {line.strip()[:300]}")
                if len(found) >= limit:
                    break
    return found


def journaled(folder: Path) -> list[str]:
    """Records in the save journal (``SAVE_JOURNAL_DIR``, beside the SQLite file by default)."""
    journal = folder / "journal"
    if not journal.is_dir():
        return []
    count = sum(len(path.read_text().splitlines()) for path in journal.glob("saves-*.jsonl"))
    return (
        [f"{count} saves went to the save journal, not the database (it was slower than SAVE_TIMEOUT_SECONDS)"]
        if count
        else []
    )
