"""Validation of the `[i2c.<bus>]` tables: how the hardware backend recovers a locked-up I2C bus.

Why here: the recovery wiring belongs to the hardware backend (hal/hardware/busrecovery.py), but
config must reject a bad one before anything starts, on any machine, without vendor libraries.

    [i2c.1]
    recovery_scl_pin = 7       # GPIO wired onto SCL: pulsed low nine times, then a STOP
    recovery_sda_pin = 8       # GPIO wired onto SDA: senses it, and pulls it low for the STOP
    supply_cut_pin = 11        # optional: GPIO that cuts the bus's sensor supply while driven
    supply_cut_active_low = false
    supply_off_ms = 500        # how long the supply stays cut

Both recovery pins or neither; a supply cut pin alone is allowed (power cycle only).
"""

from __future__ import annotations

from typing import Any

from cellspec.configtools import Section

SUPPLY_OFF_MS = (100, 5000, 500)    # min, max, default: how long a power cycle cuts the supply


def read_i2c(section: Section, pins: list[tuple[str, int]], buses: set[int]) -> dict[int, dict[str, Any]]:
    """Every `[i2c.<bus>]` table -> {bus: recovery wiring}; `pins` collects the GPIOs used, `buses`
    are the bus numbers the sensors use (a table for any other bus is a mistake)."""
    out: dict[int, dict[str, Any]] = {}
    for key in list(section.data):
        if not (key.isdigit() and int(key) in buses):
            section.used.add(key)
            known = ", ".join(f"[i2c.{b}]" for b in sorted(buses)) or "none"
            section.error(f"unknown table [i2c.{key}]: not a bus any sensor uses (expected: {known})")
            continue
        bus = int(key)
        t = section.table(key)
        wiring: dict[str, Any] = {}
        for name in ("recovery_scl_pin", "recovery_sda_pin", "supply_cut_pin"):
            if t.has(name):
                before = len(t.errors)
                wiring[name] = t.integer(name, minval=0, maxval=27)
                if len(t.errors) == before:
                    pins.append((f"i2c.{bus}.{name}", wiring[name]))
            else:
                t.used.add(name)
                wiring[name] = None
        pair = ("recovery_scl_pin", "recovery_sda_pin")
        for key, other in (pair, pair[::-1]):
            if wiring[key] is None and wiring[other] is not None:
                t.error(f"missing key '{key}': {other} needs it (the STOP needs both lines)")
        wiring["supply_cut_active_low"] = t.boolean("supply_cut_active_low", False)
        lo, hi, default = SUPPLY_OFF_MS
        wiring["supply_off_ms"] = t.integer("supply_off_ms", default, minval=lo, maxval=hi)
        t.check_unknown()
        out[bus] = wiring
    return out
