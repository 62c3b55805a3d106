"""MCP9600/MCP9601 thermocouple amplifier, through Adafruit's driver (`adafruit_mcp9600`).

Why the driver fits here: the MCP9600 converts continuously on its own, so reading the
hot-junction register never waits; the driver's constructor also sets the thermocouple type and
checks the device ID (0x40, or 0x41 for the MCP9601: "Failed to find MCP9600 ... check wiring!").

Each scan reads the status register (0x04) once, in one transaction over the driver's own
`i2c_device`:
- bit 4 (MCP9600 "input range", MCP9601 "open circuit"): the thermocouple is open -> fault
  "open_circuit". Guards: an open thermocouple otherwise reads a plausible cold-junction value.
- bit 5 (MCP9601 short circuit; reserved, reads 0, on the MCP9600) -> fault "device".
- bit 6 (TH update): a new hot-junction value exists -> read it (`temperature`), clear the flag
  (`temperature_update = False`). Without the flag the old reading just ages (old t_ms); with no
  update for `timeout_ms` the sensor gets fault "timeout". Guards: a frozen amplifier.
"""

from __future__ import annotations

from typing import Any

from hal.base import FAULT_DEVICE, FAULT_OPEN_CIRCUIT, FAULT_TIMEOUT
from hal.hardware.device import SensorDevice
from hal.hardware.plan import DevicePlan

REG_STATUS = 0x04
ST_OPEN = 0x10
ST_SHORT = 0x20
ST_UPDATE = 0x40


class MCP9600(SensorDevice):
    def __init__(self, plan: DevicePlan, bus_source: Any, *, retry_ms: int = 1000, timeout_ms: int = 1500):
        super().__init__(plan, bus_source, retry_ms=retry_ms)
        (self.name, self.hw), = plan.sensors.items()
        self.timeout_ms = timeout_ms
        self.chip: Any = None
        self.last_update_ms = 0
        self._buf = bytearray(1)

    def _init(self, bus: Any, now_ms: int) -> None:
        import adafruit_mcp9600

        self.chip = adafruit_mcp9600.MCP9600(bus, address=self.plan.address, tctype=self.hw["thermocouple"])
        self.last_update_ms = now_ms

    def _status(self) -> int:
        with self.chip.i2c_device as dev:
            dev.write_then_readinto(bytes((REG_STATUS,)), self._buf)
        return self._buf[0]

    def _step(self, now_ms: int) -> None:
        status = self._status()
        if status & ST_OPEN:
            self.fault(self.name, FAULT_OPEN_CIRCUIT, now_ms, status=f"0x{status:02X}")
            self.last_update_ms = now_ms   # the timeout watches a healthy amplifier going quiet
            return
        if status & ST_SHORT:
            self.fault(self.name, FAULT_DEVICE, now_ms, status=f"0x{status:02X}")
            self.last_update_ms = now_ms
            return
        if status & ST_UPDATE:
            value = self.chip.temperature
            self.chip.temperature_update = False
            self.last_update_ms = now_ms
            self.sample(self.name, value, now_ms, status=f"0x{status:02X}", celsius=value)
        elif now_ms - self.last_update_ms > self.timeout_ms:
            self.last_error = f"no new temperature for {now_ms - self.last_update_ms} ms"
            self.fault(self.name, FAULT_TIMEOUT, now_ms, status=f"0x{status:02X}")
            self.last_update_ms = now_ms   # count one timeout per period, not one per scan
