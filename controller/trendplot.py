"""Trend charts: `crushcell simulate SCENARIO --plot FILE.png|.svg|.pdf` and `crushcell plot FILE.csv`.

One page, A4 landscape: a strip with the states (shaded bands, named) and numbered trip markers,
then voted O2 and the three O2 sensors, the temperatures (gas, material), dp_cell, and %LEL in the
cell and at the RTO inlet, each panel with its warning and trip lines from the configuration. Made
to be printed: line styles (not colours alone) tell the lines apart, every limit line is labelled
with its name and value, fonts are 8 to 12 pt at print size.

matplotlib is an optional dependency (the `plot` extra): imported inside render() only, with the
Agg renderer and no pyplot (no global state, no display). `crushcell run` never imports this
module's matplotlib side.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from cellspec.names import O2_SENSORS

FORMATS = (".png", ".svg", ".pdf")
DPI = 150
PIXELS = (1754, 1240)       # PNG: A4 landscape (297 x 210 mm) at 150 dpi
PAGE_IN = (PIXELS[0] / DPI, PIXELS[1] / DPI)
PNG_COLOURS = 256           # the PNG is stored with a palette: a third of the size, no visible loss
MAX_POINTS = 20_000         # samples kept per line; a longer trend is thinned evenly (said on the chart)
INSTALL_HINT = "pip install 'crushcell[plot]'"

# The plotted columns (trend CSV names) and how each line is drawn: label, colour, dashes, width.
# Colours help on screen; the dash patterns and widths are what tell lines apart in greyscale.
LINES = {
    "voted_o2": ("voted O2", "#000000", "-", 2.4),
    "o2_a": ("o2_a", "#2166ac", (0, (6, 2)), 1.1),
    "o2_b": ("o2_b", "#1b7837", (0, (1, 1.5)), 1.3),
    "o2_c": ("o2_c", "#762a83", (0, (6, 2, 1, 2)), 1.1),
    "temp_gas": ("temp_gas", "#2166ac", "-", 1.6),
    "temp_material": ("temp_material", "#000000", (0, (6, 2)), 1.6),
    "dp_cell": ("dp_cell", "#000000", "-", 1.4),
    "lel_cell": ("lel_cell", "#000000", "-", 1.6),
    "lel_rto": ("lel_rto (RTO inlet)", "#b35806", (0, (6, 2)), 1.6),
}
PLOTTED = tuple(LINES)

# State bands: light fills of clearly different lightness, TRIPPED hatched, and the name written
# in the band on the state strip, so that greyscale loses nothing.
STATE_STYLE = {
    "BOOT": ("#d9d9d9", None),
    "IDLE": ("#ffffff", None),
    "PURGING": ("#c6dbef", None),
    "READY": ("#e5f5e0", None),
    "RUNNING": ("#a1d99b", None),
    "STOPPING": ("#fdd0a2", None),
    "TRIPPED": ("#fcbba1", "////"),
}
TRIP_COLOUR = "#99000d"
WARN_STYLE = ("#b35806", (0, (4, 2)), 1.0)     # warning lines: dashed
TRIP_STYLE = ("#99000d", "-", 1.2)             # trip lines: solid
MAX_TRIP_KEYS = 6                              # trips listed in the key; more are counted


class PlotUnavailable(Exception):
    """matplotlib is not installed (or broken): a usage error that names the extra."""


def require() -> None:
    """Raise PlotUnavailable now, before a long simulation, when matplotlib cannot be imported."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError as exc:
        raise PlotUnavailable(f"a chart needs matplotlib, which is not installed ({exc}). "
                              f"Install it with: {INSTALL_HINT}") from None


