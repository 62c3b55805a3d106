"""Persistent latches and the audit journal.

The end-to-end proof is a real `crushcell run` killed with SIGKILL while TRIPPED: it comes back
TRIPPED with the same causes and needs a reset. The rest pins the pieces: atomic writes, rotation,
the `since` filter, ack state across a restart, a corrupt latch file, the operator on commands.
"""

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from corekit import Bench, params

from cellspec.names import OUT_ALARM, OUT_HORN
from controller import config, persist
from controller.loop import ScanLoop
from hal.sim import SimulatedCell

ROOT = Path(__file__).resolve().parents[1]
CONFIG = config.load(ROOT / "config" / "cell.toml")


# -- pieces ---------------------------------------------------------------------------------------
def test_atomic_write_replaces_whole_and_leaves_no_temp(tmp_path):
    target = tmp_path / "latch.json"
    persist.atomic_write(target, b"one")
    persist.atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latch.json"]


def test_journal_rotates_by_size_and_keeps_the_named_number_of_files(tmp_path):
    j = persist.Journal(tmp_path, max_bytes=200, files=3)
    for k in range(40):
        j.append([{"type": "command", "k": k, "ts": "2025-01-01T00:00:00+00:00"}])
    j.close()
    files = persist.journal_files(tmp_path)
    assert [p.name for p in files] == ["journal.jsonl.2", "journal.jsonl.1", "journal.jsonl"]
    assert all(p.stat().st_size <= 200 for p in files)
    ks = [r["k"] for r in persist.read_journal(tmp_path)]
    assert ks == sorted(ks) and ks[-1] == 39 and len(ks) < 40   # oldest dropped, order kept


def test_journal_limits_are_named():
    assert persist.JOURNAL_MAX_BYTES == 10 * 1024 * 1024 and persist.JOURNAL_FILES == 5


def test_read_journal_since_and_a_cut_last_line(tmp_path):
    (tmp_path / "journal.jsonl").write_text(
        '{"type":"command","ts":"2025-01-01T10:00:00+00:00","n":1}\n'
        '{"type":"command","ts":"2025-01-01T12:00:00+00:00","n":2}\n'
        '{"type":"comm')
    since = dt.datetime(2025, 1, 1, 11, tzinfo=dt.UTC)
    assert [r["n"] for r in persist.read_journal(tmp_path, since)] == [2]
    assert [r["n"] for r in persist.read_journal(tmp_path)] == [1, 2]


def test_parse_since():
    now = dt.datetime(2025, 1, 2, 12, tzinfo=dt.UTC)
    assert persist.parse_since("2h", now) == now - dt.timedelta(hours=2)
    assert persist.parse_since("90s", now) == now - dt.timedelta(seconds=90)
    assert persist.parse_since("7d", now) == now - dt.timedelta(days=7)
    assert persist.parse_since("2025-01-01T06:00:00+00:00") == dt.datetime(2025, 1, 1, 6, tzinfo=dt.UTC)
    assert persist.parse_since("2025-01-01T06:00").tzinfo is not None   # local time
    with pytest.raises(ValueError):
        persist.parse_since("yesterday")


def _loop():
    return ScanLoop(CONFIG, SimulatedCell(CONFIG, seed=1))


