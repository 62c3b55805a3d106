"""Property-based tests of the safety core (hypothesis stateful).

Generators are biased towards the dangerous states: a rule drives the cell to RUNNING, values
are drawn near and above their trip limits, and faults and inputs flip often. After every single
scan an independent oracle checks the invariants:
- the crusher and the feed are never on outside RUNNING/STOPPING, the feed never without the crusher;
- a trip condition present while the state guards it gives TRIPPED, crusher and feed off, in that scan;
- TRIPPED is left only through an accepted reset, and only to PURGING;
- in TRIPPED every output is in its configured safe state (the horn may be acknowledged).
`test_planted_bug_is_found` proves the machine can fail: a core that ignores H2 is caught.
"""

import os

import pytest
from corekit import QUIET, Bench, params
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from controller import core as core_mod
from controller.names import INPUTS, OUTPUTS, SENSORS

P = params()
TH = P["thresholds"]
RES = {s[0]: s[5] for s in P["sensors"]}
LEVELS = {  # sensor -> trip limit for the single-sensor level trips
    "h2_cell": TH["h2_cell"]["trip"], "lel_cell": TH["lel_cell"]["trip"], "lel_rto": TH["lel_rto"]["trip"],
    "co_cell": TH["co_cell"]["trip"], "hf_room": TH["hf_room"]["trip"], "temp_gas": TH["temp_gas"]["trip"],
    "temp_material": TH["temp_material"]["trip"], "dp_cell": TH["dp_cell"]["trip"],
}
OPERATING = ("IDLE", "PURGING", "READY", "RUNNING", "STOPPING")
INERT = ("PURGING", "READY", "RUNNING", "STOPPING")
SAFE = {name: safe for name, safe in zip(OUTPUTS, P["safe"], strict=True)}


def value_for(sensor: str, level: str) -> float:
    if sensor in LEVELS:
        trip = LEVELS[sensor]
        quiet = QUIET[sensor]
        return {"quiet": quiet, "half": (quiet + trip) / 2, "below": trip - 10 * RES[sensor],
                "trip": trip + 10 * RES[sensor], "far": trip * 1.2 + 1}[level]
    if sensor.startswith("o2_"):
        return {"quiet": 0.5, "half": 1.6, "below": 2.3, "trip": 2.7, "far": 8.0}[level]
    return {"quiet": 6.0, "half": 4.5, "below": 3.0, "trip": 2.0, "far": 0.5}[level]   # n2_supply


