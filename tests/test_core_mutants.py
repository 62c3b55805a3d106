"""Exact tests of the core's smaller pieces, added where mutation testing found gaps.

Each test pins a message, a boundary or a bookkeeping detail that the rule tests in test_core.py
pass over: the table checker's every problem, the guard reasons, restore and acknowledgement,
calibration data, the order of controlled-stop reasons. Plain asserts (CPython).
"""

from corekit import QUIET, Bench, params

from cellspec.names import CALIBRATED_SENSORS, OUT_ALARM, OUT_HORN
from controller import core
from controller.core import (
    ALARMS,
    BOOT,
    CAUSES,
    IDLE,
    PURGING,
    READY,
    RUNNING,
    STOPPING,
    TRANSITIONS,
    TRIPPED,
    Core,
    check_table,
)


def bench(**changes):
    return Bench(params(**changes))


# -- check_table: every kind of problem, exactly ---------------------------------------------------
def test_check_table_reports_each_problem_exactly():
    assert check_table(TRANSITIONS) == []
    no_trip_in_ready = tuple(t for t in TRANSITIONS if not (t[0] == READY and t[1] == "trip"))
    assert check_table(no_trip_in_ready) == ["state READY cannot trip"]
    only_boot = ((BOOT, "trip", TRIPPED, None), (TRIPPED, "reset", BOOT, None))
    problems = check_table(only_boot)
    assert problems == [
        "state IDLE is unreachable from BOOT", "state IDLE has no way out", "state IDLE cannot trip",
        "state PURGING is unreachable from BOOT", "state PURGING has no way out", "state PURGING cannot trip",
        "state READY is unreachable from BOOT", "state READY has no way out", "state READY cannot trip",
        "state RUNNING is unreachable from BOOT", "state RUNNING has no way out", "state RUNNING cannot trip",
        "state STOPPING is unreachable from BOOT", "state STOPPING has no way out",
        "state STOPPING cannot trip"]


def test_check_table_follows_chains_of_any_length():
    chain = ((BOOT, "a", IDLE, None), (IDLE, "b", PURGING, None), (PURGING, "c", READY, None),
             (READY, "d", RUNNING, None), (RUNNING, "e", STOPPING, None), (STOPPING, "f", TRIPPED, None),
             (TRIPPED, "g", BOOT, None))
    trips = tuple((s, "trip", TRIPPED, None) for s in (IDLE, PURGING, READY, RUNNING, STOPPING))
    assert check_table(chain + trips) == []
    reversed_order = tuple(reversed(chain)) + trips   # discovered only over several passes
    assert check_table(reversed_order) == []


# -- guards: each reason, and the order they are tried in ---------------------------------------------
def ready():
    b = bench()
    b.to_state("READY")
    return b


def test_start_reasons_exactly():
    b = ready()
    c = b.core
    assert c.guard_start("remote") == "remote start needs the remote_enable key switch"
    c.inputs[5] = True
    assert c.guard_start("remote") is None
    c.inputs[5] = False
    assert c.guard_start("local") is None
    c.o2_bad = 1
    assert c.guard_start() == "O2 vote degraded: all three O2 sensors must be in the vote to start"
    c.o2_bad = 0
    c.voted_o2 = 1.5
    assert c.guard_start() == "voted O2 1.5 % is not below start_permissive 1.5 %"
    c.voted_o2 = 1.49
    assert c.guard_start() is None
    c.voted_o2 = float("nan")
    assert c.guard_start() == "voted O2 nan % is not below start_permissive 1.5 %"
    c.voted_o2 = 0.5
    c.permissive_losses = 3
    assert c.guard_start() == ("inerting_failed: READY lost its O2 permissive 3 times; find the leak, "
                               "then acknowledge at the local panel")
    c.permissive_losses = 2
    assert c.guard_start() is None
    c.alarm_active[ALARMS.index(("hf_room", "warning", ALARMS[6][2]))] = True
    assert c.guard_start() == "alarm active: hf_room"
    c.alarm_active = [False] * len(ALARMS)
    c.inputs[2] = False
    assert c.guard_start() == "RTO not ready"
    c.inputs[2] = True
    c.inputs[3] = True
    assert c.guard_start() == "crusher feedback already on"
    c.inputs[3] = False
    c.calibration_overdue = ("o2_a", "h2_cell")
    assert c.guard_start() == ("calibration overdue beyond the grace: o2_a, h2_cell (record the bump test "
                               "or calibration: crushcell calibration record)")
    c.calibration_overdue = ()
    assert c.guard_start() is None


def test_advisory_alarm_does_not_block_but_the_next_alarm_does():
    c = ready().core
    names = [a[0] for a in ALARMS]
    for k in core.ADVISORY_ALARMS:
        c.alarm_active[k] = True
    assert c.guard_start() is None
    first = names.index("calibration_due:o2_a")
    # Advisory: the calibration_due alarms, and the platform warnings (journal_reopened, outbox_reset,
    # the I2C bus ones).
    platform_warnings = tuple(names.index(n) for n in ("journal_reopened", "outbox_reset", "i2c_bus_stuck",
                                                       "i2c_bus_recovered"))
    assert core.ADVISORY_ALARMS == tuple(range(first, first + len(CALIBRATED_SENSORS))) + platform_warnings
    c.alarm_active[first + len(CALIBRATED_SENSORS)] = True   # the alarm just after them is not advisory
    assert c.guard_start() == "alarm active: " + ALARMS[first + len(CALIBRATED_SENSORS)][0]
    c.alarm_active[first + len(CALIBRATED_SENSORS)] = False
    c.alarm_active[first - 1] = True   # the alarm just before them in the table is not advisory
    assert c.guard_start() == "alarm active: " + ALARMS[first - 1][0]