def check_path(path: str) -> str:
    """The file's format from its extension, or ValueError naming the ones we write."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"{path}: give a file ending in {', '.join(FORMATS)} (the format follows the "
                         "extension)")
    return suffix[1:]


# -- the data ------------------------------------------------------------------------------------------
class Trend:
    """The plotted columns of a trend, the state changes and the trips.

    Fed with loop Snapshots and events (simulate), or read from a trend CSV. Every `stride`-th
    sample is kept. A value whose quality is not `good` is kept out (a gap in its line): the chart
    shows what the controller trusted.
    """

    def __init__(self, stride: int = 1, every_s: float | None = None):
        self.stride = max(1, int(stride))
        self.every_s = every_s
        self.t: list[float] = []
        self.series: dict[str, list[float]] = {name: [] for name in PLOTTED}
        self.row_states: list[str] = []
        self.row_causes: list[tuple[str, ...]] = []
        self.states: list[tuple[float, str]] | None = None     # exact, from state events
        self.trips: list[tuple[float, list[str]]] | None = None
        self.end_t: float | None = None
        self._seen = 0
        self._index: dict[str, int] | None = None

    # simulate
    def add(self, snap: Any) -> None:
        from cellspec.names import SENSORS

        self._seen += 1
        if (self._seen - 1) % self.stride:
            return
        if self._index is None:
            self._index = {name: i for i, name in enumerate(SENSORS)}
        self.t.append(snap.t)
        for name in PLOTTED:
            if name == "voted_o2":
                v = snap.voted_o2
            else:
                i = self._index[name]
                v = snap.values[i] if snap.quality[i] == "good" else math.nan
            self.series[name].append(float(v))
        self.row_states.append(snap.state)
        self.row_causes.append(tuple(snap.causes))

    def add_events(self, events: list[dict]) -> None:
        for e in events:
            kind = e.get("type")
            if kind == "state":
                if self.states is None:
                    self.states = []
                self.states.append((float(e["t"]), str(e["to"])))
            elif kind == "trip":
                if self.trips is None:
                    self.trips = []
                self.trips.append((float(e["t"]), [str(c) for c in e.get("causes", [])]))
            elif kind == "end":
                self.end_t = float(e["t"])

    # a CSV written before
    @classmethod
    def from_csv(cls, path: str | Path, max_points: int = MAX_POINTS) -> Trend:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in ("t", "state", *PLOTTED) if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{path}: not a crushcell trend CSV (no column {', '.join(missing)})")
            rows = list(reader)
        stride = max(1, math.ceil(len(rows) / max_points))
        trend = cls(stride=1)
        for row in rows[::stride]:
            try:
                t = float(row["t"])
            except (TypeError, ValueError):
                continue   # a line a crash cut short
            trend.t.append(t)
            for name in PLOTTED:
                text = row.get(name) or ""
                quality = row.get(f"{name}_quality", "good")
                try:
                    v = float(text) if text and quality == "good" else math.nan
                except ValueError:
                    v = math.nan
                trend.series[name].append(v)
            trend.row_states.append(row.get("state") or "")
            trend.row_causes.append(tuple((row.get("causes") or "").split()))
        if len(trend.t) > 1:
            diffs = sorted(b - a for a, b in zip(trend.t, trend.t[1:], strict=False))
            trend.every_s = diffs[len(diffs) // 2]
        return trend

    def state_spans(self) -> list[tuple[float, float, str]]:
        """(start, end, state) for each stretch, from the events if there were any, else the rows."""
        if not self.t:
            return []
        end = self.end_t if self.end_t is not None else self.t[-1]
        changes = self.states
        if not changes:
            changes = []
            for t, s in zip(self.t, self.row_states, strict=True):
                if not changes or changes[-1][1] != s:
                    changes.append((t, s))
        spans = []
        for k, (t, s) in enumerate(changes):
            stop = changes[k + 1][0] if k + 1 < len(changes) else end
            if stop > t or k + 1 == len(changes):
                spans.append((t, max(stop, t), s))
        return spans

    def trip_marks(self) -> list[tuple[float, list[str]]]:
        """Each trip: its time and the causes it latched (from the events, else from the rows:
        the first row that shows a cause, at the row's time)."""
        if self.trips is not None:
            return list(self.trips)
        marks: list[tuple[float, list[str]]] = []
        before: set[str] = set()
        for t, causes in zip(self.t, self.row_causes, strict=True):
            new = [c for c in causes if c not in before]
            if new:
                marks.append((t, new))
            before = set(causes)
        return marks


# -- the chart -----------------------------------------------------------------------------------------
def _limits(config: Any, name: str) -> list[tuple[str, float, str]]:
    """(label, value, kind) of the warning and trip lines of one threshold table."""
    th = getattr(config, "thresholds", {}).get(name, {})
    out = []
    for key, kind in (("warning", "warning"), ("warning_low", "warning"), ("warning_high", "warning"),
                      ("trip", "trip")):
        if key in th:
            out.append((key.replace("_", " "), float(th[key]), kind))
    return out


def _unit(config: Any, name: str) -> str:
    sensor = getattr(config, "sensors", {}).get(name)
    unit = getattr(sensor, "unit", "") or ""
    return {"C": "°C", "degC": "°C"}.get(unit, unit)


def render(trend: Trend, config: Any, path: str | Path, *, title: str, subtitle: str = "") -> None:
    """Draw the chart into `path` (PNG, SVG or PDF by extension)."""
    fmt = check_path(str(path))
    require()
    import matplotlib
    from matplotlib.figure import Figure

    rc = {"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 9,
          "xtick.labelsize": 9, "ytick.labelsize": 9, "svg.hashsalt": "crushcell",
          "font.family": "DejaVu Sans", "hatch.linewidth": 0.6}
    with matplotlib.rc_context(rc):
        fig = Figure(figsize=PAGE_IN, dpi=DPI, layout="constrained")
        fig.get_layout_engine().set(rect=(0.0, 0.035, 1.0, 0.965))   # room for the notes below
        grid = fig.add_gridspec(5, 1, height_ratios=[0.8, 2.0, 1.6, 1.25, 1.6])
        strip = fig.add_subplot(grid[0])
        panels = [fig.add_subplot(grid[k], sharex=strip) for k in range(1, 5)]
        t = trend.t
        spans = trend.state_spans()
        t0 = spans[0][0] if spans else (t[0] if t else 0.0)
        t1 = spans[-1][1] if spans else (t[-1] if t else 1.0)
        if t1 <= t0:
            t1 = t0 + 1.0
        _draw_states(strip, panels, spans, t0, t1)
        o2, temp, dp, lel = panels
        for name in ("voted_o2", *O2_SENSORS):
            _line(o2, t, trend.series[name], name)
        _o2_scale(o2, trend, config)
        _thresholds(o2, [("", _limits(config, "o2"))])
        o2.set_ylabel(f"O2 ({_unit(config, 'o2_a') or '%'})")
        for name in ("temp_gas", "temp_material"):
            _line(temp, t, trend.series[name], name)
        _thresholds(temp, [("gas ", _limits(config, "temp_gas")),
                           ("material ", _limits(config, "temp_material"))])
        temp.set_ylabel(f"temperature ({_unit(config, 'temp_gas')})")
        _line(dp, t, trend.series["dp_cell"], "dp_cell")
        _thresholds(dp, [("", _limits(config, "dp_cell"))])
        dp.set_ylabel(f"dp_cell ({_unit(config, 'dp_cell')})")
        for name in ("lel_cell", "lel_rto"):
            _line(lel, t, trend.series[name], name)
        _thresholds(lel, [("cell ", _limits(config, "lel_cell")), ("RTO ", _limits(config, "lel_rto"))])
        lel.set_ylabel(f"flammables ({_unit(config, 'lel_cell')})")
        for ax in panels:
            ax.grid(True, axis="both", color="#bdbdbd", linewidth=0.5, linestyle=(0, (1, 2)))
            ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), borderaxespad=0.0, frameon=False,
                      handlelength=3.2)
            ax.tick_params(labelbottom=False)
        lel.tick_params(labelbottom=True)
        lel.set_xlabel("t (s, controller time)")
        strip.set_xlim(t0, t1)
        _draw_trips(strip, panels, trend.trip_marks(), t0, t1)
        fig.suptitle(title, fontsize=12, fontweight="bold", x=0.01, ha="left")
        notes = [subtitle] if subtitle else []
        if trend.every_s:
            notes.append(f"sampled every {trend.every_s * trend.stride:g} s")
        notes.append("a reading whose quality is not good is left out (a gap in its line)")
        fig.text(0.01, 0.005, "\n".join(_wrap("; ".join(notes), 190)), fontsize=8, ha="left", va="bottom",
                 color="#404040")
        metadata: dict[str, Any] = {"png": {"Software": None}, "svg": {"Date": None},
                                    "pdf": {"CreationDate": None}}[fmt]
        if fmt == "png":
            _save_png(fig, path, metadata)
        else:
            fig.savefig(path, format=fmt, metadata=metadata)


