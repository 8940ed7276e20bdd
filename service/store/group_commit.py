"""Group commit: writes that arrive while one transaction runs go together in the next one.

Why: each stream saves its exchange once, when it ends, and a thousand streams end within a few milliseconds of
each other. One transaction per save spent more CPU on the transaction (and, for SQLite, on handing the work to
the database thread) than on the rows. Nothing waits for a timer: a lone save is written at once, exactly as
before; saves that queue up behind it share the next commit. ``submit`` returns only once its rows are
committed (or raises what failed), so a caller that has returned knows its data is stored; given a timeout, it
raises ``WriteTimedOut`` instead when that comes first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

import gevent
from gevent.event import AsyncResult

T = TypeVar("T")


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
        self, write_many: Callable[[list[T]], None], item_by_item: Callable[[Exception], bool] = _always
    ) -> None:
        self.write_many = write_many
        self.item_by_item = item_by_item
        self.pending: list[tuple[T, AsyncResult[None]]] = []
        self.writer: gevent.Greenlet[[], None] | None = None

    def submit(self, item: T, timeout: float | None = None) -> None:
        done: AsyncResult[None] = AsyncResult()
        entry = (item, done)
        self.pending.append(entry)
        if self.writer is None:
            self.writer = gevent.spawn(self._write_all)
        if timeout is not None:
            done.wait(timeout)  # an outer timeout or a kill goes through: the item is then written all the same
            if not done.ready():
                raise WriteTimedOut(may_land=not self._withdraw(entry))
        done.get()

    def _withdraw(self, entry: tuple[T, AsyncResult[None]]) -> bool:
        """Take back an item no transaction has taken yet; False when one already holds it."""
        for index, queued in enumerate(self.pending):
            if queued is entry:
                del self.pending[index]
                return True
        return False

    def _write_all(self) -> None:
        batch: list[tuple[T, AsyncResult[None]]] = []
        try:
            while self.pending:
                batch, self.pending = self.pending, []
                self._write(batch)
                batch = []
        except BaseException:  # killed (shutdown): nobody may wait forever on a write that will not happen
            for _, done in batch + self.pending:
                if not done.ready():
                    done.set_exception(RuntimeError("the write was interrupted"))
            self.pending = []
            raise
        finally:
            self.writer = None

    def _write(self, batch: list[tuple[T, AsyncResult[None]]]) -> None:
        try:
            self.write_many([item for item, _ in batch])
        except Exception as error:
            if not self.item_by_item(error):
                for _, done in batch:
                    done.set_exception(error)
                return
            for item, done in batch:
                try:
                    self.write_many([item])
                except Exception as exc:
                    done.set_exception(exc)
                else:
                    done.set(None)
        else:
            for _, done in batch:
                done.set(None)
