"""Register-level fakes of the cell's chips behind fake bus objects.

The real Adafruit drivers (adafruit_bus_device, adafruit_mcp9600, adafruit_register) and smbus2's
i2c_msg run unmodified on top: only the wire is fake. Chip timing follows a shared FakeClock,
which is also what the tests pass to the scan as now_ms.
"""

from __future__ import annotations

import ctypes
import errno

from hal.hardware.sdp810 import crc8


class FakeClock:
    def __init__(self, now_ms: int = 1000):
        self.now_ms = now_ms

    def advance(self, ms: int) -> int:
        self.now_ms += ms
        return self.now_ms


def nack() -> OSError:
    return OSError(errno.EREMOTEIO, "Remote I/O error")


class FakeChip:
    """A chip on the wire: sees raw writes and answers raw reads."""

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def read(self, n: int) -> bytes:
        raise NotImplementedError


class FakeBus:
    """One physical I2C bus: the chips on it, NACK injection, a transaction log."""

    def __init__(self):
        self.chips: dict[int, FakeChip] = {}
        self.nacking: set[int] = set()
        self.transactions = 0
        self.bits = 0       # bits on the wire (9 per byte incl. ACK, + start/stop), for the benchmark

    def attach(self, address: int, chip: FakeChip) -> FakeChip:
        self.chips[address] = chip
        return chip

    def chip(self, address: int) -> FakeChip:
        if address in self.nacking or address not in self.chips:
            raise nack()
        return self.chips[address]

    def count(self, nbytes_out: int, nbytes_in: int, restart: bool = False) -> None:
        self.transactions += 1
        frames = (1 + nbytes_out if nbytes_out or not nbytes_in else 0) + (1 + nbytes_in if nbytes_in else 0)
        self.bits += 9 * frames + 2 + (1 if restart else 0)


class FakeBusioI2C:
    """`busio.I2C`-compatible: try_lock/unlock/writeto/readfrom_into/writeto_then_readfrom/scan."""

    def __init__(self, bus: FakeBus):
        self.bus = bus
        self.locked = False

    def try_lock(self) -> bool:
        if self.locked:
            return False
        self.locked = True
        return True

    def unlock(self) -> None:
        assert self.locked, "unlock() without the lock"
        self.locked = False

    def _check(self) -> None:
        assert self.locked, "bus used without try_lock()"

    def writeto(self, address, buffer, *, start=0, end=None):
        self._check()
        data = bytes(buffer[start:end])
        self.bus.count(len(data), 0)
        self.bus.chip(address).write(data)

    def readfrom_into(self, address, buffer, *, start=0, end=None):
        self._check()
        end = len(buffer) if end is None else end
        self.bus.count(0, end - start)
        buffer[start:end] = self.bus.chip(address).read(end - start)

    def writeto_then_readfrom(self, address, buffer_out, buffer_in, *, out_start=0, out_end=None,
                              in_start=0, in_end=None):
        self._check()
        out = bytes(buffer_out[out_start:out_end])
        in_end = len(buffer_in) if in_end is None else in_end
        self.bus.count(len(out), in_end - in_start, restart=True)
        chip = self.bus.chip(address)
        chip.write(out)
        buffer_in[in_start:in_end] = chip.read(in_end - in_start)

    def scan(self):
        self._check()
        return sorted(a for a in self.bus.chips if a not in self.bus.nacking)

    def deinit(self):
        pass


class FakeSMBus:
    """`smbus2.SMBus`-compatible for what we use: i2c_rdwr with smbus2.i2c_msg, close."""

    I2C_M_RD = 0x0001

    def __init__(self, bus: FakeBus):
        self.bus = bus
        self.closed = False

    def i2c_rdwr(self, *msgs):
        for msg in msgs:
            chip = self.bus.chip(msg.addr)
            if msg.flags & self.I2C_M_RD:
                self.bus.count(0, msg.len)
                data = chip.read(msg.len)
                ctypes.memmove(msg.buf, bytes(data), msg.len)
            else:
                self.bus.count(msg.len, 0)
                chip.write(bytes(msg))

    def close(self):
        self.closed = True


# -- ADS1115 ---------------------------------------------------------------------------------
ADS_FSR = {0: 6.144, 1: 4.096, 2: 2.048, 3: 1.024, 4: 0.512, 5: 0.256, 6: 0.256, 7: 0.256}
ADS_SPS = (8, 16, 32, 64, 128, 250, 475, 860)


