"""What a person at the terminal sees of a running controller: the live status line, the start
banner and the exit summary.

Kept apart from the runtime so that the wiring (threads, files, signals) and the presentation can
change on their own.

The status line is redrawn in place (``\\r``, erase line) every 0.25 s on stderr, so it must never
wrap: a wrapped line leaves its head on the screen at every redraw. It is fitted to the terminal's
width (one column kept free), and when it does not fit, detail goes first, in this order: the
alarm list (shortened to "+N more", then a count), the clock, the sensors (dp, Tmat, CO, LEL, H2),
the long wording of the next action, the other causes, O2. The state, the first-out cause and the
next action stay: they say what happened and what to do.

Raw ANSI rather than a library such as `rich`: the view is one line with four colours, the
controller's only runtime dependency is paho-mqtt, and a board should not load a rendering
library to draw one line (docs: README "Commands").
"""

from __future__ import annotations

import math
import os
import shlex
import shutil
import sys
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from controller.logsetup import TERMINAL_LOCK, colour_enabled

# (snapshot key, label, decimals): "o2" is the voted O2; the others are sensors by name.
KEY_SENSORS = (("o2", "O2", 2), ("h2_cell", "H2", 2), ("lel_cell", "LEL", 1), ("co_cell", "CO", 0),
               ("temp_material", "Tmat", 0), ("dp_cell", "dp", 0))
SEP = " | "

BOLD, RED, GREEN, YELLOW, CYAN, RESET = "\033[1m", "\033[1;31m", "\033[32m", "\033[33m", "\033[36m", "\033[0m"
STATE_STYLE = {"TRIPPED": "\033[1;37;41m", "RUNNING": GREEN, "READY": GREEN, "PURGING": YELLOW,
               "STOPPING": YELLOW, "BOOT": CYAN, "IDLE": CYAN}

# Timer defaults (config/cell.toml) for a status line drawn without a config.
_TIMERS = {"self_test_s": 2.0, "purge_hold_s": 10.0, "rundown_s": 15.0, "reset_hold_s": 5.0}


# -- width ------------------------------------------------------------------------------------------
def cells(text: str) -> int:
    """Terminal columns `text` takes: wide (East Asian) characters 2, combining marks 0."""
    n = 0
    for ch in text:
        if unicodedata.combining(ch):
            continue
        n += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return n


def cut(text: str, width: int, ellipsis: str = "…") -> str:
    """`text` in at most `width` columns, ending in `ellipsis` when something was cut."""
    if cells(text) <= width:
        return text
    room = width - cells(ellipsis)
    if room <= 0:
        return ellipsis[:max(0, width)]
    out, used = [], 0
    for ch in text:
        w = cells(ch)
        if used + w > room:
            break
        out.append(ch)
        used += w
    return "".join(out) + ellipsis


def terminal_width(stream: Any = None, environ: Any = None) -> int:
    """Columns of the terminal `stream` writes to: $COLUMNS, the terminal's own size, else
    shutil.get_terminal_size() (which asks stdout, and falls back to 80)."""
    env = os.environ if environ is None else environ
    try:
        columns = int(env.get("COLUMNS", ""))
        if columns > 0:
            return columns
    except ValueError:
        pass
    try:
        return os.get_terminal_size((stream or sys.stderr).fileno()).columns or 80
    except (AttributeError, ValueError, OSError):
        return shutil.get_terminal_size().columns


