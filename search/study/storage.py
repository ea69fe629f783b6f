"""Study storage that holds up under many workers: SQLite made safe for parallel panes, or any SQLAlchemy URL.

Optuna's FAQ warns that SQLite fails under parallel workers ("database is locked" at start-up, from the
heartbeat thread, or while optuna-dashboard reads). ``open_storage`` fixes that for ``sqlite:///`` URLs:
every connection runs in WAL mode with a busy timeout, write transactions start with ``BEGIN IMMEDIATE``
(so SQLite waits for the lock instead of failing a deferred read-to-write upgrade), and an operation
that still meets a locked database is retried with backoff. PostgreSQL/MySQL URLs pass through unchanged.
"""
from __future__ import annotations

import argparse
import errno
import functools
import importlib.util
import logging
import os
import random
import sqlite3
import time
import warnings
import weakref
from pathlib import Path
from typing import Any, Callable, TypeVar

import optuna
import sqlalchemy
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial

_log = logging.getLogger(__name__)

SQLITE_TIMEOUT_S = 60.0  # how long one SQLite statement waits for a lock before "database is locked"
LOCK_RETRIES = 8  # then how often a whole storage operation is retried (backoff 0.05 s doubling, jittered)
SCHEMA_RETRIES = 5  # workers racing to create the tables of a fresh database: the losers retry

_T = TypeVar("_T")


STUDIES_ENV = "FAT2019_STUDIES"


class StorageError(RuntimeError):
    """The study storage cannot be reached or used; the message names the (password-masked) URL and why."""


def studies_dir(override: str | os.PathLike | None = None) -> Path:
    """The studies folder (specs, databases, trial folders): the argument, else $FAT2019_STUDIES, else ./studies."""
    return Path(override or os.environ.get(STUDIES_ENV) or "studies").expanduser()


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    """``--study``, ``--storage`` and ``--studies-dir``, with the same meaning in every search command."""
    parser.add_argument("--study", required=True, help="study name (a spec in the studies folder: demo, fat2019)")
    parser.add_argument("--storage", help="SQLAlchemy URL, e.g. postgresql://user@host/db "
                                          "(default: sqlite:///<studies-dir>/<study>.db)")
    parser.add_argument("--studies-dir", type=studies_dir, default=studies_dir(),
                        help=f"specs, databases and trial folders (default: ${STUDIES_ENV} or ./studies)")
    parser.add_argument("--artifacts", help="where trial files (checkpoints, predictions) are kept: a folder, "
                                            "s3://BUCKET or gs://BUCKET (default: <studies-dir>/<study>/artifacts)")


def default_storage_url(study_name: str, studies_dir: str | Path) -> str:
    """``sqlite:///<studies_dir>/<study_name>.db`` as an absolute path (creates ``studies_dir``)."""
    studies_dir = Path(studies_dir).expanduser()
    studies_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(studies_dir / f'{study_name}.db').resolve()}"


def open_storage(url: str, *, heartbeat_interval: int | None = None, grace_period: int | None = None,
                 on_stale_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None
                 ) -> optuna.storages.BaseStorage:
    """Open (creating tables if needed) the study storage at a SQLAlchemy ``url``.

    With ``heartbeat_interval`` (seconds) each running trial records a heartbeat; a trial silent for
    ``grace_period`` seconds (default 2 x interval) is marked FAILED by the next worker, which then calls
    ``on_stale_trial`` (the worker's retry policy). Readers such as the dashboard pass no heartbeat.
    Creating the schema is race-free: workers started together on a fresh database retry when another
    one created a table or type first. An unreachable or unusable storage raises ``StorageError``.
    """
    given, url = url, _with_available_driver(url)
    engine_kwargs: dict[str, Any] = {}
    database = sqlite_database(url)
    if database is not None:
        try:
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"{given}: cannot create the folder of the database ({exc.strerror or exc})") from None
        engine_kwargs["creator"] = functools.partial(_connect_sqlite, database)
    else:
        engine_kwargs["pool_pre_ping"] = True  # a server restart must not kill a long-running worker

    def create() -> RDBStorage:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return _retry_locked(lambda: _LockRetryingRDBStorage(
                url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval,
                grace_period=grace_period, heartbeat_stale_trial_callback=on_stale_trial))

    try:
        storage = _retry_schema_race(create, given)
    except StorageError:
        if database is not None:
            _check_folder_writable(database)
        raise
    # Optuna's schema check nests two connections in one thread; only after it may writers take
    # the lock up front.
    _IMMEDIATE_ENGINES.add(storage.engine)
    return storage


