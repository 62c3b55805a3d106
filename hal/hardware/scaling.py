"""4-20 mA loops: ADC counts to milliamps to engineering units, with NAMUR NE43 limits. Pure.

Why here and pure: the same arithmetic serves the scan, the probe and the tests, on any machine.

Our NE43 choice (docs/hardware.md, "NE43 bands per channel"), per channel from its config binding:
- a current inside the channel's maintenance band (`maintenance_ma`, optional): fault "maintenance"
  (the transmitter says it is not measuring: never a reading, never clean gas);
- below the valid band (`valid_ma`, default 3.8 to 20.9 mA): fault "loop_low". For a gas channel a
  low reading is the permissive direction (0 % O2 or 0 %LEL lets the cell run), so everything below
  NE43's 3.8 mA measuring band is a fault, not a clamped zero;
- above the valid band: fault "loop_high";
- inside it: scaled linearly and clamped to the span (a 20.5 to 20.9 mA transmitter saturated high
  reads span-high and trips on its thresholds; a small zero drift does not read below 0).
Config (cellspec/bindings.py) keeps every band limit far enough from NE43's failure signals (at or
below 3.6 mA, at or above 21.0 mA) that a failure signal read with the ±0.25 % shunt and gain
error (LOOP_ERROR) is still a fault.
"""

from __future__ import annotations

import math

from cellspec.bindings import (  # noqa: F401  (re-exported for the probe, docs and tests)
    DEFAULT_VALID_MA,
    LOOP_ERROR,
    NE43_FAILED_HIGH_MA,
    NE43_FAILED_LOW_MA,
    NE43_MEASURE_MA,
)
from hal.base import FAULT_LOOP_HIGH, FAULT_LOOP_LOW, FAULT_MAINTENANCE

MEASURE_LOW_MA, MEASURE_HIGH_MA = NE43_MEASURE_MA
HEADROOM_MA = 22.0     # the ADC must still resolve this much, or loop_high could never be seen

# ADS1115 programmable gain -> full-scale voltage (datasheet table 3; Adafruit's gain names).
ADS1115_FSR_V = {2 / 3: 6.144, 1.0: 4.096, 2.0: 2.048, 4.0: 1.024, 8.0: 0.512, 16.0: 0.256}


def full_scale_volts(gain: float) -> float:
    """Full-scale voltage of the ADS1115 at `gain` (2/3 may be written 0.6667)."""
    for g, volts in ADS1115_FSR_V.items():
        if math.isclose(g, gain, rel_tol=1e-3):
            return volts
    raise ValueError(f"ADS1115 gain {gain!r} is not one of 2/3, 1, 2, 4, 8, 16")


def counts_to_ma(counts: int, gain: float, shunt_ohm: float) -> float:
    """Signed 16-bit conversion result across a shunt -> loop current in mA."""
    volts = counts * full_scale_volts(gain) / 32768.0
    return volts / shunt_ohm * 1000.0


def classify_loop(ma: float, valid: tuple[float, float] = DEFAULT_VALID_MA,
                  maintenance: tuple[float, float] | None = None) -> str | None:
    """The fault code of a loop current, or None when it is a reading (inside `valid`)."""
    if maintenance is not None and maintenance[0] <= ma <= maintenance[1]:
        return FAULT_MAINTENANCE
    if not ma >= valid[0]:             # also catches NaN: a current we could not read is low
        return FAULT_LOOP_LOW
    if ma > valid[1]:
        return FAULT_LOOP_HIGH
    return None


def scale_loop(ma: float, span: tuple[float, float], valid: tuple[float, float] = DEFAULT_VALID_MA,
               maintenance: tuple[float, float] | None = None) -> tuple[float, str | None]:
    """Loop current -> (value, fault). A failed loop gives (nan, fault code)."""
    fault = classify_loop(ma, valid, maintenance)
    if fault is not None:
        return math.nan, fault
    lo, hi = span
    value = lo + (ma - 4.0) * (hi - lo) / 16.0
    return min(max(value, lo), hi), None
