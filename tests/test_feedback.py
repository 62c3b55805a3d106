"""The feedback discrepancy integrator against a plain reference model (hypothesis) and exact cases.

Why: the integrator decides when a chattering or welded contactor trips; the first mutation run
after safety core v2 left a third of its mutants alive. The reference below states the rule as
simply as it can be stated: every interval between two samples counts, with the value seen at
its start, in the slot of its end; the total is what lies in the last SLOTS slots.
"""

from hypothesis import given, settings
from hypothesis import strategies as st
from thoroughness import examples

from controller.feedback import SLOTS, DiscrepancyWindow


class Reference:
    def __init__(self, window_ms, start_ms=0):
        self.slot_ms = max(1, int(window_ms) // SLOTS)
        self.items = []            # (slot, ms)
        self.last = start_ms
        self.prev = False
        self.slot = start_ms // self.slot_ms

    def update(self, now, active):
        slot = now // self.slot_ms
        if slot < self.slot:
            self.items = []        # the clock went back: start again
        self.slot = slot
        if self.prev and now > self.last:
            self.items.append((slot, now - self.last))
        self.prev = active
        self.last = now
        return sum(ms for s, ms in self.items if s > slot - SLOTS)


samples = st.lists(st.tuples(st.integers(min_value=0, max_value=700), st.booleans()),
                   min_size=1, max_size=120)


@settings(max_examples=examples(300), deadline=None, database=None)
@given(window=st.sampled_from((500, 2000, 10000, 13)), start=st.integers(min_value=0, max_value=5000),
       steps=samples)
def test_integrator_matches_the_reference(window, start, steps):
    d = DiscrepancyWindow(window, start)
    r = Reference(window, start)
    now = start
    for dt, active in steps:
        now += dt
        assert d.update(now, active) == r.update(now, active), (now, active)
        assert d.total == sum(d.bins)


def test_sample_and_hold_exact():
    d = DiscrepancyWindow(2000, 0)            # 20 slots of 100 ms
    assert d.slot_ms == 100
    assert d.update(0, True) == 0             # nothing before the first sample
    assert d.update(100, True) == 100
    assert d.update(150, False) == 150        # the interval counts with the value at its start
    assert d.update(250, True) == 150         # held False over it
    assert d.update(300, True) == 200


def test_old_time_leaves_the_window_slot_by_slot_and_at_once_after_a_gap():
    d = DiscrepancyWindow(2000, 0)
    for t in range(0, 601, 100):
        d.update(t, t < 500)                  # true from 0 to 400: 500 ms counted (slots 1..5)
    assert d.total == 500
    d.update(2100, False)                     # slot 21: slot 1 has left the window
    assert d.total == 400
    d.update(2300, False)                     # slots 2 and 3 leave
    assert d.total == 200
    d.update(10000, False)                    # a gap longer than the window empties it
    assert d.total == 0 and d.bins == [0] * SLOTS


def test_clock_going_back_starts_again():
    d = DiscrepancyWindow(2000, 5000)
    d.update(5000, True)
    d.update(5500, True)
    assert d.total == 500
    d.update(100, True)                       # time went back: nothing carried over
    assert d.total == 0
