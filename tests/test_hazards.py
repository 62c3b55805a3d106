"""Hazards found by fault testing (issue 9), one test each, written from docs/process-safety.md, not the code.

Each test names the hazard-register row it proves (docs/safety.md, "Hazard register"): H-<n>.
Plain asserts and no pytest imports: this file also runs under the MicroPython unix port.
"""

from corekit import Bench, params

OUT = ("crusher", "feed", "n2_purge", "n2_boost", "exhaust", "vent", "alarm", "horn")


def outputs(b):
    return dict(zip(OUT, b.core.outputs))


def running():
    b = Bench(params())
    b.to_state("RUNNING")
    return b


def state_events(b):
    return [e for e in b.core.events if e["type"] == "state"]


# --- H-O2-LOW: two O2 sensors failing low must not hide the third's rise -------------------------
def test_h_o2_low_slow_rise_stops_on_held_deviation():
    b = running()
    b.values["o2_b"] = 0.4
    b.values["o2_c"] = 0.41
    o2 = 0.5
    stopped_at = None
    for _ in range(1200):                  # 120 s: air leaks in, o2_a (the live one) rises 0.03 %/s
        o2 += 0.003
        b.values["o2_a"] = o2
        b.scan()
        if b.core.state_name != "RUNNING":
            stopped_at = o2
            break
    assert b.core.state_name == "STOPPING", b.core.state_name
    assert stopped_at < 2.5, stopped_at    # the stop came before the live sensor saw the trip
    causes = [e["cause"] for e in state_events(b)]
    assert "controlled_stop:o2_deviation_held" in causes, causes


def test_h_o2_low_one_sensor_above_trip_stops_at_once():
    b = running()
    b.values["o2_b"] = 0.4
    b.values["o2_c"] = 0.41
    b.values["o2_a"] = 2.6                 # a fast leak: one sensor above the trip on its own
    b.scan()
    assert b.core.state_name == "STOPPING"
    assert state_events(b)[-1]["cause"] == "controlled_stop:o2_one_high"
    assert not outputs(b)["feed"]


# --- H-O2-FROZEN: a common-cause freeze of all three O2 sensors ----------------------------------
def test_h_o2_frozen_all_three_trip_within_frozen_time():
    b = running()
    for k in ("o2_a", "o2_b", "o2_c"):
        b.res[k] = 0.0                     # frozen to the count: the shared ADC stopped converting
    t0 = b.now
    while b.core.state_name == "RUNNING" and b.now - t0 < 70000:
        b.scan()
    assert b.core.state_name == "TRIPPED", b.core.state_name
    assert "o2_vote_lost" in b.core.causes()
    elapsed = b.now - t0
    frozen_ms = params()["timers_ms"]["frozen_s"]
    assert frozen_ms <= elapsed <= frozen_ms + 500, elapsed
    assert b.core.health.quality[0] == "fault:frozen"


def test_h_o2_frozen_noise_keeps_them_healthy():
    b = running()                          # the bench jitters every reading by 3 counts
    b.run(120)
    assert b.core.state_name == "RUNNING"


# --- H-PULSE: pulses shorter than a scan; a contactor dropped by the hard-wired chain ------------
def test_h_pulse_latched_estop_edge_trips():
    b = running()
    b.inputs["estop_ok"] = False           # what the HAL reports once after a 40 ms pulse
    b.scan()
    b.inputs["estop_ok"] = True
    b.scan()
    assert b.core.state_name == "TRIPPED" and "estop" in b.core.causes()


def test_h_pulse_contactor_dropped_while_running_trips():
    b = running()
    b.follow_crusher = False
    b.inputs["crusher_running"] = False    # the chain opened the contactor; the command is still on
    b.scan()
    assert b.core.state_name == "TRIPPED", b.core.state_name
    assert "contactor_dropped" in b.core.causes()
    assert not outputs(b)["crusher"]       # it will not close again behind the operator's back


def test_h_pulse_contactor_closing_late_at_start_is_no_drop():
    b = Bench(params())
    b.to_state("READY")
    b.follow_crusher = False
    b.command("start")
    for _ in range(3):                     # the contactor takes 300 ms to close
        b.scan()
    b.inputs["crusher_running"] = True
    b.run(5)
    assert b.core.state_name == "RUNNING", b.core.causes()


# --- H-FEEDBACK: chatter and drop-outs cannot restart the discrepancy timer ----------------------
def _ready_with_feedback(pattern_ms, period_ms, seconds):
    """READY (crusher commanded off) with feedback True for pattern_ms of every period_ms."""
    b = Bench(params())
    b.to_state("READY")
    b.follow_crusher = False
    t0 = b.now
    while b.now - t0 < seconds * 1000 and b.core.state_name != "TRIPPED":
        b.inputs["crusher_running"] = (b.now - t0) % period_ms < pattern_ms
        b.scan()
    return b


def test_h_feedback_chatter_at_5_hz_trips():
    b = _ready_with_feedback(100, 200, 20)
    assert b.core.state_name == "TRIPPED" and "output_feedback:crusher" in b.core.causes()


