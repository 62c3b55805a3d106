"""What the HMI knows of every cell on the broker: fed from paho's thread, read by the web threads.

Only the public topics (docs/mqtt.md): availability, status, telemetry, events, cmd/reply. The
state shown is the newest of status and telemetry by message time (controller.link.watch.newer),
as in `crushcell watch`. Ages are measured on this process's monotonic clock from when a message
arrived, so a controller whose wall clock is off still shows the right age.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from typing import Any

from controller.link.watch import newer

EVENTS_KEPT = 40          # the event log tail of a cell
REPLIES_KEPT = 10         # command replies shown on the cell view
TREND_S = 3600.0          # trends: the last 60 minutes ...
TREND_EVERY_S = 5.0       # ... one point every 5 s (720 points a series at most)
KINDS = ("availability", "status", "telemetry", "events", "cmd/reply")


class Store:
    def __init__(self, prefix: str, telemetry_period_s: float = 1.0):
        self.prefix = prefix
        # Stale: no telemetry for 3 periods (at least 3 s), as Home Assistant's expire_after.
        self.stale_s = max(3.0, 3 * telemetry_period_s)
        self.cells: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.version = 0
        self.connected = False
        self.link_text = "connecting"

    def _cell(self, cell: str) -> dict[str, Any]:
        d = self.cells.get(cell)
        if d is None:
            d = self.cells[cell] = {
                "availability": None, "status": None, "telemetry": None, "newest": None,
                "tel_at": None, "events": deque(maxlen=EVENTS_KEPT), "last_seq": 0,
                "replies": deque(maxlen=REPLIES_KEPT),
                "trend": deque(maxlen=int(TREND_S / TREND_EVERY_S) + 1),
                "sent": {},
            }
        return d

    def _bump(self) -> None:
        self.version += 1
        self.changed.notify_all()

    def set_link(self, connected: bool, text: str) -> None:
        with self.lock:
            self.connected, self.link_text = connected, text
            self._bump()

    def feed(self, topic: str, payload: bytes, now: float | None = None) -> bool:
        """Take one message; True when it was one of ours. Never raises on a bad payload."""
        now = time.monotonic() if now is None else now
        if not topic.startswith(self.prefix + "/"):
            return False
        cell, _, kind = topic[len(self.prefix) + 1:].partition("/")
        if not cell or kind not in KINDS:
            return False
        obj: Any = None
        if kind != "availability":
            try:
                obj = json.loads(payload)
            except ValueError:
                return False
            if not isinstance(obj, dict):
                return False
        with self.lock:
            d = self._cell(cell)
            if kind == "availability":
                d["availability"] = payload.decode("utf-8", "replace")[:16] or None
            elif kind == "events":
                for ev in obj.get("events") if isinstance(obj.get("events"), list) else [obj]:
                    if not isinstance(ev, dict):
                        continue
                    seq = ev.get("seq")
                    if isinstance(seq, int):   # QoS 1: at least once; dedupe by seq
                        if seq <= d["last_seq"] and any(e.get("seq") == seq for e in d["events"]):
                            continue
                        d["last_seq"] = max(d["last_seq"], seq)
                    d["events"].append(ev)
            elif kind == "cmd/reply":
                sent = d["sent"].get(obj.get("id"))
                d["replies"].appendleft({**obj, "by": sent, "ours": sent is not None})
            else:
                d[kind] = obj
                if kind == "telemetry":
                    d["tel_at"] = now
                    self._trend(d, obj)
                if newer(obj, d["newest"]):
                    d["newest"] = obj
            self._bump()
        return True

    @staticmethod
    def _trend(d: dict[str, Any], tel: dict[str, Any]) -> None:
        ts = tel.get("ts")
        if not isinstance(ts, int | float):
            return
        trend = d["trend"]
        if trend and ts - trend[-1][0] < TREND_EVERY_S:
            return
        while trend and ts - trend[0][0] > TREND_S:
            trend.popleft()
        values = {}
        for name, s in (tel.get("sensors") or {}).items():
            if isinstance(s, dict) and s.get("quality") == "good" and isinstance(s.get("value"), int | float):
                values[name] = float(s["value"])
        voted = (tel.get("voted") or {}).get("o2")
        if isinstance(voted, int | float):
            values["voted_o2"] = float(voted)
        trend.append((float(ts), values))

    def sent(self, cell: str, cmd_id: str, by: str) -> None:
        with self.lock:
            sent = self._cell(cell)["sent"]
            sent[cmd_id] = by
            while len(sent) > 100:
                sent.pop(next(iter(sent)))

    def view(self, cell: str | None = None, now: float | None = None) -> dict[str, Any]:
        """A copy for rendering: every cell (or one), each with its age and liveness in words."""
        now = time.monotonic() if now is None else now
        with self.lock:
            names = sorted(self.cells) if cell is None else [cell] if cell in self.cells else []
            out = {}
            for name in names:
                d = self.cells[name]
                age = None if d["tel_at"] is None else now - d["tel_at"]
                offline = d["availability"] == "offline"
                stale = age is None or age > self.stale_s
                out[name] = {
                    "availability": d["availability"], "status": d["status"], "telemetry": d["telemetry"],
                    "state": (d["newest"] or {}).get("state"), "age": age, "offline": offline,
                    "stale": stale, "events": list(d["events"]), "replies": list(d["replies"]),
                    "trend": list(d["trend"]) if cell is not None else [],
                }
            return {"cells": out, "connected": self.connected, "link": self.link_text,
                    "version": self.version}

    def wait(self, version: int, timeout: float) -> int:
        """Block until something changed after `version` (or timeout); the current version."""
        with self.lock:
            if self.version == version:
                self.changed.wait(timeout)
            return self.version
