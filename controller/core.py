"""The safety core: one scan of interlocks, trips, voting, latching, reset and outputs.

MicroPython-compatible subset (no typing, dataclasses, enum) so the same file runs on CPython and
under the MicroPython unix port. `Core.step()` is deterministic: no I/O, no clock reads; the caller
passes the time, the readings, the inputs and the commands.

Time: the caller passes its raw clock in ms (CPython: monotonic ms; MicroPython: `time.ticks_ms()`,
which wraps at 2**30 on most ports). `step()` turns it into the core's own time, `self.now`, once:
the difference to the previous raw value is taken modulo 2**30 and signed like `time.ticks_diff`
(`controller.health.ticks_diff`); a negative difference is a clock that stepped back and counts as
no time passed. So `self.now` never decreases and every timer of the core and its modules
(self-test, holds, run-down, reset hold, vote recovery, feedback, staleness, stuck, rates of rise)
subtracts only these times: a backward step delays a timer by at most one scan, a wrap by none.
A forward step of 2**29 ms (6.2 days) or more between two scans reads as a backward step.

Where to look: the rules are tables in `controller.rules`, the O2 vote in `controller.voting`,
sensor health and rates of rise in `controller.health`, the feedback integrator in
`controller.feedback`, the parameter envelopes in `controller.envelope`. This module executes
them, in the order of `step()`.
"""

from cellspec.names import (
    CALIBRATED_SENSORS,
    COMMANDS,
    IN_CRUSHER,
    IN_DOOR,
    IN_ESTOP,
    IN_REMOTE,
    IN_RESET,
    IN_RTO,
    INPUT_FAILSAFE,
    INPUTS,
    O2_SENSORS,
    OUT_ALARM,
    OUT_CRUSHER,
    OUT_FEED,
    OUT_HORN,
    OUTPUTS,
    SENSORS,
    STATES,
)
from controller.envelope import check_params
from controller.feedback import DiscrepancyWindow
from controller.health import RiseDetector, SensorHealth, ticks_diff
from controller.rules import (  # noqa: F401  (re-exported: the core's public tables)
    ADVISORY_ALARMS,
    ALARM_INDEX,
    ALARM_MASKS,
    ALARM_OFF_DELAY_MS,
    ALARMS,
    ANY_STATE,
    AUTOMATIC,
    BOOT,
    CAUSE_INDEX,
    CAUSE_MASKS,
    CAUSES,
    CONTROLLED_STOPS,
    CRUSHING,
    FX_DOOR,
    FX_OVERPRESSURE,
    FX_RTO,
    GUARD_CHECKS,
    HELD_WARNINGS,
    IDLE,
    INERT,
    LEVEL_TRIPS,
    OPERATING,
    PERMISSIVES,
    PLATFORM_ALARM_NAMES,
    PURGING,
    READY,
    RISE_TRIPS,
    RUNNING,
    SENSOR_FAULT_RULE,
    STATE_OUTPUTS,
    STOP_ALARMS,
    STOPPING,
    TRANSITIONS,
    TRIP_EFFECTS,
    TRIP_RULES,
    TRIPPED,
    check_table,
    trip_gas_outputs,
)
from controller.voting import O2Vote

_C = CAUSE_INDEX
_A = ALARM_INDEX
_S = {name: i for i, name in enumerate(SENSORS)}
NO_ALARMS = [False] * len(ALARMS)
A_O2, A_O2_DEVIATION, A_O2_DEGRADED = _A["o2"], _A["o2_deviation"], _A["o2_vote_degraded"]
A_O2_ONE_HIGH, A_INERTING = _A["o2_one_high"], _A["inerting_failed"]
A_DP, A_TEMP_RISE, A_N2, A_RTO = _A["dp_cell"], _A["temp_rise"], _A["n2_supply"], _A["rto_not_ready"]
A_INPUT = tuple(_A["input_fault:" + n] for n in INPUTS)
A_CALIBRATION = {s: _A["calibration_due:" + s] for s in CALIBRATED_SENSORS}
A_PLATFORM = {n: _A[n] for n in PLATFORM_ALARM_NAMES}
A_STATE_WRITE, A_CLOCK = _A["state_write_failed"], _A["clock_implausible"]
C_O2_HIGH, C_VOTE_LOST, C_ESTOP, C_DOOR = _C["o2_high"], _C["o2_vote_lost"], _C["estop"], _C["door_open"]
C_FEEDBACK, C_DROPPED, C_WRITE = _C["output_feedback:crusher"], _C["contactor_dropped"], _C["output_write"]
C_OVERRUN, C_PURGE_TIMEOUT, C_SELF_TEST = _C["scan_overrun"], _C["purge_timeout"], _C["self_test"]
C_N2, C_DP_HIGH, C_DP_RISE = _C["n2_supply_low"], _C["dp_high"], _C["dp_rise"]
N_INPUTS = len(INPUTS)
FAILSAFE_INPUTS = tuple(INPUT_FAILSAFE[n] for n in INPUTS)
# Outputs that must be off with no power, checked again here: the MicroPython path has no config.
MUST_BE_OFF = (OUT_CRUSHER, OUT_FEED, OUT_ALARM, OUT_HORN)


