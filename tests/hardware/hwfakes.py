"""Register-level fakes of the cell's chips behind fake bus objects.

The real Adafruit drivers (adafruit_bus_device, adafruit_mcp9600, adafruit_register) and smbus2's
i2c_msg run unmodified on top: only the wire is fake. Chip timing follows a shared FakeClock,
which is also what the tests pass to the scan as now_ms.
"""

from __future__ import annotations

import ctypes
import errno

from gpiozero.pins.mock import MockPin

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
    """One physical I2C bus: the chips on it, NACK injection, a transaction log, and the wire's own
    faults (the bus lock-up of UM10204 section 3.1.16):

    - `nack_once`: addresses that NACK their next transaction only (a glitch), then answer again.
    - `timing_out`: addresses whose transfers end in ETIMEDOUT only after `adapter_timeout_ms` on
      the clock (a slave stretching SCL for ever: the kernel waits for the adapter's timeout, 1 s
      by default in Linux's I2C core). `hold_scl()`: a slave holds SCL low: every transfer does.
    - `hold_sda(clocks)`: a slave interrupted mid-byte holds SDA low until it has seen `clocks` SCL
      pulses (1 to 9). The modelled controller does not start a transfer while SDA is low: every
      transfer fails EIO and gives no clock; a scan finds nothing.
    - The lines are wired-AND (open drain, pull-ups): low while anything pulls them low. `pull()`
      is a GPIO wired onto a line (BusLinePin). A rising SCL edge is one clock for the holding
      slave; SDA rising while SCL is high is a STOP (`stops`).
    - `power(False)`: the sensor supply is cut (BusSupplyPin): every chip NACKs, the holds end;
      `power(True)`: the chips start afresh (their `reset()`, or `power_on()` if they have one).
    """

    def __init__(self, clock: FakeClock | None = None):
        self.clock = clock
        self.chips: dict[int, FakeChip] = {}
        self.nacking: set[int] = set()
        self.nack_once: set[int] = set()
        self.timing_out: set[int] = set()
        self.adapter_timeout_ms = 1000
        self.scl_held = False
        self.sda_hold_clocks = 0       # > 0: SDA held low until that many more SCL pulses
        self.pullers: dict[str, set] = {"scl": set(), "sda": set()}
        self.clocks = 0                # SCL pulses made by GPIOs wired onto the bus
        self.stops = 0
        self.powered = True
        self.transactions = 0
        self.bits = 0       # bits on the wire (9 per byte incl. ACK, + start/stop), for the benchmark

    def attach(self, address: int, chip: FakeChip) -> FakeChip:
        self.chips[address] = chip
        return chip

    # -- the wire ---------------------------------------------------------------------------------
    def hold_sda(self, clocks: int = 9) -> None:
        self.sda_hold_clocks = clocks

    def hold_scl(self, held: bool = True) -> None:
        self.scl_held = held

    def level(self, line: str) -> bool:
        """True: the line is high (nothing pulls it low)."""
        if self.pullers[line]:
            return False
        if line == "scl":
            return not (self.scl_held and self.powered)
        return not (self.sda_hold_clocks > 0 and self.powered)

    def pull(self, line: str, who: object, low: bool) -> None:
        scl_before, sda_before = self.level("scl"), self.level("sda")
        (self.pullers[line].add if low else self.pullers[line].discard)(who)
        scl, sda = self.level("scl"), self.level("sda")
        if scl and not scl_before:
            self.clocks += 1
            if self.sda_hold_clocks > 0:
                self.sda_hold_clocks -= 1          # the slave shifts out one more bit
        if sda and not sda_before and scl:
            self.stops += 1

    def power(self, on: bool) -> None:
        if on and not self.powered:
            for chip in self.chips.values():
                start = getattr(chip, "power_on", None) or getattr(chip, "reset", None)
                if start is not None:
                    start()
                if hasattr(chip, "measuring_since"):
                    chip.measuring_since = None    # an SDP810 starts idle
        if not on:
            self.sda_hold_clocks = 0
            self.scl_held = False
        self.powered = on

    def chip(self, address: int) -> FakeChip:
        if (self.scl_held and self.powered) or address in self.timing_out:
            if self.clock is not None:
                self.clock.advance(self.adapter_timeout_ms)   # the kernel waits this long
            raise OSError(errno.ETIMEDOUT, "Connection timed out")
        if not self.level("sda"):
            raise OSError(errno.EIO, "Input/output error")
        if address in self.nack_once:
            self.nack_once.discard(address)
            raise nack()
        if not self.powered or address in self.nacking or address not in self.chips:
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
        if not (self.bus.powered and self.bus.level("sda") and self.bus.level("scl")):
            return []
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
    An input is measured only up to the supply `vdd` (datasheet SBAS444 section 9.3.3: "with
    VDD = 3.3 V and FSR = ±4.096 V, only signals up to VIN = ±3.3 V can be measured"; recommended
    operating conditions: AINx within GND to VDD): a higher input converts as VDD.
    """

    RESET_CONFIG = 0x8583

    def __init__(self, clock: FakeClock, vdd: float = 3.3):
        self.clock = clock
        self.vdd = vdd
        self.pointer = 0
        self.config = self.RESET_CONFIG
        self.conversion = 0
        self.volts = [0.0, 0.0, 0.0, 0.0]     # AIN0..AIN3 against GND
        self.done_at: float | None = None
        self.stuck = False
        self.conversions_started = 0

    def set_ma(self, channel: int, ma: float, shunt_ohm: float = 150.0, error: float = 0.0) -> None:
        """Drive `ma` through the shunt; `error` is the shunt and gain error (0.0025: reads 0.25 % high)."""
        self.volts[channel] = ma / 1000.0 * shunt_ohm * (1.0 + error)

    def reset(self) -> None:
        self.config = self.RESET_CONFIG
        self.done_at = None
        self.pointer = 0

    def _settle(self) -> None:
        if self.done_at is not None and not self.stuck and self.clock.now_ms >= self.done_at:
            self.done_at = None
            mux = (self.config >> 12) & 0x7
            pga = (self.config >> 9) & 0x7
            pins = [min(max(v, 0.0), self.vdd) for v in self.volts]   # measurable: GND to VDD
            if mux >= 4:
                v = pins[mux - 4]
            else:   # differential pairs: only AIN0-AIN1 is needed (the reset default)
                v = pins[0] - pins[1]
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
    """MCP9600 (ID 0x40) / MCP9601 (0x41) after datasheet DS20005426.

    Registers: 0x00 hot junction TH, 0x02 cold junction TC (register 5-4), 0x04 status (register
    5-6), 0x05 thermocouple config, 0x06 device config (register 5-8), 0x20 device ID.
    - Conversions: one every tCONV of the ADC resolution in device config bits 6-5 (table 5-3:
      18-bit 320 ms, the power-on default; 16-bit 80 ms; 14-bit 20 ms; 12-bit 5 ms), none in
      shutdown (bits 1-0 = 01). Each one loads TH and sets TH Update (bit 6); bits 7 and 6 are
      cleared by writing 0, bits 5-0 are read-only.
    - Input Range (bit 4), section 6.3.3.1 and register 5-6: with the bias resistors of Figure 6-6
      (`bias`, or an MCP9601 with VSENSE) an open thermocouple (`open_circuit`) pulls the input out
      of range: bit 4 sets and TH is not updated (register 5-6, bit 4). Without them the open input
      floats and the chip keeps converting: TH takes `open_celsius`, by default the cold-junction
      temperature (no EMF). `emf_out_of_range` is an EMF beyond the type's range (a thermocouple on
      a supply rail): bit 4 with or without bias.
    - `frozen`: conversions stop. `after_hot_read`: called after each read of TH (a conversion
      completing between two transactions of one scan: call `convert()` from it).
    """

    TCONV_MS = (320, 80, 20, 5)    # table 5-3, by ADC resolution bits 6-5

    def __init__(self, clock: FakeClock, device_id: int = 0x40):
        self.clock = clock
        self.device_id = device_id
        self.pointer = 0
        self.celsius = 21.0        # the hot junction's real temperature
        self.ambient = 22.0        # the cold junction (the chip's own temperature)
        self.th = 0.0              # TH register: the last conversion
        self.status = 0
        self.bias = True
        self.open_circuit = False
        self.open_celsius: float | None = None
        self.emf_out_of_range = False
        self.frozen = False        # conversions stop: the TH flag never sets again
        self.after_hot_read = None
        self.sensor_config = 0
        self.device_config = 0
        self.conversions = 0
        self.last_conv = clock.now_ms

    @property
    def conversion_ms(self) -> int:
        return self.TCONV_MS[(self.device_config >> 5) & 0x3]

    def convert(self) -> None:
        """One conversion completes now."""
        self.conversions += 1
        if self.emf_out_of_range or (self.open_circuit and self.bias):
            self.status |= 0x10        # TH not updated
            return
        self.status &= ~0x10
        if self.open_circuit:
            self.th = self.ambient if self.open_celsius is None else self.open_celsius
        else:
            self.th = self.celsius
        self.status |= 0x40

    def _tick(self) -> None:
        if self.frozen or self.device_config & 0x3 == 0x1:
            self.last_conv = self.clock.now_ms
            return
        while self.clock.now_ms - self.last_conv >= self.conversion_ms:
            self.last_conv += self.conversion_ms
            self.convert()

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
            data = self._temp_word(self.th)
            if self.after_hot_read is not None:
                self.after_hot_read()
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

    After Sensirion's SDP8xx interface description (embedded-i2c-sdp, sdp_i2c.h):
    - the stop "makes the sensor receptive to another command after 500us": every command and
      read within 0.5 ms of a stop is NACKed;
    - a start "must not be resent ... until the stop measurement command has been issued": a
      start while measuring is NACKed (and listed in `refused`);
    - "the first measurement result is available after 8ms": reads NACK before, and while idle.
    `scale` is the part's scale factor (60 per Pa: 500 Pa parts, 240: 125 Pa parts); the dp word
    saturates at the 16-bit limits. `commands` lists the accepted commands.
    """

    BUSY_AFTER_STOP_MS = 0.5

    def __init__(self, clock: FakeClock, scale: int = 60):
        self.clock = clock
        self.scale = scale
        self.pascal = -80.0
        self.celsius = 23.5
        self.measuring_since: int | None = None
        self.busy_until = -1.0
        self.corrupt_crc = False
        self.commands: list[int] = []
        self.refused: list[int] = []

    def write(self, data: bytes) -> None:
        if len(data) != 2:
            raise nack()
        cmd = data[0] << 8 | data[1]
        if self.clock.now_ms < self.busy_until or (cmd == 0x3615 and self.measuring_since is not None):
            self.refused.append(cmd)
            raise nack()
        if cmd == 0x3615:
            self.measuring_since = self.clock.now_ms
        elif cmd == 0x3FF9:
            self.measuring_since = None
            self.busy_until = self.clock.now_ms + self.BUSY_AFTER_STOP_MS
        else:
            self.refused.append(cmd)
            raise nack()
        self.commands.append(cmd)

    def read(self, n: int) -> bytes:
        if (self.clock.now_ms < self.busy_until or self.measuring_since is None
                or self.clock.now_ms - self.measuring_since < 8):
            raise nack()
        dp = max(-32768, min(32767, round(self.pascal * self.scale)))
        words = (dp, round(self.celsius * 200), self.scale)
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
        self.bus1 = FakeBus(self.clock)
        self.bus3 = FakeBus(self.clock)
        self.buses = {1: self.bus1, 3: self.bus3}
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
    from cellspec.names import SENSORS

    readings = None
    for _ in range(n):
        wiring.clock.advance(step_ms)
        readings = cell.read_sensors(wiring.clock.now_ms)
    return dict(zip(SENSORS, readings, strict=True))


