"""A disk error must never stop persistence for good (issue 11, item 2).

Hazard: on the first ENOSPC or EROFS the pump thread died: the latch file, the journal, the event
log, stderr and MQTT stopped for good while the cell ran on (and the process exited 0). A trip
after that was never written anywhere. Now the persister keeps what it could not write, retries
with a backoff, raises `state_write_failed` (which refuses `start`) while the latch file cannot be
written, says so once in a `persist` event, and recovers by itself when the disk does.

The disk errors are real where the test runs as root (a small tmpfs filled up; a read-only bind
mount over the state dir); otherwise, and for the exact backoff, os-level calls are made to fail
(os.write raising ENOSPC, os.open raising EROFS) under the state dir only.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from controller import config, persist
from controller.loop import ScanLoop
from hal.sim import SimulatedCell

ROOT = Path(__file__).resolve().parents[1]
CONFIG = config.load(ROOT / "config" / "cell.toml")
PASS_S = 0.25   # one pump pass of the fake clock


# -- ways for a disk to fail ---------------------------------------------------------------------------
def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


@pytest.fixture
def small_fs(tmp_path):
    """A real 1 MiB tmpfs (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    mnt = tmp_path / "fs"
    mnt.mkdir()
    try:
        _mount("-t", "tmpfs", "-o", "size=1m,mode=755", "tmpfs", str(mnt))
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-R", "-l", str(mnt)], capture_output=True)


class Injected:
    """os-level calls under `root` fail with `err` while on: ENOSPC from os.write (the file opens,
    the data does not fit), EROFS from os.open for writing and os.replace (nothing can change)."""

    def __init__(self, monkeypatch, root: Path, err: int):
        self.on = False
        self.root = str(root)
        self.err = err
        self.latch_opens = 0
        real_write, real_open, real_replace = os.write, os.open, os.replace

        def fd_under(fd):
            try:
                return os.readlink(f"/proc/self/fd/{fd}").startswith(self.root)
            except OSError:
                return False

        def fail():
            raise OSError(self.err, os.strerror(self.err))

        def write(fd, data):
            if self.on and self.err == errno.ENOSPC and fd_under(fd):
                fail()
            return real_write(fd, data)

        def open_(path, flags, mode=0o777, *, dir_fd=None):
            if str(path).endswith(".latch.json.tmp"):
                self.latch_opens += 1
            if (self.on and self.err == errno.EROFS and str(path).startswith(self.root)
                    and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)):
                fail()
            return real_open(path, flags, mode, dir_fd=dir_fd)

        def replace(src, dst, **kw):
            if self.on and self.err == errno.EROFS and str(dst).startswith(self.root):
                fail()
            return real_replace(src, dst, **kw)

        monkeypatch.setattr(os, "write", write)
        monkeypatch.setattr(os, "open", open_)
        monkeypatch.setattr(os, "replace", replace)

    def fail(self):
        self.on = True

    def heal(self):
        self.on = False


