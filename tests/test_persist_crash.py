"""A crash at any write must neither lose a trip nor reuse an event number (issue 11, item 1).

Hazard: the persister fsynced the journal, then wrote the latch. A kill -9 between the two came
back IDLE with a door_open trip already in the journal, and numbered events again from the old
latch's number (two different events with one seq in the journal, the event log and MQTT).

Two tests:
- every write point: a forked child runs the real persister and pump on a real state dir and
  dies (os._exit, nothing flushed) just before its k-th write call (os.write, os.fsync,
  os.replace, os.ftruncate), or in the middle of it (half the bytes written), for every k until
  it runs through. After each crash a new persister restores from the files and must hold every
  trip the journal holds, number on above every number on disk, and leave the journal without
  a duplicate.
- a bounded random kill -9 loop on a real `crushcell run --hal sim` process (trips, resets and
  kills at random times); after each restart the same two properties are checked.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

from controller import config, persist
from controller.loop import ScanLoop
from controller.runtime import Pump
from controller.scenario import EventLog
from hal.sim import SimulatedCell

ROOT = Path(__file__).resolve().parents[1]
CONFIG = config.load(ROOT / "config" / "cell.toml")
CRASHED = 17


# -- what must hold after any crash ----------------------------------------------------------------
def expected_latch(records: list[dict]) -> set[str]:
    """The causes the journal says are latched: trips add, leaving TRIPPED (a reset) clears."""
    latched: set[str] = set()
    for r in records:
        if r.get("type") == "trip":
            latched |= set(r["causes"])
        elif r.get("type") == "state" and r.get("from") == "TRIPPED" and r.get("to") != "TRIPPED":
            latched = set()
    return latched


def numbered(path: Path) -> list[int]:
    """The seq of every whole line of a JSON-lines file (a line cut by the crash is skipped)."""
    out = []
    if path.exists():
        for line in path.read_bytes().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("seq"), int):
                out.append(rec["seq"])
    return out


def check_restart(state: Path, events: Path, where: str) -> tuple[ScanLoop, persist.Persister]:
    """Restart a persister on what the crash left; assert both properties; return it."""
    latch_doc, _ = persist.read_latch(state)
    before_journal = numbered(state / persist.JOURNAL_FILE)
    loop = ScanLoop(CONFIG, SimulatedCell(CONFIG, seed=1))
    p = persist.Persister(state, loop, CONFIG, events_path=str(events))
    p.restore()
    journal = list(persist.read_journal(state))
    seqs = [r["seq"] for r in journal if "seq" in r]
    assert seqs == sorted(set(seqs)), f"{where}: the journal holds a number twice or out of order: {seqs}"
    assert seqs[:len(before_journal)] == before_journal, f"{where}: the restart changed the journal"
    want = expected_latch(journal)
    assert want <= set(loop.core.causes()), \
        f"{where}: the journal says {sorted(want)} are latched; the restart latched {loop.core.causes()}"
    on_disk = seqs + numbered(events) + ([latch_doc["seq"]] if latch_doc else [])
    assert p.seq >= max(on_disk, default=0), \
        f"{where}: the next event would be {p.seq + 1}, but {max(on_disk)} is already on disk"
    ev = numbered(events)
    assert ev == sorted(set(ev)), f"{where}: the event log holds a number twice: {ev}"
    return loop, p


# -- every write point -------------------------------------------------------------------------------
class OsStream:
    """The --events file written with os.write, so that its writes are write points too."""

    def __init__(self, path: Path):
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.buf: list[str] = []

    def write(self, text: str) -> None:
        self.buf.append(text)

    def flush(self) -> None:
        data, self.buf = "".join(self.buf).encode(), []
        while data:
            data = data[os.write(self.fd, data):]


def arm(crash_at: int, torn: bool, counter: list[int]) -> None:
    """Replace the os-level write calls: die just before (or halfway into) the crash_at-th call."""
    real = {name: getattr(os, name) for name in ("write", "fsync", "replace", "ftruncate")}

    def point(name):
        def call(*args):
            counter[0] += 1
            if counter[0] == crash_at:
                if torn and name == "write" and len(args[1]) > 1:
                    real["write"](args[0], bytes(args[1])[:len(args[1]) // 2])
                os._exit(CRASHED)
            return real[name](*args)
        return call

    for name in real:
        setattr(os, name, point(name))


def story(state: Path, events: Path, crash_at: int, torn: bool) -> int:
    """Boot, trip, acknowledge, reset, trip again; the pump flushes after each step. Returns the
    number of write calls made (when it did not crash)."""
    loop = ScanLoop(CONFIG, SimulatedCell(CONFIG, seed=1))
    p = persist.Persister(state, loop, CONFIG, events_path=str(events))
    start = p.restore()
    loop.publish_latch()
    pump = Pump(loop, events_file=EventLog(OsStream(events)), show_status=False, persister=p, echo=False)
    loop.events.extend(loop.initial_events())
    loop.events.extend(start)
    counter = [0]
    arm(crash_at, torn, counter)
    pump.flush()
    loop.run_simulated(2500)                              # BOOT -> IDLE
    pump.flush()
    loop.io.event("door_close")
    loop.submit("purge", "local")
    loop.run_simulated(3000)                              # IDLE -> PURGING
    pump.flush()
    loop.io.event("door_open")
    loop.run_simulated(3300)                              # PURGING -> TRIPPED (door_open)
    pump.flush()
    loop.submit("ack", "local")
    loop.io.event("door_close")
    loop.run_simulated(3600)
    pump.flush()
    loop.run_simulated(9000)                              # door closed for 5 s: a reset may clear it
    loop.submit("reset", "local")
    loop.run_simulated(9200)                              # TRIPPED -> PURGING
    pump.flush()
    loop.io.event("estop")
    loop.run_simulated(9600)                              # PURGING -> TRIPPED (estop)
    pump.flush()
    return counter[0]


def run_child(state: Path, events: Path, crash_at: int, torn: bool) -> int:
    pid = os.fork()
    if pid == 0:   # the child: never returns into pytest
        code = 0
        try:
            story(state, events, crash_at, torn)
        except BaseException:
            with open(state.parent / "child-error.txt", "w") as f:
                traceback.print_exc(file=f)
            code = 99
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_a_crash_at_any_write_loses_no_trip_and_reuses_no_number(tmp_path):
    # The story trips twice; without a crash, the restart holds the second trip.
    clean = tmp_path / "clean"
    clean.mkdir()
    assert run_child(clean / "state", clean / "events.jsonl", 10**9, False) == 0
    loop, _ = check_restart(clean / "state", clean / "events.jsonl", "no crash")
    assert loop.core.causes() == ["estop"]
    journal = list(persist.read_journal(clean / "state"))
    assert [r["causes"] for r in journal if r["type"] == "trip"] == [["door_open"], ["estop"]]
    assert any(r["type"] == "state" and r["cause"] == "command:reset" for r in journal)

    crashes = 0
    for torn in (False, True):
        k = 0
        while True:
            k += 1
            case = tmp_path / f"k{k}{'t' if torn else ''}"
            case.mkdir()
            code = run_child(case / "state", case / "events.jsonl", k, torn)
            err = case / "child-error.txt"
            assert code in (0, CRASHED), err.read_text() if err.exists() else code
            where = f"crash {'in the middle of' if torn else 'before'} write call {k}"
            check_restart(case / "state", case / "events.jsonl", where)
            if code == 0:
                break
            crashes += 1
    print(f"\n{crashes} crashes, {k - 1} write points")
    assert k > 20   # the story writes the latch, the journal and the event log many times


# -- a bounded random kill -9 loop on a real controller -------------------------------------------
KILLS = 20


def scenario(rng: random.Random) -> str:
    """Purge, a trip at a random time (released), a reset, another trip: each run, at speed 100."""
    first, second = rng.choice(["estop", "door_open"]), rng.choice(["estop", "door_open"])
    release = {"estop": "estop_release", "door_open": "door_close"}
    t1 = round(rng.uniform(2.6, 6.0), 2)
    steps = [(2.5, "command", "purge"), (t1, "event", first), (t1 + 0.5, "event", release[first]),
             (12.0, "command", "reset"), (round(rng.uniform(12.2, 16.0), 2), "event", second)]
    text = 'name = "kill -9 loop"\nduration_s = 3600\n'
    for t, kind, name in steps:
        text += f'[[at]]\nt = {t}\n{kind} = "{name}"\n'
    return text


def on_disk_max(state: Path, events: Path) -> int:
    doc, _ = persist.read_latch(state)
    return max([*numbered(state / persist.JOURNAL_FILE), *numbered(events), doc["seq"] if doc else 0])


def test_random_kill_9_of_a_running_controller_loses_no_trip_and_reuses_no_number(tmp_path):
    seed = int(os.environ.get("CRUSHCELL_KILL_SEED", time.time_ns() % 100_000))
    rng = random.Random(seed)
    state, events, script = tmp_path / "state", tmp_path / "events.jsonl", tmp_path / "s.toml"
    checked = latched_seen = 0
    t0 = time.monotonic()
    for i in range(KILLS):
        script.write_text(scenario(rng))
        highest = on_disk_max(state, events) if state.exists() else 0
        offset = events.stat().st_size if events.exists() else 0
        with open(tmp_path / "stderr.txt", "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "controller.cli", "run", "--hal", "sim", "--no-mqtt", "--no-status",
                 "--state-dir", str(state), "--scenario", str(script), "--speed", "100",
                 "--events", str(events)],
                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
        # Python starts in about 0.3 s (some runs die before writing anything); the story then takes
        # 0.16 s at speed 100, and the kill lands anywhere in it or after.
        time.sleep(rng.uniform(0.05, 0.3) if rng.random() < 0.25 else rng.uniform(0.3, 0.6))
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL, \
            f"run {i} (seed {seed}) ended by itself: {(tmp_path / 'stderr.txt').read_text()[-3000:]}"
        # What this run wrote, if it got as far as its first batch: check its start.
        mine = []
        with open(events, "rb") if events.exists() else open(os.devnull, "rb") as f:
            f.seek(offset)
            for line in f.read().splitlines():
                try:
                    mine.append(json.loads(line))
                except ValueError:
                    pass
        if not mine:
            continue
        first = mine[0]
        where = f"run {i} (seed {seed})"
        assert first["type"] == "state" and first["to"] == "BOOT", (where, first)
        assert first["seq"] > highest, f"{where}: started at {first['seq']}; {highest} was on disk"
        before = [r for r in persist.read_journal(state) if r.get("seq", 0) < first["seq"]]
        want = expected_latch(before)
        restored = next((set(e["restored"]) for e in mine if e["type"] == "persist" and "restored" in e),
                        set())
        assert want <= restored, f"{where}: the journal says {sorted(want)} are latched; restored {restored}"
        checked += 1
        latched_seen += bool(want)
    check_restart(state, events, f"after the last kill (seed {seed})")
    print(f"\n{KILLS} kills (seed {seed}) in {time.monotonic() - t0:.1f} s; {checked} restarts checked, "
          f"{latched_seen} of them with a latched trip")
    assert checked >= KILLS // 3 and latched_seen >= 2
