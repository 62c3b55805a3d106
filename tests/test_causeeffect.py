"""The cause-and-effect matrix: measured on the core, complete, embedded in docs/safety.md, and true.

True means: the behaviour columns are what a real Core did when driven into each cause
(controller/drive.py), and this file checks them against docs/process-safety.md written down here
on its own (the states table, "Trip effects by cause", the other rules), never against the rule
tables the core executes. Each permissive row, violated alone on a bench, refuses its command with
its own reason; every cause the core can latch has exactly one row.
"""

import copy
import csv
import io
import subprocess
import sys
import time
from pathlib import Path

import pytest
from corekit import Bench, params

from cellspec.names import OUTPUTS, SENSORS
from controller import causeeffect as ce
from controller import config, core, drive

ROOT = Path(__file__).resolve().parents[1]
CONFIG = config.load(ROOT / "config" / "cell.toml")
GAS = ("n2_purge", "n2_boost", "exhaust", "vent")


def matrix():
    return ce.rows(CONFIG)   # measured once per parameter set, then cached in-process


def rows_of(kind):
    return {r[1]: dict(zip(ce.COLUMNS, r, strict=True)) for r in matrix() if r[0] == kind}


def gas(row):
    return tuple(row[n] for n in GAS)


# -- docs/process-safety.md, written down independently of controller/rules.py -------------------------------
# "States": outputs of each state (logical words; RUNNING's feed needs the crusher to run).
DOMAIN_STATES = {
    "BOOT": ("off", "off", "open", "open", "closed", "open"),
    "IDLE": ("off", "off", "closed", "closed", "open", "closed"),
    "PURGING": ("off", "off", "open", "open", "open", "closed"),
    "READY": ("off", "off", "open", "closed", "open", "closed"),
    "RUNNING": ("on", "on once crusher runs", "open", "closed", "open", "closed"),
    "STOPPING": ("on (run-down)", "off", "open", "open", "open", "closed"),
}
OPERATING = "IDLE PURGING READY RUNNING STOPPING"
INERT = "PURGING READY RUNNING STOPPING"
CRUSHING = "RUNNING STOPPING"
EVERY_STATE_BUT_TRIPPED = "BOOT " + OPERATING


def domain_gas(classes):
    """(n2_purge, n2_boost, exhaust, vent) in TRIPPED by "Trip effects by cause".

    Default open, open, open, closed. RTO inlet flammable: exhaust closed, vent open. Overpressure:
    boost closed, vent open. Door open: both N2 valves closed. Combined: the exhaust closes if the
    RTO inlet is flammable, N2 stays closed while the door is open, the vent opens if any asks.
    """
    purge, boost, exhaust, vent = True, True, True, False
    if "rto" in classes:
        exhaust, vent = False, True
    if "overpressure" in classes:
        boost, vent = False, True
    if "door" in classes:
        purge, boost = False, False
    return ("open" if purge else "closed", "open" if boost else "closed",
            "open" if exhaust else "closed", "open" if vent else "closed")


def classes_of(cause):
    """The effect classes a cause provoked alone brings (docs/process-safety.md's table; an unhealthy sensor
    counts as the worst case for what it guards: lel_rto as flammable, dp_cell as overpressure)."""
    return {"lel_rto_high": {"rto"}, "sensor_fault:lel_rto": {"rto"}, "dp_high": {"overpressure"},
            "dp_rise": {"overpressure"}, "sensor_fault:dp_cell": {"overpressure"},
            "door_open": {"door"}}.get(cause, set())


CLASS_NAMES = {"rto_flammable": "rto", "overpressure": "overpressure", "door_open": "door"}