def test_purge_reasons_exactly():
    b = bench()
    b.to_state("IDLE")
    c = b.core
    c.inputs[0] = False
    assert c.guard_purge() == "E-stop chain open (estop_ok false)"
    c.inputs[0] = True
    c.inputs[1] = False
    assert c.guard_purge() == "door open (door_closed false)"
    c.inputs[1] = True
    assert c.guard_purge() is None
    c.o2_bad = 2
    assert c.guard_purge() == "O2 vote lost: 2 of 3 O2 sensors out of the vote (inerting could not be judged)"
    c.o2_bad = 1
    assert c.guard_purge() is None


def tripped_on_h2():
    b = bench()
    b.to_state("RUNNING")
    b.values["h2_cell"] = 2.5
    b.scan()
    b.values["h2_cell"] = QUIET["h2_cell"]
    return b


def test_reset_reasons_and_the_hold_boundary():
    b = tripped_on_h2()
    c = b.core
    assert c.guard_reset("remote") == ("remote reset not allowed (cell.remote_reset = false): reset at the "
                                       "local panel")
    assert c.guard_reset("local") == "causes not clear for 5 s: h2_high"
    last = c.last_active[CAUSES.index("h2_high")]
    c.now = last + 4999
    assert c.guard_reset() == "causes not clear for 5 s: h2_high"
    c.now = last + 5000
    assert c.guard_reset() is None
    c.latched.append(CAUSES.index("estop"))
    c.last_active[CAUSES.index("estop")] = last + 1000
    assert c.guard_reset() == "causes not clear for 5 s: estop"
    c.last_active[CAUSES.index("estop")] = None      # never seen: nothing to wait for
    assert c.guard_reset() is None


def test_remote_reset_allowed_by_config_still_needs_the_hold():
    b = bench(remote_reset=True)
    b.to_state("RUNNING")
    b.values["h2_cell"] = 2.5
    b.scan()
    b.values["h2_cell"] = QUIET["h2_cell"]
    b.core.command_source = "remote"
    assert b.core.guard_reset() == "causes not clear for 5 s: h2_high"


def test_wrong_state_reason_lists_the_states_where_it_applies():
    b = bench()
    b.to_state("IDLE")
    assert b.command("stop") == (False, "'stop' does not apply in IDLE (only in RUNNING)")
    assert b.command("shutdown") == (False, "'shutdown' does not apply in IDLE (only in PURGING, READY)")
    assert b.command("reset") == (False, "'reset' does not apply in IDLE (only in TRIPPED)")
    assert b.command("purge", "elsewhere") == (False, "unknown source 'elsewhere'")
    assert b.command("launch") == (False, "unknown action 'launch'")
    ev = b.events("command")[-1]
    assert ev == {"t": ev["t"], "type": "command", "action": "launch", "source": "local", "accepted": False,
                  "reason": "unknown action 'launch'"}


def test_command_event_carries_the_operator_only_when_given():
    b = bench()
    b.to_state("IDLE")
    b.scan((("purge", "local", "ana"),))
    ev = b.events("command")[-1]
    assert ev["by"] == "ana" and ev["accepted"] is True and ev["reason"] == ""
    b.scan((("shutdown", "remote"),))
    assert "by" not in b.events("command")[-1]
    assert b.core.command_results == [(True, "")]


# -- restore, acknowledgements, persistence bookkeeping -------------------------------------------------
def test_restore_latch_counts_the_hold_from_the_restart():
    c = Core(params(), 7000)
    gen = c.persist_gen
    c.restore_latch(["estop", "estop", "bogus", "door_open"])
    assert c.causes() == ["estop", "door_open"]
    assert c.last_active[CAUSES.index("estop")] == 7000
    assert c.persist_gen == gen + 1
    assert c.restored_trip_acked is False and c.restored_acks == []


def test_restore_keeps_acks_only_with_a_latch():
    c = Core(params(), 0)
    c.restore_latch([], trip_acked=True, acked_alarms=("h2_cell", "x"))
    assert c.restored_trip_acked is False
    assert c.restored_acks == [[a[0] for a in ALARMS].index("h2_cell")]
    c.restore_latch(["estop"], trip_acked=True)
    assert c.restored_trip_acked is True


def test_restored_trip_acked_stays_silent_and_unacked_sounds():
    for acked in (True, False):
        b = bench()
        b.core.restore_latch(["estop"], trip_acked=acked)
        b.run(2.5)
        assert b.core.state_name == "TRIPPED"
        assert b.core.trip_acked is acked
        assert b.core.outputs[OUT_HORN] is (not acked)
        assert b.core.outputs[OUT_ALARM]   # the beacon: on while TRIPPED, acknowledged or not


def test_ack_state_and_ack_bookkeeping():
    b = tripped_on_h2()
    c = b.core
    assert c.ack_state() == (False, [])
    b.values["h2_cell"] = 1.5          # warning: an active, unacknowledged alarm
    b.scan()
    gen = c.persist_gen
    b.scan((("ack", "local"),))
    assert c.persist_gen > gen
    assert c.ack_state() == (True, ["h2_cell"])
    assert c.unacked == 0 and not c.outputs[OUT_HORN] and c.outputs[OUT_ALARM]
    assert c.active_alarms() == [("h2_cell", "warning", True)]
    assert b.events("command")[-1]["accepted"] is True


def test_ack_only_acknowledges_active_alarms():
    b = tripped_on_h2()
    c = b.core
    k = [a[0] for a in ALARMS].index("lel_cell")
    c.alarm_acked[k] = False   # inactive and unacknowledged: ack leaves it alone
    b.scan((("ack", "local"),))
    assert c.alarm_acked[k] is False


