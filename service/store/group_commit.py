"""Group commit: writes that arrive while one transaction runs go together in the next one.

Why: each stream saves its exchange once, when it ends, and a thousand streams end within a few milliseconds of
each other. One transaction per save spent more CPU on the transaction (and, for SQLite, on handing the work to
the database thread) than on the rows. Nothing waits for a timer: a lone save is written at once, exactly as
before; saves that queue up behind it share the next commit. ``submit`` returns only once its rows are
committed (or raises what failed), so a caller that has returned knows its data is stored; given a timeout, it
raises ``WriteTimedOut`` instead when that comes first.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar

import gevent
from gevent.event import AsyncResult

T = TypeVar("T")
# items per transaction: a burst of thousands is written as several short transactions rather than one long one,
# so that a transaction that runs past a save's timeout means a stuck database, not a big batch on a busy worker
MAX_BATCH = 200
if TYPE_CHECKING:
    Entry = tuple[
        T, AsyncResult[None]
    ]  # an item and its caller's result (gevent's classes are not generic at run time)


class WriteTimedOut(Exception):
    """The item was not written in time. ``may_land``: a transaction holding it was already under way and may
    still commit it; otherwise it was taken back and never will be."""

    def __init__(self, may_land: bool) -> None:
        super().__init__("the write did not finish in time" + ("; it may still land" if may_land else ""))
        self.may_land = may_land


def _always(_error: Exception) -> bool:
    return True


class GroupCommit(Generic[T]):
    """``write_many`` stores a list of items in one transaction; if that fails, each item is retried in a
    transaction of its own, so one bad item cannot lose the others, and its own error reaches its own caller.
    ``item_by_item(error)`` says whether a failed batch is worth that: not when the database itself is away, where
    every item would fail the same way, each after its own wait."""

    def __init__(
        self,
        write_many: Callable[[list[T]], None],
        item_by_item: Callable[[Exception], bool] = _always,
        stuck_for: Callable[[], float] | None = None,
    ) -> None:
        self.write_many = write_many
        self.item_by_item = item_by_item
        # how long the database has been on the work it is doing now; by default, the transaction under way
        self.stuck_for = stuck_for or self._writing_for
        self.pending: list[Entry[T]] = []
        self.writer: gevent.Greenlet[[], None] | None = None
        # (deadline, timeout, entry) in the order submitted: one timer for all, not one per waiting save
        self.deadlines: deque[tuple[float, float, Entry[T]]] = deque()
        self.reaper: gevent.Greenlet[[], None] | None = None
        self.writing_since: float | None = None  # when the transaction under way began

    def submit(self, item: T, timeout: float | None = None) -> None:
        """Returns once ``item`` is committed; raises what failed it, or ``WriteTimedOut`` when it has waited
        ``timeout`` and the database has been stuck on one transaction that long (see ``_reap``)."""
        entry: Entry[T] = (item, AsyncResult())
        self.pending.append(entry)
        if self.writer is None:
            self.writer = gevent.spawn(self._write_all)
        if timeout is not None:
            self.deadlines.append((time.monotonic() + timeout, timeout, entry))
            if self.reaper is None:
                self.reaper = gevent.spawn_later(timeout, self._reap)
        entry[1].get()

    def _reap(self) -> None:
        """Fail the saves whose time is up, taking back those no transaction holds yet (they never land) — but
        only while the database is stuck: the work it is on has run for as long as the wait allows. A database
        that answers, only behind a queue (a burst of streams ending at once on a busy worker), is waited for:
        giving up on it would move the same writes to the journal, at more cost, when nothing is wrong."""
        self.reaper = None
        now = time.monotonic()
        deadlines = self.deadlines
        while deadlines and deadlines[0][2][1].ready():
            deadlines.popleft()
        if not deadlines:
            return
        deadline, timeout, _ = deadlines[0]
        if deadline > now:
            self.reaper = gevent.spawn_later(deadline - now, self._reap)
            return
        stuck = self.stuck_for()
        if stuck < timeout:  # answering, if slowly: look again when it would have been stuck that long
            self.reaper = gevent.spawn_later(max(timeout - stuck, 0.05), self._reap)
            return
        overdue: list[Entry[T]] = []
        while deadlines and (deadlines[0][2][1].ready() or deadlines[0][0] <= now):
            entry = deadlines.popleft()[2]
            if not entry[1].ready():
                overdue.append(entry)
        queued = {id(entry) for entry in self.pending}
        late = {id(entry) for entry in overdue}
        self.pending = [entry for entry in self.pending if id(entry) not in late]
        for entry in overdue:
            entry[1].set_exception(WriteTimedOut(may_land=id(entry) not in queued))
        if deadlines:
            self.reaper = gevent.spawn_later(max(deadlines[0][0] - now, 0.001), self._reap)

    def _write_all(self) -> None:
        batch: list[Entry[T]] = []
        try:
            while self.pending:
                batch, self.pending = self.pending[:MAX_BATCH], self.pending[MAX_BATCH:]
                self._write(batch)
                batch = []
                while self.deadlines and self.deadlines[0][2][1].ready():  # done: its deadline is moot
                    self.deadlines.popleft()
        except BaseException:  # killed (shutdown): nobody may wait forever on a write that will not happen
            for _, done in batch + self.pending:
                if not done.ready():
                    done.set_exception(RuntimeError("the write was interrupted"))
            self.pending = []
            raise
        finally:
            self.writer = None

    def _write(self, batch: list[Entry[T]]) -> None:
        try:
            self._transaction([item for item, _ in batch])
        except Exception as error:
            if not self.item_by_item(error):
                for _, done in batch:
                    _settle(done, error)
                return
            for item, done in batch:
                try:
                    self._transaction([item])
                except Exception as exc:
                    _settle(done, exc)
                else:
                    _settle(done)
        else:
            for _, done in batch:
                _settle(done)

    def _writing_for(self) -> float:
        return 0.0 if self.writing_since is None else time.monotonic() - self.writing_since

    def _transaction(self, items: list[T]) -> None:
        self.writing_since = time.monotonic()
        try:
            self.write_many(items)
        finally:
            self.writing_since = None


def _settle(done: AsyncResult[None], error: Exception | None = None) -> None:
    """Its caller may have been told already that its time was up; the outcome then goes nowhere."""
    if done.ready():
        return
    if error is None:
        done.set(None)
    else:
        done.set_exception(error)
