"""Logs people and the journal can read (issue 13, "Logs and the journal").

Hazards:
- H-SILENT: nothing configured `logging`, so the link's lines (connected, refused) never printed and
  a controller against a dead broker said nothing until exit.
- H-JOURNAL-LOG: under systemd a log line without an sd-daemon prefix is stored at priority 6, so
  `journalctl -p warning` misses warnings and errors (and every traceback line but the first).
- H-MIXED: the JSON event stream mixed with prose cannot be read by a program: events on stdout,
  people's lines on stderr, never the other way round.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from controller import config as cfg
from controller import logsetup

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config" / "cell.toml"


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    logsetup._handler = None


def _journal_file(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A real file standing for the journal stream: JOURNAL_STREAM names its dev:inode."""
    path = tmp_path / "journal-stream"
    path.touch()
    st = os.stat(path)
    return path, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


def test_under_the_journal_every_log_line_carries_the_priority_of_its_level(tmp_path, restore_logging):
    path, env = _journal_file(tmp_path)
    with open(path, "a", encoding="utf-8") as stream:
        logsetup.configure("debug", stream=stream, environ=env)
        log = logging.getLogger("crushcell.test")
        log.error("a trip-worthy error")
        log.warning("broker refused")
        log.info("connected")
        log.debug("wiring")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.exception("the pump failed")
        log.info("banner line", extra={"plain": True})
    lines = path.read_text().splitlines()
    assert lines[0] == "<3>ERROR crushcell.test: a trip-worthy error"
    assert lines[1] == "<4>WARNING crushcell.test: broker refused"
    assert lines[2] == "<6>INFO crushcell.test: connected"
    assert lines[3] == "<7>DEBUG crushcell.test: wiring"
    trace = lines[4:-1]
    assert trace[0] == "<3>ERROR crushcell.test: the pump failed"
    assert len(trace) > 3 and all(ln.startswith("<3>") for ln in trace), trace   # every traceback line
    assert trace[-1] == "<3>RuntimeError: boom"
    assert lines[-1] == "<6>banner line"


def test_a_stream_that_is_not_the_journal_gets_no_prefix(tmp_path, restore_logging):
    path, env = _journal_file(tmp_path)
    other = tmp_path / "not-the-journal"
    with open(other, "w", encoding="utf-8") as stream:   # JOURNAL_STREAM inherited, names another file
        logsetup.configure("info", stream=stream, environ=env)
        logging.getLogger("crushcell.test").warning("careful")
    (line,) = other.read_text().splitlines()
    assert not line.startswith("<") and line.endswith("WARNING crushcell.test: careful"), line
    assert line[2] == ":" and line[5] == ":"     # HH:MM:SS first: no journal to stamp it


def test_priorities_by_level():
    assert [logsetup.priority(n) for n in (50, 40, 30, 20, 10, 25, 5)] == [2, 3, 4, 6, 7, 6, 7]


def test_colour_only_on_a_terminal_and_never_with_no_color():
    class Tty:
        def isatty(self):
            return True

    assert logsetup.colour_enabled(Tty(), {})
    assert not logsetup.colour_enabled(Tty(), {"NO_COLOR": "1"})
    assert logsetup.colour_enabled(Tty(), {"NO_COLOR": ""})        # no-color.org: empty means unset
    assert not logsetup.colour_enabled(Tty(), {"TERM": "dumb"})
    assert not logsetup.colour_enabled(open(os.devnull), {})        # noqa: SIM115 - a file, not a tty


def test_logging_level_key_is_read_and_checked(tmp_path):
    text = CONFIG.read_text()
    assert cfg.load(CONFIG).log_level == "info"                   # commented out: the default
    good = tmp_path / "debug.toml"
    good.write_text(text + '\n[logging]\nlevel = "debug"\n')
    assert cfg.load(good).log_level == "debug"
    choices = '"error", "warning", "info", "debug"'
    for bad, problem in (('level = "loud"', f'level = "loud" must be one of {choices}'),
                         ("level = 3", "level = 3 must be a string"),
                         ('levle = "info"', "unknown key 'levle' (likely a typo; known keys here: level)")):
        path = tmp_path / "bad.toml"
        path.write_text(text + f"\n[logging]\n{bad}\n")
        with pytest.raises(cfg.ConfigError) as exc:
            cfg.load(path)
        assert exc.value.errors == [f"{path}: [logging] {problem}"]


def test_the_commented_logging_key_in_cell_toml_is_valid(tmp_path):
    text = CONFIG.read_text()
    assert '# [logging]\n# level = "info"' in text
    path = tmp_path / "uncommented.toml"
    path.write_text(text.replace('# [logging]\n# level = "info"', '[logging]\nlevel = "info"'))
    assert cfg.load(path).log_level == "info"