def test_set_calibration_keeps_known_sensors_in_order():
    c = Core(params(), 0)
    c.set_calibration(("co_cell", "temp_gas", "o2_a"), ("temp_gas", "lel_rto"))
    names = [a[0] for a in ALARMS]
    assert c.calibration_due == (names.index("calibration_due:co_cell"), names.index("calibration_due:o2_a"))
    assert c.calibration_overdue == ("lel_rto",)
    c.set_calibration()
    assert c.calibration_due == () and c.calibration_overdue == ()


def test_persist_gen_moves_on_state_change_trip_and_alarm():
    b = bench()
    g0 = b.core.persist_gen
    b.run(2.5)
    g1 = b.core.persist_gen
    assert g1 > g0                    # BOOT -> IDLE
    b.values["h2_cell"] = 1.5
    b.scan()
    assert b.core.persist_gen > g1    # an alarm appeared


# -- controlled stops: the order of the reasons ------------------------------------------------------
def running():
    b = bench()
    b.to_state("RUNNING")
    return b


def test_stop_reason_order_follows_the_table():
    reasons = [r for r, _k in core.STOP_ALARMS]
    assert reasons == ["o2_one_high", "lel_rto_warning", "o2_vote_degraded", "n2_supply_low", "rto_not_ready"]
    c = running().core
    names = [a[0] for a in ALARMS]
    for alarm, reason in (("rto_not_ready", "rto_not_ready"), ("n2_supply", "n2_supply_low"),
                          ("o2_vote_degraded", "o2_vote_degraded"), ("lel_rto", "lel_rto_warning"),
                          ("o2_one_high", "o2_one_high")):
        c.alarm_active[names.index(alarm)] = True
        assert c._stop_reason(c.now) == reason
    c.alarm_active = [False] * len(ALARMS)
    c.alarm_active[names.index("o2_deviation")] = True
    assert c._stop_reason(c.now) is None          # a deviation alone stops only when held
    c.vote.dev_since = c.now - 29999
    assert c._stop_reason(c.now) is None
    c.vote.dev_since = c.now - 30000
    assert c._stop_reason(c.now) == "o2_deviation_held"


def test_held_warning_boundary_and_name():
    c = running().core
    names = [a[0] for a in ALARMS]
    c.alarm_active[names.index("temp_gas")] = True
    c.warn_since = c.now - 4999
    assert c._stop_reason(c.now) is None
    c.warn_since = c.now - 5000
    assert c._stop_reason(c.now) == "warning:temp_gas"
    c.alarm_active[names.index("temp_gas")] = False
    c.alarm_active[names.index("rto_not_ready")] = True
    assert c._stop_reason(c.now) == "rto_not_ready"   # no held warning active: the table decides


def test_each_controlled_stop_in_a_running_cell():
    for change, reason in (
            (lambda b: b.values.update(lel_rto=21.0), "lel_rto_warning"),
            (lambda b: b.faults.update(o2_c="crc"), "o2_vote_degraded"),
            (lambda b: b.values.update(n2_supply=3.5), "n2_supply_low"),
            (lambda b: b.inputs.update(rto_ready=False), "rto_not_ready")):
        b = running()
        change(b)
        b.scan()
        assert b.core.state_name == "STOPPING", reason
        assert b.events("state")[-1]["cause"] == "controlled_stop:" + reason


def test_stopping_and_ready_ignore_stop_reasons():
    b = running()
    b.command("stop")
    b.inputs["rto_ready"] = False
    b.run(1)
    assert b.core.state_name == "STOPPING"


# -- outputs and events -------------------------------------------------------------------------------
def test_output_table_for_every_state_feedback_and_horn():
    # Every precomputed combination passes the interlock; BOOT is the safe states; the rows of
    # docs/process-safety.md's state table; TRIPPED's gas outputs follow the combination rule for its classes.
    c = Core(params(), 0)
    safe = tuple(bool(x) for x in params()["safe"])
    states = (BOOT, IDLE, PURGING, READY, RUNNING, STOPPING, TRIPPED)
    rows = {IDLE: (False, False, False, False, True, False), PURGING: (False, False, True, True, True, False),
            READY: (False, False, True, False, True, False), STOPPING: (True, False, True, True, True, False)}
    seen = 0
    for k, out in enumerate(c.output_table):
        state = k % 8
        if state not in states:
            assert out is None
            continue
        seen += 1
        fb, beacon, horn, classes = (k >> 3) & 1, (k >> 4) & 1, (k >> 5) & 1, k >> 6
        assert out[OUT_ALARM] == bool(beacon) and out[OUT_HORN] == bool(horn), (k, out)
        if state not in (RUNNING, STOPPING):
            assert not out[0] and not out[1], (k, out)
        if state == BOOT:
            assert out[:6] == safe[:6]
        elif state == TRIPPED:
            purge = not classes & 4
            boost = not classes & 4 and not classes & 2
            exhaust = not classes & 1
            vent = bool(classes & 3)
            assert out[2:6] == (purge, boost, exhaust, vent), (classes, out)
        elif state == RUNNING:
            assert out[:6] == (True, bool(fb), True, False, True, False)
        else:
            assert out[:6] == rows[state], (state, out)
    assert seen == 7 * 2 * 2 * 2 * 8


def test_outputs_event_only_on_change_and_exact():
    b = bench()
    b.run(1)
    assert b.events("outputs") == []       # BOOT starts in the safe states: nothing changed
    b.run(1.5)
    first = b.events("outputs")
    assert len(first) == 1 and first[0]["outputs"] == {
        "crusher": False, "feed": False, "n2_purge": False, "n2_boost": False, "exhaust": True, "vent": False,
        "alarm": False, "horn": False}
    b.run(1)
    assert len(b.events("outputs")) == 1


