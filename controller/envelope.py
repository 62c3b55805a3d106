"""Safety envelopes: the bounds no configuration can leave. MicroPython-compatible.

Why: limits live in config so a plant can tune them at commissioning, but some values switch the
protection off (an O2 trip at 21 %, an H2 trip at the top of the sensor's range, a rise trip that
could never fire, a purge valve that closes when the controller dies). Each limit therefore has an
envelope, set here in reviewed code with its source; a plant that needs other bounds changes this
file under review, as a safety PLC's parameter limits are changed, never in the field.

Two readers use the same tables: controller/config.py reports every violation against the TOML
file (file, table, key), and the safety core calls `check_params` on its plain parameters at
construction (the MicroPython path has no config layer). docs/envelopes.md shows the tables;
a test fails when it no longer matches `markdown()`.

Units are the config's: seconds for times, the sensor's unit for limits, a rate's own unit
(temp_rise K/min, co_rise ppm/s, dp_rise Pa/s). Sources marked (P) are proposals we reviewed,
not cited limits. Plain tuples (order matters, and MicroPython has no dataclasses or typing).
"""

from cellspec.names import O2_SENSORS, OUTPUTS, SENSORS

# -- sources -----------------------------------------------------------------------------------
P = "(P) reviewed engineering bound"
NFPA69 = "NFPA 69 ch. 7: 60 % of the H2 LOC 4.6 % (ASTM E2079); min (P)"
H2_LFL = "LFL of H2 4 vol %: 50 % LFL; min (P)"
LEL_CELL = "NFPA 86 convention: 50 % LEL; min (P)"
LEL_RTO = "NFPA 86, RTO practice: 25 % LEL at the RTO inlet; min (P)"
CO_IDLH = "CO IDLH 1200 ppm (NIOSH); min (P)"
HF_PEL = "HF OSHA PEL 3 ppm; min (P)"
SEI = "SEI decomposition starts near 90 C; min (P)"
UL_RISE = "UL: runaway above 20 K/min; min (P)"
O2_LEAK = ("a leak takes O2 past the trip about 100 s after it starts: a stuck or frozen O2 "
           "reading must be seen first; min (P)")
STALE_SLOW = "(P) software budget 2 s (3 update periods) for analysers and thermocouples; at most 5 s"
STALE_FAST = "(P) software budget 300 ms for fast channels; at most 1 s"
STUCK = "(P) a stuck sensor must be found within 10 minutes"

