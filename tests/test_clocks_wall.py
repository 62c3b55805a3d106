"""Wall-clock hazards (issue 11 item 7): telemetry paced by the wall clock, calibration dates trusting it.

H-CLOCK-TELEMETRY: the plant link scheduled telemetry on the wall clock, so a clock stepped back
an hour (NTP, a hand-set clock) stopped telemetry for that hour: a dashboard that shows nothing new
while the cell runs. H-CLOCK-WALL: calibration due dates come from the wall clock, so a board with
no real-time clock that boots in 1970 sees every sensor as freshly tested and allows a start with
overdue sensors; the wall clock is now judged against the newest record and the build
(`clock_implausible`, which blocks `start`). Rows in docs/safety.md's hazard register.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from cellspec.names import CALIBRATED_SENSORS
from controller import calibration as cal
from controller import config as cfg
from controller.link.mqtt import PlantLink
from controller.loop import ScanLoop
from hal.sim import SimulatedCell

ROOT = Path(__file__).resolve().parents[1]
CONFIG = cfg.load(ROOT / "config" / "cell.toml")
HOUR = 3600.0
EPOCH_1970 = 5.0   # a board without an RTC, 5 s after boot


# -- telemetry on the monotonic clock --------------------------------------------------------------
def _mqtt_helpers():
    sys.path.insert(0, str(ROOT / "tests" / "mqtt"))
    from brokers import Broker, find_mosquitto
    from fakeloop import FakeLoop, Runner
    return Broker, find_mosquitto, FakeLoop, Runner


class Telemetry:
    """A plain paho subscriber to the cell's telemetry topic: (arrival monotonic, payload)."""

    def __init__(self, port: int, topic: str):
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.got: list[tuple[float, dict]] = []
        self.lock = threading.Lock()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        self.c.on_connect = lambda client, *_a: client.subscribe(topic, qos=0)
        self.c.on_message = self._on_message
        self.c.connect_async("127.0.0.1", port, keepalive=10)
        self.c.loop_start()

    def _on_message(self, _c, _u, msg):
        with self.lock:
            self.got.append((time.monotonic(), json.loads(msg.payload)))

    def count(self) -> int:
        with self.lock:
            return len(self.got)

    def last(self) -> dict:
        with self.lock:
            return self.got[-1][1]

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_telemetry_keeps_its_period_when_the_wall_clock_steps_back_an_hour(tmp_path):
    Broker, find_mosquitto, FakeLoop, Runner = _mqtt_helpers()
    if find_mosquitto() is None:
        if os.environ.get("CI"):
            pytest.fail("mosquitto is not installed")
        pytest.skip("mosquitto not installed")
    broker = Broker(tmp_path / "broker").start()
    step = [0.0]

    def wall() -> float:   # the wall clock the link is given, stepped back by the test
        return time.time() + step[0]

    mqtt = dataclasses.replace(CONFIG.mqtt, port=broker.port, telemetry_period_s=0.1, reconnect_min_s=0.2,
                               reconnect_max_s=1.0, outbox_sync="normal")
    link = PlantLink(dataclasses.replace(CONFIG, mqtt=mqtt), FakeLoop(), state_dir=str(tmp_path / "s"),
                     clock=wall)
    sub = Telemetry(broker.port, f"crushcell/{CONFIG.cell_id}/telemetry")
    runner = Runner(link.loop, link)
    runner.start()
    link.start()
    try:
        wait(lambda: sub.count() >= 3, 20, "telemetry before the step")
        step[0] = -HOUR                    # NTP (or someone) sets the clock back an hour
        n = sub.count()
        wait(lambda: sub.count() >= n + 5, 5, "telemetry after the wall clock stepped back")
        # Only the pacing moved to the monotonic clock: the payload's ts is still the wall clock.
        assert abs(sub.last()["ts"] - (time.time() - HOUR)) < 60, sub.last()["ts"]
    finally:
        runner.stop()
        link.close()
        sub.close()
        broker.stop()


# -- the wall clock judged against the state dir and the build -------------------------------------
def all_recorded(day: dt.date) -> dict:
    return {s: {"bump": day.isoformat(), "calibration": day.isoformat()} for s in CALIBRATED_SENSORS}


def midnight(day: dt.date) -> float:
    return time.mktime(day.timetuple())


def ready_loop() -> ScanLoop:
    loop = ScanLoop(CONFIG, SimulatedCell(CONFIG, seed=3))
    loop.run_simulated(2500)
    loop.submit("purge", "local")
    loop.run_simulated(200_000)
    assert loop.core.state_name == "READY"
    return loop