def _retry_schema_race(create: Callable[[], _T], url: str) -> _T:
    """Run ``create``; a unique-violation / already-exists error from a concurrent creator is retried
    (the second attempt finds the tables); any other database error becomes one StorageError line."""
    for attempt in range(SCHEMA_RETRIES + 1):
        try:
            return create()
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as exc:
            text = str(exc).lower()
            if attempt == SCHEMA_RETRIES or not ("already exists" in text or "duplicate" in text or "unique" in text):
                raise StorageError(f"{_masked(url)}: cannot set up the study tables ({_first_line(exc)})") from None
            time.sleep(0.1 * (attempt + 1) * (0.5 + random.random()))
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
            raise StorageError(f"{_masked(url)}: cannot open the study storage ({_first_line(exc)})") from None
        except ModuleNotFoundError as exc:
            raise StorageError(f"{_masked(url)}: the database driver {exc.name!r} is not installed "
                               f"(for PostgreSQL: pip install -e '.[postgres]')") from None
    raise AssertionError("unreachable")


def _check_folder_writable(database: str) -> None:
    """SQLite writes its database, journal and shared-memory index beside the file; in a folder it cannot write to
    it fails with "unable to open database file". Raise the StorageError that names the folder instead."""
    folder = Path(database).parent
    probe = folder / f".write-test-{os.getpid()}"
    try:
        probe.touch()
    except OSError as exc:
        why = "read-only file system" if exc.errno == errno.EROFS else (exc.strerror or str(exc)).lower()
        raise StorageError(f"{folder}: the folder of the study database is read-only ({why}); SQLite writes the "
                           f"database and its journal there: choose a writable --studies-dir (or --storage URL)") \
            from None
    probe.unlink(missing_ok=True)


def storage_failure(exc: BaseException) -> BaseException | None:
    """The storage error in ``exc``'s chain (Optuna wraps SQLAlchemy's, and a failed write inside an
    ``except`` chains the trial's own error before it), or None when the storage is not involved."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError)):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def storage_failure_text(exc: BaseException) -> str:
    """The database's own first line for a storage error (not Optuna's generic commit message)."""
    seen: BaseException | None = exc
    while seen is not None:
        orig = getattr(seen, "orig", None)
        if orig is not None:
            return _first_line(orig)
        if isinstance(seen, sqlite3.Error):
            return _first_line(seen)
        seen = seen.__cause__ or seen.__context__
    return _first_line(exc)


class DiskReserve:
    """A small file kept beside a SQLite database, deleted when the disk fills up so that the worker can
    still record the failed trial and queue its retry (SQLite needs a little space for any write). Every
    worker of the database re-creates it at start once there is room again."""

    SIZE = 1 << 20  # a few state writes need a few pages of journal; 1 MiB is hundreds of them

    def __init__(self, database: str | os.PathLike) -> None:
        self.path = Path(f"{database}-reserve")

    def ensure(self) -> None:
        if self.path.exists() and self.path.stat().st_size == self.SIZE:
            return
        temp = self.path.with_name(f".tmp-{self.path.name}-{os.getpid()}")
        try:
            with open(temp, "wb") as out:
                out.write(bytes(self.SIZE))
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, self.path)
        except OSError:  # no room for it now: the disk is already full, and the worker will say so
            temp.unlink(missing_ok=True)

    def release(self) -> bool:
        """Free the reserve; True when it was there to free."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        return True


def _masked(url: str) -> str:
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return "<storage URL>"


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0][:200]


def create_or_load_study(storage: optuna.storages.BaseStorage, study_name: str, *, direction: str,
                         sampler: optuna.samplers.BaseSampler | None = None,
                         pruner: optuna.pruners.BasePruner | None = None,
                         on_create: Callable[[optuna.Study], None] | None = None) -> tuple[optuna.Study, bool]:
    """Create the study, or load it when another worker created it first; returns (study, created).

    Exactly one of many workers starting at the same moment gets ``created=True`` (the storage's unique
    study name decides), and only that one runs ``on_create`` (e.g. enqueue the baseline trial).
    """
    try:
        study = optuna.create_study(storage=storage, study_name=study_name, direction=direction,
                                    sampler=sampler, pruner=pruner, load_if_exists=False)
    except optuna.exceptions.DuplicatedStudyError:
        return optuna.load_study(study_name=study_name, storage=storage, sampler=sampler, pruner=pruner), False
    if on_create is not None:
        on_create(study)
    return study, True


