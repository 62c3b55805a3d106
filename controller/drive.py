"""Drive a real `Core` into each state and provoke each cause: what the cause-and-effect matrix measures.

Why: a matrix rendered from the tables it is meant to check proves nothing. Here every behaviour
column (where a cause trips, what the outputs do, where a permissive refuses, what a controlled stop
or an automatic transition reaches) is what `controller.core.Core` does when driven scan by scan,
the normal way, with the numbers of the plant's own parameters (`PlantConfig.core_params()`).

The world the driver simulates: every sensor sits at a quiet value (below every warning, inside its
range) plus an alternating noise of a few counts of its resolution, so that no sensor is judged
stuck or frozen; the inputs are healthy; the contactor feedback follows the crusher command. The O2
sensors read air in BOOT, IDLE and PURGING (a cell is full of air until its purge succeeds) and an
inert atmosphere from READY on. Each recipe below changes one thing (a cause's condition, a
permissive, a class of trip effects) from there.

A cause, stop, permissive, automatic transition or trip-effect class with no recipe here fails the
generation with `ProvocationError` naming it, and so does a cause that no state lets the driver
provoke: a new rule must come with the way to show what it does. CPython only (the matrix is a
document tool); no pytest imports.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cellspec.names import (
    CALIBRATED_SENSORS,
    INPUTS,
    O2_SENSORS,
    OUT_CRUSHER,
    SENSORS,
    STATES,
)
from controller import core as C

NOISE_COUNTS = 3          # alternating +/- this many counts of each sensor's resolution
AT_TRIP_COUNTS = 5        # "at the trip": this many counts above it (noise included, still at or above)
AIR_O2 = 20.9             # % O2 in air: what the cell holds before its purge succeeds
MARGIN_MS = 1000          # every hold runs this much longer than the time its rule names
INSTANT_MS = 1000         # a same-scan condition is held this long before "it does not trip here"
SLOW_SCAN_MS = 1000       # the scan period while holding a long timer (the slowest the config allows)
TRIPPED = "TRIPPED"
OPERATING_STATES = tuple(s for s in STATES if s != TRIPPED)   # where a cause can trip the core
RUNAWAY = "temp_material_high"   # the default-class trip the trip-effect rows start from
GOOD_INPUTS = {"estop_ok": True, "door_closed": True, "rto_ready": True, "crusher_running": False,
               "local_reset": False, "remote_enable": False}


class ProvocationError(LookupError):
    """A rule the driver cannot provoke (no recipe, or no state where it acts)."""


class DriveError(RuntimeError):
    """The core did not go where the normal way of operating the cell leads."""


# -- the simulated cell around the core ---------------------------------------------------------
class Driver:
    """A real Core with a scan-by-scan world: quiet sensors with noise, healthy inputs, a clock."""

    def __init__(self, params: dict[str, Any]):
        self.params = params
        self.core = C.Core(params, 0)
        self.period = int(params["scan_period_ms"])
        self.now = 0
        self.n = 0
        sensors = {s[0]: s for s in params["sensors"]}
        self.res = {name: float(sensors[name][5]) for name in SENSORS}
        self.range = {name: (float(sensors[name][1]), float(sensors[name][2])) for name in SENSORS}
        self.quiet = quiet_values(params)
        self.values = dict(self.quiet)
        self.air = min(AIR_O2, min(self.range[s][1] for s in O2_SENSORS) - 10 * max(
            self.res[s] for s in O2_SENSORS))
        for s in O2_SENSORS:
            self.values[s] = self.air
        self.faults: dict[str, str] = {}
        self.inputs = dict(GOOD_INPUTS)
        self.follow = True            # the contactor feedback follows the crusher command
        self.overruns = 0
        self.write_ok = True
        self.last: tuple[bool, ...] = tuple(self.core.outputs)

    def copy(self) -> Driver:
        return thaw(freeze(self))

    @property
    def state(self) -> str:
        return self.core.state_name

    def readings(self) -> list[tuple[float, str | None, int]]:
        self.n += 1
        jitter = NOISE_COUNTS if self.n % 2 else -NOISE_COUNTS
        values, res, faults, now = self.values, self.res, self.faults, self.now
        # NaN stays NaN (NaN + noise is NaN)
        return [(values[s] + jitter * res[s], faults.get(s), now) for s in SENSORS]

    def scan(self, commands: tuple[tuple[str, str], ...] = ()) -> tuple[bool, ...]:
        if self.follow:
            self.inputs["crusher_running"] = self.core.outputs[OUT_CRUSHER]
        ins = [self.inputs[n] for n in INPUTS]
        out = self.core.step(self.now, self.readings(), ins, commands, self.overruns, self.write_ok)
        self.now += self.period
        self.last = tuple(out)
        return self.last

    def command(self, action: str, source: str = "local") -> tuple[bool, str]:
        self.scan(((action, source),))
        return self.core.command_results[-1]

    def run_until(self, done: Callable[[Driver], bool], limit_ms: float) -> bool:
        end = self.now + limit_ms
        while self.now <= end:
            self.scan()
            if done(self):
                return True
        return False

    def set_o2(self, value: float) -> None:
        for s in O2_SENSORS:
            self.values[s] = value

    def state_events(self) -> list[dict[str, Any]]:
        return [e for e in self.core.events if e["type"] == "state"]


def freeze(d: Driver) -> bytes:
    """A driver as bytes: `thaw` gives an independent copy (faster than copy.deepcopy)."""
    return pickle.dumps(d, protocol=pickle.HIGHEST_PROTOCOL)


def thaw(blob: bytes) -> Driver:
    d: Driver = pickle.loads(blob)
    return d


def quiet_values(params: dict[str, Any]) -> dict[str, float]:
    """A healthy, inert, quiet cell from the parameters' own numbers: below every warning."""
    th = params["thresholds"]
    sensors = {s[0]: s for s in params["sensors"]}
    out = {}
    for name in SENSORS:
        lo, hi = float(sensors[name][1]), float(sensors[name][2])
        if name in O2_SENSORS:
            out[name] = th["o2"]["start_permissive"] / 3.0
        elif name == "dp_cell":
            out[name] = (th["dp_cell"]["warning_low"] + th["dp_cell"]["warning_high"]) / 2.0
        elif name == "n2_supply":
            out[name] = (th["n2_supply"]["low"] + hi) / 2.0
        else:
            out[name] = lo + 0.25 * (th[name]["warning"] - lo)
    return out


