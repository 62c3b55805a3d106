"""Issue 12 item 8: the hardware backend's fault_counts() per sensor reach the plant link's
telemetry and retained status (`health.io_faults`, docs/mqtt.md), through the real ScanLoop and
PlantLink; only paho's client is replaced, by a recorder of what would be published."""

from __future__ import annotations

import json
import time

from gpiozero.pins.mock import MockFactory
from hwfakes import FakeCellWiring, make_config

from cellspec.names import SENSORS
from controller.link.mqtt import PlantLink
from controller.loop import ScanLoop
from hal.hardware import HardwareCell


class Recorder:
    """Stands in for paho's client where the link publishes."""

    def __init__(self):
        self.sent: list[tuple[str, dict]] = []

    def publish(self, topic, payload, qos=0, retain=False):
        self.sent.append((topic, json.loads(payload)))

    def last(self, suffix):
        return [body for topic, body in self.sent if topic.endswith(suffix)][-1]


def test_hardware_fault_counts_reach_telemetry_and_status(tmp_path):
    config = make_config()
    wiring = FakeCellWiring()
    cell = HardwareCell(config, i2c=wiring.i2c, smbus=wiring.smbus, pin_factory=MockFactory())
    loop = ScanLoop(config, cell)
    link = PlantLink(config, loop, state_dir=str(tmp_path))
    paho, link.client = link.client, Recorder()
    link._connected = True
    try:
        def run(n):
            for _ in range(n):
                loop.scan(wiring.clock.advance(100))
        run(5)
        wiring.bus1.nacking.add(0x49)           # o2_b, co_cell, lel_rto's ADC stops answering
        wiring.bus3.nacking.add(0x61)            # and temp_material's amplifier
        run(25)                                  # 2.5 s: each retried every second
        counts = cell.fault_counts()
        assert counts["o2_b"] >= 2 and counts["temp_material"] >= 1 and counts["o2_a"] == 0
        loop.request_snapshot()
        run(1)
        link._next_telemetry = 0.0
        link._telemetry(time.time())
        link._publish_status(loop.latest)
        for suffix in ("/telemetry", "/status"):
            io_faults = link.client.last(suffix)["health"]["io_faults"]
            assert set(io_faults) == set(SENSORS), suffix          # every sensor, by name
            assert io_faults == cell.fault_counts(), suffix        # the backend's own counts
    finally:
        link.client = paho
        link.close(timeout=1.0)
        cell.close()
