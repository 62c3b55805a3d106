"""Sensor health and rate of rise, verdict by verdict, at the exact boundaries.

Why so exact: `controller/health.py` decides what "unhealthy" means, and an unhealthy sensor is
the worst case for what it guards. Each test pins one comparison (<= vs <, > vs >=) so that a
changed boundary fails here (mutation testing relies on it).
Plain asserts and no pytest imports: this file also runs under the MicroPython unix port
(tests/micropython/run_core_tests.py, checked by tests/test_micropython.py).
"""

import math

from controller.health import GOOD, Q_NAN, Q_RANGE, Q_STALE, Q_STUCK, RiseDetector, SensorHealth

# name, low, high, stale_ms, stuck_ms, resolution
ONE = (("x", 0.0, 10.0, 300, 1000, 0.1),)
THREE = tuple((n, 0.0, 25.0, 300, 1000, 0.01) for n in ("a", "b", "c"))


def judge(h, now, *readings):
    changed = []
    h.update(now, list(readings), changed)
    return changed


def test_good_reading_inside_range_and_fresh():
    h = SensorHealth(ONE)
    assert judge(h, 0, (5.0, None, 0)) == []
    assert h.quality == [GOOD] and h.healthy == [True] and h.n_bad == 0 and h.value == [5.0]


def test_range_bounds_are_inclusive():
    h = SensorHealth(ONE)
    judge(h, 0, (0.0, None, 0))
    assert h.healthy == [True]
    judge(h, 1, (10.0, None, 1))
    assert h.healthy == [True]
    assert judge(h, 2, (10.0001, None, 2)) == [0]
    assert h.quality == [Q_RANGE] and h.n_bad == 1
    judge(h, 3, (5.0, None, 3))
    assert h.healthy == [True] and h.n_bad == 0
    judge(h, 4, (-0.0001, None, 4))
    assert h.quality == [Q_RANGE]


def test_nan_is_its_own_verdict():
    h = SensorHealth(ONE)
    judge(h, 0, (math.nan, None, 0))
    assert h.quality == [Q_NAN] and h.healthy == [False]


def test_backend_fault_code_becomes_the_quality_and_is_cached():
    h = SensorHealth(ONE)
    judge(h, 0, (5.0, "disconnect", 0))
    assert h.quality == ["fault:disconnect"] and h.n_bad == 1
    q = h.quality[0]
    judge(h, 1, (5.0, None, 1))
    judge(h, 2, (5.0, "disconnect", 2))
    assert h.quality[0] is q   # same string object: compared by identity in the hot path
    judge(h, 3, (5.0, "crc", 3))
    assert h.quality == ["fault:crc"] and h.n_bad == 1


def test_stale_boundary():
    h = SensorHealth(ONE)
    judge(h, 300, (5.0, None, 0))      # exactly stale_ms old: still fresh
    assert h.healthy == [True]
    judge(h, 301, (5.1, None, 0))
    assert h.quality == [Q_STALE]


def test_quality_change_is_reported_once():
    h = SensorHealth(ONE)
    assert judge(h, 0, (math.nan, None, 0)) == [0]
    assert judge(h, 1, (math.nan, None, 1)) == []
    assert judge(h, 2, (5.0, None, 2)) == [0]
    assert judge(h, 3, (5.0, None, 3)) == []


def test_single_sensor_stuck_after_stuck_time_without_movement():
    h = SensorHealth(ONE)
    judge(h, 0, (5.0, None, 0))
    judge(h, 1000, (5.05, None, 1000))   # within one count: no movement
    assert h.healthy == [True]            # exactly stuck_ms: not yet
    judge(h, 1001, (5.1, None, 1001))     # exactly one count: still no movement
    assert h.quality == [Q_STUCK] and h.n_bad == 1


def test_movement_beyond_one_count_resets_stuck_in_both_directions():
    h = SensorHealth(ONE)
    judge(h, 0, (5.0, None, 0))
    judge(h, 900, (5.11, None, 900))     # up by more than one count
    judge(h, 1500, (5.11, None, 1500))
    assert h.healthy == [True]
    judge(h, 1800, (5.0, None, 1800))    # down by more than one count
    judge(h, 2700, (5.0, None, 2700))
    assert h.healthy == [True]
    judge(h, 2801, (5.0, None, 2801))
    assert h.quality == [Q_STUCK]
    judge(h, 2900, (5.5, None, 2900))    # moves again: good
    assert h.healthy == [True] and h.n_bad == 0


def test_fault_forgets_the_reference_so_recovery_is_judged_afresh():
    h = SensorHealth(ONE)
    judge(h, 0, (5.0, None, 0))
    judge(h, 500, (5.0, "disconnect", 500))
    judge(h, 1200, (5.0, None, 1200))     # same value after recovery: a fresh reference, good
    assert h.healthy == [True]
    judge(h, 2100, (5.0, None, 2100))
    assert h.healthy == [True]
    judge(h, 2201, (5.0, None, 2201))
    assert h.quality == [Q_STUCK]


