"""I2C bus lock-up: detection, the nine-clock bus clear, and the sensor supply cycle.

Why: a slave interrupted in the middle of a byte it was sending (a reset or glitch of the master,
noise on SCL) keeps SDA low and waits for SCL clocks that never come. A controller that sees SDA
low does not start a transfer, so every chip on that bus fails, for ever. UM10204 (I2C-bus
specification, section 3.1.16 "Bus clear"): the controller sends nine clock pulses, the device
holding SDA releases it within them, and a STOP puts every device back to idle; if it does not, a
hardware reset or a power cycle. User space cannot make the kernel's adapter do that (only some
adapter drivers run a bus recovery, on their own errors), so we do it through two GPIOs wired onto
the bus (docs/hardware.md, "Bus recovery wiring"): each pulls its line low as an output and lets it
go as an input, the bus pull-ups making the high (open drain by hand).

Detection, once per scan (BusGuard.watch): every chip on the bus failed its last attempt (each
after its immediate retry), at least one of them in this scan. That is a "lock-up": counted, the
bus is reported stuck (`HardwareCell.buses_stuck()`) until a chip on it answers again. Recovery
runs at most once per RECOVERY_INTERVAL_MS per bus: the nine clocks and STOP if the recovery pins
are wired, and if that leaves SDA or SCL low (or no pins are wired) the supply cut if one is wired,
never blocking a scan longer than the clocks take (a power cycle spans scans).

Names and limits (docs/hardware.md lists them):
- CLOCKS = 9 pulses (UM10204 3.1.16), stopping early once SDA reads high.
- HALF_PERIOD_US = 5 µs busy wait for each half clock and each STOP step: at least UM10204's
  Standard-mode tLOW 4.7 µs, tHIGH 4.0 µs and tSU;STO 4.0 µs, so at most 100 kHz whatever the GPIO
  library's own speed.
- RECOVERY_INTERVAL_MS = 5000 between two recoveries of one bus.
- SUPPLY_SETTLE_MS = 100 after the supply returns before its chips are tried again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

CLOCKS = 9
HALF_PERIOD_US = 5
RECOVERY_INTERVAL_MS = 5000
SUPPLY_SETTLE_MS = 100


def hold(us: int = HALF_PERIOD_US) -> None:
    """Busy-wait `us` microseconds (time.sleep cannot wait this little)."""
    end = time.perf_counter_ns() + us * 1000
    while time.perf_counter_ns() < end:
        pass


class BusGuard:
    """One I2C bus: lock-up detection, its counters, and the recovery its wiring allows.

    wiring: {"recovery_scl_pin", "recovery_sda_pin", "supply_cut_pin": GPIO or None,
             "supply_cut_active_low": bool, "supply_off_ms": int} (config [i2c.<bus>]), or None.
    pin: opens a GPIO by number through the cell's (hardened) pin factory.
    """

    def __init__(self, bus: int, wiring: dict[str, Any] | None, pin: Callable[[int, str], Any],
                 *, wait: Callable[[], None] = hold):
        wiring = wiring or {}
        self.bus = bus
        self.wait = wait
        self.counts = {"lockups": 0, "recoveries": 0, "cleared": 0, "power_cycles": 0}
        self.stuck = False
        self.last = ""                 # what the last recovery found, for the probe and the log
        self._next_ms: int | None = None
        self._supply_back_ms: int | None = None
        self.scl = self.sda = self.supply = None
        where = f"i2c.{bus}"
        if wiring.get("recovery_scl_pin") is not None:
            self.scl = pin(wiring["recovery_scl_pin"], f"{where}.recovery_scl_pin")
            self.sda = pin(wiring["recovery_sda_pin"], f"{where}.recovery_sda_pin")
            for p in (self.scl, self.sda):
                self._release(p)       # never drive the bus while it works
        if wiring.get("supply_cut_pin") is not None:
            self.supply = pin(wiring["supply_cut_pin"], f"{where}.supply_cut_pin")
            self.cut_level = not wiring.get("supply_cut_active_low", False)
            self.supply.output_with_state(not self.cut_level)   # supply on, in one request
        self.supply_off_ms = int(wiring.get("supply_off_ms", 500))

    @property
    def wired(self) -> bool:
        return self.scl is not None or self.supply is not None

    # -- the lines -------------------------------------------------------------------------------
    @staticmethod
    def _release(pin: Any) -> None:
        pin.input_with_pull("floating")        # the bus's pull-ups make the high

    @staticmethod
    def _low(pin: Any) -> None:
        pin.output_with_state(False)

    @staticmethod
    def _high(pin: Any) -> bool:
        return bool(pin.state)

    def lines(self) -> tuple[bool, bool] | None:
        """(SCL high, SDA high) as the recovery pins read them; None without recovery pins."""
        if self.scl is None:
            return None
        return self._high(self.scl), self._high(self.sda)

    def clear(self) -> bool:
        """UM10204 3.1.16: up to nine SCL pulses until SDA reads high, then a STOP. True when both
        lines are high afterwards. Never raises (a failed GPIO call is a failed recovery)."""
        scl, sda, wait = self.scl, self.sda, self.wait
        try:
            if not self._high(scl):
                self.last = "SCL held low: clocks cannot help"
                return False
            pulses = 0
            while pulses < CLOCKS and not self._high(sda):
                self._low(scl)
                wait()
                self._release(scl)
                wait()
                pulses += 1
            # STOP: SDA goes low while SCL is low, SCL goes high, then SDA goes high.
            self._low(scl)
            wait()
            self._low(sda)
            wait()
            self._release(scl)
            wait()
            self._release(sda)
            wait()
            ok = self._high(scl) and self._high(sda)
            self.last = f"{pulses} clock pulse(s) and a STOP: " + ("bus free" if ok else "SDA still low")
            return ok
        except Exception as exc:
            self.last = f"recovery pins failed: {type(exc).__name__}: {exc}"
            for p in (scl, sda):
                try:
                    self._release(p)
                except Exception:
                    pass
            return False

    # -- once per scan ---------------------------------------------------------------------------
    def watch(self, devices: Sequence[Any], now_ms: int) -> None:
        """After every chip of the bus was polled: detect a lock-up, recover, bring the supply back."""
        if self._supply_back_ms is not None:
            if now_ms < self._supply_back_ms:
                return
            self._supply_back_ms = None
            try:
                self.supply.state = not self.cut_level
            except Exception as exc:
                self.last = f"supply pin failed: {type(exc).__name__}: {exc}"
            for dev in devices:                  # tried again once the chips have started
                dev.retry_at = now_ms + SUPPLY_SETTLE_MS
            return
        if not devices or not all(dev.failing for dev in devices):
            self.stuck = False
            return
        if not any(dev.failed_at == now_ms for dev in devices):
            return                               # no new evidence this scan
        if not self.stuck:
            self.stuck = True
            self.counts["lockups"] += 1
        if not self.wired or (self._next_ms is not None and now_ms < self._next_ms):
            return
        self._next_ms = now_ms + RECOVERY_INTERVAL_MS
        self.counts["recoveries"] += 1
        if self.scl is not None and self.clear():
            self.counts["cleared"] += 1
            for dev in devices:
                dev.retry_at = now_ms            # tried again at the next scan
            return
        if self.supply is not None:
            try:
                self.supply.state = self.cut_level
            except Exception as exc:
                self.last = f"supply pin failed: {type(exc).__name__}: {exc}"
                return
            self.counts["power_cycles"] += 1
            self.last = (self.last + "; " if self.last else "") + f"supply cut for {self.supply_off_ms} ms"
            self._supply_back_ms = now_ms + self.supply_off_ms

    def close(self) -> None:
        """Leave the bus alone and the supply on. Never raises."""
        for p in (self.scl, self.sda):
            if p is not None:
                try:
                    self._release(p)
                except Exception:
                    pass
        if self.supply is not None:
            try:
                self.supply.state = not self.cut_level
            except Exception:
                pass


def probe_recovery(cell: Any, out: Any) -> bool:
    """`crushcell probe`: each bus's recovery wiring at rest (SCL and SDA must read high through
    the recovery pins while the bus works) and its lock-up counters. A line reading low is a `??`
    warning, not a failed probe: without a working recovery a lock-up still faults every sensor of
    the bus (the worst case, so the cell trips or cannot start): availability, not safety. False
    only when the recovery pins cannot be read at all."""
    guards = getattr(cell, "guards", {})
    if not guards:
        return True
    print("I2C bus recovery wiring ([i2c.<bus>], nine clocks and a STOP on a lock-up)", file=out)
    ok = True
    for bus, guard in sorted(guards.items()):
        counts = ", ".join(f"{k} {v}" for k, v in guard.counts.items())
        if guard.scl is None:
            how = "supply cut only" if guard.supply is not None else "a lock-up is detected, not cleared"
            print(f"  ?? bus {bus}: no recovery pins ({how})  [{counts}]", file=out)
            continue
        try:
            scl, sda = guard.lines()
        except Exception as exc:
            print(f"  !! bus {bus}: recovery pins unreadable: {type(exc).__name__}: {exc}", file=out)
            ok = False
            continue
        if scl and sda:
            print(f"     bus {bus}: SCL high, SDA high through the recovery pins  [{counts}]", file=out)
        else:
            low = " and ".join(n for n, high in (("SCL", scl), ("SDA", sda)) if not high)
            print(f"  ?? bus {bus}: {low} read low through the recovery pins: a recovery pin not wired "
                  f"to its line, no pull-up, or the bus held low; a lock-up could not be cleared  "
                  f"[{counts}]", file=out)
    return ok
