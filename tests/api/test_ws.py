"""The WebSocket endpoint through real gunicorn with the gevent worker and the scripted upstream: the same events as
SSE byte for byte, many turns per socket, cancel, resume (of WS and SSE streams), auth, limits, bad frames, drops
and timeouts."""

from __future__ import annotations

import re
import signal
import socket
import time
from collections.abc import Iterator

import httpx
import jwt
import orjson
import pytest
from simple_websocket import Client
from simple_websocket import ConnectionError as Refused
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Message, Ping, Request, TextMessage

from tests.conftest import ServerFactory
from tests.fake_upstream import FakeUpstream
from tests.servers import GunicornServer
from tests.sse import stream
from tests.test_guards_live import wait_for
from tests.test_resume_grace import drop_after, reply, saved_reply
from tests.ws import Frame, chat, closed_with, connect, next_frame, send, until_end

SECRET = "ws-test-secret-long-enough-for-hs256-32b"
VARYING = re.compile(
    r'("(?:streamId|conversationId|messageId|requestId)":"|"id":"|id: )[0-9a-f-]{32,36}|"tokensPerSecond":[0-9.]+'
)


def token(sub: str) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")


def normalized(text: str) -> str:
    """Ids and the rate differ between two runs of the same reply; everything else must not."""
    return VARYING.sub(lambda match: (match.group(1) or '"tokensPerSecond":') + "X", text)


@pytest.fixture
def ws(server: GunicornServer) -> Iterator[Client]:
    client = connect(server.url)
    yield client
    client.close()


def test_frames_are_the_sse_data_lines_byte_for_byte_with_the_id_first(server: GunicornServer, ws: Client) -> None:
    message = "Same reply both ways #tokens=6"
    with (
        httpx.Client(timeout=10) as client,
        client.stream("POST", server.url + "/api/v1/ai/chat/stream", json={"message": message}) as response,
    ):
        body = response.read().decode()
    sse = [block.split("\n") for block in body.split("\n\n") if block.startswith("id: ")]
    frames = chat(ws, message)
    assert len(frames) == len(sse) == 8
    for frame, (id_line, data_line) in zip(frames, sse, strict=True):
        expected = '{"id":"' + id_line[4:] + '",' + data_line[len("data: {") :]
        assert normalized(frame.raw) == normalized(expected)
    tokens = [frame.raw for frame in frames if frame.type == "token"]
    assert tokens[0] == f'{{"id":"{frames[0].data["streamId"]}:1","type":"token","content":"Baby"}}'


def test_many_turns_and_pings_on_one_socket(server: GunicornServer, ws: Client, upstream: FakeUpstream) -> None:
    first = chat(ws, "first ws turn #tokens=3")
    conversation_id = first[0].data["conversationId"]
    send(ws, {"type": "ping"})
    assert next_frame(ws).raw == '{"type":"pong"}'
    second = chat(ws, "second ws turn #tokens=2", conversationId=conversation_id)
    third = chat(ws, "third ws turn #tokens=4")
    assert [frame.type for frame in first] == ["metadata", "token", "token", "token", "done"]
    assert second[0].data["conversationId"] == conversation_id
    assert third[0].data["conversationId"] != conversation_id
    assert [int(str(frame.id).split(":")[1]) for frame in third] == list(range(6))
    sent = [item for item in upstream.recorder.requests if "second ws turn" in str(item["body"])][-1]["body"]
    assert [item["role"] for item in sent["messages"]] == ["system", "user", "assistant", "user"]
    saved = httpx.get(f"{server.url}/api/v1/ai/conversations/{conversation_id}").json()["messages"]
    assert [item["status"] for item in saved] == ["complete"] * 4


def test_cancel_stops_the_turn_and_the_socket_takes_the_next(ws: Client, upstream: FakeUpstream) -> None:
    send(ws, {"type": "chat", "message": "cancel me ws #tokens=200 #delay=0.05"})
    frames = [next_frame(ws), next_frame(ws), next_frame(ws)]
    assert [frame.type for frame in frames] == ["metadata", "token", "token"]
    send(ws, {"type": "cancel"})
    frames += until_end(ws)
    assert frames[-1].type == "error" and frames[-1].data["error"]["code"] == "cancelled"
    assert frames[-1].id is not None
    connection = upstream.connection_for("cancel me ws")
    assert wait_for(lambda: connection.closed_at is not None, 2)
    assert connection.completed is False
    assert [frame.type for frame in chat(ws, "after the cancel #tokens=2")][-1] == "done"
    send(ws, {"type": "cancel"})
    assert next_frame(ws).data["error"]["code"] == "not_found"