def test_alarm_events_exact_and_once():
    b = bench()
    b.to_state("IDLE")
    b.values["hf_room"] = 0.6
    b.scan()
    b.scan()
    ev = [e for e in b.events("alarm") if e["name"] == "hf_room"]
    assert ev == [{"t": ev[0]["t"], "type": "alarm", "name": "hf_room", "active": True,
                   "severity": "warning"}]
    assert b.core.unacked == 1 and b.core.outputs[OUT_ALARM] and b.core.outputs[OUT_HORN]
    b.values["hf_room"] = QUIET["hf_room"]
    b.scan()
    assert b.core.alarm_active[[a[0] for a in ALARMS].index("hf_room")]   # the off-delay holds it
    b.run(2.1)
    ev = [e for e in b.events("alarm") if e["name"] == "hf_room"]
    assert ev[-1]["active"] is False and b.core.unacked == 0 and not b.core.outputs[OUT_ALARM]
    assert not b.core.outputs[OUT_HORN]


def test_trip_event_and_state_event_exact():
    b = running()
    b.values["hf_room"] = 3.5
    b.scan()
    trips = b.events("trip")
    assert trips == [{"t": trips[0]["t"], "type": "trip", "causes": ["hf_high"]}]
    st = b.events("state")[-1]
    assert st == {"t": st["t"], "type": "state", "from": "RUNNING", "to": "TRIPPED", "cause": "trip:hf_high"}


def test_new_hazard_in_tripped_joins_the_latch_once_with_an_event():
    b = tripped_on_h2()
    b.scan((("ack", "local"),))
    assert b.core.trip_acked
    b.values["lel_cell"] = 60.0
    b.scan()
    b.scan()
    joined = [e for e in b.events("trip") if e["causes"] == ["lel_high"]]
    assert len(joined) == 1
    assert b.core.causes() == ["h2_high", "lel_high"]
    assert not b.core.trip_acked and b.core.outputs[OUT_HORN]


def test_in_tripped_a_cause_that_would_not_trip_purging_does_not_join():
    b = tripped_on_h2()
    for k in ("o2_a", "o2_b", "o2_c"):
        b.values[k] = 3.0          # o2_high trips RUNNING/STOPPING only
    b.run(1)
    assert b.core.causes() == ["h2_high"]


def test_voted_o2_is_the_median_and_the_worst_of_two():
    b = bench()
    b.values.update(o2_a=0.5, o2_b=0.9, o2_c=0.7)
    b.run(3)
    assert abs(b.core.voted_o2 - 0.7) < 0.02
    b.faults["o2_b"] = "crc"
    b.scan()
    assert abs(b.core.voted_o2 - 0.7) < 0.02   # higher of a and c
    b.faults["o2_c"] = "crc"
    b.scan()
    assert b.core.voted_o2 != b.core.voted_o2   # vote lost: NaN


def test_deviation_alarm_boundary():
    names = [a[0] for a in ALARMS]
    k = names.index("o2_deviation")
    b = bench()
    b.values.update(o2_a=0.5, o2_b=0.5, o2_c=0.95)   # 0.45 from the mean of its peers, within 0.5
    b.run(3)
    assert not b.core.alarm_active[k]
    b.values.update(o2_c=1.15)                          # 0.65 away
    b.scan()
    assert b.core.alarm_active[k]
    for away in ("o2_b", "o2_a"):                        # each alone away, after a clean slate
        b.values.update(o2_a=0.5, o2_b=0.5, o2_c=0.5)
        b.run(2.5)                                       # past the alarm off-delay
        assert not b.core.alarm_active[k]
        b.values[away] = 1.15
        b.scan()
        assert b.core.alarm_active[k], away


def test_dp_band_alarm_both_sides():
    names = [a[0] for a in ALARMS]
    k = names.index("dp_cell")
    b = bench()
    b.to_state("IDLE")
    for v, on in ((-80.0, False), (-160.0, True), (-140.0, False), (-15.0, True), (-25.0, False)):
        b.values["dp_cell"] = v
        b.scan()
        if not on:
            b.run(2.1)   # an alarm clears after its off-delay
        assert b.core.alarm_active[k] is on, v


def test_n2_low_low_trips_only_with_o2_high_or_vote_lost():
    b = bench()
    b.to_state("PURGING")
    b.values["n2_supply"] = 2.0
    b.scan()
    assert b.core.state_name == "PURGING"
    b.values.update(o2_a=2.1, o2_b=2.1, o2_c=2.1)
    b.scan()
    assert "n2_supply_low" in b.core.causes()
    b2 = bench()
    b2.to_state("PURGING")
    b2.values["n2_supply"] = 2.6        # above low_low 2.5
    b2.values.update(o2_a=2.1, o2_b=2.1, o2_c=2.1)
    b2.scan()
    assert b2.core.state_name == "PURGING"


def test_self_test_names_every_unhealthy_sensor_and_input():
    b = bench()
    b.faults["h2_cell"] = "crc"
    b.faults["n2_supply"] = "crc"
    b.run(2.5)
    # The self-test's condition is judged first, then every unhealthy sensor in sensor order.
    assert b.core.causes() == ["self_test", "sensor_fault:h2_cell", "sensor_fault:n2_supply"]
    b2 = bench()
    b2.inputs["rto_ready"] = None
    b2.run(2.5)
    assert b2.core.causes() == ["self_test"]


def test_self_test_waits_for_its_time_exactly():
    b = bench()
    b.faults["h2_cell"] = "crc"
    b.run(1.9)
    assert b.core.state_name == "BOOT"
    b.run(0.2)
    assert b.core.state_name == "TRIPPED"


def test_feedback_disagreement_boundary():
    b = bench()
    b.to_state("IDLE")
    b.follow_crusher = False
    b.inputs["crusher_running"] = True
    b.run(2.0)
    assert b.core.state_name == "IDLE"
    b.scan()
    assert b.core.causes() == ["output_feedback:crusher"]


