"""The engine, and the rule that no database call stalls the gevent hub.

psycopg 3 waits cooperatively once gevent has patched the process, so PostgreSQL calls run inline. SQLite's C
library blocks the whole worker while it waits, so under gevent a unit of work is first tried on the hub over a
connection that never waits: no busy timeout (a lock held by another process fails it at once) and no automatic
checkpoint (the one step of a WAL commit that syncs the disk). That is the common case, and it costs a fraction of
handing the work to a thread: the handover, and the two threads taking the interpreter from each other, cost more
CPU than the statements (about 0.8 ms of a short chat request's 4 ms). A unit that finds the database locked is
rolled back and run again on one native thread of the worker's own, over a connection that waits for the lock
(``busy_timeout``); that thread also checkpoints the WAL every ``CHECKPOINT_EVERY`` commits made on the hub. Each is
one kept connection: opening one per unit of work cost ~2 ms of CPU a stream. WAL mode lets other processes read
while one writes.

A database that is away is one error, ``DatabaseUnavailable`` (503, retryable), whatever the driver said: the views
answer it as such, and a save that meets it goes to the journal (``service.store.journal``). A PostgreSQL that
cannot be reached fails within ``CONNECT_TIMEOUT_SECONDS`` rather than holding a request for the kernel's minutes.
Errors never carry a statement's parameters (``hide_parameters``): they hold users' messages and replies, and
errors are logged.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from service.errors import DatabaseUnavailable

T = TypeVar("T")
H = TypeVar("H")
CONNECT_TIMEOUT_SECONDS = 3  # a URL's own ``connect_timeout`` wins
# a peer that vanished without closing (a partition, a hung host) is found within ~25 s, not the kernel's hours
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}
UPGRADE_RETRY_SECONDS = 2.0
CHECKPOINT_EVERY = 200  # commits on the hub between two WAL checkpoints on the thread (SQLite's own: ~1,000 pages)
log = logging.getLogger(__name__)


def _gevent_patched() -> bool:
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is a runtime dependency
        return False
    return bool(monkey.is_module_patched("socket"))


def is_outage(error: BaseException) -> bool:
    """The database is away or cannot take more, not this statement wrong: the connection-level errors, a
    connection lost mid-transaction, and a pool with no connection to lend."""
    if isinstance(error, OperationalError | InterfaceError | PoolTimeout):
        return True
    return isinstance(error, DBAPIError) and error.connection_invalidated


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_hub_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """The hub's connection never waits: a lock fails at once (``SQLITE_BUSY``) and commits never checkpoint."""
    _sqlite_pragmas(dbapi_connection, _record)
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=0")
    cursor.execute("PRAGMA wal_autocheckpoint=0")
    cursor.close()


def _locked(error: DBAPIError) -> bool:
    """SQLite's ``SQLITE_BUSY`` (any of its extended codes): another connection holds the lock."""
    code = getattr(error.orig, "sqlite_errorcode", None)
    return code is not None and code & 0xFF == sqlite3.SQLITE_BUSY


