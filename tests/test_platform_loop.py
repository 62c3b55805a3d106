"""The board under the scan loop: stalls, READY and STATUS for systemd, platform alarms.

Hazards (issue 11):
- H-STALL: a stalled process (SIGSTOP, a real-time hog, a hung device read) lost its reaction time
  while nobody scanned. The loop re-based its schedule after a late scan, so a 1 s stall counted
  as one late scan and never tripped. A scan that starts more than `cell.late_scan_trip_periods`
  after its slot must trip `scan_overrun` in that scan.
- H-READY: systemd (and install.sh --upgrade) took READY=1 as "supervising": it came before the
  self-test had concluded. READY must wait until the core has left BOOT; STATUS= must name the
  state and the latched causes.
- H-PLATFORM: a latch that cannot be written (a power cut could lose a trip) or a wall clock that
  cannot be trusted must block `start`, visibly, and clear by itself when the board recovers.
"""

from __future__ import annotations

import socket
import time
import uuid
from dataclasses import replace
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


def scan_for(loop: ScanLoop, seconds: float) -> None:
    """Simulated time: one scan per period."""
    now = loop.core.now
    for _ in range(int(round(seconds * 1000 / loop.period_ms))):
        now += loop.period_ms
        loop.scan(now)


# -- H-STALL -------------------------------------------------------------------------------------

def _stalling(loop: ScanLoop, at_scan: int, stall_s: float):
    """A before_scan hook that blocks the scan thread once, like a hung device read."""
    count = [0]

    def hook(_now_ms: int) -> None:
        count[0] += 1
        if count[0] == at_scan:
            time.sleep(stall_s)
    return hook


def test_one_long_stall_trips_scan_overrun_in_the_next_scan(config):
    loop = ScanLoop(config, SimulatedCell(config))
    stall = 0.8                                     # 8 periods > late_scan_trip_periods (5)
    assert stall > config.late_scan_trip_periods * config.scan_period_s
    loop.run_realtime(duration_s=1.5, before_scan=_stalling(loop, 3, stall))
    events = loop.drain_events()
    stalls = [e for e in events if e["type"] == "stall"]
    trips = [e for e in events if e["type"] == "trip"]
    # Late by the stall less the one period the stalled scan had anyway.
    assert len(stalls) == 1 and stalls[0]["late_s"] >= stall - config.scan_period_s - 0.05, stalls
    assert trips and "scan_overrun" in trips[0]["causes"], trips
    assert loop.core.state_name == "TRIPPED" and loop.stalls == 1


def test_the_stall_limit_is_configurable(config):
    """A plant that accepts longer stalls says so: 0.8 s < 20 periods (2 s) is then one late scan."""
    loop = ScanLoop(replace(config, late_scan_trip_periods=20.0), SimulatedCell(config))
    loop.run_realtime(duration_s=1.5, before_scan=_stalling(loop, 3, 0.8))
    events = loop.drain_events()
    assert not [e for e in events if e["type"] in ("stall", "trip")]
    assert loop.overruns_total >= 1 and loop.stalls == 0


# -- H-READY: systemd learns the truth -----------------------------------------------------------

class NotifySocket:
    """The service manager's end: a real unix datagram socket (Linux abstract namespace)."""

    def __init__(self):
        self.name = f"@crushcell-test-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + self.name[1:].encode())
        self.sock.setblocking(False)

    def received(self) -> list[str]:
        out = []
        while True:
            try:
                out.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return out


@pytest.fixture
def notify():
    s = NotifySocket()
    yield s
    s.sock.close()


def _loop_with_notifier(config, notify: NotifySocket) -> ScanLoop:
    notifier = SystemdNotifier({"NOTIFY_SOCKET": notify.name})
    return ScanLoop(config, SimulatedCell(config), notifier=notifier)


def test_ready_comes_only_after_the_self_test(config, notify):
    loop = _loop_with_notifier(config, notify)
    self_test = config.timers["self_test_s"]
    scan_for(loop, self_test - 2 * config.scan_period_s)
    assert loop.core.state_name == "BOOT"
    seen = notify.received()
    assert "READY=1" not in seen and seen == ["STATUS=BOOT"], seen
    scan_for(loop, 3 * config.scan_period_s)
    assert loop.core.state_name == "IDLE"
    seen = notify.received()
    assert seen == ["STATUS=IDLE", "READY=1"], seen
    scan_for(loop, 1.0)
    assert notify.received() == []                  # once, and no STATUS without a change