def test_restart_restores_latch_causes_and_acknowledgements(tmp_path):
    loop = _loop()
    p = persist.Persister(tmp_path, loop, CONFIG)
    p.restore()
    loop.run_simulated(2500)
    loop.io.event("estop")
    loop.run_simulated(3000)
    loop.submit("ack", "local", by="ana")
    loop.run_simulated(3200)
    p.handle(loop.drain_events())
    saved = json.loads((tmp_path / "latch.json").read_text())
    assert saved["causes"] == ["estop"] and saved["trip_acked"] is True
    assert saved["seq"] > 5 and saved["config_sha256"] == CONFIG.sha256
    p.close()

    again = _loop()
    p2 = persist.Persister(tmp_path, again, CONFIG)
    records = p2.restore()
    assert records[0] == {"t": 0.0, "type": "persist", "restored": ["estop"]}
    assert records[1]["type"] == "config" and records[1]["changed"] is False
    assert records[1]["previous_sha256"] == CONFIG.sha256
    again.io.event("estop_release")
    again.run_simulated(2500)
    assert again.core.state_name == "TRIPPED" and again.core.causes() == ["estop"]
    assert again.core.trip_acked is True          # silenced before the restart: stays silent
    assert not again.core.outputs[OUT_HORN]      # the horn silent; the beacon on while TRIPPED
    assert again.core.outputs[OUT_ALARM]
    events = again.drain_events()
    p2.handle(events)
    assert events[0]["seq"] == saved["seq"] + 1   # the sequence goes on across the restart
    p2.close()


def test_corrupt_latch_file_starts_tripped(tmp_path):
    (tmp_path / "latch.json").write_text("{not json")
    loop = _loop()
    p = persist.Persister(tmp_path, loop, CONFIG)
    records = p.restore()
    assert records[0]["type"] == "persist" and "unreadable latch file" in records[0]["error"]
    loop.run_simulated(2500)
    assert loop.core.state_name == "TRIPPED" and loop.core.causes() == ["self_test"]
    p.close()


def test_config_change_is_noted(tmp_path):
    (tmp_path / "latch.json").write_text(json.dumps({"causes": [], "trip_acked": False, "acked": [], "seq": 3,
                                                    "config_sha256": "0" * 64}))
    loop = _loop()
    p = persist.Persister(tmp_path, loop, CONFIG)
    rec = p.restore()[-1]
    assert rec == {"t": 0.0, "type": "config", "path": CONFIG.path, "sha256": CONFIG.sha256,
                   "previous_sha256": "0" * 64, "changed": True}
    p.close()


def test_latch_written_only_when_it_moves(tmp_path):
    loop = _loop()
    p = persist.Persister(tmp_path, loop, CONFIG)
    p.restore()
    loop.publish_latch()
    p.handle([])
    first = (tmp_path / "latch.json").stat().st_mtime_ns
    os.utime(tmp_path / "latch.json", ns=(1, 1))
    p.handle([])                                   # nothing changed: no write
    assert (tmp_path / "latch.json").stat().st_mtime_ns == 1
    loop.run_simulated(2500)
    loop.io.event("estop")
    loop.run_simulated(3000)
    p.handle([])
    assert json.loads((tmp_path / "latch.json").read_text())["causes"] == ["estop"]
    assert first > 1
    p.close()


def test_submit_by_reaches_the_command_event_and_journal(tmp_path):
    loop = _loop()
    p = persist.Persister(tmp_path, loop, CONFIG)
    p.restore()
    replies = []
    loop.submit("purge", "remote", lambda a, r, s: replies.append((a, r, s)), by="ana")
    loop.submit("ack", "local")
    loop.run_simulated(0)
    cmds = [e for e in loop.drain_events() if e["type"] == "command"]
    assert cmds[0]["by"] == "ana" and cmds[0]["accepted"] is False and "BOOT" in cmds[0]["reason"]
    assert "by" not in cmds[1]
    assert replies == [(False, cmds[0]["reason"], "BOOT")]
    p.handle(cmds)
    journal = list(persist.read_journal(tmp_path))
    assert [r.get("by") for r in journal] == ["ana", None] and all("ts" in r for r in journal)
    p.close()


def test_core_ack_state_survives_restore_for_named_alarms():
    b = Bench(params())
    b.core.restore_latch(["door_open"], trip_acked=True, acked_alarms=["h2_cell", "nonsense"])
    b.values["h2_cell"] = 1.5
    b.run(3)
    alarms = {a[0]: a[2] for a in b.core.active_alarms()}
    assert alarms["h2_cell"] is True               # acknowledged before the restart
    assert b.core.state_name == "TRIPPED" and b.core.trip_acked
    b.values["lel_cell"] = 30.0
    b.scan()
    alarms = {a[0]: a[2] for a in b.core.active_alarms()}
    assert alarms["lel_cell"] is False             # a new alarm still sounds
    assert b.core.outputs[OUT_HORN]