# "active in": where provoking the cause alone trips the core (the reference and the hazard register).
ACTIVE_IN = {
    "o2_high": CRUSHING,                  # 2.5 % O2 "while crushing"
    "o2_vote_lost": INERT,                # two unhealthy O2 sensors: the cell cannot be judged inert
    "h2_high": OPERATING,
    "lel_rto_high": OPERATING,
    "temp_rise": OPERATING,
    "dp_high": OPERATING,
    "n2_supply_low": INERT,               # low-low while O2 rises
    "estop": OPERATING,                   # the chain opened: follow it in every operating state
    "door_open": INERT,                   # the inert states
    "purge_timeout": "PURGING",
    "contactor_dropped": CRUSHING,        # feedback drops while RUNNING (and in the run-down)
    "output_write": EVERY_STATE_BUT_TRIPPED,
    "scan_overrun": EVERY_STATE_BUT_TRIPPED,
    "self_test": "BOOT",
    "sensor_fault:h2_cell": EVERY_STATE_BUT_TRIPPED,
    "sensor_fault:o2_a": "BOOT",          # later, one O2 sensor only degrades the vote
}


# -- the matrix is complete and up to date ------------------------------------------------------
def test_committed_matrix_matches_the_code():
    doc = (ROOT / "docs" / "safety.md").read_text(encoding="utf-8")
    committed = ce.embedded(doc)
    assert committed is not None, "docs/safety.md lost its cause-effect markers"
    assert committed == ce.render(CONFIG, "md"), (
        "docs/safety.md's cause-and-effect matrix is out of date: run `make docs` and review the diff")


def test_every_cause_and_permissive_has_a_row():
    names = [r[1] for r in matrix()]
    trips = [r[1] for r in matrix() if r[0] == "trip"]
    assert sorted(trips) == sorted(core.CAUSES)
    for cause in core.CAUSES:
        assert trips.count(cause) == 1, cause
    for row in core.CONTROLLED_STOPS:
        assert row[0] in names
    for row in core.PERMISSIVES:
        assert row[1] in names
    for row in core.AUTOMATIC:
        assert row[0] in names
    assert all(len(r) == len(ce.COLUMNS) for r in matrix())
    assert ce.COLUMNS[-len(OUTPUTS):] == OUTPUTS and "horn" in ce.COLUMNS


# -- trips, against the reference ---------------------------------------------------------------------
@pytest.mark.parametrize("cause", core.CAUSES)
def test_every_trip_stops_crushing_and_lights_the_beacon(cause):
    row = rows_of("trip")[cause]
    assert row["state change"].startswith("TRIPPED (latched)"), row["state change"]
    assert (row["crusher"], row["feed"]) == ("off", "off"), row
    assert row["alarm"] == "on", row          # the beacon stays on while TRIPPED, ack or not
    assert row["horn"] == "on until ack", row


@pytest.mark.parametrize("cause", core.CAUSES)
def test_trip_gas_outputs_are_the_domain_effects_of_that_cause_alone(cause):
    row = rows_of("trip")[cause]
    assert gas(row) == domain_gas(classes_of(cause)), (cause, gas(row))


@pytest.mark.parametrize("cause", sorted(ACTIVE_IN))
def test_causes_act_in_the_states_domain_md_names(cause):
    assert rows_of("trip")[cause]["active in"] == ACTIVE_IN[cause]


def test_hazards_join_a_latch_and_state_bound_causes_do_not():
    trips = rows_of("trip")
    for cause in ("h2_high", "dp_high", "estop", "door_open", "o2_vote_lost", "output_write"):
        assert trips[cause]["in TRIPPED"] == "joins the latch", cause   # a reset would lead into them
    for cause in ("o2_high", "contactor_dropped", "purge_timeout", "self_test"):
        assert trips[cause]["in TRIPPED"] == "-", cause


def test_a_welded_or_dropped_contactor_is_seen_where_the_domain_says():
    row = rows_of("trip")["output_feedback:crusher"]
    assert row["active in"] == "BOOT IDLE PURGING READY"   # commanded off, feedback on
    assert "RUNNING STOPPING: contactor_dropped instead" in row["state change"]


def test_trip_effect_rows_follow_the_combination_rule():
    effects = rows_of("trip effect")
    assert len(effects) == 2 ** len(core.TRIP_EFFECTS)
    for name, row in effects.items():
        classes = set() if name == "default" else {CLASS_NAMES[c] for c in name.split(" + ")}
        assert gas(row) == domain_gas(classes), (name, gas(row))
        assert (row["crusher"], row["feed"], row["alarm"]) == ("off", "off", "on"), row
        if classes:   # present now, not latched: the outputs go back once the class is gone
            assert row["state change"] == "stays TRIPPED; back to the default when gone", row
    # docs/process-safety.md's two examples: a runaway that later fills the RTO inlet; a person at the door
    # while the RTO inlet is flammable.
    assert gas(effects["rto_flammable"]) == ("open", "open", "closed", "open")
    assert gas(effects["rto_flammable + door_open"]) == ("closed", "closed", "closed", "open")


