"""Usage records: every reply, streamed or not, complete or cut, is counted once; ``GET /api/v1/ai/usage`` gives the
caller's own totals by day or by model, streaming and non-streaming apart; an admin may ask for anyone."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from flask.testing import FlaskClient

from service import create_app
from tests.conftest import upstream_settings
from tests.fake_upstream import FakeUpstream
from tests.test_multi_host import POSTGRES_URL

SECRET = "usage-secret-that-is-long-enough-for-hs256"
USAGE = "/api/v1/ai/usage"


def bearer(user: str, **claims: Any) -> dict[str, str]:
    token = jwt.encode({"sub": user, "exp": int(time.time()) + 600, **claims}, SECRET, "HS256")
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(params=["sqlite", "postgresql"])
def client(request: pytest.FixtureRequest, upstream: FakeUpstream, tmp_path: Path) -> FlaskClient:
    database = POSTGRES_URL if request.param == "postgresql" else f"sqlite:///{tmp_path / 'usage.sqlite3'}"
    app = create_app(settings=upstream_settings(upstream, database, jwt_secret=SECRET, chat_model="test-model"))
    app.testing = True
    return app.test_client()


def reply(client: FlaskClient, headers: dict[str, str], message: str, streamed: bool = True) -> None:
    path = "/api/v1/ai/chat/stream" if streamed else "/api/v1/ai/chat"
    response = client.post(path, json={"message": message}, headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    response.get_data()  # runs the stream to its end, where the reply and its usage are saved


def test_each_reply_is_counted_streaming_and_not_apart(client: FlaskClient) -> None:
    alice = bearer(f"alice-{uuid.uuid4()}")
    reply(client, alice, "one #tokens=5")
    reply(client, alice, "two #tokens=7")
    reply(client, alice, "three #tokens=4", streamed=False)
    reply(client, alice, "cut #tokens=50 #fail_after=3")  # the provider drops it after 3 tokens

    report = client.get(USAGE, headers=alice).get_json()
    assert report["groupBy"] == "day" and report["user"].startswith("alice-")
    today = datetime.now(UTC).date().isoformat()
    assert [group["group"] for group in report["groups"]] == [today]
    streaming, non_streaming = report["total"]["streaming"], report["total"]["nonStreaming"]
    assert streaming["replies"] == 3 and non_streaming["replies"] == 1
    assert streaming["completionTokens"] == 5 + 7 + 3  # the cut reply counts the tokens it had
    assert non_streaming["completionTokens"] == 4
    assert streaming["totalTokens"] == streaming["promptTokens"] + streaming["completionTokens"]
    assert report["groups"][0]["streaming"] == streaming

    by_model = client.get(USAGE, query_string={"groupBy": "model"}, headers=alice).get_json()
    assert [group["group"] for group in by_model["groups"]] == ["test-model"]
    assert by_model["total"] == report["total"]


def test_reasoning_tokens_are_counted_apart_within_completion(client: FlaskClient) -> None:
    carol = bearer(f"carol-{uuid.uuid4()}")
    reply(client, carol, "think #reasoning=3 #tokens=2")
    reply(client, carol, "think more #reasoning=4 #tokens=1", streamed=False)
    reply(client, carol, "plain #tokens=5")

    total = client.get(USAGE, headers=carol).get_json()["total"]
    assert total["streaming"]["reasoningTokens"] == 3
    assert total["streaming"]["completionTokens"] == 3 + 2 + 5
    assert total["nonStreaming"]["reasoningTokens"] == 4
    assert total["nonStreaming"]["completionTokens"] == 4 + 1


def test_the_range_is_the_callers_to_choose_and_checked(client: FlaskClient) -> None:
    bob = bearer(f"bob-{uuid.uuid4()}")
    reply(client, bob, "counted #tokens=2")
    today = datetime.now(UTC).date()
    inside = {"from": today.isoformat(), "to": today.isoformat()}  # a date alone for `to` includes that day
    assert client.get(USAGE, query_string=inside, headers=bob).get_json()["total"]["streaming"]["replies"] == 1
    before = {"from": (today - timedelta(days=3)).isoformat(), "to": (today - timedelta(days=1)).isoformat()}
    empty = client.get(USAGE, query_string=before, headers=bob).get_json()
    assert empty["groups"] == [] and empty["total"]["streaming"]["replies"] == 0

    for query, field in (
        ({"from": "yesterday"}, "from"),
        ({"to": "2026-13-01"}, "to"),
        ({"from": "2026-12-05", "to": "2026-12-01"}, "from"),
        ({"from": "2020-01-01", "to": "2026-01-01"}, "to"),
        ({"groupBy": "week"}, "groupBy"),
        ({"colour": "red"}, "colour"),
    ):
        refused = client.get(USAGE, query_string=query, headers=bob)
        assert refused.status_code == 400, query
        body = refused.get_json()["error"]
        assert body["code"] == "validation_error" and field in body["details"], (query, body)


def test_only_an_admin_reads_other_users_usage(client: FlaskClient) -> None:
    carol, dave = f"carol-{uuid.uuid4()}", f"dave-{uuid.uuid4()}"
    reply(client, bearer(carol), "carol's #tokens=3")
    reply(client, bearer(dave), "dave's #tokens=6")

    refused = client.get(USAGE, query_string={"user": carol}, headers=bearer(dave))
    assert refused.status_code == 403 and refused.get_json()["error"]["code"] == "forbidden"
    assert client.get(USAGE, query_string={"user": "*"}, headers=bearer(dave)).status_code == 403
    own = client.get(USAGE, query_string={"user": dave}, headers=bearer(dave)).get_json()
    assert own["total"]["streaming"]["completionTokens"] == 6

    admin = bearer("admin", admin=True)
    of_carol = client.get(USAGE, query_string={"user": carol}, headers=admin).get_json()
    assert of_carol["user"] == carol and of_carol["total"]["streaming"]["completionTokens"] == 3
    everyone = client.get(USAGE, query_string={"user": "*"}, headers=admin).get_json()
    assert everyone["user"] == "*" and everyone["total"]["streaming"]["completionTokens"] >= 9
    not_quite = bearer("pretender", admin="yes")  # the claim must be true, not merely present
    assert client.get(USAGE, query_string={"user": carol}, headers=not_quite).status_code == 403
