"""Validation of the `hardware` binding of each sensor in config.

Why here: the binding belongs to the hardware backend, but config must reject a bad binding
before anything starts, on any machine, without importing vendor libraries.
"""

from __future__ import annotations

from typing import Any

from cellspec.configtools import Section

KINDS = ("ads1115_4_20ma", "mcp9600", "sdp810")
THERMOCOUPLES = ("K", "J", "T", "N", "S", "E", "B", "R")
ADS1115_DATA_RATES = (8, 16, 32, 64, 128, 250, 475, 860)
ADS1115_GAINS = (0.6666666666666666, 1, 2, 4, 8, 16)
ADS1115_FSR_V = (6.144, 4.096, 2.048, 1.024, 0.512, 0.256)   # full scale at each gain
LOOP_HEADROOM_A = 0.022   # the ADC must resolve 22 mA so a loop above 21 mA (NE43) is visible
# ADS1115 supply: datasheet SBAS444 recommended operating conditions, VDD 2.0 to 5.5 V; an input
# can be measured only up to VDD (section 9.3.3: "with VDD = 3.3 V and FSR = ±4.096 V, only
# signals up to VIN = ±3.3 V can be measured"). Reference wiring: the Pi's 3.3 V rail.
ADS1115_VDD_V = (2.0, 5.5)
DEFAULT_VDD_V = 3.3

# NAMUR NE43 (docs/hardware.md "NE43 bands per channel"). At or below 3.6 mA and at or above
# 21.0 mA the transmitter signals a failure; 3.8 to 20.5 mA is the measuring band.
NE43_FAILED_LOW_MA = 3.6
NE43_FAILED_HIGH_MA = 21.0
NE43_MEASURE_MA = (3.8, 20.5)
# Shunt tolerance plus ADC gain error the band limits must allow for: a current I reads anywhere
# in I x (1 -/+ LOOP_ERROR). A failure signal must be a fault at both ends of that spread.
LOOP_ERROR = 0.0025
# Valid band (a reading) by default: below 3.8 mA is a fault, since for a gas channel a low reading
# is the permissive direction; 20.9 mA keeps 21.0 mA x (1 - 0.25 %) = 20.9475 mA a fault.
DEFAULT_VALID_MA = (3.8, 20.9)
VALID_LOW_MIN_MA = NE43_FAILED_LOW_MA * (1 + LOOP_ERROR)     # 3.609: 3.6 mA read 0.25 % high
VALID_HIGH_MAX_MA = NE43_FAILED_HIGH_MA * (1 - LOOP_ERROR)   # 20.9475: 21.0 mA read 0.25 % low
# A maintenance band must lie inside NE43's failure region below 3.6 mA, and above this, so that
# a broken wire (0 mA) stays "loop_low" and is never reported as a transmitter in maintenance.
MAINTENANCE_MIN_MA = 1.0

# MCP9600 open-thermocouple detection: "bias" = the resistors of datasheet DS20005426 section
# 6.3.3.1 (Figure 6-6; on an MCP9601, VSENSE wired as in Figure 6-7) are fitted, so status bit 4
# means an open thermocouple; "none" = no bias: bit 4 is only "input range" and an open junction is
# found by plausibility (hal/hardware/mcp9600.py, docs/hardware.md).
OPEN_DETECT = ("bias", "none")