# -- end to end: SIGKILL while TRIPPED -----------------------------------------------------------
TRIP_SCENARIO = """
name = "trip, release, wait"
duration_s = 3600
[[at]]
t = 3
event = "estop"
[[at]]
t = 4
event = "estop_release"
"""
RESET_SCENARIO = """
name = "reset after the restart"
duration_s = 60
[[at]]
t = 8
command = "reset"
"""


def _run(state_dir, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "controller.cli", "run", "--hal", "sim", "--no-mqtt", "--no-status",
         "--state-dir", str(state_dir), *extra],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_sigkill_in_tripped_comes_back_tripped_with_the_same_causes(tmp_path):
    state = tmp_path / "state"
    trip = tmp_path / "trip.toml"
    trip.write_text(TRIP_SCENARIO)
    first = _run(state, "--scenario", str(trip), "--speed", "10", "--events", str(tmp_path / "first.jsonl"))
    latch = state / "latch.json"
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if latch.exists() and json.loads(latch.read_text()).get("causes") == ["estop"]:
                break
            assert first.poll() is None, first.stderr.read()
            time.sleep(0.05)
        else:
            pytest.fail("the controller never wrote its latch")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    assert first.returncode == -signal.SIGKILL

    # Restart without any scenario: it must come back TRIPPED with the same causes, and stay there.
    second = _run(state, "--speed", "10", "--duration", "20", "--events", str(tmp_path / "second.jsonl"))
    assert second.wait(timeout=60) == 0, second.stderr.read()
    log = [json.loads(x) for x in (tmp_path / "second.jsonl").read_text().splitlines()]
    states = [(e["from"], e["to"], e["cause"]) for e in log if e["type"] == "state"]
    assert states == [(None, "BOOT", "start"), ("BOOT", "TRIPPED", "trip:estop")]
    assert log[-1]["type"] == "end" and log[-1]["state"] == "TRIPPED" and log[-1]["causes"] == ["estop"]
    assert {"type": "persist", "restored": ["estop"]}.items() <= log[2].items()

    # A reset is what leaves it: accepted once the cause has been clear for reset_hold_s.
    reset = tmp_path / "reset.toml"
    reset.write_text(RESET_SCENARIO)
    third = _run(state, "--scenario", str(reset), "--speed", "10", "--duration", "12",
                 "--events", str(tmp_path / "third.jsonl"))
    assert third.wait(timeout=60) == 0, third.stderr.read()
    log = [json.loads(x) for x in (tmp_path / "third.jsonl").read_text().splitlines()]
    states = [(e["to"], e["cause"]) for e in log if e["type"] == "state"]
    assert states == [("BOOT", "start"), ("TRIPPED", "trip:estop"), ("PURGING", "command:reset")]
    assert json.loads(latch.read_text())["causes"] == []
    seqs = [e["seq"] for e in log]
    assert seqs == sorted(seqs) and seqs[0] > 1     # numbered on from the runs before

    journal = [r for r in persist.read_journal(state) if r["type"] == "command"]
    assert journal[-1]["action"] == "reset" and journal[-1]["accepted"] is True


def test_event_numbers_go_on_after_a_restart_without_a_gap(tmp_path):
    loop = _loop()
    p = persist.Persister(tmp_path, loop, CONFIG)
    p.restore()
    p.handle([{"type": "outputs"} for _ in range(3)])
    latch = tmp_path / "latch.json"
    assert json.loads(latch.read_text())["seq"] == 3
    os.utime(latch, ns=(1, 1))
    p.handle([])   # no numbers used and the latch unchanged: no rewrite
    assert latch.stat().st_mtime_ns == 1
    p.handle([{"type": "outputs"} for _ in range(10)])
    assert json.loads(latch.read_text())["seq"] == 13
    p.close()
    again = persist.Persister(tmp_path, _loop(), CONFIG)
    again.restore()
    events = [{"type": "outputs"}]
    again.handle(events)
    assert events[0]["seq"] == 14
    again.close()