# -- controlled stops, permissives, automatic transitions ------------------------------------------
def test_controlled_stops_run_down_from_running():
    stops = rows_of("controlled stop")
    assert sorted(stops) == sorted(r[0] for r in core.CONTROLLED_STOPS)
    for name, row in stops.items():
        assert row["active in"] == "RUNNING", name
        assert row["state change"] == "RUNNING -> STOPPING", name
        got = tuple(row[n] for n in OUTPUTS[:6])
        assert got == DOMAIN_STATES["STOPPING"], (name, got)
        assert row["alarm"] == row["horn"] == "on until ack", name


GUARDED = {"purge": ("IDLE", "PURGING"), "start": ("READY", "RUNNING"), "reset": ("TRIPPED", "PURGING")}


def test_permissives_refuse_when_violated_and_lead_where_the_domain_says_when_met():
    for kind, rows in ((k, rows_of(k)) for k in ("permissive (purge)", "permissive (start)",
                                                 "permissive (reset)")):
        action = kind[len("permissive ("):-1]
        src, dst = GUARDED[action]
        for name, row in rows.items():
            change = row["state change"]
            assert change.startswith(f"{src} -> {dst} when met; "), (name, change)
            assert "NOT REFUSED" not in change, (name, change)
            assert "refused otherwise" in change or "the core trips first" in change, (name, change)
            assert tuple(row[n] for n in OUTPUTS[:6]) == DOMAIN_STATES[dst], name
            assert row["alarm"] == row["horn"] == "off", name
    assert "the core trips first (estop)" in rows_of("permissive (purge)")["estop_closed"]["state change"]


def test_a_plant_that_allows_remote_reset_has_nothing_to_violate():
    raw = copy.deepcopy(CONFIG.raw)
    raw["cell"]["remote_reset"] = True
    row = [r for r in ce.rows(config.parse(raw)) if r[1] == "reset_source"][0]
    assert row[4] == "remote_reset = true"
    assert row[9] == "TRIPPED -> PURGING when met; always met (remote_reset = true: any source may reset)"


def test_automatic_transitions_reach_the_domain_states():
    autos = rows_of("automatic")
    expected = {"self_test_passed": ("BOOT", "IDLE"), "inerted": ("PURGING", "READY"),
                "permissive_lost": ("READY", "PURGING"), "rundown_done": ("STOPPING", "READY")}
    assert sorted(autos) == sorted(expected)
    for name, (src, dst) in expected.items():
        row = autos[name]
        assert row["state change"] == f"{src} -> {dst}", row
        assert tuple(row[n] for n in OUTPUTS[:6]) == DOMAIN_STATES[dst], name


# -- the driver: loud on what it cannot provoke, noisy sensors, fast -------------------------------
def test_a_cause_without_a_recipe_fails_the_generation(monkeypatch):
    recipes = drive.cause_recipes

    def without_o2_high(p):
        r = recipes(p)
        del r["o2_high"]
        return r
    monkeypatch.setattr(drive, "cause_recipes", without_o2_high)
    with pytest.raises(drive.ProvocationError, match="no provocation recipe for cause 'o2_high'"):
        drive.measure(CONFIG.core_params())


def test_a_cause_that_cannot_be_provoked_anywhere_fails_the_generation(monkeypatch):
    recipes = drive.cause_recipes

    def harmless_o2_high(p):
        r = recipes(p)
        r["o2_high"] = drive.Recipe("nothing at all", lambda d: None, 500)
        return r
    monkeypatch.setattr(drive, "cause_recipes", harmless_o2_high)
    with pytest.raises(drive.ProvocationError, match="cause 'o2_high' could not be provoked"):
        drive.measure(CONFIG.core_params())