def _with_available_driver(url: str) -> str:
    """``postgresql://`` means psycopg (v3) to SQLAlchemy 2.1; use psycopg2 when only that is installed."""
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise StorageError(f"--storage {url!r}: not a database URL (expected e.g. sqlite:///studies/x.db or "
                           f"postgresql://user@host/db)") from None
    if parsed.drivername == "postgresql" and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return parsed.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
    return url


# -- SQLite plumbing ------------------------------------------------------------------------------
class _SQLiteConnection(sqlite3.Connection):
    """A connection opened by ``open_storage``: SQLAlchemy's "begin" event opens its transactions."""


_IMMEDIATE_ENGINES: weakref.WeakSet[sqlalchemy.engine.Engine] = weakref.WeakSet()


def sqlite_database(url: str) -> str | None:
    """The database file of a ``sqlite:///`` URL; None for other backends and in-memory SQLite."""
    parsed = sqlalchemy.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return parsed.database


def _connect_sqlite(database: str) -> sqlite3.Connection:
    # isolation_level=None: the sqlite3 module must not open transactions itself; SQLAlchemy's
    # "begin" event below does, as BEGIN IMMEDIATE.
    conn = sqlite3.connect(database, timeout=SQLITE_TIMEOUT_S, isolation_level=None,
                           check_same_thread=False, factory=_SQLiteConnection)
    conn.execute(f"PRAGMA busy_timeout = {int(SQLITE_TIMEOUT_S * 1000)}")
    _retry_locked(lambda: conn.execute("PRAGMA journal_mode = WAL"))
    conn.execute("PRAGMA synchronous = NORMAL")  # durable enough with WAL, and much faster
    return conn


@sqlalchemy.event.listens_for(sqlalchemy.engine.Engine, "begin")
def _begin_immediate(conn: sqlalchemy.engine.Connection) -> None:
    if isinstance(conn.connection.dbapi_connection, _SQLiteConnection):
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.engine in _IMMEDIATE_ENGINES else "BEGIN")


def _is_locked(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (sqlite3.OperationalError, sqlalchemy.exc.OperationalError)) and \
                "locked" in str(seen).lower():
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _retry_locked(operation: Callable[[], _T]) -> _T:
    delay = 0.05
    for attempt in range(LOCK_RETRIES + 1):
        try:
            return operation()
        except Exception as exc:  # only lock errors are retried, anything else re-raises at once
            if attempt == LOCK_RETRIES or not _is_locked(exc):
                raise
            _log.debug("database is locked; retry %d in %.2f s", attempt + 1, delay)
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 2.0)
    raise AssertionError("unreachable")


def _retrying(method: Callable[..., _T]) -> Callable[..., _T]:
    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> _T:
        return _retry_locked(lambda: method(self, *args, **kwargs))
    return wrapper


# Every public storage operation commits or rolls back as a whole, so re-running one after a lock
# error is safe; the heartbeat is also retried so a busy database never silently stops it. Only public
# methods are wrapped: the stale-trial query Optuna runs before each trial goes through a private one, which is
# left to SQLite's busy timeout (60 s) alone.
RETRIED = (
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
    "get_study_id_from_name", "get_study_name_from_id", "get_study_directions", "get_study_user_attrs",
    "get_study_system_attrs", "get_trial_user_attrs", "get_trial_system_attrs", "get_all_studies",
    "create_new_trial", "set_trial_param", "get_trial_param", "set_trial_state_values",
    "set_trial_intermediate_value", "set_trial_user_attr", "set_trial_system_attr",
    "get_trial_id_from_study_id_trial_number", "get_trial", "get_all_trials", "get_best_trial",
    "record_heartbeat",
)
# BaseStorage's other public methods, and why they are not wrapped (a test checks the two lists cover it).
NOT_RETRIED = {
    "check_trial_is_updatable": "no database access",
    "get_n_trials": "BaseStorage's, over the retried get_all_trials",
    "get_trial_number_from_id": "BaseStorage's, over the retried get_trial",
    "get_trial_params": "BaseStorage's, over the retried get_trial",
    "remove_session": "closes the session; a retry would find nothing to roll back",
}


class _LockRetryingRDBStorage(RDBStorage):
    """RDBStorage whose operations are retried when SQLite reports a locked database."""

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            _retrying(RDBStorage.record_heartbeat)(self, trial_id)
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
            # An exception would end Optuna's heartbeat thread for good and get a live trial failed;
            # a missed beat is harmless while the grace period is a few intervals long.
            _log.warning("heartbeat for trial id %d not recorded: %s", trial_id, exc)


for _name in RETRIED:
    if _name != "record_heartbeat":
        setattr(_LockRetryingRDBStorage, _name, _retrying(getattr(RDBStorage, _name)))
