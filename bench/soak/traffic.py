"""The soak's clients: every way a stream starts and ends, each one recorded with what its client received.

Kinds (``KINDS``), each run by one client loop at a time:

- ``completed``: reads the reply to its ``done``.
- ``cancelled``: reads a few tokens, sends ``DELETE``, reads on to the ``cancelled`` event.
- ``resumed``: reads a few tokens, hangs up, comes back within the resume grace with ``Last-Event-ID`` and reads
  to ``done``: the two connections together must be the whole reply, nothing twice, nothing missing.
- ``abandoned``: reads a few tokens and hangs up for good; after the grace a replay (``GET`` without
  ``Last-Event-ID``) must end with ``cancelled``.
- ``idle``: the model goes silent after a few tokens; the stream must end with ``idle_timeout``.
- ``budget``: a new user whose one reply is longer than the token budget (``rate_limited`` mid-stream), then a
  second request of that user (``429`` before any stream).
- ``burst``: one user sends more requests in a row than the per-minute rate limit allows (``429`` past it).

Normal traffic comes from a fixed pool of users taken in turn (so each stays far inside its limits and the
service's per-user state stays bounded); budget users are new each time, burst users come from a small pool.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
import jwt

from bench.soak.events import Event, EventReader
from bench.soak.upstream import reply_text

STREAM_PATH = "/api/v1/ai/chat/stream"
KINDS = ("completed", "cancelled", "resumed", "abandoned", "idle", "budget", "burst")
WEIGHTS = (40, 12, 14, 6, 8, 3, 1)
COUNTED = ("done", "cancelled", "resumed", "abandoned", "idle", "budget", "429 rate", "429 budget")
COUNTED_AS = {  # the table's counts each kind adds to
    "completed": ("done",),
    "cancelled": ("cancelled",),
    "resumed": ("resumed",),
    "abandoned": ("abandoned",),
    "idle": ("idle",),
    "budget": ("budget", "429 budget"),
    "burst": ("429 rate",),
}
BURST_REQUESTS = 34  # past the soak's 30/minute rate limit
BURST_USERS = 4
REPLAY_MARGIN_SECONDS = 5.0  # after the grace: the service ends an unread stream within a second of it


@dataclass(frozen=True)
class Limits:
    """The service settings the traffic is shaped around."""

    token_budget: int
    resume_grace: float
    normal_users: int


@dataclass
class Attempt:
    """One stream that started, what its client received, and what the database must hold for it."""

    kind: str
    user: str
    message: str
    tokens: int  # what the upstream was asked for
    stream_id: str = ""
    conversation_id: str = ""
    message_id: str = ""
    received: str = ""  # the text of the token events, every connection of the client together
    final: str = ""  # "done" or the final error's code; "" when the client never read one
    next_sequence: int = 0
    expected_status: str = "complete"
    saved_is_prefix: bool = False  # saved = what the client received + what was generated after it left
    replay: str | None = None  # abandoned: the reply's text as a replay after the grace gives it
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        self.problems.append(f"{self.kind} {self.stream_id or '-'} ({self.user}): {text}")


class Traffic:
    """Client loops against one service; ``attempts`` and ``counts`` grow as they run."""

    def __init__(
        self, base_url: str, secret: str, run_id: str, limits: Limits, kinds: tuple[str, ...] = KINDS, seed: int = 7
    ) -> None:
        self.client = httpx.AsyncClient(
            base_url=base_url,
            timeout=httpx.Timeout(60.0),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
        )
        self.secret = secret
        self.run_id = run_id
        self.limits = limits
        self.random = random.Random(seed)
        self.kinds = kinds
        self.weights = [WEIGHTS[KINDS.index(kind)] for kind in kinds]
        self.attempts: list[Attempt] = []
        self.counts: Counter[str] = Counter()
        self.problems: list[str] = []  # refusals and failures that belong to no started stream
        self._normal = itertools.count()
        self._budget = itertools.count()
        self._burst = itertools.count()
        self._tokens: dict[str, dict[str, str]] = {}
        self._sequence = itertools.count()

    async def close(self) -> None:
        await self.client.aclose()

    # --- running -----------------------------------------------------------------------------------------------

    async def run(self, loops: int, until: float) -> None:
        """``loops`` clients until the monotonic time ``until``; each finishes what it is doing first."""
        kinds = self.kinds
        await asyncio.gather(*(self._loop(until, kinds[index % len(kinds)]) for index in range(loops)))

    async def _loop(self, until: float, first: str) -> None:
        """Starts with ``first`` (so that even a short run has every kind), then picks by weight."""
        kind = first
        while time.monotonic() < until:
            try:
                await getattr(self, kind)()
            except (httpx.HTTPError, OSError) as error:
                self.problems.append(f"{kind}: {type(error).__name__}: {error}")
            await asyncio.sleep(self.random.uniform(0.0, 0.3))
            kind = self.random.choices(self.kinds, self.weights)[0]

    # --- users -------------------------------------------------------------------------------------------------

    def _headers(self, user: str) -> dict[str, str]:
        found = self._tokens.get(user)
        if found is None:
            claims = {"sub": user, "exp": int(time.time()) + 6 * 3600}
            found = {"Authorization": "Bearer " + jwt.encode(claims, self.secret, "HS256")}
            self._tokens[user] = found
        return found

    def _normal_user(self) -> str:
        return f"soak-{self.run_id}-u{next(self._normal) % self.limits.normal_users}"

    def _attempt(self, kind: str, user: str, tokens: int, script: str) -> Attempt:
        message = f"soak {kind} {next(self._sequence)} #tokens={tokens} {script}".strip()
        return Attempt(kind, user, message, tokens)

    # --- one request -------------------------------------------------------------------------------------------

    @asynccontextmanager
    async def _post(self, attempt: Attempt) -> AsyncIterator[httpx.Response]:
        body = {"message": attempt.message}
        async with self.client.stream("POST", STREAM_PATH, json=body, headers=self._headers(attempt.user)) as found:
            yield found

    async def _opened(self, attempt: Attempt, response: httpx.Response) -> EventReader | None:
        """The reader after the ``metadata`` event, or None (the refusal recorded) when the stream did not start."""
        if response.status_code != 200:
            await response.aread()
            self.problems.append(f"{attempt.kind} ({attempt.user}): HTTP {response.status_code} {response.text}")
            return None
        reader = EventReader(response)
        first = await reader.next()
        if first is None or first.type != "metadata":
            self.problems.append(f"{attempt.kind} ({attempt.user}): the stream did not open with metadata: {first}")
            return None
        attempt.stream_id = first.stream_id
        attempt.conversation_id = str(first.data["conversationId"])
        attempt.message_id = str(first.data["messageId"])
        attempt.next_sequence = 1
        self.attempts.append(attempt)
        return reader

    async def _stream(self, attempt: Attempt, tokens: int | None = None) -> bool:
        """Posts the attempt and reads its stream to the end, or only ``tokens`` token events before hanging up;
        False (the refusal recorded) when the stream did not start."""
        async with self._post(attempt) as response:
            reader = await self._opened(attempt, response)
            if reader is None:
                return False
            await self._read(attempt, reader, tokens)
        return True

    async def _read(self, attempt: Attempt, reader: EventReader, tokens: int | None = None) -> None:
        """Reads up to the final event, or until ``tokens`` more token events have come; checks the event ids."""
        while tokens is None or tokens > 0:
            event = await reader.next()
            if event is None:
                if tokens is None:
                    attempt.problem("the response ended without a final event")
                return
            if not self._in_order(attempt, event):
                return
            if event.type == "token":
                attempt.received += str(event.data["content"])
                tokens = None if tokens is None else tokens - 1
            elif event.type in ("done", "error"):
                attempt.final = "done" if event.type == "done" else str(event.data["error"]["code"])
                return

    @staticmethod
    def _in_order(attempt: Attempt, event: Event) -> bool:
        if event.stream_id != attempt.stream_id or event.sequence != attempt.next_sequence:
            attempt.problem(f"event {event.last_event_id} where {attempt.stream_id}:{attempt.next_sequence} was due")
            return False
        attempt.next_sequence += 1
        return True

    def _expect(self, attempt: Attempt, final: str, counted: str) -> None:
        if attempt.final != final:
            attempt.problem(f"ended with {attempt.final or 'nothing'} where {final} was due")
        self.counts[counted] += 1

    async def _delete(self, attempt: Attempt) -> None:
        url = f"{STREAM_PATH}/{attempt.stream_id}"
        response = await self.client.delete(url, headers=self._headers(attempt.user))
        if response.status_code != 204:
            attempt.problem(f"DELETE answered {response.status_code} {response.text}")

    # --- the kinds ---------------------------------------------------------------------------------------------

    async def completed(self, user: str | None = None, tokens: int | None = None) -> None:
        count = tokens or self.random.randint(10, 60)
        delay = self.random.choice((0, 0.01, 0.02))
        attempt = self._attempt("completed", user or self._normal_user(), count, f"#delay={delay}")
        if not await self._stream(attempt):
            return
        self._expect(attempt, "done", "done")
        if attempt.received != reply_text(count):
            attempt.problem(f"received {len(attempt.received)} characters, not the {len(reply_text(count))} sent")

    async def cancelled(self) -> None:
        attempt = self._attempt("cancelled", self._normal_user(), 400, "#delay=0.02")
        attempt.expected_status = "incomplete"
        async with self._post(attempt) as response:
            reader = await self._opened(attempt, response)
            if reader is None:
                return
            await self._read(attempt, reader, tokens=self.random.randint(1, 15))
            await self._delete(attempt)
            await self._read(attempt, reader)
        self._expect(attempt, "cancelled", "cancelled")

    async def resumed(self) -> None:
        count = self.random.randint(30, 80)
        attempt = self._attempt("resumed", self._normal_user(), count, "#delay=0.02")
        if not await self._stream(attempt, tokens=self.random.randint(1, count // 2)):
            return
        # the connection is closed here, in the middle of the reply
        await asyncio.sleep(self.random.uniform(0.1, self.limits.resume_grace / 2))
        last = f"{attempt.stream_id}:{attempt.next_sequence - 1}"
        headers = {**self._headers(attempt.user), "Last-Event-ID": last}
        async with self.client.stream("GET", f"{STREAM_PATH}/{attempt.stream_id}", headers=headers) as response:
            if response.status_code != 200:
                await response.aread()
                attempt.problem(f"resume answered {response.status_code} {response.text}")
                return
            await self._read(attempt, EventReader(response))
        self._expect(attempt, "done", "resumed")
        if attempt.received != reply_text(count):
            attempt.problem(f"received {len(attempt.received)} characters, not the {len(reply_text(count))} sent")

    async def abandoned(self) -> None:
        attempt = self._attempt("abandoned", self._normal_user(), 600, "#delay=0.03")
        attempt.expected_status = "incomplete"
        attempt.saved_is_prefix = True
        if not await self._stream(attempt, tokens=self.random.randint(1, 10)):
            return
        await asyncio.sleep(self.limits.resume_grace + REPLAY_MARGIN_SECONDS)
        replay = Attempt("abandoned", attempt.user, attempt.message, attempt.tokens, stream_id=attempt.stream_id)
        async with self.client.stream(
            "GET", f"{STREAM_PATH}/{attempt.stream_id}", headers=self._headers(attempt.user)
        ) as response:
            if response.status_code != 200:
                await response.aread()
                attempt.problem(f"the replay after the grace answered {response.status_code} {response.text}")
                self.counts["abandoned"] += 1
                return
            reader = EventReader(response)
            first = await reader.next()
            if first is None or first.sequence != 0:
                attempt.problem(f"the replay did not start with the metadata: {first}")
            else:
                replay.next_sequence = 1
                await self._read(replay, reader)
        attempt.problems.extend(replay.problems)
        attempt.replay = replay.received
        attempt.final = replay.final  # what the stream ended with, as its replay says
        self._expect(attempt, "cancelled", "abandoned")

    async def idle(self) -> None:
        stall = self.random.randint(1, 10)
        attempt = self._attempt("idle", self._normal_user(), 50, f"#delay=0.01 #stall={stall}")
        attempt.expected_status = "incomplete"
        if not await self._stream(attempt):
            return
        self._expect(attempt, "idle_timeout", "idle")
        if attempt.received != reply_text(stall):
            attempt.problem(f"received {attempt.received!r} before the silence, not {reply_text(stall)!r}")

    async def budget(self) -> None:
        user = f"soak-{self.run_id}-b{next(self._budget)}"
        attempt = self._attempt("budget", user, self.limits.token_budget + 500, "#delay=0")
        attempt.expected_status = "incomplete"
        if not await self._stream(attempt):
            return
        self._expect(attempt, "rate_limited", "budget")
        await self._refused(user, "budget", "429 budget")

    async def burst(self) -> None:
        user = f"soak-{self.run_id}-r{next(self._burst) % BURST_USERS}"
        for _ in range(BURST_REQUESTS):
            attempt = self._attempt("completed", user, 3, "#delay=0")
            async with self._post(attempt) as response:
                if response.status_code == 429:
                    await response.aread()
                    self._check_refusal(attempt, response, "429 rate")
                    continue
                reader = await self._opened(attempt, response)
                if reader is None:
                    continue
                await self._read(attempt, reader)
            self._expect(attempt, "done", "done")

    async def _refused(self, user: str, kind: str, counted: str) -> None:
        """A request that must be refused with ``429 rate_limited`` before any stream."""
        attempt = self._attempt(kind, user, 5, "#delay=0")
        async with self._post(attempt) as response:
            await response.aread()
            if response.status_code != 429:
                self.problems.append(f"{kind} ({user}): HTTP {response.status_code} where 429 was due")
                return
            self._check_refusal(attempt, response, counted)

    def _check_refusal(self, attempt: Attempt, response: httpx.Response, counted: str) -> None:
        code = response.json().get("error", {}).get("code")
        if code != "rate_limited" or "Retry-After" not in response.headers:
            self.problems.append(f"{attempt.kind} ({attempt.user}): a 429 with code {code} and no Retry-After")
        self.counts[counted] += 1