def test_a_second_chat_while_one_streams_is_refused_and_the_first_goes_on(ws: Client) -> None:
    send(ws, {"type": "chat", "message": "busy turn #tokens=20 #delay=0.02"})
    assert next_frame(ws).type == "metadata"
    send(ws, {"type": "chat", "message": "too soon"})
    frames = until_end(ws)
    refusals = [frame for frame in frames if frame.type == "error" and frame.id is None]
    assert len(refusals) == 1 and refusals[0].data["error"]["code"] == "validation_error"
    assert frames[-1].type == "done"
    assert sum(1 for frame in frames if frame.type == "token") == 20


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("not json", "validation_error"),
        ("[1, 2]", "validation_error"),
        ('{"type":"dance"}', "validation_error"),
        ('{"type":"chat"}', "validation_error"),
        ('{"type":"chat","message":"hi","model":"not-a-model"}', "validation_error"),
        ('{"type":"resume","streamId":"0123456789abcdef0123456789abcdef","lastEventId":"zz"}', "validation_error"),
        ('{"type":"resume","streamId":"0123456789abcdef0123456789abcdef"}', "not_found"),
        ('{"type":"auth","token":"x"}', "validation_error"),
        ('{"type":"chat","message":"' + "x" * 70_000 + '"}', "payload_too_large"),
        (b"\x00\x01binary", "validation_error"),
    ],
)
def test_a_bad_frame_gets_an_error_event_and_the_socket_goes_on(ws: Client, message: str | bytes, code: str) -> None:
    ws.send(message)
    frame = next_frame(ws)
    assert frame.type == "error" and frame.id is None
    assert frame.data["error"]["code"] == code
    assert frame.data["error"]["message"]
    send(ws, {"type": "ping"})
    assert next_frame(ws).type == "pong"


def test_a_frame_past_four_times_the_body_limit_closes_with_1009(server: GunicornServer) -> None:
    client = connect(server.url)
    client.send("x" * (4 * 64 * 1024 + 1))
    assert closed_with(client) == 1009
    assert httpx.get(server.url + "/healthz").status_code == 200


def test_a_plain_get_is_refused_with_json(server: GunicornServer) -> None:
    response = httpx.get(server.url + "/api/v1/ai/chat/ws")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "validation_error"


def test_closing_mid_reply_closes_the_upstream_and_saves_the_partial(
    server: GunicornServer, upstream: FakeUpstream
) -> None:
    client = connect(server.url)
    send(client, {"type": "chat", "message": "ws hang up #tokens=9 #silence=30"})
    frames = [next_frame(client), next_frame(client)]
    assert [frame.type for frame in frames] == ["metadata", "token"]
    connection = upstream.connection_for("ws hang up")
    assert connection.closed_at is None
    hung_up = time.monotonic()
    client.close()
    assert wait_for(lambda: connection.closed_at is not None, 3), "upstream connection still open"
    assert connection.closed_at is not None and connection.closed_at - hung_up < 1.0
    conversation = frames[0].data["conversationId"]

    def saved() -> dict[str, str] | None:
        messages = httpx.get(f"{server.url}/api/v1/ai/conversations/{conversation}").json()["messages"]
        return messages[-1] if len(messages) == 2 and messages[-1]["status"] == "incomplete" else None

    assert wait_for(lambda: saved() is not None, 3)
    assert saved() == {**saved(), "content": "Baby"}  # type: ignore[dict-item]


@pytest.fixture(scope="module")
def grace_server(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornServer]:
    from tests.conftest import _server_env

    folder = tmp_path_factory.mktemp("ws-grace")
    env = {**_server_env(upstream, f"sqlite:///{folder / 'chat.sqlite3'}"), "RESUME_GRACE_SECONDS": "5"}
    running = GunicornServer(env, folder / "gunicorn.log").start()
    yield running
    running.stop()


def _tokens_text(frames: list[Frame]) -> str:
    return "".join(str(frame.data.get("content", "")) for frame in frames if frame.type == "token")


