"""The safety core, rule by rule: every transition row, every trip cause, latching and reset.

Plain asserts and no pytest imports: this file also runs under the MicroPython unix port
(tests/micropython/run_core_tests.py). Each trip test fails if its rule is removed, and each
also checks the value just below the limit does not trip, so a wrong limit fails too.
"""

from corekit import AIR, Bench, params

GENERATED = {}   # test functions made in loops (MicroPython's runner reads this, pytest globals())


def _register(name, fn):
    GENERATED[name] = fn
    globals()[name] = fn


OUT = ("crusher", "feed", "n2_purge", "n2_boost", "exhaust", "vent", "alarm", "horn")


def bench(**changes):
    return Bench(params(**changes))


def outputs(b):
    return dict(zip(OUT, b.core.outputs))


def expected_gas(b, overpressure=False):
    """The gas outputs in TRIPPED by the reference "Trip effects by cause", from what the bench feeds.

    Written from the reference table, not from the core: default purge, boost and exhaust open,
    vent closed; the RTO inlet at or above its warning (or faulty) closes the exhaust and opens the
    vent; overpressure (dp at or above its trip, or dp faulty) closes the boost and opens the vent;
    an open door closes both N2 valves.
    """
    purge, boost, exhaust, vent = True, True, True, False
    rto = b.values["lel_rto"]
    if "lel_rto" in b.faults or not rto < 20.0:
        exhaust, vent = False, True
    dp = b.values["dp_cell"]
    if overpressure or "dp_cell" in b.faults or not dp < 250.0:
        boost, vent = False, True
    if not b.inputs["door_closed"]:
        purge, boost = False, False
    return {"n2_purge": purge, "n2_boost": boost, "exhaust": exhaust, "vent": vent}


def assert_tripped_safe(b, cause, overpressure=False):
    c = b.core
    assert c.state_name == "TRIPPED", (cause, c.state_name)
    assert cause in c.causes(), (cause, c.causes())
    o = outputs(b)
    assert not o["crusher"] and not o["feed"], o
    assert o["alarm"], o     # the beacon is on in TRIPPED whatever the cause
    gas = expected_gas(b, overpressure)
    assert {k: o[k] for k in gas} == gas, (cause, o, gas)


# --- transition rows ---------------------------------------------------------------------------
def test_row_boot_self_test_passed_to_idle():
    b = bench()
    b.run(1.9)
    assert b.core.state_name == "BOOT"
    b.run(0.2)
    assert b.core.state_name == "IDLE"
    assert outputs(b) == {"crusher": False, "feed": False, "n2_purge": False, "n2_boost": False,
                          "exhaust": True, "vent": False, "alarm": False, "horn": False}


def test_row_boot_trip_on_failed_self_test():
    b = bench()
    b.faults["o2_b"] = "disconnect"
    b.run(3)
    assert_tripped_safe(b, "self_test")
    assert "sensor_fault:o2_b" in b.core.causes()


def test_boot_outputs_are_the_safe_states():
    b = bench()
    b.scan()
    assert outputs(b) == {"crusher": False, "feed": False, "n2_purge": True, "n2_boost": True,
                          "exhaust": False, "vent": True, "alarm": False, "horn": False}


def test_row_idle_purge_to_purging():
    b = bench()
    b.to_state("IDLE")
    assert b.command("purge") == (True, "")
    assert b.core.state_name == "PURGING"
    o = outputs(b)
    assert o["n2_purge"] and o["n2_boost"] and o["exhaust"] and not o["vent"] and not o["crusher"]


def test_purge_refused_with_door_open_in_idle():
    b = bench()
    b.to_state("IDLE")
    b.inputs["door_closed"] = False
    ok, reason = b.command("purge")
    assert not ok and "door" in reason
    assert b.core.state_name == "IDLE"


