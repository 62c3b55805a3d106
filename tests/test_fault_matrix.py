"""Fault-injection matrix: every sensor x fault mode x state, every output x welded x state.

Each case runs through the real scan loop and the simulated cell in simulated time, from a cached
snapshot of the cell in that state (built once, copied per case with pickle). The expected outcome
of every case comes from ONE table, `expected()`, written as data with these rules:

1. A fault the health check sees (disconnect, nan, out_of_range at once; stale after `stale_s`;
   stuck after `stuck_s`) makes the sensor unhealthy, the worst case for what it guards:
   - a single-sensor guard (lel, h2, co, hf, lel_rto, temperatures, dp) trips `sensor_fault:<s>`
     in every operating state and joins the latch in TRIPPED;
   - one O2 sensor degrades the 2oo3 vote: a controlled stop in RUNNING, an alarm elsewhere;
   - the N2 supply pressure counts as low-low: a controlled stop in RUNNING, an alarm elsewhere,
     except in PURGING, where the snapshot is taken as the purge starts and O2 is still above
     o2.warning: low-low N2 with O2 high is `n2_supply_low`, a trip;
   - a fault is judged in the state the cell is in when it shows: BOOT has become IDLE after the
     self-test, PURGING has become READY once the cell is inert (both measured on the snapshots);
   - in BOOT, a fault seen before the end of the self-test fails it (`self_test`).
2. `drift` (2 % of span per minute, looks healthy) is caught only by what it does to the value in
   DRIFT_S: an O2 sensor leaves its peers (`o2_deviation`); temp_material rises faster than the
   temp_rise trip; temp_gas faster than the temp_rise warning (a held warning: a controlled stop in
   RUNNING); every other sensor stays inside its limits: no reaction (calibration catches it).
3. A welded crusher contactor disagrees with the command wherever the crusher is commanded off:
   `output_feedback:crusher` after feedback_timeout_s (`self_test` in BOOT, where the self-test
   sees the feedback first); in RUNNING and STOPPING command and feedback agree: no reaction in the
   window. Other outputs (the horn included) have no feedback: no reaction (docs/safety.md, Known
   limits).
4. Contactor feedback faults (docs/process-safety.md: "Crusher feedback that drops while RUNNING trips;
   discrepancy between command and feedback is integrated, so chatter cannot keep resetting its
   timer"):
   - `drop` (the hard-wired chain opens the contactor): where the crusher is commanded on (RUNNING,
     STOPPING's run-down) `contactor_dropped` at once; elsewhere command and feedback agree: none;
   - `chatter` (5 Hz): where commanded on, the first low read is a drop (`contactor_dropped`);
     where commanded off, half the time in discrepancy integrates to `output_feedback:crusher`
     (BOOT: the self-test sees the feedback on at its end: `self_test`);
   - `unreadable`: an unreadable input counts as its unsafe value, so the feedback disagrees:
     `output_feedback:crusher` everywhere, `self_test` in BOOT.
5. `write_fail` on any output (the relay board refuses the write): the outputs are not where the
   controller thinks, so it trips (`output_write`) in every state, at the end of BOOT's self-test
   included, and joins TRIPPED's latch.

Every scan of every case also checks, on the outputs:
- crusher and feed off outside RUNNING/STOPPING, and off in the scan of any trip (as the simulated
  cell applied them; for an output whose relay refuses writes, as commanded);
- in TRIPPED: the beacon on, crusher and feed commanded off, and the gas outputs as docs/process-safety.md's
  "Trip effects by cause" table says for the classes present at that scan (RTO inlet flammable or
  its sensor failed; overpressure or the dp sensor failed; door open), derived in `trip_gas` below
  independently of the core's tables. Around the instant a slow fault (stale, stuck) shows, both
  expectations are accepted.
Runtime: a stuck case waits for its stuck_s (up to 300 s of simulated time) at 1 s scans, checked
all the same, and runs at the real 100 ms scan from QUIET_LEAD_S before the fault shows: nothing
can happen before (the plant is steady, the reading frozen), and it cuts the matrix by a third.
"""