# -- the next action in words -----------------------------------------------------------------------
def next_action(state: str, config: Any = None) -> list[str]:
    """What the operator does next in `state`, longest wording first (the status line takes the
    longest that fits). Numbers come from the config's timers, thresholds and cell.remote_reset."""
    timers = dict(_TIMERS)
    timers.update(getattr(config, "timers", None) or {})
    remote_reset = bool(getattr(config, "remote_reset", False))
    permissive = ((getattr(config, "thresholds", None) or {}).get("o2") or {}).get("start_permissive")

    def s(key: str) -> str:
        return f"{timers[key]:g} s"

    if state == "TRIPPED":
        where = "at the panel or over MQTT" if remote_reset else "at the panel"
        return [f"causes must clear for {s('reset_hold_s')}, then reset {where}",
                f"clear {s('reset_hold_s')}, then reset {where}",
                "reset (panel/MQTT)" if remote_reset else "reset at panel"]
    if state == "BOOT":
        return [f"self-test: every sensor healthy for {s('self_test_s')}, then IDLE",
                f"self-test {s('self_test_s')}", "self-test"]
    if state == "IDLE":
        return ["purge to inert (command purge)", "purge to inert", "purge"]
    if state == "PURGING":
        o2 = f"O2 below {permissive:g} % " if permissive is not None else "O2 low "
        return [f"inerting: {o2}for {s('purge_hold_s')}, then start when READY",
                "start when READY", "wait READY"]
    if state == "READY":
        return ["start when READY: command start (remote: key switch on)", "start when READY", "start"]
    if state == "RUNNING":
        return ["crushing: stop for a controlled stop", "stop to end", "stop"]
    if state == "STOPPING":
        return [f"run-down {s('rundown_s')}, then READY", f"run-down {s('rundown_s')}", "run-down"]
    return ["", ""]


# -- the status line --------------------------------------------------------------------------------
@dataclass
class _Seg:
    variants: list[str]          # richest first; "" means left out
    style: str = ""
    stops: dict[str, int] = field(default_factory=dict)   # named variants: "count", "short", "drop"
    at: int = 0                  # the variant in use

    @property
    def text(self) -> str:
        return self.variants[self.at]


def _listed(label: str, names: list[str], count: str) -> _Seg:
    """`label: a, b, c`, then `label: a, b +1 more` ... `label: a +2 more`, the count, left out."""
    n = len(names)
    variants = [f"{label}: {', '.join(names)}"]
    variants += [f"{label}: {', '.join(names[:k])} +{n - k} more" for k in range(n - 1, 0, -1)]
    variants += [count, ""]
    return _Seg(variants, stops={"count": n, "drop": n + 1})


def _value(v: float, decimals: int, unit: str) -> str:
    return f"{v:.{decimals}f} {unit}".rstrip()


def _segments(snap: Any, config: Any) -> dict[str, _Seg]:
    from cellspec.names import SENSORS

    sensors = getattr(config, "sensors", None) or {}

    def unit(name: str) -> str:
        sc = sensors.get(name)
        return getattr(sc, "unit", "") if sc is not None else ""

    drop = {"drop": 1}
    segs: dict[str, _Seg] = {"state": _Seg([snap.state], STATE_STYLE.get(snap.state, ""))}
    causes = list(snap.causes)
    if causes:   # the core keeps the latched causes in the order they latched: the first is first-out
        segs["first"] = _Seg([f"first-out: {causes[0]}", f"1st: {causes[0]}"], RED, {"short": 1})
        if causes[1:]:
            n = len(causes) - 1
            segs["causes"] = _listed("also", causes[1:], f"+{n} cause{'s' * (n > 1)}")
    action = next_action(snap.state, config)
    segs["action"] = _Seg(action, BOLD, {"medium": min(1, len(action) - 1), "short": len(action) - 1})
    segs["t"] = _Seg([f"t={snap.t:.1f}s", ""], stops=drop)
    for key, label, decimals in KEY_SENSORS:
        if key == "o2":
            v = snap.voted_o2
            o2 = [i for i, n in enumerate(SENSORS) if n.startswith("o2_")]
            good = sum(1 for i in o2 if snap.quality[i] == "good")
            text = "----" if v != v else _value(v, decimals, unit("o2_a"))
            segs["O2"] = _Seg([f"O2 {text} ({good}/{len(o2)})", ""], RED if good < len(o2) else "", drop)
        else:
            i = SENSORS.index(key)
            v = snap.values[i]
            ok = snap.quality[i] == "good" and not math.isnan(v)
            segs[label] = _Seg([f"{label} {_value(v, decimals, unit(key)) if ok else 'FAULT'}", ""],
                               "" if ok else RED, drop)
    alarms = [a[0] + ("" if a[2] else "!") for a in snap.alarms]
    if alarms:
        segs["alarms"] = _listed("alarms", alarms, f"{len(alarms)} alarm{'s' * (len(alarms) > 1)}")
        segs["alarms"].style = YELLOW
    return segs


