"""Digital inputs and relay outputs through gpiozero's pin factories, at pin level.

Why pin level and our own factory instance:
- gpiozero devices close their pins in `__del__`, and gpiozero's atexit hook closes every device
  of the global `Device.pin_factory`; closing resets a pin to an input (RPi.GPIO `cleanup`, lgpio
  `gpio_claim_input` with no pull), leaving the relay inputs floating (gpiozero issues #707, #1146).
  We make our own factory instance (never `Device.pin_factory`) and drive `Pin` objects, which
  have no `__del__`: nothing resets our outputs behind our back.
- The local factories (lgpio, RPi.GPIO, native) share ONE class-wide pin table
  (`LocalPiFactory.pins`), and `Factory.close()` closes every pin in it: gpiozero's atexit hook
  closing `Device.pin_factory` (any other gpiozero device in the process) would reset our relay
  pins too, and that factory's `pin(17)` would hand out our own relay pin. `harden_factory` gives
  our instance a private table: another factory then makes its own pin, which the kernel refuses
  ("GPIO busy") while we hold the line.
- gpiozero's `LGPIOPin` (every Pi 5) makes a pin an output with `gpio_claim_output(h, gpio)`, i.e.
  at level 0, and only then writes the state: an active-low relay is energised for that moment,
  at start-up and whenever `force_safe()` re-makes an output. `harden_factory` swaps in a pin
  class whose `output_with_state` claims the line at its level in one request
  (`lgpio.gpio_claim_output(handle, gpio, level, 0)`). RPi.GPIO's pin already does
  (`GPIO.setup(..., initial=state)`); MockFactory's is the two-step default (tests only).
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
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cellspec.names import EDGE_LATCHED_INPUTS, INPUTS, OUTPUTS

# Pin factories by name (GPIOZERO_PIN_FACTORY uses the same names), in the order we try them:
# lgpio works on every Pi incl. the Pi 5; RPi.GPIO on older boards and OS images.
FACTORIES = {
    "lgpio": ("gpiozero.pins.lgpio", "LGPIOFactory"),
    "rpigpio": ("gpiozero.pins.rpigpio", "RPiGPIOFactory"),
    "native": ("gpiozero.pins.native", "NativeFactory"),
    "mock": ("gpiozero.pins.mock", "MockFactory"),
}
AUTO_ORDER = ("lgpio", "rpigpio")

# The gpiochip that carries the 40-pin header, by its kernel label: RP1 on the Pi 5 family, the
# SoC's own GPIO block on the Pi 4 and earlier. Its number is not stable (the Pi 5's RP1 moved from
# gpiochip4 to gpiochip0 with kernel 6.6.45), so we look it up instead of trusting a number.
HEADER_CHIP_LABELS = ("pinctrl-rp1", "pinctrl-bcm2711", "pinctrl-bcm2835")
# Boards whose header GPIOs sit on RP1: Raspberry Pi 5, Pi 500, Compute Module 5.
RP1_MODEL = re.compile(r"Raspberry Pi (Compute Module )?5")


class NoGpio(RuntimeError, ImportError):
    """No usable GPIO library (gpiozero with lgpio or RPi.GPIO) on this machine."""


class PinConfigError(ValueError):
    """A configured pin cannot be used as asked (not a GPIO, fixed pull resistor, in use)."""


def board_model(paths: Sequence[str] = ("/proc/device-tree/model", "/proc/cpuinfo")) -> str:
    """The board's model string, '' when unknown: the device tree's, else /proc/cpuinfo's `Model`."""
    try:
        return Path(paths[0]).read_bytes().split(b"\0")[0].decode("ascii", "replace").strip()
    except OSError:
        pass
    try:
        for line in Path(paths[1]).read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model":
                return value.strip()
    except OSError:
        pass
    return ""


def header_gpiochip(lgpio: Any, dev: str = "/dev") -> int | None:
    """The number of the gpiochip labelled as the 40-pin header's (HEADER_CHIP_LABELS), else None."""
    numbers = sorted(int(p.name[8:]) for p in Path(dev).glob("gpiochip*") if p.name[8:].isdigit())
    for n in numbers:
        try:
            handle = lgpio.gpiochip_open(n)
        except Exception:
            continue
        try:
            label = lgpio.gpio_get_chip_info(handle)[3]
        except Exception:
            label = ""
        finally:
            try:
                lgpio.gpiochip_close(handle)
            except Exception:
                pass
        if label in HEADER_CHIP_LABELS:
            return n
    return None


