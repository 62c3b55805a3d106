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
   window. Other outputs have no feedback: no reaction (docs/safety.md, Known limits).

Every scan of every case also checks the invariant on the outputs the simulated cell applied:
crusher and feed off outside RUNNING/STOPPING, and off in the scan of any trip.
"""

import pickle

import pytest

from controller import config
from controller.loop import ScanLoop
from controller.names import O2_SENSORS, OUTPUTS, SENSORS, STATES
from hal.sim import SimulatedCell

CONFIG = config.load(config.Path(__file__).resolve().parents[1] / "config" / "cell.toml")
MODES = ("disconnect", "stuck", "nan", "out_of_range", "drift", "stale")
SELF_TEST_S = CONFIG.timers["self_test_s"]
DRIFT_S = 90.0          # long enough for the drift rules above, short of any level limit
AFTER_S = 3.0           # observed after a fault is detected
WELDED_S = 10.0         # feedback_timeout_s + margin, short of STOPPING's run-down

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
    if mode == "drift":
        return DRIFT_S
    return detect_after_s(target, mode) + AFTER_S


# -- snapshots of the cell in each state ---------------------------------------------------------
SNAP_T_S = {}
_SNAPS = {}
INERTED_AFTER_S = []   # from the PURGING snapshot to READY, measured


def scan_for(loop, seconds, check=None):
    io = loop.io
    model = io.model
    period = loop.period_ms
    t = loop.core.now + period
    end = loop.core.now + int(seconds * 1000)
    core = loop.core
    while t <= end:
        loop.scan(t)
        if check is not None:
            state = core.state
            if state != 4 and state != 5:   # RUNNING, STOPPING
                # the outputs the simulated cell applied (an E-stop also drops them in the cell)
                assert not model.crusher_cmd and not model.feed_on, (STATES[state], t)
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
    seen = {"trips": [], "stops": [], "alarms": []}

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

    scan_for(loop, horizon_s(target, mode), check)
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
CASES += [(o, "welded", st) for o in OUTPUTS for st in STATES]


@pytest.mark.parametrize("target, mode, state", CASES, ids=[f"{t}-{m}-{s}" for t, m, s in CASES])
def test_fault_matrix(target, mode, state):
    want_kind, want_name = expected(target, mode, state)
    got_kind, got = outcome_of(observe(state, target, mode), state)
    assert got_kind == want_kind, (want_kind, want_name, got_kind, got)
    if want_kind in ("trip", "latch", "alarm"):
        assert want_name in got, (want_name, got)
    elif want_kind == "stop":
        assert got == want_name


def test_matrix_covers_every_combination():
    assert len(CASES) == len(SENSORS) * len(MODES) * len(STATES) + len(OUTPUTS) * len(STATES) == 553
    assert set(SNAP_T_S) == set(STATES)