class Full:
    """A real tmpfs filled to the last byte by another file."""

    def __init__(self, fs: Path):
        self.filler = fs / "filler"

    def fail(self):
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            for size in (65536, 4096, 512, 1):
                try:
                    while True:
                        os.write(fd, b"\0" * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
        finally:
            os.close(fd)

    def heal(self):
        self.filler.unlink()


class ReadOnly:
    """The state dir bind-mounted read-only over itself (open files stay writable, as after a
    remount by the kernel on an I/O error)."""

    def __init__(self, state: Path):
        self.state = str(state)

    def fail(self):
        _mount("--bind", self.state, self.state)
        _mount("-o", "remount,bind,ro", self.state)

    def heal(self):
        subprocess.run(["umount", "-l", self.state], check=True, capture_output=True)


@pytest.fixture(params=["injected ENOSPC", "injected EROFS", "tmpfs full", "read-only mount"])
def disk(request, tmp_path, monkeypatch):
    kind = request.param
    if kind.startswith("injected"):
        state = tmp_path / "state"
        err = errno.ENOSPC if "ENOSPC" in kind else errno.EROFS
        return state, Injected(monkeypatch, state, err), errno.errorcode[err]
    fs = request.getfixturevalue("small_fs")
    state = fs / "state"
    if kind == "tmpfs full":
        return state, Full(fs), "ENOSPC"
    state.mkdir()
    return state, ReadOnly(state), "EROFS"


# -- a persister driven like the pump drives it ----------------------------------------------------
class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


class Bench:
    def __init__(self, state: Path):
        self.clock = Clock()
        self.loop = ScanLoop(CONFIG, SimulatedCell(CONFIG, seed=1))
        self.p = persist.Persister(state, self.loop, CONFIG, clock=self.clock)
        self.loop.events.extend(self.loop.initial_events())
        self.loop.events.extend(self.p.restore())
        self.loop.publish_latch()
        self.seen: list[dict] = []   # what the pump would have written to the event log and MQTT
        self.state = state

    def passes(self, n: int = 1) -> None:
        """n pump passes, PASS_S apart, the sim scanning in between."""
        for _ in range(n):
            self.loop.run_simulated(self.loop.core.now + int(PASS_S * 1000))
            batch = self.loop.drain_events()
            self.p.handle(batch)          # never raises
            self.seen += batch
            self.clock.t += PASS_S

    def latch(self) -> dict:
        return json.loads((self.state / "latch.json").read_text())

    def persist_events(self, key: str) -> list[dict]:
        return [e for e in self.seen if e["type"] == "persist" and key in e]


def test_a_disk_that_fails_never_stops_persistence_and_recovers_by_itself(disk):
    state, fault, errname = disk
    b = Bench(state)
    b.passes(10)                                                  # BOOT -> IDLE, written
    before = b.latch()
    assert before["causes"] == [] and b.loop.platform_alarms() == ()

    fault.fail()
    b.loop.io.event("estop")
    b.passes(240)                                                 # a trip, then a minute failing
    assert b.loop.core.state_name == "TRIPPED"
    assert b.loop.platform_alarms() == ("state_write_failed",)
    assert b.latch() == before                                    # the old file, whole
    errors = b.persist_events("error")
    files = [e["file"] for e in errors]
    assert len(files) == len(set(files)), errors                  # said once per file, not per retry
    latch_errors = [e for e in errors if e["file"] == str(state / "latch.json")]
    assert latch_errors and latch_errors[0]["errno"] == errname and errname in latch_errors[0]["error"]

    fault.heal()
    b.passes(int(persist.RETRY_MAX_S / PASS_S) + 4)               # within the longest backoff
    assert b.loop.platform_alarms() == ()
    after = b.latch()
    assert after["causes"] == ["estop"] and after["seq"] == b.p.seq
    recovered = b.persist_events("recovered")
    assert {e["recovered"] for e in recovered} == {e["file"] for e in errors}
    journal = list(persist.read_journal(state))
    assert any(r["type"] == "trip" and r["causes"] == ["estop"] for r in journal)
    assert any(r["type"] == "persist" and r.get("errno") == errname for r in journal)
    seqs = [e["seq"] for e in b.seen]
    assert seqs == list(range(1, len(seqs) + 1))                   # every event numbered, once, in order
    b.p.close()


def busy(b: Bench, n: int) -> None:
    """n passes, each with an event (so each wants the latch written: the number moved)."""
    for _ in range(n):
        b.loop.record_event({"t": 0.0, "type": "outputs", "outputs": {}})
        b.passes(1)


def test_failed_writes_back_off_and_a_changed_latch_is_tried_at_once(tmp_path, monkeypatch):
    state = tmp_path / "state"
    fault = Injected(monkeypatch, state, errno.ENOSPC)
    b = Bench(state)
    b.passes(10)
    fault.fail()
    fault.latch_opens = 0
    busy(b, 1)           # the latch is written, and fails
    seconds = 100.0
    busy(b, int(seconds / PASS_S))
    # First retry after RETRY_MIN_S, doubling up to RETRY_MAX_S: 0.5 1 2 4 8 10 10 ... seconds.
    schedule, t, delay = [0.0], 0.0, persist.RETRY_MIN_S
    while t + delay <= seconds:
        t += delay
        schedule.append(t)
        delay = min(delay * 2, persist.RETRY_MAX_S)
    assert len(schedule) - 1 <= fault.latch_opens <= len(schedule) + 1, (fault.latch_opens, schedule)
    opens = fault.latch_opens
    b.loop.io.event("estop")
    b.passes(1)          # a trip: the latch changed, tried in this very pass
    assert fault.latch_opens == opens + 1
    assert len(b.persist_events("error")) == 2                    # latch and journal, once each
    busy(b, int(persist.ERROR_REPEAT_S / PASS_S))
    assert len(b.persist_events("error")) == 4                    # one reminder each after ERROR_REPEAT_S
    assert b.persist_events("error")[-1]["failures"] > 60
    b.p.close()


def test_audit_records_kept_while_the_journal_fails_are_bounded_and_the_loss_counted(tmp_path, monkeypatch):
    state = tmp_path / "state"
    fault = Injected(monkeypatch, state, errno.ENOSPC)
    b = Bench(state)
    b.passes(10)
    fault.fail()
    n = persist.UNJOURNALED_MAX + 500
    for k in range(n):
        b.loop.record_event({"t": 0.0, "type": "command", "action": "ack", "source": "remote",
                             "accepted": False, "reason": "test", "k": k})
    b.passes(1)
    assert len(b.p.unjournaled) == persist.UNJOURNALED_MAX
    fault.heal()
    b.passes(int(persist.RETRY_MAX_S / PASS_S) + 4)
    ks = [r["k"] for r in persist.read_journal(state) if "k" in r]
    assert ks[-1] == n - 1 and ks == list(range(ks[0], n))        # the newest kept, in order
    recovered = [e for e in b.persist_events("recovered") if e["recovered"].endswith("journal.jsonl")]
    assert recovered[0]["dropped"] == n - len(ks)                 # and the loss said out loud
    assert n - len(ks) >= 500
    b.p.close()


# -- end to end: the alarm refuses `start` ---------------------------------------------------------------
def test_state_write_failed_refuses_start_until_the_latch_can_be_written(disk):
    # READY, nothing to write: a disk that fills up or turns read-only is seen anyway (statvfs;
    # the injected faults are not visible to it, so there an acknowledgement makes a write).
    state, fault, _ = disk
    b = Bench(state)
    b.passes(10)
    b.loop.submit("purge", "local")
    while b.loop.core.state_name != "READY":
        b.passes(20)
        assert b.loop.core.now < 400_000, b.loop.core.state_name
    fault.fail()
    if isinstance(fault, Injected):
        b.loop.submit("ack", "local")
    b.passes(int(persist.PROBE_EVERY_S / PASS_S) + 2)
    alarms = [e for e in b.seen if e["type"] == "alarm" and e["name"] == "state_write_failed"]
    assert alarms and alarms[-1]["active"] is True
    replies = []
    b.loop.submit("start", "local", lambda ok, reason, st: replies.append((ok, reason)))
    b.passes(1)
    assert replies[0][0] is False and replies[0][1].startswith("state_write_failed"), replies
    assert b.loop.core.state_name == "READY"

    fault.heal()
    b.passes(int(persist.RETRY_MAX_S / PASS_S) + 4)              # written again; the alarm clears
    alarms = [e for e in b.seen if e["type"] == "alarm" and e["name"] == "state_write_failed"]
    assert alarms[-1]["active"] is False
    b.loop.submit("start", "local", lambda ok, reason, st: replies.append((ok, reason)))
    b.passes(1)
    assert replies[-1] == (True, "") and b.loop.core.state_name == "RUNNING"
    b.p.close()


# -- a read-only state dir at start ------------------------------------------------------------------
READY_THEN_START = """name = "start refused, trip still trips"
duration_s = 165
[[at]]
t = 2.5
command = "purge"
[[at]]
t = 150
command = "start"
[[at]]
t = 155
event = "estop"
"""

SERVE = """
import sys
import hal
from controller import cli, config, runtime, scenario
args = cli.build_parser().parse_args(sys.argv[1:])
cfg = config.load(args.config)
sc = scenario.load(args.scenario)
io = hal.open_backend("sim", cfg, seed=sc.seed)
try:
    sys.exit(runtime.serve(args, cfg, io, sc))
finally:
    io.close()
"""


def test_a_read_only_state_dir_at_start_runs_the_cell_with_start_refused(small_fs, tmp_path):
    state = small_fs / "state"
    state.mkdir()
    (state / "latch.json").write_text(json.dumps({"causes": [], "trip_acked": False, "acked": [], "seq": 7}))
    _mount("-o", "remount,ro", str(small_fs))
    scenario = tmp_path / "s.toml"
    scenario.write_text(READY_THEN_START)
    events = tmp_path / "events.jsonl"
    # serve() is what `crushcell run` runs once it holds the state dir's lock (cmd_run's pid file and
    # lock are not part of this test: they cannot be written on a read-only state dir either).
    proc = subprocess.run([sys.executable, "-c", SERVE, "run", "--hal", "sim", "--no-mqtt", "--no-status",
                           "--config", str(ROOT / "config" / "cell.toml"), "--state-dir", str(state),
                           "--scenario", str(scenario), "--speed", "100", "--events", str(events)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = [json.loads(x) for x in events.read_text().splitlines()]
    states = [(e["to"], e["cause"]) for e in log if e["type"] == "state"]
    assert states[:4] == [("BOOT", "start"), ("IDLE", "self_test_passed"), ("PURGING", "command:purge"),
                          ("READY", "inerted")], states
    start = [e for e in log if e["type"] == "command" and e["action"] == "start"]
    assert start[0]["accepted"] is False and start[0]["reason"].startswith("state_write_failed")
    assert ("TRIPPED", "trip:estop") in states                    # the safety loop trips as ever
    alarm = [e for e in log if e["type"] == "alarm" and e["name"] == "state_write_failed"]
    assert alarm[0]["active"] is True
    error = [e for e in log if e["type"] == "persist" and e.get("file") == str(state / "latch.json")]
    assert error[0]["errno"] == "EROFS"
    seqs = [e["seq"] for e in log]
    assert seqs == list(range(8, 8 + len(seqs)))                  # numbered on from the latch file's 7


@pytest.mark.parametrize("had_lock_file", [True, False], ids=["lock_file_kept", "never_had_one"])
def test_crushcell_run_on_a_read_only_state_dir_runs_and_still_excludes_a_second_controller(
        small_fs, tmp_path, had_lock_file):
    """The whole command: the lock is taken read-only (or on the dir itself), the pid is not written,
    the cell runs with `start` refused, and a second controller on the same dir is still refused."""
    state = small_fs / "state"
    state.mkdir()
    (state / "latch.json").write_text(json.dumps({"causes": [], "trip_acked": False, "acked": [], "seq": 3}))
    if had_lock_file:
        (state / "crushcell.lock").write_text("")
    _mount("-o", "remount,ro", str(small_fs))
    scenario = tmp_path / "s.toml"
    scenario.write_text(READY_THEN_START)
    events = tmp_path / "events.jsonl"
    argv = [sys.executable, "-m", "controller.cli", "run", "--hal", "sim", "--no-mqtt", "--no-status",
            "--state-dir", str(state)]
    first = subprocess.Popen([*argv, "--scenario", str(scenario), "--speed", "100", "--events", str(events)],
                             cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not (events.exists() and '"to":"IDLE"' in events.read_text()):
            assert first.poll() is None, first.stderr.read()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        second = subprocess.run([*argv, "--duration", "1"], cwd=ROOT, capture_output=True, text=True,
                                timeout=60)
        assert second.returncode == 2 and "another controller" in second.stderr, second.stderr
        assert first.wait(60) == 0
    finally:
        if first.poll() is None:
            first.kill()
    log = [json.loads(x) for x in events.read_text().splitlines()]
    start = [e for e in log if e["type"] == "command" and e["action"] == "start"]
    assert start[0]["accepted"] is False and start[0]["reason"].startswith("state_write_failed")
    assert ("TRIPPED", "trip:estop") in [(e["to"], e["cause"]) for e in log if e["type"] == "state"]