# -- the envelopes -------------------------------------------------------------------------------
# key, min, max, source. A `range` row bounds the sensor's [low, high]: low >= min, high <= max.
ENVELOPES = (
    ("cell.scan_period_s", 0.02, 1.0, "software budget: 100 ms default, down to 20 ms; max (P)"),
    ("cell.overrun_trip_count", 1, 100, P),
    ("cell.late_scan_trip_periods", 2.0, 100.0, "(P) one scan that starts this many periods late trips "
     "scan_overrun: 5 periods (0.5 s) matches overrun_trip_count; below 2 a normal wake-up jitter trips"),
    ("cell.permissive_loss_limit", 1, 10, "a cell that keeps losing its permissive (P: 3 cycles); " + P),

    ("timers.self_test_s", 0.1, 60.0, P),
    ("timers.purge_hold_s", 1.0, 600.0, P),
    ("timers.purge_timeout_s", 10.0, 7200.0, P),
    ("timers.warning_hold_s", 0.0, 30.0, "(P) a warning held for a few seconds brings a controlled stop"),
    ("timers.rundown_s", 0.0, 300.0, P),
    ("timers.reset_hold_s", 1.0, 600.0, P),
    ("timers.feedback_timeout_s", 0.1, 10.0, "(P) a welded or dropped contactor is found within 10 s"),
    ("timers.feedback_window_s", 0.5, 120.0, P),

    ("thresholds.o2.start_permissive", 0.1, 2.0, "(P) below the warning, well under NFPA 69's 2.76 %"),
    ("thresholds.o2.warning", 0.5, 2.76, NFPA69),
    ("thresholds.o2.trip", 1.0, 2.76, NFPA69),
    ("thresholds.o2.permissive_hysteresis", 0.05, 1.0, P),
    ("thresholds.o2.deviation", 0.1, 1.0,
     "(P) a wider deviation lets a sensor failed low hide inside the permissive-to-trip gap"),
    ("thresholds.o2.deviation_hold_s", 1.0, 120.0, "deviation hold (P: 30 s); " + P),
    ("thresholds.h2_cell.warning", 0.1, 2.0, H2_LFL),
    ("thresholds.h2_cell.trip", 0.4, 2.0, H2_LFL),
    ("thresholds.lel_cell.warning", 5.0, 50.0, LEL_CELL),
    ("thresholds.lel_cell.trip", 10.0, 50.0, LEL_CELL),
    ("thresholds.lel_rto.warning", 5.0, 25.0, LEL_RTO),
    ("thresholds.lel_rto.trip", 10.0, 25.0, LEL_RTO),
    ("thresholds.co_cell.warning", 25.0, 1200.0, CO_IDLH),
    ("thresholds.co_cell.trip", 100.0, 1200.0, CO_IDLH),
    ("thresholds.hf_room.warning", 0.1, 3.0, HF_PEL),
    ("thresholds.hf_room.trip", 0.5, 3.0, HF_PEL),
    ("thresholds.temp_gas.warning", 30.0, 90.0, SEI),
    ("thresholds.temp_gas.trip", 40.0, 90.0, SEI),
    ("thresholds.temp_material.warning", 40.0, 150.0, "(P) hot spot: SEI decomposition starts near 90 C"),
    ("thresholds.temp_material.trip", 60.0, 150.0, "(P) hot spot: SEI decomposition starts near 90 C"),
    ("thresholds.dp_cell.warning_low", -400.0, -125.0,
     "glovebox practice -75 to -125 Pa lies inside the normal band; min (P)"),
    ("thresholds.dp_cell.warning_high", -75.0, 0.0,
     "glovebox practice -75 to -125 Pa lies inside the band; negative pressure keeps HF and CO in"),
    ("thresholds.dp_cell.trip", 50.0, 400.0, "(P) overpressure trip (+250 Pa), inside a 500 Pa sensor"),
    ("thresholds.n2_supply.low_low", 1.0, 6.0, "(P) a low-low of 0 bar could never fire"),
    ("thresholds.n2_supply.low", 1.5, 8.0, P),
    ("thresholds.co_rise.trip", 5.0, 100.0, "(P) reference: +500 ppm in 10 s is 50 ppm/s"),
    ("thresholds.co_rise.window_s", 1.0, 60.0, P),
    ("thresholds.temp_rise.warning", 0.5, 20.0, UL_RISE),
    ("thresholds.temp_rise.trip", 1.0, 20.0, UL_RISE),
    ("thresholds.temp_rise.window_s", 5.0, 120.0, "(P) a longer window averages a runaway away"),
    ("thresholds.dp_rise.trip", 10.0, 250.0,
     "(P) reference: 100 Pa/s; at most the overpressure trip per second"),
    ("thresholds.dp_rise.window_s", 0.5, 10.0, P),

    ("voting.o2.recovery_s", 1.0, 300.0, "vote recovery time (P: 10 s); " + P),
    ("voting.o2.frozen_s", 10.0, 90.0, O2_LEAK),

    ("sensors.o2_a.range", 0.0, 30.0, "(P) O2 transmitter 0 to 25 % (air 20.9 %)"),
    ("sensors.o2_a.stale_s", 0.1, 5.0, STALE_SLOW),
    ("sensors.o2_a.stuck_s", 5.0, 90.0, O2_LEAK),
    ("sensors.o2_b.range", 0.0, 30.0, "(P) O2 transmitter 0 to 25 % (air 20.9 %)"),
    ("sensors.o2_b.stale_s", 0.1, 5.0, STALE_SLOW),
    ("sensors.o2_b.stuck_s", 5.0, 90.0, O2_LEAK),
    ("sensors.o2_c.range", 0.0, 30.0, "(P) O2 transmitter 0 to 25 % (air 20.9 %)"),
    ("sensors.o2_c.stale_s", 0.1, 5.0, STALE_SLOW),
    ("sensors.o2_c.stuck_s", 5.0, 90.0, O2_LEAK),
    ("sensors.lel_cell.range", 0.0, 100.0, "%LEL: 0 to 100"),
    ("sensors.lel_cell.stale_s", 0.1, 5.0, STALE_SLOW),
    ("sensors.lel_cell.stuck_s", 10.0, 600.0, STUCK),
    ("sensors.h2_cell.range", 0.0, 100.0, "vol %: 0 to 100"),
    ("sensors.h2_cell.stale_s", 0.1, 5.0, STALE_SLOW),
    ("sensors.h2_cell.stuck_s", 10.0, 600.0, STUCK),
    ("sensors.co_cell.range", 0.0, 10000.0, "(P) CO transmitters up to 10000 ppm"),
    ("sensors.co_cell.stale_s", 0.1, 5.0, STALE_SLOW),
    ("sensors.co_cell.stuck_s", 10.0, 600.0, STUCK),
    ("sensors.hf_room.range", 0.0, 100.0, "(P) HF transmitters up to 100 ppm (IDLH 30 ppm)"),
    ("sensors.hf_room.stale_s", 0.1, 5.0, STALE_SLOW),
    ("sensors.hf_room.stuck_s", 10.0, 600.0, STUCK),
    ("sensors.lel_rto.range", 0.0, 100.0, "%LEL: 0 to 100"),
    ("sensors.lel_rto.stale_s", 0.1, 5.0, STALE_SLOW),
    ("sensors.lel_rto.stuck_s", 10.0, 600.0, STUCK),
    ("sensors.temp_gas.range", -200.0, 1372.0, "type K thermocouple -200 to 1372 C"),
    ("sensors.temp_gas.stale_s", 0.1, 5.0, STALE_SLOW),
    ("sensors.temp_gas.stuck_s", 10.0, 600.0, STUCK),
    ("sensors.temp_material.range", -200.0, 1372.0, "type K thermocouple -200 to 1372 C"),
    ("sensors.temp_material.stale_s", 0.1, 5.0, STALE_SLOW),
    ("sensors.temp_material.stuck_s", 10.0, 600.0, STUCK),
    ("sensors.dp_cell.range", -500.0, 500.0, "SDP810, the 500 Pa part: -500 to 500 Pa"),
    ("sensors.dp_cell.stale_s", 0.05, 1.0, STALE_FAST),
    ("sensors.dp_cell.stuck_s", 5.0, 600.0, STUCK),
    ("sensors.n2_supply.range", 0.0, 25.0, "(P) N2 supply pressure transmitter up to 25 bar"),
    ("sensors.n2_supply.stale_s", 0.1, 5.0, STALE_SLOW),
    ("sensors.n2_supply.stuck_s", 10.0, 600.0, STUCK),
)

