"""Request-rate limits (Flask-Limiter) and the token budget check before streaming."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import jwt
import pytest
from flask import Flask

CHAT = "/api/v1/ai/chat"
SECRET = "test-secret-that-is-long-enough-for-hs256"


def auth(user: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + jwt.encode({"sub": user, "exp": int(time.time()) + 60}, SECRET, "HS256")}


@pytest.mark.parametrize("storage", ["memory://", "redis://127.0.0.1:6379/0"])
@pytest.mark.parametrize("path", [CHAT, CHAT + "/stream"])
def test_rate_limit_is_per_user_with_headers(make_app: Callable[..., Flask], storage: str, path: str) -> None:
    client = make_app(rate_limit="2/minute", ratelimit_storage_uri=storage, jwt_secret=SECRET).test_client()
    alice, bob = auth(f"alice-{uuid.uuid4()}"), auth(f"bob-{uuid.uuid4()}")
    for _ in range(2):
        ok = client.post(path, json={"message": "limit #tokens=1"}, headers=alice)
        assert ok.status_code == 200
        ok.get_data()
        assert ok.headers["X-RateLimit-Limit"] == "2"
    refused = client.post(path, json={"message": "limit #tokens=1"}, headers=alice)
    assert refused.status_code == 429
    assert refused.get_json()["error"]["code"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    assert "X-RateLimit-Reset" in refused.headers
    assert client.post(path, json={"message": "limit #tokens=1"}, headers=bob).status_code == 200


def test_without_auth_the_limit_is_per_address(make_app: Callable[..., Flask]) -> None:
    client = make_app(rate_limit="1/minute").test_client()
    assert client.post(CHAT, json={"message": "ip #tokens=1"}).status_code == 200
    assert client.post(CHAT, json={"message": "ip #tokens=1"}).status_code == 429
    other = client.post(CHAT, json={"message": "ip #tokens=1"}, environ_base={"REMOTE_ADDR": "10.9.9.9"})
    assert other.status_code == 200


@pytest.mark.parametrize("storage", ["memory://", "redis://127.0.0.1:6379/0"])
def test_spent_token_budget_is_429_before_any_upstream_call(
    make_app: Callable[..., Flask], storage: str, upstream: object
) -> None:
    from tests.fake_upstream import FakeUpstream

    assert isinstance(upstream, FakeUpstream)
    client = make_app(token_budget="20/hour", ratelimit_storage_uri=storage, jwt_secret=SECRET).test_client()
    user = auth(f"spender-{uuid.uuid4()}")
    assert client.post(CHAT, json={"message": "spend #tokens=20"}, headers=user).status_code == 200
    before = len(upstream.recorder.requests)
    for path in (CHAT, CHAT + "/stream"):
        refused = client.post(path, json={"message": "more"}, headers=user)
        assert refused.status_code == 429
        assert refused.get_json()["error"]["code"] == "rate_limited"
        assert int(refused.headers["Retry-After"]) > 0
    assert len(upstream.recorder.requests) == before
