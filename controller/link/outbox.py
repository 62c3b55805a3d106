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

import errno
import os
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

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


CORRUPT_CODES = (11, 26)   # SQLITE_CORRUPT, SQLITE_NOTADB: the file will not get better by itself
MEMORY_MAX_EVENTS = 10_000  # an outbox kept in memory holds at most this many (RAM is the controller's)


def _why(exc: BaseException) -> str:
    if isinstance(exc, sqlite3.Error):
        name = getattr(exc, "sqlite_errorname", None)
        return f"{exc} ({name})" if name else str(exc)
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc} ({errno.errorcode.get(exc.errno or 0, exc.errno)})"
    return str(exc)


def _last_seq_of(path: str) -> int:
    """The highest event number an outbox file holds, read without writing anything; 0 if unreadable."""
    try:
        uri = Path(path).absolute().as_uri() + "?mode=ro&immutable=1"
        db = sqlite3.connect(uri, uri=True)
        try:
            row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        finally:
            db.close()
        return int(row[0]) if row and isinstance(row[0], int) else 0
    except (sqlite3.Error, OSError, ValueError):
        return 0


class Outbox:
    """Events waiting for a PUBACK, in order, on disk.

    Never refuses to start (the outbox is not safety state; issue 11): a file that is corrupt
    (or not a file) is moved aside to `<name>.corrupt-<UTC time>` (its -wal and -shm too, when
    SQLite left them) and a new one is started; a file that cannot be opened for another reason
    (full disk, read-only or failing file system) is left as it is, and events are kept in memory
    until the next start (at most MEMORY_MAX_EVENTS, the oldest dropped and counted as in a full
    outbox; lost if the controller stops before the broker has them).
    `reset` then says what happened (None when the file on disk is in use), `moved_to` names the
    old file, and `last_seq` is never below what the old file held (when it can be read).
    """

    def __init__(self, path: str, max_events: int, sync: str = "full"):
        self.path = path
        self.max_events = max_events
        self.sync = sync
        self.reset: str | None = None
        self.moved_to: str | None = None
        self.in_memory = False
        try:
            self._open(path)
            return
        except (sqlite3.Error, OSError) as exc:
            why = f"outbox {path}: cannot open: {_why(exc)}"
            corrupt = isinstance(exc, sqlite3.DatabaseError) and \
                (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF in CORRUPT_CODES
        old_seq = _last_seq_of(path)
        if corrupt or (os.path.lexists(path) and not os.path.isfile(path)):
            self.moved_to = self._move_aside(path)
            if self.moved_to is not None:
                try:
                    self._open(path)
                except (sqlite3.Error, OSError) as exc:
                    why += f"; moved to {self.moved_to}, and a new one cannot be created: {_why(exc)}"
                else:
                    self.reset = f"{why}; moved to {self.moved_to}; started an empty outbox"
                    self.last_seq = max(self.last_seq, old_seq)
                    return
            else:
                why += "; it cannot be moved aside either"
        try:
            self._open(":memory:")
        except sqlite3.Error as exc:
            raise OutboxError(f"{why}; not even in memory: {_why(exc)}") from None
        self.in_memory = True
        self.max_events = min(max_events, MEMORY_MAX_EVENTS)
        self.last_seq = max(self.last_seq, old_seq)
        self.reset = (f"{why}; events are kept in memory until the next start (lost if the controller "
                      "stops before the broker has them)")

    def _open(self, path: str) -> None:
        db = None
        try:
            if path != ":memory:":
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            # isolation_level=None: we open and commit our own transactions, one per batch.
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            # full: the WAL is fsynced at every commit (survives power loss);
            # normal: survives a process crash (kill -9) but may lose the last commits on power loss.
            db.execute(f"PRAGMA synchronous={'FULL' if self.sync == 'full' else 'NORMAL'}")
            db.executescript(SCHEMA)
            row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
            last_seq = int(row[0]) if row else 0
            pending = int(db.execute("SELECT COUNT(*) FROM events").fetchone()[0])
            row = db.execute("SELECT value FROM meta WHERE key = 'dropped'").fetchone()
            dropped = int(row[0]) if row else 0
        except BaseException:
            if db is not None:
                try:
                    db.close()
                except sqlite3.Error:
                    pass
            raise
        self.db, self.last_seq, self.pending, self.dropped = db, last_seq, pending, dropped

    @staticmethod
    def _move_aside(path: str) -> str | None:
        """Rename the file (and its -wal, -shm) to <path>.corrupt-<UTC time>; the new name, or None."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        dst = f"{path}.corrupt-{stamp}"
        n = 1
        while os.path.lexists(dst):
            n += 1
            dst = f"{path}.corrupt-{stamp}-{n}"
        try:
            os.replace(path, dst)
        except OSError:
            return None
        for suffix in ("-wal", "-shm"):
            if os.path.lexists(path + suffix):
                try:
                    os.replace(path + suffix, dst + suffix)
                except OSError:
                    try:
                        os.unlink(path + suffix)   # must not be mistaken for the new file's
                    except OSError:
                        pass
        return dst

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