def test_a_ws_turn_dropped_mid_reply_resumes_over_a_new_socket(
    grace_server: GunicornServer, upstream: FakeUpstream
) -> None:
    first = connect(grace_server.url)
    send(first, {"type": "chat", "message": "ws comes back #tokens=30 #delay=0.05"})
    seen = [next_frame(first) for _ in range(5)]
    first.close()
    time.sleep(0.3)
    assert upstream.connection_for("ws comes back").closed_at is None  # generation goes on for a resume
    stream_id, last = str(seen[-1].id).split(":")
    second = connect(grace_server.url)
    send(second, {"type": "resume", "streamId": stream_id, "lastEventId": f"{stream_id}:{last}"})
    rest = until_end(second)
    second.close()
    assert [int(str(frame.id).split(":")[1]) for frame in rest] == list(range(int(last) + 1, 32))
    assert _tokens_text(seen) + _tokens_text(rest) == reply(30)
    assert wait_for(lambda: saved_reply(grace_server, "ws comes back") is not None, 5)


def test_a_stream_begun_over_sse_resumes_over_ws(grace_server: GunicornServer) -> None:
    stream_id, last, before = drop_after(grace_server.url, "sse to ws #tokens=30 #delay=0.05", 4)
    client = connect(grace_server.url)
    send(client, {"type": "resume", "streamId": stream_id, "lastEventId": f"{stream_id}:{last}"})
    rest = until_end(client)
    assert rest[0].id == f"{stream_id}:{last + 1}"
    assert before + _tokens_text(rest) == reply(30)
    assert rest[-1].type == "done"
    send(client, {"type": "resume", "streamId": stream_id, "lastEventId": ""})  # kept a while: replayed whole
    replay = until_end(client)
    client.close()
    assert replay[0].type == "metadata" and _tokens_text(replay) == reply(30)


@pytest.fixture(scope="module")
def auth_server(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornServer]:
    from tests.conftest import _server_env

    folder = tmp_path_factory.mktemp("ws-auth")
    env = {
        **_server_env(upstream, f"sqlite:///{folder / 'chat.sqlite3'}"),
        "JWT_SECRET": SECRET,
        "RATE_LIMIT": "3/minute",
        "MAX_STREAMS_PER_USER": "1",
    }
    running = GunicornServer(env, folder / "gunicorn.log").start()
    yield running
    running.stop()


def test_auth_by_header(auth_server: GunicornServer) -> None:
    client = connect(auth_server.url, headers={"Authorization": f"Bearer {token('header-user')}"})
    frames = chat(client, "by header #tokens=2")
    client.close()
    assert frames[-1].type == "done"


def test_a_bad_header_token_is_refused_before_the_upgrade(auth_server: GunicornServer) -> None:
    with pytest.raises(Refused) as refused:
        connect(auth_server.url, headers={"Authorization": "Bearer not-a-jwt"})
    assert refused.value.status_code == 401


def test_auth_by_first_frame(auth_server: GunicornServer) -> None:
    client = connect(auth_server.url)
    send(client, {"type": "auth", "token": token("frame-user")})
    frames = chat(client, "by frame #tokens=2")
    client.close()
    assert frames[-1].type == "done"


@pytest.mark.parametrize("first", [{"type": "auth", "token": "garbage"}, {"type": "chat", "message": "hi"}])
def test_a_bad_or_missing_first_frame_token_closes_with_1008(
    auth_server: GunicornServer, first: dict[str, str]
) -> None:
    client = connect(auth_server.url)
    send(client, first)
    frame = next_frame(client)
    assert frame.type == "error" and frame.data["error"]["code"] == "unauthorized"
    assert closed_with(client) == 1008


def test_the_rate_limit_counts_each_turn_and_shares_the_stream_window(auth_server: GunicornServer) -> None:
    bearer = {"Authorization": f"Bearer {token('limited-user')}"}
    client = connect(auth_server.url, headers=bearer)
    assert chat(client, "limited one #tokens=1")[-1].type == "done"
    assert chat(client, "limited two #tokens=1")[-1].type == "done"
    assert stream(auth_server.url, {"message": "limited three #tokens=1"}, bearer)[-1].type == "done"
    send(client, {"type": "chat", "message": "limited four"})
    refused = next_frame(client)
    assert refused.data["error"]["code"] == "rate_limited"
    assert refused.data["error"]["retryable"] is True
    assert refused.data["error"]["details"]["retryAfter"] >= 1
    send(client, {"type": "ping"})
    assert next_frame(client).type == "pong"
    client.close()


