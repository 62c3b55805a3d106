"""Pacing for the plant link: reconnect backoff with jitter, and log lines that summarise floods.

Pure: no MQTT, no threads; the clock and the random source are passed in (or default to the
standard ones), so tests drive them.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable


class Backoff:
    """Reconnect delays: doubling from `min_s` up to `max_s`, with "equal jitter".

    Each delay is drawn from [d/2, d] (never below `min_s`), where d doubles per failed attempt
    and is capped at `max_s`: a broker that comes back is reached within `max_s`, and a fleet of
    controllers that lost the same broker does not reconnect in lock step. Fractions of a second
    are kept as given.
    """

    def __init__(self, min_s: float, max_s: float, rand: Callable[[], float] = random.random):
        self.min_s = float(min_s)
        self.max_s = float(max(min_s, max_s))
        self.rand = rand
        self.attempt = 0

    def next(self) -> float:
        base = min(self.max_s, self.min_s * 2.0 ** min(self.attempt, 32))
        self.attempt += 1
        return max(self.min_s, base * (0.5 + 0.5 * self.rand()))

    def reset(self) -> None:
        self.attempt = 0


class LogThrottle:
    """Say it the first time at once, then at most once per `every_s`, with how often it happened.

    `hit(n)` counts n occurrences and returns the count to report now (None: stay quiet);
    `flush()` returns what is still unreported once `every_s` has passed since the last report.
    """

    def __init__(self, every_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.every_s = every_s
        self.clock = clock
        self.unreported = 0
        self.total = 0
        self.last: float | None = None

    def hit(self, n: int = 1) -> int | None:
        self.unreported += n
        self.total += n
        return self.flush()

    def flush(self) -> int | None:
        if not self.unreported:
            return None
        now = self.clock()
        if self.last is not None and now - self.last < self.every_s:
            return None
        self.last = now
        n, self.unreported = self.unreported, 0
        return n
