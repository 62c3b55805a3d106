"""Clocks (issue 11 item 7): a raw clock that steps back or wraps must not stop or delay the core's timers.

Hazards (docs/safety.md, hazard register, H-CLOCK-STEP and H-CLOCK-WRAP): the core subtracted raw
times, so a clock stepped back by an hour held every timer for that hour (stepped 1 s after
power-up, a contactor welded at power-up tripped 3,602 s after it instead of 2 s), and a wrap of
MicroPython's time.ticks_ms() (2**30 ms on most ports) stopped BOOT (and with it the trip of a
contactor welded at power-up), the held-warning, run-down and other timers for good.

Every timer is measured twice from the moment its condition begins, in forward-only time (what a
stopwatch beside the cell shows): once with a steady clock, once with the clock under test, whose
step or wrap falls in the middle of the timer. It must fire no earlier than with the steady clock
and at most one scan later (the scan that sees a backward step adds no time). The clocks:
- back: CPython's monotonic ms (no wrap), stepped back by 3,600 s;
- wrap: ticks_ms wrapping at 2**30;
- back_across_wrap: ticks_ms stepped back by 3,600 s just after a wrap;
- long: as back_across_wrap, with the core's own time beyond 2**62, a heap-allocated long int even
  on the 64-bit unix port (as past 2**30 ms, 12.4 days, on a 32-bit board).
Plain asserts and no pytest imports: this file also runs under the MicroPython unix port.
"""

from corekit import WRAP, Clocked, params

from controller.core import Core

BACK_MS = 3600 * 1000      # the step back: an hour
STEADY_START = 50_000_000  # a monotonic clock some hours after boot
LONG_ORIGIN = 1 << 62      # past the small ints of the 64-bit unix port
OUT = ("crusher", "feed", "n2_purge", "n2_boost", "exhaust", "vent", "alarm", "horn")
T = params()["timers_ms"]


# -- the timers: (limit_ms, event_ms, period_ms, setup, fired, each) ----------------------------------
# setup(b) brings the bench to where the timer's condition begins and returns the commands of the
# first timed scan; fired(b) says the timer has fired; each(b, t) runs before every timed scan,
# t ms after the condition began. event_ms: when the clock steps or wraps, after the condition began.
def _idle(b):
    b.to_state("IDLE")


def _running(b):
    b.to_state("RUNNING")


def setup_boot(b):
    return ()


def setup_welded_at_boot(b):
    b.follow_crusher = False
    b.inputs["crusher_running"] = True    # the contactor is welded shut at power-up
    return ()


def setup_welded_idle(b):
    _idle(b)
    b.follow_crusher = False
    b.inputs["crusher_running"] = True
    return ()


def setup_warning(b):
    _running(b)
    b.values["h2_cell"] = 1.5             # above the warning, below the trip
    return ()


def setup_rundown(b):
    _running(b)
    return (("stop", "local"),)


def setup_reset(b):
    _idle(b)
    b.values["h2_cell"] = 2.5
    b.run(0.5)
    assert b.core.state_name == "TRIPPED", b.core.state_name
    b.values["h2_cell"] = 0.05            # the cause is gone: the reset hold starts
    return ()


def each_reset(b, t):
    b.pending = (("reset", "local"),)     # an operator pressing reset every scan


def setup_vote(b):
    _idle(b)
    b.faults["o2_a"] = "crc"
    b.run(0.5)
    assert b.core.o2_bad == 1
    del b.faults["o2_a"]                  # healthy again: out of the vote until it has recovered
    return ()


def setup_stale(b):
    _idle(b)
    b.stale["h2_cell"] = b.raw()          # the device's last sample is the one of the next scan
    return ()


def setup_stuck(b):
    _idle(b)
    b.res["o2_a"] = 0.0                   # frozen to the count while its peers move
    return ()


def setup_purge_hold(b):
    _idle(b)
    return (("purge", "local"),)


def setup_purge_timeout(b):
    b.values.update(o2_a=20.9, o2_b=20.8, o2_c=20.95)   # air: the cell never inerts
    b.run(3)
    assert b.core.state_name == "IDLE", b.core.state_name
    return (("purge", "local"),)


def setup_deviation(b):
    _running(b)
    b.values["o2_a"] = 1.2                # off its peers by more than the deviation, below the trip
    return ()


def setup_off_delay(b):
    _idle(b)
    b.values["h2_cell"] = 1.5
    b.run(0.5)
    assert b.core.alarm_active[_alarm("h2_cell")]
    b.values["h2_cell"] = 0.05            # the warning is gone: the alarm's off-delay starts
    return ()


def setup_rise(b):
    _idle(b)
    b.t_gas = b.values["temp_gas"]
    return ()


def each_rise(b, t):
    b.values["temp_gas"] = b.t_gas + 0.5 * t / 1000.0   # 30 K/min, on the stopwatch