def test_row_idle_trip_on_estop():
    b = bench()
    b.to_state("IDLE")
    b.inputs["estop_ok"] = False
    b.scan()
    assert_tripped_safe(b, "estop")


def test_row_purging_inerted_to_ready_after_hold():
    b = Bench(params(), AIR)
    b.to_state("IDLE")
    b.command("purge")
    b.run(20)
    assert b.core.state_name == "PURGING"   # still air: never inert
    for k in ("o2_a", "o2_b", "o2_c"):
        b.values[k] = 1.0
    b.run(9.5)
    assert b.core.state_name == "PURGING"   # below the permissive, but not for purge_hold_s yet
    b.run(1)
    assert b.core.state_name == "READY"
    o = outputs(b)
    assert o["n2_purge"] and not o["n2_boost"] and o["exhaust"]


def test_purging_needs_two_healthy_o2_sensors():
    b = bench()
    b.to_state("PURGING")
    b.faults["o2_a"] = "disconnect"
    b.faults["o2_b"] = "disconnect"
    b.scan()
    assert_tripped_safe(b, "o2_vote_lost")


def test_row_purging_shutdown_to_idle():
    b = bench()
    b.to_state("PURGING")
    assert b.command("shutdown") == (True, "")
    assert b.core.state_name == "IDLE"


def test_row_purging_trip_on_purge_timeout():
    b = Bench(params(), AIR)
    b.to_state("IDLE")
    b.command("purge")
    b.run(599)
    assert b.core.state_name == "PURGING"
    b.run(2)
    assert_tripped_safe(b, "purge_timeout")


def test_row_ready_start_to_running_and_feed_follows_contactor():
    b = bench()
    b.to_state("READY")
    b.follow_crusher = False
    assert b.command("start") == (True, "")
    assert b.core.state_name == "RUNNING"
    assert outputs(b)["crusher"] and not outputs(b)["feed"]   # feed waits for the contactor
    b.inputs["crusher_running"] = True
    b.scan()
    assert outputs(b)["feed"]


def test_row_ready_permissive_lost_to_purging():
    b = bench()
    b.to_state("READY")
    for k in ("o2_a", "o2_b", "o2_c"):
        b.values[k] = 1.7   # above start_permissive, below permissive + hysteresis (1.8)
    b.run(1)
    assert b.core.state_name == "READY"
    for k in ("o2_a", "o2_b", "o2_c"):
        b.values[k] = 1.9
    b.scan()
    assert b.core.state_name == "PURGING"
    assert any(e.get("cause") == "permissive_lost" for e in b.core.events)


def test_row_ready_shutdown_to_idle():
    b = bench()
    b.to_state("READY")
    assert b.command("shutdown") == (True, "")
    assert b.core.state_name == "IDLE"


def test_row_ready_trip_on_door_open():
    b = bench()
    b.to_state("READY")
    b.inputs["door_closed"] = False
    b.scan()
    assert_tripped_safe(b, "door_open")


def test_door_open_in_idle_does_not_trip():
    b = bench()
    b.to_state("IDLE")
    b.inputs["door_closed"] = False
    b.run(2)
    assert b.core.state_name == "IDLE"


def test_row_running_stop_to_stopping_then_rundown_to_ready():
    b = bench()
    b.to_state("RUNNING")
    assert b.command("stop") == (True, "")
    assert b.core.state_name == "STOPPING"
    o = outputs(b)
    assert o["crusher"] and not o["feed"] and o["n2_boost"]   # run down empty, feed off
    b.run(14.5)
    assert b.core.state_name == "STOPPING"
    b.run(1)
    assert b.core.state_name == "READY"
    assert not outputs(b)["crusher"]


def test_row_running_controlled_stop_on_held_warning():
    b = bench()
    b.to_state("RUNNING")
    b.values["h2_cell"] = 1.5   # above warning 1.0, below trip 2.0
    b.run(4.8)
    assert b.core.state_name == "RUNNING"
    b.run(0.5)
    assert b.core.state_name == "STOPPING"
    assert any(e.get("cause") == "controlled_stop:warning:h2_cell" for e in b.core.events)