# Keys that are whole numbers (every other envelope key is a number, a `range` a pair).
INTEGER_KEYS = ("cell.overrun_trip_count", "cell.permissive_loss_limit")

# The safe (no power) state of each output that config cannot choose: output, safe, reason.
# n2_boost and exhaust follow the P&ID and stay in config.
SAFE_STATES = (
    ("crusher", False, "off with no power: it starts motion (de-energise to trip)"),
    ("feed", False, "off with no power: it starts motion and feeds charged cells (de-energise to trip)"),
    ("n2_purge", True, "open with no power (fail open): a dead controller keeps the cell inert"),
    ("vent", True, "open with no power (fail open): a dead controller still relieves the cell"),
    ("alarm", False, "off with no power: the beacon is annunciation the controller switches on"),
    ("horn", False, "off with no power: the horn is annunciation the controller switches on"),
)

# Ordering rules: key, "above" or "below", other key, why. The value of `key` must lie strictly
# above (below) the value of `other`.
ORDER = (
    ("thresholds.o2.warning", "above", "thresholds.o2.start_permissive",
     "the start permissive lies below the warning"),
    ("thresholds.o2.trip", "above", "thresholds.o2.warning", "a warning comes before its trip"),
    ("thresholds.h2_cell.trip", "above", "thresholds.h2_cell.warning", "a warning comes before its trip"),
    ("thresholds.lel_cell.trip", "above", "thresholds.lel_cell.warning", "a warning comes before its trip"),
    ("thresholds.lel_rto.trip", "above", "thresholds.lel_rto.warning", "a warning comes before its trip"),
    ("thresholds.co_cell.trip", "above", "thresholds.co_cell.warning", "a warning comes before its trip"),
    ("thresholds.hf_room.trip", "above", "thresholds.hf_room.warning", "a warning comes before its trip"),
    ("thresholds.temp_gas.trip", "above", "thresholds.temp_gas.warning", "a warning comes before its trip"),
    ("thresholds.temp_material.trip", "above", "thresholds.temp_material.warning",
     "a warning comes before its trip"),
    ("thresholds.temp_rise.trip", "above", "thresholds.temp_rise.warning", "a warning comes before its trip"),
    ("thresholds.dp_cell.warning_low", "below", "thresholds.dp_cell.warning_high",
     "the normal band runs from warning_low to warning_high"),
    ("thresholds.dp_cell.trip", "above", "thresholds.dp_cell.warning_high",
     "a warning comes before its trip"),
    ("thresholds.n2_supply.low_low", "below", "thresholds.n2_supply.low", "low comes before low-low"),
    ("timers.purge_timeout_s", "above", "timers.purge_hold_s",
     "a purge must be able to hold before it times out"),
    ("timers.feedback_window_s", "above", "timers.feedback_timeout_s",
     "the discrepancy integrated over the window must be able to reach the timeout"),
)

