"""Sensor health and rate of rise. MicroPython-compatible: no typing, dataclasses or enum.

Why its own module: "unhealthy counts as the worst case" starts here. A reading is unhealthy
when the backend reports a fault, the value is NaN or outside its range, it is older than its
staleness limit, or it has not moved beyond one count for its stuck time (for redundant sensors:
while a peer moved), or, for redundant sensors, it has not moved beyond one count for the frozen
time even though no peer moved either: the three O2 transmitters share an ADC, a bus and a supply,
and a common-cause freeze must not pass as "all three agree". The noise floor this assumes: a
live transmitter moves by more than one count (`resolution`) within the frozen time.
The verdict is a short string so it can travel to the event log unchanged.

Time: `now` is the core's time (ms), which never decreases (`Core.step` makes it from the raw
clock); every timer here subtracts only such times. A reading's `t_ms` is on the raw clock, which
may wrap or step back: its age is taken once, when the sample is first seen (`ticks_diff`), and
counts on the core's time from then. A sample stamped after the raw clock's now (taken before the
clock stepped back) counts as new when first seen, then ages like any other: never fresh forever,
never stale at once.
"""

TICKS_PERIOD = 1 << 30             # time.ticks_ms() wraps here on most MicroPython ports
TICKS_HALF = TICKS_PERIOD >> 1


def ticks_diff(a, b):
    """a - b on a raw clock that wraps at 2**30 ms, signed like MicroPython's time.ticks_diff.

    In [-2**29, 2**29): exact for any clock whose period is a multiple of 2**30 (a CPython int
    never wraps) while the true difference stays inside that range.
    """
    return ((a - b + TICKS_HALF) % TICKS_PERIOD) - TICKS_HALF

GOOD = "good"
Q_NAN = "fault:nan"
Q_RANGE = "fault:out_of_range"
Q_STALE = "fault:stale"
Q_STUCK = "fault:stuck"
Q_FROZEN = "fault:frozen"
NEVER_MS = 1 << 62                 # a frozen time that never elapses (sensors without peers)


class SensorHealth:
    """Health of every sensor, kept in flat lists indexed like the sensor tuple."""

    def __init__(self, sensors, peer_groups=(), frozen_ms=NEVER_MS):
        # sensors: tuple of (name, low, high, stale_ms, stuck_ms, resolution)
        n = len(sensors)
        self.low = [float(s[1]) for s in sensors]
        self.high = [float(s[2]) for s in sensors]
        self.stale_ms = [int(s[3]) for s in sensors]
        self.stuck_ms = [int(s[4]) for s in sensors]
        self.res = [float(s[5]) for s in sensors]
        self.value = [0.0] * n
        self.quality = [GOOD] * n
        self.healthy = [True] * n          # judged on the first update; events only on change
        self.ref_v = [None] * n          # value at the last movement beyond one count
        self.ref_t = [0] * n             # time of that movement
        self.stamp = [None] * n          # t_ms (raw clock) of the sample last seen
        self.born = [0] * n              # the core's time of that sample: its age is now - born
        # peers[i]: indices of the sensors voted with i (stuck needs a moving peer), or ()
        peers = [()] * n
        for group in peer_groups:
            for i in group:
                peers[i] = tuple(j for j in group if j != i)
        self.peers = peers
        # frozen[i]: no movement this long is a fault even with every peer frozen too (common cause)
        self.frozen_ms = [int(frozen_ms) if peers[i] else NEVER_MS for i in range(n)]
        self.n_bad = 0                   # how many sensors are unhealthy now
        self.fault_cache = {}            # backend fault code -> "fault:<code>", built once

    def update(self, now, readings, changed, raw=None):
        """Judge every reading; append the index of each sensor whose quality changed.

        now: the core's time (ms, never decreasing); raw: the raw clock the readings' t_ms are on
        (default: now, for a caller whose clock neither wraps nor steps back).
        """
        if raw is None:
            raw = now
        stamp = self.stamp
        born = self.born
        quality = self.quality
        healthy = self.healthy
        ref_v = self.ref_v
        ref_t = self.ref_t
        stuck_ms = self.stuck_ms
        frozen_ms = self.frozen_ms
        value = self.value
        i = 0
        for r, lo, hi, stale, res in zip(readings, self.low, self.high, self.stale_ms, self.res):
            v = r[0]
            value[i] = v
            t = r[2]
            if t != stamp[i]:
                # A new sample: its age now, on the raw clock; from then on it ages on ours.
                stamp[i] = t
                if t == raw:
                    born[i] = now
                else:
                    age = ticks_diff(raw, t)
                    born[i] = now - age if age > 0 else now   # "from the future": counts from now
            if r[1] is None and lo <= v <= hi and now - born[i] <= stale:   # NaN fails lo <= v
                rv = ref_v[i]
                if rv is None or v - rv > res or rv - v > res:
                    ref_v[i] = v
                    ref_t[i] = now
                    q = GOOD
                elif now - ref_t[i] > stuck_ms[i] and self._peer_moved(i):
                    q = Q_STUCK  # frozen output: a dead transmitter often holds its last value
                elif now - ref_t[i] > frozen_ms[i]:
                    q = Q_FROZEN  # all frozen together: a shared ADC, bus or supply died
                else:
                    q = GOOD
            else:
                q = self._fault(r, lo, hi)
            if q is not quality[i]:
                quality[i] = q
                if healthy[i] != (q is GOOD):
                    self.n_bad += 1 if healthy[i] else -1
                healthy[i] = q is GOOD
                if q is not GOOD and q is not Q_STUCK and q is not Q_FROZEN:
                    ref_v[i] = None  # judge movement afresh once it recovers
                changed.append(i)
            i += 1

    def _fault(self, r, lo, hi):
        """Why an unhealthy reading is unhealthy; reached only when a check in update() failed."""
        fault = r[1]
        v = r[0]
        if fault is not None:
            # The device said so: disconnect, crc, loop_low/high (NE43), open_circuit...
            q = self.fault_cache.get(fault)
            if q is None:
                q = "fault:" + fault
                self.fault_cache[fault] = q
            return q
        if v != v:
            return Q_NAN  # NaN compares unequal to itself
        if v < lo or v > hi:
            return Q_RANGE
        return Q_STALE  # the device stopped answering fresh data

    def _peer_moved(self, i):
        peers = self.peers[i]
        if not peers:
            return True  # a single sensor must move by itself
        t = self.ref_t[i]
        for j in peers:
            if self.healthy[j] and self.ref_t[j] > t:
                return True
        return False


