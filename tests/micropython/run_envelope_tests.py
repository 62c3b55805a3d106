"""The safety envelope's check of the core's parameters, run under the MicroPython unix port.

Usage: micropython tests/micropython/run_envelope_tests.py REPO_ROOT PARAMS_JSON
PARAMS_JSON holds the default plant's core parameters (written by CPython: MicroPython has no TOML
reader). The core calls envelope.check_params at construction on a board, so the checks below must
give the same answers there. tests/test_envelope.py imports CASES and run() and runs them under
CPython too. Prints 'N passed, N failed' and exits 1 on any failure.
"""

import json
import sys

DELETE = "<delete>"

# Unsafe parameters, each from a hazard: name, changes ((path, value), ...), a problem that must be
# reported (a substring of one line of check_params). In a path, a name inside a list of rows
# (p["sensors"]) picks the row whose first item is that name.
CASES = (
    ("O2 trip at 21 % (air): no inerting protection",
     ((("thresholds", "o2", "trip"), 21.0),),
     "thresholds.o2.trip = 21.0: must be at most 2.76 (NFPA 69 ch. 7: 60 % of the H2 LOC 4.6 %"),
    ("H2 trip at the top of its 0..5 vol % range: above 50 % LFL",
     ((("thresholds", "h2_cell", "trip"), 5.0),),
     "thresholds.h2_cell.trip = 5.0: must be at most 2.0 (LFL of H2 4 vol %: 50 % LFL"),
    ("H2 trip at the top of its range: no valid reading can cross it",
     ((("thresholds", "h2_cell", "trip"), 5.0),),
     "thresholds.h2_cell.trip = 5.0: must lie strictly inside the range of sensor h2_cell [0.0, 5.0]"),
    ("temperature rise trip of 1e12 K/min: never fires",
     ((("thresholds", "temp_rise", "trip"), 1e12),),
     "thresholds.temp_rise.trip = 1000000000000.0: must be at most 20.0 (UL: runaway above 20 K/min"),
    ("CO rise trip x window larger than the CO sensor's span: never fires",
     ((("thresholds", "co_rise", "trip"), 100.0), (("thresholds", "co_rise", "window_s"), 60.0)),
     "thresholds.co_rise.trip = 100.0: must keep trip x window_s below the span of sensor co_cell "
     "(100.0 ppm/s x 60.0 s = 6000.0, span 2000.0): the rise could never fire"),
    ("a 4 K thermocouple span cannot show the 5 K a 10 K/min trip needs over 30 s",
     ((("sensors", "temp_gas", 2), -16.0),),
     "thresholds.temp_rise.trip = 10.0: must keep trip x window_s below the span of sensor temp_gas "
     "(10.0 K/min x 30.0 s = 5.0, span 4.0): the rise could never fire"),
    ("N2 supply low-low of 0 bar: never fires",
     ((("thresholds", "n2_supply", "low_low"), 0.0),),
     "thresholds.n2_supply.low_low = 0.0: must be at least 1.0"),
    ("CO sensor range 0..1e9: out_of_range can never fire",
     ((("sensors", "co_cell", 2), 1e9),),
     "sensors.co_cell.range = [0.0, 1000000000.0]: must lie within [0.0, 10000.0]"),
    ("n2_purge closes with no power: a dead controller stops inerting",
     ((("safe", 2), False),),
     "outputs.n2_purge.safe = false: must be true: open with no power (fail open)"),
    ("vent closes with no power: a dead controller cannot relieve the cell",
     ((("safe", 5), False),),
     "outputs.vent.safe = false: must be true: open with no power (fail open)"),
    ("horn on with no power",
     ((("safe", 7), True),),
     "outputs.horn.safe = true: must be false: off with no power"),
    ("crusher runs with no power",
     ((("safe", 0), True),),
     "outputs.crusher.safe = true: must be false: off with no power: it starts motion"),
    ("no H2 thresholds at all",
     ((("thresholds", "h2_cell"), DELETE),),
     "thresholds.h2_cell.trip: missing from the parameters"),
    ("no horn (an older 7-output table)",
     ((("safe", 7), DELETE),),
     "outputs.horn.safe: missing from the parameters"),
    ("dp rise window of 5 scans: the 10-slot rate has empty slots",
     ((("thresholds", "dp_rise", "window_s"), 0.5),),
     "thresholds.dp_rise.window_s = 0.5: must be at least 10 scan periods "
     "(1.0 s at cell.scan_period_s = 0.1)"),
    ("a 500 ms scan makes the 1 s dp rise window 2 scans",
     ((("scan_period_ms",), 500),),
     "thresholds.dp_rise.window_s = 1.0: must be at least 10 scan periods "
     "(5.0 s at cell.scan_period_s = 0.5)"),
    ("O2 stuck after 300 s: a leak passes the trip first",
     ((("sensors", "o2_b", 4), 300000),),
     "sensors.o2_b.stuck_s = 300.0: must be at most 90.0 (a leak takes O2 past the trip about 100 s"),
    ("O2 common-cause freeze seen after 120 s: a leak passes the trip first",
     ((("timers_ms", "frozen_s"), 120000),),
     "voting.o2.frozen_s = 120.0: must be at most 90.0"),
    ("O2 warning above the trip",
     ((("thresholds", "o2", "warning"), 2.6),),
     "thresholds.o2.trip = 2.5: must be above thresholds.o2.warning = 2.6"),
    ("READY never falls back before the trip",
     ((("thresholds", "o2", "permissive_hysteresis"), 1.0),),
     "thresholds.o2.permissive_hysteresis = 1.0: must keep thresholds.o2.start_permissive + "
     "thresholds.o2.permissive_hysteresis = 2.5 below thresholds.o2.trip = 2.5"),
    ("feedback window shorter than the feedback timeout: the discrepancy can never trip",
     ((("timers_ms", "feedback_window_s"), 1000),),
     "timers.feedback_window_s = 1.0: must be above timers.feedback_timeout_s = 2.0"),
    ("no deviation hold time",
     ((("timers_ms", "deviation_hold_s"), DELETE),),
     "thresholds.o2.deviation_hold_s: missing from the parameters"),
    ("permissive loss limit 0",
     ((("permissive_loss_limit",), 0),),
     "cell.permissive_loss_limit = 0: must be at least 1"),
    ("permissive loss limit not a whole number",
     ((("permissive_loss_limit",), 2.5),),
     "cell.permissive_loss_limit = 2.5: must be a whole number"),
    ("O2 trip as a string",
     ((("thresholds", "o2", "trip"), "2.5"),),
     "thresholds.o2.trip = '2.5': must be a finite number"),
    ("O2 trip as a boolean",
     ((("thresholds", "o2", "trip"), True),),
     "thresholds.o2.trip = true: must be a finite number"),
    ("O2 trip NaN",
     ((("thresholds", "o2", "trip"), float("nan")),),
     "thresholds.o2.trip = nan: must be a finite number"),
    ("safe state as a number",
     ((("safe", 2), 1),),
     "outputs.n2_purge.safe = 1: must be true or false"),
    ("a sensor row cut short",
     ((("sensors", "hf_room", 5), DELETE),),
     "sensors.hf_room.resolution: missing from the parameters"),
)


