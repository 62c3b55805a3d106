"""4-20 mA loops: ADC counts to milliamps to engineering units, with NAMUR NE43 limits. Pure.

Why here and pure: the same arithmetic serves the scan, the probe and the tests, on any machine.

Our NE43 choice (docs/hardware.md):
- below 3.6 mA: fault "loop_low" (broken wire, dead transmitter, transmitter signalling failure);
- above 21.0 mA: fault "loop_high" (short, transmitter signalling failure);
- 3.6 to 21.0 mA: scaled linearly and clamped to the span. NE43's measuring band is 3.8 to 20.5 mA;
  in the two bands between (3.6-3.8 and 20.5-21.0) the transmitter is saturated, so the value is the
  span end it is pinned at: an O2 or gas transmitter saturated high reads span-high and trips on
  its thresholds, one pinned low reads span-low (and the core's stuck check watches it).
  Clamping also keeps a small zero drift (3.95 mA) from reading as "out of range" below 0 %.
"""

from __future__ import annotations

import math

from hal.base import FAULT_LOOP_HIGH, FAULT_LOOP_LOW

LOOP_LOW_MA = 3.6      # NE43: below this the signal has failed
LOOP_HIGH_MA = 21.0    # NE43: above this the signal has failed
MEASURE_LOW_MA = 3.8   # NE43 measuring band (documentation and probe output)
MEASURE_HIGH_MA = 20.5
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


def scale_loop(ma: float, span: tuple[float, float]) -> tuple[float, str | None]:
    """Loop current -> (value, fault). A failed loop gives (nan, fault code)."""
    if not ma >= LOOP_LOW_MA:          # also catches NaN: a current we could not read is low
        return math.nan, FAULT_LOOP_LOW
    if ma > LOOP_HIGH_MA:
        return math.nan, FAULT_LOOP_HIGH
    lo, hi = span
    value = lo + (ma - 4.0) * (hi - lo) / 16.0
    return min(max(value, lo), hi), None
