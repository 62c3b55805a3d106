"""The shipped broker samples (deploy/mosquitto/) on a real Mosquitto: who may throw whom off,
who may write whose retained Home Assistant discovery, and the plant-to-centre bridge.

Each broker runs the sample file itself: only file locations and the port are substituted (and
asserted to be there, so a changed sample fails here instead of being silently skipped). Each
guard also has a planted-bug twin: the same attack against the sample with the guard taken out
must succeed, which proves the test can see the hazard it guards against.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import samples
from brokers import Broker, free_port, make_ca, make_passwords
from conftest import Subscriber, plant_config, wait_for
from fakeloop import FakeLoop, Runner

from controller.link import payloads
from controller.link.mqtt import PlantLink

USERS = {"crushcell-cell1": "c1-secret", "crushcell-cell2": "c2-secret", "operator-alice": "alice-secret",
         "viewer-grafana": "view-secret", "homeassistant": "ha-secret"}
ACCEPTED = ("Success", "No matching subscribers")   # MQTT 5 PUBACK reason codes below 0x80


class Site:
    """A CA, a password file for USERS, and the sample ACL with a block for cell2 (in `folder`)."""

    def __init__(self, folder: Path, acl_text: str | None = None):
        self.folder = folder
        self.certs = make_ca(folder / "certs")
        self.passwd = make_passwords(folder, USERS)
        self.acl = folder / "crushcell.acl"
        self.acl.write_text(samples.acl_for(["cell1", "cell2"], acl_text))
        self.tls = {"ca": self.certs["ca.crt"]}

    def sample_broker(self, name: str = "plant", *, binding: bool = True, confd: dict | None = None,
                      ) -> Broker:
        """The sample as installed under Debian's main config (tests/mqtt/samples.py), started."""
        return samples.sample_broker(self.folder / name, passwd=self.passwd, acl=str(self.acl),
                                     certs=self.certs, binding=binding, confd=confd).start()

    def link(self, broker: Broker, cell: str = "cell1", **mqtt) -> PlantLink:
        pw = self.folder / f"{cell}-{time.monotonic_ns()}.pw"
        pw.write_text(USERS[f"crushcell-{cell}"] + "\n")
        pw.chmod(0o600)
        config = plant_config(port=broker.port, tls=True, require_tls=True, ca_file=self.certs["ca.crt"],
                              username=f"crushcell-{cell}", password_file=str(pw), **mqtt)
        state = self.folder / f"state-{cell}-{time.monotonic_ns()}"
        return PlantLink(config, FakeLoop(), state_dir=str(state))

    def client(self, broker: Broker, user: str, topics=(), **kw) -> Subscriber:
        return Subscriber(broker.port, list(topics), username=user, password=USERS[user], tls=self.tls, **kw)


class Publisher:
    """A raw MQTT 5 client that records the PUBACK reason code of every publish."""

    def __init__(self, broker: Broker, user: str, tls: dict):
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.acks: dict[int, str] = {}
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.c.username_pw_set(user, USERS[user])
        self.c.tls_set(ca_certs=tls["ca"])
        self.c.on_connect = lambda _c, _u, _f, rc, _p: None if rc.is_failure else self.connected.set()
        self.c.on_publish = self._on_publish
        self.c.connect_async("127.0.0.1", broker.port)
        self.c.loop_start()
        wait_for(self.connected.is_set, what=f"{user} connected")

    def _on_publish(self, _c, _u, mid, reason_code, _p):
        with self.lock:
            self.acks[mid] = str(reason_code)

    def publish(self, topic: str, payload, retain: bool = True) -> str:
        info = self.c.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(timeout=10)
        return wait_for(lambda: self.acks.get(info.mid), what=f"PUBACK for {topic}")

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return Site(tmp_path_factory.mktemp("samples"))


