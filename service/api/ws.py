"""``GET /api/v1/ai/chat/ws``: the chat stream over one WebSocket that carries many turns (docs/protocol.md).

The client sends ``chat`` (the body of ``POST /chat/stream``), ``cancel``, ``resume`` and ``ping`` frames; the
server sends the SSE stream's events as frames (``service.relay.ws``) and ``pong``. Each turn goes through the same
guards and machinery as an SSE stream: the rate limit (counted in the stream view's window), the schema, the token
budget, the open-stream cap, a ``LiveStream`` with its watchdog (heartbeat, idle timeout, longest stream, send
guard) in a greenlet of its own, so this one keeps reading frames (a ``cancel`` arrives while tokens flow). A
resume, of a stream begun over SSE or WS, is a reader of that ``LiveStream``.

A frame that cannot be a request (binary, not JSON, unknown type, too large, a bad body) gets an ``error`` event
and the socket goes on; one larger than four times ``MAX_BODY_BYTES`` closes it with 1009 (the library's bound on
what it buffers). The user comes from the upgrade's ``Authorization`` header, or else from a first frame
``{"type":"auth","token":...}`` (a browser cannot set headers on a WebSocket), which must arrive within
``REQUEST_READ_TIMEOUT_SECONDS``.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, Final
from urllib.parse import urlsplit

import gevent
import orjson
from flask import Blueprint, Response, request
from flask_limiter.util import get_remote_address

from service.api.chat import cancel, chat_request_from, event_sequence, open_chat, read_stream, start_live
from service.api.errors import attach_error_handlers
from service.api.request_id import attach_request_ids
from service.auth import current_user
from service.chat.stream import ChatStream
from service.errors import (
    Forbidden,
    InternalError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServiceError,
    Unauthorized,
)
from service.extensions import Services, services
from service.relay.send_guard import send_guard
from service.relay.shutdown import draining
from service.relay.ws import (
    GOING_AWAY,
    NORMAL,
    PING_FRAME,
    POLICY_VIOLATION,
    ChannelClosed,
    OwnedTurn,
    WsChannel,
    error_frame,
    follow,
    json_frame,
)

log = logging.getLogger(__name__)
bp = Blueprint("chat_ws", __name__, url_prefix="/api/v1/ai")
attach_error_handlers(bp)
attach_request_ids(bp)
FRAME_TYPES: Final = ("chat", "cancel", "resume", "ping", "auth")
PONG: Final = json_frame({"type": "pong"})


class _Handled(Response):
    """What the view returns once the socket is done: gunicorn must write nothing more on it. Raising
    ``StopIteration`` where the response would be written makes gunicorn close the connection quietly."""

    def __call__(self, environ: Any, start_response: Any) -> Any:
        raise StopIteration()


@bp.route("/chat/ws", websocket=True)  # werkzeug matches upgrade requests only to such rules
def chat_ws() -> Response:
    """Upgrade to a WebSocket and serve chat turns on it until either side closes it."""
    found = services()
    if request.headers.get("Upgrade", "").lower() != "websocket" or "gunicorn.socket" not in request.environ:
        raise InvalidRequest("This endpoint expects a WebSocket upgrade.", {"Upgrade": ["must be websocket"]})
    _check_origin(found.settings.cors_origins)
    user_id = None
    if "Authorization" in request.headers or not found.auth.key:  # else the first frame authenticates
        user_id = current_user(found.auth)  # a bad token is refused here, as 401, before the upgrade
    channel = WsChannel(request.environ, 4 * found.settings.max_body_bytes)
    guard = send_guard(found.timing.send_timeout)
    watched = guard.watch(channel, channel.socket)  # a client that stops reading is cut, whatever was being sent
    try:
        WsSession(found, channel, user_id).run()
    finally:
        guard.forget(watched)
        channel.close(GOING_AWAY)
    return _Handled()


def _check_origin(allowed: tuple[str, ...]) -> None:
    """A browser opens a WebSocket to any site, sending that site's cookies, and CORS does not apply: only pages of
    this host (by host name: a proxy may drop the port) or of ``CORS_ORIGINS`` may open one. A client that is not
    a browser sends no ``Origin``."""
    origin = request.headers.get("Origin", "")
    if not origin or origin.lower() in allowed:
        return
    if urlsplit(origin.lower()).hostname == urlsplit(f"//{request.host.lower()}").hostname:
        return
    raise Forbidden("Pages of another site may not open this WebSocket.", {"Origin": ["not allowed"]})


class WsSession:
    """The frames of one socket, read in the view's greenlet; at most one stream (a turn or a resume) at a time."""

    def __init__(self, found: Services, channel: WsChannel, user_id: str | None) -> None:
        self.found = found
        self.channel = channel
        self.user_id = user_id
        self.remote = get_remote_address()
        self.turn: OwnedTurn | None = None
        self.task: gevent.Greenlet[Any, Any] | None = None  # the running turn's or resume's greenlet
        self.stream_id: str | None = None  # the stream it carries, once known
        self.following = False  # the task reads a resumed stream (else it owns a turn)

    def run(self) -> None:
        draining.listeners.add(self._drain)
        try:
            self._serve()
        except ChannelClosed:
            pass
        except Exception:  # the response is the socket now: an error must not become an HTTP 500 written into it
            log.exception("a WebSocket session failed")
        finally:
            draining.listeners.discard(self._drain)
            self._client_gone()  # the socket is closing: a stream still running goes on as after any drop

    def _serve(self) -> None:
        settings = self.found.settings
        if self.user_id is None and not self._authenticate(settings.request_read_timeout_seconds):
            return
        idle_limit, heartbeat = settings.ws_idle_timeout_seconds, settings.heartbeat_seconds
        idle = 0.0
        while True:
            if draining.started and not self._busy():
                self._drain()
            message = self.channel.receive(min(heartbeat, idle_limit))
            if message is not None:
                idle = 0.0
                self._dispatch(message)
            elif self._busy():
                idle = 0.0  # the stream's watchdog sends its heartbeats
            else:
                idle += min(heartbeat, idle_limit)
                if idle >= idle_limit:
                    self.channel.close(NORMAL, "idle")
                    return
                self.channel.send(PING_FRAME)  # a WebSocket ping: keeps proxies from closing a quiet socket

    def _drain(self) -> None:
        """The worker is shutting down: a socket with no stream running is closed now (1001, going away); one with
        a stream is closed once the stream has ended."""
        if not self._busy():
            self.channel.close(GOING_AWAY, "server restarting")

    def _authenticate(self, timeout: float) -> bool:
        """The first frame must be ``{"type":"auth","token":...}``; anything else, or nothing in time, closes."""
        message = self.channel.receive(timeout)
        try:
            frame = _frame(message, self.found.settings.max_body_bytes) if message is not None else None
            if frame is None or frame.get("type") != "auth" or not isinstance(frame.get("token"), str):
                raise Unauthorized('Send {"type":"auth","token":...} first.', {"reason": "missing"})
            self.user_id = self.found.auth.user_for(f"Bearer {frame['token']}")
        except ServiceError as refused:
            self.channel.send(error_frame(refused))
            self.channel.close(POLICY_VIOLATION, refused.code)
            return False
        return True

    def _dispatch(self, message: str | bytes) -> None:
        try:
            frame = _frame(message, self.found.settings.max_body_bytes)
            kind = frame.get("type")
            if kind == "chat":
                self._chat(frame)
            elif kind == "cancel":
                self._cancel(frame)
            elif kind == "resume":
                self._resume(frame)
            elif kind == "ping":
                self.channel.send(PONG)
            elif kind == "auth":
                raise InvalidRequest("This socket is already authenticated.", {"type": ["auth comes first, once"]})
            else:
                raise InvalidRequest("Unknown frame type.", {"type": [f"must be one of {list(FRAME_TYPES)}"]})
        except ServiceError as refused:
            if isinstance(refused, RateLimited):
                self.found.metrics.refusals.labels(refused.limit).inc()  # as the HTTP error handler counts them
            self.channel.send(error_frame(refused))
        except ChannelClosed:
            raise
        except Exception:
            log.exception("a WebSocket frame failed")
            self.channel.send(error_frame(ServiceError()))

    def _busy(self) -> bool:
        return self.task is not None and not self.task.dead

    def _one_at_a_time(self) -> None:
        if self._busy():
            raise InvalidRequest(
                "A stream is running on this socket; cancel it or wait for its end.", {"type": ["one stream at a time"]}
            )

    def _chat(self, frame: dict[str, Any]) -> None:
        self._one_at_a_time()
        found, user_id = self.found, self._user()
        if found.turn_limit is not None:
            found.turn_limit.check(f"user:{user_id}" if found.auth.enabled else f"ip:{self.remote}")
        body = {key: value for key, value in frame.items() if key != "type"}
        chat = open_chat(found, user_id, chat_request_from(found, user_id, body, uuid.uuid4().hex))
        self.stream_id, self.turn, self.following = chat.metadata.stream_id, None, False
        self.task = gevent.spawn(self._own, chat)

    def _own(self, chat: ChatStream) -> None:
        """The turn's greenlet: it builds the ``LiveStream`` (whose owner it is) and runs it to the end."""
        client = None if self.channel.closed else self.channel.socket  # gone before this began: the first send says so
        try:
            live, watchdog = start_live(self.found, chat, client)
        except BaseException:
            chat.finish(InternalError())  # the upstream closed, the exchange saved, the stream's slot released
            raise
        self.turn = OwnedTurn(live, self.channel, watchdog.release_client)
        self.turn.run()

    def _resume(self, frame: dict[str, Any]) -> None:
        self._one_at_a_time()
        stream_id, last_event_id = frame.get("streamId"), frame.get("lastEventId", "")
        if not isinstance(stream_id, str) or not isinstance(last_event_id, str):
            raise InvalidRequest("streamId and lastEventId must be strings.", {"streamId": ["required string"]})
        after = event_sequence(stream_id, last_event_id, "lastEventId")
        items = read_stream(self.found, stream_id, self._user(), after)
        self.stream_id, self.turn, self.following = stream_id, None, True
        self.task = gevent.spawn(follow, items, self.channel, self.found.timing.send_timeout)

    def _cancel(self, frame: dict[str, Any]) -> None:
        """``streamId`` names any of the user's streams; without it, the one this socket carries."""
        stream_id = frame.get("streamId") or (self.stream_id if self._busy() else None)
        if not isinstance(stream_id, str):
            raise NotFound("No stream is running on this socket.")
        cancel(self.found, stream_id, self._user())

    def _user(self) -> str:
        assert self.user_id is not None  # authenticated before any frame is dispatched
        return self.user_id

    def _client_gone(self) -> None:
        """The socket closed: a turn ends or waits out the resume grace, as an SSE stream does; a resume stops."""
        if not self._busy() or self.task is None:
            return
        if self.following:
            self.task.kill(block=True, timeout=1)
        elif self.turn is not None:
            self.turn.client_gone()
        # else the turn's greenlet has not begun: its first send finds the socket closed and ends it as a drop


def _frame(message: str | bytes, limit: int) -> dict[str, Any]:
    """A client frame as a JSON object, or the refusal it deserves (``limit``: ``MAX_BODY_BYTES``)."""
    if isinstance(message, bytes):
        raise InvalidRequest("Frames must be text: one JSON object each.", {"_frame": ["binary"]})
    if len(message) > limit or len(message.encode()) > limit:  # characters first: no copy of a huge frame
        raise PayloadTooLarge(f"A frame is over {limit} bytes.")
    try:
        frame = orjson.loads(message)
    except orjson.JSONDecodeError:
        raise InvalidRequest("The frame is not valid JSON.", {"_frame": ["not valid JSON"]}) from None
    if not isinstance(frame, dict):
        raise InvalidRequest("A frame must be a JSON object.", {"_frame": ["not an object"]})
    return frame
