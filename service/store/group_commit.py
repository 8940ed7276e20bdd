"""Group commit: writes that arrive while one transaction runs go together in the next one.

Why: each stream saves its exchange once, when it ends, and a thousand streams end within a few milliseconds of
each other. One transaction per save spent more CPU on the transaction (and, for SQLite, on handing the work to
the database thread) than on the rows. Nothing waits for a timer: a lone save is written at once, exactly as
before; saves that queue up behind it share the next commit. ``submit`` returns only once its rows are
committed (or raises what failed), so a caller that has returned knows its data is stored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

import gevent
from gevent.event import AsyncResult

T = TypeVar("T")


class GroupCommit(Generic[T]):
    """``write_many`` stores a list of items in one transaction; if that fails, each item is retried in a
    transaction of its own, so one bad item cannot lose the others, and its own error reaches its own caller."""

    def __init__(self, write_many: Callable[[list[T]], None]) -> None:
        self.write_many = write_many
        self.pending: list[tuple[T, AsyncResult[None]]] = []
        self.writer: gevent.Greenlet[[], None] | None = None

    def submit(self, item: T) -> None:
        done: AsyncResult[None] = AsyncResult()
        self.pending.append((item, done))
        if self.writer is None:
            self.writer = gevent.spawn(self._write_all)
        done.get()

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
        except Exception:
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