# SDP8xx parts: differential-pressure scale factor (counts per Pa, the third word of every answer)
# and the calibrated range (Pa), Sensirion SDP8xx datasheet.
SDP8XX_PARTS = {
    "SDP810-500Pa": (60, 500.0), "SDP800-500Pa": (60, 500.0),
    "SDP810-125Pa": (240, 125.0), "SDP800-125Pa": (240, 125.0),
}
DEFAULT_SDP8XX_PART = "SDP810-500Pa"


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
        binding["vdd_v"] = vdd = section.number("vdd_v", DEFAULT_VDD_V, minval=ADS1115_VDD_V[0],
                                                maxval=ADS1115_VDD_V[1])
        top = binding["shunt_ohm"] * LOOP_HEADROOM_A
        if fsr is not None and top > fsr:
            pass   # reported above, against the gain
        elif top > vdd + 1e-9:
            # Guards: the input clips at VDD whatever the gain: a 21.5 mA failure signal would read
            # as a valid mid-span current (250 ohm on 3.3 V clips at 13.2 mA).
            section.key_error("shunt_ohm", f"x 22 mA = {top:.3g} V is above vdd_v = {vdd:g} V: the ADS1115 "
                              f"measures an input only up to its supply, so the loop would clip at "
                              f"{vdd / binding['shunt_ohm'] * 1000:.1f} mA and a failed-high loop "
                              "would read as a valid current; use a smaller shunt or a higher supply")
        binding["valid_ma"] = _valid_band(section)
        binding["maintenance_ma"] = _maintenance_band(section)
    elif kind == "mcp9600":
        binding["address"] = section.integer("address", minval=0x60, maxval=0x67)
        binding["thermocouple"] = section.string("thermocouple", "K", choices=THERMOCOUPLES)
        if not section.has("open_detect") and not section.missing:
            section.used.add("open_detect")
            section.error("missing key 'open_detect': say whether the thermocouple has the open-circuit "
                          "bias resistors of MCP9600 datasheet section 6.3.3.1: \"bias\", or \"none\" "
                          "(open junctions are then found by plausibility only; docs/hardware.md)")
            binding["open_detect"] = "none"
        else:
            binding["open_detect"] = section.string("open_detect", "none", choices=OPEN_DETECT)
    elif kind == "sdp810":
        binding["address"] = section.integer("address", 0x25, minval=0x25, maxval=0x26)
        binding["part"] = section.string("part", DEFAULT_SDP8XX_PART, choices=tuple(SDP8XX_PARTS))
    else:
        # kind was wrong: read nothing more, but do not also report every other key as unknown.
        section.used.update(section.data)
    section.check_unknown()
    return binding


def _valid_band(section: Section) -> tuple[float, float]:
    """`valid_ma = [low, high]`: loop currents read as values; outside them a fault (NE43 + error)."""
    if not section.has("valid_ma"):
        section.used.add("valid_ma")
        return DEFAULT_VALID_MA
    before = len(section.errors)
    low, high = section.pair("valid_ma")
    if len(section.errors) > before:        # not a pair of rising numbers: already reported
        return DEFAULT_VALID_MA
    if not VALID_LOW_MIN_MA < low <= NE43_MEASURE_MA[0]:
        section.key_error("valid_ma", f"must start above {VALID_LOW_MIN_MA:.4g} mA and at most at "
                          f"{NE43_MEASURE_MA[0]:g} mA: NE43's 3.6 mA failure signal read {LOOP_ERROR:.2%} "
                          "high must still be a fault, and NE43's measuring band starts at 3.8 mA")
    elif not NE43_MEASURE_MA[1] <= high < VALID_HIGH_MAX_MA:
        section.key_error("valid_ma", f"must end at {NE43_MEASURE_MA[1]:g} mA or above and below "
                          f"{VALID_HIGH_MAX_MA:.6g} mA: NE43's measuring band ends at 20.5 mA, and its "
                          f"21.0 mA failure signal read {LOOP_ERROR:.2%} low must still be a fault")
    return (low, high)


def _maintenance_band(section: Section) -> tuple[float, float] | None:
    """Optional `maintenance_ma = [low, high]`: the transmitter's maintenance/inhibit current."""
    if not section.has("maintenance_ma"):
        section.used.add("maintenance_ma")
        return None
    before = len(section.errors)
    low, high = section.pair("maintenance_ma")
    if len(section.errors) > before:
        return None
    if not (MAINTENANCE_MIN_MA <= low and high <= NE43_FAILED_LOW_MA):
        section.key_error("maintenance_ma", f"must lie within {MAINTENANCE_MIN_MA:g} to "
                          f"{NE43_FAILED_LOW_MA:g} mA: inside NE43's failure region, so that it can never "
                          "hide a reading, and above a broken wire's 0 mA")
        return None
    return (low, high)


def range_problem(binding: dict[str, Any], low: float, high: float) -> str | None:
    """Why a sensor's configured `range` cannot be measured through its binding, or None."""
    if binding.get("kind") == "sdp810" and binding.get("part") in SDP8XX_PARTS:
        scale, span = SDP8XX_PARTS[binding["part"]]
        if low < -span or high > span:
            return (f"is wider than the {binding['part']} measures (-{span:g} to {span:g} Pa): its readings "
                    f"stop at about {32767 / scale:.1f} Pa, so a limit beyond that could never be reached")
    return None