# -- a real `crushcell run` -----------------------------------------------------------------------
def run(tmp_path: Path, *extra: str, name: str = "state",
        duration: str | None = "1") -> subprocess.CompletedProcess:
    state = tmp_path / name
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    limit = ["--duration", duration] if duration else []
    return subprocess.run([sys.executable, "-m", "controller.cli", "run", "--hal", "sim", "--no-mqtt",
                           *limit, "--state-dir", str(state), *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)


def test_run_banner_and_summary_on_stderr_and_only_json_on_stdout(tmp_path):
    out = run(tmp_path)
    assert out.returncode == 0, out.stderr
    state = tmp_path / "state"
    err = out.stderr.splitlines()
    config = cfg.load(CONFIG)
    # The banner: version, config and its sha256, HAL, broker and link state, state dir, how to stop.
    assert err[0].startswith("crushcell 0.1.0: cell cell1, controller starting (pid "), err[:3]
    assert f"  config     config/cell.toml (sha256 {config.sha256})" in err
    assert "  hal        sim (simulated cell, seed 0, real time)" in err
    assert "  broker     none (--no-mqtt): the cell runs without the plant link" in err
    assert any(ln.startswith(f"  state dir  {state} ") for ln in err), err
    assert any(ln.startswith("  stop       ") and "(SIGTERM): outputs go safe, a latched trip is kept" in ln
               for ln in err), err
    # The summary: final state, trips, events written, the command that reads the journal.
    summary = err[err.index(next(ln for ln in err if ln.startswith("crushcell: stopped"))):]
    assert summary[0].startswith("crushcell: stopped (--duration 1 s reached) at t="), summary
    assert summary[0].endswith("; final state BOOT"), summary
    assert summary[1] == "  trips      none"
    records = [json.loads(ln) for ln in out.stdout.splitlines()]      # stdout: JSON lines, nothing else
    assert records and records[-1]["type"] == "end"
    last = records[-1]["seq"]
    assert summary[2].startswith(f"  events     {last} written (seq 1 to {last}): ")
    assert summary[3] == f"  journal    crushcell journal --state-dir {state}"
    journal = subprocess.run([sys.executable, "-m", "controller.cli", "journal", "--state-dir", str(state)],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert journal.returncode == 0 and '"type":"end"' in journal.stdout   # the command works as printed


def test_run_summary_names_the_trips_and_their_causes(tmp_path):
    scenario = tmp_path / "trip.toml"
    scenario.write_text('name = "trip"\nduration_s = 8\n[[at]]\nt = 3\nevent = "estop"\n')
    out = run(tmp_path, "--scenario", str(scenario), "--speed", "20", duration=None)
    assert out.returncode == 0, out.stderr
    err = out.stderr.splitlines()
    head = next(ln for ln in err if ln.startswith("crushcell: stopped"))
    assert head.startswith("crushcell: stopped (the scenario ended) at t="), head
    assert "final state TRIPPED, latched: estop (first-out estop;" in head, head
    assert "causes must clear for 5 s, then reset at the panel" in head
    trips = [ln for ln in err if ln.startswith("  trips      ")]
    assert trips and trips[0].startswith("  trips      1: t=3.") and trips[0].endswith(" s estop"), trips


def test_quiet_silences_info_and_verbose_shows_debug(tmp_path):
    quiet = run(tmp_path, "-q", name="q", duration="0.3")
    assert quiet.returncode == 0, quiet.stderr
    assert "INFO" not in quiet.stderr and "controller starting" not in quiet.stderr, quiet.stderr
    assert "crushcell: stopped" not in quiet.stderr
    assert quiet.stdout.strip()                                     # the event stream is not a log
    verbose = run(tmp_path, "-v", name="v", duration="0.3")
    assert verbose.returncode == 0, verbose.stderr
    assert "DEBUG crushcell.run: wiring: scan period 0.1 s" in verbose.stderr, verbose.stderr
    assert "controller starting" in verbose.stderr
    both = run(tmp_path, "-v", "-q", name="vq")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


def test_run_against_a_dead_broker_says_so(tmp_path):
    with socket.socket() as s:           # a free port: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    state = tmp_path / "state"
    out = subprocess.run([sys.executable, "-m", "controller.cli", "run", "--hal", "sim", "--duration", "0.5",
                          "--broker", f"127.0.0.1:{port}", "--state-dir", str(state)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"  broker     127.0.0.1:{port}, topics crushcell/cell1/#: connecting (the log says" in out.stderr
    warnings = [ln for ln in out.stderr.splitlines() if " WARNING crushcell.link: " in ln]
    refused = [ln for ln in warnings if f"cannot connect to 127.0.0.1:{port}: ConnectionRefusedError" in ln]
    assert len(refused) == 1, out.stderr       # said at once, then at most once a minute (rate-limited)
    assert "retrying every" in refused[0]
