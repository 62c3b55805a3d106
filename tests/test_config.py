"""Configuration errors name the file, the table, the key and what is wrong, exactly."""

import hashlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from controller import config
from controller.cli import main

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "config" / "cell.toml"
NAME = "config/cell.toml"


def base():
    return tomllib.loads(DEFAULT.read_text())


def errors_of(mutate):
    data = base()
    mutate(data)
    with pytest.raises(config.ConfigError) as info:
        config.parse(data, NAME)
    return info.value.errors


def test_default_config_loads():
    c = config.load(DEFAULT)
    assert c.cell_id == "cell1"
    assert c.scan_period_s == 0.1
    assert c.thresholds["o2"]["trip"] == 2.5
    assert c.safe_outputs() == {"crusher": False, "feed": False, "n2_purge": True, "n2_boost": True,
                                "exhaust": False, "vent": True, "alarm": False, "horn": False}
    assert len(c.sha256) == 64


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d["thresholds"]["o2"].__setitem__("trip", 1.0),
     "config/cell.toml: [thresholds.o2] trip = 1.0 must be above warning = 2.0 "
     "(a warning comes before its trip)"),
    (lambda d: d["thresholds"]["h2_cell"].__setitem__("warning", 3.0),
     "config/cell.toml: [thresholds.h2_cell] trip = 2.0 must be above warning = 3.0 "
     "(a warning comes before its trip)"),
    (lambda d: d["cell"].__setitem__("scan_period_s", 0.005),
     "config/cell.toml: [cell] scan_period_s = 0.005 must be at least 0.02 "
     "(software budget: 100 ms default, down to 20 ms; max (P))"),
    (lambda d: d["cell"].__setitem__("scan_perod_s", 0.1),
     "config/cell.toml: [cell] unknown key 'scan_perod_s' (likely a typo; known keys here: id, "
     "late_scan_trip_periods, overrun_trip_count, permissive_loss_limit, remote_reset, scan_period_s)"),
    (lambda d: d["timers"].__setitem__("purge_hold_s", "ten"),
     'config/cell.toml: [timers] purge_hold_s = "ten" must be a number'),
    (lambda d: d["outputs"]["crusher"].__setitem__("safe", True),
     "config/cell.toml: [outputs.crusher] safe = true must be false: off with no power: it starts motion "
     "(de-energise to trip)"),
    (lambda d: d["outputs"]["vent"].pop("safe"),
     "config/cell.toml: [outputs.vent] missing key 'safe'"),
    (lambda d: d["sensors"].pop("h2_cell"),
     "config/cell.toml: missing section [sensors.h2_cell]: every sensor must be configured"),
    (lambda d: d["sensors"].__setitem__("h3_cell", d["sensors"]["h2_cell"]),
     "config/cell.toml: [sensors] unknown sensor 'h3_cell' (likely a typo; expected: o2_a, o2_b, o2_c, "
     "lel_cell, h2_cell, co_cell, hf_room, lel_rto, temp_gas, temp_material, dp_cell, n2_supply)"),
    (lambda d: d["sensors"]["co_cell"].__setitem__("range", [100.0, 10.0]),
     "config/cell.toml: [sensors.co_cell] range = [100.0, 10.0] must have its first number below its second"),
    (lambda d: d["sensors"]["o2_a"]["hardware"].__setitem__("channel", 7),
     "config/cell.toml: [sensors.o2_a.hardware] channel = 7 must be at most 3"),
    (lambda d: d["voting"]["o2"].__setitem__("sensors", ["o2_a", "o2_a", "o2_b"]),
     'config/cell.toml: [voting.o2] sensors = ["o2_a", "o2_a", "o2_b"] must name the three O2 sensors '
     "o2_a, o2_b, o2_c once each (2oo3)"),
    (lambda d: d["inputs"]["door_closed"].__setitem__("pin", 5),
     "config/cell.toml: [inputs.door_closed] pin = 5 is already used by [inputs.estop_ok]"),
    (lambda d: d["thresholds"]["n2_supply"].__setitem__("low_low", 5.0),
     "config/cell.toml: [thresholds.n2_supply] low_low = 5.0 must be below low = 4.0 "
     "(low comes before low-low)"),
    (lambda d: d["thresholds"]["temp_rise"].__setitem__("window_s", 0.1),
     "config/cell.toml: [thresholds.temp_rise] window_s = 0.1 must be at least 5.0 "
     "((P) a longer window averages a runaway away)"),
    (lambda d: d["mqtt"].__setitem__("require_tls", True),
     "config/cell.toml: [mqtt] require_tls = true needs tls = true"),
    (lambda d: d["cell"].__setitem__("id", "cell/1"),
     'config/cell.toml: [cell] id = "cell/1" must be ASCII without spaces, \'/\', \'#\' or \'+\' '
     "(it is an MQTT topic level)"),
    (lambda d: d["thresholds"]["co_cell"].__setitem__("trip", 5000.0),
     "config/cell.toml: [thresholds.co_cell] trip = 5000.0 must lie strictly inside the range of sensor "
     "co_cell [0.0, 2000.0] (a valid reading must be able to reach both sides of it)"),
])
def test_error_messages_are_exact(mutate, expected):
    assert expected in errors_of(mutate)


