"""The command line on a developer's laptop (issue 13, "The laptop experience" and "Help"):
`--hal mock`, one state-dir rule for every command, a journal that says where it looked, help
that shows defaults and an example, and a README whose scenario events are the simulator's.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from controller import cli, config, probe, statedir
from hal.sim import EVENTS

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "config" / "cell.toml"


def crushcell(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "controller.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env=env)


# -- --hal mock ----------------------------------------------------------------------------------
def test_hal_mock_runs_the_simulated_cell(tmp_path):
    events = tmp_path / "events.jsonl"
    run = crushcell("run", "--hal", "mock", "--no-mqtt", "--no-status", "--speed", "20", "--duration", "3",
                    "--state-dir", str(tmp_path / "state"), "--events", str(events))
    assert run.returncode == 0, run.stderr
    recs = [json.loads(line) for line in events.read_text().splitlines()]
    # The simulated cell's sensors are healthy: the self-test passes (a stub's would not).
    assert any(r["type"] == "state" and r["cause"] == "self_test_passed" and r["to"] == "IDLE" for r in recs)
    assert recs[-1]["type"] == "end" and recs[-1]["forced_safe"] is True


def test_hal_backend_mock_in_the_config_is_accepted_and_is_the_simulated_cell(tmp_path):
    text = DEFAULT.read_text()
    assert 'backend = "hardware"' in text
    path = tmp_path / "cell.toml"
    path.write_text(text.replace('backend = "hardware"', 'backend = "mock"', 1))
    assert config.load(path).hal_backend == "mock"
    assert crushcell("check-config", str(path)).returncode == 0
    # No --hal: the config's backend; --speed is refused on anything but the simulated cell.
    run = crushcell("run", "--config", str(path), "--no-mqtt", "--no-status", "--speed", "20", "--duration",
                    "1", "--state-dir", str(tmp_path / "state"))
    assert run.returncode == 0, run.stderr
    bad = crushcell("run", "--hal", "hardware", "--speed", "2", "--state-dir", str(tmp_path / "s2"))
    assert bad.returncode == 2
    assert "--speed only applies to the simulated cell (--hal sim or mock)" in bad.stderr


# -- the state dir -------------------------------------------------------------------------------
def _defaults() -> dict[str, str]:
    p = cli.build_parser()
    out = {}
    for argv in (["run"], ["journal"], ["calibration", "show"], ["calibration", "record", "o2_a", "--bump"],
                 ["panel", "status"]):
        out[" ".join(argv[:2])] = p.parse_args(argv).state_dir
    out["probe"] = probe.build_parser().parse_args([]).state_dir
    return out


def test_every_command_defaults_to_the_same_state_dir(monkeypatch, tmp_path):
    monkeypatch.delenv(statedir.ENV, raising=False)
    expected = statedir.BOARD_STATE_DIR if Path(statedir.BOARD_STATE_DIR).is_dir() else "var"
    assert set(_defaults().values()) == {expected}
    monkeypatch.setenv(statedir.ENV, str(tmp_path))
    assert set(_defaults().values()) == {str(tmp_path)}


def test_the_board_state_dir_wins_where_it_exists(tmp_path):
    board = tmp_path / "var-lib-crushcell"
    assert statedir.default_state_dir({}, board=str(board)) == "var"          # a laptop
    board.mkdir()
    assert statedir.default_state_dir({}, board=str(board)) == str(board)     # a board from install.sh
    assert statedir.default_state_dir({statedir.ENV: "/x"}, board=str(board)) == "/x"


# -- journal -------------------------------------------------------------------------------------
def test_journal_of_an_empty_state_dir_says_where_it_looked(tmp_path):
    empty = crushcell("journal", "--state-dir", str(tmp_path))
    assert empty.returncode == 0 and empty.stdout == ""                      # stdout stays JSON lines
    assert empty.stderr == (f"crushcell: no journal.jsonl in state dir {tmp_path}; the demo (make run) keeps "
                            "its journal in var/demo: crushcell journal --state-dir var/demo\n")
    missing = crushcell("journal", "--state-dir", str(tmp_path / "nope"))
    assert missing.returncode == 2 and f"no state dir {tmp_path / 'nope'}" in missing.stderr
    assert "crushcell journal --state-dir var/demo" in missing.stderr


# -- help ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [["run"], ["simulate"], ["check-config"], ["cause-effect"], ["journal"],
                                  ["calibration"], ["calibration", "record"], ["calibration", "show"],
                                  ["panel"], ["probe"], ["watch"], ["hmi"]])
def test_every_subcommand_shows_its_defaults_and_an_example(argv):
    shown = crushcell(*argv, "--help")
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"\nexamples?( \([^)]*\))?:\n  (crushcell|make|sudo) ", shown.stdout), shown.stdout
    if argv not in (["calibration"],):
        assert "(default: " in " ".join(shown.stdout.split()), shown.stdout


def test_check_config_help_says_what_path_is_and_what_it_prints():
    shown = " ".join(crushcell("check-config", "--help").stdout.split())
    assert "PATH the plant configuration (TOML) to check (default: config/cell.toml)" in shown
    assert "print `ok: PATH sha256 <hex>`" in shown


def test_defaults_are_shown_but_never_as_none_or_false():
    run = " ".join(crushcell("run", "--help").stdout.split())
    assert "faster than real time (default: 1.0)" in run and "random seed (default: 0)" in run
    for argv in (["run"], ["journal"], ["cause-effect"]):
        shown = " ".join(crushcell(*argv, "--help").stdout.split())
        assert "(default: None)" not in shown and "(default: False)" not in shown, shown


# -- the README ----------------------------------------------------------------------------------
def test_the_readme_lists_every_scenario_event_of_the_simulator():
    readme = (ROOT / "README.md").read_text()
    block = readme.split('event = "thermal_runaway"', 1)[1].split("[[at]]", 1)[0]
    listed = set(re.findall(r"[a-z0-9_]+", block))
    assert set(EVENTS) - {"thermal_runaway"} <= listed, set(EVENTS) - listed
