"""Bump-test and calibration tracking: due dates, the alarm, the start permissive, the CLI."""

import datetime as dt
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from cellspec.names import CALIBRATED_SENSORS
from controller import calibration as cal
from controller import config
from controller.loop import ScanLoop
from hal.sim import SimulatedCell

ROOT = Path(__file__).resolve().parents[1]
CONFIG = config.load(ROOT / "config" / "cell.toml")
LIMITS = CONFIG.calibration
TODAY = dt.date(2025, 6, 30)


def test_limits_are_configured_and_bounded():
    assert LIMITS == {"bump_interval_days": 30.0, "calibration_interval_days": 180.0, "grace_days": 7.0}
    data = tomllib.loads((ROOT / "config" / "cell.toml").read_text())
    data["calibration"]["grace_days"] = 31
    data["calibration"]["bump_interval_days"] = 0
    data["calibration"]["bump_intervall_days"] = 3
    with pytest.raises(config.ConfigError) as info:
        config.parse(data, "config/cell.toml")
    assert info.value.errors == [
        "config/cell.toml: [calibration] bump_interval_days = 0 must be at least 1.0",
        "config/cell.toml: [calibration] grace_days = 31 must be at most 30.0",
        "config/cell.toml: [calibration] unknown key 'bump_intervall_days' (likely a typo; known keys here: "
        "bump_interval_days, calibration_interval_days, grace_days)",
    ]


def all_recorded(bump: dt.date, calibration: dt.date) -> dict:
    return {s: {"bump": bump.isoformat(), "calibration": calibration.isoformat()} for s in CALIBRATED_SENSORS}


def test_due_on_the_interval_day_and_overdue_after_the_grace():
    records = all_recorded(TODAY - dt.timedelta(days=29), TODAY - dt.timedelta(days=10))
    assert cal.due_and_overdue(cal.status(records, LIMITS, TODAY)) == ((), ())
    records["h2_cell"]["bump"] = (TODAY - dt.timedelta(days=30)).isoformat()
    assert cal.due_and_overdue(cal.status(records, LIMITS, TODAY)) == (("h2_cell",), ())
    records["h2_cell"]["bump"] = (TODAY - dt.timedelta(days=37)).isoformat()   # last day of grace
    assert cal.due_and_overdue(cal.status(records, LIMITS, TODAY)) == (("h2_cell",), ())
    records["h2_cell"]["bump"] = (TODAY - dt.timedelta(days=38)).isoformat()
    assert cal.due_and_overdue(cal.status(records, LIMITS, TODAY)) == (("h2_cell",), ("h2_cell",))
    records["h2_cell"]["bump"] = TODAY.isoformat()
    records["o2_b"]["calibration"] = (TODAY - dt.timedelta(days=188)).isoformat()
    assert cal.due_and_overdue(cal.status(records, LIMITS, TODAY)) == (("o2_b",), ("o2_b",))


def test_never_recorded_or_garbled_counts_as_overdue():
    records = all_recorded(TODAY, TODAY)
    del records["co_cell"]
    records["hf_room"]["bump"] = "last tuesday"
    due, overdue = cal.due_and_overdue(cal.status(records, LIMITS, TODAY))
    assert due == overdue == ("co_cell", "hf_room")


def test_record_keeps_other_sensors_and_a_calibration_counts_as_a_bump(tmp_path):
    cal.record(tmp_path, "o2_a", "bump", dt.date(2025, 6, 1))
    rec = cal.record(tmp_path, "lel_rto", "calibration", dt.date(2025, 6, 2))
    assert rec == {"type": "calibration", "sensor": "lel_rto", "kind": "calibration", "date": "2025-06-02"}
    assert cal.load(tmp_path) == {"o2_a": {"bump": "2025-06-01"},
                                  "lel_rto": {"calibration": "2025-06-02", "bump": "2025-06-02"}}
    with pytest.raises(cal.CalibrationError, match="unknown gas sensor 'temp_gas'"):
        cal.record(tmp_path, "temp_gas", "bump", TODAY)
    with pytest.raises(cal.CalibrationError, match="in the future"):
        cal.parse_date("2025-07-01", TODAY)
    with pytest.raises(cal.CalibrationError, match="YYYY-MM-DD"):
        cal.parse_date("30/06/2025", TODAY)
    (tmp_path / "calibration.json").write_text("[]")
    with pytest.raises(cal.CalibrationError, match="JSON object"):
        cal.load(tmp_path)


def ready_loop():
    loop = ScanLoop(CONFIG, SimulatedCell(CONFIG, seed=3))
    loop.run_simulated(2500)
    loop.submit("purge", "local")
    loop.run_simulated(200_000)
    assert loop.core.state_name == "READY"
    return loop


def test_tracker_drives_the_alarm_and_the_start_permissive(tmp_path):
    loop = ready_loop()
    tracker = cal.Tracker(tmp_path, CONFIG, loop, always=False)
    assert tracker.check(TODAY) == ((), ())            # simulated cell, no records file: nothing applies
    (tmp_path / "calibration.json").write_text(json.dumps(all_recorded(TODAY, TODAY)))
    records = all_recorded(TODAY, TODAY)
    records["co_cell"]["bump"] = "2025-05-01"          # 60 days: overdue beyond the grace
    (tmp_path / "calibration.json").write_text(json.dumps(records))
    assert tracker.check(TODAY) == (("co_cell",), ("co_cell",))
    replies = []
    loop.submit("start", "local", lambda a, r, s: replies.append((a, r)))
    loop.run_simulated(loop.core.now + 200)
    assert replies[0][0] is False and "calibration overdue beyond the grace: co_cell" in replies[0][1]
    assert any(e["type"] == "alarm" and e["name"] == "calibration_due:co_cell" for e in loop.drain_events())

    records["co_cell"]["bump"] = "2025-05-28"          # 33 days: due, within the grace
    (tmp_path / "calibration.json").write_text(json.dumps(records))
    tracker.check(TODAY)
    loop.submit("ack", "local")
    loop.submit("start", "local", lambda a, r, s: replies.append((a, r)))
    loop.run_simulated(loop.core.now + 200)
    assert replies[-1] == (True, "")
    assert loop.core.state_name == "RUNNING"


