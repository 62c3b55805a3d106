"""The hardware backend: I2C sensor chips and GPIO relays of the real cell (docs/hardware.md).

Importing this package imports no vendor library: each chip module imports its own (Blinka,
adafruit_mcp9600, adafruit_bus_device, smbus2, gpiozero) when a HardwareCell is built.
"""

from hal.hardware.cell import HardwareCell

__all__ = ["HardwareCell"]