def _fmt(v):
    return f"{v:.3g}"


class ParameterError(ValueError):
    """The core's parameters are unsafe or inconsistent; the message lists every problem."""


def validate(params):
    """Every problem with `params` (a list of strings; empty when the core may run)."""
    problems = list(check_params(params))
    safe = params.get("safe") if isinstance(params, dict) else None
    if not isinstance(safe, (tuple, list)) or len(safe) != len(OUTPUTS):
        problems.append("safe: needs one safe state per output (" + ", ".join(OUTPUTS) + ")")
    else:
        for k in MUST_BE_OFF:
            if safe[k]:
                problems.append("outputs." + OUTPUTS[k] + ".safe: must be false (off with no power)")
    return problems


class Core:
    """One crushing cell's safety logic. Create once; call `step()` every scan."""

    def __init__(self, params, start_ms=0, clock_ms=None):
        """start_ms: the core's time at creation (events' "t" counts from it); clock_ms: the raw
        clock at creation (default start_ms), e.g. `Core(params, 0, time.ticks_ms())`."""
        problems = validate(params)
        if problems:
            raise ParameterError("unsafe core parameters: " + "; ".join(problems))
        p = params
        th = p["thresholds"]
        tm = p["timers_ms"]
        self.remote_reset = bool(p["remote_reset"])
        self.overrun_limit = int(p["overrun_trip_count"])
        self.permissive_loss_limit = int(p["permissive_loss_limit"])
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
        self.o2_permissive = o2["start_permissive"]
        self.o2_lost_level = o2["start_permissive"] + o2["permissive_hysteresis"]
        self.o2_idx = tuple(_S[n] for n in O2_SENSORS)
        self.vote = O2Vote(self.o2_idx, o2["trip"], o2["deviation"], tm["deviation_hold_s"],
                           tm["vote_recovery_s"], start_ms)

        # (cause, sensor index, trip, alarm index or None, warning): dp_cell's alarm is its band
        self.levels = tuple(
            (_C[c], _S[s], th[s]["trip"], None if s == "dp_cell" else _A[s],
             th[s]["trip"] if s == "dp_cell" else th[s]["warning"]) for c, s in LEVEL_TRIPS)
        self.dp = (_S["dp_cell"], th["dp_cell"]["warning_low"], th["dp_cell"]["warning_high"])
        self.n2 = (_S["n2_supply"], th["n2_supply"]["low"], th["n2_supply"]["low_low"])
        self.rto = (_S["lel_rto"], th["lel_rto"]["warning"])
        rises = []
        for cause, sensor in RISE_TRIPS:
            rule = th[cause]
            per_s = 60.0 if cause == "temp_rise" else 1.0
            det = RiseDetector(int(rule["window_s"] * 1000), per_s)
            rises.append((_C[cause], _S[sensor], rule["trip"], rule.get("warning"), det))
        self.rises = tuple(rises)

        self.health = SensorHealth(p["sensors"], (self.o2_idx,), tm["frozen_s"])
        # (sensor index, cause, alarm): every sensor's fault is judged in every state.
        self.sensor_faults = tuple((i, _C["sensor_fault:" + s], _A["sensor_fault:" + s])
                                   for i, s in enumerate(SENSORS))
        self.feedback = DiscrepancyWindow(tm["feedback_window_s"], start_ms)

        # -- mutable state ------------------------------------------------------------------
        self.state = BOOT
        self.state_since = start_ms
        self.now = start_ms                # the core's time (ms): never decreases
        self.clock_ms = start_ms if clock_ms is None else clock_ms   # the raw clock at the last step
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
        self.fb_confirmed = False          # the contactor has closed since the crusher was started
        self.permissive_losses = 0         # READY -> PURGING since the last start or local ack
        self.effect_classes = 0            # TRIP_EFFECTS classes present now (bit mask)
        self.unacked = 0
        self.output_table = self._build_output_table()
        self.outputs_t = self._pick_outputs(False)
        self.outputs = list(self.outputs_t)   # built through the interlock, like every scan's
        self.voted_o2 = float("nan")
        self.o2_bad = 3
        self.purge_ok_since = None
        self.warn_since = None
        self.changed = []
        self.alarm_now = [False] * len(ALARMS)
        self.alarm_clear_since = [None] * len(ALARMS)
        self.clear_pending = 0
        self.alarm_sbit = 0                # the state bit alarms were last judged in
        self.calibration_due = ()          # alarm indices of sensors due (given by the loop)
        self.calibration_overdue = ()      # names overdue beyond the grace: `start` is refused
        self.platform_alarms = ()          # alarm indices the loop reports about the board
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

    def set_platform_alarms(self, names=()):
        """Board faults the loop reports (disk, clock, files): each an alarm while it is named here.

        The core reads no file and no wall clock; the persister and the loop judge them.
        """
        self.platform_alarms = tuple(A_PLATFORM[n] for n in names if n in A_PLATFORM)

    def ack_state(self):
        """(trip acknowledged, names of active alarms acknowledged): what a restart must keep."""
        return (self.trip_acked, [ALARMS[k][0] for k in range(len(ALARMS))
                                  if self.alarm_active[k] and self.alarm_acked[k]])

    # -- the scan ---------------------------------------------------------------------------
    def step(self, now, readings, inputs, commands=(), overruns=0, write_ok=True):
        """Judge one scan and return the outputs (a list in OUTPUTS order).

        now: the raw clock (ms), wrapping or stepping back as it may (see the module's "Time").
        readings: sequence of (value, fault, t_ms) in SENSORS order, t_ms on the same raw clock.
        inputs: sequence of bool or None (failed read) in INPUTS order; the HAL latches falling
        edges of estop_ok and door_closed between reads.
        commands: sequence of (action, source[, by]); results land in self.command_results.
        overruns: consecutive late scans so far; write_ok: whether the last write succeeded.
        """
        # The raw clock, once, into the core's time: wrap-safe, and a backward step adds nothing.
        raw = now
        d = ticks_diff(raw, self.clock_ms)
        self.clock_ms = raw
        if d > 0:
            self.now += d
        now = self.now
        if self.command_results:
            self.command_results = []
        ev = self.events
        state = self.state
        sbit = 1 << state

        # 1. Sensor health. -----------------------------------------------------------------
        changed = self.changed
        del changed[:]
        h = self.health
        h.update(now, readings, changed, raw)
        for i in changed:
            ev.append({"t": now / 1000.0, "type": "sensor", "name": SENSORS[i], "quality": h.quality[i]})
        val = h.value
        ok = h.healthy

        hits = self.hits
        del hits[:]
        alarm = self.alarm_now
        alarm[:] = NO_ALARMS

        # 2. Digital inputs: an unreadable input counts as its unsafe value, and says so. -----
        di = self.inputs
        fb_unreadable = False
        unreadable = None in inputs
        if unreadable:
            for k in range(N_INPUTS):
                x = inputs[k]
                if x is None:
                    di[k] = FAILSAFE_INPUTS[k]
                    alarm[A_INPUT[k]] = True
                else:
                    di[k] = bool(x)
            fb_unreadable = inputs[IN_CRUSHER] is None
        else:
            di[:] = inputs

        # The self-test's condition, judged in every state so that its latch clears only when it is
        # gone (a sensor still dead, E-stop still open, contactor closed uncommanded, input unreadable).
        uncommanded = di[IN_CRUSHER] and not self.outputs[OUT_CRUSHER]
        if h.n_bad or not di[IN_ESTOP] or uncommanded or unreadable:
            if state != BOOT or now - self.state_since >= self.self_test_ms:
                hits.append(C_SELF_TEST)

        # 3. O2 2oo3 vote. Out of the vote (unhealthy, or not yet recovered) counts as high. --
        vote = self.vote
        vote.update(now, val, ok)
        bad = vote.bad
        voted = vote.voted
        self.o2_bad = bad
        self.voted_o2 = voted
        if bad >= 2:
            hits.append(C_VOTE_LOST)  # cannot tell whether the cell is inert
        elif vote.high >= 2:
            hits.append(C_O2_HIGH)  # oxygen above 60 % of the LOC while crushing
        elif vote.one_high:
            alarm[A_O2_ONE_HIGH] = True  # one sensor says air is in: two failing low may hide it
        if bad == 1:
            alarm[A_O2_DEGRADED] = True
        if vote.deviating:
            alarm[A_O2_DEVIATION] = True
        if voted >= self.o2_warning:
            alarm[A_O2] = True

        # 4. Single-sensor levels: gas, temperature, overpressure. --------------------------
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
                    # No trustworthy reading: the worst case for what it guards. The cause is judged
                    # in every state (a latched self-test fault clears only once the sensor is back);
                    # its mask decides where it trips (O2 by the vote, n2_supply by n2_supply_low).
                    hits.append(ci)
                    alarm[ai] = True
        dsi, dlow, dhigh = self.dp
        if ok[dsi]:
            if state == TRIPPED:
                if val[dsi] > 0.0:
                    alarm[A_DP] = True   # above atmosphere: HF and CO can leave the cell
            elif val[dsi] < dlow or val[dsi] > dhigh:
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
        if (not ok[nsi]) or val[nsi] < nlow:
            alarm[A_N2] = True
        if ((not ok[nsi]) or val[nsi] < nlowlow) and (bad >= 2 or voted >= self.o2_warning):
            hits.append(C_N2)

        # 7. Hard-wired chain, door, RTO, contactor feedback, loop health. --------------------
        if not di[IN_ESTOP]:
            hits.append(C_ESTOP)  # the hard-wired chain opened (or pulsed open): follow it
        if not di[IN_DOOR]:
            hits.append(C_DOOR)  # air enters and people may be near the crusher
        if not di[IN_RTO]:
            alarm[A_RTO] = True
        crusher_fb = di[IN_CRUSHER]
        cmd = self.outputs[OUT_CRUSHER]
        # Integrated discrepancy: unreadable feedback counts as disagreeing (worst case).
        if self.feedback.update(now, fb_unreadable or crusher_fb != cmd) >= self.feedback_ms:
            hits.append(C_FEEDBACK)  # welded, failed or chattering contactor
        if cmd and (CRUSHING & sbit):
            if crusher_fb and not fb_unreadable:
                self.fb_confirmed = True
            elif self.fb_confirmed and not fb_unreadable:
                hits.append(C_DROPPED)  # the hard-wired chain dropped the contactor under us
        if not write_ok:
            hits.append(C_WRITE)  # the relays may not be where we think
        if overruns >= self.overrun_limit:
            hits.append(C_OVERRUN)  # reaction time no longer guaranteed
        if state == PURGING and now - self.state_since >= self.purge_timeout_ms:
            hits.append(C_PURGE_TIMEOUT)  # the cell will not inert: leak or N2 failure
        if self.permissive_losses >= self.permissive_loss_limit:
            alarm[A_INERTING] = True  # the cell cannot hold inert: a leak to find before crushing

        last_active = self.last_active
        for ci in hits:
            last_active[ci] = now

        for k in self.calibration_due:
            alarm[k] = True   # a gas sensor not bump-tested or calibrated in time may read wrong
        for k in self.platform_alarms:
            alarm[k] = True   # the board: a latch that cannot be written, a clock not to trust

        # 8. Alarms: events on change; the horn sounds until acknowledged. ------------------
        self._update_alarms(alarm, sbit)

        # 9. Commands, then the state machine. -------------------------------------------------
        local_reset = di[IN_RESET]
        if local_reset and not self.prev_local_reset:
            commands = tuple(commands) + (("reset", "local"),)   # the panel push-button
        self.prev_local_reset = local_reset

        tripping = None
        warming = state == BOOT and now - self.state_since < self.self_test_ms
        for ci in hits:
            if warming and ci != C_WRITE and ci != C_OVERRUN:
                continue   # sensors warm up during the self-test; it decides at its end
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
        if self.state == TRIPPED:
            self.effect_classes = self._effect_classes(val, ok, di)
        # The feed needs positive feedback that the crusher turns: unreadable feedback counts as
        # "running" for the feedback trip (worst case) but never enables the feed.
        return self._outputs(crusher_fb and not fb_unreadable)

    # -- pieces of the scan ---------------------------------------------------------------------
    def _effect_classes(self, val, ok, di):
        """TRIP_EFFECTS classes present now (each condition's worst case on bad data)."""
        classes = 0
        rsi, rwarn = self.rto
        if not ok[rsi] or val[rsi] >= rwarn:
            classes |= FX_RTO            # the RTO inlet is (or may be) flammable
        hits = self.hits   # this scan's (not "last active at this time": a scan may add no time)
        dsi = self.dp[0]
        if not ok[dsi] or C_DP_HIGH in hits or C_DP_RISE in hits:
            classes |= FX_OVERPRESSURE   # the cell is (or may be) over-pressured
        if not di[IN_DOOR]:
            classes |= FX_DOOR           # a person may be at the open door
        return classes

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
        # Latch every cause; outputs go to the trip effects in this same scan.
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
        if self.state == READY and target == PURGING:
            self.permissive_losses += 1   # the cell did not hold inert
        elif target == RUNNING:
            self.permissive_losses = 0    # it held long enough to start
        self.state = target
        self.state_since = self.now
        self.purge_ok_since = None
        self.persist_gen += 1
        if not (CRUSHING & (1 << target)):
            self.fb_confirmed = False
        if target == PURGING:
            self.latched = []   # only a reset leaves TRIPPED, and it goes to PURGING

    def _fire(self, event, cause, source="local"):
        """Take the first row of the table for (state, event); return None or a refusal reason."""
        for src, evt, dst, guard in TRANSITIONS:
            if src == self.state and evt == event:
                if guard is not None:
                    reason = self._guard(guard, source)
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
            self._ack(source)
        else:
            reason = self._fire(action, "command:" + action, source)
        accepted = reason is None
        self.command_results.append((accepted, "" if accepted else reason))
        event = {"t": self.now / 1000.0, "type": "command", "action": action, "source": source,
                 "accepted": accepted, "reason": "" if accepted else reason}
        if by is not None:
            event["by"] = by
        self.events.append(event)

    def _ack(self, source):
        for k in range(len(ALARMS)):
            if self.alarm_active[k]:
                self.alarm_acked[k] = True
        self.trip_acked = True
        if source == "local" and self.permissive_losses:
            # Someone at the cell has seen it: the inerting count starts again.
            self.permissive_losses = 0
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
            # Inert only when the voted O2 (at least two sensors in the vote) holds below the permissive.
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
        # CONTROLLED_STOPS, in order: one O2 sensor above the trip alone (air may be in), a
        # deviation held (a sensor failing low may hide a rise), lel_rto near its limit (stop making
        # vapour), one O2 sensor lost (one more failure would blind the O2 trip), N2 low
        # (inerting cannot be sustained), RTO not ready (nowhere safe for the off-gas).
        if act[A_O2_ONE_HIGH]:
            return "o2_one_high"
        if self.vote.deviation_held(now):
            return "o2_deviation_held"
        for reason, k in STOP_ALARMS:
            if act[k]:
                return reason
        return None

    # -- outputs ------------------------------------------------------------------------------
    def _build_output_table(self):
        """Every output combination, computed once and all through the interlock.

        Index: state + 8 * (feedback + 2 * (beacon + 2 * (horn + 2 * effect classes))).
        """
        table = []
        for classes in range(8):
            gas = trip_gas_outputs(classes)
            for horn in (False, True):
                for beacon in (False, True):
                    for fb in (False, True):
                        for state in range(8):
                            if state >= len(STATES):
                                table.append(None)
                                continue
                            table.append(self._combine(state, fb, beacon, horn, gas))
        return tuple(table)

    def _combine(self, state, fb, beacon, horn, gas):
        row = STATE_OUTPUTS[state]
        if state == BOOT:
            out = list(self.safe)
        elif state == TRIPPED:
            out = [False, False, gas[0], gas[1], gas[2], gas[3], False, False]
        else:
            out = list(row) + [False, False]
            if state == RUNNING:
                out[OUT_FEED] = fb   # feed only once the crusher really turns
        out[OUT_ALARM] = beacon or out[OUT_ALARM]
        out[OUT_HORN] = horn or out[OUT_HORN]
        # Interlock, belt and braces: nothing turns or feeds outside RUNNING/STOPPING.
        if not (CRUSHING & (1 << state)):
            out[OUT_CRUSHER] = False
            out[OUT_FEED] = False
        return tuple(bool(x) for x in out)

    def _pick_outputs(self, crusher_fb):
        state = self.state
        tripped = state == TRIPPED
        horn = (tripped and not self.trip_acked) or self.unacked > 0
        beacon = tripped or self.unacked > 0   # the beacon stays on while TRIPPED, ack or not
        k = state + 8 * ((1 if crusher_fb else 0) + 2 * ((1 if beacon else 0) + 2 * (
            (1 if horn else 0) + 2 * (self.effect_classes if tripped else 0))))
        return self.output_table[k]

    def _outputs(self, crusher_fb):
        new = self._pick_outputs(crusher_fb)
        # Equal entries of the table are distinct tuples (the feedback bit outside RUNNING): an
        # `outputs` record only when a value changes. Identity first: the common case costs no compare.
        if new is not self.outputs_t and new != self.outputs_t:
            self.outputs_t = new
            self.outputs[:] = new
            self.events.append({"t": self.now / 1000.0, "type": "outputs", "outputs": self.outputs_dict()})
        return self.outputs

    # -- guards: each runs its rows of PERMISSIVES in order; the first refusal is the reason ------
    def _guard(self, guard, source):
        for check in GUARD_CHECKS[guard]:
            reason = getattr(self, check)(source)
            if reason is not None:
                return reason
        return None

    def guard_purge(self, source="local"):
        return self._guard("guard_purge", source)

    def guard_start(self, source="local"):
        return self._guard("guard_start", source)

    def guard_reset(self, source="local"):
        return self._guard("guard_reset", source)

    def _p_estop(self, source):
        if not self.inputs[IN_ESTOP]:
            return "E-stop chain open (estop_ok false)"
        return None

    def _p_door(self, source):
        if not self.inputs[IN_DOOR]:
            return "door open (door_closed false)"
        return None

    def _p_o2_vote(self, source):
        if self.o2_bad >= 2:
            return ("O2 vote lost: " + str(self.o2_bad) + " of 3 O2 sensors out of the vote "
                    "(inerting could not be judged)")
        return None

    def _p_remote_enable(self, source):
        if source == "remote" and not self.inputs[IN_REMOTE]:
            return "remote start needs the remote_enable key switch"
        return None

    def _p_o2_healthy(self, source):
        if self.o2_bad:
            return "O2 vote degraded: all three O2 sensors must be in the vote to start"
        return None

    def _p_o2_low(self, source):
        if not self.voted_o2 < self.o2_permissive:
            return ("voted O2 " + _fmt(self.voted_o2) + " % is not below start_permissive "
                    + _fmt(self.o2_permissive) + " %")
        return None

    def _p_inerting(self, source):
        if self.permissive_losses >= self.permissive_loss_limit:
            return ("inerting_failed: READY lost its O2 permissive " + str(self.permissive_losses)
                    + " times; find the leak, then acknowledge at the local panel")
        return None

    def _p_state_writable(self, source):
        if A_STATE_WRITE in self.platform_alarms:
            return ("state_write_failed: the latch file cannot be written, so a power cut could lose "
                    "a trip; free space or fix the state dir (the controller retries by itself)")
        return None

    def _p_clock(self, source):
        if A_CLOCK in self.platform_alarms:
            return ("clock_implausible: the wall clock is earlier than the newest record or the build; "
                    "set the time (NTP or an RTC) so calibration dates can be trusted")
        return None

    def _p_no_alarm(self, source):
        for k in range(len(ALARMS)):
            if self.alarm_active[k] and k not in ADVISORY_ALARMS:
                return "alarm active: " + ALARMS[k][0]
        return None

    def _p_rto(self, source):
        if not self.inputs[IN_RTO]:
            return "RTO not ready"
        return None

    def _p_crusher_off(self, source):
        if self.inputs[IN_CRUSHER]:
            return "crusher feedback already on"
        return None

    def _p_calibration(self, source):
        if self.calibration_overdue:
            return ("calibration overdue beyond the grace: " + ", ".join(self.calibration_overdue)
                    + " (record the bump test or calibration: crushcell calibration record)")
        return None

    def _p_reset_source(self, source):
        if source == "remote" and not self.remote_reset:
            return "remote reset not allowed (cell.remote_reset = false): reset at the local panel"
        return None

    def _p_causes_clear(self, source):
        holding = []
        for ci in self.latched:
            t = self.last_active[ci]
            if t is not None and self.now - t < self.reset_hold_ms:
                holding.append(CAUSES[ci])
        if holding:
            return ("causes not clear for " + _fmt(self.reset_hold_ms / 1000.0) + " s: "
                    + ", ".join(holding))
        return None

