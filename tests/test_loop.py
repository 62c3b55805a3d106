"""The scan loop with the real hardware backend on fake chips and gpiozero's mock pins.

Whatever ends the loop (SIGTERM, an exception inside a scan) leaves every relay pin at the level
of its configured safe state. Also: commands queue into scans, events leave through the deque,
overruns are counted.
"""

import os
import signal
import sys
import threading
import time
from argparse import Namespace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "hardware"))

from gpiozero.pins.mock import MockFactory  # noqa: E402
from hwfakes import FakeCellWiring, make_config  # noqa: E402

from cellspec.names import OUTPUTS  # noqa: E402
from controller import runtime  # noqa: E402
from controller.loop import ScanLoop  # noqa: E402
from hal.hardware import HardwareCell  # noqa: E402
from hal.hardware.gpio import pin_level  # noqa: E402
from hal.sim import SimulatedCell  # noqa: E402


def levels(factory, config):
    return {n: factory.pin(config.outputs[n].pin).state for n in OUTPUTS}


def safe_levels(config):
    return {n: pin_level(config.outputs[n].safe, config.outputs[n].safe, config.outputs[n].active_low)
            for n in OUTPUTS}


def idle_levels(config):
    idle = {"crusher": False, "feed": False, "n2_purge": False, "n2_boost": False, "exhaust": True,
            "vent": False, "alarm": False, "horn": False}
    return {n: pin_level(idle[n], config.outputs[n].safe, config.outputs[n].active_low) for n in OUTPUTS}


def healthy_plant(config, wiring, factory):
    """Inputs of a closed, healthy cell and a normal N2 supply (6 bar) on the fake wiring."""
    for name in ("estop_ok", "door_closed", "rto_ready", "crusher_running", "local_reset", "remote_enable"):
        inp = config.inputs[name]
        active = name in ("estop_ok", "door_closed", "rto_ready")
        pin = factory.pin(inp.pin)
        if active != inp.active_low:
            pin.drive_high()
        else:
            pin.drive_low()
    hw = config.sensors["n2_supply"].hardware
    low, high = hw["span"]
    wiring.ads[hw["address"]].set_ma(hw["channel"], 4.0 + 16.0 * (6.0 - low) / (high - low))


class ClockDriver(threading.Thread):
    """The fake chips' conversion clock follows real time while the real-time loop runs."""

    def __init__(self, clock):
        super().__init__(daemon=True)
        self.clock = clock
        self.done = threading.Event()

    def run(self):
        while not self.done.wait(0.005):
            self.clock.advance(5)


def run_args(tmp_path):
    return Namespace(duration=None, speed=1.0, events=None, status=False, no_mqtt=True, broker=None,
                     state_dir=str(tmp_path))


def test_sigterm_leaves_every_output_safe(tmp_path):
    config = make_config()
    wiring = FakeCellWiring()
    factory = MockFactory()
    cell = HardwareCell(config, i2c=wiring.i2c, smbus=wiring.smbus, pin_factory=factory)
    healthy_plant(config, wiring, factory)
    driver = ClockDriver(wiring.clock)
    driver.start()
    seen_idle = threading.Event()

    def watch():
        # Wait until the controller has left the safe state (IDLE: exhaust open, N2 closed), then
        # send SIGTERM as systemd would.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if levels(factory, config) == idle_levels(config):
                seen_idle.set()
                break
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    old = signal.getsignal(signal.SIGTERM)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        assert runtime.serve(run_args(tmp_path), config, cell) == 0
    finally:
        signal.signal(signal.SIGTERM, old)
        driver.done.set()
    assert seen_idle.is_set(), "the controller never reached IDLE on the fake wiring"
    assert levels(factory, config) == safe_levels(config)
    cell.close()
    assert levels(factory, config) == safe_levels(config)


class Boom(RuntimeError):
    pass


def test_exception_in_a_scan_leaves_every_output_safe():
    config = make_config()
    wiring = FakeCellWiring()
    factory = MockFactory()
    cell = HardwareCell(config, i2c=wiring.i2c, smbus=wiring.smbus, pin_factory=factory)
    healthy_plant(config, wiring, factory)
    loop = ScanLoop(config, cell)
    scans = []

    def before(now_ms):
        wiring.clock.now_ms = 1000 + now_ms
        scans.append(now_ms)
        if len(scans) == 60:
            assert levels(factory, config) == idle_levels(config)
            raise Boom("a bug in a scan")

    with pytest.raises(Boom):
        loop.run_simulated(60_000, before_scan=before)
    assert loop.core.state_name == "IDLE"   # the core never saw the exception...
    assert levels(factory, config) == safe_levels(config)   # ...but the pins went safe anyway
    cell.close()


def test_commands_are_applied_in_the_next_scan_with_a_reply():
    config = make_config()
    cell = SimulatedCell(config, seed=1)
    loop = ScanLoop(config, cell)
    replies = []
    loop.run_simulated(3000)
    assert loop.submit("purge", "remote", lambda ok, reason, state: replies.append((ok, reason, state)))
    assert loop.submit("start", "local", lambda ok, reason, state: replies.append((ok, reason, state)))
    loop.run_simulated(3100)
    assert replies[0] == (True, "", "PURGING")
    assert replies[1][0] is False and "PURGING" in replies[1][1]
    events = loop.drain_events()
    assert [e["action"] for e in events if e["type"] == "command"] == ["purge", "start"]
    assert not loop.events


def test_overruns_are_counted_and_trip():
    config = make_config()
    cell = SimulatedCell(config, seed=1)
    loop = ScanLoop(config, cell)

    slow = {"on": False}
    real_read = cell.read_sensors

    def read(now_ms):
        if slow["on"]:
            time.sleep(0.15)   # longer than the 100 ms period: every scan is late
        return real_read(now_ms)

    cell.read_sensors = read
    t = threading.Thread(target=loop.run_realtime, kwargs={"duration_s": 6.0}, daemon=True)
    t.start()
    time.sleep(2.5)
    slow["on"] = True
    t.join(timeout=30)
    assert loop.overruns_total >= 5
    trips = [e for e in loop.drain_events() if e["type"] == "trip"]
    assert trips and "scan_overrun" in trips[0]["causes"]


def test_snapshot_is_a_copy():
    config = make_config()
    loop = ScanLoop(config, SimulatedCell(config))
    loop.request_snapshot()
    loop.run_simulated(500)
    snap = loop.latest
    assert snap is not None and snap.state == "BOOT"
    before = list(snap.values)
    loop.run_simulated(3000)
    assert snap.values == before
    assert set(snap.sensor_dict()) == set(config.sensors)
