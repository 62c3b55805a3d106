"""The JSON Schemas match the wire, and the link's own limits hold (issue 10 item 14).

Every Subscriber in this suite validates what it captures against docs/schemas/ (conftest.py);
these tests add the records that used to fail (config, persist), a backlog batch that carries them,
the names the schemas list against the code, and the limits the link puts on itself: the audit-flood
limit, the reply queue bound, history pacing and the outbox cap as a consumer sees it.
"""

from __future__ import annotations

import json
import time

import schemas
from brokers import Broker
from conftest import plant_config, wait_for
from controllers import Controller
from fakeloop import FakeLoop
from plant import Plant, fast_config, fast_config_file

from cellspec.names import COMMANDS, INPUTS, OUTPUTS, SENSORS, STATES
from controller.link import mqtt as link_mqtt
from controller.link.mqtt import PlantLink
from controller.rules import ALARMS, CAUSES

BASE = "crushcell/cell1"


def unpack(messages):
    out = []
    for _topic, payload, _retain in messages:
        obj = json.loads(payload)
        out.extend(obj["events"] if "events" in obj else [obj])
    return out


# -- the schemas against the code's names -------------------------------------------------------------
def test_schema_names_are_the_codes_names():
    ev, st, tl = schemas.load("event"), schemas.load("status"), schemas.load("telemetry")
    d = ev["$defs"]
    assert d["trip"]["properties"]["causes"]["items"]["enum"] == list(CAUSES)
    assert "contactor_dropped" in CAUSES
    assert d["alarm"]["properties"]["name"]["enum"] == [a[0] for a in ALARMS]
    assert {"inerting_failed", "o2_one_high", "input_fault:estop_ok"} <= {a[0] for a in ALARMS}
    assert d["sensor"]["properties"]["name"]["enum"] == list(SENSORS)
    assert d["state"]["properties"]["to"]["enum"] == list(STATES)
    assert d["command"]["properties"]["action"]["anyOf"][0]["enum"] == list(COMMANDS)
    assert list(d["output_values"]["properties"]) == list(OUTPUTS) == st["properties"]["outputs"]["required"]
    assert st["properties"]["causes"]["items"]["enum"] == list(CAUSES)
    assert st["properties"]["alarms"]["items"]["properties"]["name"]["enum"] == [a[0] for a in ALARMS]
    assert tl["properties"]["inputs"]["required"] == list(INPUTS)
    assert tl["properties"]["sensors"]["required"] == list(SENSORS)
    assert st["properties"]["health"] == tl["properties"]["health"]


def test_records_of_every_kind_validate_and_a_batch_entry_stands_alone():
    good = [
        {"t": 0.0, "type": "config", "path": "config/cell.toml", "sha256": "a" * 64, "previous_sha256": None,
         "changed": False},
        {"t": 0.0, "type": "persist", "restored": ["estop"]},
        {"t": 0.0, "type": "persist", "error": "var/latch.json: unreadable latch file (x); starting tripped"},
        {"t": 1.0, "type": "alarm", "name": "input_fault:door_closed", "active": True, "severity": "fault"},
        {"t": 1.0, "type": "alarm", "name": "inerting_failed", "active": True, "severity": "fault"},
        {"t": 1.0, "type": "sensor", "name": "o2_a", "quality": "fault:frozen"},
        {"t": 1.0, "type": "trip", "causes": ["contactor_dropped"]},
        {"t": 1.0, "type": "outputs", "outputs": dict.fromkeys(OUTPUTS, False)},
        {"t": None, "type": "command", "action": None, "source": "remote", "accepted": False,
         "reason": "payload is not valid JSON", "id": None, "by": None, "stage": "link"},
        {"t": 2.0, "type": "some_future_type", "anything": [1, 2]},     # extend, never rename
    ]
    for i, e in enumerate(good, start=1):
        e.update(ts=1.5, seq=i)
        assert schemas.check_event(e) == [], e
        assert schemas.check(f"{BASE}/events", json.dumps(e).encode()) == []
    bad = dict(good[6], causes=["no_such_cause"])
    batch = {"historical": True, "first_seq": 1, "last_seq": 11, "count": 11,
             "events": [dict(e, historical=True) for e in good] + [bad]}
    # The frame is valid; only the bad entry fails, on its own.
    assert schemas.validator("event").is_valid(batch)
    errors = schemas.check(f"{BASE}/events", json.dumps(batch).encode())
    assert len(errors) == 1 and "seq 7" in errors[0] and "no_such_cause" in errors[0]