def test_overrun_boundary_and_write_failure():
    b = bench()
    b.to_state("IDLE")
    b.overruns = 4
    b.scan()
    assert b.core.state_name == "IDLE"
    b.overruns = 5
    b.scan()
    assert b.core.causes() == ["scan_overrun"]
    b2 = bench()
    b2.to_state("IDLE")
    b2.write_ok = False
    b2.scan()
    assert b2.core.causes() == ["output_write"]


def test_local_reset_button_acts_on_the_press_only():
    b = tripped_on_h2()
    b.run(6)
    b.inputs["local_reset"] = True
    b.scan()
    assert b.core.state_name == "PURGING"
    b.inputs["door_closed"] = False
    b.scan()                                # trips again while the button is still held
    b.inputs["door_closed"] = True
    b.run(6)
    assert b.core.state_name == "TRIPPED"   # a held button is not a new press
    b.inputs["local_reset"] = False
    b.scan()
    b.inputs["local_reset"] = True
    b.scan()
    assert b.core.state_name == "PURGING"


def test_purge_hold_restarts_when_o2_rises():
    b = bench()
    b.to_state("PURGING")
    b.run(9)
    b.values.update(o2_a=1.6, o2_b=1.6, o2_c=1.6)
    b.scan()
    b.values.update(o2_a=0.5, o2_b=0.52, o2_c=0.48)
    b.run(9.5)
    assert b.core.state_name == "PURGING"
    b.run(1)
    assert b.core.state_name == "READY"


def test_rise_warning_alarm_without_trip():
    names = [a[0] for a in ALARMS]
    b = bench()
    b.to_state("IDLE")
    for _ in range(400):                 # +0.5 K every scan for 40 s: 5 K/min (warning 2, trip 10)
        b.values["temp_gas"] += 0.05 * 0.1 * 10 / 10
        b.scan()
    assert b.core.alarm_active[names.index("temp_rise")]
    assert b.core.state_name == "IDLE"


# -- found by the first full mutation run ------------------------------------------------------------
def test_persist_gen_only_ever_grows():
    """The loop republishes the latch when the counter differs: it must never come back to a value."""
    b = bench()
    c = b.core
    c.persist_gen = 100
    c.restore_latch(["estop"])
    assert c.persist_gen == 101
    c.persist_gen = 100
    c._trip([CAUSES.index("h2_high")])
    assert c.persist_gen > 101               # the trip and its state change both count
    seen = [c.persist_gen]
    b.run(3)
    b.scan((("ack", "local"),))
    seen.append(c.persist_gen)
    assert seen == sorted(seen) and seen[1] > seen[0]


def test_a_non_held_alarm_does_not_start_the_warning_hold():
    names = [a[0] for a in ALARMS]
    b = running()
    c = b.core
    b.values.update(o2_a=0.5, o2_b=0.5, o2_c=1.3)    # o2_deviation: an alarm that is not a held warning
    b.run(10)
    assert c.alarm_active[names.index("o2_deviation")] and c.warn_since is None
    assert c.state_name == "RUNNING"
    b.values["h2_cell"] = 1.5                         # a held warning from now on
    b.run(4.8)
    assert c.state_name == "RUNNING"                  # the hold counts from the warning, not before
    b.run(0.5)
    assert c.state_name == "STOPPING"


def test_event_times_and_causes_exactly():
    b = bench()
    b.to_state("IDLE")
    now = b.now
    b.scan((("purge", "local"),))
    cmd = b.events("command")[-1]
    st = b.events("state")[-1]
    assert cmd["t"] == now / 1000.0 and st["t"] == now / 1000.0
    assert st["cause"] == "command:purge" and st["from"] == "IDLE" and st["to"] == "PURGING"
    b.run(11)
    b.command("start")
    b.run(1)
    now = b.now
    b.values["h2_cell"] = 2.5
    b.values["hf_room"] = 3.5
    b.scan()
    trip = b.events("trip")[-1]
    assert trip == {"t": now / 1000.0, "type": "trip", "causes": ["h2_high", "hf_high"]}
    assert b.events("state")[-1]["cause"] == "trip:h2_high,hf_high"


def test_reset_reason_names_every_holding_cause_and_the_configured_hold():
    p = params()
    p["timers_ms"]["reset_hold_s"] = 600000
    b = Bench(p)
    b.to_state("RUNNING")
    b.values["h2_cell"] = 2.5
    b.values["hf_room"] = 3.5
    b.scan()
    ok, reason = b.command("reset")
    assert not ok and reason == "causes not clear for 600 s: h2_high, hf_high"


# -- exact values, no jitter: the comparisons at their boundaries --------------------------------------
INPUT_NAMES = ("estop_ok", "door_closed", "rto_ready", "crusher_running", "local_reset", "remote_enable")


def exact(b, inputs=None, **values):
    """One scan with exactly these values (the bench's jitter would blur a boundary)."""
    names = [s[0] for s in params()["sensors"]]
    b.n += 1
    jitter = 3 if b.n % 2 else -3     # sensors not given move by a few counts, so none looks stuck
    readings = [(values[n] if n in values else QUIET[n] + jitter * b.res[n], b.faults.get(n), b.now)
                for n in names]
    if inputs is None:
        b.inputs["crusher_running"] = b.core.outputs[0]
        inputs = [b.inputs[n] for n in INPUT_NAMES]
    out = b.core.step(b.now, readings, inputs)
    b.now += b.period
    return out


def test_step_defaults_mean_no_overrun_and_a_good_write():
    b = bench()
    b.to_state("IDLE")
    exact(b)
    assert b.core.state_name == "IDLE"


