"""Sensirion SDP810 differential pressure sensor over smbus2, CRC-checked.

Why smbus2 and no driver: there is no maintained Blinka driver for the SDP8xx; the protocol is
three commands. We run it in continuous mode with averaging (command 0x3615): the sensor samples
every 0.5 ms and averages until read, so each scan reads a fresh 9-byte answer without waiting:
  [dp MSB, dp LSB, CRC, temp MSB, temp LSB, CRC, scale MSB, scale LSB, CRC]
dp in Pa = signed dp / scale factor; temperature = signed temp / 200. Each word carries
Sensirion's CRC-8 (polynomial 0x31, init 0xFF). A failed CRC is fault "crc" for that scan (the
sensor stays in use); a NACK is "disconnect" and the sensor is restarted after retry_ms.

Start-up, never waiting in a scan (Sensirion embedded-i2c-sdp, sdp_i2c.h):
- stop (0x3FF9): "makes the sensor receptive to another command after 500us" (the sensor may be
  measuring from an earlier run, and a start "must not be resent ... until the stop measurement
  command has been issued");
- start (0x3615) on a later scan, at least START_AFTER_STOP_MS after the stop: a start sent
  150 to 300 us after the stop may be NACKed on every retry, and the sensor would never start;
- the first answer no sooner than `first_read_ms` after the start ("the first measurement result
  is available after 8ms").

The scale factor word identifies the pressure range: it must be the configured part's (60 per Pa
for the 500 Pa parts, 240 for the 125 Pa parts; cellspec/bindings.py SDP8XX_PARTS). Guards: a 125 Pa
part read as a 500 Pa one would clip silently at about 136 Pa, below the overpressure trip; any
other scale is fault "device".
"""

from __future__ import annotations

from typing import Any

from cellspec.bindings import DEFAULT_SDP8XX_PART, SDP8XX_PARTS
from hal.base import FAULT_CRC, FAULT_DEVICE
from hal.hardware.device import DeviceFault, SensorDevice
from hal.hardware.plan import DevicePlan

CMD_START_DP_AVG = (0x36, 0x15)
CMD_STOP = (0x3F, 0xF9)
# The sensor takes a command again 500 us after a stop. The loop's clock counts whole ms
# (truncated), so 2 ms on it is at least 1 ms of real time: twice Sensirion's figure.
START_AFTER_STOP_MS = 2


def crc8(data: bytes | bytearray) -> int:
    """Sensirion CRC-8: polynomial 0x31, init 0xFF, no reflection, no final xor."""
    crc = 0xFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x31) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def part_of_scale(scale: int) -> str:
    """The parts that answer with this scale factor, for messages."""
    parts = [p for p, (s, _) in SDP8XX_PARTS.items() if s == scale]
    return " or ".join(parts) if parts else "no SDP8xx part we know"


class SDP810(SensorDevice):
    def __init__(self, plan: DevicePlan, bus_source: Any, *, retry_ms: int = 1000, first_read_ms: int = 10):
        super().__init__(plan, bus_source, retry_ms=retry_ms)
        (self.name, self.hw), = plan.sensors.items()
        self.part = self.hw.get("part", DEFAULT_SDP8XX_PART)
        self.scale = SDP8XX_PARTS[self.part][0]
        self.first_read_ms = first_read_ms
        self.bus: Any = None
        self.stopped_ms = 0
        self.started_ms: int | None = None    # None: stopped, the start is still to be sent

    def _command(self, cmd: tuple[int, int]) -> None:
        from smbus2 import i2c_msg

        self.bus.i2c_rdwr(i2c_msg.write(self.plan.address, list(cmd)))

    def _init(self, bus: Any, now_ms: int) -> None:
        self.bus = bus
        try:
            self._command(CMD_STOP)    # it may still be measuring from an earlier run
        except OSError:
            pass                       # idle sensors may NACK a stop; the start decides
        self.stopped_ms = now_ms
        self.started_ms = None

    def _step(self, now_ms: int) -> None:
        from smbus2 import i2c_msg

        if self.started_ms is None:
            if now_ms - self.stopped_ms < START_AFTER_STOP_MS:
                return                 # a scan this soon after the stop: start on the next one
            self._command(CMD_START_DP_AVG)
            self.started_ms = now_ms
            return
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
        raw = {"raw": dp, "scale": scale, "celsius": temp / 200.0}
        if scale != self.scale:
            # Guards: the wrong part reads plausible numbers until it clips (a 125 Pa part at 136 Pa).
            self.last_error = (f"scale factor {scale} per Pa is the {part_of_scale(scale)}; "
                               f"config part = {self.part} answers {self.scale} per Pa")
            self.fault(self.name, FAULT_DEVICE, now_ms, **raw)
            return
        self.sample(self.name, dp / scale, now_ms, **raw)


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
