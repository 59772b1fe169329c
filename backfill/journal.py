"""A backfill's checkpoint: every photo the gateway has answered for, in a SQLite file.

A photo answered INDEXED, DUPLICATE, NO_FACE or INVALID is done: a backfill started again
with the same journal skips it (so a photo without a face is not detected again). A FAILED
one (a service down, the gateway at capacity) is not: it is sent again next time. Each
answer is written as it comes, so a backfill killed at any point loses at most the photos
in flight; those are sent again, and the gateway, which knows every photo's bytes, stores
nothing twice.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

DONE_STATUSES = frozenset({"indexed", "duplicate", "no_face", "invalid", "multiple_faces"})


class JournalMismatch(ValueError):
    """The journal belongs to another source or shard."""


class Journal:
    def __init__(self, path: Path, source: str, shard: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS about (name TEXT PRIMARY KEY, value TEXT)")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS photos (key TEXT PRIMARY KEY, status TEXT NOT NULL, "
            "faces INTEGER NOT NULL, content_hash TEXT, message TEXT)"
        )
        for name, value in (("source", source), ("shard", shard)):
            row = self._db.execute("SELECT value FROM about WHERE name = ?", (name,)).fetchone()
            if row is None:
                self._db.execute("INSERT INTO about VALUES (?, ?)", (name, value))
            elif row[0] != value:
                raise JournalMismatch(f"{path} is the journal of {name} {row[0]!r}, not {value!r}")

    def done(self, key: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT status FROM photos WHERE key = ?", (key,)).fetchone()
        return row is not None and row[0] in DONE_STATUSES

    def record(self, key: str, status: str, faces: int, content_hash: str, message: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO photos VALUES (?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET status = excluded.status, "
                "faces = excluded.faces, content_hash = excluded.content_hash, message = excluded.message",
                (key, status, faces, content_hash, message),
            )

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM photos GROUP BY status").fetchall()
        return dict(rows)

    def failures(self) -> list[tuple[str, str, str]]:
        """(key, status, message) of the photos not done."""
        placeholders = ",".join("?" * len(DONE_STATUSES))
        with self._lock:
            return self._db.execute(
                f"SELECT key, status, message FROM photos WHERE status NOT IN ({placeholders}) ORDER BY key",
                tuple(DONE_STATUSES),
            ).fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()
