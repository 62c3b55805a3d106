"""Digital inputs and relay outputs through gpiozero's pin factories, at pin level.

Why pin level and our own factory instance:
- gpiozero devices close their pins in `__del__`, and gpiozero's atexit hook closes every device
  of the global `Device.pin_factory`; closing resets a pin to an input (RPi.GPIO `cleanup`, lgpio
  `gpio_claim_input` with no pull), leaving the relay inputs floating (gpiozero issues #707, #1146).
  We make our own factory instance (never `Device.pin_factory`) and drive `Pin` objects, which
  have no `__del__`: nothing resets our outputs behind our back.
- `close()` puts every output at its safe level and keeps driving it; the pins are left to the
  process exit (RPi.GPIO leaves them as outputs at that level; on lgpio the kernel releases the
  lines). The hardware is built so that a released pin also means "safe": de-energised relays
  (see docs/hardware.md), and the external watchdog drops them when the heartbeat stops.

De-energise to trip is structural: a relay coil is energised only to move an output away from its
configured safe state: energised = (logical != safe); pin_high = (energised != active_low).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from controller.names import INPUTS, OUTPUTS

# Pin factories by name (GPIOZERO_PIN_FACTORY uses the same names), in the order we try them:
# lgpio works on every Pi incl. the Pi 5; RPi.GPIO on older boards and OS images.
FACTORIES = {
    "lgpio": ("gpiozero.pins.lgpio", "LGPIOFactory"),
    "rpigpio": ("gpiozero.pins.rpigpio", "RPiGPIOFactory"),
    "native": ("gpiozero.pins.native", "NativeFactory"),
    "mock": ("gpiozero.pins.mock", "MockFactory"),
}
AUTO_ORDER = ("lgpio", "rpigpio")


class NoGpio(RuntimeError, ImportError):
    """No usable GPIO library (gpiozero with lgpio or RPi.GPIO) on this machine."""


class PinConfigError(ValueError):
    """A configured pin cannot be used as asked (not a GPIO, fixed pull resistor, in use)."""


def open_factory(name: str | None = None) -> Any:
    """A new pin factory instance: `name`, else $GPIOZERO_PIN_FACTORY, else lgpio then RPi.GPIO."""
    import importlib

    name = name or os.environ.get("GPIOZERO_PIN_FACTORY") or None
    names = (name,) if name else AUTO_ORDER
    problems = []
    for n in names:
        if n not in FACTORIES:
            raise NoGpio(f"unknown pin factory {n!r}; choose one of: {', '.join(FACTORIES)}")
        module, cls = FACTORIES[n]
        try:
            return getattr(importlib.import_module(module), cls)()
        except Exception as exc:  # ImportError, or the library refusing a non-Pi machine
            problems.append(f"{n}: {exc}")
    raise NoGpio("no GPIO pin factory works here (" + "; ".join(problems) + "); on a Pi install "
                 "python3-lgpio (Pi 5 and newer OS images) or python3-rpi.gpio")


def pin_level(logical: bool, safe: bool, active_low: bool) -> bool:
    """The pin level for a logical output value: energise only to leave the safe state."""
    energised = logical != safe
    return energised != active_low


class Gpio:
    """Every input, output and the heartbeat of one cell."""

    def __init__(self, config: Any, factory: Any):
        self.factory = factory
        self.inputs = []      # (name, pin, active_low) in INPUTS order
        self.outputs = []     # (name, pin, active_low, safe) in OUTPUTS order
        try:
            for name in INPUTS:
                c = config.inputs[name]
                pin = self._pin(c.pin, f"inputs.{name}")
                # Pull towards "inactive": an open wire reads as the contact being open.
                pin.input_with_pull("up" if c.active_low else "down")
                self.inputs.append((name, pin, c.active_low))
            for name in OUTPUTS:
                c = config.outputs[name]
                pin = self._pin(c.pin, f"outputs.{name}")
                # Straight to the safe level in one call (no glitch through the other level).
                pin.output_with_state(pin_level(c.safe, c.safe, c.active_low))
                self.outputs.append((name, pin, c.active_low, c.safe))
            self.heartbeat_pin = self._pin(config.heartbeat_pin, "watchdog.heartbeat_pin")
            self.heartbeat_pin.output_with_state(False)
        except PinConfigError:
            self.force_safe()
            raise
        self.heartbeat_level = False

    def _pin(self, number: int, where: str) -> Any:
        try:
            return self.factory.pin(number)
        except Exception as exc:
            raise PinConfigError(f"[{where}] pin = {number}: {exc}") from None

    def read_inputs(self) -> list[bool | None]:
        values: list[bool | None] = []
        for _name, pin, active_low in self.inputs:
            try:
                values.append(bool(pin.state) != active_low)
            except Exception:
                values.append(None)   # the core applies INPUT_FAILSAFE
        return values

    def write(self, logical: Sequence[bool]) -> bool:
        """Write every output; read each back. False if any write failed or did not stick."""
        ok = True
        for (_name, pin, active_low, safe), value in zip(self.outputs, logical, strict=True):
            level = pin_level(bool(value), safe, active_low)
            try:
                pin.state = level
                ok = ok and bool(pin.state) == level
            except Exception:
                ok = False
        return ok

    def force_safe(self) -> bool:
        """Every output to its safe level, each tried even if another fails. Never raises."""
        ok = True
        for _name, pin, active_low, safe in self.outputs:
            level = pin_level(safe, safe, active_low)
            try:
                if pin.function != "output":
                    pin.output_with_state(level)
                else:
                    pin.state = level
            except Exception:
                ok = False
        return ok

    def toggle_heartbeat(self) -> bool:
        self.heartbeat_level = not self.heartbeat_level
        try:
            self.heartbeat_pin.state = self.heartbeat_level
            return True
        except Exception:
            return False

    def stop_heartbeat(self) -> None:
        try:
            self.heartbeat_pin.state = False
        except Exception:
            pass

    def close(self) -> None:
        """Safe levels, heartbeat stopped; release the inputs only. Never raises."""
        self.force_safe()
        self.stop_heartbeat()
        for _name, pin, _active_low in self.inputs:
            try:
                pin.close()
            except Exception:
                pass
