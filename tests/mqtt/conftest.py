"""Fixtures for the MQTT suite: real mosquitto brokers on free loopback ports, a subscriber, configs.

Every message a Subscriber captures is validated against docs/schemas/ (tests/mqtt/schemas.py);
closing a Subscriber that saw an invalid payload fails the test that used it.

Mosquitto missing: the suite fails under CI (it must run there) and is skipped elsewhere with
a message saying how to install it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import schemas  # noqa: E402
from brokers import Broker, find_mosquitto  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config" / "cell.toml"


def pytest_collection_modifyitems(config, items):
    if find_mosquitto() is not None:
        return
    message = ("mosquitto is not installed: the MQTT tests need the broker binary "
               "(Debian: sudo apt-get install mosquitto mosquitto-clients; or run `make mosquitto`)")
    if os.environ.get("CI"):
        raise pytest.UsageError(message)
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.skip(reason=message))


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.02, what: str = "condition"):
    """Wait for a condition with a generous timeout; never assert on how long it took."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def plant_config(**mqtt):
    from controller import config as cfg

    config = cfg.load(CONFIG)
    defaults = {"reconnect_min_s": 0.2, "reconnect_max_s": 1.0, "outbox_sync": "normal"}
    defaults.update(mqtt)
    return dataclasses.replace(config, mqtt=dataclasses.replace(config.mqtt, **defaults))


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()


class Subscriber:
    """A plain paho client recording every message (and when it came), each checked against
    docs/schemas/; optional persistent session."""

    def __init__(self, port: int, topics, *, client_id: str = "", persistent: bool = False,
                 username: str | None = None, password: str | None = None, tls: dict | None = None):
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: queue.Queue = queue.Queue()
        self.all: list = []
        self.arrivals: list[float] = []    # time.monotonic() of each message in `all`
        self.schema_errors: list[str] = []
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.refused = None
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
                             clean_session=not persistent)
        if username:
            self.c.username_pw_set(username, password)
        if tls:
            self.c.tls_set(ca_certs=tls.get("ca"), certfile=tls.get("cert"), keyfile=tls.get("key"))
        # Reconnect every 0.25 s (paho's default is 1..120 s): a broker restarted by a test is
        # found again at once, and close() after the broker is gone does not sit out a 1 s
        # reconnect wait (paho sleeps it in one piece before it sees loop_stop()).
        self.c.reconnect_delay_set(0.25, 0.25)
        # The test's own client sends at once (TCP_NODELAY), as bench_mqtt's do: with Nagle's
        # algorithm a small PUBLISH or PUBACK can wait up to 40 ms for a delayed TCP ACK, and every
        # request/reply exchange of a test pays it. The controller's socket is left as it ships.
        self.c.on_socket_open = lambda _c, _u, sock: sock.setsockopt(socket.IPPROTO_TCP,
                                                                     socket.TCP_NODELAY, 1)
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_subscribe = lambda *a: self.subscribed.set()
        self.c.connect_async("127.0.0.1", port, keepalive=10)
        self.c.loop_start()

    def _on_connect(self, client, _u, _f, rc, _p):
        if rc.is_failure:
            self.refused = rc
            return
        for t in self.topics:
            client.subscribe(t, qos=1)
        self.connected.set()

    def _on_message(self, _c, _u, msg):
        item = (msg.topic, msg.payload, msg.retain)
        try:
            problems = schemas.check(msg.topic, msg.payload)
        except Exception as exc:   # never let a checker bug kill paho's thread
            problems = [f"{msg.topic}: schema check failed: {exc!r}"]
        with self.lock:
            self.all.append(item)
            self.arrivals.append(time.monotonic())
            self.schema_errors.extend(problems)
        self.messages.put(item)

    def publish(self, topic, payload, retain=False, qos=1):
        info = self.c.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout=10)
        return info

    def snapshot(self, topic_suffix: str | None = None):
        with self.lock:
            items = list(self.all)
        if topic_suffix is None:
            return items
        return [m for m in items if m[0].endswith(topic_suffix)]

    def json(self, topic_suffix: str):
        return [json.loads(m[1]) for m in self.snapshot(topic_suffix)]

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()
        self.check_schemas()

    def check_schemas(self):
        """Fail if any captured payload broke docs/schemas/ (the first few errors, and how many)."""
        with self.lock:
            errors = list(self.schema_errors)
        if errors:
            raise AssertionError(f"{len(errors)} payload(s) do not match docs/schemas/:\n"
                                 + "\n".join(errors[:8]))


@pytest.fixture
def subscriber_factory():
    made = []

    def make(*args, **kwargs):
        s = Subscriber(*args, **kwargs)
        made.append(s)
        return s

    yield make
    failures = []
    for s in made:
        try:
            s.close()
        except AssertionError as exc:
            failures.append(str(exc))
    assert not failures, "\n".join(failures)
