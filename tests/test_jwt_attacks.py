"""Forged and stale JWTs against the service under gunicorn: ``alg: none``, RS256's public key used as an HS256
secret (key confusion), expired, not yet valid, wrong audience, wrong issuer. Each is refused with 401
``unauthorized``, ``details.reason`` naming the failed check, and RFC 6750's ``WWW-Authenticate`` header."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import ServerFactory, _server_env
from tests.fake_upstream import FakeUpstream
from tests.servers import GunicornServer

AUDIENCE, ISSUER = "chat-gateway", "https://issuer.example"
SECRET = "a-secret-long-enough-for-hs256-signing-0123456789"
PRIVATE = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PUBLIC_PEM = (
    PRIVATE.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
).decode()
ENDPOINTS = [
    ("POST", "/api/v1/ai/chat/stream"),
    ("POST", "/api/v1/ai/chat"),
    ("GET", "/api/v1/ai/conversations"),
    ("GET", f"/api/v1/ai/chat/stream/{'a' * 32}"),
]


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    # a day: the cases are made when the tests are collected, and must hold however long the suite runs before them
    base: dict[str, Any] = {"sub": "mallory", "exp": now + 86400, "iat": now, "aud": AUDIENCE, "iss": ISSUER}
    return {name: value for name, value in {**base, **changes}.items() if value is not None}


def segment(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def unsigned(payload: dict[str, Any]) -> str:
    """``alg: none``: no signature at all."""
    return f"{segment({'alg': 'none', 'typ': 'JWT'})}.{segment(payload)}."


def hs256_with(secret: bytes, payload: dict[str, Any]) -> str:
    """HS256 signed by hand with any bytes as the secret (PyJWT itself refuses a PEM key as an HMAC secret)."""
    signing_input = f"{segment({'alg': 'HS256', 'typ': 'JWT'})}.{segment(payload)}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


def rs256(payload: dict[str, Any]) -> str:
    return jwt.encode(payload, PRIVATE, algorithm="RS256")


def ask(server: GunicornServer, token: str, method: str = "POST", path: str = "/api/v1/ai/chat") -> httpx.Response:
    return httpx.request(
        method,
        server.url + path,
        json={"message": "hi #tokens=2"} if method == "POST" else None,
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )


def assert_refused(response: httpx.Response, reason: str) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == "unauthorized"
    assert error["details"] == {"reason": reason}
    assert response.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')


@pytest.fixture(scope="module")
def rs256_server(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornServer]:
    """One service for the module: RS256 with an audience and an issuer to check."""
    folder = tmp_path_factory.mktemp("rs256")
    env = {
        **_server_env(upstream, f"sqlite:///{folder / 'chat.sqlite3'}"),
        "JWT_PUBLIC_KEY": PUBLIC_PEM,
        "JWT_AUDIENCE": AUDIENCE,
        "JWT_ISSUER": ISSUER,
    }
    running = GunicornServer(env, folder / "gunicorn.log").start()
    yield running
    running.stop()


def test_a_valid_rs256_token_is_accepted(rs256_server: GunicornServer) -> None:
    response = ask(rs256_server, rs256(claims(sub="alice")))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (unsigned(claims()), "algorithm_not_allowed"),
        (hs256_with(PUBLIC_PEM.encode(), claims()), "algorithm_not_allowed"),  # the public key as HMAC secret
        (rs256(claims(exp=int(time.time()) - 60)), "expired"),
        (rs256(claims(nbf=int(time.time()) + 3600)), "not_yet_valid"),
        (rs256(claims(iat=int(time.time()) + 3600)), "not_yet_valid"),
        (rs256(claims(aud="another-service")), "wrong_audience"),
        (rs256(claims(aud=None)), "missing_claim"),
        (rs256(claims(iss="https://evil.example")), "wrong_issuer"),
        (rs256(claims(exp=None)), "missing_claim"),
        (rs256(claims(sub=None)), "missing_claim"),
        (rs256(claims())[:-8] + "AAAAAAAA", "bad_signature"),
        ("not-a-jwt", "malformed"),
    ],
    ids=[
        "alg-none",
        "public-key-as-hs256-secret",
        "expired",
        "not-before-in-the-future",
        "issued-in-the-future",
        "wrong-audience",
        "no-audience",
        "wrong-issuer",
        "no-expiry",
        "no-subject",
        "tampered-signature",
        "garbage",
    ],
)
def test_forged_and_stale_tokens_are_refused_with_a_reason(
    rs256_server: GunicornServer, token: str, reason: str
) -> None:
    for method, path in ENDPOINTS:
        assert_refused(ask(rs256_server, token, method, path), reason)


def test_a_missing_token_asks_for_one(rs256_server: GunicornServer) -> None:
    response = httpx.post(rs256_server.url + "/api/v1/ai/chat", json={"message": "hi"}, timeout=10)
    assert response.status_code == 401
    assert response.json()["error"] == {
        "code": "unauthorized",
        "message": "A bearer token is required.",
        "details": {"reason": "missing"},
    }
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_with_an_hs256_secret_alg_none_and_rs256_tokens_are_refused(server_factory: ServerFactory) -> None:
    """The confusion attack the other way round: an HS256 service takes no token of another algorithm, and none
    signed with a key other than its secret."""
    server = server_factory(JWT_SECRET=SECRET, JWT_AUDIENCE=AUDIENCE, JWT_ISSUER=ISSUER)
    assert ask(server, jwt.encode(claims(), SECRET, algorithm="HS256")).status_code == 200
    assert_refused(ask(server, unsigned(claims())), "algorithm_not_allowed")
    assert_refused(ask(server, rs256(claims())), "algorithm_not_allowed")
    assert_refused(ask(server, hs256_with(b"a-guessed-secret-of-the-right-length-000000", claims())), "bad_signature")
    assert_refused(ask(server, jwt.encode(claims(exp=int(time.time()) - 1), SECRET, algorithm="HS256")), "expired")
    assert_refused(ask(server, jwt.encode(claims(aud="other"), SECRET, algorithm="HS256")), "wrong_audience")
    assert_refused(ask(server, jwt.encode(claims(iss="https://evil"), SECRET, algorithm="HS256")), "wrong_issuer")
