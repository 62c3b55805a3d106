"""Load and validate the plant configuration (TOML). CPython only.

Why so strict: this file decides when a crusher full of charged cells may run. Every mistake is
reported (file, table, key, bound) and the controller refuses to start on any of them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.configtools import InputFileError, Section, fmt, read_toml
from controller.link.settings import MqttSettings, read_mqtt
from controller.names import INPUTS, O2_SENSORS, OUTPUTS, SENSORS
from hal.bindings import read_binding

# Thresholds the core reads, with the keys each must have. Order of keys: low to high.
LEVEL_THRESHOLDS = ("h2_cell", "lel_cell", "lel_rto", "co_cell", "hf_room", "temp_gas", "temp_material")
# Outputs whose safe (no power) state is fixed: they start motion or feed material.
MUST_BE_SAFE_OFF = ("crusher", "feed", "alarm")


class ConfigError(InputFileError):
    """The configuration is wrong; `errors` lists every problem found, one line each."""


@dataclass(frozen=True)
class SensorConfig:
    name: str
    unit: str
    low: float
    high: float
    stale_s: float
    stuck_s: float
    resolution: float
    hardware: dict[str, Any]


@dataclass(frozen=True)
class InputConfig:
    name: str
    pin: int
    active_low: bool


@dataclass(frozen=True)
class OutputConfig:
    name: str
    pin: int
    active_low: bool
    safe: bool


@dataclass(frozen=True)
class PlantConfig:
    path: str
    sha256: str
    cell_id: str
    scan_period_s: float
    overrun_trip_count: int
    remote_reset: bool
    timers: dict[str, float]
    sensors: dict[str, SensorConfig]
    thresholds: dict[str, dict[str, float]]
    o2_group: tuple[str, ...]
    inputs: dict[str, InputConfig]
    outputs: dict[str, OutputConfig]
    heartbeat_pin: int
    mqtt: MqttSettings
    raw: dict[str, Any] = field(repr=False, default_factory=dict)
    calibration: dict[str, float] = field(default_factory=lambda: {k: v[0] for k, v in CALIBRATION.items()})

    def safe_outputs(self) -> dict[str, bool]:
        return {name: self.outputs[name].safe for name in OUTPUTS}

    def core_params(self) -> dict[str, Any]:
        """The plain data the MicroPython-compatible core needs: numbers, tuples, dicts."""
        ms = {k: int(round(v * 1000)) for k, v in self.timers.items()}
        return {
            "scan_period_ms": int(round(self.scan_period_s * 1000)),
            "overrun_trip_count": self.overrun_trip_count,
            "remote_reset": self.remote_reset,
            "timers_ms": ms,
            "sensors": tuple(
                (s.name, s.low, s.high, int(round(s.stale_s * 1000)), int(round(s.stuck_s * 1000)),
                 s.resolution)
                for s in (self.sensors[n] for n in SENSORS)
            ),
            "thresholds": {k: dict(v) for k, v in self.thresholds.items()},
            "safe": tuple(self.outputs[n].safe for n in OUTPUTS),
        }


TIMERS = {
    # key: (default, min, max)
    "self_test_s": (2.0, 0.1, 60.0),
    "purge_hold_s": (10.0, 1.0, 600.0),
    "purge_timeout_s": (600.0, 10.0, 7200.0),
    "warning_hold_s": (5.0, 0.0, 60.0),
    "rundown_s": (15.0, 0.0, 300.0),
    "reset_hold_s": (5.0, 1.0, 600.0),
    "feedback_timeout_s": (2.0, 0.1, 30.0),
}

CALIBRATION = {
    # key: (default, min, max), in days. Gas sensors (names.CALIBRATED_SENSORS) drift and poison:
    # a bump test proves they still answer gas, a calibration resets their span.
    "bump_interval_days": (30.0, 1.0, 180.0),
    "calibration_interval_days": (180.0, 1.0, 730.0),
    "grace_days": (7.0, 0.0, 30.0),
}


def load(path: str | Path) -> PlantConfig:
    """Read and validate `path`; raise ConfigError listing every problem."""
    path = Path(path)
    data, blob = read_toml(path, ConfigError)
    return parse(data, str(path), hashlib.sha256(blob).hexdigest())


def parse(data: dict[str, Any], name: str = "<config>", sha256: str = "") -> PlantConfig:
    errors: list[str] = []
    root = Section(name, "", data, errors)

    cell = root.table("cell")
    cell_id = cell.string("id", nonempty=True)
    if isinstance(cell_id, str) and (any(c in cell_id for c in "#+/ ") or not cell_id.isascii()):
        cell.key_error("id", "must be ASCII without spaces, '/', '#' or '+' (it is an MQTT topic level)")
    scan_period_s = cell.number("scan_period_s", 0.1, minval=0.02, maxval=1.0)
    overrun_trip_count = cell.integer("overrun_trip_count", 5, minval=1, maxval=100)
    remote_reset = cell.boolean("remote_reset", False)
    cell.check_unknown()

    timers_s = root.table("timers")
    timers = {k: timers_s.number(k, d, minval=lo, maxval=hi) for k, (d, lo, hi) in TIMERS.items()}
    timers_s.check_unknown()

    sensors = _read_sensors(root.table("sensors"))
    thresholds = _read_thresholds(root.table("thresholds"), sensors)
    o2_group = _read_voting(root.table("voting"), sensors)
    inputs = _read_inputs(root.table("inputs"))
    outputs = _read_outputs(root.table("outputs"))
    watchdog = root.table("watchdog", {})
    heartbeat_pin = watchdog.integer("heartbeat_pin", 26, minval=0, maxval=63)
    watchdog.check_unknown()
    cal = root.table("calibration", {})
    calibration = {k: cal.number(k, d, minval=lo, maxval=hi) for k, (d, lo, hi) in CALIBRATION.items()}
    cal.check_unknown()
    mqtt = read_mqtt(root.table("mqtt", {}))

    pins = [(f"inputs.{n}", c.pin) for n, c in inputs.items()]
    pins += [(f"outputs.{n}", c.pin) for n, c in outputs.items()]
    pins.append(("watchdog.heartbeat_pin", heartbeat_pin))
    seen: dict[int, str] = {}
    for where, pin in pins:
        if pin in seen:
            errors.append(f"{name}: [{where}] pin = {pin} is already used by [{seen[pin]}]")
        seen[pin] = where
    root.check_unknown()
    if errors:
        raise ConfigError(errors)
    return PlantConfig(
        path=name, sha256=sha256, cell_id=cell_id, scan_period_s=scan_period_s,
        overrun_trip_count=overrun_trip_count, remote_reset=remote_reset, timers=timers,
        sensors=sensors, thresholds=thresholds, o2_group=o2_group, inputs=inputs,
        outputs=outputs, heartbeat_pin=heartbeat_pin, mqtt=mqtt, raw=data, calibration=calibration,
    )


def _require_names(section: Section, expected: tuple[str, ...], what: str) -> None:
    for key in section.data:
        if key not in expected:
            section.used.add(key)
            section.error(f"unknown {what} '{key}' (likely a typo; expected: {', '.join(expected)})")
    for key in expected:
        if key not in section.data:
            section.error(f"missing {what} '{key}'")


def _read_sensors(section: Section) -> dict[str, SensorConfig]:
    _require_names(section, SENSORS, "sensor")
    sensors = {}
    for name in SENSORS:
        if name not in section.data:
            continue
        s = section.table(name)
        low, high = s.pair("range")
        sensors[name] = SensorConfig(
            name=name,
            unit=s.string("unit", nonempty=True),
            low=low,
            high=high,
            stale_s=s.number("stale_s", minval=0.05, maxval=60.0),
            stuck_s=s.number("stuck_s", minval=1.0, maxval=3600.0),
            resolution=s.number("resolution", above=0.0, maxval=max(high - low, 1e-9) / 10),
            hardware=read_binding(s.table("hardware")),
        )
        s.check_unknown()
    return sensors


def _level(section: Section, name: str, sensors: dict[str, SensorConfig],
           keys: tuple[str, ...] = ("warning", "trip")) -> dict[str, float]:
    t = section.table(name)
    values = {k: t.number(k) for k in keys}
    sensor = sensors.get(name)
    for k, v in values.items():
        if sensor is not None and v == v and not sensor.low <= v <= sensor.high:
            t.key_error(k, f"must lie inside the sensor's range [{fmt(sensor.low)}, {fmt(sensor.high)}]")
    return values | {"_section": t}  # type: ignore[return-value]


def _read_thresholds(section: Section, sensors: dict[str, SensorConfig]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    o2_range = sensors.get("o2_a")
    o2 = section.table("o2")
    v = {k: o2.number(k, minval=0.0, maxval=21.0)
         for k in ("start_permissive", "warning", "trip")}
    v["permissive_hysteresis"] = o2.number("permissive_hysteresis", 0.3, above=0.0, maxval=5.0)
    v["deviation"] = o2.number("deviation", 0.5, above=0.0, maxval=10.0)
    o2.require_order("warning", "trip", v["warning"], v["trip"])
    o2.require_order("start_permissive", "warning", v["start_permissive"], v["warning"])
    if v["start_permissive"] + v["permissive_hysteresis"] >= v["trip"]:
        o2.error("start_permissive + permissive_hysteresis must stay below trip "
                 f"({fmt(v['start_permissive'] + v['permissive_hysteresis'])} >= {fmt(v['trip'])})")
    if o2_range is not None and v["trip"] > o2_range.high:
        o2.key_error("trip", "must lie inside the O2 sensors' range")
    o2.check_unknown()
    out["o2"] = v

    for name in LEVEL_THRESHOLDS:
        values = _level(section, name, sensors)
        t = values.pop("_section")  # type: ignore[arg-type]
        t.require_order("warning", "trip", values["warning"], values["trip"])
        t.check_unknown()
        out[name] = values

    values = _level(section, "dp_cell", sensors, ("warning_low", "warning_high", "trip"))
    t = values.pop("_section")  # type: ignore[arg-type]
    t.require_order("warning_low", "warning_high", values["warning_low"], values["warning_high"], "below")
    t.require_order("warning_high", "trip", values["warning_high"], values["trip"])
    t.check_unknown()
    out["dp_cell"] = values

    values = _level(section, "n2_supply", sensors, ("low_low", "low"))
    t = values.pop("_section")  # type: ignore[arg-type]
    t.require_order("low_low", "low", values["low_low"], values["low"], "below")
    t.check_unknown()
    out["n2_supply"] = values

    for name, has_warning, window_max in (("co_rise", False, 120.0), ("temp_rise", True, 600.0),
                                          ("dp_rise", False, 60.0)):
        t = section.table(name)
        values = {"trip": t.number("trip", above=0.0),
                  "window_s": t.number("window_s", minval=0.5, maxval=window_max)}
        if has_warning:
            values["warning"] = t.number("warning", above=0.0)
            t.require_order("warning", "trip", values["warning"], values["trip"])
        t.check_unknown()
        out[name] = values

    section.check_unknown()
    return out


def _read_voting(section: Section, sensors: dict[str, SensorConfig]) -> tuple[str, ...]:
    o2 = section.table("o2")
    names = o2.string_list("sensors")
    o2.check_unknown()
    section.check_unknown()
    if names and sorted(names) != sorted(O2_SENSORS):
        o2.key_error("sensors", f"must name the three O2 sensors {', '.join(O2_SENSORS)} once each (2oo3)")
        return O2_SENSORS
    units = {sensors[n].unit for n in names if n in sensors}
    if len(units) > 1:
        o2.key_error("sensors", "must all have the same unit")
    return tuple(names) if names else O2_SENSORS


def _read_inputs(section: Section) -> dict[str, InputConfig]:
    _require_names(section, INPUTS, "input")
    inputs = {}
    for name in INPUTS:
        if name in section.data:
            t = section.table(name)
            inputs[name] = InputConfig(name, t.integer("pin", minval=0, maxval=63),
                                       t.boolean("active_low", False))
            t.check_unknown()
    return inputs


def _read_outputs(section: Section) -> dict[str, OutputConfig]:
    _require_names(section, OUTPUTS, "output")
    outputs = {}
    for name in OUTPUTS:
        if name in section.data:
            t = section.table(name)
            outputs[name] = OutputConfig(name, t.integer("pin", minval=0, maxval=63),
                                         t.boolean("active_low", False), t.boolean("safe"))
            # Crusher, feed and horn must be off with no power: de-energise to trip.
            if name in MUST_BE_SAFE_OFF and outputs[name].safe:
                t.key_error("safe", "must be false: this output must be off with no power")
            t.check_unknown()
    return outputs