def test_stuck_keeps_its_reference_while_stuck():
    h = SensorHealth(ONE)
    judge(h, 0, (5.0, None, 0))
    judge(h, 1001, (5.0, None, 1001))
    assert h.quality == [Q_STUCK]
    judge(h, 1100, (5.05, None, 1100))   # still within one count of the reference
    assert h.quality == [Q_STUCK]


def test_redundant_sensor_is_stuck_only_while_a_healthy_peer_moves():
    h = SensorHealth(THREE, ((0, 1, 2),))
    judge(h, 0, (1.0, None, 0), (1.0, None, 0), (1.0, None, 0))
    judge(h, 2000, (1.0, None, 2000), (1.0, None, 2000), (1.0, None, 2000))
    assert h.healthy == [True, True, True]      # nobody moved: a steady cell, not a frozen sensor
    judge(h, 2100, (1.0, None, 2100), (1.5, None, 2100), (1.0, None, 2100))
    # c is judged after b moved in this scan, a before: a follows one scan later.
    assert h.quality == [GOOD, GOOD, Q_STUCK] and h.n_bad == 1
    judge(h, 2200, (1.0, None, 2200), (1.5, None, 2200), (1.0, None, 2200))
    assert h.quality == [Q_STUCK, GOOD, Q_STUCK] and h.n_bad == 2


def test_an_unhealthy_peer_moving_does_not_make_a_sensor_stuck():
    h = SensorHealth(THREE, ((0, 1, 2),))
    judge(h, 0, (1.0, None, 0), (1.0, None, 0), (1.0, None, 0))
    judge(h, 500, (1.0, None, 500), (1.5, None, 500), (1.0, None, 500))      # b moves...
    judge(h, 600, (1.0, None, 600), (1.5, "crc", 600), (1.0, None, 600))     # ...then fails
    judge(h, 1100, (1.0, None, 1100), (1.5, "crc", 1100), (1.0, None, 1100))
    assert h.quality == [GOOD, "fault:crc", GOOD]   # a failed peer's movement proves nothing
    control = SensorHealth(THREE, ((0, 1, 2),))
    judge(control, 0, (1.0, None, 0), (1.0, None, 0), (1.0, None, 0))
    judge(control, 500, (1.0, None, 500), (1.5, None, 500), (1.0, None, 500))
    judge(control, 1100, (1.0, None, 1100), (1.5, None, 1100), (1.0, None, 1100))
    assert control.quality == [Q_STUCK, GOOD, Q_STUCK]


def test_peer_that_moved_before_does_not_count():
    h = SensorHealth(THREE, ((0, 1, 2),))
    judge(h, 0, (1.0, None, 0), (1.0, None, 0), (1.0, None, 0))
    judge(h, 100, (1.5, None, 100), (1.0, None, 100), (1.0, None, 100))   # a moves at 100
    judge(h, 1200, (1.5, None, 1200), (1.0, None, 1200), (1.0, None, 1200))
    # b and c have not moved for 1200 ms and a moved after their reference (0): stuck.
    assert h.quality == [GOOD, Q_STUCK, Q_STUCK]
    judge(h, 1300, (1.5, None, 1300), (1.0, None, 1300), (1.0, None, 1300))
    # a has not moved since 100, its peers' last movement (0) is older: a stays good.
    assert h.quality[0] == GOOD


def test_rise_detector_rate_over_the_window():
    d = RiseDetector(10000, 1.0)          # 10 s window, per second, 10 slots of 1 s
    assert d.period == 1000 and d.window_s == 10.0 and d.window_ms == 10000 and d.per_ms == 1000.0
    assert d.update(0, 100.0, True) == 0.0
    for t in range(100, 10001, 100):
        rate = d.update(t, 100.0 + t / 100.0, True)   # +1 per 100 ms = 10 per s
    assert abs(rate - 10.0) < 1.01
    assert d.rate == rate


def test_rise_detector_per_minute_scale():
    d = RiseDetector(30000, 60.0)
    assert d.window_s == 30.0 and d.per_ms == 60000.0
    for t in range(0, 45001, 100):
        rate = d.update(t, 20.0 + t / 6000.0, True)   # 10 K per minute
    # Slot means of a steady ramp lag alike, so a full window reads the ramp exactly.
    assert abs(rate - 10.0) < 1e-9


def test_rise_detector_unhealthy_resets_and_restarts_flat():
    d = RiseDetector(10000, 1.0)
    for t in range(0, 5001, 100):
        d.update(t, t / 10.0, True)
    assert d.rate > 0
    assert d.update(5100, 500.0, False) == 0.0 and not d.valid and d.rate == 0.0
    assert d.update(5200, 900.0, True) == 0.0 and d.valid and d.filled == 0 and d.next_t == 6200
    for t in range(5300, 7201, 100):
        assert d.update(t, 900.0, True) == 0.0   # one slot is no rate; then flat is zero
    assert d.filled == 2