def start(loop: ScanLoop) -> tuple[bool, str]:
    replies: list[tuple[bool, str]] = []
    loop.submit("start", "local", lambda a, r, s: replies.append((a, r)))
    loop.run_simulated(loop.core.now + 200)
    return replies[0]


def test_a_1970_clock_below_a_2026_record_blocks_start_until_the_clock_is_set(tmp_path):
    recorded = dt.date.today() + dt.timedelta(days=10)   # a record dated 2026 (later than the build)
    (tmp_path / "calibration.json").write_text(json.dumps(all_recorded(recorded)))
    loop = ready_loop()
    wall = [EPOCH_1970]
    tracker = cal.Tracker(tmp_path, CONFIG, loop, always=True, wall=lambda: wall[0])
    tracker.tick(100.0)
    assert tracker.clock_implausible is True
    assert loop.platform_alarms() == ("clock_implausible",)
    assert "calibration record" in tracker.clock_why and recorded.isoformat() in tracker.clock_why
    accepted, reason = start(loop)
    assert not accepted and reason.startswith("clock_implausible: the wall clock is earlier"), reason
    alarms = [e for e in loop.drain_events() if e["type"] == "alarm" and e["name"] == "clock_implausible"]
    assert alarms and alarms[-1]["active"] is True

    wall[0] = midnight(recorded) + 12 * HOUR               # NTP sets the clock
    tracker.tick(100.0 + cal.CHECK_PERIOD_S)               # judged again at the next period
    assert tracker.clock_implausible is False and tracker.clock_why == ""
    assert loop.platform_alarms() == ()
    loop.run_simulated(loop.core.now + 2500)               # the alarm's off-delay
    loop.submit("ack", "local")
    assert start(loop) == (True, "")
    assert loop.core.state_name == "RUNNING"


def test_the_build_is_evidence_when_the_state_dir_holds_nothing(tmp_path):
    loop = ScanLoop(CONFIG, SimulatedCell(CONFIG))
    built = cal.build_time()
    assert built >= cal.NOT_BEFORE.timestamp()
    assert not cal.Tracker(tmp_path, CONFIG, loop, always=True).check_clock(time.time())
    tracker = cal.Tracker(tmp_path, CONFIG, loop, always=True)
    assert tracker.check_clock(EPOCH_1970)
    assert "the build" in tracker.clock_why and loop.platform_alarms() == ("clock_implausible",)
    assert not tracker.check_clock(built)
    assert loop.platform_alarms() == ()


def test_the_last_runs_latch_and_journal_are_evidence_read_before_this_run_writes(tmp_path):
    loop = ScanLoop(CONFIG, SimulatedCell(CONFIG))
    later = time.time() + 30 * 86400                       # the last run, a month after the build
    iso = dt.datetime.fromtimestamp(later, dt.UTC).isoformat(timespec="milliseconds")
    (tmp_path / "latch.json").write_text(json.dumps({"causes": [], "trip_acked": True, "acked": [],
                                                     "seq": 7, "written": iso}))
    tracker = cal.Tracker(tmp_path, CONFIG, loop, always=False)
    assert tracker.check_clock(later - 2 * HOUR) and "latch.json written" in tracker.clock_why
    assert not tracker.check_clock(later)

    newer = dt.datetime.fromtimestamp(later + 86400, dt.UTC).isoformat(timespec="milliseconds")
    lines = [{"ts": iso, "type": "state"}, {"ts": newer, "type": "command"}]
    (tmp_path / "journal.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"ts": "torn')
    tracker = cal.Tracker(tmp_path, CONFIG, loop, always=False)
    assert tracker.check_clock(later + 3600) and "journal.jsonl" in tracker.clock_why
    # What this run journals afterwards (here with a clock that ran ahead, then was corrected back)
    # is not evidence: the check would otherwise block starts for as long as the clock was ahead.
    with open(tmp_path / "journal.jsonl", "a") as f:
        f.write("\n" + json.dumps({"ts": "2099-01-01T00:00:00.000+00:00", "type": "state"}) + "\n")
    assert not tracker.check_clock(later + 86400)


def test_a_clock_less_than_the_slack_behind_the_evidence_is_plausible(tmp_path):
    # NTP stepping a clock that ran a little fast, fake-hwclock restoring the time it saved an hour ago.
    recorded = dt.date.today() + dt.timedelta(days=10)
    (tmp_path / "calibration.json").write_text(json.dumps(all_recorded(recorded)))
    loop = ScanLoop(CONFIG, SimulatedCell(CONFIG))
    tracker = cal.Tracker(tmp_path, CONFIG, loop, always=True)
    tracker.check(recorded)
    assert not tracker.check_clock(midnight(recorded) - cal.CLOCK_SLACK_S)
    assert tracker.check_clock(midnight(recorded) - cal.CLOCK_SLACK_S - 1)