def test_config_and_persist_records_on_the_wire_in_a_backlog_batch(tmp_path, subscriber_factory):
    # A latched trip waits in the latch file: the restart logs `persist` and `config` records.
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / "latch.json").write_text(json.dumps({"causes": ["estop"], "trip_acked": False, "acked": [],
                                                      "seq": 0}))
    broker = Broker(tmp_path / "broker", persistence=True).start()
    ctl = None
    try:
        hist = subscriber_factory(broker.port, [f"{BASE}/events"], client_id="historian", persistent=True)
        wait_for(hist.subscribed.is_set, what="historian subscribed")
        broker.stop()
        # The controller starts while the broker is down: its first records wait in the outbox
        # and arrive later as a backlog batch.
        ctl = Controller(fast_config_file(tmp_path), state_dir, broker.port).start()
        wait_for(lambda: ctl.outbox()[0] >= 4, what="start records in the outbox")
        broker.start()
        batches = wait_for(lambda: [json.loads(m[1]) for m in hist.snapshot() if b'"events":[' in m[1]],
                           what="a backlog batch")
        kinds = {e["type"] for b in batches for e in b["events"]}
        assert {"config", "persist", "state", "outputs"} <= kinds, kinds
        for b in batches:
            assert schemas.validator("event").is_valid(b)
            for e in b["events"]:
                assert schemas.check_event(e) == [], e
        persist_rec = next(e for b in batches for e in b["events"] if e["type"] == "persist")
        assert persist_rec["restored"] == ["estop"]
        hist.check_schemas()
    finally:
        if ctl is not None:
            ctl.stop()
        broker.stop()


# -- the link's own limits ----------------------------------------------------------------------------
def test_audit_flood_limit_records_a_burst_then_summarises(tmp_path, subscriber_factory):
    broker = Broker(tmp_path / "broker").start()
    plant = Plant(fast_config(port=broker.port), tmp_path / "state").start()
    try:
        sub = subscriber_factory(broker.port, [f"{BASE}/events", f"{BASE}/cmd/reply"])
        wait_for(lambda: plant.link.stats()["connected"] and sub.subscribed.is_set(), what="connected")
        n = 300
        t0 = time.monotonic()
        for i in range(n):
            sub.c.publish(f"{BASE}/cmd", b'{"id":"flood-%d","action":"explode","by":"x"}' % i, qos=1)
        wait_for(lambda: plant.link.stats().get("commands_received", 0) == n, what="every command received")
        flood_s = time.monotonic() - t0

        def accounted():
            audit = {e["seq"]: e for e in unpack(sub.snapshot("/events")) if e.get("stage") == "link"}
            singles = [e for e in audit.values() if e["id"] is not None]   # one refused command each
            suppressed = sum(e.get("suppressed", 0) for e in audit.values())
            return (list(audit.values()), singles) if len(singles) + suppressed == n else None
        # Records one by one up to the burst (plus the rate while the flood lasted); the rest are
        # summarised in `suppressed` -- and every refusal is accounted for exactly once.
        counted, singles = wait_for(accounted, what="every refusal recorded or summarised")
        assert link_mqtt.AUDIT_BURST <= len(singles) <= link_mqtt.AUDIT_BURST + \
            link_mqtt.AUDIT_RATE_PER_S * flood_s + 1
        assert any(e.get("suppressed") for e in counted)
    finally:
        plant.stop()
        broker.stop()