def test_rise_detector_slots_advance_on_time_and_skip_after_a_gap():
    d = RiseDetector(1000, 1.0)          # 100 ms slots, 11 slot means span 10 periods
    assert len(d.ring) == 11
    d.update(0, 0.0, True)
    assert d.next_t == 100 and d.idx == 0
    d.update(99, 1.0, True)
    assert d.idx == 0
    d.update(100, 2.0, True)
    assert d.idx == 1 and d.next_t == 200 and d.ring[0] == 1.0   # the mean of 0, 1 and 2
    d.update(950, 2.0, True)             # long gap: no catching up slot by slot
    assert d.idx == 2 and d.next_t == 1050
    d.update(1049, 2.0, True)
    assert d.idx == 2
    for k in range(9):
        d.update(1050 + 100 * k, 3.0, True)
    assert d.idx == 0                    # the ring wraps around its slots


def test_rise_detector_rate_uses_the_oldest_slot():
    d = RiseDetector(1000, 1.0, slots=4)  # 250 ms slots, 5 slot means
    assert d.period == 250 and d.per_ms == 1000.0
    d.update(0, 0.0, True)
    assert d.update(250, 1.0, True) == 0.0   # one slot mean (0.5): no rate yet
    assert d.update(500, 2.0, True) == 1.5   # 2.0 - 0.5, over the whole window
    d.update(750, 3.0, True)
    d.update(1000, 4.0, True)
    # Full: newest 5.0 (at 1250) - oldest 0.5 (mean time 125), over the real 1125 ms: 4 per s.
    assert d.update(1250, 5.0, True) == 4.0
    assert d.update(1500, 6.0, True) == 4.0  # the oldest is now 2.0 at 500: 4 per s, the ramp's rate


def test_rise_detector_divides_by_the_real_span_at_long_scan_periods():
    # Hazard (issue 9, item 9): slots stretch to the scan period; dividing by the nominal window
    # read an 11 Pa/s ramp as 110 Pa/s at a 1 s scan with a 1 s window.
    for scan_ms in (100, 250, 1000, 3000):
        d = RiseDetector(1000, 1.0)
        rate = 0.0
        for t in range(0, 60001, scan_ms):
            rate = d.update(t, -80.0 + 11.0 * t / 1000.0, True)
        assert abs(rate - 11.0) < 1e-6, (scan_ms, rate)


def test_rise_detector_young_window_never_overstates():
    d = RiseDetector(10000, 1.0)
    for t in range(0, 3001, 100):
        rate = d.update(t, 2.0 * t / 1000.0, True)   # 2 per s, only 3 s of data
    assert 0.0 < rate <= 2.0 * 3.0 / 10.0 + 1e-9     # the rise so far over the whole window


def test_rise_detector_short_window_period_is_at_least_one_ms():
    d = RiseDetector(5, 1.0)
    assert d.period == 1


def test_stale_reading_at_the_range_bounds_is_stale_not_out_of_range():
    h = SensorHealth(ONE)
    judge(h, 1000, (0.0, None, 0))       # exactly the low bound, old
    assert h.quality == [Q_STALE]
    judge(h, 1000, (10.0, None, 0))      # exactly the high bound, old
    assert h.quality == [Q_STALE]


# name, low, high, stale_ms, stuck_ms, resolution: a resolution that floats represent exactly
HALF = (("y", 0.0, 10.0, 300, 1000, 0.5),)


def test_a_change_of_exactly_one_count_is_not_movement():
    for step in (0.5, -0.5):
        h = SensorHealth(HALF)
        judge(h, 0, (2.0, None, 0))
        judge(h, 600, (2.0 + step, None, 600))     # exactly one count: not movement
        judge(h, 1001, (2.0 + step, None, 1001))
        assert h.quality == [Q_STUCK], step


def test_rise_detector_keeps_its_slot_grid_when_scans_are_late():
    d = RiseDetector(1000, 1.0)          # 100 ms slots
    d.update(0, 0.0, True)
    d.update(150, 1.0, True)             # late scan: the next slot is still at 200, not 250
    assert d.next_t == 200 and d.idx == 1
    d.update(200, 1.0, True)
    assert d.next_t == 300 and d.idx == 2


def test_rise_detector_gap_of_exactly_two_slots_realigns():
    d = RiseDetector(1000, 1.0)
    d.update(0, 0.0, True)
    d.update(200, 1.0, True)             # one slot taken, and the next slot time already reached
    assert d.next_t == 300 and d.idx == 1


def test_rise_detector_period_is_a_whole_number_of_ms():
    assert RiseDetector(25, 1.0).period == 2
    assert RiseDetector(10005, 1.0).period == 1000
