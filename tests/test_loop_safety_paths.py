"""The scan loop's own safety paths, through the real ScanLoop, Core and SimulatedCell.

Hazards guarded here:
- H-WRITE: the relays may not be where the controller thinks (the relay board did not take a
  write). The loop must trip `output_write` at the next scan, and stop the external watchdog
  heartbeat, so that the hardware watchdog relay drops the outputs the software cannot move.
- H-OVERRUN: a late loop no longer guarantees its reaction time. While scans overrun, the loop must
  stop both dead-man signals: the heartbeat of the external watchdog relay and the systemd
  watchdog ping (a real SystemdNotifier talking to a real unix datagram socket), and trip
  `scan_overrun` after `cell.overrun_trip_count` late scans in a row.
- H-PULSE end to end: an E-stop or door pulse shorter than a scan, and a contactor dropped by the
  hard-wired chain, reach the core through the simulated HAL and trip.

Each dead-man test also checks that the signal runs while the loop is healthy: removing
`if healthy: io.heartbeat()` or the `healthy` condition in ScanLoop.scan() makes these tests fail.
"""

from __future__ import annotations

import pickle
import socket
import uuid
from pathlib import Path

import pytest

from controller.config import load
from controller.loop import ScanLoop
from controller.sdnotify import SystemdNotifier
from hal.sim import SimulatedCell

CONFIG_PATH = Path(__file__).resolve().parents[1] / "config" / "cell.toml"


@pytest.fixture(scope="module")
def config():
    return load(CONFIG_PATH)


class Clock:
    """Drives `loop.scan()` one period at a time, in simulated time."""

    def __init__(self, loop: ScanLoop):
        self.loop = loop
        self.now = loop.core.now

    def scan(self, n: int = 1) -> None:
        for _ in range(n):
            self.now += self.loop.period_ms
            self.loop.scan(self.now)

    def run(self, seconds: float) -> None:
        self.scan(int(round(seconds * 1000 / self.loop.period_ms)))


def trips(loop: ScanLoop) -> list[dict]:
    return [e for e in loop.drain_events() if e["type"] == "trip"]


@pytest.fixture(scope="module")
def running_blob(config):
    """A loop crushing on a healthy simulated cell, pickled once (copied per test)."""
    loop = ScanLoop(config, SimulatedCell(config, seed=11))
    clock = Clock(loop)
    clock.run(5)
    loop.submit("purge", "local")
    clock.run(200)
    loop.submit("start", "local")
    clock.run(30)
    assert loop.core.state_name == "RUNNING", loop.core.causes()
    loop.drain_events()
    return pickle.dumps(loop)


@pytest.fixture
def running(running_blob):
    loop = pickle.loads(running_blob)
    return loop, Clock(loop)


# -- H-WRITE: a failed output write -----------------------------------------------------------------

@pytest.mark.parametrize("output", ["crusher", "n2_purge", "horn"])
def test_write_fail_trips_output_write_at_the_next_scan_and_stops_the_heartbeat(running, output):
    loop, clock = running
    cell = loop.io
    before = cell.heartbeats
    clock.scan(3)
    assert cell.heartbeats == before + 3             # healthy scans feed the watchdog relay
    cell.inject_fault(output, "write_fail")
    t_fail = clock.now + loop.period_ms
    clock.scan()                                     # this scan's write is refused
    assert loop.write_ok is False
    clock.scan()                                     # the next scan knows it
    assert loop.core.state_name == "TRIPPED"
    assert "output_write" in loop.core.causes()
    first = trips(loop)[0]
    assert "output_write" in first["causes"] and first["t"] * 1000 <= t_fail + loop.period_ms
    stopped = cell.heartbeats
    assert stopped == before + 3                     # not one heartbeat since the failed write
    clock.run(5)
    assert cell.heartbeats == stopped                # none while writes keep failing
    assert loop.core.state_name == "TRIPPED"
    # The board takes writes again: the heartbeat resumes with the first good write; the trip stays.
    cell.inject_fault(output, "clear")
    clock.scan(3)
    assert cell.heartbeats == stopped + 3
    assert loop.core.state_name == "TRIPPED" and "output_write" in loop.core.causes()


def test_a_refused_crusher_write_keeps_it_turning_which_is_why_the_heartbeat_must_stop(running):
    """The trip cannot move a relay the board refuses: only the external watchdog relay (fed by the
    heartbeat) can. The sim shows the crusher still turning after the trip."""
    loop, clock = running
    loop.io.inject_fault("crusher", "write_fail")
    clock.run(2)
    assert loop.core.state_name == "TRIPPED"
    assert loop.core.outputs[0] is False             # the core commands it off ...
    assert loop.io.snapshot()["contactor"] is True   # ... and it still turns


# -- H-OVERRUN: late scans stop the heartbeat and the systemd watchdog ------------------------------