def test_a_restored_latch_is_ready_as_tripped_and_says_why(config, notify):
    loop = _loop_with_notifier(config, notify)
    loop.core.restore_latch(["door_open"])
    scan_for(loop, config.timers["self_test_s"] + 0.3)
    assert loop.core.state_name == "TRIPPED"
    seen = notify.received()
    assert "STATUS=TRIPPED causes: door_open" in seen and "READY=1" in seen, seen
    assert seen.index("READY=1") > seen.index("STATUS=TRIPPED causes: door_open")


def test_status_follows_a_trip_even_while_scans_are_unhealthy(config, notify):
    loop = _loop_with_notifier(config, notify)
    scan_for(loop, config.timers["self_test_s"] + 0.3)
    notify.received()
    loop.io.inject_fault("vent", "write_fail")      # unhealthy: no READY/WATCHDOG, but a STATUS
    scan_for(loop, 0.5)
    assert notify.received() == ["STATUS=TRIPPED causes: output_write"]


# -- H-PLATFORM: alarms about the board ---------------------------------------------------------

def _idle(config) -> ScanLoop:
    loop = ScanLoop(config, SimulatedCell(config))
    scan_for(loop, config.timers["self_test_s"] + 0.3)
    assert loop.core.state_name == "IDLE"
    loop.drain_events()
    return loop


def _command(loop: ScanLoop, action: str) -> tuple[bool, str]:
    got: list[tuple[bool, str]] = []
    loop.submit(action, "local", lambda ok, reason, _state: got.append((ok, reason)))
    scan_for(loop, loop.period_ms / 1000.0)
    return got[0]


def _to_ready(loop: ScanLoop) -> None:
    assert _command(loop, "purge")[0]
    for _ in range(600):
        scan_for(loop, 1.0)
        if loop.core.state_name == "READY":
            return
    raise AssertionError(f"never READY: {loop.core.state_name} {loop.core.causes()}")


@pytest.fixture(scope="module")
def ready_blob(config):
    import pickle

    loop = _idle(config)
    _to_ready(loop)
    loop.drain_events()
    return pickle.dumps(loop)


@pytest.fixture
def ready(ready_blob):
    import pickle

    return pickle.loads(ready_blob)


def test_a_latch_that_cannot_be_written_refuses_start_then_recovers(ready):
    loop = ready
    loop.set_platform_alarm("state_write_failed", True)
    scan_for(loop, 0.2)
    alarms = [e for e in loop.drain_events() if e["type"] == "alarm"]
    assert {"name": "state_write_failed", "active": True, "severity": "fault"}.items() <= alarms[0].items()
    ok, reason = _command(loop, "start")
    assert not ok and reason.startswith("state_write_failed"), reason
    assert loop.core.state_name == "READY"
    loop.set_platform_alarm("state_write_failed", False)
    scan_for(loop, 3.0)                              # the alarm's off delay
    _command(loop, "ack")
    ok, reason = _command(loop, "start")
    assert ok, reason
    assert loop.core.state_name == "RUNNING"


def test_an_implausible_clock_refuses_start(ready):
    loop = ready
    loop.set_platform_alarm("clock_implausible", True)
    scan_for(loop, 0.2)
    ok, reason = _command(loop, "start")
    assert not ok and reason.startswith("clock_implausible"), reason


def test_a_momentary_platform_alarm_informs_without_blocking_and_expires(ready):
    loop = ready
    loop.raise_platform_alarm("journal_reopened", 60.0)
    scan_for(loop, 0.2)
    assert ("journal_reopened", "warning", False) in loop.core.active_alarms()
    ok, reason = _command(loop, "start")
    assert ok, reason                               # advisory: it never blocks a start
    loop.expire_platform_alarms(time.monotonic() + 61.0)
    scan_for(loop, 3.0)
    assert "journal_reopened" not in [a[0] for a in loop.core.active_alarms()]


def test_an_unknown_platform_alarm_is_refused_loudly(config):
    loop = ScanLoop(config, SimulatedCell(config))
    with pytest.raises(ValueError, match="unknown platform alarm 'disk_full'"):
        loop.set_platform_alarm("disk_full", True)