def test_h_feedback_on_1_9_s_of_every_4_s_trips():
    b = _ready_with_feedback(1900, 4000, 30)
    assert b.core.state_name == "TRIPPED" and "output_feedback:crusher" in b.core.causes()


def test_h_feedback_single_short_blip_does_not_trip():
    b = _ready_with_feedback(300, 60000, 20)   # one 300 ms blip (a contactor bounce)
    assert b.core.state_name == "READY", b.core.causes()


def test_h_feedback_steady_discrepancy_trips_after_the_timeout():
    b = Bench(params())
    b.to_state("READY")
    b.follow_crusher = False
    b.run(12)                              # a quiet window first
    b.inputs["crusher_running"] = True     # welded closed from now on
    t0 = b.now
    while b.core.state_name != "TRIPPED" and b.now - t0 < 5000:
        b.scan()
    assert "output_feedback:crusher" in b.core.causes()
    t_trip = [e["t"] for e in b.core.events if e["type"] == "trip"][-1] * 1000
    timeout = params()["timers_ms"]["feedback_timeout_s"]
    assert timeout - 100 <= t_trip - t0 <= timeout + 100, t_trip - t0


def test_h_feedback_unreadable_while_running_alarms_then_trips():
    b = running()
    b.follow_crusher = False
    b.inputs["crusher_running"] = None     # the input cannot be read
    b.scan()
    assert b.core.state_name == "RUNNING"
    names = [a[0] for a in b.core.active_alarms()]
    assert "input_fault:crusher_running" in names, names
    assert not outputs(b)["feed"]          # no positive feedback: no feed
    b.run(2.5)
    assert b.core.state_name == "TRIPPED" and "output_feedback:crusher" in b.core.causes()


# --- H-RESET: a reset is refused while the fault that latched is still there ---------------------
def test_h_reset_refused_while_self_test_sensor_still_dead():
    b = Bench(params())
    b.faults["o2_b"] = "disconnect"
    b.run(3)
    assert b.core.state_name == "TRIPPED"
    assert "sensor_fault:o2_b" in b.core.causes()
    b.run(30)
    ok, reason = b.command("reset")
    assert not ok and "sensor_fault:o2_b" in reason, reason
    del b.faults["o2_b"]
    b.run(6)
    assert b.command("reset") == (True, "")


def test_h_reset_refused_while_a_trip_level_is_present():
    b = running()
    b.values["temp_gas"] = 85.0
    b.run(10)
    ok, reason = b.command("reset")
    assert not ok and "temp_gas_high" in reason


# --- H-VOTE-FLAP: two sensors failing in turn count as two out of the vote -----------------------
def test_h_vote_flap_two_sensors_failing_alternately_trip():
    b = running()
    for k in range(40):
        b.faults.pop("o2_a", None)
        b.faults.pop("o2_b", None)
        b.faults["o2_a" if k % 2 else "o2_b"] = "disconnect"
        b.scan()
        if b.core.state_name == "TRIPPED":
            break
    assert b.core.state_name == "TRIPPED", b.core.state_name
    assert "o2_vote_lost" in b.core.causes() or "o2_high" in b.core.causes()


def test_h_vote_flap_a_sensor_rejoins_after_the_recovery_time():
    b = running()
    b.faults["o2_a"] = "disconnect"
    b.scan()
    del b.faults["o2_a"]
    b.run(5)
    assert b.core.o2_bad == 1              # healthy again, but not yet back in the vote
    b.run(6)
    assert b.core.o2_bad == 0


# --- H-INERT: a leak that never lets the cell hold inert -----------------------------------------
def _cycle_permissive(b, times):
    for _ in range(times):
        for k in ("o2_a", "o2_b", "o2_c"):
            b.values[k] = 2.0              # above start_permissive + hysteresis: READY -> PURGING
        b.run(0.5)
        for k, v in (("o2_a", 0.5), ("o2_b", 0.52), ("o2_c", 0.48)):
            b.values[k] = v
        b.run(11)                          # inerted again: READY


def test_h_inert_repeated_permissive_losses_block_start_until_local_ack():
    b = Bench(params())
    b.to_state("READY")
    _cycle_permissive(b, 3)
    assert b.core.state_name == "READY"
    names = [a[0] for a in b.core.active_alarms()]
    assert "inerting_failed" in names, names
    ok, reason = b.command("start")
    assert not ok and "inerting_failed" in reason, reason
    b.command("ack", "remote")             # a remote ack silences, it does not clear
    ok, reason = b.command("start")
    assert not ok and "inerting_failed" in reason, reason
    b.command("ack", "local")
    b.run(3)                               # the alarm clears after its off-delay
    assert b.command("start") == (True, "")


def test_h_inert_two_losses_do_not_alarm():
    b = Bench(params())
    b.to_state("READY")
    _cycle_permissive(b, 2)
    assert "inerting_failed" not in [a[0] for a in b.core.active_alarms()]
    assert b.command("start") == (True, "")