def _step(c, part):
    if type(c) is list and type(part) is str:
        for row in c:
            if row[0] == part:
                return row
        raise KeyError(part)
    return c[part]


def apply(p, changes):
    """A copy of `p` (lists, not tuples) with `changes` made."""
    p = json.loads(json.dumps(p))
    for path, value in changes:
        c = p
        for part in path[:-1]:
            c = _step(c, part)
        last = path[-1]
        if value == DELETE:
            if type(c) is list:
                c.pop(last)
            else:
                del c[last]
        else:
            c[last] = value
    return p


def run(envelope, base):
    """Every check; returns (passed, failures as strings)."""
    passed = 0
    failures = []

    def expect(ok, name, detail):
        if ok:
            return 1
        failures.append(name + ": " + detail)
        return 0

    got = envelope.check_params(apply(base, ()))
    passed += expect(got == [], "default parameters", repr(got))
    for name, changes, expected in CASES:
        got = envelope.check_params(apply(base, changes))
        hit = [line for line in got if expected in line]
        passed += expect(len(hit) > 0, name, "expected %r in %r" % (expected, got))
    for bad in (None, {}, [], {"thresholds": None, "sensors": 3, "safe": "x", "timers_ms": []}):
        try:
            got = envelope.check_params(bad)
            passed += expect(type(got) is list and len(got) > 0, "malformed %r" % (bad,), repr(got))
        except Exception as exc:  # the core must get a list of problems, never an exception
            failures.append("malformed %r raised %r" % (bad, exc))
    return passed, failures


def main():
    root = sys.argv[1]
    sys.path.insert(0, root)
    from controller import envelope

    with open(sys.argv[2]) as f:
        base = json.load(f)
    passed, failures = run(envelope, base)
    for line in failures:
        print("FAIL", line)
    print("micropython envelope tests: %d passed, %d failed" % (passed, len(failures)))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
