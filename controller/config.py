"""Load and validate the plant configuration (TOML). CPython only.

Why so strict: this file decides when a crusher full of charged cells may run. Every mistake is
reported (file, table, key, bound) and the controller refuses to start on any of them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cellspec.bindings import range_problem, read_binding
from cellspec.busconfig import read_i2c
from cellspec.configtools import MISSING, InputFileError, Section, fmt, read_toml
from cellspec.names import INPUTS, O2_SENSORS, OUTPUTS, SENSORS
from controller import envelope
from controller.hmi.settings import HmiSettings, read_hmi
from controller.link.settings import MqttSettings, read_mqtt
from controller.link.sparkplug.settings import SparkplugSettings, read_sparkplug
from controller.logsetup import DEFAULT_LEVEL, LEVEL_NAMES

# Thresholds the core reads, with the keys each must have. Order of keys: low to high.
LEVEL_THRESHOLDS = ("h2_cell", "lel_cell", "lel_rto", "co_cell", "hf_room", "temp_gas", "temp_material")
# Sections added after the first release: what an older config must add (said in the error).
ADDED_LATER = {
    "outputs.horn": "the horn is a separate output since `alarm` became the beacon alone; "
                    "add it with pin, active_low and safe = false",
}


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
    permissive_loss_limit: int = 3         # [cell]
    late_scan_trip_periods: float = 5.0    # [cell]: one scan this many periods late trips (a stall)
    hal_backend: str = "hardware"          # [hal] backend: what `crushcell run` drives without --hal
    i2c: dict[int, dict[str, Any]] = field(default_factory=dict)   # [i2c.<bus>] lock-up recovery wiring
    vote_recovery_s: float = 10.0          # [voting.o2] recovery_s
    frozen_s: float = 60.0                 # [voting.o2] frozen_s
    log_level: str = "info"                # [logging] level: what `run` logs (-v / -q override it)
    hmi: HmiSettings = field(default_factory=HmiSettings)   # [hmi]: `crushcell hmi` (docs/hmi.md)
    sparkplug: SparkplugSettings = field(default_factory=SparkplugSettings)  # docs/sparkplug.md

    def safe_outputs(self) -> dict[str, bool]:
        return {name: self.outputs[name].safe for name in OUTPUTS}

    def core_params(self) -> dict[str, Any]:
        """The plain data the MicroPython-compatible core needs: numbers, tuples, dicts.

        Where each envelope key lands here: controller/envelope.py PARAM_PATHS (the core checks
        these values against the envelopes again with envelope.check_params)."""
        ms = {k: int(round(v * 1000)) for k, v in self.timers.items()}
        ms["deviation_hold_s"] = int(round(self.thresholds["o2"]["deviation_hold_s"] * 1000))
        ms["vote_recovery_s"] = int(round(self.vote_recovery_s * 1000))
        ms["frozen_s"] = int(round(self.frozen_s * 1000))
        thresholds = {k: dict(v) for k, v in self.thresholds.items()}
        del thresholds["o2"]["deviation_hold_s"]   # a time: in timers_ms, with the others
        return {
            "scan_period_ms": int(round(self.scan_period_s * 1000)),
            "overrun_trip_count": self.overrun_trip_count,
            "late_scan_trip_periods": self.late_scan_trip_periods,   # the scan loop's, checked here
            "permissive_loss_limit": self.permissive_loss_limit,
            "remote_reset": self.remote_reset,
            "timers_ms": ms,
            "sensors": tuple(
                (s.name, s.low, s.high, int(round(s.stale_s * 1000)), int(round(s.stuck_s * 1000)),
                 s.resolution)
                for s in (self.sensors[n] for n in SENSORS)
            ),
            "thresholds": thresholds,
            "safe": tuple(self.outputs[n].safe for n in OUTPUTS),
        }


TIMERS = {
    # key: default, in seconds. Bounds: controller/envelope.py (timers.<key>).
    "self_test_s": 2.0,
    "purge_hold_s": 10.0,
    "purge_timeout_s": 600.0,
    "warning_hold_s": 5.0,
    "rundown_s": 15.0,
    "reset_hold_s": 5.0,
    "feedback_timeout_s": 2.0,
    "feedback_window_s": 10.0,
}

HAL_BACKENDS = ("hardware", "sim", "mock")   # mock: the simulated cell (hal.SIMULATED)

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


class _Envelope:
    """Collects the values controller/envelope.py bounds, by dotted key, as they are read.

    A value is kept only when it was read without an error (a missing or mistyped key is
    already reported; its envelope and ordering rules are skipped rather than misfire)."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        self.values: dict[str, Any] = {}
        self.sections: dict[str, Section] = {}

    def read(self, section: Section, key: str, getter: Any, default: Any = MISSING, **kw: Any) -> Any:
        before = len(self.errors)
        value = getter(key, default, **kw)
        if len(self.errors) == before and (section.has(key) or default is not MISSING):
            full = f"{section.name}.{key}"
            self.values[full] = value
            self.sections[full] = section
        return value

    def number(self, section: Section, key: str, default: Any = MISSING) -> float:
        return self.read(section, key, section.number, default)

    def integer(self, section: Section, key: str, default: Any = MISSING) -> int:
        return self.read(section, key, section.integer, default)

    def boolean(self, section: Section, key: str, default: Any = MISSING) -> bool:
        return self.read(section, key, section.boolean, default)

    def pair(self, section: Section, key: str, default: Any = MISSING) -> tuple[float, float]:
        return self.read(section, key, section.pair, default)

    def report(self) -> None:
        """Every value outside its envelope, and every broken ordering rule, as a config error."""
        for key, _value, text in envelope.check(self.values.get, relative=True):
            section = self.sections[key]
            name = key[len(section.name) + 1:]
            if section.has(name):
                section.error(f"{name} = {fmt(section.data[name])} {text}")
            else:
                section.error(f"{name} (default {fmt(self.values[key])}) {text}")


