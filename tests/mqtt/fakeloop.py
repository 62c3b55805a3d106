"""A stand-in for ScanLoop with the same hand-over surface: submit, request_snapshot, latest.

Used where the real simulated cell is not needed (payload and command tests, the benchmark).
`scan()` applies queued commands with a tiny rule set and calls replies like the real loop does.
"""

from __future__ import annotations

import collections
import math
import threading
import time

from cellspec.names import INPUTS, OUTPUTS, SENSORS
from controller.loop import Snapshot

ALLOWED = {"purge": ("IDLE", "PURGING"), "start": ("READY", "RUNNING"), "stop": ("RUNNING", "STOPPING"),
           "shutdown": ("PURGING", "IDLE")}


class FakeLoop:
    def __init__(self, state: str = "IDLE", remote_enable: bool = True):
        self.state = state
        self.since = 0.0
        self.t = 0.0
        self.commands: collections.deque = collections.deque()
        self.snapshot_wanted = False
        self.latest: Snapshot | None = None
        self.events: list[dict] = []
        self.remote_enable = remote_enable
        self.scans = 0
        self.causes: list[str] = []   # latched trip causes shown in snapshots
        self.io = None                # a backend with fault_counts() (hardware), or None (sim)
        self.lock = threading.Lock()

    def submit(self, action, source, reply=None, *, by=None, id=None):
        self.commands.append((action, source, reply, by, id))
        return True

    def request_snapshot(self):
        self.snapshot_wanted = True

    def snapshot(self) -> Snapshot:
        values = [0.5] * len(SENSORS)
        values[SENSORS.index("co_cell")] = math.nan
        quality = ["good"] * len(SENSORS)
        quality[SENSORS.index("co_cell")] = "fault:nan"
        inputs = [True] * len(INPUTS)
        inputs[INPUTS.index("remote_enable")] = self.remote_enable
        return Snapshot(t=self.t, state=self.state, since=self.since, values=values, quality=quality,
                        voted_o2=0.5, inputs=inputs, outputs=[False] * len(OUTPUTS),
                        causes=list(self.causes),
                        alarms=[("o2_deviation", "warning", False)], scans=self.scans, overruns_total=0)

    def scan(self):
        """One 'scan': apply commands (reply from this thread, as the real loop does)."""
        self.scans += 1
        self.t += 0.1
        out = []
        while self.commands:
            action, source, reply, by, cmd_id = self.commands.popleft()
            rule = ALLOWED.get(action)
            if action == "ack":
                ok, reason = True, ""
            elif action == "start" and source == "remote" and not self.remote_enable:
                ok, reason = False, "remote start needs the remote_enable key switch"
            elif rule is None or rule[0] != self.state:
                ok, reason = False, f"'{action}' does not apply in {self.state}"
            else:
                ok, reason = True, ""
                old = self.state
                self.state, self.since = rule[1], self.t
                out.append({"t": self.t, "type": "state", "from": old, "to": self.state,
                            "cause": "command:" + action})
            record = {"t": self.t, "type": "command", "action": action, "source": source,
                      "accepted": ok, "reason": reason}
            if by is not None:   # as ScanLoop records them
                record["by"] = by
            if cmd_id is not None:
                record["id"], record["stage"] = cmd_id, "core"
            out.insert(0, record)
            if reply is not None:
                reply(ok, reason, self.state)
        if self.snapshot_wanted:
            self.snapshot_wanted = False
            self.latest = self.snapshot()
        return out


class Runner(threading.Thread):
    """Scans the fake loop every `period` s and offers its events to a link (like the Pump)."""

    def __init__(self, loop: FakeLoop, link, period: float = 0.02):
        super().__init__(daemon=True)
        self.loop, self.link, self.period = loop, link, period
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            for e in self.loop.scan():
                self.link.offer_event(e)
            time.sleep(self.period)

    def stop(self):
        self.done.set()
        self.join(5)