import pickle

import pytest

from cellspec.names import IN_DOOR, O2_SENSORS, OUTPUTS, SENSORS, STATES
from controller import config
from controller.loop import ScanLoop
from hal import sim
from hal.sim import SimulatedCell

CONFIG = config.load(config.Path(__file__).resolve().parents[1] / "config" / "cell.toml")
TH = CONFIG.thresholds
MODES = ("disconnect", "stuck", "nan", "out_of_range", "drift", "stale")
FEEDBACK_MODES = tuple(m for m in getattr(sim, "INPUT_FAULT_MODES", ()) if m != "clear")
OUTPUT_MODES = tuple(m for m in sim.OUTPUT_FAULT_MODES if m != "clear")   # welded, write_fail
SELF_TEST_S = CONFIG.timers["self_test_s"]
DRIFT_S = 90.0          # long enough for the drift rules above, short of any level limit
DRIFT_QUIET_S = 30.0    # a drift with no rule to catch it: 1 % of span, no reaction
AFTER_S = 3.0           # observed after a fault is detected
WELDED_S = 10.0         # feedback_timeout_s + margin, short of STOPPING's run-down
FEEDBACK_S = 10.0       # chatter integrates 50 % of the time: twice feedback_timeout_s, + margin
WRITE_FAIL_S = SELF_TEST_S + 1.0   # the next scan sees the failed write; BOOT trips at the self-test's end
SLOW_SHOWS_S = 0.5      # around the instant a stale or stuck fault shows, accept either effect
IMMEDIATE = ("disconnect", "nan", "out_of_range")
QUIET_LEAD_S = 10.0     # a stuck case runs at the real scan period from this long before it shows

# -- the table -----------------------------------------------------------------------------------
UNHEALTHY = {   # sensor class -> state at detection -> (outcome, name); "*" = any other state
    "single": {"BOOT": ("trip", "self_test"), "TRIPPED": ("latch", "sensor_fault:{s}"),
               "*": ("trip", "sensor_fault:{s}")},
    "o2": {"BOOT": ("trip", "self_test"), "RUNNING": ("stop", "o2_vote_degraded"),
           "*": ("alarm", "o2_vote_degraded")},
    "n2": {"BOOT": ("trip", "self_test"), "RUNNING": ("stop", "n2_supply_low"),
           "PURGING": ("trip", "n2_supply_low"), "*": ("alarm", "n2_supply")},
}
DRIFT = {       # sensor -> state -> outcome; sensors not listed: no reaction
    "o2": {"*": ("alarm", "o2_deviation")},
    "temp_material": {"TRIPPED": ("latch", "temp_rise"), "*": ("trip", "temp_rise")},
    "temp_gas": {"RUNNING": ("stop", "warning:temp_rise"), "*": ("alarm", "temp_rise")},
}
WELDED = {      # output -> state -> outcome; outputs not listed: no reaction
    "crusher": {"BOOT": ("trip", "self_test"), "RUNNING": ("none", ""), "STOPPING": ("none", ""),
                "TRIPPED": ("latch", "output_feedback:crusher"), "*": ("trip", "output_feedback:crusher")},
}
FEEDBACK = {    # crusher_running fault -> state -> outcome
    "drop": {"RUNNING": ("trip", "contactor_dropped"), "STOPPING": ("trip", "contactor_dropped"),
             "*": ("none", "")},
    "chatter": {"BOOT": ("trip", "self_test"), "RUNNING": ("trip", "contactor_dropped"),
                "STOPPING": ("trip", "contactor_dropped"), "TRIPPED": ("latch", "output_feedback:crusher"),
                "*": ("trip", "output_feedback:crusher")},
    "unreadable": {"BOOT": ("trip", "self_test"), "TRIPPED": ("latch", "output_feedback:crusher"),
                   "*": ("trip", "output_feedback:crusher")},
}
WRITE_FAIL = {"TRIPPED": ("latch", "output_write"), "*": ("trip", "output_write")}