def at_trip(d: Driver, sensor: str, limit: float) -> float:
    return limit + AT_TRIP_COUNTS * d.res[sensor]


# -- the normal way into each state -----------------------------------------------------------
def _expect(d: Driver, state: str, how: str) -> None:
    if d.state != state:
        raise DriveError(f"{how}: the core is in {d.state}, not {state} (causes {d.core.causes()})")


def snapshots(params: dict[str, Any]) -> dict[str, bytes]:
    """A driver in each state, reached the normal way; TRIPPED by an E-stop pulse while RUNNING,
    and `TRIPPED:door` by a door pulse (for provoking `estop` itself in TRIPPED)."""
    tm = params["timers_ms"]
    d = Driver(params)
    snaps: dict[str, Driver] = {"BOOT": d.copy()}
    d.run_until(lambda x: x.state != "BOOT", tm["self_test_s"] + MARGIN_MS)
    _expect(d, "IDLE", "self-test of a healthy cell")
    snaps["IDLE"] = d.copy()
    ok, why = d.command("purge")
    _expect(d, "PURGING", f"purge from IDLE ({why})")
    snaps["PURGING"] = d.copy()
    for s in O2_SENSORS:
        d.values[s] = d.quiet[s]
    d.run_until(lambda x: x.state != "PURGING", tm["purge_hold_s"] + MARGIN_MS)
    _expect(d, "READY", "purge to an inert cell")
    snaps["READY"] = d.copy()
    ok, why = d.command("start")
    _expect(d, "RUNNING", f"start from READY ({why})")
    d.run_until(lambda x: False, INSTANT_MS)   # the contactor closes, the feed runs
    _expect(d, "RUNNING", "crushing")
    snaps["RUNNING"] = d.copy()
    stop = d.copy()
    ok, why = stop.command("stop")
    _expect(stop, "STOPPING", f"stop from RUNNING ({why})")
    snaps["STOPPING"] = stop
    for key, name in (("TRIPPED", "estop_ok"), ("TRIPPED:door", "door_closed")):
        t = d.copy()
        t.inputs[name] = False     # a pulse shorter than a scan, latched by the HAL
        t.scan()
        t.inputs[name] = True
        _expect(t, "TRIPPED", f"{name} pulse while RUNNING")
        snaps[key] = t
    for s in snaps.values():
        del s.core.events[:]
    return {k: freeze(v) for k, v in snaps.items()}


# -- recipes --------------------------------------------------------------------------------------
@dataclass
class Recipe:
    """How to provoke one condition: `setup` once, `each` before every scan, for `hold_ms` at most."""
    what: str                                   # what is done, in words (for the reader and errors)
    setup: Callable[[Driver], None]
    hold_ms: float
    each: Callable[[Driver, float], None] | None = None
    period_ms: int | None = None                # a longer scan period for a long timer (fewer scans)


