"""What every I2C sensor chip backend shares: latest readings, fault counting, retry after failure.

Why one base: the rules "a fault is a value", "a device absent at boot is retried, not a crash" and
"every fault is counted per sensor" must be identical for every chip. No vendor imports here.
"""

from __future__ import annotations

import errno
import math
from collections.abc import Callable
from typing import Any

from hal.base import FAULT_CRC, FAULT_DEVICE, FAULT_DISCONNECT, FAULT_TIMEOUT, Reading
from hal.hardware.plan import DevicePlan

# Until a sensor has its first sample: no value, no fault, sample time 0. The core marks it
# unhealthy (NaN, and stale once its clock passes stale_s), which BOOT's self-test waits out.
NO_SAMPLE = Reading(math.nan, None, 0)


class DeviceFault(Exception):
    """The chip answered, but with something it should never say (wrong ID, lost configuration)."""


class CrcError(Exception):
    """An answer failed its checksum."""


class ConversionTimeout(Exception):
    """A conversion did not finish in time."""


class BusOpenError(OSError):
    """The bus itself could not be opened (no /dev/i2c-N, Blinka cannot run here): not a chip's fault."""


def retry_now(exc: BaseException) -> bool:
    """Worth one immediate retry in the same scan: a transfer that failed fast (NACK, EIO). Never a
    timeout: that transfer already blocked the scan for the adapter's timeout (1 s by default)."""
    return isinstance(exc, OSError) and not isinstance(exc, BusOpenError) and exc.errno != errno.ETIMEDOUT


def fault_of(exc: BaseException) -> str:
    """The Reading fault code for an exception raised by a bus transaction or driver."""
    if isinstance(exc, CrcError):
        return FAULT_CRC
    if isinstance(exc, ConversionTimeout | TimeoutError):
        return FAULT_TIMEOUT
    if isinstance(exc, OSError):
        # EREMOTEIO (121: NACK), EIO (5), ENXIO, ENODEV...: the device did not answer.
        return FAULT_TIMEOUT if exc.errno == errno.ETIMEDOUT else FAULT_DISCONNECT
    return FAULT_DEVICE   # DeviceFault, and drivers' RuntimeError/ValueError (wrong chip ID)


# What a chip backend may raise from _init/_step and still be "hardware trouble" (a fault value).
# Anything else is a programming error and propagates.
HARDWARE_ERRORS = (OSError, DeviceFault, CrcError, ConversionTimeout, RuntimeError, ValueError)


class SensorDevice:
    """One chip serving one or more sensors. Subclasses implement `_init` and `_step`."""

    def __init__(self, plan: DevicePlan, bus_source: Callable[[], Any], *, retry_ms: int = 1000):
        self.plan = plan
        self._bus_source = bus_source   # opens (or returns) the bus object; may raise OSError
        self.retry_ms = retry_ms
        self.readings: dict[str, Reading] = {name: NO_SAMPLE for name in plan.sensors}
        self.raw: dict[str, dict[str, Any]] = {name: {} for name in plan.sensors}
        self.fault_counts: dict[str, int] = {name: 0 for name in plan.sensors}
        self.ready = False
        self.retry_at: int | None = None   # None: try at the next poll
        self.last_error = ""
        # Bus lock-up detection (busrecovery.BusGuard): when the chip last failed, and when it
        # last gave a real answer (a value, or a fault it reported itself).
        self.failed_at: int | None = None
        self.answered_at: int | None = None
        self._now = 0                      # the poll in progress
        self.timed_out = False             # the last failure was a transfer timeout (ETIMEDOUT)
        self._failing_now = False
        self.retries = 0                   # immediate retries taken (one NACK no longer faults the chip)

    # -- the scan ---------------------------------------------------------------------------
    def poll(self, now_ms: int) -> None:
        """One bounded step: (re)initialise if needed, else advance the measurement."""
        self._now = now_ms
        if not self.ready:
            if self.retry_at is not None and now_ms < self.retry_at:
                return   # absent or failed: leave its sensors faulted until the retry time
            try:
                self._init(self._bus_source(), now_ms)
            except HARDWARE_ERRORS as exc:
                self._fail(exc, now_ms)
                return
            self.ready = True
            self.last_error = ""
            return
        try:
            self._step(now_ms)
        except HARDWARE_ERRORS as exc:
            if not retry_now(exc):
                self._fail(exc, now_ms)
                return
            # One NACK must not fault every channel of the chip for retry_ms (dp_cell goes stale
            # after 0.3 s): try the step once more, now. Each step re-reads what it needs, so a
            # step cut short is safe to repeat. At most one retry per chip per scan.
            self.retries += 1
            try:
                self._step(now_ms)
            except HARDWARE_ERRORS as again:
                self._fail(again, now_ms)

    def due(self, now_ms: int) -> bool:
        """Would poll() touch the bus now (not waiting for its retry time)?"""
        return self.ready or self.retry_at is None or now_ms >= self.retry_at

    def skip(self, now_ms: int, why: str) -> None:
        """Not polled this scan because its bus is blocked: fault `timeout`, retried after retry_ms."""
        self._now = now_ms
        self._fail(TimeoutError(why), now_ms)

    @property
    def failing(self) -> bool:
        """Its latest news is a failure: it failed, and has not answered since."""
        return self.failed_at is not None and (self.answered_at is None or self.answered_at < self.failed_at)

    def _fail(self, exc: BaseException, now_ms: int) -> None:
        """Every sensor of the chip gets the fault; the chip is re-initialised after retry_ms."""
        code = fault_of(exc)
        self.last_error = f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, BusOpenError):     # a bus that does not exist is not locked up
            self.failed_at = now_ms
        self.timed_out = isinstance(exc, OSError) and exc.errno == errno.ETIMEDOUT
        self._failing_now = True
        try:
            self.fault_all(code, now_ms)
        finally:
            self._failing_now = False
        self.ready = False
        self.retry_at = now_ms + self.retry_ms

    # -- helpers for subclasses ---------------------------------------------------------------
    def sample(self, name: str, value: float, t_ms: int, **raw: Any) -> None:
        self.readings[name] = Reading(value, None, t_ms)
        self.raw[name] = raw
        self.answered_at = self._now

    def fault(self, name: str, code: str, t_ms: int, **raw: Any) -> None:
        self.readings[name] = Reading(math.nan, code, t_ms)
        self.fault_counts[name] += 1
        if not self._failing_now and code != FAULT_CRC:
            self.answered_at = self._now      # the chip told us (a loop, a status bit): the bus works
        if raw:
            self.raw[name] = raw

    def fault_all(self, code: str, t_ms: int) -> None:
        for name in self.plan.sensors:
            self.fault(name, code, t_ms)

    def _init(self, bus: Any, now_ms: int) -> None:
        raise NotImplementedError

    def _step(self, now_ms: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the chip holds (nothing by default). Never raises."""