def trip_gas(door, rto, overpressure):
    """(n2_purge, n2_boost, exhaust, vent) in TRIPPED: the reference's "Trip effects by cause", written out.

    Default: purge and boost open, exhaust open, vent closed (dilute, inert, keep the cell below
    atmosphere). RTO inlet flammable: exhaust closed, vent open. Overpressure: boost closed, vent open.
    Door open: both N2 valves closed. Where classes disagree: exhaust closes if the RTO inlet is
    flammable; N2 stays closed while the door is open; the vent opens if any class asks.
    """
    purge, boost, exhaust, vent = True, True, True, False
    if rto:
        exhaust, vent = False, True
    if overpressure:
        boost, vent = False, True
    if door:
        purge, boost = False, False
    return purge, boost, exhaust, vent


def sensor_class(s):
    return "o2" if s in O2_SENSORS else "n2" if s == "n2_supply" else "single"


def detect_after_s(sensor, mode):
    s = CONFIG.sensors[sensor]
    return {"disconnect": 0.0, "nan": 0.0, "out_of_range": 0.0, "stale": s.stale_s, "stuck": s.stuck_s}[mode]


def pick(rules, state, sensor=""):
    kind, name = rules.get(state, rules["*"])
    return kind, name.format(s=sensor)


def expected(target, mode, state):
    """(outcome, name): outcome is trip, latch (a trip joining TRIPPED's latch), stop, alarm or none."""
    if mode == "welded":
        return pick(WELDED.get(target, {"*": ("none", "")}), state)
    if mode == "write_fail":
        return pick(WRITE_FAIL, state)
    if mode in FEEDBACK:
        return pick(FEEDBACK[mode], state)
    if mode == "drift":
        key = "o2" if target in O2_SENSORS else target
        return pick(DRIFT.get(key, {"*": ("none", "")}), state)
    shows = detect_after_s(target, mode)
    if state == "BOOT" and SNAP_T_S["BOOT"] + shows >= SELF_TEST_S:
        state = "IDLE"   # the self-test passed before the fault showed
    if state == "PURGING" and shows >= INERTED_AFTER_S[0]:
        state = "READY"  # inert before the fault showed
    return pick(UNHEALTHY[sensor_class(target)], state, target)


def horizon_s(target, mode):
    if mode == "welded":
        return WELDED_S
    if mode in FEEDBACK:
        return FEEDBACK_S
    if mode == "write_fail":
        return WRITE_FAIL_S
    if mode == "drift":
        return DRIFT_S if target in O2_SENSORS or target in DRIFT else DRIFT_QUIET_S
    return detect_after_s(target, mode) + AFTER_S


def shown(target, mode, sensor, dt_s):
    """Whether `sensor`'s fault is visible dt_s after injection: True, False or None (either)."""
    if target != sensor or mode not in MODES or mode == "drift":
        return False
    if mode in IMMEDIATE:
        return True
    at = detect_after_s(target, mode)
    if abs(dt_s - at) <= SLOW_SHOWS_S:
        return None
    return dt_s > at


def expected_gas(loop, target, mode, dt_s):
    """The gas outputs the reference allows in TRIPPED at this scan (a set: a class may be undecided)."""
    core = loop.core
    value = core.health.value   # this scan's raw readings
    door = not core.inputs[IN_DOOR]
    rto_margin = 10 * CONFIG.sensors["lel_rto"].resolution   # the sim's noise: sd 3 counts
    dp_margin = 10 * CONFIG.sensors["dp_cell"].resolution
    rto = _either(shown(target, mode, "lel_rto", dt_s),
                  _level(value[SENSORS.index("lel_rto")], TH["lel_rto"]["warning"], rto_margin))
    overpressure = _either(shown(target, mode, "dp_cell", dt_s),
                           _level(value[SENSORS.index("dp_cell")], TH["dp_cell"]["trip"], dp_margin))
    return {trip_gas(door, r, o) for r in rto for o in overpressure}