def test_every_error_is_reported_at_once():
    def mutate(d):
        d["thresholds"]["o2"]["trip"] = 1.0
        d["cell"]["bogus"] = 1
        d["outputs"]["feed"]["safe"] = True
    errs = errors_of(mutate)
    assert len(errs) >= 3


def test_no_key_can_switch_a_check_off():
    """Staleness, stuck time and limits are bounded: a huge value is rejected, not obeyed."""
    errs = errors_of(lambda d: d["sensors"]["h2_cell"].__setitem__("stuck_s", 1e9))
    assert ("config/cell.toml: [sensors.h2_cell] stuck_s = 1000000000.0 must be at most 600.0 "
            "((P) a stuck sensor must be found within 10 minutes)") in errs
    errs = errors_of(lambda d: d["sensors"]["h2_cell"].__setitem__("stale_s", 1e9))
    assert any("stale_s" in e for e in errs)
    errs = errors_of(lambda d: d["thresholds"]["h2_cell"].__setitem__("trip", 99.0))
    assert any("[thresholds.h2_cell] trip = 99.0 must lie strictly inside" in e for e in errs)
    errs = errors_of(lambda d: d["cell"].__setitem__("overrun_trip_count", 0))
    assert any("overrun_trip_count = 0 must be at least 1" in e for e in errs)


def test_bad_toml_names_the_file(tmp_path):
    p = tmp_path / "broken.toml"
    p.write_text("[cell\nid = 1\n")
    with pytest.raises(config.ConfigError) as info:
        config.load(p)
    assert info.value.errors[0].startswith(f"{p}: not valid TOML")


def test_missing_file(tmp_path):
    with pytest.raises(config.ConfigError) as info:
        config.load(tmp_path / "nope.toml")
    assert info.value.errors == [f"{tmp_path / 'nope.toml'}: cannot read: No such file or directory"]


def test_check_config_cli_ok(capsys):
    assert main(["check-config", str(DEFAULT)]) == 0
    # The hash of the file read, so that a reviewed config can be matched to what runs.
    digest = hashlib.sha256(DEFAULT.read_bytes()).hexdigest()
    assert capsys.readouterr().out == f"ok: {DEFAULT} sha256 {digest}\n"


def test_check_config_cli_errors(tmp_path, capsys):
    text = DEFAULT.read_text().replace("trip = 2.5                    # while crushing",
                                       "trip = 1.0                    # while crushing")
    p = tmp_path / "cell.toml"
    p.write_text(text)
    assert main(["check-config", str(p)]) == 2
    out = capsys.readouterr().out
    assert f"{p}: [thresholds.o2] trip = 1.0 must be above warning = 2.0" in out
    # After the errors: the path and the hash of the file read, and how many errors.
    lines = out.splitlines()
    digest = hashlib.sha256(p.read_bytes()).hexdigest()
    assert lines[-1] == f"failed: {p} sha256 {digest}: {len(lines) - 1} error(s)"