def test_row_running_trip():
    b = bench()
    b.to_state("RUNNING")
    b.values["h2_cell"] = 2.1
    b.scan()
    assert_tripped_safe(b, "h2_high")


def test_row_stopping_trip():
    b = bench()
    b.to_state("RUNNING")
    b.command("stop")
    b.values["lel_cell"] = 55.0
    b.scan()
    assert_tripped_safe(b, "lel_high")


def test_row_tripped_reset_to_purging_after_causes_clear():
    b = bench()
    b.to_state("RUNNING")
    b.values["co_cell"] = 1200.0
    b.scan()
    assert_tripped_safe(b, "co_high")
    b.values["co_cell"] = 5.0
    ok, reason = b.command("reset")
    assert not ok and "co_high" in reason
    b.run(4)
    ok, reason = b.command("reset")
    assert not ok   # clear, but not yet for reset_hold_s
    b.run(1.5)
    assert b.command("reset") == (True, "")
    assert b.core.state_name == "PURGING"   # never straight back to crushing
    assert b.core.causes() == []


# --- commands ---------------------------------------------------------------------------------
def test_command_in_wrong_state_is_refused_and_changes_nothing():
    b = bench()
    b.to_state("IDLE")
    before = list(b.core.outputs)
    ok, reason = b.command("start")
    assert not ok and "IDLE" in reason and "READY" in reason
    assert b.core.state_name == "IDLE" and b.core.outputs == before


def test_unknown_action_is_refused():
    b = bench()
    b.to_state("READY")
    ok, reason = b.command("launch")
    assert not ok and "launch" in reason
    assert b.core.state_name == "READY"


def test_remote_start_needs_key_switch():
    b = bench()
    b.to_state("READY")
    ok, reason = b.command("start", "remote")
    assert not ok and "remote_enable" in reason
    assert b.core.state_name == "READY"
    b.inputs["remote_enable"] = True
    assert b.command("start", "remote") == (True, "")


def test_start_refused_with_degraded_o2_vote():
    b = bench()
    b.to_state("READY")
    b.faults["o2_c"] = "nan"
    b.scan()
    ok, reason = b.command("start")
    assert not ok and "O2" in reason
    assert b.core.state_name == "READY"


def test_start_refused_without_rto():
    b = bench()
    b.to_state("READY")
    b.inputs["rto_ready"] = False
    b.scan()
    ok, reason = b.command("start")
    assert not ok
    assert b.core.state_name == "READY"


def test_remote_reset_refused_unless_allowed():
    b = bench()
    b.to_state("RUNNING")
    b.inputs["estop_ok"] = False
    b.scan()
    b.inputs["estop_ok"] = True
    b.run(6)
    ok, reason = b.command("reset", "remote")
    assert not ok and "remote_reset" in reason
    assert b.core.state_name == "TRIPPED"
    assert b.command("reset", "local") == (True, "")


def test_remote_reset_accepted_when_configured():
    b = bench(remote_reset=True)
    b.to_state("RUNNING")
    b.inputs["estop_ok"] = False
    b.scan()
    b.inputs["estop_ok"] = True
    b.run(6)
    assert b.command("reset", "remote") == (True, "")


def test_local_reset_button_is_a_local_reset():
    b = bench()
    b.to_state("READY")
    b.inputs["door_closed"] = False
    b.scan()
    b.inputs["door_closed"] = True
    b.run(6)
    b.inputs["local_reset"] = True
    b.scan()
    assert b.core.state_name == "PURGING"


def test_tripped_never_leaves_without_reset():
    b = bench()
    b.to_state("RUNNING")
    b.values["hf_room"] = 3.5
    b.scan()
    b.values["hf_room"] = 0.02
    b.run(120)
    assert b.core.state_name == "TRIPPED"


