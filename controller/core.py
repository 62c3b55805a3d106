"""The safety core: states, interlocks, trips, voting, latching and reset.

MicroPython-compatible subset (no typing, dataclasses, enum, f-string-free hot path) so the same
file runs on CPython and under the MicroPython unix port. `Core.step()` is deterministic: no I/O,
no clock reads; the caller passes the time, the readings, the inputs and the commands.

Why a declarative transition table: the table *is* the specification a safety engineer reads,
the cause-and-effect matrix is generated from it, and `check_table()` proves at import time that
every state is reachable and none is a dead end.
"""

from controller.health import RiseDetector, SensorHealth
from controller.names import (
    CALIBRATED_SENSORS,
    COMMANDS,
    INPUT_FAILSAFE,
    INPUTS,
    O2_SENSORS,
    OUTPUTS,
    SENSORS,
    STATES,
)

BOOT, IDLE, PURGING, READY, RUNNING, STOPPING, TRIPPED = 0, 1, 2, 3, 4, 5, 6


# Import-time helpers carry `pragma: no mutate block`: they run once when the module is imported,
# before mutmut's forked test processes choose a mutant, so their mutants could never be killed.
# What they build is checked as data instead (tests/test_causeeffect.py, check_table tests).
def _mask(*states):  # pragma: no mutate block
    m = 0
    for s in states:
        m |= 1 << s
    return m


CRUSHING = _mask(RUNNING, STOPPING)                      # crusher may turn
INERT = _mask(PURGING, READY, RUNNING, STOPPING)         # cell closed and being inerted
OPERATING = _mask(IDLE, PURGING, READY, RUNNING, STOPPING)
ANY_STATE = _mask(BOOT, IDLE, PURGING, READY, RUNNING, STOPPING, TRIPPED)

# ---------------------------------------------------------------------------------------------
# Transition table: (source, event, target, guard). First match wins. Guards are Core methods
# that return None (pass) or the reason for refusal. `trip` is handled first in every state.
# ---------------------------------------------------------------------------------------------
TRANSITIONS = (
    (BOOT, "self_test_passed", IDLE, None),
    (BOOT, "trip", TRIPPED, None),
    (IDLE, "purge", PURGING, "guard_purge"),
    (IDLE, "trip", TRIPPED, None),
    (PURGING, "inerted", READY, None),
    (PURGING, "shutdown", IDLE, None),
    (PURGING, "trip", TRIPPED, None),
    (READY, "start", RUNNING, "guard_start"),
    (READY, "permissive_lost", PURGING, None),
    (READY, "shutdown", IDLE, None),
    (READY, "trip", TRIPPED, None),
    (RUNNING, "stop", STOPPING, None),
    (RUNNING, "controlled_stop", STOPPING, None),
    (RUNNING, "trip", TRIPPED, None),
    (STOPPING, "rundown_done", READY, None),
    (STOPPING, "trip", TRIPPED, None),
    (TRIPPED, "reset", PURGING, "guard_reset"),
)

# Outputs per state, in OUTPUTS order: crusher, feed, n2_purge, n2_boost, exhaust, vent, alarm.
# BOOT and TRIPPED take the configured safe states (TRIPPED sounds the alarm); RUNNING's feed
# follows the contactor feedback ("feed on once the crusher runs").
FEED_FOLLOWS_CRUSHER = None
STATE_OUTPUTS = (
    None,                                                      # BOOT: safe states
    (False, False, False, False, True, False, False),          # IDLE
    (False, False, True, True, True, False, False),            # PURGING
    (False, False, True, False, True, False, False),           # READY
    (True, FEED_FOLLOWS_CRUSHER, True, False, True, False, False),  # RUNNING
    (True, False, True, True, True, False, False),             # STOPPING
    None,                                                      # TRIPPED: safe states + alarm
)

# ---------------------------------------------------------------------------------------------
# Trip causes: (name, signal, condition, states where it trips). Names are a public contract.
# In TRIPPED every condition is still evaluated: latched causes clear only when their condition
# has been false for reset_hold_s, and a cause that would trip PURGING is added to the latch.
# ---------------------------------------------------------------------------------------------
LEVEL_TRIPS = (  # cause, sensor: sensor >= thresholds[sensor].trip
    ("h2_high", "h2_cell"),
    ("lel_high", "lel_cell"),
    ("lel_rto_high", "lel_rto"),
    ("co_high", "co_cell"),
    ("hf_high", "hf_room"),
    ("temp_gas_high", "temp_gas"),
    ("temp_material_high", "temp_material"),
    ("dp_high", "dp_cell"),
)
RISE_TRIPS = (("co_rise", "co_cell"), ("temp_rise", "temp_gas"), ("temp_rise", "temp_material"),
              ("dp_rise", "dp_cell"))

