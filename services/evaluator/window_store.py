"""Persistent nuanced-reward windows, one per training run, in SQLite, and the lock on their directory.

Every /score request of a run is applied under that run's lock: load (from memory, else SQLite) -> score
in request order -> write the new window and the request's answer in one transaction. So concurrent
requests of one run never lose an update, a restart continues the window where it stopped, and a request
retried with the same `request_id` gets its first answer back instead of counting its predictions twice.

Bounds: at most `max_cached_runs` windows stay in memory (least recently used ones are reloaded from
SQLite when needed) and each run keeps the answers of its last `answers_per_run` requests (a retry only
ever repeats a recent one), stored as compressed JSON. On disk, after every write: a run idle for
`run_idle_expiry_s` is dropped, and then the least recently used runs until at most `max_runs` remain and
their stored bytes fit `max_state_bytes`. A run is reset (window and answers dropped) when a fresh run of
that name starts.

Files: the state directory is 0700 and every file in it 0600; the lock file is opened without following a
symlink (a symlink there is refused), and so is the database file.

Failures: the state directory is locked (flock) for the life of the process, so a second evaluator on it
fails at start instead of scoring against a window the first one is changing. A COMMIT that fails is
rolled back, so the connection stays usable. A database SQLite cannot read (corrupt, not a database)
makes every state operation raise `StateUnavailable` with the file and the fix, and nothing else: the
hard reward and /evaluate never touch the store. A full disk: a write is refused with `StateFull` (when
the filesystem's free space is under `reserve_bytes`, or SQLite reports it full), and a reset still
works, because the directory holds a reserve file of that size that is given up to let a DELETE through.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import sqlite3
import stat
import threading
import time
import weakref
import zlib
from collections import OrderedDict
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import orjson

from chexrl.core.rewards import PredictionWindow

_SCHEMA = """
CREATE TABLE IF NOT EXISTS windows (
    run_id TEXT PRIMARY KEY, items TEXT NOT NULL, last_used REAL NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS answers (
    run_id TEXT NOT NULL, request_id TEXT NOT NULL, answer BLOB NOT NULL, PRIMARY KEY (run_id, request_id)
);
"""
# A run's stored bytes: its window and its answers (compressed BLOBs, or JSON text from older versions).
_RUN_BYTES = (
    "UPDATE windows SET bytes = length(CAST(items AS BLOB)) + (SELECT COALESCE(SUM(length(CAST(answer AS "
    "BLOB))), 0) FROM answers WHERE answers.run_id = windows.run_id) WHERE run_id = ?"
)
DB_NAME = "windows.sqlite3"
LOCK_NAME = "evaluator.lock"
RESERVE_NAME = "reserve.bin"
# The write-ahead log is copied into the database every 256 pages (1 MiB; SQLite's default is 4 MiB) and
# its file cut back to 1 MiB after that: the log is space a full disk cannot give back.
_WAL_CHECKPOINT_PAGES = 256
_WAL_LIMIT_BYTES = 1024 * 1024


class StateDirInUse(RuntimeError):
    """Another process holds the state directory's lock."""


class StateDirUnsafe(RuntimeError):
    """The state directory's lock or database is a symlink or not a regular file."""


class StateUnavailable(RuntimeError):
    """The state database cannot be used; the message names the file and what to do."""


class StateFull(RuntimeError):
    """A write refused for lack of space on the state's filesystem; the message says what is free."""


class _RunLock:
    """A per-run lock that weak references can point to, so idle runs' locks are freed."""

    __slots__ = ("__weakref__", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()


def open_private_file(path: Path, create: bool = True) -> int:
    """A regular file opened read-write without following a symlink, mode 0600 (created if `create`)."""
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StateDirUnsafe(
                f"{path} is a symlink: refusing to open it (it could point anywhere)"
            ) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise StateDirUnsafe(f"{path} is not a regular file: refusing to use it")
    os.fchmod(fd, 0o600)
    return fd


def private_state_dir(path: Path) -> None:
    """Create the directory 0700 (parents as the umask says), or narrow an existing one of ours to 0700."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_uid == os.getuid():
        path.chmod(0o700)


def lock_state_dir(path: Path) -> int:
    """Take the directory's exclusive lock (released by the OS when the process ends, even on SIGKILL)."""
    fd = open_private_file(path / LOCK_NAME)
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


def _private_database_files(path: Path) -> None:
    """The database 0600 before SQLite opens it (its -wal and -shm files take the database's mode)."""
    os.close(open_private_file(path))
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if os.path.lexists(side):
            os.close(open_private_file(side, create=False))


def pack_answer(answer: dict) -> bytes:
    """A stored answer: compact JSON, compressed (a 1,024-item answer repeats its keys 1,024 times)."""
    return zlib.compress(orjson.dumps(answer), 6)


def unpack_stored(value: bytes | str):
    """A stored value: compressed JSON (answers), or JSON text (windows, and answers of older versions)."""
    return json.loads(zlib.decompress(value) if isinstance(value, bytes) else value)


class Reserve:
    """A file of `size` bytes held on the state's filesystem and given up when the disk is full, so that
    deleting a run (which appends to SQLite's write-ahead log) still has room."""

    def __init__(self, path: Path, size: int) -> None:
        self.path, self.size = path, size

    @property
    def present(self) -> bool:
        return self.size == 0 or (self.path.is_file() and self.path.stat().st_size >= self.size)

    def ensure(self) -> bool:
        """Allocate the file (real blocks, not a sparse file); False when the space is not there."""
        if self.present:
            return True
        fd = open_private_file(self.path)
        try:
            os.posix_fallocate(fd, 0, self.size)
            os.fsync(fd)
            return True
        except OSError:
            os.ftruncate(fd, 0)  # a partial reserve would only take space
            return False
        finally:
            os.close(fd)

    def release(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _totals(db: sqlite3.Connection) -> tuple[int, int, int]:
    """(runs, their stored bytes, bytes of the database's free pages)."""
    runs, used = db.execute("SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM windows").fetchone()
    (pages,) = db.execute("PRAGMA freelist_count").fetchone()
    (page_size,) = db.execute("PRAGMA page_size").fetchone()
    return runs, used, pages * page_size


def disk_free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the filesystem holding `path`."""
    info = os.statvfs(path)
    return info.f_bavail * info.f_frsize


class WindowStore:
    def __init__(
        self,
        state_dir: str | Path,
        window_size: int,
        *,
        max_cached_runs: int,
        answers_per_run: int,
        max_runs: int,
        run_idle_expiry_s: float,
        max_state_bytes: int,
        reserve_bytes: int,
    ) -> None:
        self.dir = Path(state_dir)
        private_state_dir(self.dir)
        self._lock_fd: int | None = lock_state_dir(self.dir)
        self.path = self.dir / DB_NAME
        self.window_size = window_size
        self.max_cached_runs = max_cached_runs
        self.answers_per_run = answers_per_run
        self.max_runs = max_runs
        self.run_idle_expiry_s = run_idle_expiry_s
        self.max_state_bytes = max_state_bytes
        self.reserve = Reserve(self.dir / RESERVE_NAME, reserve_bytes)
        self.reserve.ensure()  # on a full disk the evaluator still starts: /healthz then says so
        self._db: sqlite3.Connection | None = None
        self.broken: str | None = None
        self.refused: str | None = None  # why the last write was refused for space; None once one succeeds
        # what the last write left: runs, their stored bytes, and the bytes of SQLite's free pages
        self.runs, self.state_bytes, self.free_page_bytes = 0, 0, 0
        self._db_lock = threading.Lock()
        self._cache: OrderedDict[str, PredictionWindow] = OrderedDict()
        self._cache_guard = threading.Lock()
        self._locks: weakref.WeakValueDictionary[str, _RunLock] = weakref.WeakValueDictionary()
        self._locks_guard = threading.Lock()
        try:
            self._db = self._open_database()
        except sqlite3.DatabaseError as exc:
            self._mark_broken(exc)

    @classmethod
    def from_settings(cls, settings) -> WindowStore:
        """The store an `EvaluatorSettings` describes."""
        return cls(
            settings.state_dir,
            settings.reward.nuanced.window_size,
            max_cached_runs=settings.max_cached_runs,
            answers_per_run=settings.answers_per_run,
            max_runs=settings.max_runs,
            run_idle_expiry_s=settings.run_idle_expiry_s,
            max_state_bytes=settings.max_state_bytes,
            reserve_bytes=settings.reserve_bytes,
        )

    def _open_database(self) -> sqlite3.Connection:
        _private_database_files(self.path)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT_BYTES}")
            db.execute(f"PRAGMA wal_autocheckpoint={_WAL_CHECKPOINT_PAGES}")
            (check,) = db.execute("PRAGMA quick_check").fetchone()
            if check != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {check}")
            db.executescript(_SCHEMA)
            self._upgrade(db)
            db.execute("CREATE INDEX IF NOT EXISTS windows_by_use ON windows (last_used)")
            self.runs, self.state_bytes, self.free_page_bytes = _totals(db)
        except BaseException:
            db.close()
            raise
        return db

    @staticmethod
    def _upgrade(db: sqlite3.Connection) -> None:
        """A database of an older version: add the columns the bounds need, its runs counted as used now."""
        columns = {row[1] for row in db.execute("PRAGMA table_info(windows)")}
        if "last_used" in columns:
            return
        db.execute("ALTER TABLE windows ADD COLUMN last_used REAL NOT NULL DEFAULT 0")
        db.execute("ALTER TABLE windows ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0")
        db.execute("UPDATE windows SET last_used = ?", (time.time(),))
        db.executemany(_RUN_BYTES, db.execute("SELECT run_id FROM windows").fetchall())

    # --- failures -----------------------------------------------------------------------------------
    def _mark_broken(self, exc: BaseException) -> None:
        self.broken = (
            f"the evaluator's state database {self.path} is unusable ({type(exc).__name__}: {exc}). "
            "Nuanced rewards and run windows are unavailable; the hard reward and /evaluate still work. "
            "Stop the evaluator, move the file away (with its -wal and -shm files) or restore it from a "
            "backup, and start it again; resumed runs restore their windows from their checkpoints."
        )

    def _unavailable(self, exc: sqlite3.DatabaseError) -> RuntimeError:
        # SQLite reports a corrupt file (SQLITE_CORRUPT, SQLITE_NOTADB) as the base class itself: then every
        # later state operation fails the same way. Its subclasses (locked, disk full, I/O) may pass.
        if type(exc) is sqlite3.DatabaseError:
            self._mark_broken(exc)
            return StateUnavailable(self.broken)
        if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            return self._full(f"SQLite: {exc}; {disk_free_bytes(self.dir)} bytes free on its filesystem")
        return StateUnavailable(f"the evaluator's state database {self.path} failed: {exc}")

    def _full(self, why: str) -> StateFull:
        self.refused = (
            f"no space for the run state in {self.dir} ({why}; the reserve is {self.reserve.size} bytes). "
            "DELETE /runs/<run_id>/window frees a run's space."
        )
        return StateFull(self.refused)

    def room_bytes(self) -> int:
        """Space a write may use: the filesystem's free bytes and the database's free pages (the pages of
        deleted runs, which SQLite reuses before it grows the file) as the last write left them. Takes
        no lock, so /healthz never waits on a write."""
        return disk_free_bytes(self.dir) + self.free_page_bytes

    def _check_room(self) -> None:
        """Refuse a write while the room left is under the reserve (a delete may still pass)."""
        if (room := self.room_bytes()) < self.reserve.size:
            raise self._full(f"{room} bytes of room, under the reserve")

    def _decode(self, run_id: str, what: str, value, decode: Callable):
        try:
            return decode(unpack_stored(value))
        except (ValueError, TypeError, zlib.error) as exc:
            raise StateUnavailable(
                f"the stored {what} of run {run_id!r} in {self.path} is unreadable ({exc}); "
                f"DELETE /runs/{run_id}/window resets the run"
            ) from exc

    def _check(self) -> sqlite3.Connection:
        if self.broken is not None or self._db is None:
            raise StateUnavailable(self.broken or f"the evaluator's state database {self.path} is closed")
        return self._db

    def health(self) -> tuple[str, str | None]:
        """(state, reason code): "ok"; "full" (writes are refused or about to be); "unavailable"."""
        if self.broken is not None:
            return "unavailable", "database_unreadable"
        if self._db is None:
            return "unavailable", "database_closed"
        if self.refused is not None:
            return "full", "write_refused_no_space"
        if self.room_bytes() < self.reserve.size:
            return "full", "room_below_reserve"
        if not self.reserve.present:
            return "full", "reserve_missing"
        return "ok", None

    @contextmanager
    def _sql(self):
        """The connection under the database lock; SQLite errors become StateUnavailable or StateFull."""
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

    # --- bounds -------------------------------------------------------------------------------------
    def _written(self, db: sqlite3.Connection, run_id: str) -> tuple[list[str], tuple[int, int, int]]:
        """After a write of `run_id` (in its transaction): count its bytes, then drop expired runs and the
        least recently used ones until the bounds hold. Returns the dropped runs and the totals left."""
        db.execute("UPDATE windows SET last_used = ? WHERE run_id = ?", (time.time(), run_id))
        db.execute(_RUN_BYTES, (run_id,))
        expired = db.execute(
            "SELECT run_id FROM windows WHERE last_used < ? AND run_id != ?",
            (time.time() - self.run_idle_expiry_s, run_id),
        ).fetchall()
        dropped = [r for (r,) in expired]
        self._delete_runs(db, dropped)
        runs, used = db.execute("SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM windows").fetchone()
        if runs > self.max_runs or used > self.max_state_bytes:
            oldest = db.execute(
                "SELECT run_id, bytes FROM windows WHERE run_id != ? ORDER BY last_used", (run_id,)
            )
            victims = []
            for victim, size in oldest:
                if runs <= self.max_runs and used <= self.max_state_bytes:
                    break
                victims.append(victim)
                runs, used = runs - 1, used - size
            oldest.close()
            self._delete_runs(db, victims)
            dropped += victims
        return dropped, _totals(db)

    @staticmethod
    def _delete_runs(db: sqlite3.Connection, run_ids: list[str]) -> None:
        rows = [(r,) for r in run_ids]
        db.executemany("DELETE FROM answers WHERE run_id = ?", rows)
        db.executemany("DELETE FROM windows WHERE run_id = ?", rows)

    def _committed(self, dropped: list[str], totals: tuple[int, int, int]) -> None:
        """After a write's COMMIT: the totals it left, and dropped runs out of the memory cache."""
        self.runs, self.state_bytes, self.free_page_bytes = totals
        self.refused = None
        with self._cache_guard:
            for run_id in dropped:
                self._cache.pop(run_id, None)

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

    def _stored_answer(self, run_id: str, request_id: str) -> dict | None:
        with self._sql() as db:
            row = db.execute(
                "SELECT answer FROM answers WHERE run_id = ? AND request_id = ?", (run_id, request_id)
            ).fetchone()
        return self._decode(run_id, f"answer to request {request_id!r}", row[0], dict) if row else None

    def apply(self, run_id: str, request_id: str | None, score: Callable[[PredictionWindow], dict]) -> dict:
        """Run `score` on the run's window (it may push predictions) and persist the result atomically."""
        self._check()
        with self._run(run_id):
            if request_id is not None and (stored := self._stored_answer(run_id, request_id)) is not None:
                return stored
            self._check_room()
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
                        self._store_answer(db, run_id, request_id, answer)
                    dropped, totals = self._written(db, run_id)
            except BaseException:
                self._remember(run_id, PredictionWindow.from_list(self.window_size, before))
                raise
            self._committed(dropped, totals)
            return answer

    def _store_answer(self, db: sqlite3.Connection, run_id: str, request_id: str, answer: dict) -> None:
        db.execute(
            "INSERT INTO answers (run_id, request_id, answer) VALUES (?, ?, ?)",
            (run_id, request_id, pack_answer(answer)),
        )
        # Keep the run's most recent answers only (rowids grow with insertion).
        db.execute(
            "DELETE FROM answers WHERE run_id = ? AND rowid NOT IN (SELECT rowid FROM answers "
            "WHERE run_id = ? ORDER BY rowid DESC LIMIT ?)",
            (run_id, run_id, self.answers_per_run),
        )

    def get(self, run_id: str) -> list[list[str]]:
        self._check()
        with self._run(run_id):
            return self._load(run_id).to_list()

    def put(self, run_id: str, items: list[list[str]]) -> None:
        """Replace a run's window (a resumed run restores the one its checkpoint saw)."""
        self._check()
        with self._run(run_id):
            self._check_room()
            window = PredictionWindow.from_list(self.window_size, items)
            with self._transaction() as db:
                db.execute(
                    "INSERT OR REPLACE INTO windows (run_id, items) VALUES (?, ?)",
                    (run_id, json.dumps(window.to_list())),
                )
                dropped, totals = self._written(db, run_id)
            self._committed(dropped, totals)
            self._remember(run_id, window)

    def reset(self, run_id: str) -> None:
        """Forget a run: its window and its stored answers (a fresh run of that name starts clean). On a
        full disk the reserve file is given up to make room for the delete, and taken again after it."""
        self._check()
        with self._run(run_id):
            try:
                self._delete(run_id)
            except StateFull:
                self.reserve.release()
                self._delete(run_id)
            self._give_back_space()
            self._forget(run_id)

    def _give_back_space(self) -> None:
        """After a delete: the write-ahead log's pages back to the filesystem (a checkpoint that empties
        it), the reserve taken again, and a refusal for space lifted if there is room once more."""
        with contextlib.suppress(StateFull), self._sql() as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        if self.reserve.ensure() and self.room_bytes() >= self.reserve.size:
            self.refused = None

    def _delete(self, run_id: str) -> None:
        with self._transaction() as db:
            self._delete_runs(db, [run_id])
            totals = _totals(db)
        self.runs, self.state_bytes, self.free_page_bytes = totals

    def close(self) -> None:
        with self._db_lock:
            if self._db is not None:
                self._db.close()
                self._db = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the directory lock
            self._lock_fd = None
