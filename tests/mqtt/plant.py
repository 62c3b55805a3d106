"""The real scan loop, the simulated cell, the lead's Pump and the PlantLink, in this process.

Faster than a `crushcell run` subprocess and just as real for everything but process death
(the last-will and crash tests use real subprocesses). Timers are shortened and the scan runs
at 50 ms periods so a noisy shared machine does not trip the cell on scan overruns.
"""

from __future__ import annotations

import collections
import dataclasses
import re
import threading
from pathlib import Path

from conftest import CONFIG, plant_config

FAST_TIMERS = {"self_test_s": 0.5, "purge_hold_s": 1.0, "reset_hold_s": 1.0}


def fast_config(**mqtt):
    config = plant_config(**mqtt)
    timers = dict(config.timers)
    timers.update(FAST_TIMERS)
    return dataclasses.replace(config, timers=timers)


def fast_config_file(folder: Path, extra_mqtt: str = "", remote_reset: bool = False) -> Path:
    """The shipped cell.toml with short timers and test-friendly [mqtt] keys, for subprocesses."""
    text = CONFIG.read_text()
    for key, value in FAST_TIMERS.items():
        text = re.sub(rf"^{key} = [0-9.]+", f"{key} = {value}", text, flags=re.M)
    if remote_reset:
        text = re.sub(r"^remote_reset = false", "remote_reset = true", text, flags=re.M)
    text = text.replace("[mqtt]\n", "[mqtt]\nreconnect_min_s = 0.2\nreconnect_max_s = 1.0\n"
                        "outbox_sync = \"normal\"\n" + extra_mqtt, 1)
    path = folder / "cell.toml"
    path.write_text(text)
    return path


class Plant:
    def __init__(self, config, state_dir, *, broker: str | None = None, speed: float = 2.0, seed: int = 0):
        from controller.link.mqtt import PlantLink
        from controller.loop import ScanLoop
        from controller.runtime import Pump
        from hal.sim import SimulatedCell

        self.config = config
        self.io = SimulatedCell(config, seed=seed)
        self.loop = ScanLoop(config, self.io)
        self.link = PlantLink(config, self.loop, broker=broker, state_dir=str(state_dir))
        self.pump = Pump(self.loop, events_file=None, show_status=False, link=self.link)
        self.actions: collections.deque = collections.deque()
        self.speed = speed
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        self.loop.run_realtime(speed=self.speed, before_scan=self._apply)

    def _apply(self, _now_ms):
        # Runs in the scan thread: the simulated cell is only touched from there.
        while self.actions:
            kind, name, arg = self.actions.popleft()
            if kind == "event":
                self.io.event(name)
            elif kind == "force":
                self.io.force(name, arg)
            elif kind == "fault":
                self.io.inject_fault(name, arg)

    def event(self, name):
        self.actions.append(("event", name, None))

    def force(self, name, value):
        self.actions.append(("force", name, value))

    def fault(self, name, mode):
        self.actions.append(("fault", name, mode))

    def inert(self):
        """Hold the three O2 sensors low so a purge reaches READY within purge_hold_s."""
        for n in ("o2_a", "o2_b", "o2_c"):
            self.force(n, 0.5)

    def start(self):
        self.link.start()
        self.loop.events.extend(self.loop.initial_events())
        self.pump.start()
        self.thread.start()
        return self

    def stop(self):
        from controller import scenario as sc

        self.loop.stop()
        self.thread.join(10)
        self.loop.events.append(sc.end_record(self.loop))
        self.pump.done.set()
        self.pump.join(5)
        self.link.close()
