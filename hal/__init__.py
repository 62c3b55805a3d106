"""Hardware abstraction: backends chosen by name and imported lazily.

Why lazy: a laptop or CI has no I2C bus or GPIO libraries; only the backend that is asked for
imports its vendor modules (gpiozero's pin-factory habit).
"""

from __future__ import annotations

from typing import Any

BACKENDS = ("sim", "mock", "hardware")
# The laptop backend: `mock` is the simulated cell under the name developers look for. A simulated
# cell is a better mock than a stub: its sensors answer the outputs with real lags and noise, and
# it fails the way devices fail (hal/sim.py), so the controller runs its whole story on a laptop.
SIMULATED = ("sim", "mock")


class BadBackend(ValueError):
    """The HAL backend name is not one we ship."""


def open_backend(name: str, config: Any, **options: Any):
    """Create the HAL backend `name` for the plant `config`."""
    if name in SIMULATED:
        from hal.sim import SimulatedCell

        return SimulatedCell(config, **options)
    if name == "hardware":
        from hal.hardware import HardwareCell

        return HardwareCell(config, **options)
    raise BadBackend(f"unknown HAL backend {name!r}; choose one of: {', '.join(BACKENDS)}")