def test_the_driver_noise_keeps_every_sensor_healthy():
    snaps = drive.snapshots(CONFIG.core_params())
    d = drive.thaw(snaps["RUNNING"])
    longest = max(max(CONFIG.sensors[s].stuck_s for s in SENSORS), CONFIG.frozen_s)
    d.period = 500   # a slower scan: the same noise per reading, fewer readings
    d.run_until(lambda x: x.state != "RUNNING", longest * 1000 + 5000)
    assert d.state == "RUNNING", d.core.events[-3:]
    assert all(d.core.health.healthy), d.core.health.quality


def test_one_generation_takes_seconds_at_most():
    t = time.perf_counter()
    drive.measure(CONFIG.core_params())   # uncached
    elapsed = time.perf_counter() - t
    assert elapsed < 15.0, elapsed       # about 0.5 s on an idle CPython; generous for loaded CI


# -- rendering ----------------------------------------------------------------------------------------
def test_limits_show_the_configured_numbers():
    cfg = config.parse(dict(CONFIG.raw, thresholds=dict(CONFIG.raw["thresholds"],
                                                        h2_cell={"warning": 0.8, "trip": 1.8})))
    row = [r for r in ce.rows(cfg) if r[1] == "h2_high"][0]
    assert row[4] == "h2_cell.trip = 1.8 vol%"
    stop = [r for r in ce.rows(cfg) if r[1] == "warning_held"][0]
    assert "h2_cell.warning = 0.8 vol%" in stop[4]
    assert ce.limit_text(CONFIG, "voting.o2.recovery_s") == "o2 recovery_s = 10 s"
    assert ce.limit_text(CONFIG, "thresholds.o2.deviation_hold_s") == "o2.deviation_hold_s = 30 s"


def test_unknown_limit_key_is_a_programming_error():
    with pytest.raises(KeyError, match="no rendering"):
        ce.limit_text(CONFIG, "cell.something_new")


def test_csv_and_html_carry_the_same_rows():
    parsed = list(csv.reader(io.StringIO(ce.render(CONFIG, "csv"))))
    assert tuple(parsed[0]) == ce.COLUMNS
    assert [tuple(r) for r in parsed[1:]] == ce.rows(CONFIG)
    page = ce.render(CONFIG, "html")
    assert page.count('<tr class="row ') == len(ce.rows(CONFIG))
    assert "o2.trip = 2.5 %" in page and "&lt;" not in ce.render(CONFIG, "md")
    assert '<th>horn<span class="safe">safe: off</span></th>' in page
    with pytest.raises(ValueError):
        ce.render(CONFIG, "pdf")


def test_embed_replaces_only_between_markers():
    text = f"intro\n{ce.BEGIN}\nold\n{ce.END}\noutro\n"
    new = ce.embed(text, "| new |\n")
    assert new == f"intro\n{ce.BEGIN}\n| new |\n{ce.END}\noutro\n"
    assert ce.embedded(new) == "| new |\n"
    assert ce.embedded("no markers") is None


