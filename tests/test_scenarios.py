"""Shipped scenarios end to end on the simulated cell, and the scenario format's errors."""

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cellspec.names import OUTPUTS
from controller import config, scenario

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ROOT / "config" / "scenarios"
CONFIG = config.load(ROOT / "config" / "cell.toml")


def run(name: str) -> list[dict]:
    out = io.StringIO()
    scenario.simulate(scenario.load(SCENARIOS / name), CONFIG, out)
    return [json.loads(line) for line in out.getvalue().splitlines()]


def run_with_truth(name: str) -> tuple[list[dict], list[tuple[float, str, dict, list[bool]]]]:
    """The event log and, every scan, (t, state, the cell's true quantities, the outputs).

    Why: hazards are judged on what the cell really does (true O2, pressure, HF in the room), not
    on what the controller believed; the simulated cell tells the truth.
    """
    from controller.loop import ScanLoop
    from hal.sim import SimulatedCell

    sc = scenario.load(SCENARIOS / name)
    cell = SimulatedCell(CONFIG, seed=sc.seed)
    loop = ScanLoop(CONFIG, cell)
    player = scenario.Player(sc, loop)
    log: list[dict] = loop.initial_events()
    truth: list[tuple[float, str, dict, list[bool]]] = []

    def after() -> None:
        log.extend(loop.drain_events())
        truth.append((loop.core.now / 1000.0, loop.core.state_name, cell.snapshot(), list(loop.core.outputs)))

    loop.run_simulated(int(sc.duration_s * 1000), before_scan=player, after_scan=after)
    log.append(scenario.end_record(loop))
    return log, truth


def outputs_at(log: list[dict], t: float) -> dict:
    """The outputs in force at time t (the last outputs event at or before t)."""
    current = None
    for e in log:
        if e["type"] == "outputs" and e["t"] <= t:
            current = e["outputs"]
    assert current is not None
    return current


def states(log):
    return [(e["from"], e["to"], e["cause"]) for e in log if e["type"] == "state"]


def check_log_shape(log):
    """Every log: starts with state + outputs, ends with end, time never goes back, and the crusher
    is never on outside RUNNING/STOPPING."""
    assert log[0] == {"t": 0.0, "type": "state", "from": None, "to": "BOOT", "cause": "start"}
    assert log[1]["type"] == "outputs" and set(log[1]["outputs"]) == set(OUTPUTS)
    assert log[-1]["type"] == "end"
    times = [e["t"] for e in log]
    assert times == sorted(times)
    state = "BOOT"
    for e in log:
        if e["type"] == "state":
            state = e["to"]
        if e["type"] == "outputs" and state not in ("RUNNING", "STOPPING"):
            assert not e["outputs"]["crusher"] and not e["outputs"]["feed"], e


def test_normal_shift_purges_runs_trips_and_recovers():
    log = run("normal_shift.toml")
    check_log_shape(log)
    seq = [to for _f, to, _c in states(log)]
    assert seq[:5] == ["BOOT", "IDLE", "PURGING", "READY", "RUNNING"]
    assert "TRIPPED" in seq
    after_trip = seq[seq.index("TRIPPED"):]
    assert after_trip[:3] == ["TRIPPED", "PURGING", "READY"]   # reset re-inerts, never restarts crushing
    assert "RUNNING" in after_trip
    assert log[-1]["state"] == "IDLE" and log[-1]["causes"] == []


def test_thermal_runaway_trips_on_the_rise_first():
    log = run("thermal_runaway.toml")
    check_log_shape(log)
    trips = [e for e in log if e["type"] == "trip"]
    assert trips[0]["causes"] == ["temp_rise"]
    assert trips[0]["t"] < 420.0   # within 20 s of the event at t = 400
    end = log[-1]
    assert end["state"] == "TRIPPED"
    assert {"temp_rise", "temp_material_high", "co_high"} <= set(end["causes"])
    # Trip effects of a thermal cause: dilute and inert, keep drawing to the RTO (below atmosphere).
    # `commanded`: what the last scan commanded; `outputs`: the safe state the end forced.
    assert end["forced_safe"] is True and end["outputs"]["crusher"] is False
    assert end["commanded"] == {"crusher": False, "feed": False, "n2_purge": True, "n2_boost": True,
                              "exhaust": True, "vent": False, "alarm": True, "horn": True}


