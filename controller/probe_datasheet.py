"""`crushcell probe`: the datasheet checks of the sensor chips, after every sensor was read once.

- each 4-20 mA loop current against its channel's bands (NE43, `valid_ma`, `maintenance_ma`);
- the SDP810's scale factor word against the configured part;
- each thermocouple's open-circuit detection (`open_detect`), with the test a technician does.

Lines marked `!!` fail the probe, `??` are warnings. Pure: works on `cell.details()` and the config.
"""

from __future__ import annotations

from typing import Any, TextIO

from cellspec.bindings import NE43_FAILED_HIGH_MA, NE43_FAILED_LOW_MA, NE43_MEASURE_MA, SDP8XX_PARTS
from cellspec.names import SENSORS
from hal.hardware.mcp9600 import ST_INPUT_RANGE
from hal.hardware.scaling import classify_loop
from hal.hardware.sdp810 import part_of_scale

BIAS_NETWORK = ("MCP9600 datasheet section 6.3.3.1, Figure 6-6: RA = 2 MOhm from VDD to VIN+, "
                "RB = 2.49 MOhm from VIN+ to GND and another from VIN- to GND, 1 %")


def probe_datasheet(cell: Any, config: Any, out: TextIO) -> bool:
    details = cell.details()
    ok = probe_loops(details, config, out)
    ok = probe_sdp810(details, config, out) and ok
    return probe_thermocouples(details, config, out) and ok


def _line(out: TextIO, mark: str, name: str, text: str) -> None:
    print(f"  {mark:2} {name:14} {text}", file=out)


def _of_kind(config: Any, kind: str) -> list[str]:
    return [n for n in SENSORS if config.sensors[n].hardware.get("kind") == kind]


def probe_loops(details: dict[str, dict[str, Any]], config: Any, out: TextIO) -> bool:
    names = _of_kind(config, "ads1115_4_20ma")
    if not names:
        return True
    lo, hi = NE43_MEASURE_MA
    print(f"4-20 mA loops against their bands (NE43: measuring {lo:g} to {hi:g} mA, failure at or "
          f"below {NE43_FAILED_LOW_MA:g} and at or above {NE43_FAILED_HIGH_MA:g} mA)", file=out)
    ok = True
    for name in names:
        hw = config.sensors[name].hardware
        v_lo, v_hi = hw["valid_ma"]
        band = f"valid {v_lo:.2f}..{v_hi:.2f} mA"
        maint = hw.get("maintenance_ma")
        if maint is not None:
            band += f", maintenance {maint[0]:.2f}..{maint[1]:.2f} mA"
        ma = details[name].get("ma")
        if ma is None:
            _line(out, "!!", name, f"no current read ({details[name]['fault'] or 'no sample'})  [{band}]")
            ok = False
            continue
        fault = classify_loop(ma, hw["valid_ma"], maint)
        if fault == "maintenance":
            why = "in the MAINTENANCE band: the transmitter is not measuring"
        elif fault == "loop_low":
            why = "BELOW the valid band: broken wire, dead transmitter or failure signal"
        elif fault == "loop_high":
            why = "ABOVE the valid band: short or failure signal"
        elif not lo <= ma <= hi:
            why = "in band but outside NE43's measuring band: the transmitter is saturated"
        elif ma < 4.0 - 0.01:
            why = "in band, below 4 mA: check the transmitter's zero"
        else:
            why = "in band"
        mark = "!!" if fault else ("??" if why != "in band" else "  ")
        ok = ok and fault is None
        _line(out, mark, name, f"{ma:7.3f} mA  {why}  [{band}]")
    return ok


def probe_sdp810(details: dict[str, dict[str, Any]], config: Any, out: TextIO) -> bool:
    ok = True
    for name in _of_kind(config, "sdp810"):
        part = config.sensors[name].hardware["part"]
        want, span = SDP8XX_PARTS[part]
        print(f"SDP810 part ({name}: config part = {part}, {want} per Pa, -{span:g} to {span:g} Pa)",
              file=out)
        scale = details[name].get("scale")
        if scale is None:
            _line(out, "!!", name, "no answer: the scale factor could not be read "
                  f"({details[name]['fault'] or 'no sample'})")
            ok = False
        elif scale != want:
            _line(out, "!!", name, f"scale factor {scale} per Pa: that is the {part_of_scale(scale)}, "
                  f"not the configured {part}: fit the right part or correct `part` (and the range)")
            ok = False
        else:
            _line(out, "", name, f"scale factor {scale} per Pa: {part_of_scale(scale)}, as configured")
    return ok


def probe_thermocouples(details: dict[str, dict[str, Any]], config: Any, out: TextIO) -> bool:
    names = _of_kind(config, "mcp9600")
    if not names:
        return True
    print("Thermocouples: open-circuit detection (MCP9600 status bit 4)", file=out)
    ok = True
    biased = False
    for name in names:
        mode = config.sensors[name].hardware["open_detect"]
        status = details[name].get("status")
        fault = details[name]["fault"]
        if status is None:
            _line(out, "!!", name, f"open_detect = \"{mode}\": no status read ({fault or 'no sample'})")
            ok = False
            continue
        bit = int(status, 16) & ST_INPUT_RANGE
        if mode == "bias":
            biased = True
            if bit:
                _line(out, "!!", name, f"open_detect = \"bias\": status {status}, bit 4 SET: the "
                      "thermocouple is open (unplugged or broken)")
                ok = False
            else:
                _line(out, "", name, f"open_detect = \"bias\": status {status}, bit 4 clear: connected")
        else:
            _line(out, "??", name, f"open_detect = \"none\": status {status}: no bias network, an open "
                  "thermocouple is found only by plausibility (a jump, or pinned at the cold junction: "
                  "docs/hardware.md). Fit the bias network and set open_detect = \"bias\": "
                  f"{BIAS_NETWORK}")
            if bit:
                _line(out, "!!", name, "bit 4 SET: the input is out of range (input_range)")
                ok = False
    if biased:
        print("     open-circuit test of each \"bias\" thermocouple: unplug it at the amplifier and run the "
              "probe again: its line must show bit 4 SET and the sensor FAULT open_circuit; if it still "
              "shows a temperature the bias network is missing or wrong. Plug it back in.", file=out)
    return ok