def test_the_open_stream_cap_holds_across_transports(auth_server: GunicornServer) -> None:
    bearer = {"Authorization": f"Bearer {token('capped-user')}"}
    first = connect(auth_server.url, headers=bearer)
    send(first, {"type": "chat", "message": "holds the slot #tokens=20 #delay=0.05"})
    assert next_frame(first).type == "metadata"
    second = connect(auth_server.url, headers=bearer)
    send(second, {"type": "chat", "message": "over the cap"})
    refused = next_frame(second)
    assert refused.data["error"]["code"] == "rate_limited"
    assert "streams open" in refused.data["error"]["message"]
    assert until_end(first)[-1].type == "done"
    first.close()
    second.close()


def test_idle_timeout_of_the_model_and_of_the_socket(server_factory: ServerFactory, upstream: FakeUpstream) -> None:
    server = server_factory(STREAM_IDLE_TIMEOUT="1", WS_IDLE_TIMEOUT_SECONDS="1", HEARTBEAT_SECONDS="0.3")
    client = connect(server.url)
    started = time.monotonic()
    frames = chat(client, "ws goes quiet #tokens=5 #silence=30")
    assert [frame.type for frame in frames] == ["metadata", "token", "error"]
    assert frames[-1].data["error"]["code"] == "idle_timeout"
    assert 0.9 < time.monotonic() - started < 3
    assert wait_for(lambda: upstream.connection_for("ws goes quiet").closed_at is not None, 2)
    quiet = time.monotonic()
    assert closed_with(client, 4) == 1000  # nothing running and nothing sent: the socket is closed
    assert 0.9 < time.monotonic() - quiet < 2.5


def test_a_draining_worker_closes_idle_sockets_at_once_and_busy_ones_after_their_stream(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(HEARTBEAT_SECONDS="0.5")
    idle, busy = connect(server.url), connect(server.url)
    send(busy, {"type": "chat", "message": "drains to the end #tokens=20 #delay=0.05"})
    assert next_frame(busy).type == "metadata"
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    assert closed_with(idle, 3) == 1001
    assert time.monotonic() - signalled < 1.5
    frames = until_end(busy)
    assert frames[-1].type == "done" and sum(1 for frame in frames if frame.type == "token") == 20
    assert closed_with(busy, 3) == 1001
    server.process.wait(10)


def _pings_and_messages(sock: socket.socket, connection: WSConnection, seconds: float) -> tuple[int, list[str]]:
    """Read for ``seconds``: how many WebSocket pings came, and the text messages (wsproto sees every frame)."""
    pings, messages = 0, []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        connection.receive_data(data)
        for event in connection.events():
            if isinstance(event, Ping):
                pings += 1
                sock.sendall(connection.send(event.response()))
            elif isinstance(event, TextMessage):
                messages.append(event.data)
    return pings, messages


def test_heartbeats_are_websocket_pings_between_turns_and_while_the_model_is_silent(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(HEARTBEAT_SECONDS="0.3")
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    connection = WSConnection(ConnectionType.CLIENT)
    sock.sendall(connection.send(Request(host=f"127.0.0.1:{server.port}", target="/api/v1/ai/chat/ws")))
    connection.receive_data(sock.recv(65536))
    assert any(isinstance(event, AcceptConnection) for event in connection.events())
    idle_pings, nothing = _pings_and_messages(sock, connection, 1.1)
    assert idle_pings >= 2 and nothing == []
    sock.sendall(connection.send(Message(data='{"type":"chat","message":"pings mid reply #tokens=3 #silence=1.2"}')))
    pings, messages = _pings_and_messages(sock, connection, 2.5)
    sock.close()
    assert pings >= 2
    assert [orjson.loads(message)["type"] for message in messages] == ["metadata", "token", "token", "token", "done"]


@pytest.mark.parametrize(
    ("origin", "opens"),
    [("http://127.0.0.1:9999", True), ("https://evil.example", False), ("http://127.0.0.1.evil.example", False)],
)
def test_only_pages_of_this_host_may_open_a_socket(server: GunicornServer, origin: str, opens: bool) -> None:
    if opens:
        client = connect(server.url, headers={"Origin": origin})
        send(client, {"type": "ping"})
        assert next_frame(client).type == "pong"
        client.close()
        return
    with pytest.raises(Refused) as refused:
        connect(server.url, headers={"Origin": origin})
    assert refused.value.status_code == 403