def test_thermal_runaway_keeps_the_cell_below_atmosphere_and_hf_out_of_the_room():
    # H-EFFECTS: closing the exhaust on every trip left the cell at +35 Pa and let HF into the room.
    _log, truth = run_with_truth("thermal_runaway.toml")
    tripped = [q for _t, state, q, _o in truth if state == "TRIPPED"]
    assert tripped
    assert max(q["dp_cell"] for q in tripped) < 0.0
    assert max(q["hf_room"] for q in tripped) < 0.5     # hf_room.warning: no HF reaches the room


def test_air_ingress_stops_crushing_before_o2_trips():
    log = run("air_ingress.toml")
    check_log_shape(log)
    assert ("RUNNING", "STOPPING", "controlled_stop:warning:o2") in states(log)
    assert not [e for e in log if e["type"] == "trip"]
    assert ("READY", "PURGING", "permissive_lost") in states(log)
    assert log[-1]["state"] == "READY"   # after the repair the cell holds inert again


def test_one_o2_sensor_lost_stops_and_blocks_start():
    log = run("o2_sensor_lost.toml")
    check_log_shape(log)
    assert ("RUNNING", "STOPPING", "controlled_stop:o2_vote_degraded") in states(log)
    refused = [e for e in log if e["type"] == "command" and e["t"] == 400.0]
    assert refused and not refused[0]["accepted"] and "O2" in refused[0]["reason"]
    assert {"t": 300.0, "type": "sensor", "name": "o2_a", "quality": "fault:disconnect"} in log
    assert log[-1]["state"] == "READY"


def test_two_o2_sensors_lost_trip():
    log = run("two_o2_sensors_lost.toml")
    check_log_shape(log)
    assert log[-1]["state"] == "TRIPPED" and log[-1]["causes"] == ["o2_vote_lost"]


def test_estop_trips_and_reset_needs_release():
    log = run("estop.toml")
    check_log_shape(log)
    resets = [e for e in log if e["type"] == "command" and e["action"] == "reset"]
    assert not resets[0]["accepted"] and "estop" in resets[0]["reason"]
    assert resets[1]["accepted"]
    assert ("TRIPPED", "PURGING", "command:reset") in states(log)
    assert log[-1]["state"] == "RUNNING"


def test_welded_contactor_trips_and_stays_tripped():
    log = run("welded_contactor.toml")
    check_log_shape(log)
    assert log[-1]["state"] == "TRIPPED" and log[-1]["causes"] == ["output_feedback:crusher"]
    reset = [e for e in log if e["type"] == "command" and e["action"] == "reset"][0]
    assert not reset["accepted"]


def test_two_o2_sensors_failing_low_do_not_hide_a_leak():
    # H-O2-LOW: the median of three stays low; the live sensor's held deviation stops the crusher.
    log, truth = run_with_truth("o2_two_sensors_low.toml")
    check_log_shape(log)
    stops = [c for _f, to, c in states(log) if to == "STOPPING"]
    assert stops and stops[0] in ("controlled_stop:o2_deviation_held", "controlled_stop:o2_one_high")
    crushing = [q["o2"] for _t, _s, q, out in truth if out[0]]
    assert max(crushing) < 2.5          # the real O2 never reached the trip while the crusher turned
    refused = [e for e in log if e["type"] == "command" and e["action"] == "start" and e["t"] == 700.0]
    assert refused and not refused[0]["accepted"]   # and it cannot be restarted into the leak


def test_common_cause_freeze_of_all_o2_sensors_trips():
    # H-O2-FROZEN: no peer moves, yet the freeze itself is a fault.
    log, truth = run_with_truth("o2_common_freeze.toml")
    trips = [e for e in log if e["type"] == "trip"]
    assert trips and trips[0]["causes"] == ["o2_vote_lost"]
    frozen_s = CONFIG.raw["voting"]["o2"].get("frozen_s", 60.0)
    assert 300.0 + frozen_s - 1.0 <= trips[0]["t"] <= 300.0 + frozen_s + 1.0
    assert max(q["o2"] for _t, _s, q, out in truth if out[0]) < 2.5