def set_loop(wiring, config, sensor, ma, error=0.0):
    """Drive the 4-20 mA loop of `sensor` to `ma` at its ADC input; `error`: shunt and gain error."""
    hw = config.sensors[sensor].hardware
    wiring.ads[hw["address"]].set_ma(hw["channel"], ma, hw["shunt_ohm"], error)


def chip_of(wiring, config, sensor):
    hw = config.sensors[sensor].hardware
    if hw["kind"] == "ads1115_4_20ma":
        return wiring.ads[hw["address"]]
    if hw["kind"] == "mcp9600":
        return wiring.mcp[hw["address"]]
    return wiring.sdp


# -- GPIOs wired onto the buses (bus recovery, config [i2c.<bus>]) --------------------------------
class BusLinePin(MockPin):
    """A GPIO wired onto an I2C line (through its series resistor): an output at low pulls the line
    low, an output at high or an input lets go (the bus pull-ups win); as an input it reads the line."""

    def __init__(self, factory, info, bus: FakeBus | None = None, line: str = "scl"):
        super().__init__(factory, info)
        self.bus, self.line = bus, line

    def _wire(self) -> None:
        self.bus.pull(self.line, self, self._function == "output" and not self._state)

    def _set_function(self, value):
        super()._set_function(value)
        self._wire()

    def _change_state(self, value):
        changed = super()._change_state(value)
        if getattr(self, "bus", None) is not None:
            self._wire()
        return changed

    def _get_state(self):
        if self._function == "input":
            return self.bus.level(self.line)
        return self._state


