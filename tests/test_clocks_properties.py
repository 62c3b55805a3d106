"""Clocks, as a property (issue 11 item 7): whatever the raw clock does, every timer fires on time.

For any sequence of raw clock increments (ordinary and late scans, the same millisecond twice,
stalls, steps back by up to 2**29 ms) on a clock that wraps at 2**30 like time.ticks_ms(), each
timer of the core fires exactly at the first scan at which the forward-only time since its
condition began (the sum of the increments that were not negative) reaches its nominal time: never
later (a step back or a wrap does not hold it up), and never earlier (neither shortens it).
Hazard rows H-CLOCK-STEP and H-CLOCK-WRAP of docs/safety.md. CPython only (hypothesis).
"""

from corekit import WRAP, Clocked, params
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_clocks import TIMERS

T = params()["timers_ms"]
# name: (nominal ms, "ge" or "gt", counted from the first timed scan (0) or the scan before it (1))
NOMINAL = {
    "boot_self_test": (T["self_test_s"], "ge", 0),
    "welded_at_boot": (T["self_test_s"], "ge", 0),
    "feedback_welded": (T["feedback_timeout_s"], "ge", 0),
    "warning_hold": (T["warning_hold_s"], "ge", 0),
    "rundown": (T["rundown_s"], "ge", 0),
    "reset_hold": (T["reset_hold_s"], "ge", 1),       # from the last scan that saw the cause
    "vote_recovery": (T["vote_recovery_s"], "ge", 0),
    "stale": (2000, "gt", 0),                        # h2_cell stale_s: older than, not as old as
    "purge_hold": (T["purge_hold_s"], "ge", 0),
    "alarm_off_delay": (2000, "ge", 0),
}
HALF = WRAP // 2

increment = st.one_of(
    st.integers(50, 150),               # ordinary scans, early or late
    st.just(0),                         # the same millisecond twice
    st.integers(-(HALF - 1), -1),       # a step back (NTP, a hand-set clock), across 0 or not
    st.integers(151, 20_000),           # a stall
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(NOMINAL)),
       start=st.one_of(st.integers(0, WRAP - 1), st.integers(WRAP - 20_000, WRAP - 1)),
       steps=st.lists(increment, min_size=1, max_size=60))
def test_every_timer_fires_when_forward_only_time_reaches_it(name, start, steps):
    nominal, cmp, before = NOMINAL[name]
    _limit, _event, period, setup, fired, each = TIMERS[name]
    b = Clocked(params(), start=start, wrap=WRAP, period_ms=period)
    b.pending = ()
    cmds = setup(b)
    forward = before * period           # forward-only time since the condition began
    due = None                          # index of the first scan at which it must have fired
    k = 0
    while True:
        if (forward >= nominal) if cmp == "ge" else (forward > nominal):
            due = k if due is None else due
        if each is not None:
            each(b, forward)
        b.scan(cmds + b.pending)
        cmds, b.pending = (), ()
        if fired(b):
            assert due == k, (name, "fired at scan", k, "forward ms", forward, "due at scan", due)
            return
        assert due is None, (name, "not fired at scan", k, "forward ms", forward, "nominal", nominal)
        d = steps[k] if k < len(steps) else period   # then ordinary scans until it fires
        b.offset += d - period          # the bench adds one period itself
        if d > 0:
            forward += d
        k += 1