# -- issue 11: what the files say after a crash ------------------------------------------------------
def _journal(path, *records):
    with open(path / "journal.jsonl", "a") as f:
        for r in records:
            f.write(json.dumps(dict(r, ts="2025-01-01T00:00:00+00:00")) + "\n")


LATCH_10 = {"causes": [], "trip_acked": False, "acked": [], "seq": 10}


def test_a_trip_journaled_after_the_latch_file_comes_back_latched(tmp_path):
    # The latch file could not be written after the trip (a crash, a full disk): the journal has it.
    (tmp_path / "latch.json").write_text(json.dumps(LATCH_10))
    _journal(tmp_path, {"type": "state", "from": "IDLE", "to": "PURGING", "cause": "command:purge", "seq": 9},
             {"type": "trip", "causes": ["door_open"], "seq": 12},
             {"type": "state", "from": "PURGING", "to": "TRIPPED", "cause": "trip:door_open", "seq": 13})
    loop = _loop()
    p = persist.Persister(tmp_path, loop, CONFIG)
    records = p.restore()
    assert records[0] == {"t": 0.0, "type": "persist", "restored": ["door_open"],
                          "from_journal": ["door_open"]}
    loop.run_simulated(2500)
    assert loop.core.state_name == "TRIPPED" and loop.core.causes() == ["door_open"]
    assert p.seq == 13
    p.close()


@pytest.mark.parametrize("tail, latched", [
    ([{"type": "trip", "causes": ["estop"], "seq": 7},
      {"type": "state", "from": "IDLE", "to": "TRIPPED", "cause": "trip:estop", "seq": 8}], ["estop"]),
    ([{"type": "trip", "causes": ["estop"], "seq": 7},
      {"type": "state", "from": "IDLE", "to": "TRIPPED", "cause": "trip:estop", "seq": 8},
      {"type": "state", "from": "TRIPPED", "to": "PURGING", "cause": "command:reset", "seq": 20}], []),
])
def test_without_a_latch_file_the_latch_is_rebuilt_from_the_journal(tmp_path, tail, latched):
    _journal(tmp_path, {"type": "state", "from": None, "to": "BOOT", "cause": "start", "seq": 1},
             {"type": "state", "from": "BOOT", "to": "IDLE", "cause": "self_test_passed", "seq": 4}, *tail)
    loop = _loop()
    p = persist.Persister(tmp_path, loop, CONFIG)
    p.restore()
    assert loop.core.causes() == latched
    assert p.seq == tail[-1]["seq"]                 # and the numbers go on above the journal's
    p.close()


def test_event_numbers_go_on_above_every_file_that_holds_one(tmp_path):
    (tmp_path / "latch.json").write_text(json.dumps(LATCH_10))
    _journal(tmp_path, {"type": "command", "seq": 15})
    events = tmp_path / "events.jsonl"
    # The last line was cut by a crash.
    events.write_text('{"type":"outputs","seq":39}\n{"type":"outputs","seq":40}\n{"type":"outp')
    p = persist.Persister(tmp_path, _loop(), CONFIG, events_path=str(events))
    p.restore()
    batch = [{"type": "outputs"}]
    p.handle(batch)
    assert batch[0]["seq"] == 41
    p.close()


def test_a_journal_line_cut_by_a_crash_does_not_swallow_the_next_record(tmp_path):
    (tmp_path / "journal.jsonl").write_text('{"type":"command","seq":1}\n{"type":"comm')
    loop = _loop()
    p = persist.Persister(tmp_path, loop, CONFIG)
    p.restore()
    p.handle([{"type": "command", "action": "ack"}])
    assert [r.get("action") for r in persist.read_journal(tmp_path)] == [None, "ack"]
    p.close()