def test_new_cause_while_tripped_joins_the_latch():
    b = bench()
    b.to_state("RUNNING")
    b.values["h2_cell"] = 2.5
    b.scan()
    b.values["h2_cell"] = 0.05
    b.inputs["estop_ok"] = False
    b.scan()
    assert b.core.causes() == ["h2_high", "estop"]
    b.run(6)
    ok, reason = b.command("reset")
    assert not ok and "estop" in reason


def test_ack_silences_the_horn_but_keeps_the_latch():
    b = bench()
    b.to_state("RUNNING")
    b.values["temp_gas"] = 85.0
    b.scan()
    assert outputs(b)["alarm"] and outputs(b)["horn"]
    assert b.command("ack") == (True, "")
    assert not outputs(b)["horn"]          # ack silences the horn...
    assert outputs(b)["alarm"]             # ...but the beacon stays on while TRIPPED
    assert b.core.state_name == "TRIPPED"


# --- trip causes: one test each ----------------------------------------------------------------
# Slow enough for every rate rule (well below co_rise, temp_rise and dp_rise), per second.
APPROACH_PER_S = {"co_cell": 20.0, "temp_gas": 4.0 / 60.0, "temp_material": 4.0 / 60.0, "dp_cell": 40.0}


def approach(b, sensor, target):
    """Move a sensor to `target` as a real process would: a jump where no rate rule watches it,
    a ramp below every rise limit where one does (no key may switch a rise trip off)."""
    rate = APPROACH_PER_S.get(sensor)
    if rate is None:
        b.values[sensor] = target
        return
    step = rate * b.period / 1000.0
    v = b.values[sensor]
    while abs(target - v) > step:
        v += step if target > v else -step
        b.values[sensor] = v
        b.scan()
    b.values[sensor] = target


def _level_case(sensor, cause, below, above):
    def case():
        # READY: a level trips in every operating state; in RUNNING the warning held for 5 s would
        # stop the crusher during the slow approach, by design.
        b = bench()
        b.to_state("READY")
        approach(b, sensor, below)
        b.scan()
        assert b.core.state_name == "READY", (cause, b.core.causes())
        b.values[sensor] = above
        b.scan()
        assert_tripped_safe(b, cause)
    return case


LEVEL_CASES = (
    ("h2_cell", "h2_high", 1.95, 2.05),
    ("lel_cell", "lel_high", 49.0, 51.0),
    ("co_cell", "co_high", 990.0, 1010.0),
    ("hf_room", "hf_high", 2.9, 3.1),
    ("temp_gas", "temp_gas_high", 79.0, 81.0),
    ("temp_material", "temp_material_high", 119.0, 121.0),
    ("dp_cell", "dp_high", 240.0, 260.0),
)
for _s, _c, _lo, _hi in LEVEL_CASES:
    _register("test_trip_" + _c, _level_case(_s, _c, _lo, _hi))


def test_trip_lel_rto_high():
    b = bench()
    b.to_state("READY")   # in RUNNING its warning stops the crusher first, by design
    b.values["lel_rto"] = 24.0
    b.scan()
    assert b.core.state_name == "READY"
    b.values["lel_rto"] = 26.0
    b.scan()
    assert_tripped_safe(b, "lel_rto_high")


def test_trip_o2_high_needs_two_of_three():
    b = bench()
    b.to_state("RUNNING")
    b.values["o2_a"] = 3.0
    b.run(1)
    assert b.core.state_name == "STOPPING"   # one high sensor alone does not trip: it stops crushing
    b.values["o2_b"] = 3.0
    b.scan()
    assert_tripped_safe(b, "o2_high")


def test_trip_o2_high_with_one_unhealthy_and_one_high():
    b = bench()
    b.to_state("RUNNING")
    b.faults["o2_a"] = "disconnect"
    b.values["o2_b"] = 2.6
    b.scan()
    assert_tripped_safe(b, "o2_high")


