"""Hypothesis stateful tests of the whole controller: ScanLoop + SimulatedCell in simulated time.

Unlike test_core_properties (the core alone, values set by hand), here the plant answers: rules
send commands (local and remote, with an operator), plant events, sensor and output faults,
forced values near the limits, and advance time; a rule walks the cell to RUNNING, since the
dangerous states are where the invariants matter. After EVERY scan, on the outputs the simulated
cell actually applied:
- the crusher and the feed are never on outside RUNNING/STOPPING;
- a scan that trips has the crusher and the feed off in that same scan;
- TRIPPED is left only through an accepted reset in that scan, and only to PURGING.
`test_planted_bug_is_found` proves the machine can fail: a loop that writes each scan's outputs
one scan late is caught.
"""

import pickle
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from controller import config
from controller.loop import ScanLoop
from controller.names import COMMANDS, OUTPUTS, SENSORS
from hal.sim import EVENTS, SimulatedCell

CONFIG = config.load(Path(__file__).resolve().parents[1] / "config" / "cell.toml")
TH = CONFIG.thresholds
CRUSHING = ("RUNNING", "STOPPING")


class LateWriteLoop(ScanLoop):
    """A planted bug: the HAL gets the previous scan's outputs (a one-scan-late write)."""

    def scan(self, now_ms):
        io = self.io
        real_write = io.write_outputs
        previous = getattr(self, "_previous", None)

        def late(values):
            self._previous = list(values)
            return real_write(previous if previous is not None else values)

        io.write_outputs = late
        try:
            super().scan(now_ms)
        finally:
            del io.write_outputs


def fresh(loop_class):
    loop = loop_class(CONFIG, SimulatedCell(CONFIG, seed=5))
    loop.scan(0)
    return pickle.dumps(loop)


FRESH = {ScanLoop: fresh(ScanLoop), LateWriteLoop: fresh(LateWriteLoop)}


def near_limits(sensor):
    """Values around the sensor's warning and trip, and a quiet one: where decisions are made."""
    s = CONFIG.sensors[sensor]
    if sensor.startswith("o2_"):
        t = TH["o2"]
        marks = [0.3, t["start_permissive"], t["warning"], t["trip"], 8.0]
    elif sensor == "n2_supply":
        t = TH["n2_supply"]
        marks = [6.0, t["low"], t["low_low"], 0.5]
    elif sensor == "dp_cell":
        t = TH["dp_cell"]
        marks = [-80.0, t["warning_low"], t["warning_high"], t["trip"], 450.0]
    else:
        t = TH[sensor]
        marks = [s.low + (t["warning"] - s.low) / 10, t["warning"], t["trip"], min(s.high, t["trip"] * 1.3)]
    res = s.resolution
    return [m + d * 10 * res for m in marks for d in (-1, 1)]


VALUES = {s: near_limits(s) for s in SENSORS}


class LoopMachine(RuleBasedStateMachine):
    loop_class = ScanLoop

    @initialize()
    def start(self):
        self.loop = pickle.loads(FRESH[self.loop_class])
        self.scans = 0

    # -- one scan, checked --------------------------------------------------------------------------
    def scan(self):
        loop = self.loop
        core = loop.core
        before = core.state_name
        loop.scan(core.now + loop.period_ms)
        self.scans += 1
        after = core.state_name
        model = loop.io.model
        events = loop.drain_events()
        if after not in CRUSHING:
            assert not model.crusher_cmd and not model.feed_on, (before, after)
        if any(e["type"] == "trip" for e in events):
            assert not model.crusher_cmd and not model.feed_on, ("trip left crusher/feed on", events)
        if before == "TRIPPED" and after != "TRIPPED":
            resets = [e for e in events
                      if e["type"] == "command" and e["action"] == "reset" and e["accepted"]]
            assert resets, ("left TRIPPED without an accepted reset", events)
            assert after == "PURGING"

    def scan_for(self, seconds):
        for _ in range(int(seconds * 1000 / self.loop.period_ms)):
            self.scan()

    # -- rules ----------------------------------------------------------------------------------------
    @rule(n=st.integers(1, 30))
    def advance(self, n):
        for _ in range(n):
            self.scan()

    @rule(seconds=st.sampled_from((5.0, 20.0, 60.0)))
    def wait(self, seconds):
        self.scan_for(seconds)

    @rule(action=st.sampled_from(COMMANDS + ("start", "start", "reset")),
          source=st.sampled_from(("local", "local", "remote")), by=st.sampled_from((None, "ana")))
    def command(self, action, source, by):
        self.loop.submit(action, source, by=by)
        self.scan()

    @rule(name=st.sampled_from(EVENTS))
    def event(self, name):
        self.loop.io.event(name)
        self.scan()

    @rule(sensor=st.sampled_from(SENSORS),
          mode=st.sampled_from(("disconnect", "stuck", "nan", "out_of_range", "drift", "stale", "clear",
                                "clear")))
    def sensor_fault(self, sensor, mode):
        self.loop.io.inject_fault(sensor, mode)
        self.scan()

    @rule(output=st.sampled_from(OUTPUTS + ("crusher", "crusher")),
          mode=st.sampled_from(("welded", "clear")))
    def output_fault(self, output, mode):
        self.loop.io.inject_fault(output, mode)
        self.scan()

    @rule(data=st.data(), sensor=st.sampled_from(SENSORS))
    def force(self, data, sensor):
        value = data.draw(st.sampled_from(VALUES[sensor] + [None]))
        self.loop.io.force(sensor, value)
        self.scan()

    @rule()
    def drive_to_running(self):
        """Clear the plant and walk the cell to RUNNING as an operator would: the dangerous state."""
        io = self.loop.io
        for s in SENSORS:
            io.inject_fault(s, "clear")
            io.force(s, None)
        io.inject_fault("crusher", "clear")
        for e in ("estop_release", "door_close", "rto_restore", "n2_supply_restore", "air_ingress_end"):
            io.event(e)
        for _ in range(400):
            state = self.loop.core.state_name
            if state == "RUNNING":
                return
            cmd = {"TRIPPED": "reset", "IDLE": "purge", "READY": "start", "STOPPING": None}.get(state)
            if cmd is not None:
                self.loop.submit(cmd, "local")
            if state == "TRIPPED":
                self.loop.submit("ack", "local")
            self.scan_for(1.0)

    @invariant()
    def outputs_are_the_states(self):
        if hasattr(self, "loop"):
            core = self.loop.core
            if core.state_name == "TRIPPED":
                safe = CONFIG.safe_outputs()
                for name, value in zip(OUTPUTS[:-1], core.outputs[:-1], strict=True):
                    assert value == safe[name], (name, value)


SETTINGS = settings(max_examples=40, stateful_step_count=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def test_controller_invariants_over_the_simulated_cell():
    run_state_machine_as_test(LoopMachine, settings=SETTINGS)


class PlantedLateWrite(LoopMachine):
    loop_class = LateWriteLoop


def test_planted_bug_is_found():
    with pytest.raises(AssertionError):
        run_state_machine_as_test(PlantedLateWrite, settings=settings(
            max_examples=100, stateful_step_count=25, deadline=None, database=None,
            phases=(Phase.generate,), suppress_health_check=[HealthCheck.too_slow]))
