"""HardwareCell: the CellIO backend for the real cell (I2C sensors, GPIO inputs and relays).

Why this shape: the scan calls read_sensors / read_inputs / write_outputs once each per period.
Every chip advances by one bounded step per scan (at most three short I2C transactions, and one
immediate retry of the step after a NACK), so a slow or hung device shows up as an ageing reading
or a fault value. Only a transfer the kernel itself blocks (SCL held low) can hold a scan, for the
adapter's timeout, once per bus per scan (docs/hardware.md, "Bus faults"). After the chips, each
bus's BusGuard looks for a lock-up (every chip failing) and clears it (busrecovery.py).
Vendor libraries are imported by the chip modules only, and only when this class is built.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cellspec.names import SENSORS
from hal.base import Reading
from hal.hardware.ads1115 import ADS1115
from hal.hardware.busrecovery import BusGuard
from hal.hardware.device import BusOpenError, SensorDevice
from hal.hardware.gpio import Gpio, PinConfigError, open_factory
from hal.hardware.mcp9600 import MCP9600
from hal.hardware.plan import DevicePlan, expected_addresses, plan_devices
from hal.hardware.sdp810 import SDP810

# Which bus API each chip kind is driven through.
BUS_API = {"ads1115_4_20ma": "i2c", "mcp9600": "i2c", "sdp810": "smbus"}


class _Buses:
    """Bus objects by number, opened on first use and kept; injected ones are never closed."""

    def __init__(self, injected: Any, opener: Callable[[int], Any]):
        self.injected = injected
        self.opener = opener
        self.opened: dict[int, Any] = {}

    def get(self, bus: int) -> Any:
        if self.injected is not None:
            if isinstance(self.injected, Mapping):
                if bus not in self.injected:
                    raise OSError(2, f"no bus {bus} was injected")
                return self.injected[bus]
            return self.injected
        if bus not in self.opened:
            try:
                self.opened[bus] = self.opener(bus)
            except Exception as exc:
                # No /dev/i2c-N, or Blinka refusing this board (it raises ImportError or ValueError
                # from busio.I2C): the chips' sensors fault "disconnect" and are retried, never a
                # traceback out of the scan or the probe.
                raise BusOpenError(f"cannot open I2C bus {bus}: {type(exc).__name__}: {exc}") from None
        return self.opened[bus]

    def source(self, bus: int) -> Callable[[], Any]:
        return lambda: self.get(bus)

    def close(self) -> None:
        for obj in self.opened.values():
            for method in ("deinit", "close"):
                try:
                    getattr(obj, method)()
                    break
                except Exception:
                    continue
        self.opened.clear()


class HardwareCell:
    """CellIO on the reference wiring of docs/hardware.md.

    i2c:         a `busio.I2C`-compatible object, or {bus number: object}; default Blinka.
    smbus:       an `smbus2.SMBus`-compatible object, or {bus number: object}; default smbus2.
    pin_factory: a gpiozero pin factory; default lgpio, else RPi.GPIO ($GPIOZERO_PIN_FACTORY wins).
    retry_ms:    how long a failed or absent chip waits before it is tried again.
    """

    def __init__(self, config: Any, *, i2c: Any = None, smbus: Any = None, pin_factory: Any = None,
                 retry_ms: int = 1000, thermocouple_timeout_ms: int = 1500):
        self.config = config
        self.plans: list[DevicePlan] = plan_devices(config.sensors)   # WiringError on a bad binding
        if i2c is None:
            from hal.hardware import blinka

            blinka.check_available(sorted({p.bus for p in self.plans if BUS_API[p.kind] == "i2c"}))
            i2c_opener = blinka.open_i2c
        else:
            i2c_opener = _no_opener
        if smbus is None and any(BUS_API[p.kind] == "smbus" for p in self.plans):
            from hal.hardware import sdp810

            sdp810.check_available()
        from hal.hardware.sdp810 import open_smbus

        self._i2c = _Buses(i2c, i2c_opener)
        self._smbus = _Buses(smbus, open_smbus)
        self.devices: list[SensorDevice] = []
        for plan in self.plans:
            if plan.kind == "ads1115_4_20ma":
                dev: SensorDevice = ADS1115(plan, self._i2c.source(plan.bus), retry_ms=retry_ms)
            elif plan.kind == "mcp9600":
                dev = MCP9600(plan, self._i2c.source(plan.bus), retry_ms=retry_ms,
                              timeout_ms=thermocouple_timeout_ms)
            else:
                dev = SDP810(plan, self._smbus.source(plan.bus), retry_ms=retry_ms)
            self.devices.append(dev)
        self._device_of = {name: dev for dev in self.devices for name in dev.plan.sensors}
        self._owns_factory = pin_factory is None
        self.gpio = Gpio(config, pin_factory if pin_factory is not None else open_factory())
        # Bus lock-up detection on every bus, recovery where [i2c.<bus>] wires it (busrecovery.py).
        self._on_bus: dict[int, list[SensorDevice]] = {}
        for dev in self.devices:
            self._on_bus.setdefault(dev.plan.bus, []).append(dev)
        wiring = getattr(config, "i2c", {}) or {}
        try:
            self.guards = {bus: BusGuard(bus, wiring.get(bus), self.gpio.pin) for bus in sorted(self._on_bus)}
        except PinConfigError:
            self.gpio.force_safe()
            raise
        self.closed = False

    # -- CellIO ------------------------------------------------------------------------------
    def read_sensors(self, now_ms: int) -> Sequence[Reading]:
        # A transfer that timed out blocked this scan for the adapter's timeout (docs/hardware.md,
        # "Bus faults"); the bus's other chips would each block as long: not this scan.
        blocked: set[int] = set()
        for dev in self.devices:
            bus = dev.plan.bus
            if bus in blocked and dev.due(now_ms):
                dev.skip(now_ms, f"not tried: a transfer on bus {bus} timed out in this scan")
                continue
            dev.poll(now_ms)
            if dev.failed_at == now_ms and dev.timed_out:
                blocked.add(bus)
        for bus, guard in self.guards.items():
            guard.watch(self._on_bus[bus], now_ms)
        return [self._device_of[name].readings[name] for name in SENSORS]

    def read_inputs(self, now_ms: int) -> Sequence[bool | None]:
        return self.gpio.read_inputs()

    def write_outputs(self, values: Sequence[bool]) -> bool:
        if self.closed:
            return False
        return self.gpio.write(values)

    def force_safe(self) -> None:
        try:
            self.gpio.force_safe()
        except Exception:
            pass  # Never raises: the caller is already handling a failure.

    def heartbeat(self) -> None:
        if not self.closed:
            self.gpio.toggle_heartbeat()

    def close(self) -> None:
        """Safe levels first, then release the buses; the outputs stay driven (see gpio.py)."""
        try:
            self.gpio.close()
        except Exception:
            pass
        self.closed = True
        for guard in self.guards.values():
            guard.close()
        for dev in self.devices:
            try:
                dev.close()
            except Exception:
                pass
        self._i2c.close()
        self._smbus.close()

    # -- telemetry and the probe -------------------------------------------------------------
    def fault_counts(self) -> dict[str, int]:
        """Faults seen per sensor since start (every failed read, NE43 or CRC fault counts once)."""
        return {name: self._device_of[name].fault_counts[name] for name in SENSORS}

    def bus_recoveries(self) -> dict[int, dict[str, int]]:
        """Per bus since start: lock-ups seen (every chip failing), recoveries run, recoveries that
        cleared the bus (nine clocks and a STOP), sensor supply power cycles."""
        return {bus: dict(guard.counts) for bus, guard in self.guards.items()}

    def buses_stuck(self) -> list[int]:
        """Buses locked up now: every chip on them failing since the lock-up was seen."""
        return [bus for bus, guard in self.guards.items() if guard.stuck]

    def details(self) -> dict[str, dict[str, Any]]:
        """Per sensor: the latest reading with its raw register values and the chip's state."""
        out = {}
        for name in SENSORS:
            dev = self._device_of[name]
            r = dev.readings[name]
            out[name] = {"value": r.value, "fault": r.fault, "t_ms": r.t_ms, "device": dev.plan.label,
                         "ready": dev.ready, "error": dev.last_error, **dev.raw[name]}
        return out

    def expected_devices(self) -> dict[int, dict[int, str]]:
        return expected_addresses(self.plans)

    def scan_buses(self) -> dict[int, list[int] | str]:
        """bus -> addresses that answered, or the error text when the bus could not be scanned."""
        out: dict[int, list[int] | str] = {}
        for bus in sorted({p.bus for p in self.plans}):
            try:
                i2c = self._i2c.get(bus)
                if not i2c.try_lock():
                    out[bus] = "bus is locked"
                    continue
                try:
                    out[bus] = sorted(i2c.scan())
                finally:
                    i2c.unlock()
            except Exception as exc:
                out[bus] = f"{type(exc).__name__}: {exc}"
        return out


def _no_opener(bus: int) -> Any:
    raise OSError(2, f"no I2C bus {bus}")