def parse(data: dict[str, Any], name: str = "<config>", sha256: str = "") -> PlantConfig:
    errors: list[str] = []
    root = Section(name, "", data, errors)
    env = _Envelope(errors)

    cell = root.table("cell")
    cell_id = cell.string("id", nonempty=True)
    if cell_id and (any(c in cell_id for c in "#+/ ") or not cell_id.isascii()):
        cell.key_error("id", "must be ASCII without spaces, '/', '#' or '+' (it is an MQTT topic level)")
    scan_period_s = env.number(cell, "scan_period_s", 0.1)
    overrun_trip_count = env.integer(cell, "overrun_trip_count", 5)
    permissive_loss_limit = env.integer(cell, "permissive_loss_limit", 3)
    late_scan_trip_periods = env.number(cell, "late_scan_trip_periods", 5.0)
    remote_reset = cell.boolean("remote_reset", False)
    cell.check_unknown()

    timers_s = root.table("timers")
    timers = {k: env.number(timers_s, k, d) for k, d in TIMERS.items()}
    timers_s.check_unknown()

    sensors = _read_sensors(root.table("sensors"), env)
    thresholds = _read_thresholds(root.table("thresholds"), env)
    o2_group, vote_recovery_s, frozen_s = _read_voting(root.table("voting"), sensors, env)
    pins: list[tuple[str, int]] = []
    inputs = _read_inputs(root.table("inputs"), pins)
    outputs = _read_outputs(root.table("outputs"), env, pins)
    hal_s = root.table("hal", {})
    # Absent: the board. A plant config written before [hal] existed ran under the unit with
    # --hal hardware; a training board on the simulated cell says backend = "sim".
    hal_backend = hal_s.string("backend", "hardware", choices=HAL_BACKENDS)
    hal_s.check_unknown()
    watchdog = root.table("watchdog", {})
    heartbeat_pin = watchdog.integer("heartbeat_pin", 26, minval=0, maxval=63)
    watchdog.check_unknown()
    i2c = read_i2c(root.table("i2c", {}), pins, {s.hardware.get("bus") for s in sensors.values()})
    cal = root.table("calibration", {})
    calibration = {k: cal.number(k, d, minval=lo, maxval=hi) for k, (d, lo, hi) in CALIBRATION.items()}
    cal.check_unknown()
    mqtt = read_mqtt(root.table("mqtt", {}))
    logging_s = root.table("logging", {})
    log_level = logging_s.string("level", DEFAULT_LEVEL, choices=LEVEL_NAMES)
    logging_s.check_unknown()
    hmi = read_hmi(root.table("hmi", {}))
    sparkplug = read_sparkplug(root.table("sparkplug", {}), cell_id, SENSORS, mqtt.enabled, mqtt.client_id)
    env.report()

    pins.append(("watchdog.heartbeat_pin", heartbeat_pin))
    seen: dict[int, str] = {}
    for where, pin in pins:
        if pin in seen:
            errors.append(f"{name}: [{where}] pin = {pin} is already used by [{seen[pin]}]")
        seen[pin] = where
    root.check_unknown()
    if errors:
        raise ConfigError(errors)
    plant = PlantConfig(
        path=name, sha256=sha256, cell_id=cell_id, scan_period_s=scan_period_s,
        overrun_trip_count=overrun_trip_count, remote_reset=remote_reset, timers=timers,
        sensors=sensors, thresholds=thresholds, o2_group=o2_group, inputs=inputs,
        outputs=outputs, heartbeat_pin=heartbeat_pin, mqtt=mqtt, raw=data, calibration=calibration,
        permissive_loss_limit=permissive_loss_limit, vote_recovery_s=vote_recovery_s, frozen_s=frozen_s,
        late_scan_trip_periods=late_scan_trip_periods, hal_backend=hal_backend, i2c=i2c, log_level=log_level,
        hmi=hmi, sparkplug=sparkplug,
    )
    # The core checks its parameters again at construction; what passes here must pass there
    # (times are rounded to whole ms on the way).
    problems = envelope.check_params(plant.core_params())
    if problems:
        raise ConfigError([f"{name}: core parameters: {p}" for p in problems])
    return plant