class FakeADS1115(FakeChip):
    """Pointer register; config (0x01) with OS/MUX/PGA/MODE/DR; conversion (0x00).

    A single-shot conversion started by writing OS=1 finishes 1/data_rate later on the clock;
    until then OS reads 0. `stuck` makes conversions never finish; `reset()` is a power glitch.
    """

    RESET_CONFIG = 0x8583

    def __init__(self, clock: FakeClock):
        self.clock = clock
        self.pointer = 0
        self.config = self.RESET_CONFIG
        self.conversion = 0
        self.volts = [0.0, 0.0, 0.0, 0.0]     # AIN0..AIN3 against GND
        self.done_at: float | None = None
        self.stuck = False
        self.conversions_started = 0

    def set_ma(self, channel: int, ma: float, shunt_ohm: float = 150.0) -> None:
        self.volts[channel] = ma / 1000.0 * shunt_ohm

    def reset(self) -> None:
        self.config = self.RESET_CONFIG
        self.done_at = None
        self.pointer = 0

    def _settle(self) -> None:
        if self.done_at is not None and not self.stuck and self.clock.now_ms >= self.done_at:
            self.done_at = None
            mux = (self.config >> 12) & 0x7
            pga = (self.config >> 9) & 0x7
            if mux >= 4:
                v = self.volts[mux - 4]
            else:   # differential pairs: only AIN0-AIN1 is needed (the reset default)
                v = self.volts[0] - self.volts[1]
            counts = round(v / ADS_FSR[pga] * 32768)
            self.conversion = max(-32768, min(32767, counts)) & 0xFFFF

    def write(self, data: bytes) -> None:
        self._settle()
        if not data:
            return
        self.pointer = data[0] & 0x3
        if len(data) == 3 and self.pointer == 1:
            value = data[1] << 8 | data[2]
            converting = self.done_at is not None
            self.config = (value & 0x7FFF) | (self.config & 0x8000)
            if value & 0x8000 and not converting:
                self.conversions_started += 1
                rate = ADS_SPS[(value >> 5) & 0x7]
                self.done_at = self.clock.now_ms + 1000.0 / rate
        elif len(data) not in (1, 3):
            raise OSError(errno.EIO, "bad write length")

    def read(self, n: int) -> bytes:
        self._settle()
        if self.pointer == 1:
            value = (self.config & 0x7FFF) | (0 if self.done_at is not None else 0x8000)
        elif self.pointer == 0:
            value = self.conversion
        else:
            value = 0x8000 if self.pointer == 2 else 0x7FFF
        return bytes((value >> 8, value & 0xFF))[:n].ljust(n, b"\xff")


# -- MCP9600 ---------------------------------------------------------------------------------
class FakeMCP9600(FakeChip):
    """Registers: 0x00 hot junction, 0x02 cold junction, 0x04 status (bit 6 TH update, bit 4
    input range / open circuit), 0x05 thermocouple config, 0x06 device config, 0x20 device ID.
    A new conversion sets the TH update flag every `period_ms` of the clock."""

    def __init__(self, clock: FakeClock, device_id: int = 0x40, period_ms: int = 80):
        self.clock = clock
        self.device_id = device_id
        self.period_ms = period_ms
        self.pointer = 0
        self.celsius = 21.0
        self.ambient = 22.0
        self.status = 0
        self.open_circuit = False
        self.frozen = False        # conversions stop: the TH flag never sets again
        self.sensor_config = 0
        self.device_config = 0
        self.last_conv = clock.now_ms

    def _tick(self) -> None:
        if not self.frozen and self.clock.now_ms - self.last_conv >= self.period_ms:
            self.last_conv = self.clock.now_ms
            self.status |= 0x40
        self.status = (self.status & ~0x10) | (0x10 if self.open_circuit else 0)

    @staticmethod
    def _temp_word(celsius: float) -> bytes:
        return (round(celsius / 0.0625) & 0xFFFF).to_bytes(2, "big")

    def write(self, data: bytes) -> None:
        self._tick()
        if not data:
            raise nack()    # the MCP960x NAKs zero-length writes
        self.pointer = data[0]
        if len(data) >= 2:
            if self.pointer == 0x04:   # bits 7 and 6 are write-0-to-clear
                self.status &= ~(0xC0 & ~data[1])
            elif self.pointer == 0x05:
                self.sensor_config = data[1]
            elif self.pointer == 0x06:
                self.device_config = data[1]

    def read(self, n: int) -> bytes:
        self._tick()
        p = self.pointer
        if p == 0x00:
            data = self._temp_word(self.celsius)
        elif p == 0x02:
            data = self._temp_word(self.ambient)
        elif p == 0x04:
            data = bytes((self.status,))
        elif p == 0x05:
            data = bytes((self.sensor_config,))
        elif p == 0x06:
            data = bytes((self.device_config,))
        elif p == 0x20:
            data = bytes((self.device_id, 0x14))
        else:
            data = b"\x00"
        return data[:n].ljust(n, b"\x00")


