"""The cause-and-effect matrix: generated, complete, embedded in docs/safety.md, and true.

True means: each permissive row, violated alone, refuses its command in the core with its own
reason; each trip row's effect is what the core really does (checked in test_core and the fault
matrix); every cause the core can latch has a row.
"""

import csv
import io
import subprocess
import sys
from pathlib import Path

import pytest
from corekit import Bench, params

from controller import causeeffect as ce
from controller import config, core
from controller.names import OUTPUTS

ROOT = Path(__file__).resolve().parents[1]
CONFIG = config.load(ROOT / "config" / "cell.toml")


def test_committed_matrix_matches_the_code():
    doc = (ROOT / "docs" / "safety.md").read_text(encoding="utf-8")
    committed = ce.embedded(doc)
    assert committed is not None, "docs/safety.md lost its cause-effect markers"
    assert committed == ce.render(CONFIG, "md"), (
        "docs/safety.md's cause-and-effect matrix is out of date: run `make docs` and review the diff")


def test_every_cause_and_permissive_has_a_row():
    names = [r[1] for r in ce.rows(CONFIG)]
    trips = [r[1] for r in ce.rows(CONFIG) if r[0] == "trip"]
    for cause in core.CAUSES:
        assert trips.count(cause) == 1, cause
    for row in core.CONTROLLED_STOPS:
        assert row[0] in names
    for row in core.PERMISSIVES:
        assert row[1] in names
    for row in core.AUTOMATIC:
        assert row[0] in names
    assert all(len(r) == len(ce.COLUMNS) for r in ce.rows(CONFIG))


def test_trip_effects_are_the_configured_safe_states():
    safe = CONFIG.safe_outputs()
    for r in ce.rows(CONFIG):
        if r[0] == "trip":
            cols = dict(zip(ce.COLUMNS, r, strict=True))
            assert cols["state change"] == "TRIPPED (latched)"
            for name in OUTPUTS[:-1]:
                word = cols[name]
                assert word in ("on", "off", "open", "closed")
                assert (word in ("on", "open")) == safe[name], (r[1], name, word)
            assert cols["alarm"] == "on until ack"


def test_limits_show_the_configured_numbers():
    cfg = config.parse(dict(CONFIG.raw, thresholds=dict(CONFIG.raw["thresholds"],
                                                        h2_cell={"warning": 1.2, "trip": 2.2})))
    row = [r for r in ce.rows(cfg) if r[1] == "h2_high"][0]
    assert row[4] == "h2_cell.trip = 2.2 vol%"
    stop = [r for r in ce.rows(cfg) if r[1] == "warning_held"][0]
    assert "h2_cell.warning = 1.2 vol%" in stop[4]


def test_unknown_limit_key_is_a_programming_error():
    with pytest.raises(KeyError, match="no rendering"):
        ce.limit_text(CONFIG, "cell.something_new")


def test_csv_and_html_carry_the_same_rows():
    parsed = list(csv.reader(io.StringIO(ce.render(CONFIG, "csv"))))
    assert tuple(parsed[0]) == ce.COLUMNS
    assert [tuple(r) for r in parsed[1:]] == ce.rows(CONFIG)
    page = ce.render(CONFIG, "html")
    assert page.count("<tr>") == len(ce.rows(CONFIG)) + 1
    assert "o2.trip = 2.5 %" in page and "&lt;" not in ce.render(CONFIG, "md")
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
                          capture_output=True, text=True, timeout=60)


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


VIOLATIONS = {
    # permissive name: (bring the bench there, break only this permissive, command, source, reason part)
    # estop_ok false also trips IDLE in the same scan, before any command: the row is seen on the guard.
    "estop_closed": ("IDLE", lambda b: b.inputs.update(estop_ok=False), "purge", "local", "E-stop"),
    "door_closed": ("IDLE", lambda b: b.inputs.update(door_closed=False), "purge", "local", "door"),
    "remote_enable": ("READY", lambda b: None, "start", "remote", "remote_enable"),
    "o2_all_healthy": ("READY", lambda b: b.faults.update(o2_a="crc"), "start", "local", "O2 vote degraded"),
    "o2_below_permissive": ("READY", lambda b: b.values.update(o2_a=1.6, o2_b=1.6, o2_c=1.6), "start",
                            "local", "not below start_permissive"),
    "no_alarm": ("READY", lambda b: b.values.update(h2_cell=1.5), "start", "local", "alarm active: h2_cell"),
    "rto_ready": ("READY", lambda b: b.inputs.update(rto_ready=False), "start", "local", "RTO not ready"),
    "crusher_off": ("READY", lambda b: setattr(b, "follow_crusher", False) or b.inputs.update(
        crusher_running=True), "start", "local", "crusher feedback"),
    "calibration_in_date": ("READY", lambda b: b.core.set_calibration(("h2_cell",), ("h2_cell",)), "start",
                            "local", "calibration overdue beyond the grace: h2_cell"),
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
    b.core.command_source = source
    why = getattr(b.core, row[5])()       # this row's own check names its own reason
    assert why is not None and reason in why, (name, why)
    assert getattr(b.core, guard)() is not None
    if name != "estop_closed":
        state = b.core.state_name
        ok, _reason = b.command(action, source)
        assert not ok and b.core.state_name == state, name


def test_permissive_checks_pass_on_a_healthy_ready_cell():
    b = _ready()
    b.inputs["remote_enable"] = True
    b.scan()
    b.core.command_source = "remote"
    for row in core.PERMISSIVES:
        if row[0] in ("guard_purge", "guard_start"):
            assert getattr(b.core, row[5])() is None, row[1]


def test_calibration_due_alone_raises_its_alarm_but_does_not_block_start():
    b = _ready()
    b.core.set_calibration(("o2_b", "not_a_sensor"), ())
    b.scan()
    assert ("calibration_due:o2_b", "warning", False) in b.core.active_alarms()
    assert b.command("start") == (True, "")
    b.core.set_calibration((), ())
    b.run(2.1)   # alarms clear after the off-delay
    assert not b.core.active_alarms()
