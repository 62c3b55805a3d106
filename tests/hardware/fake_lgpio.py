"""A recording stand-in for the `lgpio` module, so gpiozero's LGPIOFactory runs unmodified on it.

Written from lg's Python API (joan2937/lg, PY_LGPIO/lgpio_extra.py, lgpio 0.2.x) and what its C
library does underneath (lgGpio.c):
- `gpiochip_open(n)` returns a handle with the chip number in bits 16+; a missing chip raises
  `error("can not open gpiochip")`.
- Each handle is one open of the chip device: a line held by one handle is "GPIO busy" for another
  (the kernel refuses a second request for a line).
- `gpio_claim_output(h, gpio, level=0, lFlags=0)` requests the line as an output already at
  `level`, in one kernel request; if the line is already an output of this handle it does nothing
  (level unchanged). `gpio_claim_input(h, gpio, lFlags=0)` likewise does nothing on a line that is
  already an input. Otherwise both first free the line (auto free of a singleton), then request it.
- `gpio_write` on a line that is not an output claims it as an output at that level;
  `gpio_read` on an unclaimed line claims it as an input.
- `gpio_get_mode` = kernel line flags | lg's own mode << 8 (bits as documented for gpio_get_mode).

Every call is recorded in order in `calls` (name, args). What each line presents to the wire is
recorded in `wire[gpio]` after every change: None = not driven (input or released), 0 or 1 =
driven low or high. A relay board input sees exactly that sequence.
"""

from __future__ import annotations

import types
from collections import defaultdict

# -- constants of the documented API -------------------------------------------------------------
SET_ACTIVE_LOW = 4
SET_OPEN_DRAIN = 8
SET_OPEN_SOURCE = 16
SET_PULL_UP = 32
SET_PULL_DOWN = 64
SET_PULL_NONE = 128
RISING_EDGE = 1
FALLING_EDGE = 2
BOTH_EDGES = 3
TIMEOUT = 2

CANNOT_OPEN_CHIP = -78
GPIO_BUSY = -79
GPIO_NOT_ALLOCATED = -80
BAD_GPIO_NUMBER = -73
BAD_HANDLE = -5
ERRORS = {CANNOT_OPEN_CHIP: "can not open gpiochip", GPIO_BUSY: "GPIO busy",
          GPIO_NOT_ALLOCATED: "GPIO not allocated", BAD_GPIO_NUMBER: "bad GPIO number",
          BAD_HANDLE: "unknown handle"}

# gpio_get_mode bits: kernel flags ...
K_USED, K_OUTPUT, K_ACTIVE_LOW, K_OPEN_DRAIN, K_OPEN_SOURCE = 1, 2, 4, 8, 16
K_PULL_UP, K_PULL_DOWN, K_PULL_NONE, K_INPUT = 32, 64, 128, 1 << 16
# ... and lg's own mode of a line it holds, shifted left by 8.
LG_INPUT, LG_OUTPUT, LG_ALERT = 1, 2, 4


class error(Exception):  # noqa: N801  (lgpio's own name)
    def __init__(self, value):
        self.value = value

    def __str__(self):
        return repr(self.value)


def error_text(errnum: int) -> str:
    return ERRORS.get(errnum, f"error {errnum}")


class Line:
    def __init__(self):
        self.owner: int | None = None       # handle holding the request
        self.mode = 0                       # lg mode bits of the owner
        self.flags = 0                      # lFlags of the request
        self.edges = 0
        self.level = 0                      # driven level while an output
        self.outside: int | None = None     # level the outside world drives (None: only the pull)

    def seen(self) -> int:
        """The level an input reads: what drives the pin, else its bias."""
        if self.outside is not None:
            return self.outside
        return 1 if self.flags & SET_PULL_UP else 0


