"""A finished stream is freed by reference counting alone, however it ended.

A stream whose objects form a cycle waits for the garbage collector, and by the time a stream ends its objects are
old: the oldest generation is collected rarely, so a busy worker's memory climbs for minutes at a time. Here the
worker runs real gunicorn with the collector off from its first request; streams end in every way; at exit the
worker lets go of the finished streams it keeps for replay, collects with ``DEBUG_SAVEALL`` and reports which of
the service's objects only the collector could free.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx

from tests.conftest import _server_env
from tests.fake_upstream import FakeUpstream
from tests.servers import ROOT, GunicornServer
from tests.sse import raw_stream, stream

STREAM = "/api/v1/ai/chat/stream"
# the service's per-stream objects: none may be left to the collector
PER_STREAM = {"LiveStream", "Watchdog", "ChatStream", "UpstreamStream", "ReplyParts", "ChatRequest", "Metadata"}
CONFIG = """
import collections, gc, json, os
exec(compile(open(os.path.join(os.environ["SERVICE_ROOT"], "gunicorn.conf.py")).read(), "gunicorn.conf.py", "exec"))
_post_worker_init = post_worker_init


def post_worker_init(worker):
    _post_worker_init(worker)
    gc.disable()


def worker_exit(server, worker):
    worker.wsgi.extensions["chat_gateway"].streams.streams.clear()  # as the registry does after its retention
    gc.set_debug(gc.DEBUG_SAVEALL)
    gc.collect()
    found = collections.Counter(type(item).__qualname__ for item in gc.garbage)
    with open(os.environ["CYCLE_REPORT"], "w") as report:
        json.dump(found, report)
"""


def _end_every_way(server: GunicornServer) -> None:
    for index in range(8):
        stream(server.url, {"message": f"complete {index} #tokens=5"})
        stream(server.url, {"message": f"fails {index} #tokens=5 #fail_after=2"})
        stream(server.url, {"message": f"idle {index} #tokens=5 #silence=30"})
        gone = raw_stream(server.url, {"message": f"gone {index} #tokens=50 #delay=0.05"})
        gone.close()
        with httpx.stream("POST", server.url + STREAM, json={"message": f"cancel {index} #tokens=50 #delay=0.05"}) as r:
            for line in r.iter_lines():
                if line.startswith("data:") and '"metadata"' in line:
                    stream_id = json.loads(line[5:])["streamId"]
                    threading.Thread(target=httpx.delete, args=(f"{server.url}{STREAM}/{stream_id}",)).start()


def test_finished_streams_leave_nothing_to_the_garbage_collector(upstream: FakeUpstream, tmp_path: Path) -> None:
    config = tmp_path / "gunicorn_nogc.py"
    config.write_text(CONFIG)
    report = tmp_path / "cycles.json"
    env = {
        **_server_env(upstream, f"sqlite:///{tmp_path / 'chat.sqlite3'}"),
        "STREAM_IDLE_TIMEOUT": "1",
        "SERVICE_ROOT": str(ROOT),
        "CYCLE_REPORT": str(report),
    }
    server = GunicornServer(env, tmp_path / "gunicorn.log")
    server.command = [*server.command[:3], "-c", str(config), *server.command[5:]]
    server.start()
    try:
        _end_every_way(server)
    finally:
        server.stop()
    found = json.loads(report.read_text())
    left = {name: count for name, count in found.items() if name in PER_STREAM}
    assert left == {}, left