def test_o2_trip_counts_a_sensor_at_exactly_the_limit_each_position():
    for pair in (("o2_a", "o2_b"), ("o2_a", "o2_c"), ("o2_b", "o2_c")):
        b = running()
        values = {"o2_a": 0.5, "o2_b": 0.5, "o2_c": 0.5}
        for k in pair:
            values[k] = 2.5
        exact(b, **values)
        assert b.core.causes() == ["o2_high"], pair


def test_o2_deviation_is_strictly_more_than_the_limit_from_the_mean_of_the_peers():
    names = [a[0] for a in ALARMS]
    k = names.index("o2_deviation")
    for odd in ("o2_a", "o2_b", "o2_c"):
        b = bench()
        b.to_state("IDLE")
        values = {"o2_a": 0.5, "o2_b": 0.5, "o2_c": 0.5}
        values[odd] = 1.0                    # exactly 0.5 from its peers' mean: no alarm
        exact(b, **values)
        assert not b.core.alarm_active[k], odd
    b = bench()
    b.to_state("IDLE")
    exact(b, o2_a=2.0, o2_b=2.0, o2_c=2.0)   # agreeing sensors never deviate, whatever the level
    assert not b.core.alarm_active[k]


def test_unreadable_crusher_feedback_in_running_alarms_stops_the_feed_then_trips():
    b = running()
    assert b.core.outputs[1]                 # feeding with good feedback
    ins = [True, True, True, None, False, False]
    exact(b, inputs=ins)
    assert "input_fault:crusher_running" in [a[0] for a in b.core.active_alarms()]
    assert not b.core.outputs[1]             # the feed needs a readable "running"
    assert b.core.inputs[3] is True          # counted as running (worst case) meanwhile
    for _ in range(19):                      # 2 s of unreadable feedback in all
        exact(b, inputs=ins)
    assert b.core.state_name == "RUNNING"
    exact(b, inputs=ins)
    assert b.core.state_name == "TRIPPED" and b.core.causes() == ["output_feedback:crusher"]


def ramp(b, sensor, start, end, seconds):
    """Move one sensor linearly (slowly enough for every rise limit), other sensors jittering."""
    n = int(seconds * 1000 / b.period)
    for k in range(1, n + 1):
        exact(b, **{sensor: start + (end - start) * k / n})


def settle(b, seconds, **values):
    for _ in range(int(seconds * 1000 / b.period)):
        exact(b, **values)


LEVELS = ("h2_cell", "lel_cell", "lel_rto", "co_cell", "hf_room", "temp_gas", "temp_material")


def test_level_warning_and_trip_at_exactly_their_limits():
    th = params()["thresholds"]
    names = [a[0] for a in ALARMS]
    for s in LEVELS:
        warn, trip = th[s]["warning"], th[s]["trip"]
        b = Bench(params(), period_ms=1000)   # 1 s scans: the ramps are long (temperature rise limit)
        b.to_state("IDLE")
        ramp(b, s, QUIET[s], warn - 0.001, 600)
        assert not b.core.alarm_active[names.index(s)], s
        exact(b, **{s: warn})
        assert b.core.alarm_active[names.index(s)] is True, s
        assert b.core.state_name == "IDLE", s
        ramp(b, s, warn, trip - 0.001, 600)
        assert b.core.state_name == "IDLE", (s, b.core.causes())
        exact(b, **{s: trip})
        assert b.core.causes()[0] == LEVELS_CAUSE[s], (s, b.core.causes())


LEVELS_CAUSE = {"h2_cell": "h2_high", "lel_cell": "lel_high", "lel_rto": "lel_rto_high", "co_cell": "co_high",
                "hf_room": "hf_high", "temp_gas": "temp_gas_high", "temp_material": "temp_material_high"}


def test_dp_trip_and_band_at_exactly_their_limits():
    names = [a[0] for a in ALARMS]
    k = names.index("dp_cell")
    b = bench()
    b.to_state("IDLE")
    ramp(b, "dp_cell", -80.0, -150.0, 10)
    assert not b.core.alarm_active[k]
    ramp(b, "dp_cell", -150.0, -20.0, 10)
    assert not b.core.alarm_active[k]
    ramp(b, "dp_cell", -20.0, 249.9, 30)
    assert b.core.state_name == "IDLE"
    exact(b, dp_cell=250.0)
    assert b.core.causes() == ["dp_high"]


def test_n2_limits_exactly():
    names = [a[0] for a in ALARMS]
    b = running()
    settle(b, 1, n2_supply=4.0)
    assert not b.core.alarm_active[names.index("n2_supply")] and b.core.state_name == "RUNNING"
    b = bench()
    b.to_state("PURGING")
    settle(b, 1, n2_supply=2.5, o2_a=2.0, o2_b=2.0, o2_c=2.0)
    assert b.core.state_name == "PURGING"
    exact(b, n2_supply=2.49, o2_a=2.0, o2_b=2.0, o2_c=2.0)     # voted exactly at o2.warning
    assert b.core.causes() == ["n2_supply_low"]


def test_n2_low_low_with_the_o2_vote_lost_trips_too():
    b = bench()
    b.to_state("PURGING")
    b.faults.update(o2_a="crc", o2_b="crc")
    b.values["n2_supply"] = 2.0
    b.scan()
    assert set(b.core.causes()) == {"o2_vote_lost", "n2_supply_low"}


def test_o2_warning_alarm_at_exactly_the_limit_while_crushing():
    names = [a[0] for a in ALARMS]
    b = running()
    settle(b, 1, o2_a=1.99, o2_b=1.99, o2_c=1.99)
    assert not b.core.alarm_active[names.index("o2")]
    exact(b, o2_a=2.0, o2_b=2.0, o2_c=2.0)
    assert b.core.alarm_active[names.index("o2")] is True
    ev = [e for e in b.events("alarm") if e["name"] == "o2"][-1]
    assert ev["active"] is True


