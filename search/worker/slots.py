"""One lock per study that makes ``--trials N`` exact when panes race: a worker counts the study's trials and
starts its own under the lock, so no two workers take the last slot.

- **SQLite**: an exclusive ``flock`` on the database's folder. SQLite cannot leave the machine it runs on, so
  a host-local lock covers every worker; it goes with the process, so a killed worker never leaves it held.
  (The database file itself is not locked: closing another descriptor of it would drop SQLite's own locks.)
- **PostgreSQL**: a session advisory lock keyed by the study name, on a connection of the storage's engine;
  workers on other machines wait for it, and a dead worker's connection releases it.
- Any other backend: no lock, and ``exact`` is False: the worker then says the total may overshoot.

The lock is held from the count until the trial is RUNNING (``Worker._attempt`` releases it), about as long
as two storage round trips.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path

import sqlalchemy

from search.study.storage import sqlite_database


class SlotLock:
    """The study's slot lock: ``acquire`` is a no-op while held, ``release`` while not held."""

    def __init__(self, storage_url: str, engine: sqlalchemy.engine.Engine | None, study_name: str) -> None:
        self._database = sqlite_database(storage_url)
        backend = sqlalchemy.engine.make_url(storage_url).get_backend_name()
        self._engine = engine if backend == "postgresql" else None
        self.exact = self._database is not None or self._engine is not None
        digest = hashlib.sha256(f"fat2019-search slots {study_name}".encode()).digest()
        self._key = int.from_bytes(digest[:8], "big", signed=True)
        self._fd: int | None = None
        self._connection: sqlalchemy.engine.Connection | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None or self._connection is not None

    def acquire(self) -> None:
        if self.held:
            return
        if self._database is not None:
            fd = os.open(Path(self._database).parent, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
        elif self._engine is not None:
            connection = self._engine.connect()
            try:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": self._key})
                connection.commit()  # the lock is the session's; the transaction must not stay open
            except BaseException:
                connection.close()
                raise
            self._connection = connection

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the descriptor drops the flock
        if self._connection is not None:
            connection, self._connection = self._connection, None
            try:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": self._key})
                connection.commit()
            except sqlalchemy.exc.SQLAlchemyError:
                connection.invalidate()  # ending the broken session ends its lock; it never returns to the pool
            else:
                connection.close()
