"""What survives a crash or a power loss: the latched trip, the event sequence, the acknowledgements,
and the append-only audit journal. CPython only; runs in the pump thread, never in the scan thread.

Why here and not in the loop: the scan thread does no file I/O (a slow disk must never delay a
trip). The loop publishes an immutable latch snapshot when the core's `persist_gen` moves; the pump
thread drains events, numbers them, and hands them here before it writes them anywhere else.

Order of the writes, and why (issue 11): the latch file goes first. It holds the latched causes,
the last event number of the batch, and the batch's audit records (write-ahead), in one atomic
rename. Only then are the records appended to the journal, and only after that does the pump write
the --events file, stderr and MQTT. So a crash at any point leaves a latch that holds every trip
and every number anything else could have seen, and a journal that is complete after the next
start has appended the carried records it lacks. At start the journal's tail is checked against
the latch (a trip journaled after the latch file was written comes back latched), and the event
sequence goes on from the highest number in the latch, the journal and the --events file (the
caller adds the outbox's).

A disk error never stops the pump: handle() keeps what it could not write, retries with a backoff,
raises `state_write_failed` while the latch cannot be written, and reports the failure and the
recovery as `persist` events. docs/safety.md, "Persistent latches and the audit trail".
"""

from __future__ import annotations

import collections
import datetime as dt
import errno
import json
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from controller.rules import ALARM_INDEX, CAUSE_INDEX

LATCH_FILE = "latch.json"
JOURNAL_FILE = "journal.jsonl"
JOURNAL_MAX_BYTES = 10 * 1024 * 1024   # one journal file; then it rotates
JOURNAL_FILES = 5                      # journal.jsonl + .1 .. .4: at most 50 MiB of audit trail
# Event types that go to the audit journal (commands carry resets and acknowledgements).
JOURNALED = ("command", "trip", "state", "config", "calibration", "end", "persist")
# A latch file that cannot be read or is not exactly what the writer writes: start tripped with this
# cause (and the journal's), and a `persist` error record naming the field and the value.
CORRUPT_LATCH_CAUSE = "self_test"
CORRUPT_SUFFIX = ".corrupt"            # a corrupt latch file is moved to latch.json.corrupt (one kept)

# The latch file: required keys and their meaning; anything else is an error.
LATCH_REQUIRED = ("causes", "trip_acked", "acked", "seq")
LATCH_OPTIONAL = ("config_sha256", "written", "journal")
SEQ_MAX = 2**53 - 1                    # event numbers stay exact in every JSON parser (doubles)
LATCH_MAX_BYTES = 1024 * 1024          # a larger latch file is corrupt (the writer stays far below)
LATCH_CARRY_MAX = 100                  # audit records carried in the latch file ahead of the journal

# When a write fails (full disk, read-only file system, I/O error).
UNJOURNALED_MAX = 1000                 # audit records kept in memory for the journal; past it the
                                       # oldest are dropped and counted (reported at recovery)
RETRY_MIN_S = 0.5                      # first retry after a failed write, doubling ...
RETRY_MAX_S = 10.0                     # ... up to this; a changed latch is tried at once
ERROR_REPEAT_S = 600.0                 # while a file keeps failing the same way: one reminder event per this
REOPENED_ALARM_HOLD_S = 3600.0         # journal_reopened stays active this long
PROBE_EVERY_S = 1.0                    # the state dir's file system is looked at (statvfs) this often:
STATE_MIN_FREE_BYTES = 64 * 1024       # read-only, or less free than this, counts as a failed write
EVENTS_TAIL_MAX_BYTES = 4 * 1024 * 1024   # at start, the --events file's last number is looked for here


# -- writing files -----------------------------------------------------------------------------------
def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a crash leaves either the old or the new file, whole.

    On an error the temporary file is removed (it would hold space on a full disk) and the
    OSError is raised; `path` is then untouched, unless the rename happened and only the
    directory's fsync failed.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dfd = os.open(path.parent, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)   # the rename itself must reach the disk
    finally:
        os.close(dfd)


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def _errname(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))


# -- the latch file: read and validate ---------------------------------------------------------------
class _Invalid(ValueError):
    pass


def _show(value: Any) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _Invalid(f"key {_show(k)} appears twice")
        out[k] = v
    return out


