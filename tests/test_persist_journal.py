"""A journal deleted or moved during a run must not swallow the audit trail (issue 11, item 4).

Hazard: the open handle went on writing into the deleted (or moved) file, so every later record
(trips, resets, who acknowledged what) vanished with it. Before each batch the persister now
compares the path's inode with its open file's, reopens, raises `journal_reopened` for an hour and
journals a persist event that says what happened.
"""

from __future__ import annotations

import json
import signal
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


def bench(state: Path):
    loop = ScanLoop(CONFIG, SimulatedCell(CONFIG, seed=1))
    p = persist.Persister(state, loop, CONFIG)
    loop.events.extend(loop.initial_events())
    loop.events.extend(p.restore())
    loop.publish_latch()
    return loop, p


def flush(loop, p, until_ms):
    loop.run_simulated(until_ms)
    batch = loop.drain_events()
    p.handle(batch)
    return batch


@pytest.mark.parametrize("how", ["deleted", "moved away", "replaced"])
def test_a_journal_deleted_or_moved_during_the_run_is_reopened(tmp_path, how):
    loop, p = bench(tmp_path)
    flush(loop, p, 2500)                                         # BOOT -> IDLE, journaled
    journal = tmp_path / "journal.jsonl"
    if how == "deleted":
        journal.unlink()
    elif how == "moved away":
        journal.rename(tmp_path / "elsewhere.jsonl")
    else:
        journal.rename(tmp_path / "elsewhere.jsonl")
        journal.write_text("")                                    # another file under the name
    loop.io.event("estop")
    flush(loop, p, 3000)                                         # the trip: into the new file
    flush(loop, p, 3300)                                         # and the note of what happened
    records = list(persist.read_journal(tmp_path))
    assert [r["causes"] for r in records if r["type"] == "trip"] == [["estop"]]
    note = [r for r in records if r["type"] == "persist" and "journal_reopened" in r]
    assert note and note[0]["why"] == ("replaced" if how == "replaced" else "missing")
    assert str(journal) in note[0]["error"]
    assert loop.platform_alarms() == ("journal_reopened",)
    p.close()


def test_a_rotation_by_another_process_is_followed_quietly(tmp_path):
    loop, p = bench(tmp_path)
    flush(loop, p, 2500)
    other = persist.Journal(tmp_path, max_bytes=1)               # e.g. `crushcell calibration record`
    other.append([{"type": "calibration", "sensor": "o2_a"}])    # rotates journal.jsonl to .1
    other.close()
    loop.io.event("estop")
    flush(loop, p, 3000)
    flush(loop, p, 3300)
    newest = [json.loads(x) for x in (tmp_path / "journal.jsonl").read_text().splitlines()]
    assert any(r["type"] == "trip" for r in newest)
    assert not any("journal_reopened" in r for r in persist.read_journal(tmp_path))
    assert loop.platform_alarms() == ()
    p.close()


SCENARIO = """name = "events over time"
duration_s = 3600
[[at]]
t = 2.5
command = "purge"
[[at]]
t = 20
event = "estop"
"""


def test_a_running_controller_reopens_a_deleted_journal(tmp_path):
    state, events, script = tmp_path / "state", tmp_path / "events.jsonl", tmp_path / "s.toml"
    script.write_text(SCENARIO)
    proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "run", "--hal", "sim", "--no-mqtt",
                             "--no-status", "--state-dir", str(state), "--scenario", str(script),
                             "--speed", "10", "--events", str(events)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "stderr", "wb"))  # noqa: SIM115
    journal = state / "journal.jsonl"

    def stderr() -> str:
        return (tmp_path / "stderr").read_text()[-2000:]

    try:
        deadline = time.monotonic() + 30
        while not (journal.exists() and b'"PURGING"' in journal.read_bytes()):
            assert proc.poll() is None and time.monotonic() < deadline, stderr()
            time.sleep(0.05)
        journal.unlink()                                          # someone cleans up the disk
        while not (journal.exists() and b"journal_reopened" in journal.read_bytes()):
            assert proc.poll() is None and time.monotonic() < deadline, stderr()
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    assert proc.returncode == 0, stderr()
    records = list(persist.read_journal(state))
    assert [r["causes"] for r in records if r["type"] == "trip"] == [["estop"]]   # the trip is in it
    assert records[-1]["type"] == "end"
    log = [json.loads(x) for x in events.read_text().splitlines()]
    alarm = [e for e in log if e["type"] == "alarm" and e["name"] == "journal_reopened"]
    assert alarm and alarm[0]["active"] is True
