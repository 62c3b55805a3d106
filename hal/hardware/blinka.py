"""Opening I2C buses through Adafruit Blinka. The only module that imports `board`, `busio` and
`adafruit_extended_bus`.

Bus 1 is the Pi's hardware I2C (`busio.I2C(board.SCL, board.SDA)`); any other bus number (our
reference wiring puts the MCP9600s on bus 3, an `i2c-gpio` bus that honours clock stretching) is
opened by number with `adafruit_extended_bus.ExtendedI2C`. The bus speed is set by the kernel
(`dtparam=i2c_arm_baudrate=...`, `dtoverlay=i2c-gpio,...`), not here: Blinka ignores `frequency`
on Linux.
"""

from __future__ import annotations

from typing import Any


class NoI2c(RuntimeError, ImportError):
    """Blinka (adafruit-blinka) cannot run on this machine, or a needed helper is missing."""


def check_available(buses: list[int]) -> None:
    """Raise NoI2c with a hint unless Blinka can open every bus in `buses` on this machine."""
    try:
        import board  # noqa: F401
        import busio  # noqa: F401
    except Exception as exc:  # ImportError, or Blinka's NotImplementedError on unknown boards
        raise NoI2c(f"Adafruit Blinka cannot open I2C here ({type(exc).__name__}: {exc}); "
                    "install adafruit-blinka on the controller board, or pass i2c= for tests") from None
    if any(bus != 1 for bus in buses):
        try:
            import adafruit_extended_bus  # noqa: F401
        except ImportError:
            raise NoI2c(f"I2C buses {', '.join(str(b) for b in buses if b != 1)} need the "
                        "adafruit-extended-bus package (pip install adafruit-extended-bus)") from None


def open_i2c(bus: int) -> Any:
    """A `busio.I2C`-compatible object for Linux I2C bus `bus`."""
    if bus == 1:
        import board
        import busio

        return busio.I2C(board.SCL, board.SDA)
    try:
        from adafruit_extended_bus import ExtendedI2C
    except ImportError:
        raise NoI2c(f"I2C bus {bus} needs the adafruit-extended-bus package "
                    "(pip install adafruit-extended-bus)") from None
    return ExtendedI2C(bus)
