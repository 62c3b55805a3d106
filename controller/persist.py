"""What survives a crash or a power loss: the latched trip, the event sequence, the acknowledgements,
and the append-only audit journal. CPython only; runs in the pump thread, never in the scan thread.

Why here and not in the loop: the scan thread does no file I/O (a slow disk must never delay a
trip). The loop publishes an immutable latch snapshot when the core's `persist_gen` moves; the pump
thread drains events every PUMP_PERIOD_S, numbers them, journals the audit records and writes the
latch file atomically (temp file, fsync, rename, fsync of the directory) when it changed.

The window: a power loss between the tripping scan and the next write (at most one pump period
plus the write) loses the record of the latch, never the stop itself (the outputs were already
de-energised in the tripping scan) -- and the hard-wired chain latches in hardware. docs/safety.md.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LATCH_FILE = "latch.json"
JOURNAL_FILE = "journal.jsonl"
JOURNAL_MAX_BYTES = 10 * 1024 * 1024   # one journal file; then it rotates
JOURNAL_FILES = 5                      # journal.jsonl + .1 .. .4: at most 50 MiB of audit trail
# Event types that go to the audit journal (commands carry resets and acknowledgements).
JOURNALED = ("command", "trip", "state", "config", "calibration", "end", "persist")
CORRUPT_LATCH_CAUSE = "self_test"      # an unreadable latch file: start tripped, as a failed self-test
# The last event number is written to the latch file with every batch of events (one fsync per
# batch, in the pump thread): a restart goes on from it without a gap, so the event log, the
# journal and MQTT share one sequence and a gap always means events really lost.


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a crash leaves either the old or the new file, whole."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)   # the rename itself must reach the disk
    finally:
        os.close(dfd)


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def read_latch(state_dir: str | Path) -> tuple[dict[str, Any] | None, str | None]:
    """(the saved latch state or None, an error message or None)."""
    path = Path(state_dir) / LATCH_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"{path}: unreadable latch file ({exc}); starting tripped"
    if not isinstance(data, dict) or not isinstance(data.get("causes", []), list):
        return None, f"{path}: latch file has the wrong shape; starting tripped"
    return data, None


class Journal:
    """Append-only JSON lines, rotated by size: journal.jsonl, journal.jsonl.1 (older) ... .4."""

    def __init__(self, state_dir: str | Path, max_bytes: int = JOURNAL_MAX_BYTES, files: int = JOURNAL_FILES):
        self.dir = Path(state_dir)
        self.path = self.dir / JOURNAL_FILE
        self.max_bytes = max_bytes
        self.files = files
        self.stream = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        self.size = self.path.stat().st_size

    def append(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        for r in records:
            line = json.dumps(r, separators=(",", ":"), default=str) + "\n"
            if self.size and self.size + len(line) > self.max_bytes:
                self._rotate()
            self.stream.write(line)
            self.size += len(line)
        self.stream.flush()
        os.fsync(self.stream.fileno())

    def _rotate(self) -> None:
        self.stream.close()
        for k in range(self.files - 1, 0, -1):
            src = self.path.with_name(f"{JOURNAL_FILE}.{k - 1}" if k > 1 else JOURNAL_FILE)
            if src.exists():
                os.replace(src, self.path.with_name(f"{JOURNAL_FILE}.{k}"))
        self.stream = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        self.size = 0

    def close(self) -> None:
        self.stream.close()


def journal_files(state_dir: str | Path) -> list[Path]:
    """Oldest first."""
    d = Path(state_dir)
    older = sorted((p for p in d.glob(JOURNAL_FILE + ".*") if p.suffix[1:].isdigit()),
                   key=lambda p: -int(p.suffix[1:]))
    newest = d / JOURNAL_FILE
    return older + ([newest] if newest.exists() else [])


def read_journal(state_dir: str | Path, since: dt.datetime | None = None) -> Iterator[dict[str, Any]]:
    for path in journal_files(state_dir):
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue   # a line cut by a power loss: skip it, keep the rest
                if since is not None:
                    try:
                        if dt.datetime.fromisoformat(rec["ts"]) < since:
                            continue
                    except (KeyError, TypeError, ValueError):
                        continue
                yield rec


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")


def parse_since(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """`2h`, `30m`, `7d`, `90s`, or an ISO time (without a zone: local time). ValueError if neither."""
    now = now or dt.datetime.now(dt.UTC)
    m = _DURATION.match(text.strip())
    if m:
        seconds = float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        return now - dt.timedelta(seconds=seconds)
    t = dt.datetime.fromisoformat(text.strip())
    return t if t.tzinfo is not None else t.astimezone()


class Persister:
    """Fed by the pump thread: numbers events, journals audit records, keeps the latch file current."""

    def __init__(self, state_dir: str | Path, loop: Any, config: Any):
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.loop = loop
        self.config = config
        self.journal = Journal(self.dir)
        self.seq = 0
        self.reserved = 0                 # the event number the latch file holds
        self.written: Any = None
        self.config_previous: str | None = None
        self.calibration: Any = None   # controller.calibration.Tracker, when records apply

    def restore(self) -> list[dict[str, Any]]:
        """Read the latch file, restore it into the core; return the records to log at start."""
        data, error = read_latch(self.dir)
        records: list[dict[str, Any]] = []
        core = self.loop.core
        if error is not None:
            core.restore_latch([CORRUPT_LATCH_CAUSE])
            records.append({"t": core.now / 1000.0, "type": "persist", "error": error})
        elif data is not None:
            self.seq = int(data.get("seq", 0))
            self.reserved = self.seq
            self.config_previous = data.get("config_sha256")
            causes = [c for c in data.get("causes", []) if isinstance(c, str)]
            if causes:
                core.restore_latch(causes, bool(data.get("trip_acked", False)),
                                   [a for a in data.get("acked", []) if isinstance(a, str)])
                records.append({"t": core.now / 1000.0, "type": "persist", "restored": causes})
        prev = self.config_previous
        records.append({"t": core.now / 1000.0, "type": "config", "path": self.config.path,
                        "sha256": self.config.sha256, "previous_sha256": prev,
                        "changed": prev is not None and prev != self.config.sha256})
        return records

    def handle(self, events: list[dict[str, Any]]) -> None:
        """Number the drained events, journal the audit ones, write the latch when it moved."""
        journaled = []
        ts = None
        for e in events:
            self.seq += 1
            e["seq"] = self.seq
            if e.get("type") in JOURNALED:
                if ts is None:
                    ts = utc_now()
                rec = dict(e)
                rec["ts"] = ts
                journaled.append(rec)
        self.journal.append(journaled)
        self.save_latch(force=self.seq != self.reserved)

    def save_latch(self, force: bool = False) -> None:
        latch = self.loop.latch_state
        if latch is self.written and not force:
            return
        _gen, causes, trip_acked, acked = latch
        # The exact last number, written with every batch that used numbers: a restart continues
        # without a gap, so a gap seen by a plant historian always means events really lost.
        self.reserved = self.seq
        doc = {"causes": list(causes), "trip_acked": trip_acked, "acked": list(acked), "seq": self.reserved,
               "config_sha256": self.config.sha256, "written": utc_now()}
        atomic_write(self.dir / LATCH_FILE, (json.dumps(doc, indent=1) + "\n").encode())
        self.written = latch

    def close(self) -> None:
        self.journal.close()