def test_controller_refuses_to_start_on_bad_config(tmp_path):
    p = tmp_path / "cell.toml"
    p.write_text(DEFAULT.read_text().replace('id = "cell1"', 'id = ""'))
    run = subprocess.run([sys.executable, "-m", "controller.cli", "run", "--config", str(p), "--no-mqtt",
                          "--duration", "1"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert run.returncode == 2
    assert f'{p}: [cell] id = "" must not be empty' in run.stderr
    assert "refusing to start" in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize("argv", [["run", "--hal", "plc"], ["simulate"], ["frobnicate"],
                                  ["run", "--speed", "x"]])
def test_bad_cli_arguments_give_usage_not_traceback(argv):
    run = subprocess.run([sys.executable, "-m", "controller.cli", *argv], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert run.returncode == 2
    assert "usage: crushcell" in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize("argv, says", [
    (["--speed", "nan"], "--speed nan must be above 0"),
    (["--duration", "nan"], "--duration nan must be a number of seconds above 0"),   # ran for ever
    (["--duration", "-5"], "--duration -5.0 must be a number of seconds above 0"),
])
def test_nonsense_numbers_are_refused_with_the_reason(argv, says, tmp_path):
    run = subprocess.run([sys.executable, "-m", "controller.cli", "run", "--hal", "sim", "--no-mqtt",
                          "--state-dir", str(tmp_path), *argv], capture_output=True, text=True, cwd=ROOT,
                         timeout=60)
    assert run.returncode == 2 and says in run.stderr, run.stderr
    assert "Traceback" not in run.stderr


def test_unknown_top_level_table_is_named():
    errs = errors_of(lambda d: d.__setitem__("mqqt", {"host": "x"}))
    assert errs == ["config/cell.toml: unknown key 'mqqt' (likely a typo; known keys here: calibration, "
                    "cell, hal, hmi, i2c, inputs, logging, mqtt, outputs, sensors, sparkplug, thresholds, "
                    "timers, voting, watchdog)"]


# -- Safety envelopes (issue 9, item 2.1): config can no longer switch protection off ---------------
# Each case is a configuration that would remove a protection; the reason is the hazard, and the
# message must name the key, the bound and where the bound comes from.
def _set(*path_value):
    *path, value = path_value

    def mutate(d):
        for key in path[:-1]:
            d = d[key]
        if value is _DELETE:
            del d[path[-1]]
        else:
            d[path[-1]] = value
    return mutate


_DELETE = object()


@pytest.mark.parametrize("mutate, expected", [
    # 21 % is air: NFPA 69 allows 60 % of the lowest LOC (H2, 4.6 %) with continuous monitoring.
    (_set("thresholds", "o2", "trip", 21.0),
     "config/cell.toml: [thresholds.o2] trip = 21.0 must be at most 2.76 "
     "(NFPA 69 ch. 7: 60 % of the H2 LOC 4.6 % (ASTM E2079); min (P))"),
    # The top of a 0..5 vol % H2 range is above the LFL: the trip must stay at 50 % LFL ...
    (_set("thresholds", "h2_cell", "trip", 5.0),
     "config/cell.toml: [thresholds.h2_cell] trip = 5.0 must be at most 2.0 "
     "(LFL of H2 4 vol %: 50 % LFL; min (P))"),
    # ... and inside the range, or no valid reading can ever cross it.
    (_set("thresholds", "h2_cell", "trip", 5.0),
     "config/cell.toml: [thresholds.h2_cell] trip = 5.0 must lie strictly inside the range of sensor h2_cell "
     "[0.0, 5.0] (a valid reading must be able to reach both sides of it)"),
    # A rise trip of 1e12 never fires: UL calls more than 20 K/min a runaway.
    (_set("thresholds", "temp_rise", "trip", 1e12),
     "config/cell.toml: [thresholds.temp_rise] trip = 1000000000000.0 must be at most 20.0 "
     "(UL: runaway above 20 K/min; min (P))"),
    (_set("thresholds", "co_rise", "trip", 1e12),
     "config/cell.toml: [thresholds.co_rise] trip = 1000000000000.0 must keep trip x window_s below the span "
     "of sensor co_cell (1000000000000.0 ppm/s x 10.0 s = 10000000000000.0, span 2000.0): the rise could "
     "never fire"),
    # A rise of trip x window larger than the sensor's span can never be measured.
    (lambda d: d["thresholds"]["co_rise"].update(trip=100.0, window_s=60.0),
     "config/cell.toml: [thresholds.co_rise] trip = 100.0 must keep trip x window_s below the span of sensor "
     "co_cell (100.0 ppm/s x 60.0 s = 6000.0, span 2000.0): the rise could never fire"),
    # N2 supply pressure cannot fall below 0 bar: a low-low of 0 never fires.
    (_set("thresholds", "n2_supply", "low_low", 0.0),
     "config/cell.toml: [thresholds.n2_supply] low_low = 0.0 must be at least 1.0 "
     "((P) a low-low of 0 bar could never fire)"),
    # A range of 0..1e9 ppm makes out_of_range (a failed transmitter) impossible to see.
    (_set("sensors", "co_cell", "range", [0.0, 1e9]),
     "config/cell.toml: [sensors.co_cell] range = [0.0, 1000000000.0] must lie within [0.0, 10000.0] "
     "((P) CO transmitters up to 10000 ppm)"),
    # A dead controller must keep inerting and relieving the cell.
    (_set("outputs", "n2_purge", "safe", False),
     "config/cell.toml: [outputs.n2_purge] safe = false must be true: open with no power (fail open): "
     "a dead controller keeps the cell inert"),
    (_set("outputs", "vent", "safe", False),
     "config/cell.toml: [outputs.vent] safe = false must be true: open with no power (fail open): "
     "a dead controller still relieves the cell"),
    (_set("outputs", "horn", "safe", True),
     "config/cell.toml: [outputs.horn] safe = true must be false: off with no power: the horn is "
     "annunciation the controller switches on"),
    (_set("outputs", "feed", "safe", True),
     "config/cell.toml: [outputs.feed] safe = true must be false: off with no power: it starts motion and "
     "feeds charged cells (de-energise to trip)"),
    # Missing sections: one clear line each, never a crash.
    (_set("thresholds", "h2_cell", _DELETE), "config/cell.toml: missing section [thresholds.h2_cell]"),
    (_set("outputs", "horn", _DELETE),
     "config/cell.toml: missing section [outputs.horn]: every output must be configured (the horn is a "
     "separate output since `alarm` became the beacon alone; add it with pin, active_low and safe = false)"),
    # A rate of rise is the difference of 10 slot means: each slot needs at least one scan.
    (_set("thresholds", "dp_rise", "window_s", 0.5),
     "config/cell.toml: [thresholds.dp_rise] window_s = 0.5 must be at least 10 scan periods (1.0 s at "
     "cell.scan_period_s = 0.1): the rise is measured over 10 slots of at least one scan each"),
    (_set("cell", "scan_period_s", 0.5),
     "config/cell.toml: [thresholds.dp_rise] window_s = 1.0 must be at least 10 scan periods (5.0 s at "
     "cell.scan_period_s = 0.5): the rise is measured over 10 slots of at least one scan each"),
    # In the cell model a leak takes O2 past the trip about 100 s after it starts.
    (_set("sensors", "o2_c", "stuck_s", 300.0),
     "config/cell.toml: [sensors.o2_c] stuck_s = 300.0 must be at most 90.0 (a leak takes O2 past the trip "
     "about 100 s after it starts: a stuck or frozen O2 reading must be seen first; min (P))"),
    (_set("voting", "o2", "frozen_s", 120.0),
     "config/cell.toml: [voting.o2] frozen_s = 120.0 must be at most 90.0 (a leak takes O2 past the trip "
     "about 100 s after it starts: a stuck or frozen O2 reading must be seen first; min (P))"),
    # Discrepancy integrated over a window shorter than the timeout can never reach it.
    (_set("timers", "feedback_window_s", 1.0),
     "config/cell.toml: [timers] feedback_window_s = 1.0 must be above feedback_timeout_s = 2.0 "
     "(the discrepancy integrated over the window must be able to reach the timeout)"),
    (_set("cell", "permissive_loss_limit", 0),
     "config/cell.toml: [cell] permissive_loss_limit = 0 must be at least 1 (a cell that keeps losing its "
     "permissive (P: 3 cycles); (P) reviewed engineering bound)"),
    (_set("thresholds", "o2", "deviation_hold_s", 600.0),
     "config/cell.toml: [thresholds.o2] deviation_hold_s = 600.0 must be at most 120.0 "
     "(deviation hold (P: 30 s); (P) reviewed engineering bound)"),
    (_set("voting", "o2", "recovery_s", 0.0),
     "config/cell.toml: [voting.o2] recovery_s = 0.0 must be at least 1.0 "
     "(vote recovery time (P: 10 s); (P) reviewed engineering bound)"),
    # READY must fall back to PURGING before O2 reaches the trip.
    (_set("thresholds", "o2", "permissive_hysteresis", 1.0),
     "config/cell.toml: [thresholds.o2] permissive_hysteresis = 1.0 must keep start_permissive + "
     "permissive_hysteresis = 2.5 below trip = 2.5 "
     "(READY must fall back to PURGING before O2 reaches the trip)"),
])
def test_unsafe_config_is_refused(mutate, expected):
    assert expected in errors_of(mutate)


def test_all_unsafe_values_are_reported_in_one_run():
    def mutate(d):
        d["thresholds"]["o2"]["trip"] = 21.0
        d["thresholds"]["h2_cell"]["trip"] = 5.0
        d["thresholds"]["temp_rise"]["trip"] = 1e12
        d["thresholds"]["n2_supply"]["low_low"] = 0.0
        d["sensors"]["co_cell"]["range"] = [0.0, 1e9]
        d["outputs"]["n2_purge"]["safe"] = False
        d["outputs"]["vent"]["safe"] = False
        d["outputs"]["horn"]["safe"] = True
        del d["thresholds"]["lel_cell"]
    errs = errors_of(mutate)
    for part in ("[thresholds.o2] trip", "[thresholds.h2_cell] trip", "[thresholds.temp_rise] trip",
                 "[thresholds.n2_supply] low_low", "[sensors.co_cell] range", "[outputs.n2_purge] safe",
                 "[outputs.vent] safe", "[outputs.horn] safe", "missing section [thresholds.lel_cell]"):
        assert any(part in e for e in errs), part


def _without(text, header):
    """The config text without the table `header` (up to the next table or comment block)."""
    lines = text.splitlines(keepends=True)
    start = lines.index(next(ln for ln in lines if ln.startswith(header)))
    end = start + 1
    while end < len(lines) and not lines[end].startswith(("[", "# ")):
        end += 1
    return "".join(lines[:start] + lines[end:])


CRUSHCELL = str(Path(sys.executable).with_name("crushcell"))


@pytest.mark.parametrize("header, named", [
    ("[thresholds.h2_cell]", "[thresholds.h2_cell]"), ("[outputs.horn]", "[outputs.horn]"),
    ("[sensors.o2_b]", "[sensors.o2_b]"), ("[timers]", "[timers]"),
    ("[voting.o2]", "[voting]"),   # its only table: [voting] is gone with it
])
def test_missing_section_is_exit_2_without_traceback(tmp_path, header, named):
    p = tmp_path / "cell.toml"
    p.write_text(_without(DEFAULT.read_text(), header))
    run = subprocess.run([CRUSHCELL, "check-config", str(p)], capture_output=True, text=True, cwd=ROOT,
                         timeout=60)
    assert run.returncode == 2, run.stdout + run.stderr
    assert f"{p}: missing section {named}" in run.stdout
    assert "Traceback" not in run.stdout + run.stderr


@pytest.mark.parametrize("argv", [
    ["run", "--no-mqtt", "--duration", "1"],
    ["simulate", str(ROOT / "config" / "scenarios" / "normal_shift.toml")],
])
def test_run_and_simulate_refuse_a_missing_section(tmp_path, argv):
    p = tmp_path / "cell.toml"
    p.write_text(_without(DEFAULT.read_text(), "[thresholds.h2_cell]"))
    run = subprocess.run([CRUSHCELL, *argv, "--config", str(p)], capture_output=True, text=True, cwd=ROOT,
                         timeout=60)
    assert run.returncode == 2, run.stdout + run.stderr
    assert f"{p}: missing section [thresholds.h2_cell]" in run.stderr
    assert "Traceback" not in run.stdout + run.stderr


def _paths(node, prefix=()):
    """Every key and table of the TOML tree, as paths."""
    for key, value in node.items():
        yield prefix + (key,)
        if isinstance(value, dict):
            yield from _paths(value, prefix + (key,))


@pytest.mark.parametrize("path", list(_paths(base())), ids=".".join)
def test_any_key_or_section_removed_is_a_config_error_or_a_default(path):
    """Every reader copes with a missing key: a clear error or its default, never an exception."""
    data = base()
    node = data
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    try:
        config.parse(data, NAME)
    except config.ConfigError as exc:
        where = ".".join(path)
        assert any(where in e or f"'{path[-1]}'" in e for e in exc.errors), exc.errors


@pytest.mark.parametrize("path", list(_paths(base())), ids=".".join)
def test_any_key_of_the_wrong_type_is_a_config_error(path):
    """A value no reader accepts (a list of tables) anywhere: a config error naming it, never an exception."""
    data = base()
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = [{}]
    with pytest.raises(config.ConfigError) as info:
        config.parse(data, NAME)
    assert any(path[-1] in e for e in info.value.errors), info.value.errors


def test_an_older_config_without_the_new_keys_loads_with_defaults():
    data = base()
    del data["cell"]["permissive_loss_limit"]
    del data["timers"]["feedback_window_s"]
    del data["thresholds"]["o2"]["deviation_hold_s"]
    del data["voting"]["o2"]["recovery_s"]
    del data["voting"]["o2"]["frozen_s"]
    p = config.parse(data, NAME).core_params()
    assert p["permissive_loss_limit"] == 3
    assert {k: p["timers_ms"][k] for k in ("deviation_hold_s", "vote_recovery_s", "frozen_s",
                                           "feedback_window_s")} == {
        "deviation_hold_s": 30000, "vote_recovery_s": 10000, "frozen_s": 60000, "feedback_window_s": 10000}


def test_core_params_carry_the_new_keys():
    c = config.load(DEFAULT)
    p = c.core_params()
    assert p["permissive_loss_limit"] == 3 and isinstance(p["permissive_loss_limit"], int)
    assert p["timers_ms"]["deviation_hold_s"] == 30000
    assert p["timers_ms"]["vote_recovery_s"] == 10000
    assert p["timers_ms"]["frozen_s"] == 60000
    assert p["timers_ms"]["feedback_window_s"] == 10000
    assert all(isinstance(v, int) for v in p["timers_ms"].values())
    assert "deviation_hold_s" not in p["thresholds"]["o2"]   # a time: in timers_ms only
    assert len(p["safe"]) == 8 and p["safe"][7] is False       # horn
    assert c.outputs["horn"].pin == 4 and c.outputs["horn"].active_low is True