class BusSupplyPin(MockPin):
    """A GPIO switching the supply of a bus's chips: cut while it is an output at `cut_level`."""

    def __init__(self, factory, info, bus: FakeBus | None = None, cut_level: bool = True):
        super().__init__(factory, info)
        self.bus, self.cut_level = bus, cut_level

    def _apply(self) -> None:
        self.bus.power(not (self._function == "output" and self._state == self.cut_level))

    def _set_function(self, value):
        super()._set_function(value)
        self._apply()

    def _change_state(self, value):
        changed = super()._change_state(value)
        if getattr(self, "bus", None) is not None:
            self._apply()
        return changed


def wire_recovery(factory, wiring, config):
    """Connect the recovery GPIOs of config [i2c.<bus>] to the fake buses on MockFactory `factory`;
    call before building the cell (it then gets these pins)."""
    for bus, w in config.i2c.items():
        fake = wiring.buses[bus]
        if w["recovery_scl_pin"] is not None:
            factory.pin(w["recovery_scl_pin"], pin_class=BusLinePin, bus=fake, line="scl")
            factory.pin(w["recovery_sda_pin"], pin_class=BusLinePin, bus=fake, line="sda")
        if w["supply_cut_pin"] is not None:
            factory.pin(w["supply_cut_pin"], pin_class=BusSupplyPin, bus=fake,
                        cut_level=not w["supply_cut_active_low"])