TRIP_RULES = (
    # name, signal, condition (for documents and the cause-and-effect matrix), state mask,
    # limits (config keys the condition reads), voting, delay (config keys; () = the same scan).
    ("o2_high", "o2 (o2_a, o2_b, o2_c)", "2oo3: two sensors >= o2.trip, an unhealthy one counts as high",
     CRUSHING, ("thresholds.o2.trip",), "2oo3", ()),
    ("o2_vote_lost", "o2 (o2_a, o2_b, o2_c)", "two or more O2 sensors unhealthy", INERT, (), "2oo3", ()),
    ("h2_high", "h2_cell", "h2_cell >= h2_cell.trip", OPERATING, ("thresholds.h2_cell.trip",), "1oo1", ()),
    ("lel_high", "lel_cell", "lel_cell >= lel_cell.trip", OPERATING, ("thresholds.lel_cell.trip",), "1oo1",
     ()),
    ("lel_rto_high", "lel_rto", "lel_rto >= lel_rto.trip", OPERATING, ("thresholds.lel_rto.trip",), "1oo1",
     ()),
    ("co_high", "co_cell", "co_cell >= co_cell.trip", OPERATING, ("thresholds.co_cell.trip",), "1oo1", ()),
    ("co_rise", "co_cell", "rise of co_cell >= co_rise.trip ppm/s over co_rise.window_s", OPERATING,
     ("thresholds.co_rise.trip", "thresholds.co_rise.window_s"), "1oo1", ()),
    ("hf_high", "hf_room", "hf_room >= hf_room.trip", OPERATING, ("thresholds.hf_room.trip",), "1oo1", ()),
    ("temp_gas_high", "temp_gas", "temp_gas >= temp_gas.trip", OPERATING, ("thresholds.temp_gas.trip",),
     "1oo1", ()),
    ("temp_material_high", "temp_material", "temp_material >= temp_material.trip", OPERATING,
     ("thresholds.temp_material.trip",), "1oo1", ()),
    ("temp_rise", "temp_gas, temp_material",
     "rise of either >= temp_rise.trip K/min over temp_rise.window_s", OPERATING,
     ("thresholds.temp_rise.trip", "thresholds.temp_rise.window_s"), "1oo2", ()),
    ("dp_high", "dp_cell", "dp_cell >= dp_cell.trip", OPERATING, ("thresholds.dp_cell.trip",), "1oo1", ()),
    ("dp_rise", "dp_cell", "rise of dp_cell >= dp_rise.trip Pa/s over dp_rise.window_s", OPERATING,
     ("thresholds.dp_rise.trip", "thresholds.dp_rise.window_s"), "1oo1", ()),
    ("n2_supply_low", "n2_supply",
     "n2_supply < n2_supply.low_low (or unhealthy) while voted O2 >= o2.warning", INERT,
     ("thresholds.n2_supply.low_low", "thresholds.o2.warning"), "1oo1 and 2oo3", ()),
    ("estop", "estop_ok", "estop_ok false (or unreadable)", OPERATING, (), "1oo1", ()),
    ("door_open", "door_closed", "door_closed false (or unreadable)", INERT, (), "1oo1", ()),
    ("purge_timeout", "PURGING timer", "PURGING longer than timers.purge_timeout_s", _mask(PURGING),
     (), "-", ("timers.purge_timeout_s",)),
    ("output_feedback:crusher", "crusher_running",
     "contactor feedback differs from the crusher command for timers.feedback_timeout_s", ANY_STATE,
     (), "1oo1", ("timers.feedback_timeout_s",)),
    ("output_write", "outputs", "the backend failed to write an output", ANY_STATE, (), "-", ()),
    ("scan_overrun", "scan loop", "cell.overrun_trip_count consecutive late scans", ANY_STATE,
     ("cell.overrun_trip_count",), "-", ()),
    ("self_test", "BOOT", "a sensor unhealthy, an input unreadable, E-stop open or crusher feedback on "
     "at the end of timers.self_test_s", _mask(BOOT), (), "-", ("timers.self_test_s",)),
)
# sensor_fault:<name>: one rule per sensor, generated below. Limits and delays name the sensor's keys.
SENSOR_FAULT_RULE = ("sensor unhealthy: a backend fault, NaN, outside range, older than stale_s, "
                     "or not moving beyond resolution for stuck_s",
                     ("sensors.{}.range",), "1oo1", ("sensors.{}.stale_s", "sensors.{}.stuck_s"))
SENSOR_FAULT_STATES = OPERATING  # sensor_fault:<name> for every non-O2 sensor except n2_supply


def _build_causes():  # pragma: no mutate block
    names = []
    masks = []
    for rule in TRIP_RULES:
        names.append(rule[0])
        masks.append(rule[3])
    for s in SENSORS:
        names.append("sensor_fault:" + s)
        # O2 sensors are judged by the vote; n2_supply's worst case is folded into n2_supply_low.
        # Both appear as causes only in a failed self-test.
        masks.append(_mask(BOOT) | (0 if s in O2_SENSORS or s == "n2_supply" else SENSOR_FAULT_STATES))
    return tuple(names), tuple(masks)


CAUSES, CAUSE_MASKS = _build_causes()
_C = {name: i for i, name in enumerate(CAUSES)}