# --- H-RISE: the temperature rise claim of docs/safety.md ---------------------------------------
def test_h_rise_20_k_per_min_trips_temp_rise_within_20_s():
    # docs/safety.md: a runaway of 20 K/min trips temp_rise within 20 s (30 s window, 10 K/min).
    worst = 0
    for phase_ms in (0, 700, 1500, 2300, 2900):
        b = Bench(params())
        b.to_state("RUNNING")
        b.run(40 + phase_ms / 1000.0)      # a full, flat window first
        t0 = b.now
        base = b.values["temp_material"]
        while b.core.state_name != "TRIPPED" and b.now - t0 < 40000:
            b.values["temp_material"] = base + 20.0 * (b.now - t0) / 60000.0
            b.scan()
        assert "temp_rise" in b.core.causes(), b.core.causes()
        worst = max(worst, b.now - t0)
    assert worst <= 20000, worst


# --- H-EFFECTS: trip effects follow the causes present now ---------------------------------------
def test_h_effects_runaway_keeps_the_cell_below_atmosphere():
    b = running()
    b.values["temp_material"] = 130.0      # temp_material_high: a thermal trip
    b.scan()
    o = outputs(b)
    assert b.core.state_name == "TRIPPED"
    assert o["exhaust"] and not o["vent"] and o["n2_purge"] and o["n2_boost"], o


def test_h_effects_overpressure_adds_no_nitrogen_and_relieves():
    b = running()
    b.values["dp_cell"] = 300.0
    b.scan()
    o = outputs(b)
    assert "dp_high" in b.core.causes()
    assert not o["n2_boost"] and o["vent"], o


def test_h_effects_door_open_never_floods_the_cell_with_nitrogen():
    b = running()
    b.inputs["door_closed"] = False
    b.scan()
    o = outputs(b)
    assert "door_open" in b.core.causes()
    assert not o["n2_purge"] and not o["n2_boost"] and o["exhaust"], o


def test_h_effects_flammable_rto_inlet_isolates_the_rto_when_it_appears():
    b = running()
    b.values["temp_material"] = 130.0
    b.scan()
    assert outputs(b)["exhaust"]
    b.run(5)
    b.values["lel_rto"] = 21.0             # later, solvent reaches the RTO inlet
    b.scan()
    o = outputs(b)
    assert not o["exhaust"] and o["vent"], o
    b.values["lel_rto"] = 1.0
    b.scan()
    assert outputs(b)["exhaust"]           # present now, not latched: the exhaust reopens


def test_h_effects_combined_door_and_flammable_rto():
    b = running()
    b.inputs["door_closed"] = False
    b.values["lel_rto"] = 22.0
    b.scan()
    o = outputs(b)
    assert not o["exhaust"] and o["vent"] and not o["n2_purge"] and not o["n2_boost"], o


def test_h_effects_dp_alarm_when_the_tripped_cell_goes_above_atmosphere():
    b = running()
    b.values["temp_gas"] = 85.0
    b.scan()
    b.values["dp_cell"] = 20.0
    b.scan()
    assert "dp_cell" in [a[0] for a in b.core.active_alarms()]


# --- H-BEACON: the beacon stays on while TRIPPED; ack silences the horn only ---------------------
def test_h_beacon_stays_on_after_ack():
    b = running()
    b.values["h2_cell"] = 2.5
    b.scan()
    b.command("ack")
    o = outputs(b)
    assert o["alarm"] and not o["horn"], o
    b.values["h2_cell"] = 0.05
    b.run(6)
    assert outputs(b)["alarm"]             # still TRIPPED: still on
    b.command("reset")
    b.command("ack")
    assert not outputs(b)["alarm"]


# --- H-PURGE-VOTE: purge is refused while the O2 vote is already lost ----------------------------
def test_h_purge_refused_with_the_o2_vote_lost():
    b = Bench(params())
    b.to_state("IDLE")
    b.faults["o2_a"] = "disconnect"
    b.faults["o2_b"] = "nan"
    ok, reason = b.command("purge")
    assert not ok and "O2 vote lost" in reason, reason
    assert b.core.state_name == "IDLE"


# --- H-CORE: the core checks its own parameters ---------------------------------------------------
def test_h_core_refuses_unsafe_safe_states():
    from controller.core import Core, ParameterError
    p = params(safe=[True] * 8)
    try:
        Core(p, 0)
    except ParameterError as exc:
        msg = str(exc)
        for name in ("crusher", "feed", "alarm", "horn"):
            assert "outputs." + name + ".safe" in msg, msg
        return
    raise AssertionError("Core accepted crusher and feed on with no power")


def test_h_core_refuses_an_o2_trip_in_air():
    from controller.core import Core, ParameterError
    p = params()
    p["thresholds"]["o2"]["trip"] = 21.0
    try:
        Core(p, 0)
    except ParameterError as exc:
        assert "thresholds.o2.trip" in str(exc), str(exc)
        return
    raise AssertionError("Core accepted an O2 trip of 21 %")


def test_h_core_initial_outputs_are_the_safe_states():
    b = Bench(params())
    assert outputs(b) == {"crusher": False, "feed": False, "n2_purge": True, "n2_boost": True,
                          "exhaust": False, "vent": True, "alarm": False, "horn": False}
