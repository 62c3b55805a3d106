"""Output feedback: time in discrepancy integrated over a sliding window. MicroPython-compatible.

Why integrated: a timer that restarts on every agreeing scan is defeated by chatter (feedback
toggling at 5 Hz never disagrees for 2 s in a row) and by intermittent drop-outs (off 1.9 s of
every 4 s). Summing the time in discrepancy over a window catches both, and a steady discrepancy
(a welded contactor) still trips after the same time as before.

Time: `now` is the core's time (ms), which never decreases whatever the raw clock does (wraps,
backward steps: `Core.step` absorbs them); a time that went back would empty the window.
"""

SLOTS = 20   # the window in 20 slots: the sum is exact to one slot (window / 20)


class DiscrepancyWindow:
    """Total time (ms) a condition held within the last `window_ms`, from per-scan samples."""

    def __init__(self, window_ms, start_ms=0):
        self.slot_ms = max(1, int(window_ms) // SLOTS)
        self.bins = [0] * SLOTS
        self.total = 0
        self.slot = start_ms // self.slot_ms   # absolute number of the current slot
        self.last = start_ms
        self.prev = False                      # the condition at the last sample

    def update(self, now, active):
        """Add the time since the last sample if the condition held then; return the window's total.

        Sample and hold: the interval up to this scan counts with the value seen at its start, so
        a discrepancy held for exactly the timeout reaches it, and every sample counts.
        """
        slot = now // self.slot_ms
        bins = self.bins
        if slot != self.slot:
            # Empty the slots that left the window (all of them after a long gap).
            n = slot - self.slot
            if n >= SLOTS or n < 0:
                for k in range(SLOTS):
                    bins[k] = 0
                self.total = 0
            else:
                for s in range(self.slot + 1, slot + 1):
                    k = s % SLOTS
                    self.total -= bins[k]
                    bins[k] = 0
            self.slot = slot
        if self.prev:
            dt = now - self.last
            if dt > 0:
                bins[slot % SLOTS] += dt
                self.total += dt
        self.prev = active
        self.last = now
        return self.total