def test_degraded_vote_takes_the_higher_and_judges_deviation_between_the_two():
    names = [a[0] for a in ALARMS]
    k = names.index("o2_deviation")
    b = bench()
    b.to_state("IDLE")
    b.faults["o2_c"] = "crc"
    b.scan()
    exact(b, o2_a=0.9, o2_b=0.5)
    assert b.core.voted_o2 == 0.9 and not b.core.alarm_active[k]
    exact(b, o2_a=0.5, o2_b=0.9)
    assert b.core.voted_o2 == 0.9
    exact(b, o2_a=1.0, o2_b=0.5)       # exactly 0.5 apart: no alarm
    assert not b.core.alarm_active[k]
    exact(b, o2_a=1.1, o2_b=0.5)
    assert b.core.alarm_active[k] is True
    assert [e for e in b.events("alarm") if e["name"] == "o2_deviation"][-1]["active"] is True


def test_rates_of_rise_at_exactly_their_limits():
    # A step held for one window reads as exactly (step / window): at the limit it trips, a
    # hair below it does not. The rate is refreshed once per slot (window / 10).
    names = [a[0] for a in ALARMS]
    for sensor, base, jump, window_s, cause in (("temp_gas", 25.0, 5.0, 30, "temp_rise"),
                                                ("co_cell", 5.0, 500.0, 10, "co_rise"),
                                                ("dp_cell", -80.0, 100.0, 1, "dp_rise")):
        b = bench()
        b.to_state("IDLE")
        settle(b, 35, **{sensor: base})
        settle(b, window_s, **{sensor: base + jump * 0.999})
        assert cause not in b.core.causes(), sensor
        b = bench()
        b.to_state("IDLE")
        settle(b, 35, **{sensor: base})
        settle(b, window_s, **{sensor: base + jump})
        assert cause in b.core.causes(), (sensor, b.core.causes())
    b = bench()
    b.to_state("IDLE")
    settle(b, 35, temp_gas=25.0)
    settle(b, 30, temp_gas=25.999)
    assert not b.core.alarm_active[names.index("temp_rise")]
    settle(b, 2, temp_gas=25.0)
    b = bench()
    b.to_state("IDLE")
    settle(b, 35, temp_gas=25.0)
    settle(b, 30, temp_gas=26.0)     # 1 K in 30 s: exactly the 2 K/min warning
    assert b.core.alarm_active[names.index("temp_rise")]
    exact(b, temp_gas=26.0)                # 1 K over the 30 s window: exactly 2 K/min
    assert b.core.alarm_active[names.index("temp_rise")] is True


def test_purge_timeout_at_exactly_its_limit():
    b = Bench(params(), dict(QUIET, o2_a=20.9, o2_b=20.8, o2_c=20.95))
    b.to_state("IDLE")
    b.command("purge")
    since = b.core.state_since
    while b.now - since < 600000:
        b.scan()
    assert b.core.state_name == "PURGING"
    b.scan()                               # now - state_since == purge_timeout exactly
    assert b.core.causes() == ["purge_timeout"]


def test_self_test_counts_from_the_start_time_not_from_zero():
    b = bench()
    b.core = Core(params(), 100000)
    b.now = 100000
    b.faults["h2_cell"] = "crc"
    b.run(1.9)
    assert b.core.state_name == "BOOT"
    b.run(0.2)
    assert b.core.state_name == "TRIPPED"


def test_self_test_ignores_the_door_and_only_runs_in_boot():
    b = bench()
    b.inputs["door_closed"] = False          # a door open in BOOT is no self-test failure (IDLE allows it)
    b.run(3)
    assert b.core.state_name == "IDLE"
    b2 = bench()
    b2.faults["o2_a"] = "crc"                # a failed self-test latches self_test...
    b2.run(3)
    assert b2.core.causes() == ["self_test", "sensor_fault:o2_a"]
    b2.run(6)                                # ...and holds the reset off while the sensor is dead
    assert b2.command("reset") == (False, "causes not clear for 5 s: self_test, sensor_fault:o2_a")
    del b2.faults["o2_a"]
    b2.run(4.8)                              # the next scan is 4.9 s after the last bad one
    assert b2.command("reset")[0] is False
    b2.run(0.2)
    assert b2.command("reset") == (True, "")
    assert b2.core.state_name == "PURGING"


def test_calibration_due_alarm_event():
    b = bench()
    b.to_state("IDLE")
    b.core.set_calibration(("hf_room",), ())
    b.scan()
    ev = [e for e in b.events("alarm") if e["name"] == "calibration_due:hf_room"]
    assert ev == [{"t": ev[0]["t"], "type": "alarm", "name": "calibration_due:hf_room", "active": True,
                   "severity": "warning"}]


# -- second round of survivors ------------------------------------------------------------------------
def test_automatic_transitions_name_their_cause_and_hold_exactly():
    b = bench()
    b.run(2.5)
    assert b.events("state")[-1]["cause"] == "self_test_passed"
    b.command("purge")
    since = b.core.state_since
    # voted O2 exactly at the permissive never inerts
    while b.now - since < 15000:
        exact(b, o2_a=1.5, o2_b=1.5, o2_c=1.5)
    assert b.core.state_name == "PURGING"
    exact(b)                                  # below the permissive from here on
    ok_since = b.core.purge_ok_since
    while b.now - ok_since < 10000:
        exact(b)
    assert b.core.state_name == "PURGING"
    exact(b)                                  # exactly purge_hold_s after
    assert b.core.state_name == "READY" and b.events("state")[-1]["cause"] == "inerted"
    exact(b, o2_a=1.8, o2_b=1.8, o2_c=1.8)    # exactly start_permissive + hysteresis: lost
    assert b.core.state_name == "PURGING" and b.events("state")[-1]["cause"] == "permissive_lost"