class NotifySocket:
    """The service manager's end: a real unix datagram socket (Linux abstract namespace)."""

    def __init__(self):
        self.name = f"@crushcell-test-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + self.name[1:].encode())
        self.sock.setblocking(False)
        self.statuses: list[str] = []

    def received(self) -> list[str]:
        """The liveness messages (READY, WATCHDOG, STOPPING); STATUS= lines go to `statuses`."""
        out = []
        while True:
            try:
                msg = self.sock.recv(4096).decode()
            except BlockingIOError:
                return out
            (self.statuses if msg.startswith("STATUS=") else out).append(msg)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify():
    s = NotifySocket()
    yield s
    s.close()


def with_notifier(loop: ScanLoop, notify: NotifySocket) -> SystemdNotifier:
    """Attach a real notifier as the loop's constructor would. WATCHDOG_USEC = 1: a ping is due at
    every scan (half the interval is 0.5 us), so each healthy scan must send exactly one."""
    notifier = SystemdNotifier({"NOTIFY_SOCKET": notify.name, "WATCHDOG_USEC": "1"})
    assert notifier.enabled and notifier.watchdog_interval_s() == 1e-6
    loop.notifier = notifier
    loop.watchdog_half_s = notifier.watchdog_interval_s() / 2
    loop.ready_sent = False
    loop.next_watchdog = 0.0
    return notifier


def late(loop: ScanLoop) -> None:
    """What run_realtime does when a scan ends after its successor should have started."""
    loop.overruns += 1
    loop.overruns_total += 1


def test_overruns_stop_the_heartbeat_and_the_systemd_watchdog_then_trip(running, notify, config):
    loop, clock = running
    cell = loop.io
    notifier = with_notifier(loop, notify)
    before = cell.heartbeats
    clock.scan(4)
    assert notify.received() == ["READY=1"] + ["WATCHDOG=1"] * 4
    assert cell.heartbeats == before + 4
    limit = config.overrun_trip_count
    assert limit > 1
    for k in range(1, limit):                        # late, not yet tripping
        late(loop)
        clock.scan()
        assert loop.core.state_name == "RUNNING", k
    assert notify.received() == []                   # no WATCHDOG=1 while late
    assert cell.heartbeats == before + 4             # no heartbeat while late
    late(loop)
    clock.scan()
    assert loop.core.state_name == "TRIPPED" and "scan_overrun" in loop.core.causes()
    for _ in range(10):
        late(loop)
        clock.scan()
    assert notify.received() == [] and cell.heartbeats == before + 4
    assert notifier.failed == 0
    # On time again (run_realtime resets the count): both dead-man signals resume; the trip stays.
    loop.overruns = 0
    clock.scan(3)
    assert notify.received() == ["WATCHDOG=1"] * 3
    assert cell.heartbeats == before + 7
    assert loop.core.state_name == "TRIPPED"


def test_a_loop_late_from_its_first_scan_never_reports_ready(config, notify):
    loop = ScanLoop(config, SimulatedCell(config))
    with_notifier(loop, notify)
    clock = Clock(loop)
    for _ in range(20):
        late(loop)
        clock.scan()
    assert notify.received() == [] and loop.io.heartbeats == 0
    loop.overruns = 0
    clock.scan()
    assert notify.received() == ["READY=1", "WATCHDOG=1"] and loop.io.heartbeats == 1


def test_write_failures_also_stop_the_systemd_watchdog(running, notify):
    loop, clock = running
    with_notifier(loop, notify)
    clock.scan(2)
    assert notify.received() == ["READY=1", "WATCHDOG=1", "WATCHDOG=1"]
    loop.io.inject_fault("vent", "write_fail")
    clock.run(3)
    assert notify.received() == []
    loop.io.inject_fault("vent", "clear")
    clock.scan()
    assert notify.received() == ["WATCHDOG=1"]


# -- H-PULSE end to end: the HAL's latches reach the core ------------------------------------------

def test_estop_pulse_between_scans_trips_and_the_contactor_stays_open(running):
    loop, clock = running
    cell = loop.io
    cell.event("estop")                              # a 40 ms press between two scans
    cell.event("estop_release")
    clock.scan()
    assert loop.core.state_name == "TRIPPED"
    causes = loop.core.causes()
    assert "estop" in causes and "contactor_dropped" in causes, causes
    clock.run(5)
    assert cell.snapshot()["contactor"] is False     # tripped: nothing re-closes it


def test_door_pulse_between_scans_trips_door_open(running):
    loop, clock = running
    loop.io.event("door_open")
    loop.io.event("door_close")
    clock.scan()
    assert loop.core.state_name == "TRIPPED" and "door_open" in loop.core.causes()


def test_contactor_drop_fault_while_running_trips_contactor_dropped(running):
    loop, clock = running
    loop.io.inject_fault("crusher_running", "drop")
    clock.scan()
    assert loop.core.state_name == "TRIPPED"
    assert "contactor_dropped" in loop.core.causes() and "estop" not in loop.core.causes()