def _level(v, limit, margin):
    if v != v:
        return False
    if v >= limit + margin:
        return True
    return None if v >= limit - margin else False


def _either(*flags):
    """The possible values of `any(flags)` when None means either."""
    if any(f is True for f in flags):
        return (True,)
    if any(f is None for f in flags):
        return (False, True)
    return (False,)


# -- snapshots of the cell in each state ---------------------------------------------------------
SNAP_T_S = {}
_SNAPS = {}
INERTED_AFTER_S = []   # from the PURGING snapshot to READY, measured


def scan_for(loop, seconds, check=None, tripped=None, period=None):
    io = loop.io
    model = io.model
    period = period or loop.period_ms
    t = loop.core.now + period
    end = loop.core.now + int(seconds * 1000)
    core = loop.core
    refused = {OUTPUTS.index(n) for n, f in getattr(io, "output_faults", {}).items() if f == "write_fail"}
    i_crusher, i_feed = OUTPUTS.index("crusher"), OUTPUTS.index("feed")
    while t <= end:
        loop.scan(t)
        if check is not None:
            state = core.state
            if state != 4 and state != 5:   # RUNNING, STOPPING
                # the outputs the simulated cell applied (an E-stop also drops them in the cell);
                # a relay that refuses writes is judged on the command (the watchdog relay's job)
                crusher = core.outputs[i_crusher] if i_crusher in refused else model.crusher_cmd
                feed = core.outputs[i_feed] if i_feed in refused else model.feed_on
                assert not crusher and not feed, (STATES[state], t)
                if state == 6 and tripped is not None:
                    tripped(t)
            if loop.events:
                check(loop.drain_events())
        t += period


def build_snapshots():
    if _SNAPS:
        return _SNAPS
    loop = ScanLoop(CONFIG, SimulatedCell(CONFIG, seed=11))

    def keep(name):
        assert loop.core.state_name == name, (name, loop.core.state_name, loop.core.causes())
        loop.drain_events()
        SNAP_T_S[name] = loop.core.now / 1000.0
        _SNAPS[name] = pickle.dumps(loop)

    loop.scan(0)
    keep("BOOT")
    scan_for(loop, 3)
    keep("IDLE")
    loop.submit("purge", "local")
    scan_for(loop, 0.2)
    keep("PURGING")
    while loop.core.state_name == "PURGING":
        scan_for(loop, 1)
    INERTED_AFTER_S.append(loop.core.now / 1000.0 - SNAP_T_S["PURGING"])
    scan_for(loop, 20)
    keep("READY")
    loop.submit("start", "local")
    scan_for(loop, 30)
    keep("RUNNING")
    loop.submit("stop", "local")
    scan_for(loop, 0.2)
    keep("STOPPING")
    scan_for(loop, 20)
    loop.submit("start", "local")
    scan_for(loop, 5)
    loop.io.event("estop")
    scan_for(loop, 1)
    loop.io.event("estop_release")
    scan_for(loop, 1)
    keep("TRIPPED")
    return _SNAPS


build_snapshots()   # at import: SNAP_T_S feeds expected()


