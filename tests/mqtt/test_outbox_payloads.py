"""The outbox (no broker) and the pure payload and command-check functions."""

from __future__ import annotations

import json
import math
import subprocess
import sys

from conftest import ROOT, Subscriber, plant_config, wait_for
from fakeloop import FakeLoop

from controller.link import commands, payloads
from controller.link.outbox import Outbox


def test_outbox_keeps_order_drops_oldest_counted_and_seq_survives_reopen(tmp_path):
    path = str(tmp_path / "o.sqlite3")
    box = Outbox(path, max_events=1000, sync="normal")
    assert box.append([(1.0, *payloads.event_body({"type": "x", "i": i}, 1.0)) for i in range(1200)]) == 200
    assert (box.pending, box.dropped, box.last_seq) == (1000, 200, 1200)
    rows = box.read_after(0, 5)
    assert [r[0] for r in rows] == [201, 202, 203, 204, 205]
    assert json.loads(rows[0][2]) == {"type": "x", "i": 200, "ts": 1.0, "seq": 201}
    box.delete([r[0] for r in box.read_after(0, 1000)])
    assert box.pending == 0
    box.close()
    again = Outbox(path, max_events=1000)
    assert (again.pending, again.dropped, again.last_seq) == (0, 200, 1200)
    again.append([(2.0, *payloads.event_body({"type": "y"}, 2.0))])
    assert again.read_after(0, 10)[0][0] == 1201
    again.close()


def test_outbox_keeps_the_controllers_seq_and_never_goes_back(tmp_path):
    box = Outbox(str(tmp_path / "o.sqlite3"), max_events=1000)
    box.append([(1.0, *payloads.event_body({"type": "x", "seq": 41}, 1.0)),
                (1.0, *payloads.event_body({"type": "x", "seq": 42}, 1.0))])
    # A lost latch file restarts the controller's numbering: the outbox still moves forward.
    box.append([(2.0, *payloads.event_body({"type": "y", "seq": 1}, 2.0))])
    rows = box.read_after(0, 10)
    assert [r[0] for r in rows] == [41, 42, 43]
    assert [json.loads(r[2])["seq"] for r in rows] == [41, 42, 43]
    assert rows[0][2].count('"seq"') == 1
    box.close()


def test_nan_travels_as_null_and_batches_unpack():
    body, _seq = payloads.event_body({"type": "scenario", "value": math.nan}, 5.0)
    assert json.loads(body)["value"] is None
    snap = FakeLoop().snapshot()
    tel = json.loads(payloads.dumps(payloads.telemetry(snap, ts=1.0, seq=3, units={"co_cell": "ppm"})))
    assert tel["sensors"]["co_cell"] == {"value": None, "unit": "ppm", "quality": "fault:nan"}
    batch = json.loads(payloads.history_batch([(7, '{"a":1,"seq":7}'), (8, '{"a":2,"seq":8}')]))
    assert batch == {"historical": True, "first_seq": 7, "last_seq": 8, "count": 2,
                     "events": [{"a": 1, "seq": 7, "historical": True},
                                {"a": 2, "seq": 8, "historical": True}]}


def test_command_checks_and_rate_limit():
    ok = commands.parse(b'{"id":"1","action":"stop","by":"a"}', retained=False, max_bytes=2048)
    assert ok == commands.Command("1", "stop", "a")
    r = commands.parse(b'{"id":"1","action":"stop","by":"a"}', retained=True, max_bytes=2048)
    assert isinstance(r, commands.Refusal) and r.id == "1" and "retained" in r.reason
    r = commands.parse(b'{"id":1,"action":"stop","by":"a"}', retained=False, max_bytes=2048)
    assert "'id' must be a string" in r.reason
    limit = commands.RateLimit(2.0, now=0.0)
    assert [limit.allow(0.0) for _ in range(3)] == [True, True, False]
    assert limit.allow(0.5) and not limit.allow(0.5)


def test_homeassistant_discovery_resent_when_ha_restarts(broker, tmp_path):
    from controller.link.mqtt import PlantLink

    link = PlantLink(plant_config(port=broker.port, homeassistant_discovery=True), FakeLoop(),
                     state_dir=str(tmp_path / "s"))
    ha = Subscriber(broker.port, ["homeassistant/#"])
    link.start()
    try:
        configs = wait_for(lambda: [m for m in ha.snapshot() if m[0].endswith("/config")], what="discovery")
        topics = {m[0] for m in configs}
        assert "homeassistant/sensor/crushcell_cell1/o2_a/config" in topics
        cfg = json.loads(next(m[1] for m in configs if m[0].endswith("/o2_a/config")))
        assert cfg["state_topic"] == "crushcell/cell1/telemetry" and cfg["unit_of_measurement"] == "%"
        n = len(configs)
        ha.publish("homeassistant/status", b"online")
        wait_for(lambda: len([m for m in ha.snapshot() if m[0].endswith("/config")]) >= 2 * n,
                 what="discovery re-sent")
    finally:
        ha.close()
        link.close()


def test_watch_shows_a_cell_and_rejects_bad_arguments(broker, tmp_path):
    from controller.link.mqtt import PlantLink

    link = PlantLink(plant_config(port=broker.port), FakeLoop(), state_dir=str(tmp_path / "s"))
    link.loop.latest = link.loop.snapshot()
    link.start()
    try:
        out = subprocess.run([sys.executable, "-m", "controller.cli", "watch", "--broker",
                              f"127.0.0.1:{broker.port}", "--plain", "--duration", "1.5"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "cell1" in out.stdout and "IDLE" in out.stdout
    finally:
        link.close()
    for bad in (["--duration", "-1"], ["--nonsense"], ["--broker", "h:0"]):
        out = subprocess.run([sys.executable, "-m", "controller.cli", "watch", *bad], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and "Traceback" not in out.stderr, (bad, out.stderr)