def test_door_open_trip_never_floods_the_cell_with_nitrogen():
    # H-EFFECTS, door class: N2 closed while the door is open; defaults return when it closes.
    log = run("door_open_running.toml")
    check_log_shape(log)
    assert [e["causes"] for e in log if e["type"] == "trip"] == [["door_open"]]
    o = outputs_at(log, 300.0)
    assert not o["crusher"] and not o["n2_purge"] and not o["n2_boost"] and o["exhaust"] and o["alarm"], o
    o = outputs_at(log, 365.0)
    assert o["n2_purge"] and o["n2_boost"] and o["exhaust"] and not o["vent"], o
    assert ("TRIPPED", "PURGING", "command:reset") in states(log)


def test_overpressure_trip_adds_no_nitrogen_and_vents():
    # H-EFFECTS, overpressure class: the boost closes and the vent opens while it lasts.
    log = run("overpressure.toml")
    trips = [e for e in log if e["type"] == "trip"]
    assert trips[0]["t"] == 300.0 and "dp_high" in trips[0]["causes"]
    o = outputs_at(log, 300.0)
    assert not o["n2_boost"] and o["vent"] and o["n2_purge"], o
    o = outputs_at(log, 400.0)
    assert o["n2_boost"] and not o["vent"], o      # relieved: the defaults return


def test_a_cell_that_cannot_hold_inert_refuses_start_until_a_local_ack():
    # H-INERT: READY and PURGING alternating forever raise inerting_failed and block start.
    log = run("inerting_failed.toml")
    check_log_shape(log)
    alarms = [e for e in log if e["type"] == "alarm" and e["name"] == "inerting_failed"]
    assert alarms and alarms[0]["active"] is True
    losses_before = [c for _f, _to, c in states(log) if c == "permissive_lost"]
    assert len(losses_before) >= 3
    starts = [e for e in log if e["type"] == "command" and e["action"] == "start"]
    assert [e["accepted"] for e in starts] == [False, False, True]
    assert all(e["reason"].startswith("inerting_failed") for e in starts[:2])
    assert starts[2]["t"] == 2000.0      # after the repair and the local ack
    assert log[-1]["state"] == "RUNNING"


def test_estop_pulse_shorter_than_a_scan_trips():
    # H-PULSE: a 40 ms opening between two scans is latched by the HAL and trips at the next scan.
    log, truth = run_with_truth("estop_pulse.toml")
    check_log_shape(log)
    trips = [e for e in log if e["type"] == "trip"]
    assert trips and trips[0]["t"] == 300.1 and "estop" in trips[0]["causes"]
    # The crusher did not come back when the chain reclosed.
    assert not any(out[0] for t, _s, _q, out in truth if 300.1 <= t < 400.0)
    assert ("TRIPPED", "PURGING", "command:reset") in states(log)


def test_chattering_contactor_feedback_trips():
    # H-FEEDBACK: chatter cannot keep restarting the discrepancy timer.
    log = run("contactor_chatter.toml")
    check_log_shape(log)
    trips = [e for e in log if e["type"] == "trip"]
    assert trips and trips[0]["causes"] == ["output_feedback:crusher"] and trips[0]["t"] <= 190.0
    reset = [e for e in log if e["type"] == "command" and e["action"] == "reset"][0]
    assert not reset["accepted"] and "output_feedback:crusher" in reset["reason"]


def test_same_seed_same_log():
    assert run("thermal_runaway.toml") == run("thermal_runaway.toml")


# --- the format's errors --------------------------------------------------------------------
def errors(text: str, tmp_path: Path) -> list[str]:
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(scenario.ScenarioError) as info:
        scenario.load(p)
    return [e.replace(str(p), "bad.toml") for e in info.value.errors]


HEAD = 'name = "x"\nduration_s = 100\n'


