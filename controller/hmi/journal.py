"""The HMI's read-only view of the controller's state dir: the journal search (`/journal`) and the
check that the dir can be read at all (the cell view's calibration dates use it too).

The journal is read with controller.persist.read_journal, oldest file first, one line at a time:
only the newest `limit` matching records are kept (a deque), so a search of the whole 50 MiB of
rotated journal holds at most `limit` records in memory. The HMI never writes to the state dir.
"""

from __future__ import annotations

import collections
import datetime as dt
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller import persist

MAX_RESULTS = 500          # the newest this many matching records are shown
TEXT_MAX = 64              # a time or a cause as typed: longer is refused
TYPES = persist.JOURNALED  # the record types the journal holds
CAUSE_LISTS = ("causes", "restored", "from_journal")   # trip/end, and a start's restored latch
HINT = ("the HMI reads the journal and the calibration records only when it runs beside the controller, "
        "as the same user: give --state-dir DIR or [hmi] state_dir "
        "(the demo, make run: --state-dir var/demo)")
TIME_HELP = ("give an ISO time (2026-11-29T06:00; without a zone: this machine's local time) or a duration "
             "back from now (90s, 30m, 2h, 7d)")


def shown(state_dir: str | Path) -> str:
    """The path as given, and where that is when it is relative."""
    text = str(state_dir)
    full = os.path.abspath(text)
    return text if full == text else f"{text} ({full})"


def state_dir_problem(state_dir: str | Path) -> str | None:
    """Why the HMI cannot read the state dir, in words with the path; None if it can."""
    where = shown(state_dir)
    try:
        st = os.stat(state_dir)
    except FileNotFoundError:
        return f"state dir {where} does not exist on this machine; {HINT}"
    except OSError as exc:
        return f"cannot reach state dir {where}: {exc.strerror or exc}; {HINT}"
    if not stat.S_ISDIR(st.st_mode):
        return f"state dir {where} is not a directory; {HINT}"
    if not os.access(state_dir, os.R_OK | os.X_OK):
        return f"cannot read state dir {where}: permission denied; {HINT}"
    return None


@dataclass
class Query:
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    type: str = ""             # "" is any type
    cause: str = ""            # "" is any; else a case-insensitive part of a cause
    limit: int = MAX_RESULTS
    typed: dict[str, str] = field(default_factory=dict)   # as given, to fill the form again


def _printable(text: str) -> bool:
    return all(c.isprintable() for c in text)


def parse_query(params: dict[str, list[str]], now: dt.datetime | None = None) -> tuple[Query, list[str]]:
    """The query string's parameters (urllib.parse.parse_qs) -> (query, problems in words)."""
    typed = {k: (params.get(k) or [""])[0].strip() for k in ("since", "until", "type", "cause", "limit")}
    q = Query(typed=typed)
    problems = []
    for key in ("since", "until"):
        text = typed[key]
        if not text:
            continue
        try:
            if len(text) > TEXT_MAX or not _printable(text):
                raise ValueError
            setattr(q, key, persist.parse_since(text, now))
        except (ValueError, OverflowError, OSError):
            problems.append(f"{key} \"{text[:TEXT_MAX]}\": {TIME_HELP}")
    if q.since and q.until and q.until < q.since:
        problems.append(f"until \"{typed['until']}\" is before since \"{typed['since']}\"")
    if typed["type"]:
        if typed["type"] in TYPES:
            q.type = typed["type"]
        else:
            problems.append(f"type \"{typed['type'][:TEXT_MAX]}\": not a journal record type; one of "
                            + ", ".join(TYPES) + " (or none: every type)")
    if typed["cause"]:
        if len(typed["cause"]) > TEXT_MAX or not _printable(typed["cause"]):
            problems.append(f"cause: at most {TEXT_MAX} printable characters (e.g. co_rise)")
        else:
            q.cause = typed["cause"].lower()
    if typed["limit"]:
        if typed["limit"].isdigit() and 1 <= int(typed["limit"]) <= MAX_RESULTS:
            q.limit = int(typed["limit"])
        else:
            problems.append(f"limit \"{typed['limit'][:TEXT_MAX]}\": a whole number from 1 to {MAX_RESULTS}")
    return q, problems


def causes_of(rec: dict[str, Any]) -> list[str]:
    """The causes a record names: `causes` (trip, end), `restored` and `from_journal` (a start that
    restored a latch), and `cause` (state: "trip:co_rise,temp_rise", "command:purge", "inerted")."""
    out = []
    for key in CAUSE_LISTS:
        v = rec.get(key)
        if isinstance(v, list):
            out += [str(c) for c in v]
    if isinstance(rec.get("cause"), str):
        out.append(rec["cause"])
    return out


def record_time(rec: dict[str, Any]) -> dt.datetime | None:
    try:
        t = dt.datetime.fromisoformat(rec["ts"])
    except (KeyError, TypeError, ValueError):
        return None
    return t if t.tzinfo is not None else None


def matches(rec: dict[str, Any], q: Query) -> bool:
    if q.type and rec.get("type") != q.type:
        return False
    if q.until is not None:
        t = record_time(rec)
        if t is None or t > q.until:
            return False
    if q.cause and not any(q.cause in c.lower() for c in causes_of(rec)):
        return False
    return True


@dataclass
class Result:
    records: list[dict[str, Any]]   # newest first, at most the query's limit
    total: int                      # how many matched in all
    files: int                      # journal files read
    problem: str | None = None      # the state dir or a file could not be read


def search(state_dir: str | Path, q: Query) -> Result:
    """The newest `q.limit` records that match, streamed from every journal file; never raises."""
    problem = state_dir_problem(state_dir)
    if problem:
        return Result([], 0, 0, problem)
    kept: collections.deque[dict[str, Any]] = collections.deque(maxlen=q.limit)
    total = 0
    try:
        files = persist.journal_files(state_dir)
        for rec in persist.read_journal(state_dir, q.since):   # `since` is applied there
            if matches(rec, q):
                total += 1
                kept.append(rec)
    except OSError as exc:
        where = f"{exc.filename}" if exc.filename else shown(state_dir)
        return Result([], 0, 0, f"cannot read {where}: {exc.strerror or exc}; {HINT}")
    except (ValueError, RecursionError) as exc:   # a line no JSON reader takes: say so, show nothing
        return Result([], 0, 0, f"cannot read the journal in {shown(state_dir)}: {exc}")
    return Result(list(reversed(kept)), total, len(files))
