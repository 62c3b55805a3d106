"""`run --events FILE` loses nothing to a kill -9 (issue 10, item 12: a buffered file lost 26 events).

The pump writes each batch to the file and flushes it before it echoes the events to stdout
(JSON lines; the journal under systemd), so every event the process reported is in the file when
it dies.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TRIP = """name = "trip then keep running"
duration_s = 3600
[[at]]
t = 1
command = "purge"
[[at]]
t = 3
event = "estop"
"""


def test_every_reported_event_is_in_the_file_after_kill_9(tmp_path):
    scenario = tmp_path / "trip.toml"
    scenario.write_text(TRIP)
    events = tmp_path / "events.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "run", "--hal", "sim", "--no-mqtt",
                             "--no-status", "--state-dir", str(tmp_path / "state"),
                             "--scenario", str(scenario), "--speed", "5", "--events", str(events)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    reported: list[dict] = []
    tripped = threading.Event()

    def read_stdout():
        for line in proc.stdout:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and "type" in record:
                reported.append(record)
                if record["type"] == "trip":
                    tripped.set()

    reader = threading.Thread(target=read_stdout, daemon=True)
    reader.start()
    try:
        assert tripped.wait(60), f"no trip reported: {reported[-5:]}"
        time.sleep(0.5)                       # a few more events after the trip
        proc.send_signal(signal.SIGKILL)      # no flush, no atexit, no finally
        proc.wait(10)
        reader.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    in_file = [json.loads(line) for line in events.read_text().splitlines() if line.strip()]
    key = lambda e: json.dumps(e, sort_keys=True)   # noqa: E731
    missing = [e for e in reported if key(e) not in {key(f) for f in in_file}]
    print(f"\nkill -9: {len(reported)} events reported on stdout, {len(in_file)} in the file, "
          f"{len(missing)} missing")
    assert any(e["type"] == "trip" for e in reported)
    assert not missing, missing[:5]