def _set(**values: float) -> Callable[[Driver], None]:
    def setup(d: Driver) -> None:
        d.values.update(values)
    return setup


def _level(d0: Driver, sensor: str, limit: float) -> Callable[[Driver], None]:
    value = at_trip(d0, sensor, limit)
    return _set(**{sensor: value})


def _rise(p: dict[str, Any], d0: Driver, cause: str, sensor: str) -> Recipe:
    """A steep ramp: twice the rise trip over the window, reached within a third of a slot (so a
    rise warning cannot be held long enough for a controlled stop first), capped below the level
    trip of the same sensor."""
    rule = p["thresholds"][cause]
    per_s = 60.0 if cause == "temp_rise" else 1.0    # temp_rise is in K/min, the others per second
    window_ms = rule["window_s"] * 1000.0
    step = 2.0 * rule["trip"] * (window_ms / 1000.0) / per_s
    quiet = d0.quiet[sensor]
    level = p["thresholds"].get(sensor, {}).get("trip")
    if level is not None:
        step = min(step, 0.9 * (level - quiet))
    ramp_ms = max(float(d0.period), window_ms / 10.0 / 3.0)

    def each(d: Driver, t: float) -> None:
        d.values[sensor] = quiet + step * min(1.0, (t + d.period) / ramp_ms)

    return Recipe(f"{sensor} ramps up {step:g} in {ramp_ms:g} ms", lambda d: None,
                  window_ms * 2 + MARGIN_MS, each)


def cause_recipes(p: dict[str, Any]) -> dict[str, Recipe]:
    """One recipe per cause the core can latch (core.CAUSES)."""
    th, tm = p["thresholds"], p["timers_ms"]
    d0 = Driver(p)
    r: dict[str, Recipe] = {}
    o2 = th["o2"]
    a, b = O2_SENSORS[0], O2_SENSORS[1]
    r["o2_high"] = Recipe("two O2 sensors at the trip",
                          _set(**{a: at_trip(d0, a, o2["trip"]), b: at_trip(d0, b, o2["trip"])}), INSTANT_MS)
    r["o2_vote_lost"] = Recipe("two O2 sensors faulty",
                               lambda d: d.faults.update({a: "disconnect", b: "disconnect"}), INSTANT_MS)
    for cause, sensor in C.LEVEL_TRIPS:
        r[cause] = Recipe(f"{sensor} at its trip", _level(d0, sensor, th[sensor]["trip"]), INSTANT_MS)
    for cause, sensor in C.RISE_TRIPS:
        if cause not in r:                       # temp_rise: the first of its sensors
            r[cause] = _rise(p, d0, cause, sensor)
    n2 = d0.range["n2_supply"][0] + 0.5 * (th["n2_supply"]["low_low"] - d0.range["n2_supply"][0])
    o2_mid = (o2["warning"] + o2["trip"]) / 2.0

    def n2_low(d: Driver) -> None:
        d.values["n2_supply"] = n2
        d.set_o2(o2_mid)
    r["n2_supply_low"] = Recipe("n2_supply below low-low, voted O2 above its warning", n2_low, INSTANT_MS)
    r["estop"] = Recipe("estop_ok false", lambda d: d.inputs.update(estop_ok=False), INSTANT_MS)
    r["door_open"] = Recipe("door_closed false", lambda d: d.inputs.update(door_closed=False), INSTANT_MS)
    # Not inert, yet no O2 rule of another state fires: above the start permissive, below the level
    # at which READY loses it and below the O2 warning.
    never_inert = o2["start_permissive"] + 0.5 * min(o2["permissive_hysteresis"],
                                                     o2["warning"] - o2["start_permissive"])
    r["purge_timeout"] = Recipe("voted O2 held just above the start permissive (the cell never inerts)",
                                lambda d: d.set_o2(never_inert), tm["purge_timeout_s"] + MARGIN_MS,
                                period_ms=SLOW_SCAN_MS)

    def mismatch(d: Driver) -> None:
        d.follow = False

    def each_mismatch(d: Driver, _t: float) -> None:
        d.inputs["crusher_running"] = not d.core.outputs[OUT_CRUSHER]
    r["output_feedback:crusher"] = Recipe("contactor feedback opposite to the crusher command", mismatch,
                                          tm["feedback_timeout_s"] + MARGIN_MS, each_mismatch)

    def dropped(d: Driver) -> None:
        d.follow = False
        d.inputs["crusher_running"] = False
    r["contactor_dropped"] = Recipe("contactor feedback drops", dropped, INSTANT_MS)
    r["output_write"] = Recipe("the output write fails", lambda d: setattr(d, "write_ok", False), INSTANT_MS)
    r["scan_overrun"] = Recipe("overrun_trip_count late scans",
                               lambda d: setattr(d, "overruns", int(p["overrun_trip_count"])), INSTANT_MS)
    r["self_test"] = Recipe(f"{SENSORS[0]} faulty", lambda d: d.faults.update({SENSORS[0]: "disconnect"}),
                            INSTANT_MS)
    for s in SENSORS:
        r["sensor_fault:" + s] = Recipe(f"{s} faulty (disconnect)",
                                        lambda d, s=s: d.faults.update({s: "disconnect"}), INSTANT_MS)
    return r


def _deviation(d0: Driver, o2: dict[str, float]) -> Callable[[Driver], None]:
    """One O2 sensor off its peers by 1.2 x o2.deviation, every sensor below the O2 trip and the voted
    value below the O2 warning: above the inert peers if that fits, else failing low under them."""
    a, b, c = O2_SENSORS
    off = 1.2 * o2["deviation"]
    margin = 10 * max(d0.res[s] for s in O2_SENSORS)
    if d0.quiet[a] + off < o2["trip"] - margin:
        return _set(**{a: d0.quiet[a] + off})
    peers = off + margin
    if peers < o2["warning"] - margin:
        return _set(**{a: peers - off, b: peers, c: peers})
    raise ProvocationError("controlled stop 'o2_deviation_held': no O2 deviation below the O2 warning "
                           "and trip with these thresholds")


def stop_recipes(p: dict[str, Any]) -> dict[str, Recipe]:
    """One recipe per controlled stop (core.CONTROLLED_STOPS)."""
    th, tm = p["thresholds"], p["timers_ms"]
    d0 = Driver(p)
    o2 = th["o2"]
    a = O2_SENSORS[0]
    held = tm["warning_hold_s"] + MARGIN_MS
    deviate = _deviation(d0, o2)
    n2 = (th["n2_supply"]["low_low"] + th["n2_supply"]["low"]) / 2.0
    return {
        "warning_held": Recipe("h2_cell between its warning and its trip",
                               _set(h2_cell=(th["h2_cell"]["warning"] + th["h2_cell"]["trip"]) / 2.0), held),
        "o2_one_high": Recipe(f"{a} alone at the O2 trip", _set(**{a: at_trip(d0, a, o2["trip"])}),
                              INSTANT_MS),
        "o2_deviation_held": Recipe(f"{a} off its peers by 1.2 x o2.deviation", deviate,
                                    tm["deviation_hold_s"] + MARGIN_MS),
        "lel_rto_warning": Recipe("lel_rto between its warning and its trip",
                                  _set(lel_rto=(th["lel_rto"]["warning"] + th["lel_rto"]["trip"]) / 2.0),
                                  INSTANT_MS),
        "o2_vote_degraded": Recipe(f"{a} faulty", lambda d: d.faults.update({a: "disconnect"}), INSTANT_MS),
        "n2_supply_low": Recipe("n2_supply between low-low and low", _set(n2_supply=n2), INSTANT_MS),
        "rto_not_ready": Recipe("rto_ready false", lambda d: d.inputs.update(rto_ready=False), INSTANT_MS),
    }


@dataclass
class PermissiveRecipe:
    """Violate one permissive alone (`breaks`), command, then satisfy it again (`undo`)."""
    state: str                                  # where the command is given
    breaks: Callable[[Driver], None]
    undo: Callable[[Driver], None]
    source: str = "local"                       # the command's source while violated
    met_source: str = "local"                   # ... once satisfied
    settle_ms: float = 0.0                      # how long the core may take to accept once satisfied
    cannot_fail: str = ""                       # why this plant's config leaves nothing to violate


def _cycle_permissive(p: dict[str, Any]) -> Callable[[Driver], None]:
    o2 = p["thresholds"]["o2"]
    lost = o2["start_permissive"] + o2["permissive_hysteresis"]
    high = (lost + o2["warning"]) / 2.0 if o2["warning"] > lost else lost + 0.1
    tm = p["timers_ms"]

    def breaks(d: Driver) -> None:
        for _ in range(int(p["permissive_loss_limit"])):
            d.set_o2(high)
            d.run_until(lambda x: x.state == "PURGING", INSTANT_MS)
            for s in O2_SENSORS:
                d.values[s] = d.quiet[s]
            d.run_until(lambda x: x.state == "READY", tm["purge_hold_s"] + MARGIN_MS)
            _expect(d, "READY", "READY lost its permissive, then inerted again")
    return breaks


def permissive_recipes(p: dict[str, Any]) -> dict[str, PermissiveRecipe]:
    """One recipe per permissive (core.PERMISSIVES)."""
    th, tm = p["thresholds"], p["timers_ms"]
    o2 = th["o2"]
    a, b = O2_SENSORS[0], O2_SENSORS[1]
    off_delay = C.ALARM_OFF_DELAY_MS + MARGIN_MS
    recover = tm["vote_recovery_s"] + off_delay
    between = (o2["start_permissive"] + o2["start_permissive"] + o2["permissive_hysteresis"]) / 2.0
    overdue = CALIBRATED_SENSORS[0]

    def quiet_o2(d: Driver) -> None:
        for s in O2_SENSORS:
            d.values[s] = d.quiet[s]

    def ack_local(d: Driver) -> None:
        d.command("ack", "local")

    return {
        "estop_closed": PermissiveRecipe("IDLE", lambda d: d.inputs.update(estop_ok=False),
                                         lambda d: d.inputs.update(estop_ok=True)),
        "door_closed": PermissiveRecipe("IDLE", lambda d: d.inputs.update(door_closed=False),
                                        lambda d: d.inputs.update(door_closed=True)),
        "o2_vote": PermissiveRecipe("IDLE", lambda d: d.faults.update({a: "disconnect", b: "nan"}),
                                    lambda d: d.faults.clear(), settle_ms=recover),
        "remote_enable": PermissiveRecipe("READY", lambda d: d.inputs.update(remote_enable=False),
                                          lambda d: d.inputs.update(remote_enable=True), "remote", "remote"),
        "inerting_held": PermissiveRecipe("READY", _cycle_permissive(p), ack_local, settle_ms=off_delay),
        "o2_all_healthy": PermissiveRecipe("READY", lambda d: d.faults.update({a: "disconnect"}),
                                           lambda d: d.faults.clear(), settle_ms=recover),
        "o2_below_permissive": PermissiveRecipe("READY", lambda d: d.set_o2(between), quiet_o2),
        "no_alarm": PermissiveRecipe(
            "READY", _set(h2_cell=(th["h2_cell"]["warning"] + th["h2_cell"]["trip"]) / 2.0),
            lambda d: d.values.update(h2_cell=d.quiet["h2_cell"]), settle_ms=off_delay),
        "rto_ready": PermissiveRecipe("READY", lambda d: d.inputs.update(rto_ready=False),
                                      lambda d: d.inputs.update(rto_ready=True), settle_ms=off_delay),
        "crusher_off": PermissiveRecipe(
            "READY", lambda d: (setattr(d, "follow", False), d.inputs.update(crusher_running=True)),
            lambda d: setattr(d, "follow", True)),
        "calibration_in_date": PermissiveRecipe(
            "READY", lambda d: d.core.set_calibration((overdue,), (overdue,)),
            lambda d: (d.core.set_calibration((), ()), ack_local(d)), settle_ms=off_delay),
        "state_writable": PermissiveRecipe(
            "READY", lambda d: d.core.set_platform_alarms(("state_write_failed",)),
            lambda d: (d.core.set_platform_alarms(()), ack_local(d)), settle_ms=off_delay),
        "clock_plausible": PermissiveRecipe(
            "READY", lambda d: d.core.set_platform_alarms(("clock_implausible",)),
            lambda d: (d.core.set_platform_alarms(()), ack_local(d)), settle_ms=off_delay),
        "reset_source": PermissiveRecipe(
            "TRIPPED", lambda d: d.run_until(lambda x: False, tm["reset_hold_s"] + MARGIN_MS),
            lambda d: None, "remote", "local",
            cannot_fail="remote_reset = true: any source may reset" if p["remote_reset"] else ""),
        "causes_clear": PermissiveRecipe("TRIPPED", lambda d: None, lambda d: None,
                                         settle_ms=tm["reset_hold_s"] + MARGIN_MS),
    }


def automatic_recipes(p: dict[str, Any]) -> dict[str, tuple[str, Recipe]]:
    """One recipe per automatic transition (core.AUTOMATIC): (state it starts from, recipe)."""
    tm, o2 = p["timers_ms"], p["thresholds"]["o2"]
    lost = o2["start_permissive"] + o2["permissive_hysteresis"]
    high = (lost + o2["warning"]) / 2.0 if o2["warning"] > lost else lost + 0.1

    def inert(d: Driver) -> None:
        for s in O2_SENSORS:
            d.values[s] = d.quiet[s]
    return {
        "self_test_passed": ("BOOT", Recipe("a healthy cell powers up", lambda d: None,
                                            tm["self_test_s"] + MARGIN_MS)),
        "inerted": ("PURGING", Recipe("O2 falls to the inert value", inert, tm["purge_hold_s"] + MARGIN_MS)),
        "permissive_lost": ("READY", Recipe("voted O2 rises above the permissive and its hysteresis",
                                            lambda d: d.set_o2(high), INSTANT_MS)),
        "rundown_done": ("STOPPING", Recipe("the crusher runs down", lambda d: None,
                                            tm["rundown_s"] + MARGIN_MS)),
    }


@dataclass
class EffectRecipe:
    """Make one class of trip effects present (`setup`) and absent again (`undo`) while TRIPPED."""
    signal: str
    limits: tuple[str, ...]
    setup: Callable[[Driver], None]
    undo: Callable[[Driver], None]


def effect_recipes(p: dict[str, Any]) -> dict[str, EffectRecipe]:
    """One recipe per class of trip effects (core.TRIP_EFFECTS)."""
    th = p["thresholds"]
    d0 = Driver(p)
    rto = (th["lel_rto"]["warning"] + th["lel_rto"]["trip"]) / 2.0
    return {
        "rto_flammable": EffectRecipe("lel_rto", ("thresholds.lel_rto.warning",), _set(lel_rto=rto),
                                      lambda d: d.values.update(lel_rto=d.quiet["lel_rto"])),
        "overpressure": EffectRecipe("dp_cell", ("thresholds.dp_cell.trip",),
                                     _level(d0, "dp_cell", th["dp_cell"]["trip"]),
                                     lambda d: d.values.update(dp_cell=d.quiet["dp_cell"])),
        "door_open": EffectRecipe("door_closed", (), lambda d: d.inputs.update(door_closed=False),
                                  lambda d: d.inputs.update(door_closed=True)),
    }


def _recipe(table: dict[str, Any], kind: str, name: str) -> Any:
    try:
        return table[name]
    except KeyError:
        raise ProvocationError(f"no provocation recipe for {kind} {name!r}: add one to "
                               "controller/drive.py") from None


# -- measurements ---------------------------------------------------------------------------------
@dataclass
class Trip:
    """What provoking one cause from one state did."""
    state: str
    tripped: bool                  # went TRIPPED with this cause latched (TRIPPED: it joined the latch)
    latched: tuple[str, ...] = ()  # every cause latched in the trip scan
    outputs: tuple[bool, ...] = ()
    acked: tuple[bool, ...] = ()   # the outputs after an `ack`, the condition still present
    became: str = ""               # the state reached instead, when it did not trip
    after_ms: float = 0.0          # how long after the provocation began


@dataclass
class Transition:
    """A state change the core took (controlled stop, automatic, a permissive met)."""
    source: str
    target: str
    cause: str                     # the cause recorded on the state event
    outputs: tuple[bool, ...]
    later: tuple[bool, ...]        # one scan later (the contactor feedback has followed)
    acked: tuple[bool, ...]        # after an `ack`


@dataclass
class Refusal:
    """A permissive violated alone: what the core answered."""
    accepted: bool
    reason: str
    own: bool                      # refused by this row's own check, first
    first: str                     # the permissive that refused first (when not own)
    tripped: tuple[str, ...]       # the core tripped instead, with these causes
    met: Transition | None = None
    became: str = ""               # the state the violation alone took the core to, before any command
    cannot_fail: str = ""          # the config leaves nothing to violate (and why)


@dataclass
class Effect:
    """A set of trip-effect classes made present after a runaway trip."""
    classes: tuple[str, ...]
    outputs: tuple[bool, ...]
    acked: tuple[bool, ...]
    reverts: bool                  # the gas outputs went back to the default once they were gone
    default: tuple[bool, ...]


@dataclass
class Matrix:
    trips: dict[str, list[Trip]] = field(default_factory=dict)
    stops: dict[str, list[Transition]] = field(default_factory=dict)
    stop_states: dict[str, list[str]] = field(default_factory=dict)
    permissives: dict[str, Refusal] = field(default_factory=dict)
    automatic: dict[str, Transition] = field(default_factory=dict)
    effects: list[Effect] = field(default_factory=list)


def _ack(d: Driver, each: Callable[[Driver, float], None] | None, t0: int) -> tuple[bool, ...]:
    if each is not None:
        each(d, d.now - t0)
    return d.scan((("ack", "local"),))


def provoke(snaps: dict[str, bytes], cause: str, recipe: Recipe, state: str) -> Trip:
    """Provoke `cause` in `state` (TRIPPED: does it join the latch?) and record what the core does."""
    # In TRIPPED, from a latch of another cause: the E-stop pulse's, or for `estop` the door pulse's.
    key = "TRIPPED:door" if state == TRIPPED and cause == "estop" else state
    d = thaw(snaps[key])
    p = d.params
    hold = recipe.hold_ms + (p["timers_ms"]["self_test_s"] if state == "BOOT" else 0)
    recipe.setup(d)
    if recipe.period_ms is not None:
        d.period = recipe.period_ms
    t0 = d.now
    while d.now - t0 <= hold:
        if recipe.each is not None:
            recipe.each(d, d.now - t0)
        out = d.scan()
        if state == TRIPPED:
            if cause in d.core.causes():
                return Trip(state, True, tuple(d.core.causes()), out, after_ms=d.now - t0)
        elif d.state != state:
            break
    if state == TRIPPED or d.state != TRIPPED:
        return Trip(state, False, became=d.state if d.state != state else "", after_ms=d.now - t0)
    latched = tuple(d.core.causes())
    after = d.now - d.period - t0
    return Trip(state, cause in latched, latched, out, _ack(d, recipe.each, t0),
                "" if cause in latched else TRIPPED, after)


def _transition(d: Driver, source: str, out: tuple[bool, ...]) -> Transition:
    """The transition just taken (`out`: its scan's outputs), then one scan on, then an `ack`."""
    target = d.state
    events = d.state_events()
    cause = events[-1]["cause"] if events else ""
    later = d.scan()
    return Transition(source, target, cause, out, later, d.scan((("ack", "local"),)))


def stop(snaps: dict[str, bytes], reason: str, recipe: Recipe, state: str) -> Transition | None:
    """Provoke a controlled stop's condition in `state`; the transition when it brought that stop."""
    d = thaw(snaps[state])
    recipe.setup(d)
    t0 = d.now
    while d.now - t0 <= recipe.hold_ms:
        out = d.scan()
        if d.state != state:
            break
    if d.state == state:
        return None
    tr = _transition(d, state, out)
    return tr if stop_reason(tr.cause) == reason else None


def stop_reason(cause: str) -> str:
    """The CONTROLLED_STOPS row a state event's cause names: `controlled_stop:warning:h2_cell` is
    `warning_held`, `controlled_stop:<reason>` is `<reason>`; anything else is ""."""
    head, _, rest = cause.partition(":")
    if head != "controlled_stop":
        return ""
    return "warning_held" if rest.startswith("warning:") else rest


def automatic(snaps: dict[str, bytes], event: str, source: str, recipe: Recipe) -> Transition:
    d = thaw(snaps[source])
    recipe.setup(d)
    t0 = d.now
    while d.now - t0 <= recipe.hold_ms:
        out = d.scan()
        if d.state != source:
            tr = _transition(d, source, out)
            if tr.cause != event:
                raise ProvocationError(f"automatic {event!r}: {source} left by {tr.cause!r} instead")
            return tr
    raise ProvocationError(f"automatic {event!r}: the core stayed in {source} for {recipe.hold_ms:g} ms")


def _first_refusal(d: Driver, guard: str, source: str) -> str:
    for row in C.PERMISSIVES:
        if row[0] == guard and getattr(d.core, row[5])(source) is not None:
            return row[1]
    return ""


def _command_met(d: Driver, action: str, source: str, state: str, settle_ms: float) -> Transition:
    end = d.now + settle_ms + MARGIN_MS
    while True:
        ok, why = d.command(action, source)
        if ok:
            return _transition(d, state, d.last)
        if d.now > end:
            raise ProvocationError(f"{action} from {state} still refused once satisfied: {why}")
        d.run_until(lambda x: False, 500)


def permissive(snaps: dict[str, bytes], row: tuple[Any, ...], recipe: PermissiveRecipe) -> Refusal:
    guard, check = row[0], row[5]
    action = [t[1] for t in C.TRANSITIONS if t[3] == guard][0]
    d = thaw(snaps[recipe.state])
    recipe.breaks(d)
    if recipe.cannot_fail:
        met = _command_met(d, action, recipe.source, recipe.state, recipe.settle_ms)
        return Refusal(False, "", False, "", (), met, cannot_fail=recipe.cannot_fail)
    d.scan()
    if d.state != recipe.state:   # the violation alone moved the core (an E-stop trips at once)
        met = _command_met(thaw(snaps[recipe.state]), action, recipe.met_source, recipe.state, 0)
        return Refusal(False, "", False, "", tuple(d.core.causes()), met, d.state)
    ok, reason = d.command(action, recipe.source)
    if ok:   # not refused: a permissive that does not hold (the matrix says so, the tests fail)
        return Refusal(True, "", False, "", (), _transition(d, recipe.state, d.last))
    own_reason = getattr(d.core, check)(recipe.source)   # judged on the same scan as the command
    own = own_reason is not None and reason == own_reason
    first = "" if own else _first_refusal(d, guard, recipe.source)
    recipe.undo(d)
    met = _command_met(d, action, recipe.met_source, recipe.state, recipe.settle_ms)
    return Refusal(False, reason, own, first, (), met)