# -- item 3: a client id cannot throw the controller off ----------------------------------------------
@pytest.mark.parametrize("binding", [True, False], ids=["sample", "planted-bug-no-binding"])
def test_client_id_takeover_cannot_throw_the_controller_off(site, binding):
    broker = site.sample_broker(f"takeover-{binding}", binding=binding)
    link = site.link(broker)
    runner = Runner(link.loop, link)
    watcher = site.client(broker, "viewer-grafana", ["crushcell/cell1/availability"])
    attackers = []
    try:
        wait_for(watcher.subscribed.is_set, what="watcher subscribed")
        runner.start()
        link.start()
        wait_for(lambda: link.stats()["connected"], what="controller connected")
        wait_for(lambda: [m for m in watcher.snapshot() if m[1] == b"online"], what="online")
        # Authenticated users (an operator, another cell's controller) connect with the
        # controller's client id; paho reconnects them at once if they are thrown off.
        for user in ("operator-alice", "crushcell-cell2"):
            attackers.append(site.client(broker, user, client_id="crushcell-cell1"))
        for a in attackers:
            wait_for(a.connected.is_set, what="attacker connected")
        if binding:
            # No flapping for longer than the controller's longest reconnect wait (1 s) and six of
            # the attackers' reconnect periods (0.25 s, tests/mqtt/conftest.py Subscriber).
            time.sleep(1.5)
            stats = link.stats()
            assert stats.get("disconnects", 0) == 0 and stats["connects"] == 1, stats
            assert link.stats()["connected"]
            assert all(a.connected.is_set() and a.refused is None for a in attackers)
            assert [m[1] for m in watcher.snapshot()] == [b"online"], "a false offline was published"
        else:
            # Without the binding the takeover happens: the controller is thrown off and its last
            # will tells every dashboard the cell is offline while it is running.
            wait_for(lambda: link.stats().get("disconnects", 0) >= 1, what="controller thrown off")
            wait_for(lambda: b"offline" in [m[1] for m in watcher.snapshot()], what="false offline")
    finally:
        for a in attackers:
            a.close()
        watcher.close()
        runner.stop()
        link.close()
        broker.stop()


# -- item 4: a cell cannot rewrite another cell's retained discovery ----------------------------------
def discovery_topics(cell: str) -> list[str]:
    configs = payloads.homeassistant_configs(ha_prefix="homeassistant", base=f"crushcell/{cell}",
                                             cell_id=cell, version="x", units={})
    return [topic for topic, _cfg in configs]


def retained(site, broker, topics, *, expect: set[str]) -> dict[str, bytes]:
    """Retained messages on `topics` as a fresh subscriber sees them, once `expect` all came."""
    viewer = site.client(broker, "viewer-grafana", topics)
    try:
        wait_for(lambda: {m[0] for m in viewer.snapshot() if m[2]} >= expect, what="the retained messages")
        time.sleep(0.3)   # one burst per subscription after SUBACK: the rest of it is here by now
        return {t: p for t, p, r in viewer.snapshot() if r}
    finally:
        viewer.close()


PERMISSIVE = "topic readwrite homeassistant/#\n"   # what the sample said before issue 10


def permissive_acl() -> str:
    acl = (samples.SAMPLES / "crushcell.acl").read_text()
    for line in ("topic write homeassistant/sensor/crushcell_cell1/+/config\n",
                 "topic write homeassistant/binary_sensor/crushcell_cell1/+/config\n"):
        assert acl.count(line) == 1
        acl = acl.replace(line, "")
    return acl.replace("topic read homeassistant/status\n", PERMISSIVE, 1)


