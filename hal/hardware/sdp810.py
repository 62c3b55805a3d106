"""Sensirion SDP810 differential pressure sensor over smbus2, CRC-checked.

Why smbus2 and no driver: there is no maintained Blinka driver for the SDP8xx; the protocol is
three commands. We run it in continuous mode with averaging (command 0x3615): the sensor samples
every 0.5 ms and averages until read, so each scan reads a fresh 9-byte answer without waiting:
  [dp MSB, dp LSB, CRC, temp MSB, temp LSB, CRC, scale MSB, scale LSB, CRC]
dp in Pa = signed dp / scale factor (60 for the 500 Pa part); temperature = signed temp / 200.
Each word carries Sensirion's CRC-8 (polynomial 0x31, init 0xFF). A failed CRC is fault "crc"
for that scan (the sensor stays in use); a NACK is "disconnect" and the sensor is restarted
(stop 0x3FF9, start 0x3615) after retry_ms. The first answer is read no sooner than
`first_read_ms` after the start command (the datasheet gives 8 ms to the first sample).
"""

from __future__ import annotations

from typing import Any

from hal.base import FAULT_CRC
from hal.hardware.device import DeviceFault, SensorDevice
from hal.hardware.plan import DevicePlan

CMD_START_DP_AVG = (0x36, 0x15)
CMD_STOP = (0x3F, 0xF9)


def crc8(data: bytes | bytearray) -> int:
    """Sensirion CRC-8: polynomial 0x31, init 0xFF, no reflection, no final xor."""
    crc = 0xFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x31) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


class SDP810(SensorDevice):
    def __init__(self, plan: DevicePlan, bus_source: Any, *, retry_ms: int = 1000, first_read_ms: int = 10):
        super().__init__(plan, bus_source, retry_ms=retry_ms)
        (self.name, self.hw), = plan.sensors.items()
        self.first_read_ms = first_read_ms
        self.bus: Any = None
        self.started_ms = 0

    def _command(self, cmd: tuple[int, int]) -> None:
        from smbus2 import i2c_msg

        self.bus.i2c_rdwr(i2c_msg.write(self.plan.address, list(cmd)))

    def _init(self, bus: Any, now_ms: int) -> None:
        self.bus = bus
        try:
            self._command(CMD_STOP)    # it may still be measuring from an earlier run
        except OSError:
            pass                       # idle sensors may NACK a stop; the start below decides
        self._command(CMD_START_DP_AVG)
        self.started_ms = now_ms

    def _step(self, now_ms: int) -> None:
        from smbus2 import i2c_msg

        if now_ms - self.started_ms < self.first_read_ms:
            return
        msg = i2c_msg.read(self.plan.address, 9)
        self.bus.i2c_rdwr(msg)
        data = bytes(msg)
        for i in (0, 3, 6):
            if crc8(data[i:i + 2]) != data[i + 2]:
                # Guards: a corrupted answer must not become a pressure value.
                self.fault(self.name, FAULT_CRC, now_ms, answer=data.hex())
                return
        dp = int.from_bytes(data[0:2], "big", signed=True)
        temp = int.from_bytes(data[3:5], "big", signed=True)
        scale = int.from_bytes(data[6:8], "big")
        if scale == 0:
            raise DeviceFault("scale factor 0 in the answer")
        self.sample(self.name, dp / scale, now_ms, raw=dp, scale=scale, celsius=temp / 200.0)


def open_smbus(bus: int) -> Any:
    """An `smbus2.SMBus` on Linux I2C bus `bus` (the only place smbus2 is opened)."""
    from smbus2 import SMBus

    return SMBus(bus)


def check_available() -> None:
    """Raise ImportError with a hint unless smbus2 is installed."""
    try:
        import smbus2  # noqa: F401
    except ImportError:
        raise ImportError("the SDP810 needs smbus2 (pip install smbus2), or pass smbus= for tests") from None
