"""2oo3 voting of the three O2 sensors. MicroPython-compatible: no typing, dataclasses or enum.

Why its own module: the vote is where common-cause and sequential failures hide. Three rules
from fault testing live here:
- a sensor rejoins the vote only after it has been healthy for `recovery_ms`, so two sensors
  failing in turn count as two sensors out of the vote (not as a healthy pair);
- a sensor off its peers for `deviation_hold_ms` is reported as held, and one healthy sensor at
  or above the trip on its own is reported too: two sensors failing low must not hide the third's
  rise (the core turns both into a controlled stop while crushing);
- an unhealthy sensor votes "high" (the worst case for an O2 limit).

Time: `now` is the core's time (ms), which never decreases whatever the raw clock does (wraps,
backward steps: `Core.step` absorbs them), so the recovery and deviation timers subtract it plainly.
"""

_NAN = float("nan")


class O2Vote:
    """The vote of three sensors (indices into the sensor tuple), judged once per scan."""

    def __init__(self, idx, trip, deviation, deviation_hold_ms, recovery_ms, start_ms=0):
        self.idx = tuple(idx)
        self.trip = trip
        self.deviation = deviation
        self.deviation_hold_ms = deviation_hold_ms
        self.recovery_ms = recovery_ms
        # A sensor healthy from power-up is in the vote at once; the BOOT self-test judges it.
        self.healthy_since = [start_ms - recovery_ms] * 3
        self.was_ok = [True, True, True]
        self.in_vote = [True, True, True]
        self.all_in = True       # all three in the vote: the usual scan skips the recovery loop
        self.voted = _NAN        # median of three, the higher of two, NaN with fewer
        self.bad = 0             # sensors out of the vote
        self.high = 0            # sensors high or out of the vote (2oo3: two trip)
        self.deviating = False   # a sensor is off its peers by more than `deviation` now
        self.dev_since = None    # since when, while it lasts
        self.one_high = False    # one in-vote sensor >= trip, the vote not (yet) tripping

    def update(self, now, val, ok):
        """Judge the vote. A recovery counts from the time it happens, in BOOT too (domain.md has
        no exception); a sensor healthy from power-up is in the vote at once."""
        in_vote = self.in_vote
        a, b, c = self.idx
        if not (self.all_in and ok[a] and ok[b] and ok[c]):
            since = self.healthy_since
            was = self.was_ok
            rec = self.recovery_ms
            k = 0
            for i in self.idx:
                if ok[i]:
                    if not was[k]:
                        # Back from a fault: out of the vote until healthy for the recovery time.
                        since[k] = now
                        was[k] = True
                    in_vote[k] = now - since[k] >= rec
                else:
                    was[k] = False
                    in_vote[k] = False
                k += 1
            self.all_in = in_vote[0] and in_vote[1] and in_vote[2]
        va, vb, vc = val[a], val[b], val[c]
        oka, okb, okc = in_vote
        bad = (not oka) + (not okb) + (not okc)
        trip = self.trip
        dev = self.deviation
        deviating = False
        if bad == 0:
            voted = max(min(va, vb), min(max(va, vb), vc))   # median of three
            if (abs(va - (vb + vc) / 2) > dev or abs(vb - (va + vc) / 2) > dev
                    or abs(vc - (va + vb) / 2) > dev):
                deviating = True
            n_high = (va >= trip) + (vb >= trip) + (vc >= trip)
        elif bad == 1:
            # 1oo2 on the two left: the higher one counts (worst case).
            if not oka:
                x, y = vb, vc
            elif not okb:
                x, y = va, vc
            else:
                x, y = va, vb
            voted = x if x > y else y
            deviating = abs(x - y) > dev
            n_high = (x >= trip) + (y >= trip)
        else:
            voted = _NAN
            n_high = (oka and va >= trip) + (okb and vb >= trip) + (okc and vc >= trip)
        self.voted = voted
        self.bad = bad
        self.high = bad + n_high
        self.one_high = n_high >= 1
        self.deviating = deviating
        if deviating:
            if self.dev_since is None:
                self.dev_since = now
        else:
            self.dev_since = None

    def deviation_held(self, now):
        return self.dev_since is not None and now - self.dev_since >= self.deviation_hold_ms