def crushcell(*args):
    return subprocess.run([sys.executable, "-m", "controller.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_cli_prints_each_format_and_rejects_bad_arguments():
    md = crushcell("cause-effect")
    assert md.returncode == 0 and md.stdout == ce.render(CONFIG, "md")
    assert crushcell("cause-effect", "--format", "csv").stdout.startswith("kind,cause,")
    bad = crushcell("cause-effect", "--format", "pdf")
    assert bad.returncode == 2 and "usage:" in bad.stderr
    missing = crushcell("cause-effect", "--config", "/nonexistent.toml")
    assert missing.returncode == 2 and "cannot read" in missing.stderr


# -- each permissive row, violated alone, refuses its command with its own reason ----------------
def _ready(**changes):
    b = Bench(params(**changes))
    b.to_state("READY")
    return b


def _tripped():
    b = Bench(params())
    b.to_state("READY")
    b.inputs["door_closed"] = False
    b.scan()
    b.inputs["door_closed"] = True
    return b


def _lose_permissive(b, times):
    """READY -> PURGING -> READY, `times` times: the cell does not hold inert."""
    for _ in range(times):
        for k in ("o2_a", "o2_b", "o2_c"):
            b.values[k] = 2.0              # above start_permissive + hysteresis
        b.run(0.5)
        for k, v in (("o2_a", 0.5), ("o2_b", 0.52), ("o2_c", 0.48)):
            b.values[k] = v
        b.run(11)


VIOLATIONS = {
    # permissive name: (bring the bench there, break only this permissive, command, source, reason part)
    # estop_ok false also trips IDLE in the same scan, before any command: the row is seen on the guard.
    "estop_closed": ("IDLE", lambda b: b.inputs.update(estop_ok=False), "purge", "local", "E-stop"),
    "door_closed": ("IDLE", lambda b: b.inputs.update(door_closed=False), "purge", "local", "door"),
    "o2_vote": ("IDLE", lambda b: b.faults.update(o2_a="disconnect", o2_b="nan"), "purge", "local",
                "O2 vote lost"),
    "remote_enable": ("READY", lambda b: None, "start", "remote", "remote_enable"),
    "inerting_held": ("READY", lambda b: _lose_permissive(b, 3), "start", "local", "inerting_failed"),
    "o2_all_healthy": ("READY", lambda b: b.faults.update(o2_a="crc"), "start", "local", "O2 vote degraded"),
    "o2_below_permissive": ("READY", lambda b: b.values.update(o2_a=1.6, o2_b=1.6, o2_c=1.6), "start",
                            "local", "not below start_permissive"),
    "no_alarm": ("READY", lambda b: b.values.update(h2_cell=1.5), "start", "local", "alarm active: h2_cell"),
    "rto_ready": ("READY", lambda b: b.inputs.update(rto_ready=False), "start", "local", "RTO not ready"),
    "crusher_off": ("READY", lambda b: setattr(b, "follow_crusher", False) or b.inputs.update(
        crusher_running=True), "start", "local", "crusher feedback"),
    "calibration_in_date": ("READY", lambda b: b.core.set_calibration(("h2_cell",), ("h2_cell",)), "start",
                            "local", "calibration overdue beyond the grace: h2_cell"),
    "state_writable": ("READY", lambda b: b.core.set_platform_alarms(("state_write_failed",)), "start",
                       "local", "latch file cannot be written"),
    "clock_plausible": ("READY", lambda b: b.core.set_platform_alarms(("clock_implausible",)), "start",
                        "local", "wall clock is earlier"),
    "reset_source": ("TRIPPED", lambda b: b.run(6), "reset", "remote", "remote reset not allowed"),
    "causes_clear": ("TRIPPED", lambda b: None, "reset", "local", "causes not clear"),
}


@pytest.mark.parametrize("row", core.PERMISSIVES, ids=[r[1] for r in core.PERMISSIVES])
def test_each_permissive_refuses_alone(row):
    guard, name = row[0], row[1]
    where, breaks, action, source, reason = VIOLATIONS[name]
    b = _tripped() if where == "TRIPPED" else Bench(params())
    if where != "TRIPPED":
        b.to_state(where)
    breaks(b)
    if name == "estop_closed":
        b.core.inputs[0] = False          # the guard alone: a scan would trip on estop first
    else:
        b.scan()
    why = getattr(b.core, row[5])(source)   # this row's own check names its own reason
    assert why is not None and reason in why, (name, why)
    assert getattr(b.core, guard)(source) is not None
    if name != "estop_closed":
        state = b.core.state_name
        ok, _reason = b.command(action, source)
        assert not ok and b.core.state_name == state, name


def test_permissive_checks_pass_on_a_healthy_ready_cell():
    b = _ready()
    b.inputs["remote_enable"] = True
    b.scan()
    for row in core.PERMISSIVES:
        if row[0] in ("guard_purge", "guard_start"):
            assert getattr(b.core, row[5])("remote") is None, row[1]


def test_calibration_due_alone_raises_its_alarm_but_does_not_block_start():
    b = _ready()
    b.core.set_calibration(("o2_b", "not_a_sensor"), ())
    b.scan()
    assert ("calibration_due:o2_b", "warning", False) in b.core.active_alarms()
    assert b.command("start") == (True, "")
    b.core.set_calibration((), ())
    b.run(2.1)   # alarms clear after the off-delay
    assert not b.core.active_alarms()
