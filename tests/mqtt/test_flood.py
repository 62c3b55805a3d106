"""One client's command flood must not lock out another operator (issue 10, item 2).

The rate limit is per client, the client being the command's `by` (docs/mqtt.md); `stop` and
`shutdown` are never rate-limited; refusals may fill only half the reply queue.
"""

from __future__ import annotations

import json
import threading
import uuid

from brokers import Broker
from conftest import Subscriber, plant_config, wait_for
from fakeloop import FakeLoop, Runner

from controller.link import commands
from controller.link.mqtt import PlantLink

BASE = "crushcell/cell1"
FLOOD = 5000


def test_a_flood_from_one_client_does_not_stop_another_operators_shutdown(tmp_path):
    # The broker queues as the sample deploy/mosquitto/mosquitto.conf does (max_queued_messages).
    broker = Broker(tmp_path / "broker", max_queued=20000).start()
    # PURGING: the state in which the fake loop accepts `shutdown`.
    link = PlantLink(plant_config(port=broker.port, command_rate_per_s=5.0), FakeLoop(state="PURGING"),
                     state_dir=str(tmp_path / "s"))
    runner = Runner(link.loop, link)
    runner.start()
    link.start()
    mallory = Subscriber(broker.port, [])
    alice = Subscriber(broker.port, [f"{BASE}/cmd/reply"])
    try:
        wait_for(lambda: link.stats()["connected"] and alice.subscribed.is_set(), what="link and alice")
        wait_for(mallory.connected.is_set, what="mallory connected")

        def flood():
            for i in range(FLOOD):
                body = json.dumps({"id": f"m{i}", "action": "ack", "by": "mallory"})
                mallory.c.publish(f"{BASE}/cmd", body, qos=1)

        flooder = threading.Thread(target=flood, daemon=True)
        flooder.start()
        # Alice speaks three times while mallory's flood is being handled.
        sent = {}
        for part, action in ((4, "shutdown"), (2, "ack"), (4 / 3, "ack")):
            wait_for(lambda: link.counters["commands_received"] >= FLOOD / part, timeout=60,  # noqa: B023
                     what="the flood under way")
            cmd_id = uuid.uuid4().hex
            alice.publish(f"{BASE}/cmd", json.dumps({"id": cmd_id, "action": action, "by": "alice"}))
            sent[cmd_id] = action
        flooder.join(60)

        def reply(cmd_id):
            return wait_for(lambda: next((r for r in alice.json("/cmd/reply") if r["id"] == cmd_id), None),
                            timeout=60, what=f"reply to {cmd_id}")

        replies = {cmd_id: reply(cmd_id) for cmd_id in sent}
        for cmd_id, action in sent.items():
            assert replies[cmd_id]["accepted"] is True, (action, replies[cmd_id])   # her own bucket
        shutdown = next(r for r in replies.values() if r["action"] == "shutdown")
        assert shutdown["state"] == "IDLE"
        wait_for(lambda: link.counters["commands_received"] >= FLOOD + 3, timeout=60, what="the whole flood")
        # Mallory got through at about the rate (5/s, burst 5), no more.
        mallory_ok = link.counters["commands_submitted"] - 3
        assert 1 <= mallory_ok <= 5 + 5 * 60, mallory_ok
        # Mallory's refusals were replied to in a burst and then at the rate, not 5,000 times.
        replies_to_mallory = link.counters["replies_sent"] - 3 - mallory_ok
        assert replies_to_mallory <= commands.NOTICE_BURST + 5 * 60, replies_to_mallory
        print(f"\nflood: {FLOOD} commands from mallory, {mallory_ok} passed the limit, "
              f"{replies_to_mallory} refusals replied to, {link.counters['replies_suppressed']} refused "
              "silently; alice's commands all accepted")
    finally:
        mallory.close()
        alice.close()
        runner.stop()
        link.close()
        broker.stop()


def test_stop_and_shutdown_are_never_rate_limited():
    limits = commands.ClientLimits(rate=1.0)
    assert limits.allow("bob", "ack", 0.0) and not limits.allow("bob", "ack", 0.0)
    assert all(limits.allow("bob", action, 0.0) for action in ("stop", "shutdown") * 100)
    assert limits.allow("carol", "start", 0.0)          # another client has its own bucket


def test_the_per_client_table_is_bounded_least_recent_first():
    limits = commands.ClientLimits(rate=1.0, max_clients=3)
    for who in ("a", "b", "c"):
        assert limits.allow(who, "ack", 0.0)
    assert not limits.allow("a", "ack", 0.0)           # a is now the most recent; b the least
    assert limits.allow("d", "ack", 0.0)               # the 4th client pushes out b
    assert list(limits.buckets) == ["c", "a", "d"]
    # Refusal replies: a burst, then the command rate; each client its own.
    assert sum(limits.notify("a", 0.0) for _ in range(100)) == commands.NOTICE_BURST
    assert limits.notify("c", 0.0) and limits.notify("a", 1.0)
    assert not limits.allow("a", "ack", 0.0)           # a still remembered (and still empty)
    assert commands.MAX_CLIENTS == 256                 # the documented bound (docs/mqtt.md)
