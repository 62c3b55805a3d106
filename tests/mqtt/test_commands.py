"""Every command path over a real broker, against the real core on the simulated cell."""

from __future__ import annotations

import json
import uuid

import pytest
from brokers import Broker
from conftest import Subscriber, wait_for
from plant import Plant, fast_config

BASE = "crushcell/cell1"


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cmd")
    broker = Broker(tmp / "broker").start()
    config = fast_config(port=broker.port, command_rate_per_s=5.0)
    plant = Plant(config, tmp / "state").start()
    sub = Subscriber(broker.port, [f"{BASE}/#"])
    wait_for(lambda: sub.connected.is_set(), what="subscriber")
    wait_for(lambda: any(json.loads(p).get("state") == "IDLE" for _t, p, _r in sub.snapshot("/status")),
             what="controller in IDLE")
    yield plant, sub
    sub.close()
    plant.stop()
    broker.stop()


def send(sub, payload, *, retain=False):
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    sub.publish(f"{BASE}/cmd", raw, retain=retain)


def reply_for(sub, cmd_id):
    def find():
        for r in sub.json("/cmd/reply"):
            if r["id"] == cmd_id:
                return r
        return None
    return wait_for(find, what=f"reply to {cmd_id}")


def command(sub, action, by="alice", **extra):
    cmd_id = uuid.uuid4().hex[:12]
    send(sub, {"id": cmd_id, "action": action, "by": by, **extra})
    return cmd_id


def latest_state(sub):
    statuses = sub.json("/status")
    return statuses[-1]["state"] if statuses else None


def test_refused_by_state_then_accepted_then_remote_start_needs_key_switch(rig):
    plant, sub = rig
    r = reply_for(sub, command(sub, "start"))
    assert r["accepted"] is False and r["state"] == "IDLE"
    assert "does not apply in IDLE" in r["reason"]

    plant.inert()
    cmd_id = command(sub, "purge", by="bob")
    r = reply_for(sub, cmd_id)
    assert r == {"id": cmd_id, "action": "purge", "accepted": True, "reason": "", "state": "PURGING",
                 "ts": r["ts"]}
    # The audit trail names the caller's id and the operator.
    ev = wait_for(lambda: [e for e in sub.json("/events") if e.get("id") == cmd_id], what="command event")
    assert ev[0]["type"] == "command" and ev[0]["by"] == "bob" and ev[0]["source"] == "remote"
    assert ev[0]["accepted"] is True and ev[0]["stage"] == "core"
    wait_for(lambda: latest_state(sub) == "READY", what="READY in status")

    r = reply_for(sub, command(sub, "start"))
    assert r["accepted"] is False and r["state"] == "READY"
    assert "remote_enable" in r["reason"]

    plant.event("remote_enable_on")
    wait_for(lambda: any(t["inputs"]["remote_enable"] for t in sub.json("/telemetry")[-3:]),
             what="remote_enable in telemetry")
    r = reply_for(sub, command(sub, "start"))
    assert r["accepted"] is True and r["state"] == "RUNNING"
    r = reply_for(sub, command(sub, "stop"))
    assert r["accepted"] is True and r["state"] == "STOPPING"


@pytest.mark.parametrize("payload, reason", [
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe", "not UTF-8"),
    (b"[1, 2]", "must be a JSON object"),
    (json.dumps({"id": "w1", "action": "start", "by": 7}).encode(), "'by' must be a string"),
    (json.dumps({"id": "w2", "action": "explode", "by": "eve"}).encode(), "unknown action 'explode'"),
    (json.dumps({"id": "w3", "action": "stop"}).encode(), "missing key 'by'"),
    (json.dumps({"id": "w4", "action": "stop", "by": "x", "force": True}).encode(), "unknown key(s) 'force'"),
    (json.dumps({"id": "w5", "action": "stop", "by": "x", "pad": "y" * 3000}).encode(),
     "over command_max_bytes (2048)"),
])
def test_bad_commands_are_refused_with_a_reason(rig, payload, reason):
    plant, sub = rig
    before = len(sub.json("/cmd/reply"))
    send(sub, payload)
    r = wait_for(lambda: sub.json("/cmd/reply")[before:], what="a reply")[0]
    assert r["accepted"] is False and reason in r["reason"]
    assert plant.thread.is_alive()     # the controller runs on


def test_retained_command_is_never_acted_on(rig):
    plant, sub = rig
    # Live: MQTT 5 "retain as published" shows the controller the flag, so it refuses at once.
    send(sub, {"id": "ret1", "action": "ack", "by": "mallory"}, retain=True)
    r = reply_for(sub, "ret1")
    assert r["accepted"] is False and "retained command ignored" in r["reason"]
    # Replayed by the broker at the next (re)connect: refused again, never acted on.
    plant.link.client.reconnect()
    replays = wait_for(lambda: [x for x in sub.json("/cmd/reply") if x["id"] == "ret1"][1:],
                       what="refusal of the retained replay")
    assert all(not x["accepted"] and "retained command ignored" in x["reason"] for x in replays)
    audit = wait_for(lambda: [e for e in sub.json("/events") if e.get("id") == "ret1"], what="audit")
    assert all(e["accepted"] is False and e["stage"] == "link" for e in audit)
    sub.publish(f"{BASE}/cmd", b"", retain=True)   # clear it for the other tests


def test_commands_faster_than_the_rate_limit_are_refused(rig):
    plant, sub = rig
    ids = [f"rate{i}" for i in range(30)]
    for cmd_id in ids:
        send(sub, {"id": cmd_id, "action": "ack", "by": "alice"})
    replies = [reply_for(sub, i) for i in ids]
    limited = [r for r in replies if not r["accepted"]]
    assert limited, "30 commands at once must exceed command_rate_per_s = 5"
    assert all("rate limit" in r["reason"] for r in limited)
    assert any(r["accepted"] for r in replies)
    assert plant.thread.is_alive()
