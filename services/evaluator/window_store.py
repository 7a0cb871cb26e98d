"""Persistent nuanced-reward windows, one per training run, in SQLite.

Every /score request of a run is applied under that run's lock: load (from memory, else SQLite) -> score
in request order -> write the new window and the request's answer in one transaction. So concurrent
requests of one run never lose an update, a restart continues the window where it stopped, and a request
retried with the same `request_id` gets its first answer back instead of counting its predictions twice.
"""

from __future__ import annotations

import json
import sqlite3
import threading
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


class WindowStore:
    def __init__(self, state_dir: str | Path, window_size: int) -> None:
        path = Path(state_dir)
        path.mkdir(parents=True, exist_ok=True)
        self.path = path / "windows.sqlite3"
        self.window_size = window_size
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._db_lock = threading.Lock()
        self._cache: dict[str, PredictionWindow] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def _lock(self, run_id: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(run_id, threading.Lock())

    def _load(self, run_id: str) -> PredictionWindow:
        if run_id not in self._cache:
            with self._db_lock:
                row = self._db.execute("SELECT items FROM windows WHERE run_id = ?", (run_id,)).fetchone()
            items = json.loads(row[0]) if row else []
            self._cache[run_id] = PredictionWindow.from_list(self.window_size, items)
        return self._cache[run_id]

    @contextmanager
    def _transaction(self):
        with self._db_lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def apply(self, run_id: str, request_id: str | None, score: Callable[[PredictionWindow], dict]) -> dict:
        """Run `score` on the run's window (it may push predictions) and persist the result atomically."""
        with self._lock(run_id):
            if request_id is not None:
                with self._db_lock:
                    row = self._db.execute(
                        "SELECT answer FROM answers WHERE run_id = ? AND request_id = ?", (run_id, request_id)
                    ).fetchone()
                if row:
                    return json.loads(row[0])
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
            except BaseException:
                self._cache[run_id] = PredictionWindow.from_list(self.window_size, before)
                raise
            return answer

    def get(self, run_id: str) -> list[list[str]]:
        with self._lock(run_id):
            return self._load(run_id).to_list()

    def put(self, run_id: str, items: list[list[str]]) -> None:
        """Replace a run's window (a resumed run restores the one its checkpoint saw)."""
        with self._lock(run_id):
            window = PredictionWindow.from_list(self.window_size, items)
            with self._transaction() as db:
                db.execute(
                    "INSERT OR REPLACE INTO windows (run_id, items) VALUES (?, ?)",
                    (run_id, json.dumps(window.to_list())),
                )
            self._cache[run_id] = window

    def close(self) -> None:
        with self._db_lock:
            self._db.close()