# -- SDP810 ----------------------------------------------------------------------------------
class FakeSDP810(FakeChip):
    """Commands 0x3615 (continuous dp, averaged), 0x3FF9 (stop); answers 9 bytes with CRC-8.
    Reads NACK while idle or within 8 ms of the start command."""

    def __init__(self, clock: FakeClock, scale: int = 60):
        self.clock = clock
        self.scale = scale
        self.pascal = -80.0
        self.celsius = 23.5
        self.measuring_since: int | None = None
        self.corrupt_crc = False
        self.commands: list[int] = []

    def write(self, data: bytes) -> None:
        if len(data) != 2:
            raise nack()
        cmd = data[0] << 8 | data[1]
        self.commands.append(cmd)
        if cmd == 0x3615:
            self.measuring_since = self.clock.now_ms
        elif cmd == 0x3FF9:
            self.measuring_since = None
        else:
            raise nack()

    def read(self, n: int) -> bytes:
        if self.measuring_since is None or self.clock.now_ms - self.measuring_since < 8:
            raise nack()
        words = (round(self.pascal * self.scale), round(self.celsius * 200), self.scale)
        out = bytearray()
        for w in words:
            b = (w & 0xFFFF).to_bytes(2, "big")
            out += b + bytes((crc8(b),))
        if self.corrupt_crc:
            out[2] ^= 0x01
        return bytes(out[:n])


# -- the reference cell ----------------------------------------------------------------------
class FakeCellWiring:
    """Every chip of config/cell.toml's reference wiring on fake buses 1 and 3."""

    def __init__(self, clock: FakeClock | None = None, present: bool = True):
        self.clock = clock or FakeClock()
        self.bus1 = FakeBus()
        self.bus3 = FakeBus()
        self.i2c = {1: FakeBusioI2C(self.bus1), 3: FakeBusioI2C(self.bus3)}
        self.smbus = {1: FakeSMBus(self.bus1)}
        self.ads = {a: FakeADS1115(self.clock) for a in (0x48, 0x49, 0x4A)}
        self.mcp = {a: FakeMCP9600(self.clock) for a in (0x60, 0x61)}
        self.sdp = FakeSDP810(self.clock)
        if present:
            self.attach_all()
        for ads in self.ads.values():
            for ch in range(4):
                ads.set_ma(ch, 4.0)

    def attach_all(self) -> None:
        for a, chip in self.ads.items():
            self.bus1.attach(a, chip)
        self.bus1.attach(0x25, self.sdp)
        for a, chip in self.mcp.items():
            self.bus3.attach(a, chip)

    @property
    def transactions(self) -> int:
        return self.bus1.transactions + self.bus3.transactions


# -- helpers for the tests and the benchmark -------------------------------------------------
CELL_TOML = __import__("pathlib").Path(__file__).resolve().parents[2] / "config" / "cell.toml"


def make_config(mutate=None):
    """The default cell config, optionally changed by `mutate(data)` before validation."""
    import tomllib

    from controller.config import parse

    data = tomllib.loads(CELL_TOML.read_text())
    if mutate is not None:
        mutate(data)
    return parse(data, str(CELL_TOML))


def scan(cell, wiring, n=1, step_ms=100):
    """n scans, the clock advancing step_ms before each; the last readings by sensor name."""
    from controller.names import SENSORS

    readings = None
    for _ in range(n):
        wiring.clock.advance(step_ms)
        readings = cell.read_sensors(wiring.clock.now_ms)
    return dict(zip(SENSORS, readings, strict=True))


def set_loop(wiring, config, sensor, ma):
    """Drive the 4-20 mA loop of `sensor` to `ma` at its ADC input."""
    hw = config.sensors[sensor].hardware
    wiring.ads[hw["address"]].set_ma(hw["channel"], ma, hw["shunt_ohm"])


def chip_of(wiring, config, sensor):
    hw = config.sensors[sensor].hardware
    if hw["kind"] == "ads1115_4_20ma":
        return wiring.ads[hw["address"]]
    if hw["kind"] == "mcp9600":
        return wiring.mcp[hw["address"]]
    return wiring.sdp
