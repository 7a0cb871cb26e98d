"""Persistent nuanced-reward windows, one per training run, in SQLite, and the lock on their directory.

Every /score request of a run is applied under that run's lock: load (from memory, else SQLite) -> score
in request order -> write the new window and the request's answer in one transaction. So concurrent
requests of one run never lose an update, a restart continues the window where it stopped, and a request
retried with the same `request_id` gets its first answer back instead of counting its predictions twice.

Bounds: at most `max_cached_runs` windows stay in memory (least recently used ones are reloaded from
SQLite when needed) and each run keeps the answers of its last `answers_per_run` requests (a retry only
ever repeats a recent one). A run is reset (window and answers dropped) when a fresh run of that name
starts.

Failures: the state directory is locked (flock) for the life of the process, so a second evaluator on it
fails at start instead of scoring against a window the first one is changing. A COMMIT that fails is
rolled back, so the connection stays usable. A database SQLite cannot read (corrupt, not a database)
makes every state operation raise `StateUnavailable` with the file and the fix, and nothing else: the
hard reward and /evaluate never touch the store.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from chexrl.core.rewards import PredictionWindow

_SCHEMA = """
CREATE TABLE IF NOT EXISTS windows (run_id TEXT PRIMARY KEY, items TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS answers (
    run_id TEXT NOT NULL, request_id TEXT NOT NULL, answer TEXT NOT NULL, PRIMARY KEY (run_id, request_id)
);
"""
DB_NAME = "windows.sqlite3"
LOCK_NAME = "evaluator.lock"


class StateDirInUse(RuntimeError):
    """Another process holds the state directory's lock."""


class StateUnavailable(RuntimeError):
    """The state database cannot be used; the message names the file and what to do."""


class _RunLock:
    """A per-run lock that weak references can point to, so idle runs' locks are freed."""

    __slots__ = ("__weakref__", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()


def lock_state_dir(path: Path) -> int:
    """Take the directory's exclusive lock (released by the OS when the process ends, even on SIGKILL)."""
    fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StateDirInUse(
            f"evaluator state directory {path} is in use by another evaluator (pid {holder}); two "
            "processes on one directory would score against diverging copies of each run's window. Stop "
            "the other one or give this one its own --state-dir."
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


class WindowStore:
    def __init__(
        self,
        state_dir: str | Path,
        window_size: int,
        *,
        max_cached_runs: int,
        answers_per_run: int,
    ) -> None:
        path = Path(state_dir)
        path.mkdir(parents=True, exist_ok=True)
        self._lock_fd: int | None = lock_state_dir(path)
        self.path = path / DB_NAME
        self.window_size = window_size
        self.max_cached_runs = max_cached_runs
        self.answers_per_run = answers_per_run
        self._db: sqlite3.Connection | None = None
        self.broken: str | None = None
        self._db_lock = threading.Lock()
        self._cache: OrderedDict[str, PredictionWindow] = OrderedDict()
        self._cache_guard = threading.Lock()
        self._locks: weakref.WeakValueDictionary[str, _RunLock] = weakref.WeakValueDictionary()
        self._locks_guard = threading.Lock()
        try:
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                (check,) = db.execute("PRAGMA quick_check").fetchone()
                if check != "ok":
                    raise sqlite3.DatabaseError(f"quick_check: {check}")
                db.executescript(_SCHEMA)
            except BaseException:
                db.close()
                raise
            self._db = db
        except sqlite3.DatabaseError as exc:
            self._mark_broken(exc)

    # --- failures -----------------------------------------------------------------------------------
    def _mark_broken(self, exc: BaseException) -> None:
        self.broken = (
            f"the evaluator's state database {self.path} is unusable ({type(exc).__name__}: {exc}). "
            "Nuanced rewards and run windows are unavailable; the hard reward and /evaluate still work. "
            "Stop the evaluator, move the file away (with its -wal and -shm files) or restore it from a "
            "backup, and start it again; resumed runs restore their windows from their checkpoints."
        )

    def _unavailable(self, exc: sqlite3.DatabaseError) -> StateUnavailable:
        # SQLite reports a corrupt file (SQLITE_CORRUPT, SQLITE_NOTADB) as the base class itself: then every
        # later state operation fails the same way. Its subclasses (locked, disk full, I/O) may pass.
        if type(exc) is sqlite3.DatabaseError:
            self._mark_broken(exc)
            return StateUnavailable(self.broken)
        return StateUnavailable(f"the evaluator's state database {self.path} failed: {exc}")

    def _decode(self, run_id: str, what: str, text: str, decode: Callable):
        try:
            return decode(json.loads(text))
        except (ValueError, TypeError) as exc:
            raise StateUnavailable(
                f"the stored {what} of run {run_id!r} in {self.path} is unreadable ({exc}); "
                f"DELETE /runs/{run_id}/window resets the run"
            ) from exc

    def _check(self) -> sqlite3.Connection:
        if self.broken is not None or self._db is None:
            raise StateUnavailable(self.broken or f"the evaluator's state database {self.path} is closed")
        return self._db

    @contextmanager
    def _sql(self):
        """The connection under the database lock; SQLite errors become StateUnavailable."""
        with self._db_lock:
            db = self._check()
            try:
                yield db
            except sqlite3.DatabaseError as exc:
                raise self._unavailable(exc) from exc

    @contextmanager
    def _transaction(self):
        with self._sql() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                # Also after a failed COMMIT: left open, the transaction would make every later BEGIN
                # fail ("cannot start a transaction within a transaction").
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.DatabaseError):  # the first error is the one to report
                        db.execute("ROLLBACK")
                raise

    # --- per-run state ------------------------------------------------------------------------------
    def _lock(self, run_id: str) -> threading.Lock:
        with self._locks_guard:
            entry = self._locks.get(run_id)
            if entry is None:
                entry = self._locks[run_id] = _RunLock()
            return entry

    @contextmanager
    def _run(self, run_id: str):
        entry = self._lock(run_id)  # this reference keeps the run's lock alive while it is held
        with entry.lock:
            yield

    def _remember(self, run_id: str, window: PredictionWindow) -> None:
        # An evicted run is safe: its last update was committed before its lock was released, and the
        # next request of that run (under the same lock) reloads it from SQLite.
        with self._cache_guard:
            self._cache[run_id] = window
            self._cache.move_to_end(run_id)
            while len(self._cache) > self.max_cached_runs:
                self._cache.popitem(last=False)

    def _forget(self, run_id: str) -> None:
        with self._cache_guard:
            self._cache.pop(run_id, None)

    def _load(self, run_id: str) -> PredictionWindow:
        with self._cache_guard:
            window = self._cache.get(run_id)
        if window is None:
            with self._sql() as db:
                row = db.execute("SELECT items FROM windows WHERE run_id = ?", (run_id,)).fetchone()
            window = (
                self._decode(run_id, "window", row[0], self._window_from)
                if row
                else PredictionWindow.from_list(self.window_size, [])
            )
        self._remember(run_id, window)
        return window

    def _window_from(self, items) -> PredictionWindow:
        if not isinstance(items, list) or not all(
            isinstance(i, list) and all(isinstance(label, str) for label in i) for i in items
        ):
            raise TypeError(f"expected a list of label lists, got {type(items).__name__}")
        return PredictionWindow.from_list(self.window_size, items)

    @property
    def cached_runs(self) -> int:
        return len(self._cache)

    def apply(self, run_id: str, request_id: str | None, score: Callable[[PredictionWindow], dict]) -> dict:
        """Run `score` on the run's window (it may push predictions) and persist the result atomically."""
        self._check()
        with self._run(run_id):
            if request_id is not None:
                with self._sql() as db:
                    row = db.execute(
                        "SELECT answer FROM answers WHERE run_id = ? AND request_id = ?", (run_id, request_id)
                    ).fetchone()
                if row:
                    return self._decode(run_id, f"answer to request {request_id!r}", row[0], dict)
            window = self._load(run_id)
            before = window.to_list()
            try:
                answer = score(window)
                with self._transaction() as db:
                    db.execute(
                        "INSERT OR REPLACE INTO windows (run_id, items) VALUES (?, ?)",
                        (run_id, json.dumps(window.to_list())),
                    )
                    if request_id is not None:
                        db.execute(
                            "INSERT INTO answers (run_id, request_id, answer) VALUES (?, ?, ?)",
                            (run_id, request_id, json.dumps(answer)),
                        )
                        # Keep the run's most recent answers only (rowids grow with insertion).
                        db.execute(
                            "DELETE FROM answers WHERE run_id = ? AND rowid NOT IN (SELECT rowid FROM answers "
                            "WHERE run_id = ? ORDER BY rowid DESC LIMIT ?)",
                            (run_id, run_id, self.answers_per_run),
                        )
            except BaseException:
                self._remember(run_id, PredictionWindow.from_list(self.window_size, before))
                raise
            return answer

    def get(self, run_id: str) -> list[list[str]]:
        self._check()
        with self._run(run_id):
            return self._load(run_id).to_list()

    def put(self, run_id: str, items: list[list[str]]) -> None:
        """Replace a run's window (a resumed run restores the one its checkpoint saw)."""
        self._check()
        with self._run(run_id):
            window = PredictionWindow.from_list(self.window_size, items)
            with self._transaction() as db:
                db.execute(
                    "INSERT OR REPLACE INTO windows (run_id, items) VALUES (?, ?)",
                    (run_id, json.dumps(window.to_list())),
                )
            self._remember(run_id, window)

    def reset(self, run_id: str) -> None:
        """Forget a run: its window and its stored answers (a fresh run of that name starts clean)."""
        self._check()
        with self._run(run_id):
            with self._transaction() as db:
                db.execute("DELETE FROM windows WHERE run_id = ?", (run_id,))
                db.execute("DELETE FROM answers WHERE run_id = ?", (run_id,))
            self._forget(run_id)

    def close(self) -> None:
        with self._db_lock:
            if self._db is not None:
                self._db.close()
                self._db = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the directory lock
            self._lock_fd = None