def test_trip_o2_vote_lost():
    b = bench()
    b.to_state("RUNNING")
    b.faults["o2_a"] = "disconnect"
    b.scan()
    assert b.core.state_name != "TRIPPED"
    b.faults["o2_c"] = "crc"
    b.scan()
    assert_tripped_safe(b, "o2_vote_lost")


def test_one_o2_lost_brings_controlled_stop():
    b = bench()
    b.to_state("RUNNING")
    b.faults["o2_b"] = "stale"
    b.scan()
    assert b.core.state_name == "STOPPING"
    assert any(e.get("cause") == "controlled_stop:o2_vote_degraded" for e in b.core.events)


def _ramp(b, sensor, per_scan, scans):
    for _ in range(scans):
        b.values[sensor] += per_scan
        b.scan()
        if b.core.state_name == "TRIPPED":
            return


def test_trip_co_rise():
    b = bench()
    b.to_state("RUNNING")
    _ramp(b, "co_cell", 4.0, 100)   # 40 ppm/s for 10 s: below the 50 ppm/s trip
    assert b.core.state_name != "TRIPPED", b.core.causes()
    b = bench()
    b.to_state("RUNNING")
    _ramp(b, "co_cell", 12.0, 75)   # 120 ppm/s (stops at the trip)
    assert_tripped_safe(b, "co_rise")
    assert b.values["co_cell"] < 1000.0   # the rise, not the level, tripped


def test_trip_temp_rise():
    b = bench()
    b.to_state("READY")
    _ramp(b, "temp_material", 0.01, 400)   # 6 K/min for 40 s: below the 10 K/min trip
    assert b.core.state_name == "READY", b.core.causes()
    b = bench()
    b.to_state("RUNNING")
    _ramp(b, "temp_material", 0.2, 150)   # 120 K/min (stops at the trip)
    assert_tripped_safe(b, "temp_rise")
    assert b.values["temp_material"] < 80.0


def test_trip_dp_rise():
    b = bench()
    b.to_state("RUNNING")
    _ramp(b, "dp_cell", 5.0, 15)   # 50 Pa/s
    assert b.core.state_name == "RUNNING", b.core.causes()
    b = bench()
    b.to_state("RUNNING")
    _ramp(b, "dp_cell", 20.0, 10)   # 200 Pa/s
    assert_tripped_safe(b, "dp_rise", overpressure=True)   # rising now: relieve, add no N2


def test_trip_n2_supply_low_only_while_o2_rises():
    b = bench()
    b.to_state("READY")
    b.values["n2_supply"] = 2.0
    b.run(1)
    assert b.core.state_name == "READY"   # low-low alone: alarm, start refused
    for k in ("o2_a", "o2_b", "o2_c"):
        b.values[k] = 1.6
    b.scan()
    assert b.core.state_name == "READY"
    b = bench()
    b.to_state("RUNNING")
    b.values["n2_supply"] = 2.0
    for k in ("o2_a", "o2_b", "o2_c"):
        b.values[k] = 2.2
    b.scan()
    assert_tripped_safe(b, "n2_supply_low")


def test_n2_supply_low_brings_controlled_stop():
    b = bench()
    b.to_state("RUNNING")
    b.values["n2_supply"] = 3.5
    b.scan()
    assert b.core.state_name == "STOPPING"


def test_trip_estop():
    b = bench()
    b.to_state("RUNNING")
    b.inputs["estop_ok"] = False
    b.scan()
    assert_tripped_safe(b, "estop")


def test_unreadable_estop_counts_as_open():
    b = bench()
    b.to_state("RUNNING")
    b.inputs["estop_ok"] = None
    b.scan()
    assert_tripped_safe(b, "estop")


def test_trip_door_open():
    b = bench()
    b.to_state("RUNNING")
    b.inputs["door_closed"] = False
    b.scan()
    assert_tripped_safe(b, "door_open")