class CoreMachine(RuleBasedStateMachine):
    core_factory = None   # a planted-bug test swaps in a broken core

    @initialize()
    def boot(self):
        self.b = Bench(params())
        if self.core_factory is not None:
            self.b.core = self.core_factory(params())
        self.b.run(2.5)

    # -- one scan, checked ----------------------------------------------------------------------
    def checked_scan(self, commands=()):
        b = self.b
        before = b.core.state_name
        must_trip = self.oracle_trip(before)
        press = b.inputs["local_reset"] and not b.core.prev_local_reset
        b.scan(commands)
        c = b.core
        after = c.state_name
        out = dict(zip(OUTPUTS, c.outputs, strict=True))
        if after not in ("RUNNING", "STOPPING"):
            assert not out["crusher"] and not out["feed"], (after, out)
        if out["feed"]:
            assert out["crusher"] and after == "RUNNING"
        if must_trip:
            assert after == "TRIPPED", (before, after, must_trip, c.causes())
            assert not out["crusher"] and not out["feed"]
        if before == "TRIPPED" and after != "TRIPPED":
            resets = [r for (a, _s), r in zip(commands, c.command_results, strict=False) if a == "reset"]
            assert press or any(r[0] for r in resets), "left TRIPPED without an accepted reset"
            assert after == "PURGING"
        if after == "TRIPPED":
            for name in OUTPUTS:
                if name != "alarm":
                    assert out[name] == SAFE[name], (name, out)

    def oracle_trip(self, state):
        """Trip conditions computed independently of the core's code."""
        b = self.b
        found = []
        if state in OPERATING:
            for sensor, limit in LEVELS.items():
                if sensor in b.faults:
                    found.append("sensor_fault:" + sensor)
                elif b.values[sensor] - 4 * RES[sensor] >= limit:
                    found.append(sensor)
            if b.inputs["estop_ok"] is not True:
                found.append("estop")
        if state in INERT:
            if sum(1 for s in ("o2_a", "o2_b", "o2_c") if s in b.faults) >= 2:
                found.append("o2_vote_lost")
            if b.inputs["door_closed"] is not True:
                found.append("door_open")
        if state in ("RUNNING", "STOPPING"):
            high = sum(1 for s in ("o2_a", "o2_b", "o2_c")
                       if s in b.faults or b.values[s] - 4 * RES[s] >= TH["o2"]["trip"])
            if high >= 2:
                found.append("o2_high")
        return found

    # -- rules ----------------------------------------------------------------------------------
    @rule(n=st.integers(1, 40))
    def scans(self, n):
        for _ in range(n):
            self.checked_scan()

    @rule(action=st.sampled_from(("start", "start", "purge", "reset", "reset", "stop", "shutdown", "ack")),
          source=st.sampled_from(("local", "local", "remote")))
    def command(self, action, source):
        self.checked_scan(((action, source),))

    @rule()
    def drive_to_running(self):
        """Quiet the cell and walk it to RUNNING, as an operator would: the dangerous state."""
        b = self.b
        b.values = dict(QUIET)
        b.faults.clear()
        b.stale.clear()
        b.inputs.update({"estop_ok": True, "door_closed": True, "rto_ready": True, "local_reset": False})
        b.follow_crusher = True
        for _ in range(80):
            state = b.core.state_name
            if state == "RUNNING":
                return
            cmd = {"TRIPPED": "reset", "IDLE": "purge", "READY": "start"}.get(state)
            self.checked_scan(((cmd, "local"),) if cmd else ())

    # Sensors that guard a level trip are drawn twice as often as the others.
    @rule(sensor=st.sampled_from(SENSORS + tuple(LEVELS)),
          level=st.sampled_from(("quiet", "half", "below", "trip", "far")))
    def set_value(self, sensor, level):
        self.b.values[sensor] = value_for(sensor, level)
        self.checked_scan()

    @rule(sensor=st.sampled_from(SENSORS),
          mode=st.sampled_from(("disconnect", "crc", "loop_low", "clear", "clear", "nan")))
    def fault(self, sensor, mode):
        b = self.b
        b.faults.pop(sensor, None)
        if mode == "nan":
            b.values[sensor] = float("nan")
        elif mode == "clear":
            b.values[sensor] = QUIET[sensor]
        else:
            b.values[sensor] = QUIET[sensor]
            b.faults[sensor] = mode
        self.checked_scan()

    @rule(name=st.sampled_from(INPUTS), value=st.sampled_from((True, False, None)))
    def set_input(self, name, value):
        b = self.b
        if name == "crusher_running":
            b.follow_crusher = value is None
            if value is not None:
                b.inputs[name] = value
        else:
            b.inputs[name] = value
        self.checked_scan()

    @rule(overruns=st.sampled_from((0, 0, 2, 5)), write_ok=st.sampled_from((True, True, False)))
    def loop_health(self, overruns, write_ok):
        self.b.overruns = overruns
        self.b.write_ok = write_ok
        self.checked_scan()
        self.b.overruns = 0
        self.b.write_ok = True

    @invariant()
    def state_is_known(self):
        if hasattr(self, "b"):
            assert self.b.core.state_name in ("BOOT", "IDLE", "PURGING", "READY", "RUNNING", "STOPPING",
                                              "TRIPPED")


SETTINGS = settings(max_examples=150, stateful_step_count=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def test_core_invariants():
    # Under mutation testing (mutmut sets MUTANT_UNDER_TEST) every core call goes through a
    # trampoline; fewer examples keep a survivor's run within mutmut's timeout. The rule tests in
    # test_core.py do most of the killing; this machine catches the combinations.
    if os.environ.get("MUTANT_UNDER_TEST"):
        run_state_machine_as_test(CoreMachine, settings=settings(SETTINGS, max_examples=40))
    else:
        run_state_machine_as_test(CoreMachine, settings=SETTINGS)


class IgnoresHydrogen(core_mod.Core):
    """A planted bug: H2 readings are replaced by a quiet value before the core sees them."""

    def step(self, now, readings, inputs, commands=(), overruns=0, write_ok=True):
        readings = list(readings)
        i = SENSORS.index("h2_cell")
        readings[i] = (0.05, None, readings[i][2])
        return super().step(now, readings, inputs, commands, overruns, write_ok)


class PlantedBugMachine(CoreMachine):
    core_factory = IgnoresHydrogen


def test_planted_bug_is_found():
    with pytest.raises(AssertionError):
        run_state_machine_as_test(PlantedBugMachine, settings=settings(
            max_examples=300, stateful_step_count=40, deadline=None, database=None,
            phases=(Phase.generate,),   # finding it is the point; shrinking only costs time
            suppress_health_check=[HealthCheck.too_slow]))
