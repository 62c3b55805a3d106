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


# =============================================================================================
# Session-test helpers (tests/mqtt/test_sparkplug_session.py). Append-only block: nothing above
# is changed; other test files may use these too.
# =============================================================================================

SPB_TOPICS = "spBv1.0/#"


def spb_toml(**keys) -> str:
    """A `[sparkplug]` table to append to a config file (fast_config_file): enabled, group "plant",
    edge node "cell1", a 0.1 s sample period, plus `keys`."""
    values = {"enabled": True, "group_id": "plant", "edge_node_id": "cell1", "sample_period_s": 0.1}
    values.update(keys)
    lines = ["", "[sparkplug]"]
    for key, value in values.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str):
            text = json.dumps(value)   # a TOML basic string for the plain IDs the tests use
        else:
            text = repr(value)
        lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


class Witness:
    """An MQTT 5 subscriber (paho 2) that records, per message, the QoS it was delivered at and its
    retain flag AS PUBLISHED (subscription option Retain As Published): on a plain MQTT 3.1.1
    subscription the broker clears the retain flag of every message sent to an existing
    subscription, so a retained NDEATH would look just like a non-retained one. Subscribed at QoS 2,
    so the delivered QoS is the publisher's (a will sent at QoS 1 arrives at 1, an NBIRTH at 0).

    `snapshot()` gives (topic, payload, retain) triples like conftest.Subscriber's, so decoded(),
    verbs() and wait_verb() work on it. Clean session only: Mosquitto 2.0.11 does not bring an MQTT 5
    session back after a restart with persistence (CONNACK session present 0); for a capture across
    a broker restart use conftest's Subscriber(persistent=True) (MQTT 3.1.1), which it does restore.
    """

    def __init__(self, port: int, topics=SPB_TOPICS, *, client_id: str = ""):
        import socket
        import threading

        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.topics = [topics] if isinstance(topics, str) else list(topics)
        self.lock = threading.Lock()
        self.all: list[tuple[str, bytes, bool, int]] = []   # (topic, payload, retain as published, qos)
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.subacks = 0
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.c.reconnect_delay_set(0.25, 0.25)
        self.c.on_socket_open = lambda _c, _u, sock: sock.setsockopt(socket.IPPROTO_TCP,
                                                                     socket.TCP_NODELAY, 1)
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = self._on_subscribe
        self.c.on_message = self._on_message
        self.c.connect_async("127.0.0.1", port, keepalive=10)
        self.c.loop_start()

    def _on_connect(self, client, _u, _flags, rc, _props):
        if rc.is_failure:
            return
        from paho.mqtt.subscribeoptions import SubscribeOptions

        options = SubscribeOptions(qos=2, retainAsPublished=True)
        client.subscribe([(t, options) for t in self.topics])
        self.connected.set()

    def _on_subscribe(self, *_args):
        with self.lock:
            self.subacks += 1
        self.subscribed.set()

    def _on_message(self, _c, _u, msg):
        with self.lock:
            self.all.append((msg.topic, bytes(msg.payload), bool(msg.retain), int(msg.qos)))

    def wait_ready(self, timeout: float = 10.0) -> Witness:
        wait_for(self.subscribed.is_set, timeout=timeout, what="the witness's SUBACK")
        return self

    def snapshot(self, topic_suffix: str | None = None):
        with self.lock:
            items = [(t, p, r) for t, p, r, _q in self.all]
        if topic_suffix is None:
            return items
        return [m for m in items if m[0].endswith(topic_suffix)]

    def flags(self, topic: str) -> list[tuple[int, bool]]:
        """(delivered QoS, retain as published) of every message on exactly `topic`."""
        with self.lock:
            return [(q, r) for t, _p, r, q in self.all if t == topic]

    def publish(self, topic, payload, retain=False, qos=1):
        info = self.c.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout=10)
        return info

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, wire: int, body: bytes | int) -> bytes:
    key = _varint(number << 3 | wire)
    if wire == 0:
        return key + _varint(int(body))
    return key + _varint(len(body)) + body


def rebirth_ncmd_payload(ts_ms: int | None = None) -> bytes:
    """A host's Rebirth Request (NCMD, 'Node Control/Rebirth' = true, Boolean), protobuf-encoded by
    hand from the spec's sparkplug_b.proto field numbers: not through the project's schema module.
    Payload: timestamp = 1, metrics = 2 (no seq: an NCMD has none). Metric: name = 1, timestamp = 3,
    datatype = 4 (Boolean = 11), boolean_value = 14."""
    ts = int(time.time() * 1000) if ts_ms is None else ts_ms
    metric = (_field(1, 2, b"Node Control/Rebirth") + _field(3, 0, ts) + _field(4, 0, 11)
              + _field(14, 0, 1))
    return _field(1, 0, ts) + _field(2, 2, metric)


