"""The store-and-forward outbox: every event goes to disk before it goes to the broker.

Why SQLite in WAL mode: one file, crash-safe transactions, readers never block the writer, and
it ships with Python. A row leaves the outbox only when the broker has acknowledged it (PUBACK);
a controller killed with a backlog finds it here at the next start and sends it again.

Only the link's worker thread touches an Outbox (SQLite connections are not shared between
threads here). `seq` is the per-controller event number: it keeps counting across restarts,
even after every row has been delivered, because AUTOINCREMENT remembers the highest ever used.

Bounded: past `max_events` the oldest rows are dropped. Never silently: the count is kept in
the file (it survives restarts), returned to the caller to log, and published in `status`.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq  INTEGER PRIMARY KEY AUTOINCREMENT,
    ts   REAL NOT NULL,      -- wall clock when the event reached the link (epoch seconds)
    body TEXT NOT NULL       -- the event as published (JSON, includes seq and ts)
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


class OutboxError(OSError):
    """The outbox file cannot be opened or written (path, reason, hint)."""


class Outbox:
    """Events waiting for a PUBACK, in order, on disk."""

    def __init__(self, path: str, max_events: int, sync: str = "full"):
        self.path = path
        self.max_events = max_events
        folder = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(folder, exist_ok=True)
            # isolation_level=None: we open and commit our own transactions, one per batch.
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            # full: the WAL is fsynced at every commit (survives power loss);
            # normal: survives a process crash (kill -9) but may lose the last commits on power loss.
            self.db.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
            self.db.executescript(SCHEMA)
            row = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
            self.last_seq = int(row[0]) if row else 0
            self.pending = int(self.db.execute("SELECT COUNT(*) FROM events").fetchone()[0])
            row = self.db.execute("SELECT value FROM meta WHERE key = 'dropped'").fetchone()
            self.dropped = int(row[0]) if row else 0
        except sqlite3.Error as exc:
            raise OutboxError(f"outbox {path}: cannot open: {exc}; check that --state-dir is writable "
                              "and the file is not corrupt (move it aside to start empty)") from None
        except OSError as exc:
            raise OutboxError(f"outbox {path}: cannot open: {exc.strerror or exc}; "
                              "check that --state-dir is writable") from None

    # -- writing ---------------------------------------------------------------------------------
    def append(self, items: Iterable[tuple[float, str, int | None]]) -> int:
        """Store (ts, body, seq) rows in one transaction; `body` is JSON text ending in '}' without seq.

        `seq` is the number the controller gave the event (the same one in its event log and
        journal); None, or a number that would not move forward (a lost latch file), gets the
        next free one instead, so the published sequence only ever rises.
        Returns how many of the oldest events had to be dropped to stay within `max_events`.
        """
        rows = []
        seq = self.last_seq
        for ts, body, wanted in items:
            seq = wanted if wanted is not None and wanted > seq else seq + 1
            rows.append((seq, ts, body[:-1] + f',"seq":{seq}}}'))
        if not rows:
            return 0
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("INSERT INTO events (seq, ts, body) VALUES (?, ?, ?)", rows)
            dropped = 0
            excess = self.pending + len(rows) - self.max_events
            if excess > 0:
                # Full: the oldest go first (they are the likeliest to be stale), counted.
                cur = db.execute("DELETE FROM events WHERE seq IN "
                                 "(SELECT seq FROM events ORDER BY seq LIMIT ?)", (excess,))
                dropped = cur.rowcount
                db.execute("INSERT INTO meta (key, value) VALUES ('dropped', ?) "
                           "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                           (self.dropped + dropped,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.last_seq = seq
        self.pending += len(rows) - dropped
        self.dropped += dropped
        return dropped

    def delete(self, seqs: list[int]) -> None:
        """Forget events the broker has acknowledged."""
        if not seqs:
            return
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            cur = db.executemany("DELETE FROM events WHERE seq = ?", ((s,) for s in seqs))
            removed = cur.rowcount
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.pending -= max(0, removed)

    # -- reading ---------------------------------------------------------------------------------
    def read_after(self, seq: int, limit: int) -> list[tuple[int, float, str]]:
        """Up to `limit` rows with a sequence number above `seq`, oldest first."""
        return self.db.execute("SELECT seq, ts, body FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                               (seq, limit)).fetchall()

    def close(self) -> None:
        try:
            self.db.close()
        except sqlite3.Error:
            pass