def _alarm(name):
    from controller.core import ALARMS
    for k in range(len(ALARMS)):
        if ALARMS[k][0] == name:
            return k
    raise KeyError(name)


def _state(name):
    return lambda b: b.core.state_name == name


def _cause(name):
    return lambda b: name in b.core.causes()


def _quality(sensor, q):
    from cellspec.names import SENSORS
    i = SENSORS.index(sensor)
    return lambda b: b.core.health.quality[i] == q


TIMERS = {
    # name: (limit_ms, event_ms, period_ms, setup, fired, each)
    "boot_self_test": (T["self_test_s"], 1000, 100, setup_boot, lambda b: b.core.state_name != "BOOT", None),
    "welded_at_boot": (T["self_test_s"], 1000, 100, setup_welded_at_boot, _state("TRIPPED"), None),
    "feedback_welded": (T["feedback_timeout_s"], 1000, 100, setup_welded_idle,
                        _cause("output_feedback:crusher"), None),
    "warning_hold": (T["warning_hold_s"], 2500, 100, setup_warning, _state("STOPPING"), None),
    "rundown": (T["rundown_s"], 7000, 100, setup_rundown, _state("READY"), None),
    "reset_hold": (T["reset_hold_s"], 2500, 100, setup_reset, _state("PURGING"), each_reset),
    "vote_recovery": (T["vote_recovery_s"], 5000, 100, setup_vote, lambda b: b.core.o2_bad == 0, None),
    "stale": (2000 + 100, 1000, 100, setup_stale, _quality("h2_cell", "fault:stale"), None),
    "stuck": (60000 + 100, 30000, 100, setup_stuck, _quality("o2_a", "fault:stuck"), None),
    "purge_hold": (T["purge_hold_s"], 5000, 100, setup_purge_hold, _state("READY"), None),
    "purge_timeout": (T["purge_timeout_s"], 300000, 1000, setup_purge_timeout, _cause("purge_timeout"), None),
    "deviation_hold": (T["deviation_hold_s"], 15000, 100, setup_deviation, _state("STOPPING"), None),
    "alarm_off_delay": (2000, 1000, 100, setup_off_delay,
                        lambda b: not b.core.alarm_active[_alarm("h2_cell")], None),
    # 30 K/min: 10 K/min over the young 30 s window after 10 s, then one slot (3 s) to see it.
    "temp_rise": (13000 + 100, 5000, 100, setup_rise, _cause("temp_rise"), each_rise),
}
STEADY = {}   # name -> (condition start in bench time, ms until it fired), with a steady clock


def run(name, start=0, wrap=None, origin=None, steps=None):
    """Drive one timer; return (when its condition began, ms from then until it fired or None)."""
    limit, event, period, setup, fired, each = TIMERS[name]
    b = Clocked(params(), start=start, wrap=wrap, origin=origin, period_ms=period)
    b.pending = ()
    first = setup(b)
    t0 = b.true
    for t, d in (steps or {}).items():
        b.steps[t0 + t] = d
    cmds = first
    while b.true - t0 <= limit + 2000 + 2 * period:
        t = b.true - t0
        if each is not None:
            each(b, t)
        b.scan(cmds + b.pending)
        cmds, b.pending = (), ()
        if fired(b):
            return t0, t
    return t0, None


def steady(name):
    if name not in STEADY:
        STEADY[name] = run(name)
    return STEADY[name]


def clock_run(name, clock):
    t0, _ = steady(name)
    event = TIMERS[name][1]
    at = t0 + event                      # bench time of the step or wrap
    if clock == "back":
        return run(name, start=STEADY_START, steps={event: -BACK_MS})[1]
    if clock == "wrap":                  # the raw clock reaches 2**30 (and reads 0) at `at`
        return run(name, start=(WRAP - at) % WRAP, wrap=WRAP)[1]
    # back_across_wrap and long: wrapped 1 s before `at`, stepped back an hour at `at`
    origin = LONG_ORIGIN if clock == "long" else None
    return run(name, start=(WRAP + 1000 - at) % WRAP, wrap=WRAP, origin=origin,
               steps={event: -BACK_MS})[1]


def check(name, clock):
    limit, _event, period = TIMERS[name][:3]
    _t0, nominal = steady(name)
    assert nominal is not None and nominal <= limit, (name, "steady", nominal, limit)
    got = clock_run(name, clock)
    assert got is not None, (name, clock, "never fired within", limit + 2000)
    assert nominal <= got <= nominal + period, (name, clock, got, nominal)


def _make(name, clock):
    def test():
        check(name, clock)
    return test


CLOCKS = ("back", "wrap", "back_across_wrap", "long")
GENERATED = {}
for _name in TIMERS:
    for _clock in CLOCKS:
        GENERATED["test_clock_" + _clock + "_" + _name] = _make(_name, _clock)
globals().update(GENERATED)   # pytest collects them by name; the MicroPython runner reads GENERATED


