"""The processes a soak runs against: the soak's upstream and the service under real gunicorn (gevent worker),
with the settings that make every kind of ending happen within seconds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.run import ROOT, children, free_port, wait_http

IDLE_TIMEOUT_SECONDS = 4  # the silent upstream of the ``idle`` kind trips it
RESUME_GRACE_SECONDS = 3  # ``resumed`` comes back within it, ``abandoned`` waits it out
RATE_LIMIT_PER_MINUTE = 30  # the service's default; ``burst`` goes past it
TOKEN_BUDGET_PER_HOUR = 5000  # one ``budget`` reply is longer; a pool user spends ~a tenth of it in 30 minutes
NORMAL_USERS = 1000


@dataclass(frozen=True)
class ServiceOptions:
    workers: int
    folder: Path
    secret: str
    database_url: str | None = None
    redis_url: str | None = None

    @property
    def database(self) -> str:
        return self.database_url or f"sqlite:///{self.folder}/soak.sqlite3"


def start_upstream(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    log = (folder / "upstream.log").open("ab")
    command = [sys.executable, "-m", "bench.soak.upstream", "0"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=log)
    assert process.stdout is not None
    port = int(process.stdout.readline().split()[-1])
    return process, port


def service_env(options: ServiceOptions, upstream_port: int, port: int) -> dict[str, str]:
    shared = {"REDIS_URL": options.redis_url} if options.redis_url else {}
    metrics = options.folder / "metrics"
    metrics.mkdir(exist_ok=True)
    return {
        **os.environ,
        "OPENAI_BASE_URL": f"http://127.0.0.1:{upstream_port}/v1",
        "OPENAI_API_KEY": "soak",
        "CHAT_MODEL": "soak-model",
        "PORT": str(port),
        "WEB_CONCURRENCY": str(options.workers),
        "DATABASE_URL": options.database,
        "JWT_SECRET": options.secret,
        "RATE_LIMIT": f"{RATE_LIMIT_PER_MINUTE}/minute",
        "TOKEN_BUDGET": f"{TOKEN_BUDGET_PER_HOUR}/hour",
        "MAX_STREAMS_PER_USER": "3",
        "STREAM_IDLE_TIMEOUT": str(IDLE_TIMEOUT_SECONDS),
        "RESUME_GRACE_SECONDS": str(RESUME_GRACE_SECONDS),
        "GUNICORN_GRACEFUL_TIMEOUT": "30",
        "GUNICORN_ACCESS_LOG": str(options.folder / "access.log"),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics),
        "SAVE_JOURNAL_DIR": str(options.folder / "journal"),
        "LOG_LEVEL": "warning",
        **shared,
    }


def start_service(options: ServiceOptions, upstream_port: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    log = (options.folder / "gunicorn.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
        cwd=ROOT,
        env=service_env(options, upstream_port, port),
        stdout=log,
        stderr=log,
    )
    wait_http(port, "/readyz", timeout=60)
    while len(children(process.pid)) < options.workers:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited: see {options.folder / 'gunicorn.log'}")
        time.sleep(0.1)
    return process, port


def stop(process: subprocess.Popen[bytes], timeout: float = 45) -> int | None:
    """SIGTERM (gunicorn drains its streams), then a kill if it does not end in time; its exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode
