"""The simulated cell: a CellIO backend over the physics of `hal.sim_model`.

Why: the controller, the scenario runner and the tests need a plant that answers the outputs,
reacts with the real sensors' lags and noise, and fails the way real devices fail, all against
a clock the caller owns (`crushcell run` passes real time, `crushcell simulate` runs a shift as
fast as the CPU allows). Deterministic for a seed: one `random.Random(seed)`, nothing global.

Time: every read passes `now_ms`; the model integrates from the previous call to `now_ms` in
equal sub-steps of at most SUBSTEP_MS. Events, faults and writes take effect at the time of the
last read. A `now_ms` that goes backwards is ignored (no step).

Sensors: measured = first-order lag (SENSOR_TAU_S) of the true quantity + the sensor's zero
offset (SENSOR_ZERO_OFFSET) + gaussian noise (sd = NOISE_COUNTS x resolution), clamped into the
configured range. The three O2 cells get small distinct zero offsets, as real cells do. The
noise comes from a table of standard normals drawn once from the seeded generator, read from a
random start each scan (12 gauss() calls a scan would cost half the scan budget).

Sensor faults (`inject_fault(sensor, mode)`, SENSOR_FAULT_MODES), each exactly:
- disconnect:   Reading(nan, "disconnect", now)
- nan:          Reading(nan, None, now)
- out_of_range: Reading(high + 10 % of span, None, now), not clamped
- stuck:        Reading(last value returned, None, now), frozen exactly
- stale:        the last Reading returned, repeated with its old t_ms
- drift:        healthy reading + 2 % of span per minute since injection, clamped
- clear:        healthy again
Input faults (`inject_fault("crusher_running", mode)`, INPUT_FAULT_TARGETS, INPUT_FAULT_MODES):
- chatter:      the feedback read is a 5 Hz square wave whatever the contactor does: True for
                CHATTER_HALF_PERIOD_MS (100 ms), False for the next 100 ms, and so on, True from
                the injection time (a read at injection + k x 100 ms gives True for even k); the
                crusher itself still follows the contactor
- drop:         the contactor opens as if the hard-wired chain cut its coil: at once, and held open
                whatever the command (welded contacts excepted: they cannot open); the crusher
                stops turning and the feedback reads False; `estop_ok` is unaffected
- unreadable:   read_inputs gives None for crusher_running; the contactor works as commanded
- clear:        healthy again; after `drop` the contactor pulls in again after CONTACTOR_DELAY_MS
                if the command still asks for it
Output faults (`inject_fault(output, mode)`, OUTPUT_FAULT_MODES), one mode per output at a time:
- welded:       crusher: the contactor stays closed, the feedback stays True and the crusher runs
                whatever the command (E-stop and `drop` included); other outputs: recorded in
                `output_faults` only
- write_fail:   the relay board does not take writes of that output: write_outputs returns False
                and the output stays where it was (force_safe cannot move it either); the other
                outputs are written
- clear:        healthy again (a `write_fail` output moves at the next write)

Events: see EVENTS. `estop` also drops every output to its safe state (the controller's relays
are wired in series with the hard-wired E-stop chain) and the crusher contactor at once (its coil
drops out in tens of ms, inside a scan); `estop_release` restores the chain, and the contactor
pulls in again after CONTACTOR_DELAY_MS only if the crusher is still commanded. `door_open` lets
air in (DOOR_OPEN_LEAK_M3_MIN). `local_reset` presses the panel reset for RESET_PRESS_MS, and
at least until one read_inputs has returned it pressed (a scan late by more than that, at a high
--speed, must still see the press: the core acts on its rising edge). A
`thermal_runaway` while one is still burning is ignored.

Edge latch (EDGE_LATCHED_INPUTS: estop_ok, door_closed): an event that takes one of them from
True to False is latched until the next read_inputs, which returns False for it even if a later
event made it True again (a 40 ms pulse between two reads is seen once); that read clears the
latch and the read after it gives the live value. A pulse held across reads reads False for as
long as it lasts.

Outputs: until the first `write_outputs` they are in the configured safe state (no power). The
crusher turns only while its contactor is closed (`crusher_running`). `alarm` and `horn` have no
effect on the physics.

`force(sensor, value)` holds what that one sensor sees (offset and noise still apply, its lag is
bypassed); the physics underneath goes on, and `force(sensor, None)` lets the reading relax back
through the sensor's lag.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from operator import itemgetter

from cellspec.names import (
    EDGE_LATCHED_INPUTS,
    IN_CRUSHER,
    IN_DOOR,
    IN_ESTOP,
    IN_REMOTE,
    IN_RESET,
    IN_RTO,
    INPUTS,
    OUT_BOOST,
    OUT_CRUSHER,
    OUT_EXHAUST,
    OUT_FEED,
    OUT_PURGE,
    OUT_VENT,
    OUTPUTS,
    SENSORS,
)
from hal.base import FAULT_DISCONNECT, Reading
from hal.sim_model import (
    AIR_INGRESS_LEAK_M3_MIN,
    AIR_LEAK_M3_MIN,
    CONTACTOR_DELAY_S,
    N2_LOST_BAR,
    N2_NOMINAL_BAR,
    QUANTITY_OF_SENSOR,
    CellModel,
)

CONTACTOR_DELAY_MS = int(round(CONTACTOR_DELAY_S * 1000))  # crusher_running follows `crusher` this late
SUBSTEP_MS = 100                 # longest integration step
NOISE_COUNTS = 3.0               # noise sd in counts (resolution): a healthy sensor never looks stuck
DRIFT_SPAN_PER_MIN = 0.02        # `drift` fault: offset growth, fraction of the range span per minute
OUT_OF_RANGE_SPAN = 0.10         # `out_of_range` fault: this fraction of the span above the range high
RESET_PRESS_MS = 1000            # `local_reset` event: how long the button reads pressed
NOISE_TABLE_BITS = 14            # 16384 standard-normal draws made once per seed (speed, see below)
CHATTER_HALF_PERIOD_MS = 100     # `chatter` fault: a 5 Hz square wave, 100 ms closed, 100 ms open

# First-order lag of each sensor, s (T63 of the instrument).
SENSOR_TAU_S = {
    "o2_a": 3.0, "o2_b": 3.0, "o2_c": 3.0,     # electrochemical O2
    "lel_cell": 3.0, "lel_rto": 3.0,           # NDIR
    "h2_cell": 5.0, "co_cell": 5.0,            # electrochemical
    "hf_room": 10.0,                           # electrochemical HF
    "temp_gas": 1.0, "temp_material": 1.0,     # thermocouples
    "dp_cell": 0.05,                           # SDP8xx
    "n2_supply": 0.2,                          # pressure transmitter
}
# Calibration zero offset of each sensor, in its unit (0 where not listed).
SENSOR_ZERO_OFFSET = {"o2_a": 0.03, "o2_b": 0.06, "o2_c": 0.045}

SENSOR_FAULT_MODES = ("disconnect", "stuck", "nan", "out_of_range", "drift", "stale", "clear")
INPUT_FAULT_TARGETS = ("crusher_running",)
INPUT_FAULT_MODES = ("chatter", "drop", "unreadable", "clear")
OUTPUT_FAULT_MODES = ("welded", "clear", "write_fail")
EVENTS = (
    "thermal_runaway", "air_ingress", "air_ingress_end", "n2_supply_loss", "n2_supply_restore",
    "rto_trip", "rto_restore", "estop", "estop_release", "door_open", "door_close",
    "remote_enable_on", "remote_enable_off", "local_reset",
)

_NAN = float("nan")
_new_tuple = tuple.__new__


class SimulatedCell:
    """A deterministic simulated crushing cell implementing `hal.base.CellIO`."""

    def __init__(self, config, seed: int = 0):
        missing = [n for n in SENSORS if n not in QUANTITY_OF_SENSOR or n not in SENSOR_TAU_S]
        if missing:
            raise ValueError(f"hal.sim has no model for sensor(s) {', '.join(missing)}")
        self.config = config
        self.seed = seed
        self._rng = random.Random(seed)
        # Speed: gauss() costs about 0.7 us a call, 12 a scan. Draw a table of standard normals once
        # from the seeded generator and take each scan's 12 values from a random start in it.
        size = 1 << NOISE_TABLE_BITS
        table = [self._rng.gauss(0.0, 1.0) for _ in range(size)]
        self._noise = table + table[:len(SENSORS)]
        self.model = CellModel()
        self.heartbeats = 0
        self.closed = False
        self.output_faults: dict[str, str] = {}
        self.input_faults: dict[str, str] = {}

        sensors = [config.sensors[n] for n in SENSORS]
        self._lo = [s.low for s in sensors]
        self._hi = [s.high for s in sensors]
        self._span = [s.high - s.low for s in sensors]
        # Per-sensor (mean offset, noise sd, low, high) for the fast path.
        self._spec = [(SENSOR_ZERO_OFFSET.get(s.name, 0.0), NOISE_COUNTS * s.resolution, s.low, s.high)
                      for s in sensors]
        self._tau = [SENSOR_TAU_S[n] for n in SENSORS]
        self._alpha_cache: dict[float, list[float]] = {}
        self._pick = itemgetter(*(QUANTITY_OF_SENSOR[n] for n in SENSORS))
        self._lag = list(self._pick(self.model.quantities))
        self._n = len(SENSORS)

        # Sensor faults and forcing: per sensor, None when healthy / not forced.
        self._fault: list[str | None] = [None] * self._n
        self._fault_t0: list[int | None] = [None] * self._n   # drift: injection time
        self._frozen: list[Reading | None] = [None] * self._n   # stuck/stale: the held reading
        self._forced: list[float | None] = [None] * self._n
        self._faulted: tuple[int, ...] = ()     # indices of sensors with a fault
        self._forced_items: tuple[tuple[int, float], ...] = ()
        self._last: list[Reading] | None = None

        # Inputs (INPUTS order): the live values, and the edge-latched ones that went False since
        # the last read (a pulse shorter than a scan must still be seen once).
        self._inputs: list[bool | None] = [False] * len(INPUTS)
        self._inputs[IN_ESTOP] = True
        self._inputs[IN_DOOR] = True
        self._inputs[IN_RTO] = True
        self._latched = frozenset(INPUTS.index(n) for n in EDGE_LATCHED_INPUTS)
        self._dropped: set[int] = set()
        self._fb_signal: str | None = None     # chatter / unreadable: what the feedback read shows
        self._fb_t0: int | None = None         # chatter: injection time
        self._reset_until_ms = -1
        self._reset_unseen = False             # local_reset pressed, not yet returned by read_inputs
        self._estop = False
        # Outputs: the configured safe state, what was last commanded, and the indices the relay
        # board refuses to write (`write_fail`).
        self._safe = tuple(config.outputs[n].safe for n in OUTPUTS)
        self._cmd = self._safe
        self._write_fail: tuple[int, ...] = ()
        self._apply_outputs()
        self._t: int | None = None

    # -- time ------------------------------------------------------------------------------------

    def _alphas(self, h_ms: float) -> list[float]:
        a = self._alpha_cache.get(h_ms)
        if a is None:
            a = [1.0 - math.exp(-h_ms / 1000.0 / tau) for tau in self._tau]
            if len(self._alpha_cache) < 64:
                self._alpha_cache[h_ms] = a
        return a

    def _advance(self, now_ms: int) -> None:
        t = self._t
        if t is None:
            self._t = now_ms
            return
        dt = now_ms - t
        if dt <= 0:
            return   # same instant, or a clock that went backwards: no step
        n = -(-dt // SUBSTEP_MS)
        h_ms = dt / n
        alphas = self._alphas(h_ms)
        h = h_ms / 1000.0
        model = self.model
        step = model.step
        pick = self._pick
        lag = self._lag
        forced = self._forced_items
        for _ in range(n):
            step(h)
            tv = pick(model.quantities)
            lag = [x + (v - x) * a for x, v, a in zip(lag, tv, alphas, strict=True)]
            for i, f in forced:
                lag[i] = f              # a forced quantity bypasses the sensor lag
        self._lag = lag
        self._t = now_ms
        inputs = self._inputs
        inputs[IN_CRUSHER] = model.contactor
        inputs[IN_RESET] = now_ms < self._reset_until_ms or self._reset_unseen

    # -- CellIO ----------------------------------------------------------------------------------

    def read_sensors(self, now_ms: int) -> list[Reading]:
        self._advance(now_ms)
        start = self._rng.getrandbits(NOISE_TABLE_BITS)
        noise = self._noise[start:start + self._n]
        new = _new_tuple
        out = [
            new(Reading, ((lo if (v := x + off + sd * z) < lo else hi if v > hi else v), None, now_ms))
            for x, z, (off, sd, lo, hi) in zip(self._lag, noise, self._spec, strict=True)
        ]
        for i in self._faulted:
            out[i] = self._faulty_reading(i, out[i], now_ms, noise[i])
        self._last = out
        return out

    def _faulty_reading(self, i: int, healthy: Reading, now_ms: int, z: float) -> Reading:
        """What sensor `i` reports under its injected fault, given the reading it would give healthy."""
        mode = self._fault[i]
        if mode == "drift":
            if self._fault_t0[i] is None:
                self._fault_t0[i] = now_ms
            off, sd, lo, hi = self._spec[i]
            v = self._lag[i] + off + sd * z
            v += DRIFT_SPAN_PER_MIN * self._span[i] * (now_ms - self._fault_t0[i]) / 60000.0
            return Reading(lo if v < lo else hi if v > hi else v, None, now_ms)
        if mode == "disconnect":
            return Reading(_NAN, FAULT_DISCONNECT, now_ms)
        if mode == "nan":
            return Reading(_NAN, None, now_ms)
        if mode == "out_of_range":
            return Reading(self._hi[i] + OUT_OF_RANGE_SPAN * self._span[i], None, now_ms)
        if self._frozen[i] is None:       # stuck or stale before any reading: hold this one
            self._frozen[i] = healthy
        if mode == "stuck":
            return Reading(self._frozen[i].value, None, now_ms)
        return self._frozen[i]            # stale: the old reading, old t_ms and all

    def read_inputs(self, now_ms: int) -> list[bool | None]:
        self._advance(now_ms)
        out = self._inputs[:]
        if self._reset_unseen and out[IN_RESET]:
            self._reset_unseen = False   # the press has been read once: it ends after RESET_PRESS_MS
        dropped = self._dropped
        if dropped:
            # E-stop or door opened since the last read, even if closed again: report it once.
            for i in dropped:
                out[i] = False
            dropped.clear()
        signal = self._fb_signal
        if signal is not None:
            if signal == "unreadable":
                out[IN_CRUSHER] = None
            else:   # chatter
                if self._fb_t0 is None:
                    self._fb_t0 = self._t
                out[IN_CRUSHER] = ((self._t - self._fb_t0) // CHATTER_HALF_PERIOD_MS) % 2 == 0
        return out

    def write_outputs(self, values: Sequence[bool]) -> bool:
        if len(values) != len(OUTPUTS):
            raise ValueError(f"write_outputs needs {len(OUTPUTS)} values ({', '.join(OUTPUTS)}), "
                             f"got {len(values)}")
        return self._command(tuple(values))

    def force_safe(self) -> None:
        self._command(self._safe)

    def _command(self, values: tuple) -> bool:
        """Latch `values` as the command; False when the relay board refused some of them."""
        failing = self._write_fail
        if failing:
            # `write_fail`: those outputs keep their previous command; the others are written.
            cmd = list(values)
            for i in failing:
                cmd[i] = self._cmd[i]
            self._cmd = tuple(cmd)
            self._apply_outputs()
            return False
        self._cmd = values
        self._apply_outputs()
        return True

    def heartbeat(self) -> None:
        self.heartbeats += 1

    def close(self) -> None:
        self.force_safe()
        self.closed = True

    def open_panel(self, state_dir, loop):
        """The field panel of this simulated cell for a running controller (hal/sim_panel.py): a
        socket in `state_dir` that `crushcell panel` talks to. Only the simulated backend has one."""
        from hal.sim_panel import PanelServer, socket_path

        return PanelServer(socket_path(state_dir), self, loop)

    def _apply_outputs(self) -> None:
        # The E-stop chain is in series with our relays: pressed, every output is de-energised.
        v = self._safe if self._estop else self._cmd
        m = self.model
        m.crusher_cmd = bool(v[OUT_CRUSHER])
        m.feed_on = bool(v[OUT_FEED])
        m.purge_open = bool(v[OUT_PURGE])
        m.boost_open = bool(v[OUT_BOOST])
        m.exhaust_open = bool(v[OUT_EXHAUST])
        m.vent_open = bool(v[OUT_VENT])

    def _update_chain(self) -> None:
        """The hard-wired chain cuts the contactor coil while the E-stop is pressed or `drop` holds."""
        m = self.model
        m.open_chain(self._estop or self.input_faults.get("crusher_running") == "drop")
        self._inputs[IN_CRUSHER] = m.contactor

    def _set_input(self, i: int, value: bool) -> None:
        """Set input `i`; for an edge-latched one a True-to-False change is kept for the next read."""
        if not value and self._inputs[i] and i in self._latched:
            self._dropped.add(i)
        self._inputs[i] = value

    # -- faults, events, forcing ------------------------------------------------------------------

    def inject_fault(self, name: str, mode: str) -> None:
        """Make sensor, input or output `name` fail in `mode` (SENSOR_FAULT_MODES, INPUT_FAULT_MODES
        for INPUT_FAULT_TARGETS, OUTPUT_FAULT_MODES); see the module docstring for each mode."""
        if name in SENSORS:
            if mode not in SENSOR_FAULT_MODES:
                raise ValueError(f"unknown fault mode {mode!r} for sensor {name!r}; "
                                 f"expected one of: {', '.join(SENSOR_FAULT_MODES)}")
            i = SENSORS.index(name)
            self._fault[i] = None if mode == "clear" else mode
            self._fault_t0[i] = self._t     # None before the first read: set by that read
            # stuck and stale hold the last reading returned (the next one if none yet).
            self._frozen[i] = self._last[i] if (self._last is not None and mode in ("stuck", "stale")) \
                else None
            self._faulted = tuple(k for k, f in enumerate(self._fault) if f is not None)
        elif name in OUTPUTS:
            if mode not in OUTPUT_FAULT_MODES:
                raise ValueError(f"unknown fault mode {mode!r} for output {name!r}; "
                                 f"expected one of: {', '.join(OUTPUT_FAULT_MODES)}")
            if mode == "clear":
                self.output_faults.pop(name, None)
            else:
                self.output_faults[name] = mode
            self.model.welded = self.output_faults.get("crusher") == "welded"
            self._write_fail = tuple(OUTPUTS.index(n) for n, f in self.output_faults.items()
                                     if f == "write_fail")
            self._update_chain()    # welded contacts stay closed even with the chain open
        elif name in INPUT_FAULT_TARGETS:
            if mode not in INPUT_FAULT_MODES:
                raise ValueError(f"unknown fault mode {mode!r} for input {name!r}; "
                                 f"expected one of: {', '.join(INPUT_FAULT_MODES)}")
            if mode == "clear":
                self.input_faults.pop(name, None)
            else:
                self.input_faults[name] = mode
            self._fb_signal = mode if mode in ("chatter", "unreadable") else None
            self._fb_t0 = self._t           # None before the first read: set by that read
            self._update_chain()
        else:
            raise ValueError(f"unknown fault target {name!r}; expected a sensor ({', '.join(SENSORS)}), "
                             f"an input ({', '.join(INPUT_FAULT_TARGETS)}) "
                             f"or an output ({', '.join(OUTPUTS)})")

    def event(self, name: str) -> None:
        """Apply plant event `name` (one of EVENTS) at the time of the last read."""
        m = self.model
        inputs = self._inputs
        if name == "thermal_runaway":
            m.start_runaway()
        elif name == "air_ingress":
            m.leak_m3_min = AIR_INGRESS_LEAK_M3_MIN
        elif name == "air_ingress_end":
            m.leak_m3_min = AIR_LEAK_M3_MIN
        elif name == "n2_supply_loss":
            m.n2_target_bar = N2_LOST_BAR
        elif name == "n2_supply_restore":
            m.n2_target_bar = N2_NOMINAL_BAR
        elif name == "rto_trip":
            self._set_input(IN_RTO, False)
        elif name == "rto_restore":
            self._set_input(IN_RTO, True)
        elif name in ("estop", "estop_release"):
            self._estop = name == "estop"
            self._set_input(IN_ESTOP, not self._estop)
            self._apply_outputs()
            self._update_chain()     # the coil drops out at once; pulls in again only if commanded
        elif name in ("door_open", "door_close"):
            m.door_open = name == "door_open"
            self._set_input(IN_DOOR, not m.door_open)
        elif name in ("remote_enable_on", "remote_enable_off"):
            self._set_input(IN_REMOTE, name == "remote_enable_on")
        elif name == "local_reset":
            self._reset_until_ms = (self._t or 0) + RESET_PRESS_MS
            self._reset_unseen = True
            inputs[IN_RESET] = True
        else:
            raise ValueError(f"unknown event {name!r}; expected one of: {', '.join(EVENTS)}")

    def force(self, name: str, value: float | None) -> None:
        """Hold what sensor `name` measures at `value` (offset and noise still apply); None releases."""
        if name not in SENSORS:
            raise ValueError(f"unknown sensor {name!r} to force; expected one of: {', '.join(SENSORS)}")
        i = SENSORS.index(name)
        if value is None:
            self._forced[i] = None
        else:
            value = float(value)
            self._forced[i] = value
            self._lag[i] = value
        self._forced_items = tuple((k, f) for k, f in enumerate(self._forced) if f is not None)

    def snapshot(self) -> dict:
        """True (noise-free, lag-free) physical quantities, for debugging and tests."""
        m = self.model
        q = m.quantities
        return {
            "t_ms": self._t,
            "o2": q[0], "lel_cell": q[1], "h2_cell": q[2], "co_cell": q[3], "hf_room": q[4],
            "lel_rto": q[5], "temp_gas": q[6], "temp_material": q[7], "dp_cell": q[8],
            "n2_supply": q[9], "hf_cell": m.hf_cell,
            "n2_flow_m3_min": m.n2_m3_min, "air_in_m3_min": m.air_in_m3_min,
            "runaway_gas_m3_min": m.gas_m3_min, "runaway_burning": m.runaway_s >= 0.0,
            "load": m.load, "contactor": m.contactor, "crusher_running": m.contactor,
            "estop": self._estop, "door_open": m.door_open,
            "sensor_faults": {n: f for n, f in zip(SENSORS, self._fault, strict=True) if f is not None},
            "output_faults": dict(self.output_faults),
            "input_faults": dict(self.input_faults),
            "forced": {n: f for n, f in zip(SENSORS, self._forced, strict=True) if f is not None},
        }
