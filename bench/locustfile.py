"""Locust load test: each user streams a chat reply, reads every event, and reports time to first token and
full-stream time as their own entries (``SSE first token`` and ``SSE full stream``; ``WS ...`` for the WebSocket
user, which keeps one socket open and runs its turns on it).

    locust -f bench/locustfile.py --host http://127.0.0.1:8000 --headless -u 500 -r 50 -t 1m StreamingChatUser
    locust -f bench/locustfile.py --host http://127.0.0.1:8000 --headless -u 500 -r 50 -t 1m WebSocketChatUser

Without a user class named, locust runs both, half the users each.

``CHAT_MESSAGE`` sets the message (the bench upstream reads ``#tokens=N #delay=S`` from it); ``CHAT_TOKEN`` a
bearer token when auth is on.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from locust import FastHttpUser, User, between, task
from simple_websocket import Client, ConnectionClosed

MESSAGE = os.environ.get("CHAT_MESSAGE", "Tell me about baby sleep patterns #tokens=100 #delay=0.02")
TOKEN = os.environ.get("CHAT_TOKEN", "")


class StreamingChatUser(FastHttpUser):
    wait_time = between(0.5, 1.5)
    network_timeout = 120.0
    connection_timeout = 10.0

    @task
    def stream_reply(self) -> None:
        headers = {"Accept": "text/event-stream", "Content-Type": "application/json"}
        if TOKEN:
            headers["Authorization"] = f"Bearer {TOKEN}"
        started = time.perf_counter()
        first_token_at = 0.0
        tokens = 0
        ended = ""
        with self.client.post(
            "/api/v1/ai/chat/stream", json={"message": MESSAGE}, headers=headers, stream=True, catch_response=True,
            name="POST /chat/stream (headers)",
        ) as response:  # fmt: skip
            if response.status_code != 200:
                response.failure(f"status {response.status_code}")
                return
            # geventhttpclient's readline returns each line as soon as it arrives; read(n) would wait for n bytes
            body = response._response
            while line := body.readline(b"\n"):
                if line.startswith(b'data: {"type":"token"'):
                    tokens += 1
                    if not first_token_at:
                        first_token_at = time.perf_counter()
                elif line.startswith(b'data: {"type":"done"'):
                    ended = "done"
                elif line.startswith(b'data: {"type":"error"'):
                    ended = "error"
            response.success()
        total_ms = (time.perf_counter() - started) * 1000
        fire = self.environment.events.request.fire
        if first_token_at:
            ttft_ms = (first_token_at - started) * 1000
            fire(request_type="SSE", name="first token", response_time=ttft_ms, response_length=0, exception=None)
        failure = None if ended == "done" else RuntimeError(f"stream ended with {ended or 'no final event'}")
        fire(request_type="SSE", name="full stream", response_time=total_ms, response_length=tokens, exception=failure)


class WebSocketChatUser(User):
    """The same turn over ``GET /api/v1/ai/chat/ws``: one socket per user, opened at start, a ``chat`` frame per
    task, frames read until ``done`` or ``error`` (simple-websocket's reader runs as a greenlet under locust)."""

    wait_time = between(0.5, 1.5)

    def on_start(self) -> None:
        self.socket: Any = None

    def on_stop(self) -> None:
        if self.socket is not None and self.socket.connected:
            self.socket.close()

    def _open(self) -> Any:
        if self.socket is None or not self.socket.connected:
            url = str(self.host).replace("https://", "wss://", 1).replace("http://", "ws://", 1)
            headers = {"Authorization": f"Bearer {TOKEN}"} if TOKEN else {}
            self.socket = Client.connect(url + "/api/v1/ai/chat/ws", headers=headers)
        return self.socket

    @task
    def stream_reply(self) -> None:
        fire = self.environment.events.request.fire
        started = time.perf_counter()
        first_token_at, tokens, ended = 0.0, 0, ""
        try:
            socket = self._open()
            socket.send(json.dumps({"type": "chat", "message": MESSAGE}))
            while not ended:
                frame = socket.receive(120)
                if frame is None:
                    break
                if frame.startswith('{"id":') and '"type":"token"' in frame[:80]:
                    tokens += 1
                    if not first_token_at:
                        first_token_at = time.perf_counter()
                elif '"type":"done"' in frame:
                    ended = "done"
                elif '"type":"error"' in frame:
                    ended = "error"
        except (ConnectionClosed, OSError) as error:
            self.socket = None
            ended = f"a closed socket ({error})"
        total_ms = (time.perf_counter() - started) * 1000
        if first_token_at:
            ttft_ms = (first_token_at - started) * 1000
            fire(request_type="WS", name="first token", response_time=ttft_ms, response_length=0, exception=None)
        failure = None if ended == "done" else RuntimeError(f"stream ended with {ended or 'no final event'}")
        fire(request_type="WS", name="full stream", response_time=total_ms, response_length=tokens, exception=failure)