# Alarms: (name, severity, state mask). Warnings that are held in RUNNING bring a controlled stop.
ALARMS = (
    ("o2", "warning", CRUSHING),
    ("h2_cell", "warning", OPERATING | _mask(TRIPPED)),
    ("lel_cell", "warning", OPERATING | _mask(TRIPPED)),
    ("lel_rto", "warning", OPERATING | _mask(TRIPPED)),
    ("co_cell", "warning", OPERATING | _mask(TRIPPED)),
    ("hf_room", "warning", OPERATING | _mask(TRIPPED)),
    ("temp_gas", "warning", OPERATING | _mask(TRIPPED)),
    ("temp_material", "warning", OPERATING | _mask(TRIPPED)),
    ("temp_rise", "warning", OPERATING | _mask(TRIPPED)),
    ("dp_cell", "warning", OPERATING),          # the exhaust is closed in TRIPPED: no band there
    ("n2_supply", "warning", OPERATING | _mask(TRIPPED)),
    ("o2_vote_degraded", "warning", OPERATING | _mask(TRIPPED)),
    ("o2_deviation", "warning", OPERATING | _mask(TRIPPED)),
    ("rto_not_ready", "warning", INERT),
) + tuple(("sensor_fault:" + s, "fault", OPERATING | _mask(TRIPPED)) for s in SENSORS) + tuple(
    # A bump test or calibration is due (the loop tells, from the calibration records and the date).
    ("calibration_due:" + s, "warning", OPERATING | _mask(TRIPPED)) for s in CALIBRATED_SENSORS)
_A = {a[0]: i for i, a in enumerate(ALARMS)}
ALARM_MASKS = tuple(a[2] for a in ALARMS)
ALARM_OFF_DELAY_MS = 2000   # an alarm clears only after its condition has been gone this long
NO_ALARMS = [False] * len(ALARMS)
A_O2, A_O2_DEVIATION, A_O2_DEGRADED = _A["o2"], _A["o2_deviation"], _A["o2_vote_degraded"]
A_DP, A_TEMP_RISE, A_N2, A_RTO = _A["dp_cell"], _A["temp_rise"], _A["n2_supply"], _A["rto_not_ready"]
N_INPUTS = len(INPUTS)
FAILSAFE_INPUTS = tuple(INPUT_FAILSAFE[n] for n in INPUTS)
# Warnings that, held for warning_hold_s in RUNNING, bring a controlled stop.
HELD_WARNINGS = tuple(_A[n] for n in ("o2", "h2_cell", "lel_cell", "co_cell", "hf_room", "temp_gas",
                                      "temp_material", "temp_rise", "dp_cell"))

# Alarms that only inform: they neither block `start` (unless a permissive says so) nor stop crushing.
ADVISORY_ALARMS = tuple(_A["calibration_due:" + s] for s in CALIBRATED_SENSORS)
A_CALIBRATION = {s: _A["calibration_due:" + s] for s in CALIBRATED_SENSORS}

CONTROLLED_STOPS = (
    # reason, condition (documents), alarm it follows (None: the held-warning rule), limits, delay.
    # Each brings RUNNING -> STOPPING at once; the first that applies names the stop.
    ("warning_held", "a warning (o2, h2_cell, lel_cell, co_cell, hf_room, temp_gas, temp_material, "
     "temp_rise, dp_cell) active for timers.warning_hold_s", None,
     ("thresholds.o2.warning", "thresholds.h2_cell.warning", "thresholds.lel_cell.warning",
      "thresholds.co_cell.warning", "thresholds.hf_room.warning", "thresholds.temp_gas.warning",
      "thresholds.temp_material.warning", "thresholds.temp_rise.warning", "thresholds.dp_cell.warning_low",
      "thresholds.dp_cell.warning_high"), ("timers.warning_hold_s",)),
    ("lel_rto_warning", "lel_rto >= lel_rto.warning", "lel_rto", ("thresholds.lel_rto.warning",), ()),
    ("o2_vote_degraded", "one O2 sensor unhealthy (vote degraded to 1oo2)", "o2_vote_degraded", (), ()),
    ("n2_supply_low", "n2_supply < n2_supply.low or unhealthy", "n2_supply", ("thresholds.n2_supply.low",),
     ()),
    ("rto_not_ready", "rto_ready false", "rto_not_ready", (), ()),
)
STOP_ALARMS = tuple((c[0], _A[c[2]]) for c in CONTROLLED_STOPS if c[2] is not None)

# Permissives: what each guarded transition needs. The guards below run these rows in order and
# the first failing check names the refusal. (guard, name, signal, condition, limits, check method)
PERMISSIVES = (
    ("guard_purge", "estop_closed", "estop_ok", "E-stop chain closed", (), "_p_estop"),
    ("guard_purge", "door_closed", "door_closed", "door closed", (), "_p_door"),
    ("guard_start", "remote_enable", "remote_enable", "a remote start needs the key switch", (),
     "_p_remote_enable"),
    ("guard_start", "o2_all_healthy", "o2 (o2_a, o2_b, o2_c)", "all three O2 sensors healthy", (),
     "_p_o2_healthy"),
    ("guard_start", "o2_below_permissive", "o2 (voted)", "voted O2 < o2.start_permissive",
     ("thresholds.o2.start_permissive",), "_p_o2_low"),
    ("guard_start", "no_alarm", "alarms", "no active alarm (calibration_due alone does not block)", (),
     "_p_no_alarm"),
    ("guard_start", "rto_ready", "rto_ready", "RTO ready to take the off-gas", (), "_p_rto"),
    ("guard_start", "crusher_off", "crusher_running", "no contactor feedback before the start", (),
     "_p_crusher_off"),
    ("guard_start", "calibration_in_date", "calibration records",
     "no gas sensor overdue for bump test or calibration by more than calibration.grace_days",
     ("calibration.bump_interval_days", "calibration.calibration_interval_days", "calibration.grace_days"),
     "_p_calibration"),
    ("guard_reset", "reset_source", "command source", "local, unless cell.remote_reset = true",
     ("cell.remote_reset",), "_p_reset_source"),
    ("guard_reset", "causes_clear", "latched causes", "every latched cause clear for timers.reset_hold_s",
     ("timers.reset_hold_s",), "_p_causes_clear"),
)