ORDER = ("state", "first", "causes", "action", "O2", "H2", "LEL", "CO", "Tmat", "dp", "alarms", "t")
# What gives way when the line is too long, in this order (each: that part down to that variant).
# The alarm list goes first, name by name ("+N more") down to a count, before any of these.
SHRINK = (("t", "drop"), ("dp", "drop"), ("Tmat", "drop"), ("CO", "drop"), ("LEL", "drop"), ("H2", "drop"),
          ("action", "medium"), ("causes", "count"), ("alarms", "drop"), ("O2", "drop"), ("causes", "drop"),
          ("action", "short"), ("first", "short"))
# Then what is given back while it fits, most useful first; the sensors in their order, stopping at
# the first that does not fit (never O2 and dp with the three between missing).
GROW = ("first", "action", "causes", "O2", "H2", "LEL", "CO", "Tmat", "dp", "alarms", "t")
CHAIN = ("O2", "H2", "LEL", "CO", "Tmat", "dp")


def _join(segs: dict[str, _Seg], colour: bool) -> tuple[str, int]:
    parts, plain = [], []
    for key in ORDER:
        seg = segs.get(key)
        if seg is None or not seg.text:
            continue
        plain.append(seg.text)
        parts.append(seg.style + seg.text + RESET if colour and seg.style else seg.text)
    return SEP.join(parts), cells(SEP.join(plain))


def status_line(snap: Any, config: Any = None, width: int | None = 200, colour: bool = False) -> str:
    """One line: state, first-out cause, other causes, next action, key sensors with units,
    alarms (`!` = not acknowledged). At most `width - 1` columns (the last one stays free so the
    terminal never wraps); None: no limit."""
    segs = _segments(snap, config)
    line, used = _join(segs, colour)
    if width is None:
        return line
    limit = max(1, width - 1)
    alarms = segs.get("alarms")
    while used > limit and alarms is not None and alarms.at < alarms.stops["count"]:
        alarms.at += 1   # the alarm list first, name by name, down to a count
        line, used = _join(segs, colour)
    for key, stop in SHRINK:
        if used <= limit:
            break
        seg = segs.get(key)
        if seg is not None and seg.at < seg.stops.get(stop, -1):
            seg.at = seg.stops[stop]
            line, used = _join(segs, colour)
    # Give back what still fits, most useful first (one long part may have made room).
    chain_broken = False
    for key in GROW:
        seg = segs.get(key)
        if seg is None or (chain_broken and key in CHAIN):
            continue
        while seg.at > 0 and used <= limit:
            seg.at -= 1
            line, used = _join(segs, colour)
            if used > limit:
                seg.at += 1
                line, used = _join(segs, colour)
                chain_broken = chain_broken or key in CHAIN
                break
    first = segs.get("first")
    if used > limit and first is not None:
        # The first-out cause's name itself, shortened with an ellipsis (its label stays).
        label = "1st: "
        room = cells(first.text) - (used - limit) - len(label)
        if room > 1:
            first.variants.append(label + cut(first.text[len(label):], room))
            first.at = len(first.variants) - 1
            line, used = _join(segs, colour)
    if used > limit:   # a terminal narrower than any sensible line: cut, never wrap
        plain, _ = _join(segs, False)
        line = cut(plain, limit)
    return line


class StatusLine:
    """The live status line on a terminal: drawn in place, cleared before any other line."""

    def __init__(self, config: Any = None, stream: Any = None, colour: bool | None = None,
                 width: int | None = None):
        self.config = config
        self.stream = sys.stderr if stream is None else stream
        self.colour = colour_enabled(self.stream) if colour is None else colour
        self.fixed_width = width
        self.shown = False

    def width(self) -> int:
        return self.fixed_width or terminal_width(self.stream)

    def draw(self, snap: Any) -> None:
        text = status_line(snap, self.config, self.width(), self.colour)
        with TERMINAL_LOCK:
            self.stream.write("\r\033[K" + text)
            self.stream.flush()
            self.shown = True

    def clear(self) -> None:
        """Erase the line (before a log or event line is written to the same terminal)."""
        with TERMINAL_LOCK:
            if self.shown:
                self.stream.write("\r\033[K")
                self.stream.flush()
                self.shown = False