def test_one_unhealthy_o2_sensor_still_inerts():
    b = bench()
    b.to_state("PURGING")
    b.faults["o2_b"] = "crc"
    b.run(11)
    assert b.core.state_name == "READY"


def test_rundown_ends_exactly_after_rundown_s():
    b = running()
    b.command("stop")
    since = b.core.state_since
    while b.now - since < 15000:
        b.scan()
    assert b.core.state_name == "STOPPING"
    b.scan()
    assert b.core.state_name == "READY" and b.events("state")[-1]["cause"] == "rundown_done"


def test_no_alarm_in_boot_or_outside_its_states():
    names = [a[0] for a in ALARMS]
    b = bench()
    b.values["h2_cell"] = 1.5
    b.values["dp_cell"] = -10.0
    b.scan()
    assert not any(b.core.alarm_active)       # BOOT: no alarm masks include it
    b.run(2.5)
    assert b.core.alarm_active[names.index("h2_cell")]
    assert not b.core.alarm_active[names.index("o2")]
    b.values.update(o2_a=2.2, o2_b=2.2, o2_c=2.2)
    b.scan()
    assert not b.core.alarm_active[names.index("o2")]   # the O2 warning is for crushing only


def test_restored_ack_applies_once_and_new_alarms_are_unacknowledged():
    b = bench()
    b.core.restore_latch(["estop"], trip_acked=True, acked_alarms=("h2_cell",))
    b.values["h2_cell"] = 1.5
    b.values["hf_room"] = 0.6
    b.run(2.5)
    assert sorted(b.core.active_alarms()) == [("h2_cell", "warning", True), ("hf_room", "warning", False)]
    assert b.core.restored_acks == []
    b.values["h2_cell"] = QUIET["h2_cell"]
    b.run(2.1)   # cleared, after its off-delay
    b.values["h2_cell"] = 1.5
    b.scan()
    assert ("h2_cell", "warning", False) in b.core.active_alarms()   # a second time it sounds again


def test_events_carry_exact_times():
    b = bench()
    b.run(2.0)
    now = b.now
    b.scan()                                  # BOOT -> IDLE: an outputs event
    out = b.events("outputs")[-1]
    assert out["t"] == now / 1000.0
    now = b.now
    b.values["hf_room"] = 0.6
    b.scan()
    assert b.events("alarm")[-1]["t"] == now / 1000.0
    b.values["hf_room"] = QUIET["hf_room"]
    b = tripped_on_h2()
    gen = b.core.persist_gen
    now = b.now
    b.values["lel_cell"] = 60.0
    b.scan()
    assert b.events("trip")[-1] == {"t": now / 1000.0, "type": "trip", "causes": ["lel_high"]}
    assert b.core.persist_gen > gen


def test_default_step_arguments_never_trip_even_at_the_lowest_overrun_limit():
    b = bench(overrun_trip_count=1)
    b.to_state("IDLE")
    exact(b)
    assert b.core.state_name == "IDLE"


def test_every_unhealthy_sensor_raises_its_own_fault_alarm():
    b = bench()
    b.to_state("IDLE")
    for s in ("o2_a", "n2_supply", "lel_cell"):
        b.faults[s] = "crc"
    b.scan()
    alarms = {a[0]: a[2] for a in b.core.active_alarms()}
    for s in ("o2_a", "n2_supply", "lel_cell"):
        assert alarms.get("sensor_fault:" + s) is False, s    # active, not yet acknowledged
    assert [e["active"] for e in b.events("alarm") if e["name"] == "sensor_fault:o2_a"] == [True]


def test_core_clock_starts_at_zero_by_default():
    c = Core(params())
    assert c.now == 0 and c.state_since == 0


def test_an_alarm_leaving_its_states_clears_at_once_without_the_off_delay():
    names = [a[0] for a in ALARMS]
    k = names.index("o2")
    b = running()
    b.values.update(o2_a=2.1, o2_b=2.1, o2_c=2.1)     # O2 warning (crushing only), below the trip
    b.scan()
    assert b.core.alarm_active[k]
    b.command("stop")
    while b.core.state_name == "STOPPING":
        b.scan()
    # Alarms are judged in the state a scan starts in: the first scan outside STOPPING ends the
    # O2 warning at once (its states no longer apply), with no off-delay.
    b.scan()
    assert not b.core.alarm_active[k]
    off = [e for e in b.events("alarm") if e["name"] == "o2" and not e["active"]]
    left = [e for e in b.events("state") if e["from"] == "STOPPING"]
    assert off and left and abs(off[0]["t"] - left[0]["t"] - 0.1) < 1e-9


def test_a_pending_clear_does_not_delay_other_alarms():
    names = [a[0] for a in ALARMS]
    b = bench()
    b.to_state("IDLE")
    b.values["h2_cell"] = 1.5
    b.scan()
    b.values["h2_cell"] = QUIET["h2_cell"]
    b.scan()                                          # h2_cell now waits out its off-delay
    assert b.core.alarm_active[names.index("h2_cell")]
    b.values["hf_room"] = 0.6
    b.scan()
    assert b.core.alarm_active[names.index("hf_room")]   # raised in this very scan


def test_reset_button_held_at_power_up_is_one_refused_press_and_never_resets_a_restored_latch():
    # A button held (or stuck) at power-up counts as one press in the first scan: BOOT refuses it
    # and says so; it never resets the latch restored from before the restart.
    b = bench()
    b.core.restore_latch(["estop"])
    b.inputs["local_reset"] = True
    b.scan()
    cmds = b.events("command")
    assert [(e["action"], e["source"], e["accepted"]) for e in cmds] == [("reset", "local", False)]
    b.run(10)
    assert b.core.state_name == "TRIPPED" and b.core.causes() == ["estop"]
    assert len(b.events("command")) == 1