def test_reply_queue_is_bounded_and_drops_are_counted(broker, tmp_path, subscriber_factory):
    link = PlantLink(plant_config(port=broker.port), FakeLoop(), state_dir=str(tmp_path / "s"))
    gate = {"open": False}
    publish_replies = link._publish_replies
    link._publish_replies = lambda: publish_replies() if gate["open"] else None   # a stalled worker
    link.start()
    try:
        sub = subscriber_factory(broker.port, [f"{BASE}/cmd/reply"])
        wait_for(lambda: link.stats()["connected"] and sub.subscribed.is_set(), what="connected")
        n = link_mqtt.REPLY_QUEUE_MAX + 44
        for i in range(n):   # a different operator each time: no per-client reply budget applies
            sub.c.publish(f"{BASE}/cmd", b'{"id":"q-%d","action":"explode","by":"op%d"}' % (i, i), qos=1)
        wait_for(lambda: link.stats().get("commands_received", 0) == n, what="every command received")
        stats = link.stats()
        dropped, suppressed = stats.get("replies_dropped", 0), stats.get("replies_suppressed", 0)
        queued = len(link._replies)
        # Bounded (refusals may take only part of it), and every reply not queued is counted.
        assert 0 < queued <= link_mqtt.REPLY_QUEUE_MAX and dropped > 0
        assert queued + dropped + suppressed == n
        gate["open"] = True
        replies = wait_for(lambda: (lambda r: r if len(r) == queued else None)(sub.json("/cmd/reply")),
                           what="the queued replies")
        assert [r["id"] for r in replies] == [f"q-{i}" for i in range(queued)]   # the first, in order
    finally:
        link.close()


def test_history_is_paced_at_history_rate_per_s(broker, tmp_path, subscriber_factory):
    rate, n = 40.0, 80   # paced: 60 messages after the burst take 1.5 s (unpaced: a few ms)
    link = PlantLink(plant_config(port=broker.port, history_batch=1, history_rate_per_s=rate), FakeLoop(),
                     state_dir=str(tmp_path / "s"))
    try:
        sub = subscriber_factory(broker.port, [f"{BASE}/events"])
        wait_for(sub.subscribed.is_set, what="subscriber")
        # Offered before the link connects: a backlog, historical, paced.
        for i in range(n):
            link.offer_event({"t": float(i), "type": "sensor", "name": "o2_a", "quality": "good"})
        link.start()
        wait_for(lambda: len(sub.snapshot()) == n, what="the backlog delivered")
        with sub.lock:
            arrivals = list(sub.arrivals)
        events = unpack(sub.snapshot())
        assert [e["seq"] for e in events] == list(range(1, n + 1)) and all(e["historical"] for e in events)
        # A burst of at most the publish window, then `rate` messages a second.
        burst = min(rate, link.s.publish_window)
        assert arrivals[-1] - arrivals[0] >= (n - burst) / rate * 0.8
    finally:
        link.close()


def test_outbox_cap_drops_the_oldest_and_a_consumer_sees_the_gap_and_the_count(broker, tmp_path,
                                                                               subscriber_factory):
    link = PlantLink(plant_config(port=broker.port, outbox_max_events=1000), FakeLoop(),
                     state_dir=str(tmp_path / "s"))
    link.loop.latest = link.loop.snapshot()
    try:
        sub = subscriber_factory(broker.port, [f"{BASE}/status", f"{BASE}/events", f"{BASE}/telemetry"])
        wait_for(sub.subscribed.is_set, what="subscriber")
        for i in range(1500):
            link.offer_event({"t": float(i), "type": "sensor", "name": "o2_a", "quality": "good"})
        link.start()
        events = wait_for(lambda: (lambda ev: ev if len(ev) >= 1000 else None)(
            unpack(sub.snapshot("/events"))), what="what the outbox kept")
        seqs = [e["seq"] for e in events]
        assert seqs == list(range(501, 1501))        # 1..500 are gone: the gap is the loss
        status = wait_for(lambda: [s for s in sub.json("/status") if s["outbox_dropped"] == 500],
                          what="status says how many")[-1]
        assert status["health"]["outbox_dropped"] == 500
        wait_for(lambda: any(t["health"]["outbox_dropped"] == 500 for t in sub.json("/telemetry")),
                 what="telemetry says it too")
    finally:
        link.close()
