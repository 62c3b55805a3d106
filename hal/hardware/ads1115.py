"""ADS1115 16-bit ADC reading 4-20 mA loops across shunt resistors, without ever waiting.

Why our own register code and not `adafruit_ads1x15.AnalogIn.value`: the Adafruit driver (3.0.x,
`ADS1x15._read`) starts a single-shot conversion and then spins `while not
self._conversion_complete(): pass` with no timeout, so a hung or reset ADC would stall the scan
for ever; in continuous mode it sleeps 2 / data_rate on every channel change (15.6 ms at 128 SPS).
Neither fits a fixed-period safety scan. So we drive the two registers ourselves over the same
Blinka `busio.I2C`, through Adafruit's `I2CDevice` (bus locking), one step per scan:

  scan n:   write config (OS=1, mux=AINx, PGA, single-shot, data rate)  -> conversion starts
  scan n+1: read config; OS bit still 0 -> not ready: keep the old reading (its old t_ms shows
            it is getting stale); after 2 conversion times + 10 ms -> fault "timeout" on every
            channel of the chip (a stuck ADC is stuck for all of them), start again.
            OS bit 1 -> check the config read back is the one we wrote (a chip that reset or
            lost its setup is a "device" fault, never a silently wrong channel), read the
            conversion register, scale it against the channel's NE43 bands (scaling.py), start
            the next channel's conversion.

One conversion is in flight per chip; channels take turns, so each is refreshed every
(channels on the chip) scans when the conversion is shorter than a scan.
"""

from __future__ import annotations

from typing import Any

from hal.base import FAULT_TIMEOUT
from hal.hardware.device import DeviceFault, SensorDevice
from hal.hardware.plan import DevicePlan
from hal.hardware.scaling import counts_to_ma, full_scale_volts, scale_loop

REG_CONVERSION = 0x00
REG_CONFIG = 0x01
OS = 0x8000                  # write: start a single conversion; read: 1 = not converting
MODE_SINGLE = 0x0100
COMP_DISABLE = 0x0003        # comparator off, ALERT/RDY high impedance
PGA_BITS = {6.144: 0, 4.096: 1, 2.048: 2, 1.024: 3, 0.512: 4, 0.256: 5}
DR_BITS = {8: 0, 16: 1, 32: 2, 64: 3, 128: 4, 250: 5, 475: 6, 860: 7}


def config_word(channel: int, gain: float, data_rate: int) -> int:
    """Config register value that starts a single-shot conversion of AIN`channel` against GND."""
    mux = 0b100 | channel
    pga = PGA_BITS[full_scale_volts(gain)]
    return OS | mux << 12 | pga << 9 | MODE_SINGLE | DR_BITS[data_rate] << 5 | COMP_DISABLE


def conversion_ms(data_rate: int) -> float:
    return 1000.0 / data_rate


class ADS1115(SensorDevice):
    """One ADS1115; its sensors are the 4-20 mA loops wired to its inputs."""

    def __init__(self, plan: DevicePlan, bus_source: Any, *, retry_ms: int = 1000):
        super().__init__(plan, bus_source, retry_ms=retry_ms)
        # (sensor, binding, config word, timeout ms), in a fixed order: the round robin.
        self.channels = []
        for name, hw in plan.sensors.items():
            word = config_word(hw["channel"], hw["gain"], hw["data_rate"])
            timeout = 2 * conversion_ms(hw["data_rate"]) + 10.0
            self.channels.append((name, hw, word, timeout))
        self.next_index = 0
        self.inflight: int | None = None     # index into channels
        self.started_ms = 0
        self.device: Any = None
        self._buf = bytearray(2)

    # -- register access (one I2C transaction each) --------------------------------------------
    def _write_config(self, word: int) -> None:
        with self.device as dev:
            dev.write(bytes((REG_CONFIG, word >> 8, word & 0xFF)))

    def _read(self, reg: int) -> int:
        with self.device as dev:
            dev.write_then_readinto(bytes((reg,)), self._buf)
        return self._buf[0] << 8 | self._buf[1]

    # -- the state machine -------------------------------------------------------------------
    def _init(self, bus: Any, now_ms: int) -> None:
        from adafruit_bus_device.i2c_device import I2CDevice

        # probe=False: the first config write below is the probe; a NACK there is "absent".
        self.device = I2CDevice(bus, self.plan.address, probe=False)
        self.inflight = None
        self._start(now_ms)

    def _start(self, now_ms: int) -> None:
        index = self.next_index
        self.next_index = (index + 1) % len(self.channels)
        self.inflight = None
        self._write_config(self.channels[index][2])
        self.inflight = index
        self.started_ms = now_ms

    def _step(self, now_ms: int) -> None:
        if self.inflight is None:
            self._start(now_ms)
            return
        name, hw, word, timeout = self.channels[self.inflight]
        config = self._read(REG_CONFIG)
        if not config & OS:
            # Still converting. Before the timeout: not a fault, the old reading just ages.
            if now_ms - self.started_ms > timeout:
                # Guards: a hung ADC must not look like a steady, healthy signal.
                self.last_error = f"conversion on AIN{hw['channel']} not ready after {timeout:.1f} ms"
                self.fault_all(FAULT_TIMEOUT, now_ms)
                self._start(now_ms)
            return
        if config != word:
            # Guards: a chip that reset (power glitch) converts AIN0-AIN1 at 2.048 V by default:
            # its result would be a plausible number from the wrong input.
            raise DeviceFault(f"config reads 0x{config:04X}, wrote 0x{word:04X} (chip reset?)")
        counts = self._read(REG_CONVERSION)
        if counts & 0x8000:
            counts -= 0x10000
        ma = counts_to_ma(counts, hw["gain"], hw["shunt_ohm"])
        value, fault = scale_loop(ma, hw["span"], hw["valid_ma"], hw["maintenance_ma"])
        t_ms = min(now_ms, self.started_ms + int(conversion_ms(hw["data_rate"]) + 0.5))
        raw = {"raw": counts, "ma": round(ma, 4), "config": f"0x{config:04X}"}
        if fault is None:
            self.sample(name, value, t_ms, **raw)
        else:
            self.fault(name, fault, t_ms, **raw)
        self._start(now_ms)
