"""Bump tests and calibrations of the gas sensors: records, due dates, and what the core is told.

Why: a gas sensor that drifts or is poisoned stays "healthy" by every check the controller can
make (range, NaN, stale, stuck all pass). Only a bump test (apply gas, see it answer) and a
calibration catch it, so their dates are tracked per sensor and enforced: past its interval a
sensor raises `calibration_due:<sensor>`; past interval + grace the `start` permissive refuses.
The core never reads a clock or a file: `Tracker.check()` runs in the pump thread and hands the
result to the loop (`ScanLoop.set_calibration`).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from controller.names import CALIBRATED_SENSORS
from controller.persist import atomic_write

CALIBRATION_FILE = "calibration.json"
KINDS = {"bump": "bump_interval_days", "calibration": "calibration_interval_days"}
CHECK_PERIOD_S = 60.0     # the pump re-reads the records and the date this often


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
                last = dt.date.fromisoformat(last_text) if last_text else None
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


class Tracker:
    """Pump-thread helper: every CHECK_PERIOD_S, tell the loop which sensors are due and overdue.

    always: enforce even without a records file (real sensors). Otherwise (the simulated cell) the
    records apply only once a calibration.json exists in the state dir.
    """

    def __init__(self, state_dir: str | Path, config: Any, loop: Any, *, always: bool):
        self.dir = Path(state_dir)
        self.limits = config.calibration
        self.loop = loop
        self.always = always
        self.next_check = float("-inf")
        self.last: tuple[tuple[str, ...], tuple[str, ...]] | None = None
        self.error: str | None = None

    def tick(self, mono_s: float, today: dt.date | None = None) -> None:
        if mono_s < self.next_check:
            return
        self.next_check = mono_s + CHECK_PERIOD_S
        self.check(today or dt.date.today())

    def check(self, today: dt.date) -> tuple[tuple[str, ...], tuple[str, ...]]:
        if not self.always and not (self.dir / CALIBRATION_FILE).exists():
            result: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
        else:
            try:
                records = load(self.dir)
                self.error = None
            except CalibrationError as exc:
                records = {}      # unreadable records: every sensor counts as never tested
                self.error = str(exc)
            result = due_and_overdue(status(records, self.limits, today))
        if result != self.last:
            self.last = result
            self.loop.set_calibration(*result)
        return result


def show(state_dir: str | Path, limits: dict[str, float], today: dt.date) -> str:
    rows = status(load(state_dir), limits, today)
    lines = [f"{'sensor':<10} {'kind':<12} {'last':<11} {'due on':<11} status"]
    for r in rows:
        state = "OVERDUE: blocks start" if r["overdue"] else ("due" if r["due"] else "ok")
        if r["last"] is None:
            state = "never recorded: blocks start"
        last, due_on = r["last"] or "-", r["due_on"] or "-"
        lines.append(f"{r['sensor']:<10} {r['kind']:<12} {last:<11} {due_on:<11} {state}")
    return "\n".join(lines) + "\n"
