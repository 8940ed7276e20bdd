"""Redis going away stops nothing it need not: running streams finish on this host's own accounting, new requests
follow the outage policy, the readiness check and the log say what is happening (the log once per change), and
when Redis is back the shared counts are made right again; open-stream slots are leases, so a dead host locks
nobody out."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from limits import parse
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter

from service.limits import SLOT_LEASE_SECONDS
from tests.conftest import ServerFactory
from tests.fake_upstream import WORDS
from tests.own_redis import OwnRedis
from tests.servers import GunicornServer
from tests.test_metrics_host import scrape, value

STREAM = "/api/v1/ai/chat/stream"
SECRET = "redis-outage-secret-that-is-long-enough"
BUDGET = "100000/hour"


def bearer(user: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + jwt.encode({"sub": user, "exp": int(time.time()) + 600}, SECRET, "HS256")}


def expected_text(count: int) -> str:
    words = list(WORDS) * (count // len(WORDS) + 1)
    return "".join(word if index == 0 else " " + word for index, word in enumerate(words[:count]))


def run_stream(url: str, message: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    """Every event of one stream, read to its end."""
    with (
        httpx.Client(timeout=30) as client,
        client.stream("POST", url + STREAM, json={"message": message}, headers=headers) as response,
    ):
        assert response.status_code == 200, response.read()
        return [json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data:")]


def reply_of(events: list[dict[str, Any]]) -> str:
    return "".join(event["content"] for event in events if event["type"] == "token")


def spent(redis_url: str, user: str) -> int:
    """Tokens counted against ``user``'s budget in Redis."""
    limiter = FixedWindowRateLimiter(storage_from_string(redis_url))
    item = parse(BUDGET)
    return item.amount - limiter.get_window_stats(item, "tokens", user).remaining


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what}")


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    started = OwnRedis(tmp_path / "redis").start()
    yield started
    started.stop()


def host(server_factory: ServerFactory, own_redis: OwnRedis, **env: str) -> GunicornServer:
    settings = {"REDIS_URL": own_redis.url, "JWT_SECRET": SECRET, "TOKEN_BUDGET": BUDGET, "MAX_STREAMS_PER_USER": "5"}
    return server_factory(**{**settings, "LOG_LEVEL": "info", **env})


def test_streams_finish_through_a_redis_outage_and_the_counts_are_mended_after(
    server_factory: ServerFactory, own_redis: OwnRedis
) -> None:
    server = host(server_factory, own_redis, MAX_STREAMS_PER_USER="6")
    user = f"outage-{uuid.uuid4()}"
    headers = bearer(user)
    with ThreadPoolExecutor(5) as pool:
        running = [pool.submit(run_stream, server.url, f"during {n} #tokens=60 #delay=0.05", headers) for n in range(5)]
        time.sleep(1.0)  # all five are streaming and hold their slots in Redis
        own_redis.kill()

        # while Redis is away: new requests go on with per-host limits (one more slot is left here); readiness says so
        # but stays ready
        fresh = run_stream(server.url, "new while down #tokens=5", headers)
        ready = httpx.get(server.url + "/readyz", timeout=10)
        elsewhere = httpx.get(f"{server.url}{STREAM}/{uuid.uuid4().hex}", headers=headers, timeout=10)
        results = [future.result() for future in running]

    for events in results:  # every running stream finished whole
        assert events[-1]["type"] == "done", events[-1]
        assert reply_of(events) == expected_text(60)
    assert fresh[-1]["type"] == "done" and reply_of(fresh) == expected_text(5)
    assert ready.status_code == 200 and ready.json()["checks"]["redis"] == "unavailable"
    assert elsewhere.status_code == 503  # a stream this host does not run could be on another: ask again later
    assert elsewhere.json()["error"]["code"] == "shared_state_unavailable"
    assert elsewhere.headers["Retry-After"] == str(elsewhere.json()["error"]["details"]["retryAfter"])
    for events in [*results, fresh]:  # each saved, complete
        conversation = events[0]["conversationId"]
        saved = httpx.get(f"{server.url}/api/v1/ai/conversations/{conversation}", headers=headers).json()
        assert [message["status"] for message in saved["messages"]] == ["complete", "complete"]

    own_redis.start()  # its append-only file still holds the five slots and the budget as they were at the kill
    redis_client = own_redis.client()
    slots = f"chat-gateway:streams:{user}"
    wait_for(lambda: httpx.get(server.url + "/readyz").json()["checks"]["redis"] == "ok", 10, "Redis seen back")
    wait_for(lambda: redis_client.zcard(slots) == 0, 5, "the slots released during the outage freed in Redis")
    relayed = sum(len([e for e in events if e["type"] == "token"]) for events in [*results, fresh])
    wait_for(lambda: spent(own_redis.url, user) == relayed, 5, "the tokens spent during the outage counted in Redis")

    # nobody is locked out: the user's whole allowance of streams at once, and one more is refused, with one retry time
    with ThreadPoolExecutor(6) as pool:
        again = [pool.submit(run_stream, server.url, f"after {n} #tokens=30 #delay=0.05", headers) for n in range(6)]
        time.sleep(0.5)
        refused = httpx.post(server.url + STREAM, json={"message": "one too many"}, headers=headers, timeout=10)
        assert all(future.result()[-1]["type"] == "done" for future in again)
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == str(refused.json()["error"]["details"]["retryAfter"])

    log = server.log_path.read_text()
    assert log.count("Redis is unavailable") == 1, log[-3000:]  # once per change of state, one worker
    assert log.count("Redis is back") == 1, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    metrics = scrape(server)
    assert value(metrics, "chat_redis_up") == 1
    assert value(metrics, "chat_streams_ended_total", outcome="done", model="test-model") == 12  # none went missing