@pytest.mark.parametrize("body, expected", [
    ('[[at]]\nt = 1\ncommand = "launch"\n',
     'bad.toml: [[at]] #1 (t = 1) command = "launch" must be one of "purge", "start", "stop", "shutdown", '
     '"reset", "ack"'),
    ('[[at]]\nt = 1\nevent = "earthquake"\n',
     'bad.toml: [[at]] #1 (t = 1) event = "earthquake" must be one of'),
    ('[[at]]\nt = 1\nfault = "o2_d"\nmode = "disconnect"\n',
     'bad.toml: [[at]] #1 (t = 1) fault = "o2_d" must be one of'),
    ('[[at]]\nt = 1\nfault = "o2_a"\nmode = "melt"\n',
     'bad.toml: [[at]] #1 (t = 1) mode = "melt" must be one of "disconnect"'),
    ('[[at]]\nt = 1\nfault = "crusher"\nmode = "stuck"\n',
     'bad.toml: [[at]] #1 (t = 1) mode = "stuck" must be one of "welded", "clear"'),
    ('[[at]]\nt = 1\ncommand = "start"\nevent = "estop"\n',
     "bad.toml: [[at]] #1 (t = 1) needs exactly one of command, event, fault, force (has command, event)"),
    ('[[at]]\nt = 1\ncommand = "start"\nsorce = "remote"\n',
     "bad.toml: [[at]] #1 (t = 1) unknown key 'sorce'"),
    ('[[at]]\nt = 1\ncomand = "purge"\n',   # a misspelt action: name it and the closest known key
     "bad.toml: [[at]] #1 (t = 1) needs exactly one of command, event, fault, force; unknown key 'comand' "
     "(did you mean 'command'?)"),
    ('[[at]]\nt = 500\ncommand = "start"\n',
     "bad.toml: [[at]] #1 (t = 500) t = 500 is after the end of the scenario (duration_s = 100.0)"),
    ('[[at]]\nt = 1\nforce = "temp_gas"\nvalue = "hot"\n',
     'bad.toml: [[at]] #1 (t = 1) value = "hot" must be a number'),
    ('colour = "red"\n', "bad.toml: unknown key 'colour'"),
])
def test_scenario_errors_name_the_problem(body, expected, tmp_path):
    errs = errors(HEAD + body, tmp_path)
    assert any(e.startswith(expected) for e in errs), errs


def test_force_release_is_accepted(tmp_path):
    p = tmp_path / "ok.toml"
    p.write_text(HEAD + '[[at]]\nt = 1\nforce = "temp_gas"\nvalue = 95.0\n'
                 '[[at]]\nt = 2\nforce = "temp_gas"\nvalue = "release"\n')
    sc = scenario.load(p)
    assert [(s.kind, s.name, s.arg) for s in sc.steps] == [("force", "temp_gas", 95.0),
                                                           ("force", "temp_gas", None)]


def test_simulate_cli_bad_scenario_exit_2(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text(HEAD + '[[at]]\nt = 1\nevent = "earthquake"\n')
    out = subprocess.run([sys.executable, "-m", "controller.cli", "simulate", str(p)], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 2
    assert 'event = "earthquake" must be one of' in out.stderr
    assert "Traceback" not in out.stderr


def test_simulate_cli_writes_events_file(tmp_path):
    events = tmp_path / "events.jsonl"
    out = subprocess.run([sys.executable, "-m", "controller.cli", "simulate",
                          str(SCENARIOS / "welded_contactor.toml"), "--events", str(events)],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(x) for x in events.read_text().splitlines()]
    assert lines[-1]["type"] == "end" and lines[-1]["state"] == "TRIPPED"


def test_an_event_log_cut_by_a_crash_loses_no_record_of_the_next_run(tmp_path):
    """A kill -9 mid-line leaves `{"t":2,"ty`: the next run's first record must not be glued to it."""
    path = tmp_path / "events.jsonl"
    path.write_text('{"t":1,"type":"state"}\n{"t":2,"ty')
    with open(path, "a", encoding="utf-8") as stream:
        scenario.EventLog(stream).write([{"t": 0.0, "type": "state", "to": "BOOT"}])
    lines = path.read_text().splitlines()
    assert lines[1] == '{"t":2,"ty' and json.loads(lines[2]) == {"t": 0.0, "type": "state", "to": "BOOT"}
