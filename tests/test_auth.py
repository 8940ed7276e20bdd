"""Bearer JWTs (HS256 and RS256), and conversations visible only to their owner."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask
from flask.testing import FlaskClient

SECRET = "test-secret-that-is-long-enough-for-hs256"
CHAT = "/api/v1/ai/chat"


def token(sub: str = "alice", secret: str = SECRET, ttl: int = 60, **claims: object) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + ttl, **claims}, secret, algorithm="HS256")


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


@pytest.fixture
def secured(make_app: Callable[..., Flask]) -> FlaskClient:
    return make_app(jwt_secret=SECRET).test_client()


def test_valid_token_is_accepted(secured: FlaskClient) -> None:
    assert secured.post(CHAT, json={"message": "hi #tokens=1"}, headers=bearer(token())).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic abc"},
        bearer("not.a.jwt"),
        bearer(token(secret="another-secret-that-is-long-enough-too")),
        bearer(token(ttl=-10)),
        bearer(jwt.encode({"exp": int(time.time()) + 60}, SECRET, algorithm="HS256")),
        bearer(jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256")),
    ],
    ids=["missing", "empty", "wrong-scheme", "garbage", "wrong-key", "expired", "no-sub", "no-exp"],
)
@pytest.mark.parametrize("path", [CHAT, CHAT + "/stream", "/api/v1/ai/conversations"])
def test_bad_tokens_are_401(secured: FlaskClient, headers: dict[str, str], path: str) -> None:
    method = secured.get if path.endswith("conversations") else secured.post
    response = method(path, json={"message": "hi"}, headers=headers)
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "unauthorized"


def test_rs256_with_public_key(make_app: Callable[..., Flask]) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    client = make_app(jwt_public_key=public_pem).test_client()
    good = jwt.encode({"sub": "rsa-user", "exp": int(time.time()) + 60}, private, algorithm="RS256")
    assert client.post(CHAT, json={"message": "rs #tokens=1"}, headers=bearer(good)).status_code == 200
    hs = token()  # an HS256 token must not pass an RS256 configuration
    assert client.post(CHAT, json={"message": "rs"}, headers=bearer(hs)).status_code == 401


def test_audience_and_issuer_are_checked(make_app: Callable[..., Flask]) -> None:
    client = make_app(jwt_secret=SECRET, jwt_audience="chat", jwt_issuer="https://issuer").test_client()
    good = token(aud="chat", iss="https://issuer")
    assert client.post(CHAT, json={"message": "aud #tokens=1"}, headers=bearer(good)).status_code == 200
    for bad in (token(aud="other", iss="https://issuer"), token(aud="chat", iss="https://evil"), token()):
        assert client.post(CHAT, json={"message": "aud"}, headers=bearer(bad)).status_code == 401


def test_other_users_conversation_is_404_exactly_like_a_missing_one(secured: FlaskClient) -> None:
    alice, bob = bearer(token("alice")), bearer(token("bob"))
    conversation = secured.post(CHAT, json={"message": "mine #tokens=1"}, headers=alice).get_json()["conversationId"]
    missing = "00000000-0000-4000-8000-000000000000"
    base = "/api/v1/ai/conversations"
    for target in (conversation, missing):
        read = secured.get(f"{base}/{target}", headers=bob)
        cont = secured.post(CHAT, json={"message": "steal", "conversationId": target}, headers=bob)
        stream = secured.post(CHAT + "/stream", json={"message": "steal", "conversationId": target}, headers=bob)
        delete = secured.delete(f"{base}/{target}", headers=bob)
        for response in (read, cont, stream, delete):
            assert response.status_code == 404
            assert response.get_json() == {"error": {"code": "not_found", "message": "No such conversation."}}
    assert secured.get(f"{base}", headers=bob).get_json()["conversations"] == []
    assert secured.get(f"{base}/{conversation}", headers=alice).status_code == 200


def test_auth_off_logs_a_warning(make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        make_app()
    assert any("auth is OFF" in record.getMessage() for record in caplog.records)
