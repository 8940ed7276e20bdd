"""Process helpers for a child that must not outlive its parent: death signal, a free port, its process group,
its health check."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import http.client
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _load_prctl() -> Callable[[int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        prctl: Callable[[int, int], int] = libc.prctl
    except (OSError, AttributeError):
        return None
    return prctl


# Resolved once, before any fork: the child between fork and exec should only call.
_PRCTL = _load_prctl()


def die_with_parent(parent_pid: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to SIGKILL the child when its parent dies.

    SIGKILL, not SIGTERM: Linux sends the signal again each time the orphan is
    handed to another thread of the dying parent, and llama-server answers a second
    SIGTERM with ``exit()`` inside its signal handler, which can deadlock and leave
    the orphan behind (seen in about 1 run in 8). The parent is gone, so there is
    nothing to shut down gracefully for. The getppid check covers a parent that
    died before prctl ran.
    """
    prctl = _PRCTL
    if prctl is None:
        return None

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def terminate(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM the child's process group, SIGKILL it after ``timeout`` seconds."""
    # The child leads its own group (start_new_session), so pgid == pid. Once
    # it is reaped the pgid may be reused: only signal a child still running.
    if proc.poll() is not None:
        return
    signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        signal_group(proc.pid, signal.SIGKILL)
        proc.wait()


def answers_health(host: str, port: int, timeout: float = 2.0) -> bool:
    """``GET /health`` answers 200 (llama-server answers 503 while the model loads)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()
