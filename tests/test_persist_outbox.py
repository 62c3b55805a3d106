"""The MQTT outbox is not safety state: a bad one at start must not keep the cell from running
(issue 11, item 2).

Hazard: a corrupt outbox file (or one that cannot be opened: full disk, read-only state dir) made
`crushcell run` refuse to start, so a broken disk under the plant link also took the safety loop
down. Now a corrupt file is moved aside (and named), a new one is started, `outbox_reset` is raised
for an hour and a persist event says what happened; a file that cannot be opened for another reason
is left alone and events wait in memory.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from controller.link import outbox
from controller.link.outbox import Outbox

ROOT = Path(__file__).resolve().parents[1]


def test_a_corrupt_outbox_is_moved_aside_and_a_new_one_started(tmp_path):
    path = tmp_path / "outbox-cell1.sqlite3"
    path.write_bytes(b"this is not an SQLite database, it only sits where one should" * 100)
    box = Outbox(str(path), max_events=1000)
    moved = Path(box.moved_to)
    assert moved.parent == tmp_path and moved.name.startswith("outbox-cell1.sqlite3.corrupt-")
    assert moved.read_bytes().startswith(b"this is not")            # kept, whole, for whoever looks
    assert box.reset is not None and str(moved) in box.reset and "file is not a database" in box.reset
    assert not box.in_memory
    box.append([(1.0, '{"type":"x"}', 5)])
    box.close()
    again = Outbox(str(path), max_events=1000)                       # the new file is a good one
    assert again.reset is None and again.last_seq == 5 and again.pending == 1
    again.close()


def test_an_outbox_that_is_a_directory_is_moved_aside(tmp_path):
    path = tmp_path / "outbox-cell1.sqlite3"
    path.mkdir()
    box = Outbox(str(path), max_events=1000)
    assert box.moved_to is not None and Path(box.moved_to).is_dir() and path.is_file()
    box.close()


def test_a_damaged_outbox_keeps_its_last_number(tmp_path):
    path = tmp_path / "outbox-cell1.sqlite3"
    box = Outbox(str(path), max_events=1000)
    box.append([(1.0, '{"type":"x"}', s) for s in range(1, 51)])
    box.close()
    db = sqlite3.connect(path)
    pages = dict(db.execute("SELECT name, rootpage FROM sqlite_master"))
    size = db.execute("PRAGMA page_size").fetchone()[0]
    db.close()
    assert pages["events"] != pages["sqlite_sequence"]
    # The events table's page is overwritten; the schema and sqlite_sequence stay readable.
    data = bytearray(path.read_bytes())
    start = (pages["events"] - 1) * size
    data[start:start + size] = b"\xa5" * size
    path.write_bytes(bytes(data))
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    again = Outbox(str(path), max_events=1000)
    assert again.moved_to is not None, again.reset
    assert again.last_seq == 50   # the numbers go on above what the damaged file held
    again.close()


def test_an_outbox_on_a_read_only_state_dir_waits_in_memory(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("a read-only mount needs root")
    state = tmp_path / "state"
    state.mkdir()
    path = state / "outbox-cell1.sqlite3"
    box = Outbox(str(path), max_events=1000)
    box.append([(1.0, '{"type":"x"}', 9)])
    box.close()
    before = path.read_bytes()
    subprocess.run(["mount", "--bind", str(state), str(state)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(state)], check=True)
        ro = Outbox(str(path), max_events=1000)
        assert ro.in_memory and ro.moved_to is None and "in memory" in ro.reset
        assert ro.last_seq == 9 and ro.max_events == 1000           # and bounded in memory:
        assert Outbox(str(path), max_events=10**6).max_events == outbox.MEMORY_MAX_EVENTS
        ro.append([(2.0, '{"type":"x"}', 10)])
        assert ro.read_after(9, 10)[0][0] == 10
        ro.close()
    finally:
        subprocess.run(["umount", "-l", str(state)], check=True)
    assert path.read_bytes() == before   # left alone: it is not corrupt


def test_crushcell_run_with_a_corrupt_outbox_runs_and_raises_outbox_reset(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "outbox-cell1.sqlite3").write_bytes(b"garbage" * 1000)
    events = tmp_path / "events.jsonl"
    # MQTT on, pointing at a port where no broker listens: the link keeps retrying in the background.
    proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "run", "--hal", "sim", "--no-status",
                             "--broker", "127.0.0.1:9", "--state-dir", str(state), "--speed", "10",
                             "--duration", "40", "--events", str(events)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "stderr", "wb"))  # noqa: SIM115
    try:
        deadline = time.monotonic() + 30
        log: list[dict] = []
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "stderr").read_text()[-3000:]
            if events.exists():
                log = [json.loads(x) for x in events.read_text().splitlines() if x.strip()]
                if any(e["type"] == "state" and e["to"] == "IDLE" for e in log):
                    break
            time.sleep(0.05)
        else:
            pytest.fail(f"the controller never reached IDLE: {log[-5:]}")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    err = (tmp_path / "stderr").read_text()
    assert proc.returncode == 0, err[-3000:]
    moved = [p for p in state.iterdir() if p.name.startswith("outbox-cell1.sqlite3.corrupt-")]
    assert len(moved) == 1 and moved[0].read_bytes() == b"garbage" * 1000
    reset = [e for e in log if e["type"] == "persist" and e.get("moved_to")]
    assert reset and reset[0]["moved_to"] == str(moved[0]) and "cannot open" in reset[0]["error"]
    alarm = [e for e in log if e["type"] == "alarm" and e["name"] == "outbox_reset"]
    assert alarm and alarm[0]["active"] is True
    assert f"WARNING crushcell.run: outbox {state / 'outbox-cell1.sqlite3'}" in err   # the log (stderr)
    new = sqlite3.connect(state / "outbox-cell1.sqlite3")
    assert new.execute("SELECT COUNT(*) FROM events").fetchone()[0] > 0   # the new outbox in use
    new.close()