def _require_names(section: Section, expected: tuple[str, ...], what: str) -> None:
    for key in section.data:
        if key not in expected:
            section.used.add(key)
            section.error(f"unknown {what} '{key}' (likely a typo; expected: {', '.join(expected)})")
    if section.missing:
        return   # the whole section is missing: reported once
    for key in expected:
        if key not in section.data:
            full = f"{section.name}.{key}"
            hint = ADDED_LATER.get(full)
            section.errors.append(f"{section.file}: missing section [{full}]: every {what} must be "
                                  "configured" + (f" ({hint})" if hint else ""))


def _read_sensors(section: Section, env: _Envelope) -> dict[str, SensorConfig]:
    _require_names(section, SENSORS, "sensor")
    sensors = {}
    for name in SENSORS:
        if name not in section.data:
            continue
        s = section.table(name)
        low, high = env.pair(s, "range")
        hardware = read_binding(s.table("hardware"))
        problem = range_problem(hardware, low, high)
        if problem:
            s.key_error("range", problem)
        sensors[name] = SensorConfig(
            name=name,
            unit=s.string("unit", nonempty=True),
            low=low,
            high=high,
            stale_s=env.number(s, "stale_s"),
            stuck_s=env.number(s, "stuck_s"),
            resolution=env.number(s, "resolution"),
            hardware=hardware,
        )
        s.check_unknown()
    return sensors


def _read_thresholds(section: Section, env: _Envelope) -> dict[str, dict[str, float]]:
    """Every threshold; bounds, order and sensor ranges: controller/envelope.py (env.report)."""
    out: dict[str, dict[str, float]] = {}
    o2 = section.table("o2")
    out["o2"] = {k: env.number(o2, k) for k in ("start_permissive", "warning", "trip")}
    out["o2"]["permissive_hysteresis"] = env.number(o2, "permissive_hysteresis", 0.3)
    out["o2"]["deviation"] = env.number(o2, "deviation", 0.5)
    out["o2"]["deviation_hold_s"] = env.number(o2, "deviation_hold_s", 30.0)
    o2.check_unknown()

    tables: list[tuple[str, tuple[str, ...]]] = [(n, ("warning", "trip")) for n in LEVEL_THRESHOLDS]
    tables += [("dp_cell", ("warning_low", "warning_high", "trip")), ("n2_supply", ("low_low", "low")),
               ("co_rise", ("trip", "window_s")), ("temp_rise", ("warning", "trip", "window_s")),
               ("dp_rise", ("trip", "window_s"))]
    for name, keys in tables:
        t = section.table(name)
        out[name] = {k: env.number(t, k) for k in keys}
        t.check_unknown()

    section.check_unknown()
    return out


def _read_voting(section: Section, sensors: dict[str, SensorConfig],
                 env: _Envelope) -> tuple[tuple[str, ...], float, float]:
    o2 = section.table("o2")
    names = o2.string_list("sensors")
    recovery_s = env.number(o2, "recovery_s", 10.0)
    frozen_s = env.number(o2, "frozen_s", 60.0)
    o2.check_unknown()
    section.check_unknown()
    if names and sorted(names) != sorted(O2_SENSORS):
        o2.key_error("sensors", f"must name the three O2 sensors {', '.join(O2_SENSORS)} once each (2oo3)")
        return O2_SENSORS, recovery_s, frozen_s
    units = {sensors[n].unit for n in names if n in sensors}
    if len(units) > 1:
        o2.key_error("sensors", "must all have the same unit")
    return (tuple(names) if names else O2_SENSORS), recovery_s, frozen_s


def _pin(t: Section, where: str, pins: list[tuple[str, int]]) -> int:
    before = len(t.errors)
    pin = t.integer("pin", minval=0, maxval=63)
    if len(t.errors) == before and t.has("pin"):
        pins.append((where, pin))
    return pin


def _read_inputs(section: Section, pins: list[tuple[str, int]]) -> dict[str, InputConfig]:
    _require_names(section, INPUTS, "input")
    inputs = {}
    for name in INPUTS:
        if name in section.data:
            t = section.table(name)
            inputs[name] = InputConfig(name, _pin(t, f"inputs.{name}", pins), t.boolean("active_low", False))
            t.check_unknown()
    return inputs


def _read_outputs(section: Section, env: _Envelope, pins: list[tuple[str, int]]) -> dict[str, OutputConfig]:
    """Every output; the safe states config cannot choose: envelope.SAFE_STATES (env.report)."""
    _require_names(section, OUTPUTS, "output")
    outputs = {}
    for name in OUTPUTS:
        if name in section.data:
            t = section.table(name)
            outputs[name] = OutputConfig(name, _pin(t, f"outputs.{name}", pins),
                                         t.boolean("active_low", False), env.boolean(t, "safe"))
            t.check_unknown()
    return outputs