@pytest.mark.parametrize("acl", ["sample", "planted-bug-permissive"])
def test_a_cell_cannot_rewrite_another_cells_discovery(tmp_path, acl):
    site = Site(tmp_path, None if acl == "sample" else permissive_acl())
    broker = site.sample_broker()
    link = site.link(broker, homeassistant_discovery=True)
    runner = Runner(link.loop, link)
    mine = discovery_topics("cell1")
    genuine = site.client(broker, "viewer-grafana", ["homeassistant/#", "crushcell/cell1/#"])
    ha = site.client(broker, "homeassistant")
    cell2 = None
    try:
        wait_for(genuine.subscribed.is_set, what="viewer subscribed")
        runner.start()
        link.start()
        # cell1 may write its own discovery: every config arrives (and is retained, below).
        wait_for(lambda: {m[0] for m in genuine.snapshot()} >= set(mine), what="cell1's discovery")
        wait_for(lambda: genuine.snapshot("/status"), what="cell1's status")
        original = {t: p for t, p, _r in genuine.snapshot() if t in mine}

        # cell2's controller (valid credentials) tries to take over cell1's entities, to delete
        # one (empty retained message), and to fake cell1's status and availability.
        cell2 = Publisher(broker, "crushcell-cell2", site.tls)
        fake = json.dumps({"name": "o2_a", "state_topic": "crushcell/cell2/telemetry",
                           "unique_id": "crushcell_cell1_o2_a"})
        codes = {t: cell2.publish(t, fake) for t in mine[1:]}
        codes[mine[0]] = cell2.publish(mine[0], b"")
        codes["crushcell/cell1/availability"] = cell2.publish("crushcell/cell1/availability", "offline")
        codes["crushcell/cell1/status"] = cell2.publish("crushcell/cell1/status", '{"state":"RUNNING"}')
        # Its own discovery is allowed (published last: when it is retained, the broker has
        # handled every publish above, which came on the same connection).
        own = discovery_topics("cell2")[0]
        assert cell2.publish(own, json.dumps({"name": "o2_a"})) in ACCEPTED

        # mine[0] is left out of what to wait for: the permissive ACL lets cell2 delete it.
        seen = retained(site, broker, ["homeassistant/#", "crushcell/cell1/#"],
                        expect={own, *mine[1:], "crushcell/cell1/status", "crushcell/cell1/availability"})
        hijacked = [t for t in mine if seen.get(t) != original[t]]
        if acl == "sample":
            assert hijacked == [], f"cell2 rewrote cell1's discovery: {hijacked}"
            assert seen["crushcell/cell1/availability"] == b"online"
            assert json.loads(seen["crushcell/cell1/status"])["cell_id"] == "cell1"
            # Mosquitto 2 answers a refused MQTT 5 publish with "Not authorized".
            assert set(codes.values()) == {"Not authorized"}, codes
        else:
            # The old sample let any controller rewrite (or delete) every cell's discovery.
            assert hijacked == mine

        # Home Assistant announces itself (its block may write homeassistant/status): cell1
        # publishes its discovery again, so HA repairs what it shows.
        before = len([m for m in genuine.snapshot() if m[0] == mine[1]])
        ha.publish("homeassistant/status", "online")
        wait_for(lambda: len([m for m in genuine.snapshot() if m[0] == mine[1]]) > before,
                 what="discovery re-published after HA's birth message")
    finally:
        if cell2 is not None:
            cell2.close()
        for c in (genuine, ha):
            c.close()
        runner.stop()
        link.close()
        broker.stop()


def test_only_home_assistant_may_announce_itself(site):
    """homeassistant/status makes every controller re-publish: no controller or viewer may write it."""
    broker = site.sample_broker("ha-status")
    try:
        for user in ("crushcell-cell1", "crushcell-cell2", "viewer-grafana", "operator-alice"):
            p = Publisher(broker, user, site.tls)
            try:
                assert p.publish("homeassistant/status", "online", retain=False) == "Not authorized", user
            finally:
                p.close()
        p = Publisher(broker, "homeassistant", site.tls)
        try:
            assert p.publish("homeassistant/status", "online", retain=False) in ACCEPTED
        finally:
            p.close()
    finally:
        broker.stop()


# -- fleet: the sample bridge to a central broker ---------------------------------------------------------
CENTRAL_USER, CENTRAL_PASSWORD = "crushcell-plant1", "bridge-secret"
REMOTE = "plants/plant1/crushcell/cell1"


def central_conf(site: Site, port: int, persist: Path) -> str:
    """The central broker (stands in for the EMQX/HiveMQ cluster): TLS, passwords, an ACL in which
    the plant's bridge writes only under its own prefix, persistence for the historian's session."""
    folder = site.folder / "central-auth"
    folder.mkdir(exist_ok=True)
    passwd = make_passwords(folder, {CENTRAL_USER: CENTRAL_PASSWORD, "historian": "hist-secret"})
    acl = folder / "central.acl"
    acl.write_text(f"user {CENTRAL_USER}\ntopic readwrite plants/plant1/#\n\n"
                   "user historian\ntopic read plants/#\n")
    return (f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwd}\nacl_file {acl}\n"
            f"cafile {site.certs['ca.crt']}\ncertfile {site.certs['server.crt']}\n"
            f"keyfile {site.certs['server.key']}\npersistence true\npersistence_location {persist}/\n"
            "autosave_interval 1\nmax_queued_messages 100000\nlog_dest stderr\nlog_type error\n"
            "log_type warning\n" + samples.root_user())