def test_the_refuse_policy_pauses_new_requests_while_running_ones_finish(
    server_factory: ServerFactory, own_redis: OwnRedis
) -> None:
    server = host(server_factory, own_redis, REDIS_OUTAGE_POLICY="refuse")
    headers = bearer(f"refuse-{uuid.uuid4()}")
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(run_stream, server.url, "running #tokens=30 #delay=0.05", headers)
        time.sleep(0.5)
        own_redis.kill()
        refused = httpx.post(server.url + STREAM, json={"message": "new while down"}, headers=headers, timeout=10)
        ready = httpx.get(server.url + "/readyz", timeout=10)
        events = running.result()
    assert events[-1]["type"] == "done" and reply_of(events) == expected_text(30)
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "shared_state_unavailable"
    assert int(refused.headers["Retry-After"]) >= 1
    assert ready.status_code == 503 and ready.json()["checks"]["redis"] == "unavailable"


def test_a_dead_hosts_slots_free_themselves(server_factory: ServerFactory, own_redis: OwnRedis) -> None:
    doomed = host(server_factory, own_redis, MAX_STREAMS_PER_USER="2")
    survivor = host(server_factory, own_redis, MAX_STREAMS_PER_USER="2")
    headers = bearer(f"crash-{uuid.uuid4()}")
    body = {"message": "long #tokens=400 #delay=0.05"}
    with httpx.Client(timeout=30) as client:
        held = [
            client.send(client.build_request("POST", doomed.url + STREAM, json=body, headers=headers), stream=True)
            for _ in range(2)
        ]
        assert [response.status_code for response in held] == [200, 200]
        assert client.post(survivor.url + STREAM, json=body, headers=headers).status_code == 429  # the cap holds
        assert doomed.process is not None
        for pid in doomed.worker_pids():
            os.kill(pid, signal.SIGKILL)
        doomed.process.kill()
        doomed.process.wait(10)
        killed_at = time.monotonic()
        for response in held:
            response.close()

    def admitted() -> bool:
        with httpx.Client(timeout=30) as client:
            response = client.post(survivor.url + STREAM, json={"message": "probe #tokens=1"}, headers=headers)
            return response.status_code == 200

    wait_for(admitted, SLOT_LEASE_SECONDS + 5, "the dead host's slots expired")
    assert time.monotonic() - killed_at >= SLOT_LEASE_SECONDS - 2  # freed by the lease, not by anything else