def open_factory(name: str | None = None, *, model: Callable[[], str] = board_model,
                 dev: str = "/dev") -> Any:
    """A new pin factory instance: `name`, else $GPIOZERO_PIN_FACTORY, else lgpio then RPi.GPIO.

    `model` tells the board (default: /proc/device-tree/model); `dev` is where the gpiochips are.
    The `native` factory is refused on an RP1 board (Pi 5 family): it drives the BCM283x GPIO
    registers, which a Pi 5 does not have behind its header.
    """
    import importlib

    name = name or os.environ.get("GPIOZERO_PIN_FACTORY") or None
    names = (name,) if name else AUTO_ORDER
    problems = []
    for n in names:
        if n not in FACTORIES:
            raise NoGpio(f"unknown pin factory {n!r}; choose one of: {', '.join(FACTORIES)}")
        if n == "native":
            board = model()
            if RP1_MODEL.search(board):
                raise NoGpio(f"the 'native' pin factory has no Raspberry Pi 5 support ({board}: its GPIOs "
                             "are on the RP1 chip); use lgpio: apt install python3-lgpio, and unset "
                             "GPIOZERO_PIN_FACTORY or set it to lgpio")
        module, cls = FACTORIES[n]
        try:
            factory_class = getattr(importlib.import_module(module), cls)
            if n == "lgpio":
                chip = header_gpiochip(sys.modules["lgpio"], dev)
                return factory_class() if chip is None else factory_class(chip=chip)
            return factory_class()
        except Exception as exc:  # ImportError, or the library refusing a non-Pi machine
            problems.append(f"{n}: {exc}")
    raise NoGpio("no GPIO pin factory works here (" + "; ".join(problems) + "); on a Pi install "
                 "python3-lgpio (Pi 5 and newer OS images) or python3-rpi.gpio")


def harden_factory(factory: Any) -> Any:
    """Make `factory` safe for relays (see the module doc): a private pin table, and on lgpio
    outputs claimed at their level in one request. Any other factory is left as it is."""
    shared = getattr(type(factory), "pins", None)
    if isinstance(shared, dict) and getattr(factory, "pins", None) is shared:
        factory.pins = {}        # LocalPiFactory's class-wide table: never share our pins
    module = sys.modules.get("gpiozero.pins.lgpio")
    if module is not None and isinstance(factory, module.LGPIOFactory):
        if not getattr(factory.pin_class, "claims_at_level", False):
            factory.pin_class = _lgpio_pin_class(module)
    return factory


def _lgpio_pin_class(module: Any) -> type:
    """An LGPIOPin whose `output_with_state` requests the line as an output already at `state`."""
    lgpio = module.lgpio

    class LevelClaimLGPIOPin(module.LGPIOPin):
        claims_at_level = True

        def output_with_state(self, state: Any) -> None:
            level = 1 if state else 0
            if self.function == "output":
                self.state = level            # already ours as an output: just the level
                return
            if self._callback is not None:    # as LGPIOPin._set_function does
                self._callback.cancel()
                self._callback = None
            lgpio.gpio_claim_output(self.factory._handle, self._number, level, 0)

    return LevelClaimLGPIOPin


def pin_level(logical: bool, safe: bool, active_low: bool) -> bool:
    """The pin level for a logical output value: energise only to leave the safe state."""
    energised = logical != safe
    return energised != active_low


class Gpio:
    """Every input, output and the heartbeat of one cell."""

    def __init__(self, config: Any, factory: Any):
        self.factory = harden_factory(factory)
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
                # Straight to the safe level in one request (lgpio: harden_factory's pin class;
                # RPi.GPIO: setup(initial=)): never a moment at the energised level.
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

    def pin(self, number: int, where: str) -> Any:
        """Another GPIO of this cell from the same (hardened) factory, e.g. bus recovery wiring."""
        return self._pin(number, where)

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
