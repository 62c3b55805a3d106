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

Edge latch (EDGE_LATCHED_INPUTS: estop_ok, door_closed): a 40 ms E-stop or door pulse can fall
between two scans. Their pins get an edge callback (`Pin.edges` / `Pin.when_changed`, which lgpio
and RPi.GPIO implement with kernel edge alerts) on the one level change that takes the logical
value to False ("falling" on an active-high input, "rising" on an active-low one). The callback,
on the library's thread, only counts; `read_inputs` returns False for an input whose count moved
since the previous read, even if the contact is closed again, and the live value after that. No
debounce (`Pin.bounce` stays None): lgpio's debounce discards pulses shorter than its period, and
a bouncing contact only counts the same drop more than once.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from controller.names import EDGE_LATCHED_INPUTS, INPUTS, OUTPUTS

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
        # Edge latch: drops counted by the pin callbacks, and the count each read has reported.
        self.drops = [0] * len(INPUTS)
        self._seen = [0] * len(INPUTS)
        self._latched = tuple(INPUTS.index(n) for n in EDGE_LATCHED_INPUTS)
        self._callbacks: list[Any] = []   # gpiozero keeps only weak references to them
        try:
            for k, name in enumerate(INPUTS):
                c = config.inputs[name]
                pin = self._pin(c.pin, f"inputs.{name}")
                # Pull towards "inactive": an open wire reads as the contact being open.
                pin.input_with_pull("up" if c.active_low else "down")
                self.inputs.append((name, pin, c.active_low))
                if k in self._latched:
                    self._watch_drops(k, pin, c, f"inputs.{name}")
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

    def _watch_drops(self, k: int, pin: Any, c: Any, where: str) -> None:
        """Count every level change of `pin` that takes input `k`'s logical value to False."""
        drops = self.drops

        def dropped(_ticks: Any, _state: Any) -> None:
            drops[k] += 1     # the library's thread: count only; the scan reads the count

        try:
            pin.edges = "rising" if c.active_low else "falling"
            pin.when_changed = dropped
        except Exception as exc:
            # Without edge detection a pulse shorter than a scan would leave no trace: refuse.
            raise PinConfigError(f"[{where}] pin = {c.pin}: edge detection unavailable ({exc}); "
                                 "an E-stop or door pulse shorter than a scan would go unseen") from None
        self._callbacks.append(dropped)

    def _pin(self, number: int, where: str) -> Any:
        try:
            return self.factory.pin(number)
        except Exception as exc:
            raise PinConfigError(f"[{where}] pin = {number}: {exc}") from None

    def read_inputs(self) -> list[bool | None]:
        """Every input (None where the read failed); a latched input that dropped since the last
        read is False once, whatever its live value."""
        dropped = []
        for k in self._latched:
            # Take the count before the live level: a drop arriving in between is kept for the
            # next read, never lost.
            n = self.drops[k]
            if n != self._seen[k]:
                self._seen[k] = n
                dropped.append(k)
        values: list[bool | None] = []
        for _name, pin, active_low in self.inputs:
            try:
                values.append(bool(pin.state) != active_low)
            except Exception:
                values.append(None)   # the core applies INPUT_FAILSAFE
        for k in dropped:
            values[k] = False         # E-stop or door opened since the last read: seen once
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
                pin.when_changed = None
                pin.close()
            except Exception:
                pass