def observe(state, target, mode):
    """Run one case; return what happened and check the invariants on the way."""
    loop = pickle.loads(_SNAPS[state])
    loop.io.inject_fault(target, mode)
    t0 = loop.core.now
    seen = {"trips": [], "stops": [], "alarms": [], "tripped_scans": 0}
    out_i = {n: OUTPUTS.index(n) for n in OUTPUTS}

    def tripped(t):
        out = loop.core.outputs
        gas = tuple(out[out_i[n]] for n in ("n2_purge", "n2_boost", "exhaust", "vent"))
        want = expected_gas(loop, target, mode, (t - t0) / 1000.0)
        assert out[out_i["alarm"]] and not out[out_i["crusher"]] and not out[out_i["feed"]], (
            "TRIPPED: beacon on, crusher and feed off", dict(zip(OUTPUTS, out, strict=True)))
        assert gas in want, ("TRIPPED gas outputs (n2_purge, n2_boost, exhaust, vent)", gas, "the reference:",
                             sorted(want), (t - t0) / 1000.0)
        seen["tripped_scans"] += 1

    def check(events):
        for e in events:
            kind = e["type"]
            if kind == "trip":
                seen["trips"].append(e["causes"])
                assert not loop.core.outputs[0] and not loop.core.outputs[1], e   # off in the same scan
            elif kind == "state" and e["cause"].startswith("controlled_stop:"):
                seen["stops"].append(e["cause"].split(":", 1)[1])
            elif kind == "alarm" and e["active"]:
                seen["alarms"].append(e["name"])

    horizon = horizon_s(target, mode)
    if mode == "stuck" and horizon > QUIET_LEAD_S + AFTER_S + 10.0:
        # Nothing can happen before a stuck reading shows (the plant is steady, the reading frozen):
        # wait for it at 1 s scans, still checked, and judge its showing at the real scan period.
        lead = detect_after_s(target, mode) - QUIET_LEAD_S
        scan_for(loop, lead, check, tripped, period=1000)
        horizon -= lead
    scan_for(loop, horizon, check, tripped)
    return seen


def outcome_of(seen, state):
    if seen["trips"]:
        return ("latch" if state == "TRIPPED" else "trip"), seen["trips"][0]
    if seen["stops"]:
        return "stop", seen["stops"][0]
    if seen["alarms"]:
        return "alarm", seen["alarms"]
    return "none", ""


CASES = [(s, m, st) for s in SENSORS for m in MODES for st in STATES]
CASES += [(o, m, st) for o in OUTPUTS for m in OUTPUT_MODES for st in STATES]
CASES += [("crusher_running", m, st) for m in FEEDBACK_MODES for st in STATES]


@pytest.mark.parametrize("target, mode, state", CASES, ids=[f"{t}-{m}-{s}" for t, m, s in CASES])
def test_fault_matrix(target, mode, state):
    want_kind, want_name = expected(target, mode, state)
    seen = observe(state, target, mode)
    got_kind, got = outcome_of(seen, state)
    assert got_kind == want_kind, (want_kind, want_name, got_kind, got)
    if want_kind in ("trip", "latch", "alarm"):
        assert want_name in got, (want_name, got)
    elif want_kind == "stop":
        assert got == want_name
    if want_kind == "trip" or state == "TRIPPED":
        assert seen["tripped_scans"], "the trip effects were never checked"


def test_matrix_covers_every_combination():
    assert FEEDBACK_MODES == ("chatter", "drop", "unreadable") and OUTPUT_MODES == ("welded", "write_fail")
    n = len(STATES)
    assert len(CASES) == (len(SENSORS) * len(MODES) * n + len(OUTPUTS) * len(OUTPUT_MODES) * n
                          + len(FEEDBACK_MODES) * n) == 504 + 112 + 21 == 637
    assert set(SNAP_T_S) == set(STATES)


def test_trip_effects_table_as_domain_md_writes_it():
    # The expectation above, pinned to docs/process-safety.md's rows (not to the core's tables).
    assert trip_gas(False, False, False) == (True, True, True, False)      # default
    assert trip_gas(False, True, False) == (True, True, False, True)      # RTO inlet flammable
    assert trip_gas(False, False, True) == (True, False, True, True)      # overpressure
    assert trip_gas(True, False, False) == (False, False, True, False)    # door open
    assert trip_gas(True, True, False) == (False, False, False, True)     # door + RTO: exhaust closes
    assert trip_gas(True, False, True) == (False, False, True, True)      # door + overpressure
    assert trip_gas(False, True, True) == (True, False, False, True)
    assert trip_gas(True, True, True) == (False, False, False, True)