def test_tracker_on_hardware_enforces_without_a_file_and_ticks_by_period(tmp_path):
    loop = ScanLoop(CONFIG, SimulatedCell(CONFIG, seed=3))
    tracker = cal.Tracker(tmp_path, CONFIG, loop, always=True)
    tracker.tick(100.0, TODAY)
    assert loop._calibration == (CALIBRATED_SENSORS, CALIBRATED_SENSORS)
    (tmp_path / "calibration.json").write_text(json.dumps(all_recorded(TODAY, TODAY)))
    tracker.tick(100.0 + cal.CHECK_PERIOD_S - 1, TODAY)
    assert loop._calibration == (CALIBRATED_SENSORS, CALIBRATED_SENSORS)   # not yet re-read
    tracker.tick(100.0 + cal.CHECK_PERIOD_S, TODAY)
    assert loop._calibration == ((), ())


def crushcell(*args):
    return subprocess.run([sys.executable, "-m", "controller.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def test_cli_record_show_and_journal(tmp_path):
    ok = crushcell("calibration", "record", "h2_cell", "--bump", "--date", "2025-01-02", "--by", "ana",
                   "--state-dir", str(tmp_path))
    assert ok.returncode == 0 and ok.stdout == "h2_cell: bump recorded on 2025-01-02\n"
    shown = crushcell("calibration", "show", "--state-dir", str(tmp_path))
    assert shown.returncode == 0
    line = [x for x in shown.stdout.splitlines() if x.startswith("h2_cell") and "bump" in x][0]
    assert "2025-01-02" in line and "2025-02-01" in line
    assert "never recorded: blocks start" in shown.stdout
    journal = crushcell("journal", "--state-dir", str(tmp_path))
    rec = json.loads(journal.stdout.splitlines()[-1])
    assert rec["type"] == "calibration" and rec["sensor"] == "h2_cell" and rec["by"] == "ana"
    for argv in (["calibration", "record", "temp_gas", "--bump"],
                 ["calibration", "record", "h2_cell"],
                 ["calibration", "record", "h2_cell", "--bump", "--calibration"],
                 ["calibration"]):
        bad = crushcell(*argv, "--state-dir", str(tmp_path)) if argv != ["calibration"] else crushcell(*argv)
        assert bad.returncode == 2 and "usage:" in bad.stderr, argv
    future = crushcell("calibration", "record", "h2_cell", "--bump", "--date", "2999-01-01",
                       "--state-dir", str(tmp_path))
    assert future.returncode == 2 and "is in the future" in future.stderr


@pytest.mark.parametrize("backend", ["sim", "mock", "hardware"])
@pytest.mark.parametrize("with_file", [False, True])
def test_show_and_the_running_controller_agree_on_what_blocks_start(tmp_path, backend, with_file):
    # Issue 13: `calibration show` said "never recorded: blocks start" for every sensor while the
    # simulated cell started. Both now ask calibration.enforced(): the Tracker (what `run` enforces,
    # always=True only on the hardware) and the table must name the same sensors as blocking.
    if with_file:
        cal.record(tmp_path, "o2_a", "calibration", TODAY)
    always = backend == "hardware"
    tracker = cal.Tracker(tmp_path, CONFIG, ScanLoop(CONFIG, SimulatedCell(CONFIG)), always=always)
    _due, overdue = tracker.check(TODAY)
    text = cal.show(tmp_path, LIMITS, TODAY, always=always, backend=backend)
    blocking = {line.split()[0] for line in text.splitlines() if line.endswith("blocks start")}
    assert blocking == set(overdue)
    if not always and not with_file:
        assert overdue == () and "not enforced on the simulated cell" in text
        assert "the records apply only once a calibration.json exists" in text


def test_cli_show_on_the_simulated_cell_says_why_nothing_blocks_start(tmp_path):
    shown = crushcell("calibration", "show", "--hal", "sim", "--state-dir", str(tmp_path))
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"{tmp_path / 'calibration.json'}: none. On the simulated cell "
                                   "(--hal sim) the records apply only once a calibration.json exists")
    assert "nothing below blocks start there" in shown.stdout
    assert "never recorded: blocks start" not in shown.stdout
    board = crushcell("calibration", "show", "--state-dir", str(tmp_path))   # the config says hardware
    assert "Judged for the board (--hal hardware)" in board.stdout
    assert "crushcell calibration show --hal sim" in board.stdout
    assert "never recorded: blocks start" in board.stdout


def test_a_date_that_is_not_a_string_counts_as_never_recorded():
    """A damaged calibration.json ({"bump": 5}) raised TypeError in the pump's check every pass;
    now the sensor counts as never tested (the worst case) and start stays blocked."""
    import datetime as dt

    from controller import calibration

    limits = {"bump_interval_days": 30.0, "calibration_interval_days": 180.0, "grace_days": 7.0}
    rows = calibration.status({"o2_a": {"bump": 5, "calibration": ["x"]}}, limits, dt.date(2026, 11, 29))
    mine = [r for r in rows if r["sensor"] == "o2_a"]
    assert mine and all(r["last"] is None and r["overdue"] for r in mine)
