"""Helpers of the Sparkplug tests: configs with [sparkplug] on, a host that plays Sparkplug 3.0."""

from __future__ import annotations

import dataclasses
import json
import time

from conftest import wait_for
from plant import fast_config

from sparkplug.decoder import decode


def spb_config(**sparkplug):
    config = fast_config()
    values = {"enabled": True, "group_id": "plant", "edge_node_id": "cell1", "sample_period_s": 0.1}
    values.update(sparkplug)
    return dataclasses.replace(config, sparkplug=dataclasses.replace(config.sparkplug, **values))


def decoded(sub, prefix: str = "spBv1.0/") -> list[dict]:
    """Every Sparkplug message the subscriber captured, in arrival order, through the
    independent decoder (pysparkplug in its own venv)."""
    raw = [(t, p) for t, p, _r in sub.snapshot() if t.startswith(prefix)]
    return decode(raw)


def verbs(messages: list[dict], verb: str) -> list[dict]:
    return [m for m in messages if m.get("verb") == verb]


def metric(message: dict, name: str) -> dict:
    found = [m for m in message["metrics"] if m["name"] == name]
    assert len(found) == 1, f"{name}: {len(found)} metrics of that name in {message['verb']}"
    return found[0]


def wait_verb(sub, verb: str, count: int = 1, timeout: float = 20.0) -> list[dict]:
    def enough():
        n = sum(1 for t, _p, _r in sub.snapshot() if t.split("/")[2:3] == [verb])
        return n >= count
    wait_for(enough, timeout=timeout, what=f"{count} {verb} message(s)")
    return verbs(decoded(sub), verb)


def host_state(sub, host_id: str, online: bool, ts_ms: int | None = None) -> int:
    """Publish the primary host's STATE as Sparkplug 3.0 describes it (retained, QoS 1, JSON)."""
    ts = int(time.time() * 1000) if ts_ms is None else ts_ms
    sub.publish(f"spBv1.0/STATE/{host_id}", json.dumps({"online": online, "timestamp": ts}), retain=True)
    return ts