def _guard_checks(guard):  # pragma: no mutate block
    return tuple(row[5] for row in PERMISSIVES if row[0] == guard)


GUARD_CHECKS = {g: _guard_checks(g) for g in ("guard_purge", "guard_start", "guard_reset")}

# Transitions the core takes by itself (no command): event, signal, condition, limits, delay.
AUTOMATIC = (
    ("self_test_passed", "BOOT", "every sensor healthy, inputs readable, E-stop closed, no contactor "
     "feedback (a persisted latch goes to TRIPPED instead)", (), ("timers.self_test_s",)),
    ("inerted", "o2 (voted)", "at least two O2 sensors healthy and voted O2 < o2.start_permissive",
     ("thresholds.o2.start_permissive",), ("timers.purge_hold_s",)),
    ("permissive_lost", "o2 (voted)", "voted O2 >= o2.start_permissive + o2.permissive_hysteresis "
     "(or the vote lost)", ("thresholds.o2.start_permissive", "thresholds.o2.permissive_hysteresis"), ()),
    ("rundown_done", "STOPPING timer", "the crusher ran down with the feed off", (), ("timers.rundown_s",)),
)

_S = {name: i for i, name in enumerate(SENSORS)}
_I = {name: i for i, name in enumerate(INPUTS)}


def check_table(transitions=TRANSITIONS):
    """Prove every state is reachable from BOOT and none is a dead end; return problems."""
    problems = []
    reach = {BOOT}
    grew = True
    while grew:
        grew = False
        for src, _event, dst, _guard in transitions:
            if src in reach and dst not in reach:
                reach.add(dst)
                grew = True
    for s in range(len(STATES)):
        if s not in reach:
            problems.append("state " + STATES[s] + " is unreachable from BOOT")
        if not any(t[0] == s for t in transitions):
            problems.append("state " + STATES[s] + " has no way out")
        if s != TRIPPED and s != BOOT and not any(t[0] == s and t[1] == "trip" for t in transitions):
            problems.append("state " + STATES[s] + " cannot trip")
    return problems


_problems = check_table()
if _problems:
    raise AssertionError("; ".join(_problems))


def _fmt(v):
    return f"{v:.3g}"