# Sum rule: start_permissive + permissive_hysteresis < trip (READY falls back to PURGING first).
HYSTERESIS = ("thresholds.o2.permissive_hysteresis", "thresholds.o2.start_permissive", "thresholds.o2.trip")

# Limits that must lie strictly inside the range of every sensor they watch: a valid reading must be
# able to reach both sides of them. (table, keys, sensors)
IN_RANGE = (
    ("thresholds.o2", ("start_permissive", "warning", "trip"), O2_SENSORS),
    ("thresholds.h2_cell", ("warning", "trip"), ("h2_cell",)),
    ("thresholds.lel_cell", ("warning", "trip"), ("lel_cell",)),
    ("thresholds.lel_rto", ("warning", "trip"), ("lel_rto",)),
    ("thresholds.co_cell", ("warning", "trip"), ("co_cell",)),
    ("thresholds.hf_room", ("warning", "trip"), ("hf_room",)),
    ("thresholds.temp_gas", ("warning", "trip"), ("temp_gas",)),
    ("thresholds.temp_material", ("warning", "trip"), ("temp_material",)),
    ("thresholds.dp_cell", ("warning_low", "warning_high", "trip"), ("dp_cell",)),
    ("thresholds.n2_supply", ("low_low", "low"), ("n2_supply",)),
)

# Rise checks: table, sensors it watches, seconds per unit of its rate, unit. A rise check can only
# fire if trip x window (in the sensor's unit) is smaller than the sensor's span.
RISES = (
    ("thresholds.co_rise", ("co_cell",), 1.0, "ppm/s"),
    ("thresholds.temp_rise", ("temp_gas", "temp_material"), 60.0, "K/min"),
    ("thresholds.dp_rise", ("dp_cell",), 1.0, "Pa/s"),
)
# A rise is the difference of slot means, 10 slots a window (controller/health.py RiseDetector):
# every slot needs at least one scan.
MIN_WINDOW_SCANS = 10
# A sensor's resolution (one count) may be at most this fraction of its span.
MAX_RESOLUTION_FRACTION = 10

# Where a key lives in PlantConfig.core_params() when not at the obvious place: key, path, units
# per config unit (1000: the parameter is in ms). The obvious places: thresholds.T.K ->
# p["thresholds"][T][K]; timers.K -> p["timers_ms"][K] (ms); cell.K -> p[K];
# sensors.S.range/stale_s/stuck_s/resolution -> p["sensors"] row (name, low, high, stale_ms,
# stuck_ms, resolution); outputs.O.safe -> p["safe"][OUTPUTS.index(O)].
PARAM_PATHS = (
    ("cell.scan_period_s", ("scan_period_ms",), 1000),
    ("thresholds.o2.deviation_hold_s", ("timers_ms", "deviation_hold_s"), 1000),
    ("voting.o2.recovery_s", ("timers_ms", "vote_recovery_s"), 1000),
    ("voting.o2.frozen_s", ("timers_ms", "frozen_s"), 1000),
)


# -- checking ------------------------------------------------------------------------------------
def _num(v):
    # Computed numbers (10 x 0.03 s) print as 0.3, not 0.30000000000000004; round() only where it is
    # exact on MicroPython too (it scales by 10**9).
    if type(v) is float and v - v == 0 and 1e-6 <= abs(v) < 1e6:
        return repr(round(v, 9))
    return repr(v)


def show(v):
    """A value as the config writes it: 2.5, [0.0, 25.0], true."""
    if type(v) is bool:
        return "true" if v else "false"
    if type(v) in (list, tuple):
        return "[" + ", ".join([show(x) for x in v]) + "]"
    if type(v) in (int, float):
        return _num(v)
    return repr(v)


def _table(key):
    return key[:key.rfind(".")]


def _ref(other, key, relative):
    if relative and _table(other) == _table(key):
        return other[other.rfind(".") + 1:]
    return other


