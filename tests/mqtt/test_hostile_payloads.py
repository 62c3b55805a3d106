"""Hostile command payloads against a real broker: the link answers or ignores by rule, and lives on.

Hazard (issue 10, critical): `"[" * 1000 + "]" * 1000` (2 KB) raised RecursionError on paho's
network thread; the thread died, availability stayed `online`, and no command was answered
again. Three layers now: the parser refuses what it cannot read, no paho callback can raise,
and a supervisor replaces a client whose network thread died or whose acknowledgements stalled.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid

import pytest
from brokers import Broker
from conftest import Subscriber, plant_config, wait_for
from fakeloop import FakeLoop, Runner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from thoroughness import examples

from cellspec.names import COMMANDS
from controller.link import client as mq
from controller.link import commands
from controller.link.mqtt import PlantLink

BASE = "crushcell/cell1"
CMD = f"{BASE}/cmd"


class Rig:
    """A link on a FakeLoop, an observer of cmd/reply and a separate publisher (so the observer
    never sees the hostile payloads themselves)."""

    def __init__(self, folder, **mqtt):
        self.broker = Broker(folder / "broker").start()
        self.link = PlantLink(plant_config(port=self.broker.port, **mqtt), FakeLoop(),
                              state_dir=str(folder / "state"))
        self.runner = Runner(self.link.loop, self.link)
        self.runner.start()
        self.link.start()
        self.observer = Subscriber(self.broker.port, [f"{BASE}/cmd/reply"])
        self.publisher = Subscriber(self.broker.port, [])
        wait_for(self.observer.subscribed.is_set, what="observer subscribed")
        wait_for(self.publisher.connected.is_set, what="publisher connected")
        wait_for(lambda: self.link.stats()["connected"], what="link connected")

    def replies(self):
        return self.observer.json("/cmd/reply")

    def send(self, payload: bytes) -> None:
        self.publisher.publish(CMD, payload)

    def reply_for(self, cmd_id: str, timeout: float = 20.0) -> dict:
        def find():
            return next((r for r in self.replies() if r["id"] == cmd_id), None)
        return wait_for(find, timeout=timeout, interval=0.005, what=f"reply to {cmd_id}")

    def command(self, action: str = "ack", by: str = "probe") -> dict:
        cmd_id = uuid.uuid4().hex
        self.send(json.dumps({"id": cmd_id, "action": action, "by": by}).encode())
        return self.reply_for(cmd_id)

    def exchange(self, payload: bytes) -> list[dict]:
        """Send `payload`, then a probe; the replies that came in between (in order)."""
        before = len(self.replies())
        self.send(payload)
        probe = uuid.uuid4().hex
        self.send(json.dumps({"id": probe, "action": "ack", "by": "probe"}).encode())
        self.reply_for(probe)
        got = self.replies()[before:]
        return got[:next(i for i, r in enumerate(got) if r["id"] == probe)]

    def close(self):
        self.observer.close()
        self.publisher.close()
        self.runner.stop()
        self.link.close()
        self.broker.stop()


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    # Rate and size limits raised so that the parser itself meets every generated payload.
    r = Rig(tmp_path_factory.mktemp("hostile"), command_rate_per_s=1000.0, command_max_bytes=65536)
    yield r
    r.close()


def assert_alive(rig):
    assert mq.network_alive(rig.link.client), "paho's network thread died"
    assert rig.link.restarts == 0
    assert rig.command()["accepted"] is True


# -- layer (a): the parser ----------------------------------------------------------------------
def test_nested_json_command_is_refused_and_the_link_lives_on(rig):
    acked_before = rig.link.counters["events_acked"]
    got = rig.exchange(b"[" * 1000 + b"]" * 1000)
    assert len(got) == 1 and got[0]["accepted"] is False and got[0]["id"] is None
    assert "nested deeper than" in got[0]["reason"]
    assert_alive(rig)
    # Events still flow (the command events of the probes are published and acknowledged).
    wait_for(lambda: rig.link.counters["events_acked"] > acked_before, what="events acknowledged")


@pytest.mark.parametrize("payload, reason", [
    (b'{"id":"n1","action":"ack","by":"a","x":' + b"9" * 5000 + b"}", "cannot be read as JSON"),
    (b'{"id":1e400,"action":"ack","by":"a"}', "'id' must be a string"),
    ('{"id":"n3","action":"ack","by":"a"}'.encode("utf-16"), "not UTF-8"),
    ("{\"id\":\"\ud800\",\"action\":\"ack\",\"by\":\"a\"}".encode("utf-8", "surrogatepass"), "not UTF-8"),
    (b'{"a":' * 40 + b"1" + b"}" * 40, "nested deeper than"),
])
def test_payloads_json_cannot_hold_are_refused_with_a_reason(rig, payload, reason):
    got = rig.exchange(payload)
    assert len(got) == 1 and got[0]["accepted"] is False and reason in got[0]["reason"], got
    assert_alive(rig)


# -- layer (b): no callback can raise ------------------------------------------------------------
def test_a_callback_that_raises_does_not_stop_paho(rig, monkeypatch):
    real = commands.parse

    def parse(payload, **kw):
        if payload == b"boom":
            raise RuntimeError("planted bug in the command path")
        return real(payload, **kw)

    monkeypatch.setattr(commands, "parse", parse)
    errors = rig.link.counters["callback_errors"]
    assert rig.exchange(b"boom") == []     # no reply: the callback failed, and said so in the log
    assert rig.link.counters["callback_errors"] == errors + 1
    assert rig.link.client.suppress_exceptions is True
    assert_alive(rig)


# -- item 8: command edge cases -----------------------------------------------------------------
def test_empty_payload_is_ignored_without_reply_or_audit(rig):
    refused, empty = rig.link.counters["commands_refused"], rig.link.counters["commands_empty"]
    offered = len(rig.link._offered)
    assert rig.exchange(b"") == []
    assert rig.link.counters["commands_refused"] == refused       # no refusal, so no audit record
    assert rig.link.counters["commands_empty"] == empty + 1
    assert len(rig.link._offered) <= offered


def test_duplicate_keys_are_refused(rig):
    got = rig.exchange(b'{"id":"dk1","action":"ack","action":"start","by":"mallory"}')
    assert len(got) == 1 and got[0]["accepted"] is False
    assert got[0]["reason"] == "duplicate key 'action': each key may appear once"


@pytest.mark.parametrize("field, value", [
    ("by", "ali\x00ce"), ("by", "\u202eecila"), ("by", "bob\x1b[31m"), ("by", "\ud800"),
    ("id", "a\u2066b"), ("id", "x\x7fy"), ("id", "line\nbreak"), ("by", "c\u0085d"),
])
def test_control_and_bidi_characters_in_by_and_id_are_refused(rig, field, value):
    cmd = {"id": uuid.uuid4().hex, "action": "ack", "by": "alice", field: value}
    submitted = rig.link.counters["commands_submitted"]
    got = rig.exchange(json.dumps(cmd).encode())
    assert len(got) == 1 and got[0]["accepted"] is False
    assert f"'{field}' contains a control, bidirectional-override or surrogate character" in got[0]["reason"]
    # The offending value is never echoed into the reply (nor the audit record).
    assert got[0]["id"] == (None if field == "id" else cmd["id"])
    assert rig.link.counters["commands_submitted"] == submitted + 1   # only the probe


def test_replayed_command_id_is_refused_and_not_applied(rig):
    cmd = json.dumps({"id": "replay-1", "action": "ack", "by": "alice"}).encode()
    submitted = rig.link.counters["commands_submitted"]
    first = rig.exchange(cmd)
    assert len(first) == 1 and first[0]["accepted"] is True
    again = rig.exchange(cmd)
    assert len(again) == 1 and again[0]["accepted"] is False and again[0]["id"] == "replay-1"
    assert again[0]["reason"].startswith("duplicate id")
    assert rig.link.counters["commands_submitted"] == submitted + 3   # first + two probes


def test_recent_ids_are_bounded_in_number_and_time():
    ids = commands.RecentIds(max_ids=3, max_age_s=10.0)
    for i, name in enumerate("abcd"):
        ids.remember(name, float(i))
    assert not ids.check("a", 3.0) and ids.check("b", 3.0) and ids.check("d", 3.0)   # 3 kept
    assert not ids.check("b", 11.5) and ids.check("c", 11.5)                         # b is 11.5 s old


# -- the property: whatever arrives, a reply or silence by rule, and the link lives on ----------
def _raw_command(id_, action, by, extra):
    obj = {"id": id_, "action": action, "by": by, **extra}
    return json.dumps(obj).encode()


unicode_text = st.text(st.characters(exclude_categories=()), max_size=40)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                         unicode_text)
payloads = st.one_of(
    st.binary(max_size=300),
    st.integers(1, 4000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1, 3000).map(lambda n: b'{"a":' * n + b"0" + b"}" * n),
    st.sampled_from([b"", b"1e400", b"-1e400", b"9" * 4301, b"[1e999999]", b'"\\ud800"', b"\x00",
                     b'{"id":"d","id":"d","action":"ack","by":"x"}', b"null", b"{}", b"[]",
                     b'{"id":"' + "\u202e".encode() + b'","action":"stop","by":"x"}',
                     b'{"id":"big","action":"ack","by":"x","n":' + b"7" * 5000 + b"}"]),
    st.builds(_raw_command, unicode_text, st.one_of(st.sampled_from(COMMANDS), unicode_text),
              unicode_text, st.dictionaries(unicode_text, json_scalars, max_size=2)),
    st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                 | st.dictionaries(unicode_text, inner, max_size=3), max_leaves=20)
    .map(lambda v: json.dumps(v).encode()),
)


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.data_too_large])
@given(payload=payloads)
def test_any_payload_gets_a_reply_or_is_ignored_by_rule(rig, payload):
    got = rig.exchange(payload)
    if payload == b"":
        assert got == []                          # rule: empty payloads clear retained commands
    else:
        assert len(got) == 1, (payload[:200], got)
        reply = got[0]
        assert isinstance(reply["accepted"], bool) and isinstance(reply["reason"], str)
        if not reply["accepted"]:
            assert reply["reason"]
    assert mq.network_alive(rig.link.client)


def test_a_valid_command_still_works_after_the_onslaught(rig):
    assert_alive(rig)
    assert rig.link.counters["callback_errors"] <= 1     # only the planted one, if it ran before


# -- layer (c): the supervisor -------------------------------------------------------------------
@pytest.fixture
def own_rig(tmp_path):
    made = []

    def make(**mqtt):
        r = Rig(tmp_path / f"rig{len(made)}", **mqtt)
        made.append(r)
        return r

    yield make
    for r in made:
        if r.broker.proc is not None:
            os.kill(r.broker.proc.pid, signal.SIGCONT)
        r.close()


def retained_availability(port: int) -> bytes:
    late = Subscriber(port, [f"{BASE}/availability"])
    try:
        wait_for(lambda: late.snapshot("/availability"), what="retained availability")
        time.sleep(0.3)
        return late.snapshot("/availability")[-1][1]
    finally:
        late.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")   # planted
def test_supervisor_restarts_a_dead_network_thread(own_rig):
    r = own_rig()
    link = r.link
    assert r.command()["accepted"] is True
    # The pre-fix situation: a callback exception escapes and paho's thread dies with it.
    dying = link.client
    dying.suppress_exceptions = False
    dying.on_message = lambda *_a: 1 / 0
    r.send(b'{"id":"kills","action":"ack","by":"x"}')
    wait_for(lambda: link.restarts >= 1, what="the supervisor's restart")
    assert link.client is not dying and not mq.network_alive(dying)
    wait_for(lambda: link.stats()["connected"], what="reconnected")
    assert r.command()["accepted"] is True
    assert link.restarts == 1
    assert retained_availability(r.broker.port) == b"online"


def test_supervisor_restarts_when_acknowledgements_stall(own_rig):
    # keepalive long enough that paho itself does not notice the frozen broker first
    r = own_rig(keepalive_s=60)
    link = r.link
    link.ack_stall_s = 2.0
    assert r.command()["accepted"] is True
    os.kill(r.broker.proc.pid, signal.SIGSTOP)    # the broker stops answering, TCP stays up
    try:
        for i in range(20):
            link.offer_event({"t": float(i), "type": "alarm", "name": "o2_deviation", "active": i % 2 == 0})
        wait_for(lambda: link.restarts >= 1, timeout=30, what="restart on stalled acknowledgements")
    finally:
        os.kill(r.broker.proc.pid, signal.SIGCONT)
    wait_for(lambda: link.stats()["connected"], what="reconnected")
    wait_for(lambda: link.stats()["pending"] == 0, what="every event acknowledged after the restart")
    assert r.command()["accepted"] is True
    assert retained_availability(r.broker.port) == b"online"