def _no_constant(name: str) -> Any:
    raise _Invalid(f"{name} is not a JSON number")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _known_names(doc: dict[str, Any], key: str, known: Any, what: str, one: str) -> str | None:
    """`doc[key]` must be a list of distinct names from `known`; else what is wrong with it."""
    names = doc[key]
    if not isinstance(names, list):
        return f"{key}: not a list but {_show(names)}"
    for n in names:
        if not isinstance(n, str) or n not in known:
            return f"{key}: {_show(n)} is not a known {what}"
    if len(set(names)) != len(names):
        return f"{key}: {one} appears twice in {_show(names)}"
    return None


def validate_latch(doc: Any) -> str | None:
    """None if `doc` is exactly a latch document the writer could have written; else what is wrong
    (the field and its value)."""
    if not isinstance(doc, dict):
        return f"not a JSON object but {_show(doc)}"
    for key in doc:
        if key not in LATCH_REQUIRED and key not in LATCH_OPTIONAL:
            return f"unknown key {_show(key)}"
    for key in LATCH_REQUIRED:
        if key not in doc:
            return f"required key {_show(key)} missing"
    problem = _known_names(doc, "causes", CAUSE_INDEX, "trip cause", "a cause")
    if problem is not None:
        return problem
    if not isinstance(doc["trip_acked"], bool):
        return f"trip_acked: not true or false but {_show(doc['trip_acked'])}"
    problem = _known_names(doc, "acked", ALARM_INDEX, "alarm", "an alarm")
    if problem is not None:
        return problem
    seq = doc["seq"]
    if not _is_int(seq) or not 0 <= seq <= SEQ_MAX:
        return f"seq: not an integer from 0 to {SEQ_MAX} but {_show(seq)}"
    if "config_sha256" in doc:
        sha = doc["config_sha256"]
        if not isinstance(sha, str) or not re.fullmatch(r"(?:[0-9a-f]{64})?", sha):
            return f"config_sha256: not a SHA-256 in hex but {_show(sha)}"
    if "written" in doc:
        written = doc["written"]
        try:
            if not isinstance(written, str):
                raise ValueError
            dt.datetime.fromisoformat(written)
        except ValueError:
            return f"written: not an ISO time but {_show(written)}"
    if "journal" in doc:
        carried = doc["journal"]
        if not isinstance(carried, list) or len(carried) > LATCH_CARRY_MAX:
            return f"journal: not a list of at most {LATCH_CARRY_MAX} records but {_show(carried)}"
        last = 0
        for r in carried:
            if (not isinstance(r, dict) or r.get("type") not in JOURNALED or not _is_int(r.get("seq"))
                    or not last < r["seq"] <= seq):
                return f"journal: {_show(r)} is not an audit record numbered after {last} and up to seq"
            last = r["seq"]
    return None