# -- the banner and the summary ---------------------------------------------------------------------
SUMMARY_TRIPS = 20   # trips the exit summary lists (the count covers them all; the journal has each)


@dataclass
class RunRecord:
    """What the pump saw go by, for the exit summary: counts, trips, the `end` record."""

    events: int = 0
    journaled: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    trips: list[tuple[float, list[str]]] = field(default_factory=list)   # the last SUMMARY_TRIPS
    trip_count: int = 0
    end: dict | None = None

    def feed(self, events: list[dict], journaled_types: tuple[str, ...] = ()) -> None:
        for e in events:
            self.events += 1
            seq = e.get("seq")
            if isinstance(seq, int):
                if self.first_seq is None:
                    self.first_seq = seq
                self.last_seq = seq
            kind = e.get("type")
            if kind in journaled_types:
                self.journaled += 1
            if kind == "trip":
                # Bounded: a controller that runs for months must not keep every trip in memory
                # (the journal has them all; the summary names the count and the last ones).
                self.trip_count += 1
                self.trips.append((float(e.get("t") or 0.0), [str(c) for c in e.get("causes") or []]))
                if len(self.trips) > SUMMARY_TRIPS:
                    del self.trips[0]
            elif kind == "end":
                self.end = e


def journal_command(state_dir: str) -> str:
    return f"crushcell journal --state-dir {shlex.quote(str(state_dir))}"


def banner_lines(*, version: str, config: Any, hal: str, hal_detail: str, broker: str, state_dir: str,
                 events_path: str | None, stop: str) -> list[str]:
    """The start banner: what runs, on what, talking to whom, keeping state where, how to stop."""
    sha = getattr(config, "sha256", "") or "?"
    cell = getattr(config, "cell_id", "?")
    lines = [f"crushcell {version}: cell {cell}, controller starting (pid {os.getpid()})",
             f"  config     {getattr(config, 'path', '?')} (sha256 {sha})",
             f"  hal        {hal}" + (f" ({hal_detail})" if hal_detail else ""),
             f"  broker     {broker}",
             f"  state dir  {state_dir} (latch, audit journal, outbox): {journal_command(state_dir)}",
             "  events     JSON lines on stdout" + (f", appended to {events_path}" if events_path else ""),
             f"  stop       {stop}"]
    return lines


def summary_lines(record: RunRecord, *, state_dir: str, events_path: str | None, why: str,
                  config: Any = None) -> list[str]:
    """The exit summary: how it ended, trips and their causes, events written, how to read them."""
    end = record.end or {}
    state = end.get("state", "?")
    causes = list(end.get("causes") or [])
    t = end.get("t")
    head = f"crushcell: stopped ({why})" + (f" at t={t:.1f} s" if isinstance(t, int | float) else "")
    head += f"; final state {state}"
    if causes:
        action = next_action("TRIPPED", config)[0]
        head += f", latched: {', '.join(causes)} (first-out {causes[0]}; kept across a restart: {action})"
    lines = [head]
    if record.trips:
        trips = "; ".join(f"t={t:.1f} s {', '.join(c)}" for t, c in record.trips)
        shown = "" if record.trip_count == len(record.trips) else f" (the last {len(record.trips)})"
        lines.append(f"  trips      {record.trip_count}{shown}: {trips}")
    else:
        lines.append("  trips      none")
    seqs = f" (seq {record.first_seq} to {record.last_seq})" if record.first_seq is not None else ""
    where = f"{record.journaled} in the audit journal"
    if events_path:
        where += f", all in {events_path}"
    lines.append(f"  events     {record.events} written{seqs}: {where}")
    lines.append(f"  journal    {journal_command(state_dir)}")
    return lines
