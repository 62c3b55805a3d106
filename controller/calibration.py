"""Bump tests and calibrations of the gas sensors: records, due dates, and what the core is told.

Why: a gas sensor that drifts or is poisoned stays "healthy" by every check the controller can
make (range, NaN, stale, stuck all pass). Only a bump test (apply gas, see it answer) and a
calibration catch it, so their dates are tracked per sensor and enforced: past its interval a
sensor raises `calibration_due:<sensor>`; past interval + grace the `start` permissive refuses.
The core never reads a clock or a file: `Tracker.check()` runs in the pump thread and hands the
result to the loop (`ScanLoop.set_calibration`).

Due dates trust the wall clock, so the Tracker also judges the clock (issue 11 item 7): a board
without a real-time clock boots in 1970 (or at the time fake-hwclock last saved), and every
sensor would then look freshly tested. A wall clock more than CLOCK_SLACK_S earlier than the
newest time the state dir or the package proves has passed raises the platform alarm
`clock_implausible`, which blocks `start`; it is judged again every CHECK_PERIOD_S, so NTP or an
operator setting the clock clears it. The evidence:
- the newest date in calibration.json (read at every check);
- the latch file's "written" and the journal's last "ts", read once when the Tracker
  is made, before this run writes either with a clock that may be wrong (so the Tracker must be
  made before the persister's first write; cli._open_state does);
- the build: the newest mtime of this package's own .py files (set when it was built or
  installed, by a clock that was presumably right then; no packaging step needed), and never
  earlier than NOT_BEFORE, the day this check was written: no clock showing an earlier time is right.
The slack absorbs small corrections (NTP stepping a clock that ran a few seconds fast, fake-hwclock
saving hourly); calibration dates have a resolution of a day.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cellspec.names import CALIBRATED_SENSORS
from controller.persist import JOURNAL_FILE, LATCH_FILE, atomic_write

log = logging.getLogger(__name__)

CALIBRATION_FILE = "calibration.json"
KINDS = {"bump": "bump_interval_days", "calibration": "calibration_interval_days"}
CHECK_PERIOD_S = 60.0     # the pump re-reads the records and the date this often
CLOCK_ALARM = "clock_implausible"
CLOCK_SLACK_S = 3600.0    # the wall clock may be this much earlier than the evidence
NOT_BEFORE = dt.datetime(2026, 11, 29, tzinfo=dt.UTC)   # this clock check was written that day
JOURNAL_TAIL_BYTES = 65536   # the journal's last "ts" is looked for in this much of its end


class CalibrationError(ValueError):
    """Bad calibration input or an unreadable records file."""


def load(state_dir: str | Path) -> dict[str, dict[str, str]]:
    path = Path(state_dir) / CALIBRATION_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CalibrationError(f"{path}: unreadable ({exc})") from None
    if not isinstance(data, dict):
        raise CalibrationError(f"{path}: must hold a JSON object of sensors")
    return {k: v for k, v in data.items() if k in CALIBRATED_SENSORS and isinstance(v, dict)}


def parse_date(text: str, today: dt.date | None = None) -> dt.date:
    try:
        d = dt.date.fromisoformat(text)
    except ValueError:
        raise CalibrationError(f"--date {text}: must be a date YYYY-MM-DD") from None
    if today is not None and d > today:
        raise CalibrationError(f"--date {text}: is in the future (today is {today.isoformat()})")
    return d


def record(state_dir: str | Path, sensor: str, kind: str, date: dt.date) -> dict[str, Any]:
    """Store `kind` (bump or calibration) of `sensor` on `date`; return the journal record."""
    if sensor not in CALIBRATED_SENSORS:
        raise CalibrationError(f"unknown gas sensor {sensor!r}; expected one of: "
                               f"{', '.join(CALIBRATED_SENSORS)}")
    if kind not in KINDS:
        raise CalibrationError(f"unknown kind {kind!r}: bump or calibration")
    d = Path(state_dir)
    d.mkdir(parents=True, exist_ok=True)
    records = load(d)
    entry = records.setdefault(sensor, {})
    entry[kind] = date.isoformat()
    if kind == "calibration" and entry.get("bump", "") < date.isoformat():
        entry["bump"] = date.isoformat()   # a calibration applies gas too: it counts as a bump test
    atomic_write(d / CALIBRATION_FILE, (json.dumps(records, indent=1, sort_keys=True) + "\n").encode())
    return {"type": "calibration", "sensor": sensor, "kind": kind, "date": date.isoformat()}


def status(records: dict[str, dict[str, str]], limits: dict[str, float],
           today: dt.date) -> list[dict[str, Any]]:
    """Per sensor and kind: last date, due date, and whether due or overdue beyond the grace.

    A sensor with no record is due and overdue: nobody has shown that it reads gas.
    """
    grace = dt.timedelta(days=limits["grace_days"])
    out = []
    for sensor in CALIBRATED_SENSORS:
        for kind, key in KINDS.items():
            last_text = records.get(sensor, {}).get(kind)
            try:
                # Anything but a date string (a number, a list: a hand-edited or damaged file) is
                # no record: the sensor counts as never tested, the worst case.
                last = dt.date.fromisoformat(last_text) if isinstance(last_text, str) and last_text else None
            except ValueError:
                last = None
            if last is None:
                out.append({"sensor": sensor, "kind": kind, "last": None, "due_on": None, "due": True,
                            "overdue": True})
                continue
            due_on = last + dt.timedelta(days=limits[key])
            out.append({"sensor": sensor, "kind": kind, "last": last.isoformat(),
                        "due_on": due_on.isoformat(), "due": today >= due_on,
                        "overdue": today > due_on + grace})
    return out


def due_and_overdue(rows: list[dict[str, Any]]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    due = tuple(s for s in CALIBRATED_SENSORS if any(r["due"] for r in rows if r["sensor"] == s))
    overdue = tuple(s for s in CALIBRATED_SENSORS if any(r["overdue"] for r in rows if r["sensor"] == s))
    return due, overdue


def newest_record(records: dict[str, dict[str, str]]) -> tuple[dt.date, str] | None:
    """The newest valid date in the records, and what it is ("co_cell bump"), or None."""
    best: tuple[dt.date, str] | None = None
    for sensor in CALIBRATED_SENSORS:
        for kind in KINDS:
            text = records.get(sensor, {}).get(kind)
            try:
                d = dt.date.fromisoformat(text) if isinstance(text, str) else None
            except ValueError:
                d = None
            if d is not None and (best is None or d > best[0]):
                best = (d, f"{sensor} {kind}")
    return best


def _iso_s(text: Any) -> float | None:
    """Epoch seconds of an ISO time with its offset (UTC if none), or None."""
    if not isinstance(text, str):
        return None
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.timestamp()


def journal_newest_ts(state_dir: str | Path, tail_bytes: int = JOURNAL_TAIL_BYTES) -> float | None:
    """The "ts" of the journal's last record that has one (looked for in its last `tail_bytes`, then
    in the rotated file's), as epoch seconds; None if there is none. The last one, not the largest:
    once the clock is right again, a record written while it ran ahead stops counting at the next
    start."""
    d = Path(state_dir)
    for path in (d / JOURNAL_FILE, d / (JOURNAL_FILE + ".1")):
        try:
            with open(path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - tail_bytes))
                chunk = f.read(tail_bytes)
        except OSError:
            continue
        newest = None
        for line in chunk.split(b"\n"):
            try:
                rec = json.loads(line)
            except ValueError:    # a partial first line of the chunk, a torn last one
                continue
            t = _iso_s(rec.get("ts")) if isinstance(rec, dict) else None
            if t is not None:
                newest = t
        if newest is not None:
            return newest
    return None


def latch_written(state_dir: str | Path) -> float | None:
    """When the latch file says it was written (epoch seconds), or None."""
    try:
        doc = json.loads((Path(state_dir) / LATCH_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return _iso_s(doc.get("written")) if isinstance(doc, dict) else None


def build_time() -> float:
    """When this package was built or installed: the newest mtime of its .py files, never earlier
    than NOT_BEFORE (epoch seconds)."""
    newest = NOT_BEFORE.timestamp()
    for root, _dirs, files in os.walk(Path(__file__).resolve().parent):
        for name in files:
            if name.endswith(".py"):
                try:
                    newest = max(newest, os.stat(os.path.join(root, name)).st_mtime)
                except OSError:
                    pass
    return newest


def _show_s(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="seconds")


class Tracker:
    """Pump-thread helper: every CHECK_PERIOD_S, tell the loop which sensors are due and overdue,
    and whether the wall clock can be trusted (`clock_implausible`, see the module's docstring).

    always: enforce even without a records file (real sensors). Otherwise (the simulated cell) the
    records apply only once a calibration.json exists in the state dir.
    wall: the wall clock (epoch seconds); the clock check and the date come from it.
    """

    def __init__(self, state_dir: str | Path, config: Any, loop: Any, *, always: bool,
                 wall: Callable[[], float] = time.time):
        self.dir = Path(state_dir)
        self.limits = config.calibration
        self.loop = loop
        self.always = always
        self.wall = wall
        self.next_check = float("-inf")
        self.last: tuple[tuple[str, ...], tuple[str, ...]] | None = None
        self.error: str | None = None
        self.newest: tuple[dt.date, str] | None = None   # the newest calibration record
        # What this run found before writing anything: (epoch seconds, what it is).
        evidence = [(build_time(), "the build")]
        t = latch_written(self.dir)
        if t is not None:
            evidence.append((t, f"{LATCH_FILE} written"))
        t = journal_newest_ts(self.dir)
        if t is not None:
            evidence.append((t, f"the last record of {JOURNAL_FILE}"))
        self.start_evidence = max(evidence)
        self.clock_implausible: bool | None = None       # as last told to the loop
        self.clock_why = ""                              # why, while it is implausible

    def tick(self, mono_s: float, today: dt.date | None = None) -> None:
        if mono_s < self.next_check:
            return
        self.next_check = mono_s + CHECK_PERIOD_S
        wall = self.wall()
        self.check(today or dt.date.fromtimestamp(wall))
        self.check_clock(wall)

    def check(self, today: dt.date) -> tuple[tuple[str, ...], tuple[str, ...]]:
        if not enforced(self.dir, self.always):
            result: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
            self.newest = None
        else:
            try:
                records = load(self.dir)
                self.error = None
            except CalibrationError as exc:
                records = {}      # unreadable records: every sensor counts as never tested
                self.error = str(exc)
            self.newest = newest_record(records)
            result = due_and_overdue(status(records, self.limits, today))
        if result != self.last:
            self.last = result
            self.loop.set_calibration(*result)
        return result

    def check_clock(self, wall_s: float) -> bool:
        """Judge the wall clock against the evidence; tell the loop on a change. True: implausible."""
        t, what = self.start_evidence
        if self.newest is not None:
            d, name = self.newest
            midnight = time.mktime(d.timetuple())   # the record's day began then (local time)
            if midnight > t:
                t, what = midnight, f"calibration record {name} {d.isoformat()}"
        bad = wall_s < t - CLOCK_SLACK_S
        self.clock_why = (f"wall clock {_show_s(wall_s)} is earlier than {what} ({_show_s(t)}) by more "
                          f"than {CLOCK_SLACK_S / 3600:g} h" if bad else "")
        if bad != self.clock_implausible:
            self.clock_implausible = bad
            self.loop.set_platform_alarm(CLOCK_ALARM, bad)
            if bad:
                log.warning("%s: %s; set the time (NTP or an RTC)", CLOCK_ALARM, self.clock_why)
            else:
                log.info("%s: cleared, the wall clock reads %s", CLOCK_ALARM, _show_s(wall_s))
        return bad


def enforced(state_dir: str | Path, always: bool) -> bool:
    """Whether the records are enforced: always on real sensors (`always`, --hal hardware); on the
    simulated cell only once a calibration.json exists in the state dir (a simulated sensor needs
    no bump test; recording one opts in). The Tracker and `show` both ask this, so they agree."""
    return always or (Path(state_dir) / CALIBRATION_FILE).exists()


def show(state_dir: str | Path, limits: dict[str, float], today: dt.date, *, always: bool = True,
         backend: str = "hardware") -> str:
    """The table of `crushcell calibration show`, as a controller on `backend` would judge it.

    always: as the Tracker's (True for --hal hardware). Without a calibration.json a simulated
    cell enforces nothing: the table then says so, and why, instead of "blocks start"."""
    rows = status(load(state_dir), limits, today)
    applies = enforced(state_dir, always)
    path = Path(state_dir) / CALIBRATION_FILE
    lines = []
    if not applies:
        lines += [f"{path}: none. On the simulated cell (--hal {backend}) the records apply only once a "
                  "calibration.json exists",
                  "(a simulated sensor needs no bump test; docs/safety.md, \"Calibration and bump tests\"), "
                  "so nothing below blocks start there.",
                  "On the board (--hal hardware) every sensor never recorded blocks start.", ""]
    elif not always:
        lines += [f"{path} exists: the simulated cell (--hal {backend}) enforces these records as the board "
                  "does.", ""]
    elif not path.exists():
        lines += [f"{path}: none. Judged for the board (--hal {backend}): every sensor never recorded blocks "
                  "start.",
                  "The simulated cell (--hal sim or mock, as in `make run`) applies the records only once a "
                  "calibration.json exists: crushcell calibration show --hal sim", ""]
    lines.append(f"{'sensor':<10} {'kind':<12} {'last':<11} {'due on':<11} status")
    for r in rows:
        state = "OVERDUE: blocks start" if r["overdue"] else ("due" if r["due"] else "ok")
        if r["last"] is None:
            state = "never recorded: blocks start"
        if not applies:   # no file, so no record either
            state = "never recorded: not enforced on the simulated cell"
        last, due_on = r["last"] or "-", r["due_on"] or "-"
        lines.append(f"{r['sensor']:<10} {r['kind']:<12} {last:<11} {due_on:<11} {state}")
    return "\n".join(lines) + "\n"
