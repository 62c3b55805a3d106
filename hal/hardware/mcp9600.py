"""MCP9600/MCP9601 thermocouple amplifier, through Adafruit's driver (`adafruit_mcp9600`).

Why the driver fits here: the MCP9600 converts continuously on its own (every 320 ms at its
default 18-bit resolution, datasheet DS20005426 table 5-3), so reading the hot-junction register
never waits; the driver's constructor also sets the thermocouple type and checks the device ID
(0x40, or 0x41 for the MCP9601: "Failed to find MCP9600 ... check wiring!").

Each scan reads the status register (0x04, register 5-6) once, in one transaction over the
driver's own `i2c_device`:
- bit 4 "Input Range": the EMF is outside the thermocouple type's range. It means an open
  thermocouple only when the open-circuit bias resistors of section 6.3.3.1 (Figure 6-6) are fitted,
  or on an MCP9601 with VSENSE wired (Figure 6-7): then an open input is pulled far outside the
  range. Config `open_detect = "bias"` -> fault "open_circuit"; `"none"` -> fault "input_range".
- bit 5 (MCP9601 short circuit; unimplemented, reads 0, on the MCP9600) -> fault "device".
- bit 6 "TH Update": a conversion completed. We clear the flag first and then read the hot
  junction: a conversion completing between the two sets the flag again and is read next scan
  (cleared after the read, it would be lost and the value we hold one conversion old). Without the
  flag the old reading just ages (old t_ms); with no update for `timeout_ms` the sensor gets fault
  "timeout". Guards: a frozen amplifier.

Without the bias network an open junction floats: the chip keeps converting and the reading can
sit near the cold-junction (amplifier) temperature, a plausible and permissive value. Then, and
only then, each new value is checked for plausibility (docs/hardware.md says how much weaker this
is than the bias network):
- a change of more than JUMP_C between two consecutive conversions -> fault "open_suspect";
- the hot junction within PINNED_BAND_C of the cold junction for PINNED_MS -> "open_suspect".
"""

from __future__ import annotations

from typing import Any

from hal.base import FAULT_DEVICE, FAULT_INPUT_RANGE, FAULT_OPEN_CIRCUIT, FAULT_OPEN_SUSPECT, FAULT_TIMEOUT
from hal.hardware.device import SensorDevice
from hal.hardware.plan import DevicePlan

REG_STATUS = 0x04
ST_INPUT_RANGE = 0x10        # MCP9600 "input range"; MCP9601 with VSENSE: open circuit
ST_SHORT = 0x20
ST_UPDATE = 0x40

# Plausibility limits without the bias network (named in docs/hardware.md).
JUMP_C = 25.0          # K between two conversions (320 ms): 4700 K/min, no sheathed thermocouple follows that
PINNED_BAND_C = 0.25   # |hot - cold junction| at or below this (4 counts of 0.0625 C) ...
PINNED_MS = 30_000     # ... for this long: "pinned at the cold junction"


class MCP9600(SensorDevice):
    def __init__(self, plan: DevicePlan, bus_source: Any, *, retry_ms: int = 1000, timeout_ms: int = 1500):
        super().__init__(plan, bus_source, retry_ms=retry_ms)
        (self.name, self.hw), = plan.sensors.items()
        self.timeout_ms = timeout_ms
        self.bias = self.hw.get("open_detect") == "bias"
        self.chip: Any = None
        self.last_update_ms = 0
        self.last_celsius: float | None = None   # the previous conversion (jump check)
        self.pinned_since: int | None = None     # first conversion near the cold junction, ms
        self._buf = bytearray(1)

    def _init(self, bus: Any, now_ms: int) -> None:
        import adafruit_mcp9600

        self.chip = adafruit_mcp9600.MCP9600(bus, address=self.plan.address, tctype=self.hw["thermocouple"])
        self.last_update_ms = now_ms
        self._forget()

    def _forget(self) -> None:
        """Judge plausibility afresh (after a fault or a restart)."""
        self.last_celsius = None
        self.pinned_since = None

    def _status(self) -> int:
        with self.chip.i2c_device as dev:
            dev.write_then_readinto(bytes((REG_STATUS,)), self._buf)
        return self._buf[0]

    def _clear_update(self, status: int) -> None:
        """Write the status back with TH Update 0 (bits 7 and 6 are cleared by writing 0; the rest
        are read-only): one transaction instead of the driver's read-modify-write."""
        with self.chip.i2c_device as dev:
            dev.write(bytes((REG_STATUS, status & ~ST_UPDATE & 0xFF)))

    def _step(self, now_ms: int) -> None:
        status = self._status()
        if status & ST_INPUT_RANGE:
            code = FAULT_OPEN_CIRCUIT if self.bias else FAULT_INPUT_RANGE
            self.fault(self.name, code, now_ms, status=f"0x{status:02X}")
            self.last_update_ms = now_ms   # the timeout watches a healthy amplifier going quiet
            self._forget()
            return
        if status & ST_SHORT:
            self.fault(self.name, FAULT_DEVICE, now_ms, status=f"0x{status:02X}")
            self.last_update_ms = now_ms
            self._forget()
            return
        if status & ST_UPDATE:
            self._clear_update(status)     # first: a conversion finishing now is not lost
            value = self.chip.temperature
            self.last_update_ms = now_ms
            raw: dict[str, Any] = {"status": f"0x{status:02X}", "celsius": value}
            why = None if self.bias else self._open_suspect(value, now_ms, raw)
            if why is None:
                self.sample(self.name, value, now_ms, **raw)
            else:
                self.last_error = why
                self.fault(self.name, FAULT_OPEN_SUSPECT, now_ms, **raw)
        elif now_ms - self.last_update_ms > self.timeout_ms:
            self.last_error = f"no new temperature for {now_ms - self.last_update_ms} ms"
            self.fault(self.name, FAULT_TIMEOUT, now_ms, status=f"0x{status:02X}")
            self.last_update_ms = now_ms   # count one timeout per period, not one per scan
            self._forget()

    def _open_suspect(self, celsius: float, now_ms: int, raw: dict[str, Any]) -> str | None:
        """Without the bias network: why this conversion looks like an open junction, or None."""
        previous, self.last_celsius = self.last_celsius, celsius
        if previous is not None and abs(celsius - previous) > JUMP_C:
            self.pinned_since = None
            return (f"hot junction jumped {celsius - previous:+.2f} C in one conversion "
                    f"(more than {JUMP_C:g} C): open thermocouple suspected (no bias network)")
        cold = self.chip.ambient_temperature
        raw["cold"] = cold
        if abs(celsius - cold) > PINNED_BAND_C:
            self.pinned_since = None
            return None
        if self.pinned_since is None:
            self.pinned_since = now_ms
        if now_ms - self.pinned_since < PINNED_MS:
            return None
        return (f"hot junction within {PINNED_BAND_C:g} C of the cold junction ({cold:.2f} C) for "
                f"{(now_ms - self.pinned_since) / 1000:.0f} s: open thermocouple suspected (no bias network)")
