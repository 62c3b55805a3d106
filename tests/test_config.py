"""Configuration errors name the file, the table, the key and what is wrong, exactly."""

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
                                "exhaust": False, "vent": True, "alarm": False}
    assert len(c.sha256) == 64


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d["thresholds"]["o2"].__setitem__("trip", 1.0),
     "config/cell.toml: [thresholds.o2] trip = 1.0 must be above warning = 2.0"),
    (lambda d: d["thresholds"]["h2_cell"].__setitem__("warning", 3.0),
     "config/cell.toml: [thresholds.h2_cell] trip = 2.0 must be above warning = 3.0"),
    (lambda d: d["cell"].__setitem__("scan_period_s", 0.005),
     "config/cell.toml: [cell] scan_period_s = 0.005 must be at least 0.02"),
    (lambda d: d["cell"].__setitem__("scan_perod_s", 0.1),
     "config/cell.toml: [cell] unknown key 'scan_perod_s' (likely a typo; known keys here: id, "
     "overrun_trip_count, remote_reset, scan_period_s)"),
    (lambda d: d["timers"].__setitem__("purge_hold_s", "ten"),
     'config/cell.toml: [timers] purge_hold_s = "ten" must be a number'),
    (lambda d: d["outputs"]["crusher"].__setitem__("safe", True),
     "config/cell.toml: [outputs.crusher] safe = true must be false: this output must be off with no power"),
    (lambda d: d["outputs"]["vent"].pop("safe"),
     "config/cell.toml: [outputs.vent] missing key 'safe'"),
    (lambda d: d["sensors"].pop("h2_cell"),
     "config/cell.toml: [sensors] missing sensor 'h2_cell'"),
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
     "config/cell.toml: [thresholds.n2_supply] low_low = 5.0 must be below low = 4.0"),
    (lambda d: d["thresholds"]["temp_rise"].__setitem__("window_s", 0.1),
     "config/cell.toml: [thresholds.temp_rise] window_s = 0.1 must be at least 0.5"),
    (lambda d: d["mqtt"].__setitem__("require_tls", True),
     "config/cell.toml: [mqtt] require_tls = true needs tls = true"),
    (lambda d: d["cell"].__setitem__("id", "cell/1"),
     'config/cell.toml: [cell] id = "cell/1" must be ASCII without spaces, \'/\', \'#\' or \'+\' '
     "(it is an MQTT topic level)"),
    (lambda d: d["thresholds"]["co_cell"].__setitem__("trip", 5000.0),
     "config/cell.toml: [thresholds.co_cell] trip = 5000.0 must lie inside the sensor's range [0.0, 2000.0]"),
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
    assert "config/cell.toml: [sensors.h2_cell] stuck_s = 1000000000.0 must be at most 3600.0" in errs
    errs = errors_of(lambda d: d["sensors"]["h2_cell"].__setitem__("stale_s", 1e9))
    assert any("stale_s" in e for e in errs)
    errs = errors_of(lambda d: d["thresholds"]["h2_cell"].__setitem__("trip", 99.0))
    assert any("[thresholds.h2_cell] trip = 99.0 must lie inside" in e for e in errs)
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
    assert capsys.readouterr().out == "ok\n"


def test_check_config_cli_errors(tmp_path, capsys):
    text = DEFAULT.read_text().replace("trip = 2.5                    # while crushing",
                                       "trip = 1.0                    # while crushing")
    p = tmp_path / "cell.toml"
    p.write_text(text)
    assert main(["check-config", str(p)]) == 2
    out = capsys.readouterr().out
    assert f"{p}: [thresholds.o2] trip = 1.0 must be above warning = 2.0" in out


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


def test_unknown_top_level_table_is_named():
    errs = errors_of(lambda d: d.__setitem__("mqqt", {"host": "x"}))
    assert errs == ["config/cell.toml: unknown key 'mqqt' (likely a typo; known keys here: calibration, "
                    "cell, inputs, mqtt, outputs, sensors, thresholds, timers, voting, watchdog)"]