def keys():
    """Every key the rules read, in a stable order."""
    out = [row[0] for row in ENVELOPES]
    for name in SENSORS:
        out.append("sensors." + name + ".resolution")
    for row in SAFE_STATES:
        out.append("outputs." + row[0] + ".safe")
    return tuple(out)


def check(get, relative=False):
    """Every violation as (key, value, text). `get(key)` returns a valid value in config units (a
    range as (low, high)) or None when it is missing or malformed (reported by the caller); rules
    that read a missing value are skipped. `relative`: name keys of the same table by their last
    part (the config layer's messages read "[thresholds.o2] trip = 1.0 must be above warning")."""
    out = []
    for key, lo, hi, source in ENVELOPES:
        v = get(key)
        if v is None:
            continue
        if key.endswith(".range"):
            if v[0] < lo or v[1] > hi:
                out.append((key, v, "must lie within [%s, %s] (%s)" % (_num(lo), _num(hi), source)))
        elif v < lo:
            out.append((key, v, "must be at least %s (%s)" % (_num(lo), source)))
        elif v > hi:
            out.append((key, v, "must be at most %s (%s)" % (_num(hi), source)))

    for name, safe, reason in SAFE_STATES:
        key = "outputs." + name + ".safe"
        v = get(key)
        if v is not None and v != safe:
            out.append((key, v, "must be %s: %s" % (show(safe), reason)))

    for key, relation, other, reason in ORDER:
        a = get(key)
        b = get(other)
        if a is None or b is None:
            continue
        if (relation == "above" and not a > b) or (relation == "below" and not a < b):
            out.append((key, a, "must be %s %s = %s (%s)" % (relation, _ref(other, key, relative), _num(b),
                                                            reason)))

    hyst_key, perm_key, trip_key = HYSTERESIS
    h = get(hyst_key)
    sp = get(perm_key)
    trip = get(trip_key)
    if h is not None and sp is not None and trip is not None and not sp + h < trip:
        out.append((hyst_key, h, "must keep %s + %s = %s below %s = %s (READY must fall back to "
                    "PURGING before O2 reaches the trip)" % (
                        _ref(perm_key, hyst_key, relative), _ref(hyst_key, hyst_key, relative),
                        _num(sp + h), _ref(trip_key, hyst_key, relative), _num(trip))))

    for table, fields, sensors in IN_RANGE:
        for field in fields:
            key = table + "." + field
            v = get(key)
            if v is None:
                continue
            for sensor in sensors:
                r = get("sensors." + sensor + ".range")
                if r is not None and not r[0] < v < r[1]:
                    out.append((key, v, "must lie strictly inside the range of sensor %s %s (a valid "
                                "reading must be able to reach both sides of it)" % (sensor, show(r))))
                    break

    scan = get("cell.scan_period_s")
    for table, sensors, per_s, unit in RISES:
        trip = get(table + ".trip")
        window = get(table + ".window_s")
        if trip is not None and window is not None:
            rise = trip * window / per_s
            for sensor in sensors:
                r = get("sensors." + sensor + ".range")
                if r is not None and not rise < r[1] - r[0]:
                    out.append((table + ".trip", trip, "must keep trip x window_s below the span of sensor "
                                "%s (%s %s x %s s = %s, span %s): the rise could never fire" % (
                                    sensor, _num(trip), unit, _num(window), _num(rise), _num(r[1] - r[0]))))
                    break
        if window is not None and scan is not None and window < MIN_WINDOW_SCANS * scan - 1e-9:
            out.append((table + ".window_s", window, "must be at least %d scan periods (%s s at "
                        "cell.scan_period_s = %s): the rise is measured over %d slots of at least one "
                        "scan each" % (MIN_WINDOW_SCANS, _num(MIN_WINDOW_SCANS * scan), _num(scan),
                                       MIN_WINDOW_SCANS)))

    for sensor in SENSORS:
        key = "sensors." + sensor + ".resolution"
        res = get(key)
        if res is None:
            continue
        r = get("sensors." + sensor + ".range")
        if not res > 0:
            out.append((key, res, "must be above 0 (one count of the sensor)"))
        elif r is not None and res > (r[1] - r[0]) / MAX_RESOLUTION_FRACTION:
            count = (r[1] - r[0]) / MAX_RESOLUTION_FRACTION
            out.append((key, res, "must be at most a tenth of the range's span (%s): one count is the "
                        "smallest change the stuck check counts as movement" % _num(count)))
    return out


# -- the core's parameters -----------------------------------------------------------------------
def _is_number(v):
    return type(v) in (int, float) and v - v == 0   # not bool, not NaN, not infinite