def effect(base: Driver, classes: tuple[str, ...], recipes: dict[str, EffectRecipe]) -> Effect:
    """Make `classes` present together in a tripped cell, then absent; record the outputs."""
    d = base.copy()
    default = d.scan()
    for name in classes:
        recipes[name].setup(d)
    out = d.scan()
    acked = d.scan((("ack", "local"),))
    for name in classes:
        recipes[name].undo(d)
    gas = slice(2, 6)
    reverts = d.run_until(lambda x: x.last[gas] == default[gas], 10 * MARGIN_MS)
    if d.state != TRIPPED:
        raise DriveError(f"trip effects {classes}: the core left TRIPPED ({d.state})")
    return Effect(classes, out, acked, reverts, default)


def runaway(snaps: dict[str, bytes], recipes: dict[str, Recipe]) -> Driver:
    """A cell tripped by a runaway (RUNAWAY) while crushing: where the trip-effect rows start."""
    d = thaw(snaps["RUNNING"])
    _recipe(recipes, "cause", RUNAWAY).setup(d)
    d.scan()
    if d.state != TRIPPED or RUNAWAY not in d.core.causes():
        raise DriveError(f"{RUNAWAY} did not trip RUNNING")
    return d


def subsets(names: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Every combination, smallest first, in table order: (), (a,), (b,), ..., (a, b), ..."""
    out: list[tuple[str, ...]] = [()]
    for size in range(1, len(names) + 1):
        out += [tuple(n for k, n in enumerate(names) if mask >> k & 1)
                for mask in range(1 << len(names)) if bin(mask).count("1") == size]
    return out


def measure(params: dict[str, Any]) -> Matrix:
    """Drive the core through every cause, stop, permissive, automatic transition and trip effect."""
    snaps = snapshots(params)
    m = Matrix()
    causes = cause_recipes(params)
    for cause in C.CAUSES:
        recipe = _recipe(causes, "cause", cause)
        m.trips[cause] = [provoke(snaps, cause, recipe, s) for s in OPERATING_STATES + (TRIPPED,)]
        if not any(t.tripped for t in m.trips[cause] if t.state != TRIPPED):
            raise ProvocationError(f"cause {cause!r} could not be provoked in any state ({recipe.what}): "
                                   "fix its recipe in controller/drive.py or the core")
    stops = stop_recipes(params)
    for row in C.CONTROLLED_STOPS:
        recipe = _recipe(stops, "controlled stop", row[0])
        got = [(s, stop(snaps, row[0], recipe, s)) for s in OPERATING_STATES]
        m.stops[row[0]] = [t for _s, t in got if t is not None]
        m.stop_states[row[0]] = [s for s, t in got if t is not None]
        if not m.stops[row[0]]:
            raise ProvocationError(f"controlled stop {row[0]!r} could not be provoked ({recipe.what})")
    perms = permissive_recipes(params)
    for row in C.PERMISSIVES:
        m.permissives[row[1]] = permissive(snaps, row, _recipe(perms, "permissive", row[1]))
    autos = automatic_recipes(params)
    for row in C.AUTOMATIC:
        source, recipe = _recipe(autos, "automatic transition", row[0])
        m.automatic[row[0]] = automatic(snaps, row[0], source, recipe)
    fx = effect_recipes(params)
    names = tuple(row[1] for row in C.TRIP_EFFECTS)
    for n in names:
        _recipe(fx, "trip-effect class", n)
    base = runaway(snaps, causes)
    m.effects = [effect(base, combo, fx) for combo in subsets(names)]
    return m


_CACHE: dict[str, Matrix] = {}


def measured(params: dict[str, Any]) -> Matrix:
    """`measure(params)`, cached in-process per parameter set (a generation takes about half a second)."""
    key = json.dumps(params, sort_keys=True)
    if key not in _CACHE:
        _CACHE[key] = measure(params)
    return _CACHE[key]

