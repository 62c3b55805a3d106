"""Which chip on which bus serves which sensor: derived from the config's `hardware` bindings.

Why separate: the scan, the probe ("expected devices") and the docs' wiring table all need the
same grouping, and grouping must reject two sensors wired to the same ADC input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cellspec.names import SENSORS


class WiringError(ValueError):
    """Two sensors claim the same input, or one chip address is bound to two kinds."""


@dataclass
class DevicePlan:
    kind: str                      # "ads1115_4_20ma" | "mcp9600" | "sdp810"
    bus: int
    address: int
    # sensor name -> its binding dict (ADS1115: several channels; the others: one sensor)
    sensors: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{CHIP_NAMES[self.kind]} bus {self.bus} 0x{self.address:02X}"


CHIP_NAMES = {"ads1115_4_20ma": "ADS1115", "mcp9600": "MCP9600", "sdp810": "SDP810"}


def plan_devices(sensors: dict[str, Any]) -> list[DevicePlan]:
    """Group `config.sensors` (name -> SensorConfig) by (bus, address), in SENSORS order."""
    devices: dict[tuple[int, int], DevicePlan] = {}
    used_inputs: dict[tuple[int, int, int], str] = {}
    for name in SENSORS:
        hw = sensors[name].hardware
        key = (hw["bus"], hw["address"])
        dev = devices.get(key)
        if dev is None:
            dev = devices[key] = DevicePlan(hw["kind"], hw["bus"], hw["address"])
        elif dev.kind != hw["kind"]:
            raise WiringError(f"[sensors.{name}.hardware] bus {key[0]} address 0x{key[1]:02X} is "
                              f"already a {dev.kind} ({', '.join(dev.sensors)})")
        if hw["kind"] == "ads1115_4_20ma":
            where = (hw["bus"], hw["address"], hw["channel"])
            if where in used_inputs:
                raise WiringError(f"[sensors.{name}.hardware] bus {where[0]} address 0x{where[1]:02X} "
                                  f"channel {where[2]} is already used by {used_inputs[where]}")
            used_inputs[where] = name
        elif dev.sensors:
            # An MCP9600 or SDP810 measures one thing: a second sensor on it is a wiring mistake.
            raise WiringError(f"[sensors.{name}.hardware] bus {key[0]} address 0x{key[1]:02X} "
                              f"already serves {', '.join(dev.sensors)}")
        dev.sensors[name] = hw
    return list(devices.values())


def expected_addresses(devices: list[DevicePlan]) -> dict[int, dict[int, str]]:
    """bus -> {address: label} of every chip the config expects."""
    out: dict[int, dict[int, str]] = {}
    for dev in devices:
        out.setdefault(dev.bus, {})[dev.address] = f"{CHIP_NAMES[dev.kind]} ({', '.join(dev.sensors)})"
    return out