def _lookup(p, key):
    """(raw value, units per config unit) of `key` in the core's parameters; raises on a missing key."""
    for k, path, scale in PARAM_PATHS:
        if k == key:
            v = p
            for part in path:
                v = v[part]
            return v, scale
    parts = key.split(".")
    if parts[0] == "thresholds":
        return p["thresholds"][parts[1]][parts[2]], 1
    if parts[0] == "timers":
        return p["timers_ms"][parts[1]], 1000
    if parts[0] == "cell":
        return p[parts[1]], 1
    if parts[0] == "outputs":
        return p["safe"][OUTPUTS.index(parts[1])], 1
    if parts[0] == "sensors":
        for row in p["sensors"]:
            if row[0] == parts[1]:
                field = parts[2]
                if field == "range":
                    return (row[1], row[2]), 1
                if field == "stale_s":
                    return row[3], 1000
                if field == "stuck_s":
                    return row[4], 1000
                return row[5], 1
    raise KeyError(key)


def _valid(key, raw):
    """None when `raw` has the right type for `key`, or what is wrong with it."""
    if key.endswith(".safe"):
        return None if type(raw) is bool else "must be true or false"
    if key in INTEGER_KEYS:
        return None if type(raw) is int else "must be a whole number"
    if key.endswith(".range"):
        if type(raw) not in (list, tuple) or len(raw) != 2 or not (_is_number(raw[0])
                                                                    and _is_number(raw[1])):
            return "must be a pair of finite numbers [low, high]"
        return None if raw[0] < raw[1] else "must have its first number below its second"
    return None if _is_number(raw) else "must be a finite number"


def check_params(p):
    """Problems with the core's parameters (the dict PlantConfig.core_params() returns), one string
    each naming the key, the value, the bound and its source; [] when every value is inside its
    envelope. Never raises: a missing key or a wrong type is a problem too."""
    problems = []
    values = {}
    if not isinstance(p, dict):
        return ["parameters: must be a dict, not %s" % show(p)]
    for key in keys():
        try:
            raw, scale = _lookup(p, key)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError):
            problems.append("%s: missing from the parameters" % key)
            continue
        wrong = _valid(key, raw)
        if wrong is not None:
            problems.append("%s = %s: %s" % (key, show(raw), wrong))
            continue
        if key.endswith(".range"):
            values[key] = (raw[0], raw[1])
        elif scale != 1:
            values[key] = raw / scale
        else:
            values[key] = raw
    for key, v, text in check(values.get):
        problems.append("%s = %s: %s" % (key, show(v), text))
    return problems


# -- documentation -------------------------------------------------------------------------------
DOC_BEGIN = "<!-- envelopes:begin (generated by controller.envelope.markdown(); do not edit) -->"
DOC_END = "<!-- envelopes:end -->"


def markdown():
    """The tables as Markdown, for docs/envelopes.md (a test keeps the two equal)."""
    lines = ["| key | min | max | source |", "|---|---|---|---|"]
    for key, lo, hi, source in ENVELOPES:
        lines.append("| `%s` | %s | %s | %s |" % (key, _num(lo), _num(hi), source))
    lines += ["", "| output | safe (no power) | why |", "|---|---|---|"]
    for name, safe, reason in SAFE_STATES:
        lines.append("| `%s` | %s | %s |" % (name, show(safe), reason))
    lines += ["", "Ordering rules (strict):", ""]
    for key, relation, other, reason in ORDER:
        lines.append("- `%s` %s `%s`: %s" % (key, relation, other, reason))
    hyst_key, perm_key, trip_key = HYSTERESIS
    lines.append("- `%s` + `%s` below `%s`: READY falls back to PURGING before O2 reaches the trip"
                 % (perm_key, hyst_key, trip_key))
    for table, fields, sensors in IN_RANGE:
        lines.append("- `%s.{%s}` strictly inside the range of %s" % (table, ", ".join(fields),
                                                                      ", ".join(sensors)))
    for table, sensors, _per_s, unit in RISES:
        lines.append("- `%s`: trip (%s) x window_s smaller than the span of %s; window_s at least %d scan "
                     "periods" % (table, unit, ", ".join(sensors), MIN_WINDOW_SCANS))
    lines.append("- `sensors.*.resolution` above 0 and at most 1/%d of the range's span"
                 % MAX_RESOLUTION_FRACTION)
    return "\n".join(lines) + "\n"
