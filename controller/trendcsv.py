"""Trend CSV: one row per interval of controller time, for a spreadsheet, a plot or a local record.

`crushcell simulate --telemetry FILE.csv` writes it from simulated time, `crushcell run --telemetry
FILE.csv` from the running controller (the pump thread, never the scan thread). Both write the
same columns from the same loop Snapshot, so a chart or a script reads either:

    t, [ts,] state, voted_o2, <sensor>, <sensor>_quality (every sensor), in_<input>, out_<output>,
    causes

- `t`: controller time in seconds (simulated time in `simulate`; since start in `run`).
- `ts`: `run` only: the wall clock, Unix seconds (a spreadsheet converts it with
  =ts/86400+DATE(1970,1,1)); simulated time has no wall clock.
- values are rounded to the decimals each sensor's `resolution` implies (as on MQTT); an empty
  cell is a missing value (NaN). `voted_o2` uses the O2 sensors' decimals.
- inputs and outputs are 1 or 0; `causes` the latched trip causes, separated by spaces.

Why plain rows and no units in the header: every spreadsheet, pandas and `csv` read it as it is;
the units are each sensor's `unit` in the configuration (README, "Trend CSV").

`run` rotates the file by size (RotatingTrendFile): FILE.csv is the newest, FILE.1.csv the one
before, up to TREND_FILES files in all, each with its own header row, so each opens on its own.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import IO, Any

from cellspec.names import INPUTS, O2_SENSORS, OUTPUTS, SENSORS
from controller.link.payloads import decimals

TREND_EVERY_S = 1.0                     # one row per second of controller time
TREND_MAX_BYTES = 10 * 1024 * 1024      # `run`: one CSV file; then it rotates
TREND_FILES = 10                        # `run`: FILE.csv + FILE.1.csv .. FILE.9.csv (100 MiB)


def columns(wall_clock: bool = False) -> list[str]:
    """The header row; `wall_clock` adds `ts` after `t` (`run`)."""
    cols = ["t", "ts"] if wall_clock else ["t"]
    cols += ["state", "voted_o2"]
    for name in SENSORS:
        cols += [name, f"{name}_quality"]
    cols += [f"in_{name}" for name in INPUTS]
    cols += [f"out_{name}" for name in OUTPUTS]
    cols.append("causes")
    return cols


def places_for(config: Any) -> dict[str, int | None]:
    """Decimals per sensor from its `resolution` (0.005 -> 3, 0.0625 -> 2); `voted_o2` too."""
    sensors = getattr(config, "sensors", {}) or {}
    places = {name: decimals(getattr(sensors.get(name), "resolution", None)) for name in SENSORS}
    o2 = [places[n] for n in O2_SENSORS if places.get(n) is not None]
    places["voted_o2"] = max(o2) if o2 else None
    return places


def number(value: float, places: int | None) -> str:
    """A value as text: empty for NaN and infinities, else rounded to `places` decimals."""
    if value != value or math.isinf(value):
        return ""
    if places is None:
        return repr(float(value))
    return f"{value:.{places}f}"


def seconds(t: float) -> str:
    return repr(round(float(t), 3))


class Rows:
    """Turns loop Snapshots into CSV lines."""

    def __init__(self, config: Any, wall_clock: bool = False):
        self.wall_clock = wall_clock
        self.header = ",".join(columns(wall_clock)) + "\n"
        p = places_for(config)
        self.places = [p[name] for name in SENSORS]
        self.o2_places = p["voted_o2"]

    def line(self, snap: Any, ts: float | None = None) -> str:
        out = [seconds(snap.t)]
        if self.wall_clock:
            out.append("" if ts is None else f"{ts:.3f}")
        out += [snap.state, number(snap.voted_o2, self.o2_places)]
        places, values, quality = self.places, snap.values, snap.quality
        for i in range(len(SENSORS)):
            out.append(number(values[i], places[i]))
            out.append(quality[i])
        out += ["1" if v else "0" for v in snap.inputs]
        out += ["1" if v else "0" for v in snap.outputs]
        out.append(" ".join(snap.causes))
        return ",".join(out) + "\n"


class Sampler:
    """The first snapshot at or after each multiple of `every_s` becomes a row (integer ms, so that
    simulated time gives rows at exactly 0, 1, 2, ... s)."""

    def __init__(self, every_s: float = TREND_EVERY_S):
        if not (every_s > 0 and math.isfinite(every_s)):
            raise ValueError(f"the telemetry interval must be a number of seconds above 0, not {every_s}")
        self.every_ms = max(1, int(round(every_s * 1000)))
        self.next_ms = 0

    def due(self, t_s: float) -> bool:
        return int(round(t_s * 1000)) >= self.next_ms

    def taken(self, t_s: float) -> None:
        ms = int(round(t_s * 1000))
        self.next_ms = (ms // self.every_ms + 1) * self.every_ms


def parse_size(text: str) -> int:
    """A size in bytes: 10485760, 512K, 10M, 1G (binary multiples). ValueError when it is not."""
    s = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = 1
    if s and s[-1] in "KMG":
        mult = 1024 ** ("KMG".index(s[-1]) + 1)
        s = s[:-1]
    try:
        value = float(s)
    except ValueError:
        raise ValueError(f"{text!r} is not a size (give bytes, or e.g. 512K, 10M, 1G)") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{text!r} must be a size above 0")
    return int(value * mult)


# -- simulate ------------------------------------------------------------------------------------------
class SimRecorder:
    """What `crushcell simulate` hands to scenario.simulate(): samples the loop after its scans,
    writes CSV rows to `stream` (if any) and keeps the trend for a chart (if `trend` is given)."""

    def __init__(self, config: Any, every_s: float = TREND_EVERY_S, stream: IO[str] | None = None,
                 trend: Any = None):
        self.rows = Rows(config)
        self.sampler = Sampler(every_s)
        self.stream = stream
        self.trend = trend
        self.count = 0
        if stream is not None:
            stream.write(self.rows.header)

    def on_events(self, events: list[dict]) -> None:
        if self.trend is not None:
            self.trend.add_events(events)

    def on_scan(self, loop: Any) -> None:
        t = loop.core.now / 1000.0
        if not self.sampler.due(t):
            return
        self.sampler.taken(t)
        snap = loop.snapshot()
        self.count += 1
        if self.stream is not None:
            self.stream.write(self.rows.line(snap))
        if self.trend is not None:
            self.trend.add(snap)


# -- run -----------------------------------------------------------------------------------------------
class RotatingTrendFile:
    """`run --telemetry`: rows appended to FILE.csv, rotated by size.

    Written by the pump thread only. A file that starts with another header (an older or newer
    crushcell) is rotated away before the first row, so every file has one set of columns; a file
    whose last line a crash cut gets a newline first. Write errors (a full disk) never reach the
    safety loop: offer() returns a message once per kind of error, drops the row and tries again
    with the next one.
    """

    def __init__(self, path: str | Path, config: Any, every_s: float = TREND_EVERY_S,
                 max_bytes: int = TREND_MAX_BYTES, files: int = TREND_FILES):
        if files < 1:
            raise ValueError("keep at least 1 telemetry file")
        self.path = Path(path)
        self.rows = Rows(config, wall_clock=True)
        self.sampler = Sampler(every_s)
        self.max_bytes = int(max_bytes)
        self.files = int(files)
        self.stream: IO[str] | None = None
        self.size = 0
        self.written = 0
        self.rotations = 0
        self._errors_told: set[str] = set()
        self.open()

    def name(self, k: int) -> Path:
        """FILE.csv (k = 0), FILE.1.csv, FILE.2.csv, ...: older files keep the extension."""
        if k == 0:
            return self.path
        return self.path.with_name(f"{self.path.stem}.{k}{self.path.suffix}")

    def open(self) -> None:
        header = self.rows.header.encode()
        try:
            with open(self.path, "rb") as f:
                first = f.readline()
                f.seek(0, os.SEEK_END)
                size = f.tell()
                torn = False
                if size:
                    f.seek(-1, os.SEEK_END)
                    torn = f.read(1) != b"\n"
        except FileNotFoundError:
            first, size, torn = b"", 0, False
        if size and first != header:
            self._shift()
            size, torn = 0, False
        stream = open(self.path, "a", encoding="utf-8", newline="")  # noqa: SIM115 - kept open
        try:
            if torn:
                stream.write("\n")
            if size == 0:
                stream.write(self.rows.header)
            stream.flush()
        except OSError:
            stream.close()
            raise
        self.stream = stream
        self.size = stream.tell()

    def _shift(self) -> None:
        """FILE.csv -> FILE.1.csv -> ... ; the oldest beyond `files` is overwritten."""
        if self.files == 1:
            self.path.unlink(missing_ok=True)
            return
        for k in range(self.files - 1, 0, -1):
            src = self.name(k - 1)
            if src.exists():
                os.replace(src, self.name(k))

    def rotate(self) -> None:
        self.close()
        self._shift()
        self.rotations += 1
        self.open()

    def offer(self, snap: Any, ts: float) -> str | None:
        """Write `snap` if a row is due; a message (once per kind of error) if writing failed."""
        if snap is None or not self.sampler.due(snap.t):
            return None
        self.sampler.taken(snap.t)
        line = self.rows.line(snap, ts)
        try:
            if self.stream is None:
                self.open()
            n = len(line.encode())
            if self.size > len(self.rows.header) and self.size + n > self.max_bytes:
                self.rotate()
            assert self.stream is not None
            self.stream.write(line)
            self.stream.flush()
            self.size += n
            self.written += 1
        except OSError as exc:
            self.close()
            kind = f"{type(exc).__name__}:{exc.errno}"
            if kind in self._errors_told:
                return None
            self._errors_told.add(kind)
            return (f"cannot write telemetry to {self.path}: {exc.strerror or exc}; rows are dropped "
                    "until it can (the controller runs on)")
        return None

    def close(self) -> None:
        stream, self.stream = self.stream, None
        if stream is not None:
            try:
                stream.close()
            except OSError:
                pass