class Database:
    """Owns the engine and runs units of work where they cannot block other streams."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            path = make_url(url).database or ""
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            pooling = {} if path in ("", ":memory:") else {"pool_size": 1, "max_overflow": 0}
            self.engine: Engine = create_engine(
                url, connect_args={"check_same_thread": False}, hide_parameters=True, **pooling
            )
            event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            asked = make_url(url).query
            connect = {key: value for key, value in KEEPALIVES.items() if key not in asked}
            if "connect_timeout" not in asked:
                connect["connect_timeout"] = CONNECT_TIMEOUT_SECONDS
            self.engine = create_engine(
                url, pool_size=10, max_overflow=40, pool_pre_ping=True, connect_args=connect, hide_parameters=True
            )
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._thread: Any = None
        self._hub_engine: Engine | None = None  # SQLite under gevent: the connection that never waits
        self._hub_sessions: sessionmaker[Session] | None = None
        self._hub_commits = 0
        self.cooperative = _gevent_patched()  # running under gevent's hub (gunicorn's gevent worker)
        if self.is_sqlite and self.cooperative:
            from gevent.threadpool import ThreadPool

            self._thread = ThreadPool(1)
            if path and path != ":memory:":  # a second connection to an in-memory database is another database
                self._hub_engine = create_engine(
                    url, connect_args={"check_same_thread": False}, hide_parameters=True, pool_size=1, max_overflow=0
                )
                event.listen(self._hub_engine, "connect", _sqlite_hub_pragmas)
                self._hub_sessions = sessionmaker(self._hub_engine, expire_on_commit=False)
        self.units: dict[object, float] = {}  # the units of work running now, and when each began running

    def create_tables(self) -> None:
        """Bring the schema to the newest migration (``service.store.migrate``); many workers may call this at
        once, and they take turns. A database that is away when a worker starts does not stop the worker (a
        restart during an outage would take the host down): under gevent the upgrade is retried in the background
        until the database answers, and meanwhile saves go to the journal."""
        try:
            self._upgrade()
        except DBAPIError as error:
            if not (self.cooperative and is_outage(error)):
                raise
            why = (str(error.orig or error).strip().splitlines() or ["?"])[0]
            log.warning("database unavailable at start (%s); upgrading its schema once it answers", why)
            import gevent

            gevent.spawn(self._upgrade_when_back)

    def _upgrade(self) -> None:
        from service.store.migrate import upgrade

        self.run(lambda: upgrade(self.engine))

    def _upgrade_when_back(self) -> None:
        import gevent

        while True:
            gevent.sleep(UPGRADE_RETRY_SECONDS)
            try:
                self._upgrade()
            except DBAPIError as error:
                if not is_outage(error):
                    log.exception("could not upgrade the database schema")
                    return
                continue
            log.warning("database answers again: schema upgraded")
            return

    def run(self, work: Callable[[], T]) -> T:
        """Run ``work`` (blocking DB code) without stalling the hub."""
        if self._thread is not None:
            return self._thread.apply(work)  # type: ignore[no-any-return]
        return work()

    def transaction(self, work: Callable[[Session], T]) -> T:
        """Run ``work`` in one session and one transaction, committed on success."""
        hub = self._hub_sessions.begin if self._hub_sessions is not None else None
        return self._unit(hub, self.sessions.begin, work)

    def statements(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` on one Core connection in one transaction, committed on success: for the per-stream
        write, where an ORM session's bookkeeping cost more CPU than the statements."""
        hub = self._hub_engine.begin if self._hub_engine is not None else None
        return self._unit(hub, self.engine.begin, work)

    def _unit(
        self,
        on_hub: Callable[[], AbstractContextManager[H]] | None,
        on_thread: Callable[[], AbstractContextManager[H]],
        work: Callable[[H], T],
    ) -> T:
        """``work`` on the hub's connection when there is one and SQLite is not locked; else (rolled back, if it
        was tried) where it may wait: the database thread for SQLite, inline for PostgreSQL."""
        if on_hub is not None:
            try:
                result = self._counted(on_hub, work, locked_is_outage=False)
            except OperationalError as error:
                if not _locked(error):
                    raise
            else:
                self._hub_commits += 1
                if self._hub_commits % CHECKPOINT_EVERY == 0:
                    self._thread.spawn(self._checkpoint)
                return result
        return self.run(lambda: self._counted(on_thread, work))

    def _checkpoint(self) -> None:
        """Copy the WAL's pages into the database file and start the WAL over (on the thread: this is what syncs
        the disk). RESTART, not PASSIVE: a passive checkpoint never catches up with a hub that keeps writing, and
        the WAL would grow for ever. It holds the write lock while it copies, so the hub's writes meanwhile find the
        database locked and queue on this thread behind it: a few milliseconds every ``CHECKPOINT_EVERY``
        commits."""
        try:
            with self.engine.connect() as connection:
                connection.exec_driver_sql("PRAGMA wal_checkpoint(RESTART)")
        except DBAPIError as error:
            log.warning("could not checkpoint the SQLite WAL: %s", (str(error.orig or error).splitlines() or ["?"])[0])

    def _counted(
        self, begin: Callable[[], AbstractContextManager[H]], work: Callable[[H], T], locked_is_outage: bool = True
    ) -> T:
        """One unit of work, counted in ``units`` while it holds its session or connection (for SQLite on its
        thread, the time is the database's, not a wait for the thread or for the hub). ``locked_is_outage``
        False: SQLite's lock error is raised as it is, for ``_on_hub`` to retry on the thread."""
        unit = object()
        self.units[unit] = time.monotonic()
        try:
            with begin() as handle:
                return work(handle)
        except (DBAPIError, PoolTimeout) as error:
            if not locked_is_outage and isinstance(error, OperationalError) and _locked(error):
                raise
            if is_outage(error):
                raise DatabaseUnavailable() from error
            raise
        finally:
            del self.units[unit]

    @property
    def active_units(self) -> int:
        """Sessions open right now: the leak test's gauge."""
        return len(self.units)

    def busy_for(self) -> float:
        """How long the oldest unit of work running now has been at it (0 when none is): a database that does
        not answer shows here, and a worker merely too busy to collect answers does not."""
        started = min(self.units.values(), default=None)
        return 0.0 if started is None else time.monotonic() - started

    def ping(self) -> None:
        from sqlalchemy import text

        self.transaction(lambda session: session.execute(text("SELECT 1")))

    def dispose(self) -> None:
        self.engine.dispose()
        if self._hub_engine is not None:
            self._hub_engine.dispose()
