"""One audit trail (issue 10 item 13): every command from MQTT -- decided by the core or refused by
the link -- is the same record under the same seq in the journal, the --events log and on MQTT.

A real `crushcell run` (the CLI's wiring of loop, Pump, persister and link) against a real broker.
"""

from __future__ import annotations

import json

from brokers import Broker
from conftest import wait_for
from controllers import Controller
from plant import fast_config_file

from controller import persist

BASE = "crushcell/cell1"


def unpack(messages):
    out = []
    for _topic, payload, _retain in messages:
        obj = json.loads(payload)
        out.extend(obj["events"] if "events" in obj else [obj])
    return out


def same_record(a: dict, b: dict) -> bool:
    """Equal but for the wall-clock ts (epoch on MQTT, ISO in the journal) and the historical flag."""
    def strip(r):
        return {k: v for k, v in r.items() if k not in ("ts", "historical")}
    return strip(a) == strip(b)


def send(sub, payload, *, retain=False):
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    sub.publish(f"{BASE}/cmd", raw, retain=retain)


def test_refused_and_accepted_commands_have_one_record_and_one_seq_everywhere(tmp_path, subscriber_factory):
    broker = Broker(tmp_path / "broker").start()
    ctl = None
    try:
        sub = subscriber_factory(broker.port, [f"{BASE}/events", f"{BASE}/cmd/reply", f"{BASE}/status"])
        wait_for(sub.subscribed.is_set, what="subscriber")
        state_dir = tmp_path / "state"
        events_path = tmp_path / "events.jsonl"
        ctl = Controller(fast_config_file(tmp_path), state_dir, broker.port)
        ctl.args += ["--events", str(events_path)]
        ctl.start()
        wait_for(lambda: sub.json("/status"), what="controller up")

        send(sub, {"id": "bad-1", "action": "explode", "by": "eve"})               # unknown action
        send(sub, {"id": "ret-1", "action": "ack", "by": "mallory"}, retain=True)   # retained
        send(sub, b"[1, 2]")                                                      # unreadable: id null
        send(sub, {"id": "ok-1", "action": "ack", "by": "alice"})                 # to the core
        rate_ids = [f"rate-{i}" for i in range(25)]
        for cmd_id in rate_ids:                                                   # past the rate limit
            send(sub, {"id": cmd_id, "action": "ack", "by": "alice"})
        wanted = {"bad-1", "ret-1", "ok-1", *rate_ids}
        wait_for(lambda: wanted <= {r["id"] for r in sub.json("/cmd/reply")}, what="every reply")
        wait_for(lambda: len([e for e in unpack(sub.snapshot("/events")) if e.get("type") == "command"])
                 >= len(wanted) + 1, what="every command record on MQTT")
        assert ctl.terminate() == 0

        journal = list(persist.read_journal(state_dir))
        logged = [json.loads(line) for line in events_path.read_text().splitlines()]
        assert journal and logged
        on_mqtt = wait_for(lambda: (lambda ev: ev if {r["seq"] for r in journal} <= set(ev) else None)(
            {e["seq"]: e for e in unpack(sub.snapshot("/events"))}), what="every journaled record on MQTT")

        # One sequence: whatever the journal holds under a seq, MQTT holds under the same seq.
        for rec in journal:
            assert same_record(rec, on_mqtt[rec["seq"]]), (rec, on_mqtt[rec["seq"]])
        logged_by_seq = {r["seq"]: r for r in logged}
        for seq, e in on_mqtt.items():
            assert same_record(e, logged_by_seq[seq]), (e, logged_by_seq.get(seq))

        # The link's refusals are in the journal and the event log, not only on MQTT.
        refused = [r for r in journal if r["type"] == "command" and r.get("stage") == "link"]
        assert {"bad-1", "ret-1", None} <= {r["id"] for r in refused}
        assert any("rate limit" in r["reason"] for r in refused)
        assert all(r["accepted"] is False and r["source"] == "remote" for r in refused)
        # The core's decision on a remote command names its caller's id and operator in the journal.
        ok = [r for r in journal if r.get("id") == "ok-1"]
        assert len(ok) == 1 and ok[0]["by"] == "alice" and ok[0]["stage"] == "core" and ok[0]["accepted"]
        assert same_record(ok[0], on_mqtt[ok[0]["seq"]])
    finally:
        if ctl is not None:
            ctl.stop()
        broker.stop()
