"""Validation of the `hardware` binding of each sensor in config.

Why here: the binding belongs to the hardware backend, but config must reject a bad binding
before anything starts, on any machine, without importing vendor libraries.
"""

from __future__ import annotations

from typing import Any

from controller.configtools import Section

KINDS = ("ads1115_4_20ma", "mcp9600", "sdp810")
THERMOCOUPLES = ("K", "J", "T", "N", "S", "E", "B", "R")
ADS1115_DATA_RATES = (8, 16, 32, 64, 128, 250, 475, 860)
ADS1115_GAINS = (0.6666666666666666, 1, 2, 4, 8, 16)
ADS1115_FSR_V = (6.144, 4.096, 2.048, 1.024, 0.512, 0.256)   # full scale at each gain
LOOP_HEADROOM_A = 0.022   # the ADC must resolve 22 mA so a loop above 21 mA (NE43) is visible


def read_binding(section: Section) -> dict[str, Any]:
    """Read one `[sensors.<name>.hardware]` table into a plain dict."""
    kind = section.string("kind", choices=KINDS)
    binding: dict[str, Any] = {"kind": kind, "bus": section.integer("bus", 1, minval=0, maxval=255)}
    if kind == "ads1115_4_20ma":
        binding["address"] = section.integer("address", minval=0x48, maxval=0x4B)
        binding["channel"] = section.integer("channel", minval=0, maxval=3)
        binding["shunt_ohm"] = section.number("shunt_ohm", 150.0, above=0.0, maxval=500.0)
        binding["span"] = section.pair("span")
        binding["data_rate"] = section.integer("data_rate", 128, minval=8, maxval=860)
        if binding["data_rate"] not in ADS1115_DATA_RATES:
            section.key_error("data_rate", "must be one of " + ", ".join(map(str, ADS1115_DATA_RATES)))
        binding["gain"] = gain = section.number("gain", 1.0, above=0.0, maxval=16.0)
        fsr = next((v for g, v in zip(ADS1115_GAINS, ADS1115_FSR_V, strict=True)
                    if abs(g - gain) <= 1e-3 * g), None)
        if fsr is None:
            section.key_error("gain", "must be one of 0.6667 (2/3), 1, 2, 4, 8, 16 (ADS1115 PGA)")
        elif binding["shunt_ohm"] * LOOP_HEADROOM_A > fsr:
            # A loop above 21 mA must still be measurable, or NAMUR "loop_high" could never be seen.
            section.key_error("gain", f"gives a {fsr} V full scale: {binding['shunt_ohm']:g} ohm x 22 mA = "
                              f"{binding['shunt_ohm'] * LOOP_HEADROOM_A:.3g} V would saturate the ADC; "
                              "use a lower gain or a smaller shunt")
    elif kind == "mcp9600":
        binding["address"] = section.integer("address", minval=0x60, maxval=0x67)
        binding["thermocouple"] = section.string("thermocouple", "K", choices=THERMOCOUPLES)
    elif kind == "sdp810":
        binding["address"] = section.integer("address", 0x25, minval=0x25, maxval=0x26)
    else:
        # kind was wrong: read nothing more, but do not also report every other key as unknown.
        section.used.update(section.data)
    section.check_unknown()
    return binding