class RiseDetector:
    """Rate of rise over a window, from the means of equal time slots.

    Why slot means: a rate from two single samples multiplies the sensor noise (a thermocouple's
    0.2 K of noise over 30 s already reads as 0.5 K/min); averaging each slot first keeps the rate
    honest without allocating per scan. The rate is the newest complete slot's mean minus the
    oldest's, divided by the real time between the two slots' mean sample times: at a long scan
    period a slot stretches to the scan, and dividing by the nominal window would overstate the
    rate. It is refreshed once per slot (window / 10). Until the window has filled, the rise so far
    is divided by the whole window (a young rate never overstates).

    Sample times are kept as an integer base per slot plus a small float offset: a float sum of
    absolute times would lose the milliseconds after days of uptime (sooner with the single
    precision floats of many MicroPython boards).
    """

    def __init__(self, window_ms, per_s, slots=10):
        self.slots = slots + 1                  # slots + 1 means span exactly `slots` periods
        self.period = max(1, window_ms // slots)
        self.window_ms = self.period * slots
        self.window_s = self.window_ms / 1000.0
        self.per_ms = per_s * 1000.0            # a rise per ms, in units per `per_s`
        self.ring = [0.0] * self.slots
        self.tbase = [0] * self.slots           # time of each slot's first sample, ms
        self.tring = [0.0] * self.slots         # mean sample time of each slot after its tbase, ms
        self.base = 0                           # time of the current slot's first sample
        self.idx = 0
        self.filled = 0
        self.next_t = 0
        self.acc = 0.0
        self.tacc = 0.0
        self.count = 0
        self.valid = False
        self.rate = 0.0

    def update(self, now, v, healthy):
        if not healthy:
            # No rate from bad data; the sensor's own fault trips where it guards.
            self.valid = False
            self.rate = 0.0
            return 0.0
        if not self.valid:
            self.valid = True
            self.filled = 0
            self.acc = 0.0
            self.tacc = 0.0
            self.count = 0
            self.next_t = now + self.period
        if not self.count:
            self.base = now
        self.acc += v
        self.tacc += now - self.base
        self.count += 1
        if now >= self.next_t:
            ring = self.ring
            tring = self.tring
            tbase = self.tbase
            idx = self.idx
            ring[idx] = self.acc / self.count
            tbase[idx] = self.base
            tring[idx] = self.tacc / self.count
            idx = (idx + 1) % self.slots
            self.idx = idx
            if self.filled < self.slots:
                self.filled += 1
            self.acc = 0.0
            self.tacc = 0.0
            self.count = 0
            self.next_t += self.period
            if now >= self.next_t:   # after a long gap, do not try to catch up slot by slot
                self.next_t = now + self.period
            if self.filled >= 2:
                # ring[idx] is the oldest slot once full; the newest is just behind idx.
                old = idx if self.filled == self.slots else (idx - self.filled) % self.slots
                span = (tbase[idx - 1] - tbase[old]) + (tring[idx - 1] - tring[old])
                if self.filled < self.slots and span < self.window_ms:
                    span = self.window_ms
                if span > 0:
                    self.rate = (ring[idx - 1] - ring[old]) * self.per_ms / span
        return self.rate