def bdseq(message: dict) -> int:
    """The bdSeq metric's value of a decoded NBIRTH or NDEATH (exactly one such metric)."""
    return metric(message, "bdSeq")["value"]


def seq_run_ok(seqs: list[int]) -> bool:
    """Each seq one more than the one before, wrapping 255 -> 0."""
    return all(b == (a + 1) % 256 for a, b in zip(seqs, seqs[1:], strict=False))


# ------------------------------------------------------------------------------------------------------
# Helpers of tests/mqtt/test_sparkplug_payloads.py (payloads, seq, rebirth, report by exception, NCMD).
# Appended as one block; the helpers above are unchanged.
# ------------------------------------------------------------------------------------------------------

import base64  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402

from sparkplug import decoder as _decoder  # noqa: E402

NODE_VERBS = ("NBIRTH", "NDATA", "NDEATH")


def config_on_port(port: int, *, mqtt: dict | None = None, **sparkplug):
    """spb_config(**sparkplug) talking to the test's broker on `port` (plus any [mqtt] overrides)."""
    config = spb_config(**sparkplug)
    values = {"port": port, **(mqtt or {})}
    return dataclasses.replace(config, mqtt=dataclasses.replace(config.mqtt, **values))


class LiveDecoder:
    """The independent decoder (tests/sparkplug/spb_decode.py, pysparkplug in .venv-spb) kept running for
    one capture: each new spBv1.0 message is fed once, in arrival order, and its answer kept, so a test
    can wait on decoded content without decoding the whole capture again at every poll. The decoder
    remembers the last NBIRTH itself, exactly as decode() would for the same stream."""

    def __init__(self, sub, prefix: str = "spBv1.0/"):
        python = _decoder.decoder_python()
        if not (os.path.isfile(python) and os.access(python, os.X_OK)):
            raise RuntimeError(f"the Sparkplug B decoder venv is missing: no Python at {python}; "
                               f"{_decoder.INSTALL_HINT}")
        self.sub, self.prefix = sub, prefix
        self.proc = subprocess.Popen([python, "-I", str(_decoder.SCRIPT)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.out: list[dict] = []
        self._fed = 0
        self._lock = threading.Lock()

    def messages(self) -> list[dict]:
        """Every captured Sparkplug message so far, decoded (one dict each, the decode() schema)."""
        with self._lock:
            raw = [(t, p) for t, p, _r in self.sub.snapshot() if t.startswith(self.prefix)]
            for topic, payload in raw[self._fed:]:
                line = json.dumps({"topic": topic, "payload_b64": base64.b64encode(payload).decode("ascii")})
                self.proc.stdin.write(line + "\n")
                self.proc.stdin.flush()
                answer = self.proc.stdout.readline()
                if not answer:
                    raise AssertionError(f"the decoder exited ({self.proc.poll()}): "
                                         f"{self.proc.stderr.read()}")
                self.out.append(json.loads(answer))
            self._fed = len(raw)
            return list(self.out)

    def wait(self, predicate, what: str, timeout: float = 20.0):
        """Wait until predicate(messages) is truthy; its value."""
        return wait_for(lambda: predicate(self.messages()), timeout=timeout, interval=0.05, what=what)

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)
            self.proc.stdout.close()
            self.proc.stderr.close()


def node_messages(messages: list[dict]) -> list[dict]:
    """The edge node's own messages (not the NCMDs the test sent, not STATE)."""
    return [m for m in messages if m.get("verb") in NODE_VERBS]


def host_values(messages: list[dict]) -> dict:
    """What a host application holds for the node after these messages: the last NBIRTH's values, then
    every NDATA after it applied in order (metric name -> value; None for is_null)."""
    values: dict = {}
    for m in messages:
        if m.get("verb") == "NBIRTH":
            values = {}
        if m.get("verb") in ("NBIRTH", "NDATA"):
            for x in m["metrics"]:
                values[x["name"]] = None if x["is_null"] else x["value"]
    return values


def reported(messages: list[dict], name: str, since: int = 0) -> list[tuple[dict, dict]]:
    """(NDATA message, metric) for every NDATA metric named `name`, in arrival order, from index `since`."""
    return [(m, x) for m in messages[since:] if m.get("verb") == "NDATA"
            for x in m["metrics"] if x["name"] == name]


def births(messages: list[dict]) -> list[int]:
    """Indexes of the NBIRTH messages in `messages`."""
    return [i for i, m in enumerate(messages) if m.get("verb") == "NBIRTH"]


# Runs in the decoder venv: pysparkplug's own encoder builds the NCMDs a host would send.
_ENCODE_NCMD = r"""
import base64, json, sys, time
from pysparkplug import DataType, Metric, NCmd
out = []
for metrics in json.load(sys.stdin):
    cmd = NCmd(timestamp=int(time.time() * 1000), metrics=tuple(
        Metric(timestamp=int(time.time() * 1000), name=m.get("name"), alias=m.get("alias"),
               datatype=DataType[m["datatype"]], value=m["value"]) for m in metrics))
    out.append(base64.b64encode(cmd.encode()).decode("ascii"))
print(json.dumps(out))
"""


def ncmd_payloads(*commands: list[dict]) -> list[bytes]:
    """NCMD payloads encoded by pysparkplug (not by our schema), one per command; a command is a list
    of metrics {"name" or "alias", "datatype": pysparkplug DataType name, "value"}. No datatypes on
    the wire (Sparkplug 3.0: they SHOULD NOT be in an NCMD), a payload and metric timestamp each."""
    out = json.loads(_decoder.run_in_decoder_venv(_ENCODE_NCMD, stdin=json.dumps(list(commands))))
    return [base64.b64decode(b) for b in out]


def ncmd_topic(group: str, node: str) -> str:
    return f"spBv1.0/{group}/NCMD/{node}"


# ------------------------------------------------------------------------------------------------------
# Helpers of tests/mqtt/test_sparkplug_hostile.py (what a broken or hostile host or broker can send).
# Appended as one block; the helpers above are unchanged. Protobuf is written and read by hand from the
# field numbers of the spec's sparkplug_b.proto (never through the project's schema module), so a
# payload can be anything a host could put on the wire, valid or not.
# ------------------------------------------------------------------------------------------------------

import re  # noqa: E402
import struct  # noqa: E402

# sparkplug_b.proto: Metric field numbers, and the DataType enum values the tests use.
PB_NAME, PB_ALIAS, PB_TIMESTAMP, PB_DATATYPE = 1, 2, 3, 4
PB_INT, PB_LONG, PB_DOUBLE, PB_BOOLEAN, PB_STRING, PB_TEMPLATE = 10, 11, 13, 14, 15, 18
DT_INT32, DT_INT64, DT_DOUBLE, DT_BOOLEAN, DT_STRING = 3, 4, 10, 11, 12


def pb_metric(*, name: str | bytes | None = None, alias: int | None = None, datatype: int | None = None,
              boolean: bool | None = None, int_value: int | None = None, double: float | None = None,
              string: str | bytes | None = None, extra: bytes = b"", ts_ms: int | None = None) -> bytes:
    """One Metric message, only the fields given (a host may leave out anything, or send it wrong)."""
    out = b""
    if name is not None:
        out += _field(PB_NAME, 2, name.encode() if isinstance(name, str) else name)
    if alias is not None:
        out += _field(PB_ALIAS, 0, alias)
    out += _field(PB_TIMESTAMP, 0, int(time.time() * 1000) if ts_ms is None else ts_ms)
    if datatype is not None:
        out += _field(PB_DATATYPE, 0, datatype)
    if boolean is not None:
        out += _field(PB_BOOLEAN, 0, 1 if boolean else 0)
    if int_value is not None:
        out += _field(PB_INT, 0, int_value)
    if double is not None:
        out += _varint(PB_DOUBLE << 3 | 1) + struct.pack("<d", double)
    if string is not None:
        out += _field(PB_STRING, 2, string.encode() if isinstance(string, str) else string)
    return out + extra


def pb_ncmd(*metrics: bytes, ts_ms: int | None = None) -> bytes:
    """An NCMD payload: timestamp (field 1) and the metrics (field 2), no seq."""
    ts = int(time.time() * 1000) if ts_ms is None else ts_ms
    return _field(1, 0, ts) + b"".join(_field(2, 2, m) for m in metrics)


def pb_rebirth(**kwargs) -> bytes:
    """A 'Node Control/Rebirth' metric; by default the proper one (Boolean, true)."""
    values = {"name": "Node Control/Rebirth", "datatype": DT_BOOLEAN, "boolean": True}
    values.update(kwargs)
    return pb_metric(**values)


def pb_nested_templates(depth: int, name: str = "Commands/start") -> bytes:
    """A metric `name` whose value is a Template nesting `depth` Templates (Template.metrics = 2)."""
    inner = pb_metric(name="x", datatype=DT_BOOLEAN, boolean=True)
    for _ in range(depth):
        inner = _field(PB_TEMPLATE, 2, _field(2, 2, inner))
    return pb_metric(name=name, extra=_field(PB_TEMPLATE, 2, _field(2, 2, inner)))


def pb_top_fields(payload: bytes) -> dict[int, list]:
    """The top-level fields of a protobuf message, read by hand: {field number: [values]} (varints as
    ints, length-delimited as bytes). Raises ValueError on a payload that is not protobuf."""
    fields: dict[int, list] = {}
    i, n = 0, len(payload)

    def varint() -> int:
        nonlocal i
        shift = value = 0
        while True:
            if i >= n or shift > 63:
                raise ValueError("truncated varint")
            byte = payload[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    while i < n:
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            value: object = varint()
        elif wire == 1:
            value, i = payload[i:i + 8], i + 8
        elif wire == 2:
            length = varint()
            value, i = payload[i:i + length], i + length
        elif wire == 5:
            value, i = payload[i:i + 4], i + 4
        else:
            raise ValueError(f"wire type {wire}")
        if i > n:
            raise ValueError("truncated field")
        fields.setdefault(number, []).append(value)
    return fields


def node_raw(sub, group: str = "plant", node: str = "cell1") -> list[tuple[str, bytes]]:
    """(verb, payload) of every NBIRTH, NDATA and NDEATH of the node, in arrival order."""
    out = []
    for t, p, _r in sub.snapshot():
        parts = t.split("/")
        if len(parts) == 4 and parts[0] == "spBv1.0" and parts[1] == group and parts[3] == node \
                and parts[2] in NODE_VERBS:
            out.append((parts[2], p))
    return out


def seq_problems(raw: list[tuple[str, bytes]]) -> list[str]:
    """What is wrong with the seq numbers of a node's messages, read by hand (not decoded): every
    NBIRTH seq 0, every NDATA one more than the message before it in its session (255 -> 0), no NDATA
    before the first NBIRTH, no seq in an NDEATH. An NDEATH does not end the run of seqs here (the
    broker may publish an old session's will after the next session's NBIRTH); an NBIRTH restarts it."""
    problems, last = [], None
    for k, (verb, payload) in enumerate(raw):
        seqs = pb_top_fields(payload).get(3, [])
        if verb == "NDEATH":
            if seqs:
                problems.append(f"#{k} NDEATH carries seq {seqs}")
            continue
        if len(seqs) != 1:
            problems.append(f"#{k} {verb} has {len(seqs)} seq fields")
            continue
        seq = seqs[0]
        if verb == "NBIRTH":
            if seq != 0:
                problems.append(f"#{k} NBIRTH seq {seq}")
        elif last is None:
            problems.append(f"#{k} NDATA (seq {seq}) before any NBIRTH")
        elif seq != (last + 1) % 256:
            problems.append(f"#{k} NDATA seq {seq} after {last}")
        last = seq
    return problems


def decode_from_last_birth(sub) -> list[dict]:
    """The node's messages from its last NBIRTH on, through the independent decoder: what a host holds
    now (host_values() of it) without decoding thousands of earlier births."""
    raw = [(t, p) for t, p, _r in sub.snapshot()
           if t.startswith("spBv1.0/") and t.split("/")[2] in NODE_VERBS]
    births_at = [k for k, (t, _p) in enumerate(raw) if t.split("/")[2] == "NBIRTH"]
    return decode(raw[births_at[-1]:]) if births_at else []


def broker_connects(broker, client_id: str) -> int:
    """CONNECTs from `client_id` the broker logged (needs a broker with `log_type notice`)."""
    pattern = rf"New client connected from \S+ as {re.escape(client_id)} "
    return len(re.findall(pattern, broker.log.read_text(errors="replace")))


def hold_sensor(plant, sensor: str, value: float, tolerance: float = 2.0) -> None:
    """Force a sensor while the node holds data (primary host away) and wait until the scan shows it and
    the node has held two more samples (the first may come from an older snapshot). Pacing only."""
    from cellspec.names import SENSORS

    i = SENSORS.index(sensor)
    plant.force(sensor, value)
    wait_for(lambda: plant.loop.latest is not None and plant.loop.latest.values[i] is not None
             and abs(plant.loop.latest.values[i] - value) < tolerance, what=f"{sensor} at {value}")
    node = plant.link.sparkplug
    start = node.stats()["held"]
    wait_for(lambda: node.stats()["held"] >= start + 2, what=f"{sensor} {value} held")