def bridge_conf(site: Site, central_port: int) -> str:
    text = samples.substitute((samples.SAMPLES / "bridge.conf.example").read_text(), {
        "\naddress central.plant.example:8883\n": f"\naddress 127.0.0.1:{central_port}\n",
        "\nremote_password CHANGE-ME\n": f"\nremote_password {CENTRAL_PASSWORD}\n",
        "\nbridge_cafile /etc/mosquitto/certs/central-ca.crt\n": f"\nbridge_cafile {site.certs['ca.crt']}\n",
        # Timing only: reconnect within a second or two instead of the sample's 2..30 s.
        "\nrestart_timeout 2 30\n": "\nrestart_timeout 1 2\n",
    }, "bridge.conf.example")
    return text


def alarm(seq: int) -> dict:
    return {"t": float(seq), "type": "alarm", "name": "o2_deviation", "active": seq % 2 == 1,
            "severity": "warning", "seq": seq}


def unpack(payload: bytes) -> list[dict]:
    obj = json.loads(payload)
    return obj["events"] if "events" in obj else [obj]


def test_sample_bridge_carries_events_and_status_to_the_centre_and_queues_through_an_outage(site):
    central_port = free_port()
    central_persist = site.folder / "central" / "persist"
    central_persist.mkdir(parents=True, exist_ok=True)
    central = Broker(site.folder / "central", port=central_port)
    central.conf.write_text(central_conf(site, central_port, central_persist))
    central.start()
    # The plant broker as installed: Debian's main config, the sample and the bridge (under the
    # name docs and the example give it) in conf.d.
    bridge = bridge_conf(site, central_port)
    plant = site.sample_broker("bridged-plant", confd={"crushcell-bridge.conf": bridge})
    link = site.link(plant)
    runner = Runner(link.loop, link)
    hist = Subscriber(central_port, [f"{REMOTE}/events", "plants/plant1/bridge/state"], client_id="historian",
                      persistent=True, username="historian", password="hist-secret", tls=site.tls)
    try:
        wait_for(hist.subscribed.is_set, what="central historian subscribed")
        wait_for(lambda: b"1" in [m[1] for m in hist.snapshot("/bridge/state")], what="bridge connected")
        runner.start()
        link.start()
        wait_for(lambda: link.stats()["connected"], what="controller connected to the plant broker")
        link.offer_event(alarm(1))
        got = wait_for(lambda: [e for m in hist.snapshot("/events") for e in unpack(m[1])],
                       what="the event on the central broker")
        assert got[0]["name"] == "o2_deviation" and got[0]["seq"] == 1

        # The retained status crosses retained (a central dashboard gets it at once).
        late = Subscriber(central_port, [f"{REMOTE}/status", f"{REMOTE}/availability"], username="historian",
                          password="hist-secret", tls=site.tls, client_id="late-dashboard")
        try:
            wait_for(lambda: [m for m in late.snapshot("/status") if m[2]], what="retained status, centre")
            wait_for(lambda: [m for m in late.snapshot("/availability") if m[2] and m[1] == b"online"],
                     what="retained availability at the centre")
        finally:
            late.close()

        # The centre goes away: the plant broker keeps the bridge's QoS 1 messages (persistent
        # local session); the centre keeps the historian's session (persistence).
        hist.close()
        central.stop()
        for seq in range(2, 12):
            link.offer_event(alarm(seq))
        wait_for(lambda: link.stats()["pending"] == 0, what="plant broker acknowledged the events")
        central.start()
        hist = Subscriber(central_port, [f"{REMOTE}/events"], client_id="historian", persistent=True,
                          username="historian", password="hist-secret", tls=site.tls)
        def seqs():
            got = [e["seq"] for m in hist.snapshot("/events") for e in unpack(m[1])]
            return got if got and got[-1] == 11 else None

        got = wait_for(seqs, what="the events queued through the outage")
        first = list(dict.fromkeys(got))   # QoS 1: a repeat is allowed, a gap or a reorder is not
        assert first == list(range(2, 12)), got
    finally:
        hist.close()
        runner.stop()
        link.close()
        plant.stop()
        central.stop()