def test_trip_output_feedback_crusher_failed_to_start():
    b = bench()
    b.to_state("READY")
    b.follow_crusher = False
    b.command("start")
    b.run(1.8)
    assert b.core.state_name == "RUNNING"
    b.run(0.5)
    assert_tripped_safe(b, "output_feedback:crusher")


def test_trip_output_feedback_crusher_welded():
    b = bench()
    b.to_state("READY")
    b.follow_crusher = False
    b.inputs["crusher_running"] = True   # contactor closed although commanded open
    b.run(2.5)
    assert_tripped_safe(b, "output_feedback:crusher")


def test_trip_output_write():
    b = bench()
    b.to_state("RUNNING")
    b.write_ok = False
    b.scan()
    assert_tripped_safe(b, "output_write")


def test_trip_scan_overrun():
    b = bench()
    b.to_state("RUNNING")
    b.overruns = 4
    b.scan()
    assert b.core.state_name == "RUNNING"
    b.overruns = 5
    b.scan()
    assert_tripped_safe(b, "scan_overrun")


def test_trip_self_test_on_welded_contactor_at_boot():
    b = bench()
    b.follow_crusher = False
    b.inputs["crusher_running"] = True
    b.run(3)
    assert_tripped_safe(b, "self_test")


def _sensor_fault_case(sensor, mode):
    def case():
        b = bench()
        b.to_state("RUNNING")
        b.faults[sensor] = mode
        b.scan()
        assert_tripped_safe(b, "sensor_fault:" + sensor)
    return case


for _s in ("lel_cell", "h2_cell", "co_cell", "hf_room", "lel_rto", "temp_gas", "temp_material", "dp_cell"):
    _register("test_trip_sensor_fault_" + _s, _sensor_fault_case(_s, "disconnect"))


def test_unhealthy_n2_supply_counts_as_low():
    b = bench()
    b.to_state("RUNNING")
    b.faults["n2_supply"] = "loop_low"
    b.scan()
    assert b.core.state_name == "STOPPING"


# --- sensor health -----------------------------------------------------------------------------
def _health_case(setup, quality):
    def case():
        b = bench()
        b.to_state("RUNNING")
        setup(b)
        b.scan()
        i = 5   # co_cell
        assert b.core.health.quality[i] == quality, b.core.health.quality[i]
        assert_tripped_safe(b, "sensor_fault:co_cell")
    return case


def _nan(b):
    b.values["co_cell"] = float("nan")


def _range(b):
    b.values["co_cell"] = 2500.0


def _stale(b):
    b.stale["co_cell"] = b.now - 2100


test_health_nan = _health_case(_nan, "fault:nan")
test_health_out_of_range = _health_case(_range, "fault:out_of_range")
test_health_stale = _health_case(_stale, "fault:stale")


def test_health_stuck_single_sensor():
    b = bench()
    b.to_state("READY")
    b.res["co_cell"] = 0.0   # the bench stops jittering co_cell: the value freezes
    b.run(119)
    assert b.core.state_name == "READY"
    b.run(2)
    assert b.core.health.quality[5] == "fault:stuck"
    assert_tripped_safe(b, "sensor_fault:co_cell")


def test_health_stuck_o2_needs_moving_peer():
    b = bench()
    b.to_state("READY")
    b.res["o2_a"] = 0.0
    b.run(61)
    assert b.core.health.quality[0] == "fault:stuck"
    b2 = bench()
    b2.to_state("READY")
    for k in ("o2_a", "o2_b", "o2_c"):
        b2.res[k] = 0.0   # all three frozen: no peer moved, so none is judged stuck
    b2.run(59)
    assert b2.core.health.quality[0] == "good"   # no peer moved: not stuck; not yet frozen
    b2.run(2)
    assert b2.core.health.quality[0] == "fault:frozen"   # a common-cause freeze of all three