def _save_png(fig: Any, path: str | Path, metadata: dict) -> None:
    """A palette PNG (PNG_COLOURS colours): a third of the size of the RGBA one matplotlib writes.
    Pillow comes with matplotlib; without it the RGBA PNG is written as it is."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata=metadata)
    try:
        from PIL import Image
    except ImportError:
        Path(path).write_bytes(buf.getvalue())
        return
    buf.seek(0)
    with Image.open(buf) as img:
        small = img.convert("RGB").quantize(colors=PNG_COLOURS, dither=0)   # 0: no dithering
        small.save(path, format="PNG", optimize=True, dpi=(DPI, DPI))


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width) or [""]


def _line(ax: Any, t: list[float], values: list[float], name: str) -> None:
    label, colour, dashes, width = LINES[name]
    ax.plot(t, values, color=colour, linestyle=dashes, linewidth=width, label=label)


def _thresholds(ax: Any, groups: list[tuple[str, list[tuple[str, float, str]]]]) -> None:
    """Each limit as a horizontal line (trip solid, warning dashed), labelled at its right end
    ("gas trip 80"). Limits with the same value share one label; labels that would overlap step
    to the left."""
    by_value: dict[float, list[tuple[str, str]]] = {}
    for prefix, limits in groups:
        for label, value, kind in limits:
            colour, dashes, width = TRIP_STYLE if kind == "trip" else WARN_STYLE
            ax.axhline(value, color=colour, linestyle=dashes, linewidth=width, zorder=1.5)
            by_value.setdefault(value, []).append((f"{prefix}{label} {value:g}", kind))
    low, high = ax.get_ylim()
    near = 0.1 * (high - low)
    slots = (1.0, 0.74, 0.48)
    last: list[float] = [-math.inf] * len(slots)
    for value in sorted(by_value):
        if not low <= value <= high:
            continue
        texts = by_value[value]
        slot = next((k for k in range(len(slots)) if value - last[k] >= near), 0)
        last[slot] = value
        colour = (TRIP_STYLE if any(kind == "trip" for _, kind in texts) else WARN_STYLE)[0]
        ax.annotate(" · ".join(text for text, _ in texts), xy=(slots[slot], value),
                    xycoords=("axes fraction", "data"), xytext=(-3, 1.5), textcoords="offset points",
                    ha="right", va="bottom", fontsize=8, color=colour, zorder=4,
                    bbox={"boxstyle": "square,pad=0.05", "facecolor": "white", "edgecolor": "none",
                          "alpha": 0.8})


def _o2_scale(ax: Any, trend: Trend, config: Any) -> None:
    """O2 from 0 to twice the trip: the range that decides. Air at the start of a purge runs off the
    top, and the panel says how high it went."""
    trip = float(getattr(config, "thresholds", {}).get("o2", {}).get("trip", 2.5))
    top = 2.0 * trip
    values = [v for name in ("voted_o2", *O2_SENSORS) for v in trend.series[name] if v == v]
    peak = max(values) if values else 0.0
    ax.set_ylim(0.0, top)
    if peak > top:
        ax.text(0.005, 0.97, f"off scale above {top:g} %: up to {peak:.1f} %", transform=ax.transAxes,
                ha="left", va="top", fontsize=8, color="#404040",
                bbox={"boxstyle": "square,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.8})


SHORT_STATE = {"BOOT": "BOOT", "IDLE": "IDLE", "PURGING": "PURGE", "READY": "RDY", "RUNNING": "RUN",
               "STOPPING": "STOP", "TRIPPED": "TRIP"}
CHAR_IN = 0.075             # width of one 8.5 pt character, inches (DejaVu Sans, about)


def _draw_states(strip: Any, panels: list[Any], spans: list[tuple[float, float, str]], t0: float,
                 t1: float) -> None:
    """Bands on the strip, named (in full, abbreviated, or not at all when too narrow), and the
    same bands lightly behind every panel."""
    strip.set_ylim(0, 1)
    strip.set_yticks([])
    strip.tick_params(labelbottom=False)
    strip.set_ylabel("state", rotation=0, ha="right", va="center")
    for side in ("top", "right", "left"):
        strip.spines[side].set_visible(False)
    width = t1 - t0
    strip_in = 0.8 * PAGE_IN[0]    # about the strip's width on the page (legends take the rest)
    for start, stop, state in spans:
        fill, hatch = STATE_STYLE.get(state, ("#ffffff", None))
        strip.axvspan(start, stop, ymin=0.0, ymax=0.42, facecolor=fill, hatch=hatch, edgecolor="#525252",
                      linewidth=0.5)
        for ax in panels:
            ax.axvspan(start, stop, facecolor=fill, alpha=0.35, linewidth=0, zorder=0)
        room = (stop - start) / width * strip_in
        text = next((n for n in (state, SHORT_STATE.get(state, state)) if CHAR_IN * len(n) + 0.06 <= room),
                    None)
        if text is not None:
            strip.text((start + stop) / 2, 0.21, text, ha="center", va="center", fontsize=8.5,
                       fontweight="bold" if state == "TRIPPED" else "normal",
                       bbox={"boxstyle": "square,pad=0.1", "facecolor": fill, "edgecolor": "none"}
                       if hatch else None)


def _draw_trips(strip: Any, panels: list[Any], marks: list[tuple[float, list[str]]], t0: float,
                t1: float) -> None:
    """A vertical line through every panel at each trip (the first solid, the later ones dashed),
    numbered on the strip; the key beside it gives each number's time and causes. Trips too close
    to number apart share one label ("2-6")."""
    if not marks:
        strip.text(1.005, 0.5, "no trip", transform=strip.transAxes, ha="left", va="center", fontsize=9)
        return
    width = t1 - t0
    keys = []
    groups: list[list[int]] = []
    for k, (t, causes) in enumerate(marks, start=1):
        for ax in (strip, *panels):
            ax.axvline(t, color=TRIP_COLOUR, linewidth=1.3 if k == 1 else 0.9,
                       linestyle="-" if k == 1 else (0, (3, 1.5)), zorder=3)
        if groups and t - marks[groups[-1][0] - 1][0] < 0.025 * width:
            groups[-1].append(k)
        else:
            groups.append([k])
        first = " (first out)" if k == 1 else ""
        keys.append(f"{k}  {t:g} s  {', '.join(causes)}{first}")
    for group in groups:
        label = str(group[0]) if len(group) == 1 else f"{group[0]}-{group[-1]}"
        strip.text(marks[group[0] - 1][0], 0.7, label, ha="left" if len(group) > 1 else "center",
                   va="center", fontsize=8.5, fontweight="bold", color="white", zorder=4,
                   bbox={"boxstyle": "round,pad=0.2" if len(group) > 1 else "circle,pad=0.18",
                         "facecolor": TRIP_COLOUR, "edgecolor": "none"})
    if len(keys) > MAX_TRIP_KEYS:
        keys = keys[:MAX_TRIP_KEYS - 1] + [f"+{len(keys) - MAX_TRIP_KEYS + 1} more (see the event log)"]
    strip.text(1.005, 1.0, "trips\n" + "\n".join(keys), transform=strip.transAxes, ha="left", va="top",
               fontsize=8, linespacing=1.15)
