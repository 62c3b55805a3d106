"""Signals and stalls against a real `crushcell run` process (issue 11, items 4 and 5).

Hazards:
- H-SIGNAL: SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 and SIGALRM (and every other signal whose default
  action ends the process) ended it with the crusher and the feed on, no `end` record and a stale
  pid file. Every one must end in the safe state, with an `end` record naming the signal and the
  outputs as they were left, and an exit status that makes systemd restart it.
- H-END: the `end` record said "crusher": true after a SIGTERM while crushing, although the
  outputs had been forced safe: the log told the opposite of what happened.
- H-STALL: a process stopped for a second (SIGSTOP, then SIGCONT) must trip scan_overrun.
- H-JOURNAL: under systemd a trip must reach `journalctl -p warning`: sd-daemon priority prefixes
  when (and only when) stderr is the journal stream systemd named in JOURNAL_STREAM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from controller import journald
from controller.config import load
from controller.runtime import DIAGNOSE_SIGNALS, IGNORED_SIGNALS, signal_name, stop_signals

ROOT = Path(__file__).resolve().parents[1]
SAFE = load(ROOT / "config" / "cell.toml").safe_outputs()

TO_RUNNING = """name = "crush at once"
duration_s = 36000
[[at]]
t = 3
command = "purge"
[[at]]
t = 170
command = "start"
"""


class Controller:
    """A real `crushcell run --hal sim` with its event file, stderr captured to a file."""

    def __init__(self, tmp: Path, *, speed: float = 10, scenario: str | None = None,
                 env: dict[str, str] | None = None, journal: bool = False):
        self.events = tmp / "events.jsonl"
        self.state = tmp / "state"
        self.stderr_path = tmp / "stderr.txt"
        argv = [sys.executable, "-m", "controller.cli", "run", "--hal", "sim", "--no-mqtt", "--no-status",
                "--state-dir", str(self.state), "--events", str(self.events), "--speed", str(speed)]
        if scenario is not None:
            path = tmp / "scenario.toml"
            path.write_text(scenario)
            argv += ["--scenario", str(path)]
        self.stderr = open(self.stderr_path, "w")  # noqa: SIM115
        # journal: stdout (the JSON event lines) and stderr (the logs) on one stream, as systemd
        # connects them to the journal.
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=self.stderr if journal else subprocess.DEVNULL,
                                     stderr=self.stderr, env={**os.environ, **(env or {})})

    def records(self) -> list[dict]:
        if not self.events.exists():
            return []
        out = []
        for line in self.events.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass    # a line being written
        return out

    def wait_for(self, what, timeout: float = 30.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            recs = self.records()
            if any(what(r) for r in recs):
                return recs
            assert self.proc.poll() is None, f"exited {self.proc.returncode}: {self.stderr_text()[-2000:]}"
            time.sleep(0.05)
        raise AssertionError(f"timed out; last records: {self.records()[-5:]}")

    def stderr_text(self) -> str:
        self.stderr.flush()
        return self.stderr_path.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.stderr.close()


@pytest.fixture
def controller(tmp_path):
    made: list[Controller] = []

    def start(**kw) -> Controller:
        c = Controller(tmp_path, **kw)
        made.append(c)
        return c
    yield start
    for c in made:
        c.stop()


def _idle(r: dict) -> bool:
    return r.get("type") == "state" and r.get("to") == "IDLE"


# -- H-SIGNAL ------------------------------------------------------------------------------------

# Signals of signal(7) whose default action is "Term" or "Core" (written from the man page, not
# from our code): each must be handled one way or another.
TERMINATING = ("SIGHUP", "SIGINT", "SIGQUIT", "SIGILL", "SIGTRAP", "SIGABRT", "SIGBUS", "SIGFPE",
               "SIGUSR1", "SIGSEGV", "SIGUSR2", "SIGPIPE", "SIGALRM", "SIGTERM", "SIGSTKFLT", "SIGXCPU",
               "SIGXFSZ", "SIGVTALRM", "SIGPROF", "SIGIO", "SIGPWR", "SIGSYS")
# Faults of the process itself: faulthandler dumps the stacks and the process dies (nothing in
# Python can run safely after them); the external watchdog relay drops the outputs.
FAULTS = ("SIGILL", "SIGABRT", "SIGBUS", "SIGFPE", "SIGSEGV")


def test_every_terminating_signal_has_a_decided_meaning():
    stops = {getattr(s, "name", s) for s in stop_signals()}
    for name in TERMINATING:
        handled = name in stops or name in DIAGNOSE_SIGNALS or name in IGNORED_SIGNALS or name in FAULTS
        assert handled, name
    for sig in range(signal.SIGRTMIN, signal.SIGRTMAX + 1):   # default action: Term
        assert sig in {int(s) for s in stop_signals()}, sig
    for name in ("SIGTSTP", "SIGTTIN", "SIGTTOU"):           # default: suspend with outputs live
        assert name in stops, name


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR2, signal.SIGALRM,
                                 signal.SIGPWR, signal.SIGRTMIN + 2, signal.SIGTSTP],
                         ids=signal_name)
def test_a_stray_signal_ends_safe_with_an_end_record_and_a_restartable_status(controller, sig):
    c = controller()
    c.wait_for(_idle)
    pid_file = c.state / "crushcell.pid"
    assert pid_file.exists()
    c.proc.send_signal(sig)
    rc = c.proc.wait(15)
    assert rc == 128 + sig, (rc, c.stderr_text()[-2000:])    # systemd's Restart=on-failure restarts it
    end = c.records()[-1]
    assert end["type"] == "end" and end["forced_safe"] is True, end
    assert end["signal"] == (f"SIGRTMIN+{sig - signal.SIGRTMIN}" if sig > signal.SIGRTMIN
                             else signal.Signals(sig).name)
    assert end["outputs"] == SAFE
    assert not pid_file.exists()
    if sig == signal.SIGQUIT:
        assert "Thread 0x" in c.stderr_text() or "Current thread" in c.stderr_text()   # the stack dump


def test_sigterm_while_crushing_records_the_outputs_forced_safe(controller):
    c = controller(speed=40, scenario=TO_RUNNING)
    c.wait_for(lambda r: r.get("type") == "state" and r.get("to") == "RUNNING", timeout=60)
    time.sleep(0.3)
    c.proc.send_signal(signal.SIGTERM)
    assert c.proc.wait(15) == 0
    end = c.records()[-1]
    assert end["type"] == "end" and end["state"] == "RUNNING" and end["signal"] == "SIGTERM"
    assert end["commanded"]["crusher"] is True and end["commanded"]["feed"] is True   # as the scan had it
    assert end["outputs"] == SAFE and end["outputs"]["crusher"] is False and end["outputs"]["feed"] is False


def test_sigusr1_dumps_the_stacks_and_the_controller_runs_on(controller):
    c = controller()
    c.wait_for(_idle)
    c.proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while "Thread 0x" not in c.stderr_text() and time.monotonic() < deadline:   # faulthandler's dump
        time.sleep(0.05)
    assert c.stderr_text().count("Thread 0x") >= 2                    # every thread, not just one
    time.sleep(0.5)
    assert c.proc.poll() is None                      # still scanning
    before = len(c.records())
    c.proc.send_signal(signal.SIGTERM)
    assert c.proc.wait(15) == 0
    assert len(c.records()) > before and c.records()[-1]["type"] == "end"


# -- H-STALL -------------------------------------------------------------------------------------

def test_a_process_stopped_for_a_second_trips_scan_overrun(controller):
    c = controller(speed=1)
    c.wait_for(_idle)
    c.proc.send_signal(signal.SIGSTOP)
    time.sleep(1.0)
    c.proc.send_signal(signal.SIGCONT)
    recs = c.wait_for(lambda r: r.get("type") == "trip", timeout=10)
    trip = next(r for r in recs if r["type"] == "trip")
    stall = next(r for r in recs if r["type"] == "stall")
    assert "scan_overrun" in trip["causes"], trip
    assert stall["late_s"] >= 0.8, stall
    c.proc.send_signal(signal.SIGTERM)
    assert c.proc.wait(15) == 0


# -- H-JOURNAL -----------------------------------------------------------------------------------

def test_journal_stream_is_recognised_only_when_it_names_stderr(tmp_path):
    f = tmp_path / "stream"
    with open(f, "w") as stream, open(tmp_path / "other", "w") as other:
        st = os.fstat(stream.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert journald.stream_is_journal(stream, env)
        assert not journald.stream_is_journal(other, env)              # inherited by a child
        assert not journald.stream_is_journal(stream, {})
        assert not journald.stream_is_journal(stream, {"JOURNAL_STREAM": "garbage"})


def test_under_the_journal_a_trip_is_priority_3_and_info_stays_6(controller, tmp_path):
    """stderr is a file whose dev:inode is in JOURNAL_STREAM, as systemd sets it for a service."""
    probe = tmp_path / "stderr.txt"
    probe.touch()
    st = os.stat(probe)
    # The Controller truncates and reopens stderr.txt: same inode, so JOURNAL_STREAM matches.
    scenario = "name = \"trip\"\nduration_s = 3600\n[[at]]\nt = 3\nevent = \"estop\"\n"
    c = controller(scenario=scenario, env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, journal=True)
    c.wait_for(lambda r: r.get("type") == "trip")
    time.sleep(0.3)
    c.proc.send_signal(signal.SIGTERM)
    c.proc.wait(15)
    lines = [ln for ln in c.stderr_text().splitlines() if ln.startswith("<")]
    trips = [ln for ln in lines if '"type":"trip"' in ln]
    tripped = [ln for ln in lines if '"to":"TRIPPED"' in ln]
    booted = [ln for ln in lines if '"to":"IDLE"' in ln]
    assert trips and all(ln.startswith("<3>{") for ln in trips), lines[:10]
    assert tripped and tripped[0].startswith("<3>")
    assert booted and booted[0].startswith("<6>")
    # The human log lines (banner, summary) carry priorities as well: every line starts with one.
    text = [ln for ln in c.stderr_text().splitlines() if ln.strip()]
    assert all(ln[:1] == "<" and ln[2:3] == ">" for ln in text), [ln for ln in text if ln[:1] != "<"][:5]


def test_without_the_journal_lines_carry_no_prefix(controller):
    c = controller(env={"JOURNAL_STREAM": ""}, journal=True)
    c.wait_for(_idle)
    c.proc.send_signal(signal.SIGTERM)
    c.proc.wait(15)
    lines = [ln for ln in c.stderr_text().splitlines() if ln.strip()]
    assert lines and not any(ln.startswith("<") for ln in lines), lines[:5]