class FakeLgpio:
    """The module's state; `module()` returns a module object to put in sys.modules['lgpio']."""

    def __init__(self, chips: dict[int, tuple[str, int]] | None = None):
        # chip number -> (label, number of lines). Default: a Pi 5 after kernel 6.6.45 (RP1 = gpiochip0).
        self.chips = chips if chips is not None else {0: ("pinctrl-rp1", 54)}
        self.lines: dict[int, dict[int, Line]] = defaultdict(lambda: defaultdict(Line))
        self.handles: dict[int, int] = {}   # handle -> chip number
        self.calls: list[tuple] = []
        self.wire: dict[tuple[int, int], list[int | None]] = defaultdict(lambda: [None])
        self.callbacks: list[_Callback] = []
        self._next = 1

    # -- helpers for tests -------------------------------------------------------------------------
    def history(self, gpio: int, chip: int = 0) -> list[int | None]:
        """What GPIO `gpio` of `chip` presented to the wire, change by change (None: not driven)."""
        return list(self.wire[(chip, gpio)])

    def line(self, gpio: int, chip: int = 0) -> Line:
        return self.lines[chip][gpio]

    def drive(self, gpio: int, level: int, chip: int = 0) -> None:
        """The outside world drives an input pin; alerts fire on the edges they watch."""
        line = self.lines[chip][gpio]
        old = line.seen()
        line.outside = level
        if old == level or not line.mode & LG_ALERT:
            return
        edge = RISING_EDGE if level else FALLING_EDGE
        for cb in list(self.callbacks):
            if cb.chip == chip and cb.gpio == gpio and cb.edge & edge and line.edges & edge:
                cb.func(chip, gpio, level, 0)

    def _record(self, chip: int, gpio: int) -> None:
        line = self.lines[chip][gpio]
        now = line.level if line.mode & LG_OUTPUT else None
        if self.wire[(chip, gpio)][-1] != now:
            self.wire[(chip, gpio)].append(now)

    def _chip(self, handle: int) -> int:
        if handle not in self.handles:
            raise error(error_text(BAD_HANDLE))
        return self.handles[handle]

    def _line(self, handle: int, gpio: int) -> Line:
        chip = self._chip(handle)
        if not 0 <= gpio < self.chips[chip][1]:
            raise error(error_text(BAD_GPIO_NUMBER))
        line = self.lines[chip][gpio]
        if line.owner is not None and line.owner != handle:
            raise error(error_text(GPIO_BUSY))
        return line

    def _free(self, handle: int, gpio: int) -> None:
        line = self.lines[self._chip(handle)][gpio]
        if line.owner == handle:
            line.owner, line.mode, line.flags, line.edges = None, 0, 0, 0
            self._record(self._chip(handle), gpio)

    # -- the API ---------------------------------------------------------------------------------
    def gpiochip_open(self, gpiochip):
        self.calls.append(("gpiochip_open", gpiochip))
        if gpiochip not in self.chips:
            raise error(error_text(CANNOT_OPEN_CHIP))
        handle = self._next | (gpiochip << 16)
        self._next += 1
        self.handles[handle] = gpiochip
        return handle

    def gpiochip_close(self, handle):
        self.calls.append(("gpiochip_close", handle))
        chip = self._chip(handle)
        for gpio, line in list(self.lines[chip].items()):
            if line.owner == handle:
                self._free(handle, gpio)     # the kernel releases every line of the closed fd
        del self.handles[handle]
        return 0

    def gpio_get_chip_info(self, handle):
        self.calls.append(("gpio_get_chip_info", handle))
        chip = self._chip(handle)
        label, lines = self.chips[chip]
        return [0, lines, f"gpiochip{chip}", label]

    def gpio_get_mode(self, handle, gpio):
        self.calls.append(("gpio_get_mode", handle, gpio))
        chip = self._chip(handle)
        line = self.lines[chip][gpio]
        kernel = 0
        if line.owner is not None:
            kernel |= K_USED | (K_OUTPUT if line.mode & LG_OUTPUT else K_INPUT)
            for flag, bit in ((SET_PULL_UP, K_PULL_UP), (SET_PULL_DOWN, K_PULL_DOWN),
                              (SET_PULL_NONE, K_PULL_NONE), (SET_ACTIVE_LOW, K_ACTIVE_LOW),
                              (SET_OPEN_DRAIN, K_OPEN_DRAIN), (SET_OPEN_SOURCE, K_OPEN_SOURCE)):
                if line.flags & flag:
                    kernel |= bit
        else:
            kernel |= K_INPUT
        own = line.mode if line.owner == handle else 0
        return kernel | own << 8

    def gpio_claim_input(self, handle, gpio, lFlags=0):  # noqa: N803  (lgpio's parameter name)
        self.calls.append(("gpio_claim_input", handle, gpio, lFlags))
        line = self._line(handle, gpio)
        if line.owner == handle and line.mode & LG_INPUT and not line.mode & LG_ALERT:
            return 0                          # already an input: nothing to do
        self._free(handle, gpio)
        line.owner, line.mode, line.flags = handle, LG_INPUT, lFlags
        self._record(self._chip(handle), gpio)
        return 0

    def gpio_claim_output(self, handle, gpio, level=0, lFlags=0):  # noqa: N803
        self.calls.append(("gpio_claim_output", handle, gpio, level, lFlags))
        line = self._line(handle, gpio)
        if line.owner == handle and line.mode & LG_OUTPUT:
            return 0                          # already an output: nothing to do, level unchanged
        self._free(handle, gpio)
        line.owner, line.mode, line.flags, line.level = handle, LG_OUTPUT, lFlags, 1 if level else 0
        self._record(self._chip(handle), gpio)
        return 0

    def gpio_free(self, handle, gpio):
        self.calls.append(("gpio_free", handle, gpio))
        self._line(handle, gpio)
        self._free(handle, gpio)
        return 0

    def gpio_read(self, handle, gpio):
        self.calls.append(("gpio_read", handle, gpio))
        line = self._line(handle, gpio)
        if line.owner is None:
            line.owner, line.mode, line.flags = handle, LG_INPUT, 0
            self._record(self._chip(handle), gpio)
        if line.mode & LG_OUTPUT:
            return line.level
        return line.seen()

    def gpio_write(self, handle, gpio, level):
        self.calls.append(("gpio_write", handle, gpio, level))
        line = self._line(handle, gpio)
        if not (line.owner == handle and line.mode & LG_OUTPUT):
            self._free(handle, gpio)
            line.owner, line.mode, line.flags = handle, LG_OUTPUT, 0
        line.level = 1 if level else 0
        self._record(self._chip(handle), gpio)
        return 0

    def gpio_set_debounce_micros(self, handle, gpio, debounce_micros):
        self.calls.append(("gpio_set_debounce_micros", handle, gpio, debounce_micros))
        self._line(handle, gpio)
        return 0

    def gpio_claim_alert(self, handle, gpio, eFlags, lFlags=0, notify_handle=None):  # noqa: N803
        self.calls.append(("gpio_claim_alert", handle, gpio, eFlags, lFlags))
        line = self._line(handle, gpio)
        self._free(handle, gpio)
        line.owner, line.mode, line.flags, line.edges = handle, LG_INPUT | LG_ALERT, lFlags, eFlags
        self._record(self._chip(handle), gpio)
        return 0

    def callback(self, handle, gpio, edge=RISING_EDGE, func=None):
        self.calls.append(("callback", handle, gpio, edge))
        cb = _Callback(self, self._chip(handle), gpio, edge, func)
        self.callbacks.append(cb)
        return cb

    def tx_pwm(self, handle, gpio, *args):
        raise error("PWM is not modelled")

    def module(self) -> types.ModuleType:
        m = types.ModuleType("lgpio")
        m.__file__ = __file__
        for name, value in globals().items():
            if name.isupper() or name in ("error", "error_text"):
                setattr(m, name, value)
        for name in ("gpiochip_open", "gpiochip_close", "gpio_get_chip_info", "gpio_get_mode",
                     "gpio_claim_input", "gpio_claim_output", "gpio_free", "gpio_read", "gpio_write",
                     "gpio_set_debounce_micros", "gpio_claim_alert", "callback", "tx_pwm"):
            setattr(m, name, getattr(self, name))
        m.fake = self
        return m


class _Callback:
    def __init__(self, fake: FakeLgpio, chip: int, gpio: int, edge: int, func):
        self.fake, self.chip, self.gpio, self.edge, self.func = fake, chip, gpio, edge, func

    def cancel(self):
        self.fake.calls.append(("callback.cancel", self.chip, self.gpio))
        if self in self.fake.callbacks:
            self.fake.callbacks.remove(self)