def read_latch(state_dir: str | Path) -> tuple[dict[str, Any] | None, str | None]:
    """(the saved latch state or None, an error message or None). Never raises.

    None, None: there is no latch file. Anything that is not exactly what the writer writes is an
    error, and the message names what was wrong.
    """
    path = Path(state_dir) / LATCH_FILE

    def unreadable(why: str) -> tuple[None, str]:
        return None, f"{path}: unreadable latch file ({why}); starting tripped"

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return unreadable(f"{exc.strerror or exc}, {_errname(exc)}")
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return unreadable("not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            raw = f.read(LATCH_MAX_BYTES + 1)
    except OSError as exc:
        return unreadable(f"{exc.strerror or exc}, {_errname(exc)}")
    finally:
        os.close(fd)
    if len(raw) > LATCH_MAX_BYTES:
        return unreadable(f"larger than {LATCH_MAX_BYTES} bytes")
    try:
        doc = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys,
                         parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        return unreadable(str(exc)[:120])
    problem = validate_latch(doc)
    if problem is not None:
        return None, f"{path}: invalid latch file: {problem}; starting tripped"
    return doc, None


def _finite(value: Any) -> Any:
    """JSON the strict reader takes back: NaN and infinities become null, anything else str()."""
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def _latch_bytes(doc: dict[str, Any], carried: list[dict[str, Any]]) -> bytes:
    """The latch file's text, always readable by read_latch(): the carried audit records (newest
    kept) only as far as the file stays under half of LATCH_MAX_BYTES."""
    carried = [_finite(r) for r in carried]
    while True:
        full = dict(doc, journal=carried) if carried else doc
        data = (json.dumps(full, indent=1, allow_nan=False) + "\n").encode()
        if len(data) <= LATCH_MAX_BYTES // 2 or not carried:
            return data
        carried = carried[len(carried) // 2 + 1:]


# -- reading files backwards (the newest records first) ----------------------------------------------
def _lines_reversed(path: Path, max_bytes: int | None = None, block: int = 65536) -> Iterator[bytes]:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        pos = end = f.tell()
        rest = b""
        while pos > 0 and (max_bytes is None or end - pos < max_bytes):
            n = min(block, pos)
            pos -= n
            f.seek(pos)
            lines = (f.read(n) + rest).split(b"\n")
            rest = lines[0]
            for line in reversed(lines[1:]):
                if line.strip():
                    yield line
        if pos == 0 and rest.strip():
            yield rest


def _records_reversed(paths: list[Path], max_bytes: int | None = None) -> Iterator[dict[str, Any]]:
    for path in reversed(paths):
        try:
            for line in _lines_reversed(path, max_bytes):
                try:
                    rec = json.loads(line)
                except (ValueError, RecursionError):
                    continue   # a line cut by a crash or a power loss
                if isinstance(rec, dict):
                    yield rec
        except OSError:
            continue


def _seq_of(rec: dict[str, Any]) -> int | None:
    s = rec.get("seq")
    return s if _is_int(s) and 0 < s <= SEQ_MAX else None


def _trip_causes(rec: dict[str, Any], key: str = "causes") -> list[str]:
    causes = rec.get(key)
    return [c for c in causes if isinstance(c, str) and c in CAUSE_INDEX] if isinstance(causes, list) else []


def last_seq_in_file(path: str | Path | None, max_bytes: int = EVENTS_TAIL_MAX_BYTES) -> int:
    """The number of the last numbered record in a JSON-lines file (0 if none, or no file)."""
    if path is None:
        return 0
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return 0   # a pipe or a terminal: nothing to read back
    except OSError:
        return 0
    for rec in _records_reversed([Path(path)], max_bytes):
        s = _seq_of(rec)
        if s is not None:
            return s
    return 0


def scan_journal(state_dir: str | Path, latch_seq: int | None) -> tuple[int, list[str]]:
    """(the highest event number in the journal, trip causes the latch file does not hold).

    latch_seq: the valid latch file's number. Every trip journaled after it comes back (the
    latch file was not written after it: a write that failed, a file lost). Resets journaled
    after it do not count: the latch file is the authority for what it holds (reset again).
    None (no valid latch file): the latch is rebuilt from the journal's tail, newest first:
    trips add their causes until a state record shows the cell was not tripped, or a start
    record shows what was restored then.
    """
    last = 0
    causes: list[str] = []
    rebuilding = latch_seq is None
    for rec in _records_reversed(journal_files(state_dir)):
        s = _seq_of(rec)
        if s is not None and not last:
            last = s
        kind = rec.get("type")
        if not rebuilding:
            if s is None:
                continue
            if s <= latch_seq:
                break
            if kind == "trip":
                causes += [c for c in _trip_causes(rec) if c not in causes]
            continue
        if kind == "trip":
            causes += [c for c in _trip_causes(rec) if c not in causes]
        elif kind == "persist" and "restored" in rec:
            causes += [c for c in _trip_causes(rec, "restored") if c not in causes]
            break   # a start: what it restored is the latch it began with
        elif kind == "end":
            if rec.get("state") == "TRIPPED":
                causes += [c for c in _trip_causes(rec) if c not in causes]
            break   # a clean stop: the latch it ended with
        elif kind == "state" and rec.get("to") != "TRIPPED":
            break
    if not rebuilding or not causes:
        return last, causes
    # Rebuilding: the order of the causes as they tripped (the newest was found first).
    return last, causes[::-1]


# -- the journal -----------------------------------------------------------------------------------
class JournalWriteError(OSError):
    """An append failed; `written` records of the batch (the first ones) reached the disk."""

    def __init__(self, exc: OSError, path: Path, written: int):
        super().__init__(exc.errno, exc.strerror or str(exc), str(path))
        self.written = written


class Journal:
    """Append-only JSON lines, rotated by size: journal.jsonl, journal.jsonl.1 (older) ... .4.

    Written with os.write on an O_APPEND descriptor and fsynced per batch. A batch that fails is
    cut back off the file (so a retry never leaves half a line); a file that ends in a cut line
    (a crash) gets a newline before the next record, so that record is never lost with it.
    """

    def __init__(self, state_dir: str | Path, max_bytes: int = JOURNAL_MAX_BYTES, files: int = JOURNAL_FILES,
                 *, open_now: bool = True):
        self.dir = Path(state_dir)
        self.path = self.dir / JOURNAL_FILE
        self.max_bytes = max_bytes
        self.files = files
        self.fd: int | None = None
        self.ident: tuple[int, int] | None = None
        self.size = 0
        self.torn = False
        if open_now:
            self.open()

    def open(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            st = os.fstat(fd)
            torn = False
            if st.st_size:
                rfd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    torn = os.pread(rfd, 1, st.st_size - 1) != b"\n"
                finally:
                    os.close(rfd)
        except OSError:
            os.close(fd)
            raise
        self.fd, self.ident, self.size, self.torn = fd, (st.st_dev, st.st_ino), st.st_size, torn

    def moved(self) -> str | None:
        """Why the path no longer names the open file, None if it does: "missing" (deleted or
        moved away), "replaced" (another file under the name), or "rotated" (another process,
        `crushcell calibration record`, rotated it: reopening is normal).
        """
        if self.fd is None:
            return None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            why = "missing"
        else:
            if (st.st_dev, st.st_ino) == self.ident:
                return None
            why = "replaced"
        for k in range(1, self.files):
            try:
                st = os.stat(self.path.with_name(f"{JOURNAL_FILE}.{k}"))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == self.ident:
                return "rotated"
        return why

    def reopen(self) -> None:
        self._close_fd()
        self.open()

    def append(self, records: list[dict[str, Any]]) -> None:
        """All of `records`, or JournalWriteError telling how many of the first ones were written."""
        if not records:
            return
        written = 0
        chunk: list[bytes] = []
        size = 0
        try:
            if self.fd is None:
                self.open()
            for r in records:
                line = (json.dumps(r, separators=(",", ":"), default=str) + "\n").encode()
                if chunk and self.size + size + len(line) > self.max_bytes:
                    self._write(chunk)
                    written += len(chunk)
                    chunk, size = [], 0
                if self.size and not chunk and self.size + len(line) > self.max_bytes:
                    self._rotate()
                chunk.append(line)
                size += len(line)
            self._write(chunk)
        except OSError as exc:
            raise JournalWriteError(exc, self.path, written) from exc

    def _write(self, lines: list[bytes]) -> None:
        fd = self.fd
        assert fd is not None
        data = b"".join(lines)
        if self.torn:
            data = b"\n" + data
        before = self.size
        try:
            _write_all(fd, data)
            os.fsync(fd)
        except OSError:
            try:
                os.ftruncate(fd, before)   # no half line stays behind to be retried after
            except OSError:
                self.torn = True   # cannot cut it back: the next append starts on a new line
            raise
        self.size = before + len(data)
        self.torn = False

    def _rotate(self) -> None:
        self._close_fd()
        for k in range(self.files - 1, 0, -1):
            src = self.path.with_name(f"{JOURNAL_FILE}.{k - 1}" if k > 1 else JOURNAL_FILE)
            if src.exists():
                os.replace(src, self.path.with_name(f"{JOURNAL_FILE}.{k}"))
        self.open()

    def _close_fd(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def close(self) -> None:
        self._close_fd()


def journal_files(state_dir: str | Path) -> list[Path]:
    """Oldest first."""
    d = Path(state_dir)
    try:
        older = sorted((p for p in d.glob(JOURNAL_FILE + ".*") if p.suffix[1:].isdigit()),
                       key=lambda p: -int(p.suffix[1:]))
    except OSError:
        older = []
    newest = d / JOURNAL_FILE
    return older + ([newest] if newest.exists() else [])


def read_journal(state_dir: str | Path, since: dt.datetime | None = None) -> Iterator[dict[str, Any]]:
    for path in journal_files(state_dir):
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue   # a line cut by a power loss: skip it, keep the rest
                if not isinstance(rec, dict):
                    continue
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


# -- the persister -----------------------------------------------------------------------------------
class _Failing:
    """One file's write failures: backoff, and when it was last reported."""

    __slots__ = ("count", "since", "next_try", "reported_at", "reported_as", "tried_latch")

    def __init__(self) -> None:
        self.count = 0
        self.since = 0.0
        self.next_try = 0.0
        self.reported_at = 0.0
        self.reported_as = ""
        self.tried_latch: Any = None


class Persister:
    """Fed by the pump thread: numbers events, keeps the latch file current, journals audit records.

    handle() never raises: what cannot be written is kept (the latch state always; audit records
    up to UNJOURNALED_MAX) and retried (RETRY_MIN_S doubling to RETRY_MAX_S).
    """

    def __init__(self, state_dir: str | Path, loop: Any, config: Any, *, events_path: str | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.dir = Path(state_dir)
        self.loop = loop
        self.config = config
        self.events_path = events_path
        self.clock = clock
        self.journal = Journal(self.dir, open_now=False)
        self.seq = 0                      # the last event number given out
        self.saved_seq = -1               # the event number the latch file on disk holds
        self.written: Any = None          # the latch state the latch file on disk holds
        self.config_previous: str | None = None
        self.calibration: Any = None      # controller.calibration.Tracker, when records apply
        self.unjournaled: collections.deque[dict[str, Any]] = collections.deque()
        self.unjournaled_dropped = 0      # audit records lost since the journal last worked
        self.failing: dict[str, _Failing] = {}   # "latch" / "journal" -> its failures
        self.pending_events: list[dict[str, Any]] = []   # persist events made outside handle()
        self.trips_ahead: list[str] = []  # tripped causes numbered that the loop's latch may not show yet
        self.probe_at = 0.0               # when the state dir's file system is next looked at
        self.alarm = False                # state_write_failed as last told to the loop
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.journal.open()
        except OSError as exc:
            self._failed("journal", self.journal.path, exc, self.clock())

    # -- start ---------------------------------------------------------------------------------------
    def restore(self) -> list[dict[str, Any]]:
        """Read the latch file and the journal's tail, restore the latch into the core; return the
        records to log at start. Never raises."""
        data, error = read_latch(self.dir)
        records: list[dict[str, Any]] = []
        core = self.loop.core
        t = core.now / 1000.0
        causes: list[str] = []
        trip_acked = False
        acked: list[str] = []
        latch_seq: int | None = None
        carried: list[dict[str, Any]] = []
        if error is not None:
            causes.append(CORRUPT_LATCH_CAUSE)
            moved = self._move_corrupt_latch()
            if moved:
                error += f"; the file was moved to {moved}"
        elif data is not None:
            latch_seq = data["seq"]
            self.config_previous = data.get("config_sha256")
            causes = list(data["causes"])
            trip_acked, acked = data["trip_acked"], list(data["acked"])
            carried = data.get("journal", [])
        journal_seq, from_journal = scan_journal(self.dir, latch_seq)
        # Records the latch file carried ahead of the journal and the journal lacks (a crash between
        # the two writes): append them now (or keep them for the next write).
        replay = [r for r in carried if r["seq"] > journal_seq]
        if replay:
            self.unjournaled.extend(replay)
            self._write_journal(self.clock(), force=True)
            journal_seq = max(journal_seq, replay[-1]["seq"])
        added = [c for c in from_journal if c not in causes]
        if added:
            causes += added
            trip_acked = False   # a trip the latch file did not hold was never silenced
        self.seq = max(latch_seq or 0, journal_seq, last_seq_in_file(self.events_path))
        self.saved_seq = latch_seq if latch_seq is not None else -1
        if causes:
            core.restore_latch(causes, trip_acked, acked)
        if error is not None or causes:
            # The start record: a later rebuild from the journal stops at it (scan_journal).
            rec: dict[str, Any] = {"t": t, "type": "persist"}
            if error is not None:
                rec["error"] = error
            rec["restored"] = causes
            if added:
                rec["from_journal"] = added
            records.append(rec)
        if replay:
            records.append({"t": t, "type": "persist", "journal_replayed": len(replay),
                            "seqs": [replay[0]["seq"], replay[-1]["seq"]]})
        prev = self.config_previous
        records.append({"t": t, "type": "config", "path": self.config.path,
                        "sha256": self.config.sha256, "previous_sha256": prev,
                        "changed": prev is not None and prev != self.config.sha256})
        return records

    def _move_corrupt_latch(self) -> str | None:
        src = self.dir / LATCH_FILE
        dst = self.dir / (LATCH_FILE + CORRUPT_SUFFIX)
        try:
            os.replace(src, dst)
        except OSError:
            return None
        return str(dst)

    # -- every pump pass -----------------------------------------------------------------------------
    def handle(self, events: list[dict[str, Any]]) -> None:
        """Number the drained events, write the latch (first), then journal the audit ones.

        Never raises. Persist events about write failures and recoveries go to the loop's event
        stream (the next pass numbers, journals and reports them). May add the loop's newest events
        to `events` (see below): the caller reports `events` after this returns.
        """
        try:
            now = self.clock()
            # The latch state first, then whatever events wait: a scan queues its events before it
            # publishes its latch, so every change this latch shows has its events in the batch and
            # the latch file is never ahead of the journal. It may be behind (a scan in between):
            # trips in the batch are then added to what is written (trips_ahead).
            latch = self.loop.latch_state
            drain = getattr(self.loop, "drain_events", None)
            if callable(drain):
                events.extend(drain())
            ts = None
            for e in events:
                self.seq += 1
                e["seq"] = self.seq
                kind = e.get("type")
                if kind in JOURNALED:
                    if ts is None:
                        ts = utc_now()
                    rec = dict(e)
                    rec["ts"] = ts
                    self._keep(rec)
                    if kind == "trip":
                        self.trips_ahead += [c for c in _trip_causes(e) if c not in self.trips_ahead]
                    elif kind == "state" and e.get("from") == "TRIPPED" and e.get("to") != "TRIPPED":
                        self.trips_ahead = []   # reset: the latch cleared in this batch
            self._probe(now)
            self.save_latch(now=now, latch=latch)
            self._write_journal(now)
        except Exception as exc:   # a bug here must not stop the pump: say so, keep going
            self._failed("latch", self.dir / LATCH_FILE, exc, self.clock())
        self._emit_pending()

    def save_latch(self, force: bool = False, now: float | None = None, latch: Any = None) -> bool:
        """Write the latch file if it is behind; False if it could not be written (retried later)."""
        now = self.clock() if now is None else now
        if latch is None:
            latch = self.loop.latch_state
        f = self.failing.get("latch")
        if latch is self.written and self.seq == self.saved_seq and not force and f is None:
            return True
        if f is not None and now < f.next_try and latch is f.tried_latch and not force:
            return False   # backing off; a latch that changed is tried at once
        _gen, causes, trip_acked, acked = latch
        ahead = [c for c in self.trips_ahead if c not in causes]
        doc: dict[str, Any] = {"causes": list(causes) + ahead, "trip_acked": bool(trip_acked) and not ahead,
                               "acked": list(acked), "seq": self.seq, "config_sha256": self.config.sha256,
                               "written": utc_now()}
        data = _latch_bytes(doc, list(self.unjournaled)[-LATCH_CARRY_MAX:])
        path = self.dir / LATCH_FILE
        try:
            if f is not None:
                self.dir.mkdir(parents=True, exist_ok=True)   # a state dir removed under us
            atomic_write(path, data)
        except OSError as exc:
            self._failed("latch", path, exc, now)
            self.failing["latch"].tried_latch = latch
            return False
        # A latch state behind the batch's trips is written again at the next pass.
        self.written = None if ahead else latch
        self.trips_ahead = ahead
        self.saved_seq = self.seq
        self._succeeded("latch", path, now)
        return True

    def _keep(self, rec: dict[str, Any]) -> None:
        self.unjournaled.append(rec)
        if len(self.unjournaled) > UNJOURNALED_MAX:
            self.unjournaled.popleft()
            self.unjournaled_dropped += 1

    def _write_journal(self, now: float, force: bool = False) -> None:
        f = self.failing.get("journal")
        if f is not None and now < f.next_try and not force:
            return
        if not self.unjournaled:
            return
        journal = self.journal
        try:
            why = journal.moved()
            if why is not None:
                journal.reopen()
                if why != "rotated":
                    self._journal_reopened(why)
            elif journal.fd is None:
                if f is not None:
                    self.dir.mkdir(parents=True, exist_ok=True)
                journal.open()
            journal.append(list(self.unjournaled))
        except JournalWriteError as exc:
            for _ in range(exc.written):
                self.unjournaled.popleft()
            self._failed("journal", journal.path, exc, now)
            return
        except OSError as exc:
            self._failed("journal", journal.path, exc, now)
            return
        self.unjournaled.clear()
        self._succeeded("journal", journal.path, now)

    def _journal_reopened(self, why: str) -> None:
        what = "deleted or moved away" if why == "missing" else "another file under its name"
        self._raise_alarm("journal_reopened", REOPENED_ALARM_HOLD_S)
        self._event({"type": "persist", "journal_reopened": str(self.journal.path), "why": why,
                     "error": f"{self.journal.path}: {why} ({what}) while the controller ran; reopened "
                              "(records written before are in the old file, if it still exists)"})

    # -- failures and recoveries ---------------------------------------------------------------------
    def _failed(self, what: str, path: Path, exc: Exception, now: float) -> None:
        f = self.failing.get(what)
        first = f is None
        if f is None:
            f = self.failing[what] = _Failing()
            f.since = now
        f.count += 1
        f.next_try = now + min(RETRY_MAX_S, RETRY_MIN_S * 2 ** min(f.count - 1, 30))
        if isinstance(exc, OSError):
            name = _errname(exc)
            why = f"{exc.strerror or exc} ({name})"
        else:
            name = type(exc).__name__
            why = f"internal error {name}: {str(exc)[:200]}"
        if first or name != f.reported_as or now - f.reported_at >= ERROR_REPEAT_S:
            f.reported_at, f.reported_as = now, name
            then = ("start is refused while it lasts" if what == "dir" else
                    f"kept in memory and retried, at least every {RETRY_MAX_S:g} s")
            rec = {"type": "persist", "error": f"{path}: {why}; {then}", "file": str(path), "errno": name,
                   "failures": f.count}
            self._event(rec)
        self._update_alarm()

    def _succeeded(self, what: str, path: Path, now: float) -> None:
        f = self.failing.pop(what, None)
        if f is None:
            return
        rec: dict[str, Any] = {"type": "persist", "recovered": str(path), "failures": f.count,
                               "after_s": round(now - f.since, 3)}
        if what == "journal":
            rec["dropped"] = self.unjournaled_dropped   # audit records lost while it failed
            self.unjournaled_dropped = 0
        self._event(rec)
        self._update_alarm()

    def _event(self, rec: dict[str, Any]) -> None:
        rec = {"t": self.loop.core.now / 1000.0, **rec}
        self.pending_events.append(rec)

    def _emit_pending(self) -> None:
        """Hand persist events to the loop's stream: the next pass numbers and reports them (so the
        latch file always holds their numbers before anything reports them)."""
        if not self.pending_events:
            return
        events, self.pending_events = self.pending_events, []
        record = getattr(self.loop, "record_event", None)
        for e in events:
            if callable(record):
                record(e)
            else:
                self.loop.events.append(e)

    def _update_alarm(self) -> None:
        """state_write_failed: while the latch file cannot be written, or its file system is
        read-only or nearly full (told to the loop on a change only)."""
        active = "latch" in self.failing or "dir" in self.failing
        if active != self.alarm:
            self.alarm = active
            fn = getattr(self.loop, "set_platform_alarm", None)
            if callable(fn):
                fn("state_write_failed", active)

    def _probe(self, now: float) -> None:
        """Look at the state dir's file system (one statvfs a second): a full or read-only one
        raises the alarm before a write has to fail, e.g. in READY with nothing to write."""
        if now < self.probe_at:
            return
        self.probe_at = now + PROBE_EVERY_S
        try:
            st = os.statvfs(self.dir)
        except OSError:
            return   # no state dir: the next write makes it (or fails and says why)
        free = (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize
        if st.f_flag & os.ST_RDONLY:
            problem = OSError(errno.EROFS, "read-only file system (statvfs)")
        elif free < STATE_MIN_FREE_BYTES:
            problem = OSError(errno.ENOSPC, f"{free} bytes free, below {STATE_MIN_FREE_BYTES} (statvfs)")
        else:
            self._succeeded("dir", self.dir, now)
            return
        self._failed("dir", self.dir, problem, now)

    def _raise_alarm(self, name: str, hold_s: float) -> None:
        fn = getattr(self.loop, "raise_platform_alarm", None)
        if callable(fn):
            fn(name, hold_s)

    def close(self) -> None:
        self._emit_pending()
        self.journal.close()