# -- the raw clock into the core's time -------------------------------------------------------------
def test_event_time_counts_from_the_start_whatever_the_raw_clock():
    # On a board: Core(params, 0, time.ticks_ms()). The events' t is the time since the start.
    for start in (0, WRAP - 700, 123456):
        b = Clocked(params(), start=start, wrap=WRAP, origin=0)
        b.run(3)
        idle = [e for e in b.events("state") if e["to"] == "IDLE"]
        assert idle and idle[0]["t"] == 2.0, (start, idle)


def test_event_time_never_goes_back_when_the_clock_does():
    b = Clocked(params(), start=STEADY_START, wrap=None)
    b.run(1)
    b.step_clock(-BACK_MS)
    b.run(2)
    b.step_clock(-BACK_MS)
    b.values["h2_cell"] = 2.5
    b.run(1)
    times = [e["t"] for e in b.core.events]
    assert times == sorted(times), times
    assert b.core.state_name == "TRIPPED"
    # forward-only time: 4 s of scans, two of which saw a step back and added nothing
    assert b.core.now - STEADY_START == b.true - 100 - 2 * 100, (b.core.now, b.true)


def test_a_backward_step_adds_no_time_and_a_wrap_loses_none():
    c = Core(params(), 0, WRAP - 50)
    c.step(WRAP - 50, *quiet_scan())
    c.step(50, *quiet_scan())                 # wrapped: 100 ms later
    assert c.now == 100
    c.step(50 - BACK_MS % WRAP, *quiet_scan())   # an hour back (across the wrap): nothing passes
    assert c.now == 100
    c.step(150 - BACK_MS % WRAP, *quiet_scan())
    assert c.now == 200


def quiet_scan():
    from corekit import GOOD_INPUTS, QUIET

    from cellspec.names import INPUTS, SENSORS
    return [(QUIET[n], None, 0) for n in SENSORS], [GOOD_INPUTS[n] for n in INPUTS]


# -- readings stamped on the raw clock ---------------------------------------------------------------
def test_a_sample_from_before_a_backward_step_ages_from_when_it_was_first_seen():
    # After the step, the HAL hands over a sample taken before it: stamped "in the future".
    from cellspec.names import SENSORS
    i = SENSORS.index("h2_cell")
    b = Clocked(params(), start=STEADY_START, wrap=None)
    b.to_state("IDLE")
    before = b.raw()
    b.step_clock(-BACK_MS)
    b.stale["h2_cell"] = before + 50      # taken just before the step, then the device fell silent
    b.scan()
    assert b.core.health.quality[i] == "good"      # not stale at once: no spurious trip
    seen = b.true - 100
    while b.core.health.quality[i] == "good" and b.true - seen < 10000:
        b.scan()
    assert b.core.health.quality[i] == "fault:stale"
    assert b.true - 100 - seen <= 2000 + 100, b.true - seen   # not fresh for the hour: stale_s
    del b.stale["h2_cell"]                # fresh samples again
    b.scan()
    assert b.core.health.quality[i] == "good"


def test_a_fresh_sample_after_a_backward_step_is_fresh():
    from cellspec.names import SENSORS
    b = Clocked(params(), start=5000, wrap=WRAP)
    b.to_state("IDLE")
    b.step_clock(-BACK_MS)                # across zero: the raw clock wraps back near 2**30
    b.run(5)
    assert b.core.state_name == "IDLE", b.core.causes()
    assert b.core.health.quality == ["good"] * len(SENSORS)


def test_a_stale_sample_stays_stale_across_a_wrap():
    from cellspec.names import SENSORS
    i = SENSORS.index("h2_cell")
    b = Clocked(params(), start=WRAP - 10000, wrap=WRAP)
    b.to_state("IDLE")                    # 3 s: the clock is 7 s from its wrap
    b.stale["h2_cell"] = b.raw()
    b.run(10)
    assert b.core.health.quality[i] == "fault:stale"
    assert b.core.state_name == "TRIPPED" and "sensor_fault:h2_cell" in b.core.causes()


def outputs(b):
    return {OUT[i]: b.core.outputs[i] for i in range(len(OUT))}


def test_trip_effects_follow_the_causes_of_a_scan_that_added_no_time():
    # dp_cell back in its band in the very scan that sees the clock step back: the overpressure
    # class of trip effects ends there, as in any other scan (n2_boost open again, vent closed).
    b = Clocked(params(), start=STEADY_START, wrap=None)
    b.to_state("IDLE")
    b.values["dp_cell"] = 300.0
    b.run(3)                              # long enough for the rise to be over: dp_high alone
    assert b.core.state_name == "TRIPPED" and b.core.rises[-1][4].rate == 0.0
    out = outputs(b)
    assert out["vent"] and not out["n2_boost"]
    b.values["dp_cell"] = -80.0
    b.step_clock(-BACK_MS)
    b.scan()
    out = outputs(b)
    assert not out["vent"] and out["n2_boost"], out