class Core:
    """One crushing cell's safety logic. Create once; call `step()` every scan."""

    def __init__(self, params, start_ms=0):
        p = params
        th = p["thresholds"]
        tm = p["timers_ms"]
        self.remote_reset = bool(p["remote_reset"])
        self.overrun_limit = int(p["overrun_trip_count"])
        self.self_test_ms = tm["self_test_s"]
        self.purge_hold_ms = tm["purge_hold_s"]
        self.purge_timeout_ms = tm["purge_timeout_s"]
        self.warning_hold_ms = tm["warning_hold_s"]
        self.rundown_ms = tm["rundown_s"]
        self.reset_hold_ms = tm["reset_hold_s"]
        self.feedback_ms = tm["feedback_timeout_s"]
        self.safe = tuple(bool(x) for x in p["safe"])

        o2 = th["o2"]
        self.o2_warning = o2["warning"]
        self.o2_trip = o2["trip"]
        self.o2_permissive = o2["start_permissive"]
        self.o2_lost_level = o2["start_permissive"] + o2["permissive_hysteresis"]
        self.o2_deviation = o2["deviation"]
        self.o2_idx = tuple(_S[n] for n in O2_SENSORS)

        # (cause, sensor index, trip, alarm index or None, warning): dp_cell's alarm is its band
        self.levels = tuple(
            (_C[c], _S[s], th[s]["trip"], None if s == "dp_cell" else _A[s],
             th[s]["trip"] if s == "dp_cell" else th[s]["warning"]) for c, s in LEVEL_TRIPS)
        self.dp = (_S["dp_cell"], th["dp_cell"]["warning_low"], th["dp_cell"]["warning_high"])
        self.n2 = (_S["n2_supply"], th["n2_supply"]["low"], th["n2_supply"]["low_low"])
        rises = []
        for cause, sensor in RISE_TRIPS:
            rule = th[cause]
            per_s = 60.0 if cause == "temp_rise" else 1.0
            det = RiseDetector(int(rule["window_s"] * 1000), per_s)
            rises.append((_C[cause], _S[sensor], rule["trip"], rule.get("warning"), det))
        self.rises = tuple(rises)

        self.health = SensorHealth(p["sensors"], (self.o2_idx,))
        self.sensor_faults = tuple(
            (i, None if s in O2_SENSORS or s == "n2_supply" else _C["sensor_fault:" + s],
             _A["sensor_fault:" + s]) for i, s in enumerate(SENSORS))

        # -- mutable state ------------------------------------------------------------------
        self.state = BOOT
        self.state_since = start_ms
        self.now = start_ms
        self.events = []                   # event dicts, drained by the caller
        self.command_results = []          # (accepted, reason) per command of the last step
        self.latched = []                  # cause indices of the latched trip, in order
        self.last_active = [None] * len(CAUSES)   # last time each cause's condition held
        self.hits = []                     # causes whose condition holds this scan
        self.alarm_active = [False] * len(ALARMS)
        self.alarm_acked = [True] * len(ALARMS)
        self.trip_acked = True
        self.inputs = [INPUT_FAILSAFE[n] for n in INPUTS]
        self.prev_local_reset = False
        self.outputs = list(self.safe)
        self.output_table = self._build_output_table()
        self.outputs_t = self.output_table[BOOT][0][0]
        self.unacked = 0
        self.voted_o2 = float("nan")
        self.o2_bad = 3
        self.purge_ok_since = None
        self.warn_since = None
        self.feedback_bad_since = None
        self.changed = []
        self.alarm_now = [False] * len(ALARMS)
        self.alarm_clear_since = [None] * len(ALARMS)
        self.clear_pending = 0
        self.alarm_sbit = 0                # the state bit alarms were last judged in
        self.command_source = "local"
        self.calibration_due = ()          # alarm indices of sensors due (given by the loop)
        self.calibration_overdue = ()      # names overdue beyond the grace: `start` is refused
        self.restored_acks = []            # alarm indices acknowledged before a restart
        self.restored_trip_acked = False
        self.persist_gen = 0               # bumped when what survives a restart changes

    # -- public helpers ---------------------------------------------------------------------
    @property
    def state_name(self):
        return STATES[self.state]

    def causes(self):
        return [CAUSES[i] for i in self.latched]

    def active_alarms(self):
        return [(ALARMS[i][0], ALARMS[i][1], self.alarm_acked[i])
                for i in range(len(ALARMS)) if self.alarm_active[i]]

    def outputs_dict(self):
        return {OUTPUTS[i]: self.outputs[i] for i in range(len(OUTPUTS))}

    def restore_latch(self, causes, trip_acked=False, acked_alarms=()):
        """Start latched: a persisted trip survives a restart and still needs a reset.

        trip_acked / acked_alarms: the acknowledgement state before the restart, so a horn that
        an operator silenced stays silent for the same alarms (a new alarm still sounds).
        """
        for name in causes:
            i = _C.get(name)
            if i is not None and i not in self.latched:
                self.latched.append(i)
                self.last_active[i] = self.now   # the reset hold counts from this start
        self.restored_trip_acked = bool(trip_acked) and bool(self.latched)
        self.restored_acks = [_A[n] for n in acked_alarms if n in _A]
        self.persist_gen += 1

    def set_calibration(self, due=(), overdue=()):
        """Sensors whose bump test or calibration is due, and those overdue beyond the grace.

        The core reads no clock and no file: the loop computes both from the records and the date.
        """
        self.calibration_due = tuple(A_CALIBRATION[n] for n in due if n in A_CALIBRATION)
        self.calibration_overdue = tuple(n for n in overdue if n in A_CALIBRATION)

    def ack_state(self):
        """(trip acknowledged, names of active alarms acknowledged): what a restart must keep."""
        return (self.trip_acked, [ALARMS[k][0] for k in range(len(ALARMS))
                                  if self.alarm_active[k] and self.alarm_acked[k]])

    # -- the scan ---------------------------------------------------------------------------
    def step(self, now, readings, inputs, commands=(), overruns=0, write_ok=True):
        """Judge one scan and return the outputs (a list in OUTPUTS order).

        readings: sequence of (value, fault, t_ms) in SENSORS order.
        inputs: sequence of bool or None (failed read) in INPUTS order.
        commands: sequence of (action, source); results land in self.command_results.
        overruns: consecutive late scans so far; write_ok: whether the last write succeeded.
        """
        self.now = now
        if self.command_results:
            self.command_results = []
        ev = self.events
        state = self.state
        sbit = 1 << state

        # 1. Sensor health. -----------------------------------------------------------------
        changed = self.changed
        del changed[:]
        h = self.health
        h.update(now, readings, changed)
        for i in changed:
            ev.append({"t": now / 1000.0, "type": "sensor", "name": SENSORS[i], "quality": h.quality[i]})
        val = h.value
        ok = h.healthy

        # 2. Digital inputs: an unreadable input counts as its unsafe value. ------------------
        di = self.inputs
        if None in inputs:
            for k in range(N_INPUTS):
                x = inputs[k]
                di[k] = FAILSAFE_INPUTS[k] if x is None else bool(x)
        else:
            di[:] = inputs

        hits = self.hits
        del hits[:]
        alarm = self.alarm_now
        alarm[:] = NO_ALARMS

        # 3. O2 2oo3 vote. An unhealthy sensor votes "high" (worst case for an O2 limit). ------
        a, b, c = self.o2_idx
        va, vb, vc = val[a], val[b], val[c]
        oka, okb, okc = ok[a], ok[b], ok[c]
        bad = (not oka) + (not okb) + (not okc)
        self.o2_bad = bad
        trip = self.o2_trip
        high = bad + (oka and va >= trip) + (okb and vb >= trip) + (okc and vc >= trip)
        if bad == 0:
            voted = max(min(va, vb), min(max(va, vb), vc))   # median of three
            dev = self.o2_deviation
            if (abs(va - (vb + vc) / 2) > dev or abs(vb - (va + vc) / 2) > dev
                    or abs(vc - (va + vb) / 2) > dev):
                alarm[A_O2_DEVIATION] = True
        elif bad == 1:
            # 1oo2 on the two left: the higher one counts (worst case).
            if not oka:
                x, y = vb, vc
            elif not okb:
                x, y = va, vc
            else:
                x, y = va, vb
            voted = x if x > y else y
            alarm[A_O2_DEGRADED] = True
            if abs(x - y) > self.o2_deviation:
                alarm[A_O2_DEVIATION] = True
        else:
            voted = float("nan")
        self.voted_o2 = voted
        if bad >= 2:
            hits.append(_C["o2_vote_lost"])  # cannot tell whether the cell is inert
        elif high >= 2:
            hits.append(_C["o2_high"])  # oxygen above 60 % of the LOC while crushing
        if voted >= self.o2_warning:
            alarm[A_O2] = True

        # 4. Single-sensor levels: gas, temperature, overpressure. Unhealthy = sensor_fault. ----
        for ci, si, lim, ai, warn in self.levels:
            v = val[si]
            if v >= warn and ok[si]:
                if ai is not None:
                    alarm[ai] = True
                if v >= lim:
                    hits.append(ci)  # flammable, toxic, hot or overpressure: each its own cause
        if h.n_bad:
            for si, ci, ai in self.sensor_faults:
                if not ok[si]:
                    # No trustworthy reading: assume the worst for what it guards. O2 sensors are
                    # judged by the vote and n2_supply by n2_supply_low, so only their alarm is set.
                    if ci is not None:
                        hits.append(ci)
                    alarm[ai] = True
        dsi, dlow, dhigh = self.dp
        if ok[dsi] and (val[dsi] < dlow or val[dsi] > dhigh):
            alarm[A_DP] = True

        # 5. Rates of rise: runaway precursors (CO, temperature) and pressure surges. --------
        for ci, si, lim, warn, det in self.rises:
            rate = det.update(now, val[si], ok[si])
            if rate >= lim:
                hits.append(ci)
            elif warn is not None and rate >= warn:
                alarm[A_TEMP_RISE] = True

        # 6. N2 supply: low stops crushing; low-low while O2 climbs trips. --------------------
        nsi, nlow, nlowlow = self.n2
        n2_low = (not ok[nsi]) or val[nsi] < nlow
        if n2_low:
            alarm[A_N2] = True
        if ((not ok[nsi]) or val[nsi] < nlowlow) and (bad >= 2 or voted >= self.o2_warning):
            hits.append(_C["n2_supply_low"])

        # 7. Hard-wired chain, door, RTO, contactor feedback, loop health. --------------------
        if not di[0]:
            hits.append(_C["estop"])  # the hard-wired chain opened: follow it
        if not di[1]:
            hits.append(_C["door_open"])  # air enters and people may be near the crusher
        if not di[2]:
            alarm[A_RTO] = True
        crusher_fb = di[3]
        if crusher_fb != self.outputs[0]:
            if self.feedback_bad_since is None:
                self.feedback_bad_since = now
            elif now - self.feedback_bad_since >= self.feedback_ms:
                hits.append(_C["output_feedback:crusher"])  # welded or failed contactor
        else:
            self.feedback_bad_since = None
        if not write_ok:
            hits.append(_C["output_write"])  # the relays may not be where we think
        if overruns >= self.overrun_limit:
            hits.append(_C["scan_overrun"])  # reaction time no longer guaranteed
        if state == PURGING and now - self.state_since >= self.purge_timeout_ms:
            hits.append(_C["purge_timeout"])  # the cell will not inert: leak or N2 failure
        if state == BOOT and now - self.state_since >= self.self_test_ms:
            if bad or not all(ok) or not di[0] or crusher_fb or None in inputs:
                hits.append(_C["self_test"])
                for i in range(len(SENSORS)):
                    if not ok[i]:
                        hits.append(_C["sensor_fault:" + SENSORS[i]])

        last_active = self.last_active
        for ci in hits:
            last_active[ci] = now

        for k in self.calibration_due:
            alarm[k] = True   # a gas sensor not bump-tested or calibrated in time may read wrong

        # 8. Alarms: events on change; the horn sounds until acknowledged. ------------------
        self._update_alarms(alarm, sbit)

        # 9. Commands, then the state machine. -------------------------------------------------
        local_reset = di[4]
        if local_reset and not self.prev_local_reset:
            commands = tuple(commands) + (("reset", "local"),)   # the panel push-button
        self.prev_local_reset = local_reset

        tripping = None
        if state == BOOT and now - self.state_since < self.self_test_ms:
            sbit = 0   # sensors warm up during the self-test; it decides at its end
        for ci in hits:
            if CAUSE_MASKS[ci] & sbit:
                if tripping is None:
                    tripping = []
                if ci not in tripping:
                    tripping.append(ci)
        if tripping is not None and state != TRIPPED:
            self._trip(tripping)
        elif state == TRIPPED:
            # A new hazard while tripped joins the latch if it would trip the state reset leads to.
            new = None
            for ci in hits:
                # (every cause that can be judged in TRIPPED and trips anywhere else trips PURGING)
                if (CAUSE_MASKS[ci] & (1 << PURGING)) and ci not in self.latched:
                    self.latched.append(ci)
                    if new is None:
                        new = []
                    new.append(CAUSES[ci])
            if new is not None:
                self.trip_acked = False
                self.persist_gen += 1
                ev.append({"t": now / 1000.0, "type": "trip", "causes": new})

        for cmd in commands:
            self._command(cmd[0], cmd[1], cmd[2] if len(cmd) > 2 else None)

        self._automatic(now)
        # The feed needs positive feedback that the crusher turns: an unreadable contactor input
        # counts as "running" for the feedback trip (worst case) but never enables the feed.
        return self._outputs(di[3] and inputs[3] is not None)

    # -- pieces of the scan ---------------------------------------------------------------------
    def _update_alarms(self, alarm, sbit):
        act = self.alarm_active
        if alarm == act and not self.clear_pending and sbit == self.alarm_sbit:
            return   # the usual scan: nothing changed, not even the state the masks apply to
        self.alarm_sbit = sbit
        masks = ALARM_MASKS
        changed = False
        clear_since = self.alarm_clear_since
        pending = 0
        for k in range(len(act)):
            on = alarm[k] and (masks[k] & sbit) != 0
            if act[k] and not on and masks[k] & sbit:
                # Off-delay: a reading dithering at its limit must not make the alarm chatter.
                if clear_since[k] is None:
                    clear_since[k] = self.now
                if self.now - clear_since[k] < ALARM_OFF_DELAY_MS:
                    pending += 1
                    continue
            clear_since[k] = None
            if on != act[k]:
                changed = True
                act[k] = on
                if on:
                    if k in self.restored_acks:
                        self.restored_acks.remove(k)   # acknowledged before the restart
                    else:
                        self.alarm_acked[k] = False
                self.events.append({"t": self.now / 1000.0, "type": "alarm", "name": ALARMS[k][0],
                                    "active": on, "severity": ALARMS[k][1]})
        self.clear_pending = pending
        if changed:
            self.persist_gen += 1
            self._alarm_summary()

    def _alarm_summary(self):
        """Recount what the horn and the warning hold depend on; only when alarms change."""
        act = self.alarm_active
        acked = self.alarm_acked
        self.unacked = sum(1 for k in range(len(act)) if act[k] and not acked[k])
        warn = False
        for k in HELD_WARNINGS:
            if act[k]:
                warn = True
                break
        if warn:
            if self.warn_since is None:
                self.warn_since = self.now
        else:
            self.warn_since = None

    def _trip(self, causes):
        # Latch every cause; outputs go to the safe state in this same scan.
        for ci in causes:
            if ci not in self.latched:
                self.latched.append(ci)
        self.trip_acked = False
        self.persist_gen += 1
        self.events.append({"t": self.now / 1000.0, "type": "trip", "causes": [CAUSES[i] for i in causes]})
        self._go(TRIPPED, "trip:" + ",".join(CAUSES[i] for i in causes))

    def _go(self, target, cause):
        self.events.append({"t": self.now / 1000.0, "type": "state", "from": STATES[self.state],
                            "to": STATES[target], "cause": cause})
        self.state = target
        self.state_since = self.now
        self.purge_ok_since = None
        self.persist_gen += 1
        if target == PURGING:
            self.latched = []   # only a reset leaves TRIPPED, and it goes to PURGING

    def _fire(self, event, cause):
        """Take the first row of the table for (state, event); return None or a refusal reason."""
        for src, evt, dst, guard in TRANSITIONS:
            if src == self.state and evt == event:
                if guard is not None:
                    reason = getattr(self, guard)()
                    if reason is not None:
                        return reason
                self._go(dst, cause)
                return None
        wanted = [STATES[t[0]] for t in TRANSITIONS if t[1] == event]
        return ("'" + event + "' does not apply in " + STATES[self.state]
                + " (only in " + ", ".join(wanted) + ")")

    def _command(self, action, source, by=None):
        """Handle one command: a refused command changes nothing. `by`: the operator, if known."""
        reason = None
        if action not in COMMANDS:
            reason = "unknown action '" + str(action) + "'"
        elif source != "local" and source != "remote":
            reason = "unknown source '" + str(source) + "'"
        elif action == "ack":
            self._ack()
        else:
            self.command_source = source
            reason = self._fire(action, "command:" + action)
        accepted = reason is None
        self.command_results.append((accepted, "" if accepted else reason))
        event = {"t": self.now / 1000.0, "type": "command", "action": action, "source": source,
                 "accepted": accepted, "reason": "" if accepted else reason}
        if by is not None:
            event["by"] = by
        self.events.append(event)

    def _ack(self):
        for k in range(len(ALARMS)):
            if self.alarm_active[k]:
                self.alarm_acked[k] = True
        self.trip_acked = True
        self.persist_gen += 1
        self._alarm_summary()

    def _automatic(self, now):
        state = self.state
        voted = self.voted_o2
        if state == BOOT:
            if now - self.state_since >= self.self_test_ms:
                if self.latched:
                    self._trip(list(self.latched))   # a persisted latch survives the restart
                    if self.restored_trip_acked:
                        self.trip_acked = True       # silenced before the restart: stays silent
                else:
                    self._fire("self_test_passed", "self_test_passed")
        elif state == PURGING:
            # Inert only when the voted O2 (at least two healthy sensors) holds below the permissive.
            if self.o2_bad <= 1 and voted < self.o2_permissive:
                if self.purge_ok_since is None:
                    self.purge_ok_since = now
                elif now - self.purge_ok_since >= self.purge_hold_ms:
                    self._fire("inerted", "inerted")
            else:
                self.purge_ok_since = None
        elif state == READY:
            if not voted < self.o2_lost_level:   # NaN (vote lost) also counts as lost
                self._fire("permissive_lost", "permissive_lost")
        elif state == RUNNING:
            reason = self._stop_reason(now)
            if reason is not None:
                self._fire("controlled_stop", "controlled_stop:" + reason)
        elif state == STOPPING:
            if now - self.state_since >= self.rundown_ms:
                self._fire("rundown_done", "rundown_done")

    def _stop_reason(self, now):
        act = self.alarm_active
        if self.warn_since is not None and now - self.warn_since >= self.warning_hold_ms:
            for k in HELD_WARNINGS:
                if act[k]:
                    return "warning:" + ALARMS[k][0]
        # CONTROLLED_STOPS, in order: lel_rto near its limit (stop making vapour), one O2 sensor
        # lost (one more failure would blind the O2 trip), N2 low (inerting cannot be sustained),
        # RTO not ready (nowhere safe for the off-gas).
        for reason, k in STOP_ALARMS:
            if act[k]:
                return reason
        return None

    def _build_output_table(self):
        """Every output combination, computed once: [state][crusher feedback][horn] -> tuple."""
        table = []
        for state in range(len(STATES)):
            row = STATE_OUTPUTS[state]
            by_fb = []
            for fb in (False, True):
                by_horn = []
                for horn in (False, True):
                    out = list(self.safe if row is None else row)
                    if state == RUNNING:
                        out[1] = fb   # feed only once the crusher really turns
                    out[6] = horn or out[6]
                    # Interlock, belt and braces: nothing turns or feeds outside RUNNING/STOPPING.
                    if not (CRUSHING & (1 << state)):
                        out[0] = False
                        out[1] = False
                    by_horn.append(tuple(out))
                by_fb.append(tuple(by_horn))
            table.append(tuple(by_fb))
        return tuple(table)

    def _outputs(self, crusher_fb):
        state = self.state
        horn = (state == TRIPPED and not self.trip_acked) or self.unacked > 0
        new = self.output_table[state][1 if crusher_fb else 0][1 if horn else 0]
        if new is not self.outputs_t:
            self.outputs_t = new
            self.outputs[:] = new
            self.events.append({"t": self.now / 1000.0, "type": "outputs", "outputs": self.outputs_dict()})
        return self.outputs

    # -- guards: each runs its rows of PERMISSIVES in order; the first refusal is the reason ------
    def _guard(self, guard):
        for check in GUARD_CHECKS[guard]:
            reason = getattr(self, check)()
            if reason is not None:
                return reason
        return None

    def guard_purge(self):
        return self._guard("guard_purge")

    def guard_start(self):
        return self._guard("guard_start")

    def guard_reset(self):
        return self._guard("guard_reset")

    def _p_estop(self):
        if not self.inputs[0]:
            return "E-stop chain open (estop_ok false)"
        return None

    def _p_door(self):
        if not self.inputs[1]:
            return "door open (door_closed false)"
        return None

    def _p_remote_enable(self):
        if self.command_source == "remote" and not self.inputs[5]:
            return "remote start needs the remote_enable key switch"
        return None

    def _p_o2_healthy(self):
        if self.o2_bad:
            return "O2 vote degraded: all three O2 sensors must be healthy to start"
        return None

    def _p_o2_low(self):
        if not self.voted_o2 < self.o2_permissive:
            return ("voted O2 " + _fmt(self.voted_o2) + " % is not below start_permissive "
                    + _fmt(self.o2_permissive) + " %")
        return None

    def _p_no_alarm(self):
        for k in range(len(ALARMS)):
            if self.alarm_active[k] and k not in ADVISORY_ALARMS:
                return "alarm active: " + ALARMS[k][0]
        return None

    def _p_rto(self):
        if not self.inputs[2]:
            return "RTO not ready"
        return None

    def _p_crusher_off(self):
        if self.inputs[3]:
            return "crusher feedback already on"
        return None

    def _p_calibration(self):
        if self.calibration_overdue:
            return ("calibration overdue beyond the grace: " + ", ".join(self.calibration_overdue)
                    + " (record the bump test or calibration: crushcell calibration record)")
        return None

    def _p_reset_source(self):
        if self.command_source == "remote" and not self.remote_reset:
            return "remote reset not allowed (cell.remote_reset = false): reset at the local panel"
        return None

    def _p_causes_clear(self):
        holding = []
        for ci in self.latched:
            t = self.last_active[ci]
            if t is not None and self.now - t < self.reset_hold_ms:
                holding.append(CAUSES[ci])
        if holding:
            return ("causes not clear for " + _fmt(self.reset_hold_ms / 1000.0) + " s: "
                    + ", ".join(holding))
        return None
