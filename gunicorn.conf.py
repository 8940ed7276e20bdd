"""gunicorn settings, all from the environment; ``GUNICORN_CMD_ARGS`` still overrides any of them.

The gevent worker gives each connection a greenlet, so one worker holds thousands of open streams.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from service.config import graceful_timeout as graceful_timeout_of  # the checkout's package (the line above)
from service.env import ConfigError, EnvReader
from service.logs import FORMATS, GatewayLogger, configure_logging
from service.worker import GatewayWorker

_env = EnvReader()


def _int(name: str, default: int, minimum: int = 0) -> int:
    """A bad value stops gunicorn with the reader's message, which names the variable."""
    try:
        return _env.integer(name, default, minimum)
    except ConfigError as error:
        raise SystemExit(str(error)) from None


bind = _env.optional("GUNICORN_BIND") or f"{_env.text('HOST', '127.0.0.1')}:{_env.text('PORT', '8000')}"
workers = _int("WEB_CONCURRENCY", 1, minimum=1)
# gunicorn's gevent worker, with a deadline on request heads: REQUEST_READ_TIMEOUT_SECONDS whatever the keep-alive
worker_class = "service.worker.GatewayWorker"
worker_connections = _int("GUNICORN_WORKER_CONNECTIONS", 10_000, minimum=1)
timeout = _int("GUNICORN_TIMEOUT", 30)
# on SIGTERM running streams go on to their end (the app drains): by default as long as the longest stream may run
try:
    graceful_timeout = graceful_timeout_of(_env)
except ConfigError as error:
    raise SystemExit(str(error)) from None
keepalive = _int("GUNICORN_KEEPALIVE", 5)
try:
    GatewayWorker.head_timeout = _env.number("REQUEST_READ_TIMEOUT_SECONDS", 10.0)
except ConfigError as error:
    raise SystemExit(str(error)) from None
backlog = _int("GUNICORN_BACKLOG", 4096, minimum=1)
loglevel = _env.text("LOG_LEVEL", "info").lower()
# LOG_FORMAT=json (the default here): one JSON object a line, gunicorn's lines and access log included, each with
# the request id; text: for a terminal
try:
    log_format = _env.choice("LOG_FORMAT", FORMATS, "json")
except ConfigError as error:
    raise SystemExit(str(error)) from None
GatewayLogger.kind = log_format
logger_class = GatewayLogger
# one line per request, after its last byte: who, what, the status, the bytes and how long it took (a stream's
# whole length). GUNICORN_ACCESS_LOG=off turns it off, or names a file instead of standard output.
_access = _env.text("GUNICORN_ACCESS_LOG", "-")
accesslog = None if _access.lower() in {"off", "none", "false", "0"} else _access
access_log_format = '%(h)s "%(r)s" %(s)s %(B)s %(M)sms "%(a)s" %({x-request-id}o)s'  # LOG_FORMAT=text
errorlog = "-"
preload_app = False  # the app imports httpx2; it must load after the worker has monkey-patched
# gevent's default resolver runs every getaddrinfo (one per new upstream connection, IP literals included) on a
# native thread; a burst of new connections then has threads and the event loop trading the GIL. c-ares resolves
# inside the event loop: 1,000 streams starting at once used a fifth less CPU (bench/README.md).
# GEVENT_RESOLVER=thread brings back the system resolver (nsswitch, mDNS) where c-ares will not do.
os.environ.setdefault("GEVENT_RESOLVER", "ares")
# gevent records each greenlet's spawning stack and parent (for debugging tools); a worker spawns a greenlet per
# connection, so that record is memory and CPU per stream. GEVENT_TRACK_GREENLET_TREE=true turns it back on.
os.environ.setdefault("GEVENT_TRACK_GREENLET_TREE", "false")


# --- the embedded local model: one llama-server per host, owned by the master --------------------------------
# With no provider configured, the master starts llama-server before forking workers, points them at it through
# the SDK's own variables, restarts it if it dies, and stops it on exit (and the kernel kills it if the master
# dies hard). Setting any provider turns all of this off.
_local_model: Any = None


def _provider_configured() -> bool:
    return any(_env.optional(name) for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "AZURE_OPENAI_ENDPOINT"))


# --- metrics of the whole host: prometheus-client's multiprocess mode --------------------------------------------
# Each worker writes its counters and histograms to files in this folder; a scrape of any worker reads them all.
# The variable must be set before a worker imports prometheus_client, hence here; the folder is emptied at start
# (the files of an earlier run would be counted again) and a dead worker's live gauges are dropped.
_made_metrics_folder = not _env.optional("PROMETHEUS_MULTIPROC_DIR")
_metrics_folder = _env.optional("PROMETHEUS_MULTIPROC_DIR") or os.path.join(
    tempfile.gettempdir(), f"chat-gateway-metrics-{os.getpid()}"
)
os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_folder


def _fresh_metrics_folder() -> None:
    shutil.rmtree(_metrics_folder, ignore_errors=True)
    os.makedirs(_metrics_folder, exist_ok=True)


def child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_starting(server: Any) -> None:
    global _local_model
    _fresh_metrics_folder()
    if _provider_configured():
        return
    from service.config import LOCAL_MODEL_NAME
    from service.local_model import LocalModelOptions, LocalModelServer

    options = LocalModelOptions.from_env(os.environ)
    server.log.info("No provider configured: starting the local demo model (%s)", options.model_name)
    _local_model = LocalModelServer(options)
    _local_model.start()
    _local_model.supervise()
    os.environ["OPENAI_BASE_URL"] = _local_model.base_url
    os.environ["OPENAI_API_KEY"] = "local"
    os.environ["LOCAL_MODEL_URL"] = _local_model.base_url
    os.environ.setdefault("CHAT_MODEL", LOCAL_MODEL_NAME)
    server.log.info("Local model ready at %s", _local_model.base_url)


def post_fork(server: Any, worker: Any) -> None:
    """Before the worker loads the app: what the app logs while loading is in the chosen format too."""
    configure_logging(log_format, loglevel)


def post_worker_init(worker: Any) -> None:
    """The app is loaded in this worker: take its import-time objects out of the garbage collector's walks."""
    from service.heap import settle_heap

    settle_heap()


def on_exit(server: Any) -> None:
    if _made_metrics_folder:
        shutil.rmtree(_metrics_folder, ignore_errors=True)
    if _local_model is not None:
        server.log.info("Stopping the local model")
        _local_model.stop()