def test_sensor_quality_events():
    b = bench()
    b.to_state("READY")
    b.faults["o2_a"] = "disconnect"
    b.scan()
    assert {"t": b.core.now / 1000.0, "type": "sensor", "name": "o2_a",
            "quality": "fault:disconnect"} in b.core.events
    del b.faults["o2_a"]
    b.scan()
    assert {"t": b.core.now / 1000.0, "type": "sensor", "name": "o2_a",
            "quality": "good"} in b.core.events
    assert b.core.health.quality[0] == "good"


def test_restored_latch_needs_reset():
    b = bench()
    b.core.restore_latch(["o2_high", "not_a_cause"])
    b.run(3)
    assert b.core.state_name == "TRIPPED"
    assert b.core.causes() == ["o2_high"]


def test_table_checker_finds_dead_ends_and_unreachable_states():
    from controller.core import RUNNING, TRANSITIONS, check_table
    assert check_table() == []
    broken = tuple(t for t in TRANSITIONS if not (t[0] == RUNNING))
    problems = check_table(broken)
    assert "state RUNNING has no way out" in problems
    assert "state STOPPING is unreachable from BOOT" in problems


def test_alarm_does_not_chatter_at_its_limit():
    b = bench()
    b.to_state("READY")
    for k in range(60):   # 6 s dithering around the H2 warning (1.0 vol %)
        b.values["h2_cell"] = 1.02 if k % 3 else 0.98
        b.scan()
    on = [e for e in b.core.events if e["type"] == "alarm" and e["name"] == "h2_cell"]
    assert [e["active"] for e in on] == [True]
    b.values["h2_cell"] = 0.05
    b.run(1.5)
    assert b.core.alarm_active[1]   # still inside the off-delay
    b.run(1)
    assert not b.core.alarm_active[1]


def test_noisy_temperature_gives_no_rise_alarm():
    b = bench()
    b.values["temp_material"] = 30.0
    b.to_state("READY")
    seed = 12345
    for _ in range(3000):   # 5 minutes of +-1 K noise on a steady 30 C
        seed = (seed * 1103515245 + 12345) % 2147483648
        b.values["temp_material"] = 30.0 + (seed / 2147483648.0 - 0.5) * 2.0
        b.scan()
    assert not [e for e in b.core.events if e["type"] == "alarm" and e["name"] == "temp_rise"]
    assert b.core.state_name == "READY"


def test_loop_faults_trip_in_the_same_scan_even_during_the_self_test():
    # output_write and scan_overrun are about the controller itself, not about warming sensors:
    # the beacon and horn must not wait for the end of BOOT's self-test.
    b = bench()
    b.write_ok = False
    b.scan()
    assert b.core.state_name == "TRIPPED" and b.core.causes() == ["output_write"]
    b = bench()
    b.overruns = params()["overrun_trip_count"]
    b.scan()
    assert b.core.state_name == "TRIPPED" and b.core.causes() == ["scan_overrun"]
    b = bench()
    b.faults["o2_a"] = "disconnect"      # a sensor fault during warm-up still waits for the self-test
    b.scan()
    assert b.core.state_name == "BOOT"


def test_an_outputs_record_only_when_an_output_changes_value():
    # The contactor feedback picks another entry of the output table even where it changes no
    # output (outside RUNNING): compared by identity, every flicker of it wrote an `outputs` record.
    b = bench()
    b.to_state("IDLE")
    b.follow_crusher = False
    del b.core.events[:]
    last = list(b.core.outputs)
    for k in range(10):   # 1 s of a chattering feedback, well inside the 2 s feedback timeout
        b.inputs["crusher_running"] = k % 2 == 0
        b.scan()
    assert b.core.state_name == "IDLE", b.core.state_name
    assert list(b.core.outputs) == last
    assert b.events("outputs") == [], b.events("outputs")
