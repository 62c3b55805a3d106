"""Sparkplug B 3.0 edge-node SESSION behaviour, from the spec's normative statements (tck-ids), against
real Mosquitto brokers: death certificates and the will, bdSeq across connections and restarts, the
primary host's STATE, store and forward, and the JSON-only configuration left untouched.

Every payload is read back through the independent decoder (pysparkplug in .venv-spb, spb.decoded());
MQTT flags as published (will QoS and retain) through an MQTT 5 subscription with Retain As Published
(spb.Witness), because an MQTT 3.1.1 broker clears the retain flag on every live delivery.

Waits are generous and nothing here judges how long anything took: the absence checks ("no NBIRTH while
the host is offline") look over a window, which is what a Sparkplug host would see too.
"""

from __future__ import annotations

import json
import re
import time

import pytest
from brokers import Broker
from conftest import wait_for
from controllers import Controller
from plant import Plant, fast_config, fast_config_file
from spb import (
    Witness,
    bdseq,
    decoded,
    host_state,
    metric,
    rebirth_ncmd_payload,
    seq_run_ok,
    spb_config,
    spb_toml,
    verbs,
    wait_verb,
)

from cellspec.names import SENSORS

GROUP, NODE, HOST = "plant", "cell1", "scada"
T_NBIRTH = f"spBv1.0/{GROUP}/NBIRTH/{NODE}"
T_NDEATH = f"spBv1.0/{GROUP}/NDEATH/{NODE}"
T_NDATA = f"spBv1.0/{GROUP}/NDATA/{NODE}"
T_NCMD = f"spBv1.0/{GROUP}/NCMD/{NODE}"
T_STATE = f"spBv1.0/STATE/{HOST}"
INT64 = 4                 # sparkplug_b.proto DataType.Int64 (the raw, undecoded number)
WINDOW_S = 1.0            # absence windows: nothing may arrive in this long
LEVEL_TOL = 2.0           # a forced temp_gas level read back: sensor noise is ~0.2 C (3 counts)


# -- fixtures --------------------------------------------------------------------------------------
@pytest.fixture
def witnesses():
    made: list[Witness] = []

    def make(port: int, **kwargs) -> Witness:
        w = Witness(port, **kwargs)
        made.append(w)
        return w.wait_ready()

    yield make
    for w in made:
        w.close()


@pytest.fixture
def plants():
    """In-process plants (real scan loop, simulated cell, PlantLink); `stop(p)` ends one early."""
    running: list[Plant] = []

    def make(config, state_dir, port: int) -> Plant:
        p = Plant(config, state_dir, broker=f"127.0.0.1:{port}").start()
        running.append(p)
        return p

    def stop(p: Plant) -> None:
        running.remove(p)
        p.stop()

    make.stop = stop
    yield make
    for p in reversed(running):
        p.stop()


@pytest.fixture
def controllers():
    """Real `crushcell run` subprocesses, stopped (SIGTERM, else SIGKILL) at the end."""
    made: list[Controller] = []

    def make(config, state_dir, port: int) -> Controller:
        c = Controller(config, state_dir, port).start()
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()


@pytest.fixture
def persistent_broker(tmp_path):
    """A broker that keeps persistent sessions across its restart and queues QoS 0 for them while
    they are away: whoever reconnects first after the restart (the node, mostly), a persistent
    subscriber still gets every message."""
    b = Broker(tmp_path / "pbroker", persistence=True, extra="queue_qos0_messages true\n").start()
    yield b
    b.stop()


@pytest.fixture
def debug_broker(tmp_path):
    """A broker that logs everything (CONNECT flags, wills, subscriptions, publishes)."""
    b = Broker(tmp_path / "dbroker", extra="log_type all\n").start()
    yield b
    b.stop()


@pytest.fixture
def logging_broker(tmp_path):
    """A broker that logs each client's CONNECT (notice level) to its log file."""
    b = Broker(tmp_path / "lbroker", extra="log_type notice\n").start()
    yield b
    b.stop()


# -- helpers ---------------------------------------------------------------------------------------
def spb_config_file(folder, **keys):
    """The shipped config for a `crushcell run` subprocess, short timers, with a [sparkplug] table."""
    path = fast_config_file(folder)
    path.write_text(path.read_text() + spb_toml(**keys))
    return path


def node_messages(w) -> list[dict]:
    """The edge node's own messages (not the STATE and NCMD the test published), decoded, in order."""
    out = [m for m in decoded(w) if m.get("verb") in ("NBIRTH", "NDATA", "NDEATH")]
    bad = [m for m in out if "error" in m]
    assert not bad, f"the independent decoder refused {len(bad)} message(s): {bad[:3]}"
    return out


def index_of(messages: list[dict], verb: str, nth: int) -> int:
    """Index of the nth (1-based) message of `verb`."""
    found = [i for i, m in enumerate(messages) if m["verb"] == verb]
    assert len(found) >= nth, f"{nth} {verb} expected, got {len(found)}: {[m['verb'] for m in messages]}"
    return found[nth - 1]


def raw_topics(w) -> list[str]:
    return [t for t, _p, _r in w.snapshot()]


def count_topic(w, topic: str) -> int:
    return sum(1 for t in raw_topics(w) if t == topic)


def check_ndeath(death: dict, expected_bdseq: int) -> None:
    """An NDEATH as Sparkplug 3.0 has it: exactly one metric, bdSeq (Int64) = its NBIRTH's, no seq."""
    raw = death["raw"]
    assert "seq" not in raw, f"NDEATH carries a seq: {raw}"
    names = [m.get("name") for m in raw.get("metrics", [])]
    assert names == ["bdSeq"], f"NDEATH metrics must be exactly [bdSeq], got {names}"
    assert raw["metrics"][0].get("datatype") == INT64, raw["metrics"][0]
    m = metric(death, "bdSeq")
    assert m["datatype"] == "Int64"
    assert m["value"] == expected_bdseq, f"NDEATH bdSeq {m['value']}, its NBIRTH's {expected_bdseq}"


def sensor_index(name: str) -> int:
    return SENSORS.index(name)


def hold_level(plant: Plant, sensor: str, value: float) -> None:
    """Force a sensor and wait until the node has sampled it: the scan shows the value, then two
    more held records (the first could have been taken from an older snapshot). Pacing only: the
    assertions are on what reaches the broker."""
    i = sensor_index(sensor)
    plant.force(sensor, value)
    wait_for(lambda: plant.loop.latest is not None and plant.loop.latest.values[i] is not None
             and abs(plant.loop.latest.values[i] - value) < LEVEL_TOL, what=f"{sensor} at {value}")
    node = plant.link.sparkplug
    start = node.stats()["held"]
    wait_for(lambda: node.stats()["held"] >= start + 2, what=f"{sensor} {value} sampled into the store")


def level_of(value, levels) -> int | None:
    if not isinstance(value, (int, float)):
        return None
    for k, level in enumerate(levels):
        if abs(value - level) < LEVEL_TOL:
            return k
    return None


def has_historical(m: dict) -> bool:
    return any(x["is_historical"] for x in m["metrics"])


# -- 1. the will -----------------------------------------------------------------------------------
def test_kill9_broker_publishes_the_ndeath_will_with_the_births_bdseq(tmp_path, broker, witnesses,
                                                                       controllers):
    """kill -9 of a real `crushcell run`: the broker publishes the node's will, the NDEATH.

    tck-id-message-flow-edge-node-birth-publish-will-message,
    tck-id-message-flow-edge-node-birth-publish-will-message-topic,
    tck-id-message-flow-edge-node-birth-publish-will-message-payload,
    tck-id-message-flow-edge-node-birth-publish-will-message-payload-bdSeq,
    tck-id-payloads-ndeath-will-message, tck-id-topics-ndeath-payload (only bdSeq),
    tck-id-payloads-ndeath-bdseq / tck-id-topics-nbirth-bdseq-matching (NDEATH bdSeq = NBIRTH bdSeq),
    tck-id-topics-ndeath-seq / tck-id-payloads-ndeath-seq (no seq),
    tck-id-message-flow-edge-node-birth-publish-will-message-qos / tck-id-payloads-ndeath-will-message-qos
    (QoS 1), tck-id-message-flow-edge-node-birth-publish-will-message-will-retained /
    tck-id-payloads-ndeath-will-message-retain (not retained), tck-id-topics-nbirth-mqtt (NBIRTH QoS 0,
    not retained).
    """
    w = witnesses(broker.port)
    ctl = controllers(spb_config_file(tmp_path), tmp_path / "state", broker.port)
    wait_verb(w, "NBIRTH")
    wait_verb(w, "NDATA")                     # in session and publishing
    assert count_topic(w, T_NDEATH) == 0
    ctl.kill9()
    wait_verb(w, "NDEATH")

    msgs = node_messages(w)
    births, deaths = verbs(msgs, "NBIRTH"), verbs(msgs, "NDEATH")
    assert len(births) == 1 and len(deaths) == 1, [m["verb"] for m in msgs]
    assert deaths[0]["topic"] == T_NDEATH
    assert msgs[-1] is deaths[0], "nothing can follow the death of a killed process"
    check_ndeath(deaths[0], bdseq(births[0]))
    # MQTT flags as the will was registered (Retain As Published, delivered at the will's QoS).
    assert w.flags(T_NDEATH) == [(1, False)], "the NDEATH will must be QoS 1, retain false"
    assert w.flags(T_NBIRTH) == [(0, False)], "the NBIRTH must be QoS 0, retain false"


def test_connect_clean_start_will_and_ncmd_subscription_before_the_nbirth(tmp_path, debug_broker, witnesses,
                                                                         plants):
    """What the node's CONNECT and SUBSCRIBE carry, from the broker's own log (Mosquitto 2.0 debug
    lines; nothing a subscriber can see): clean start, an NDEATH will on the NDEATH topic at QoS 1
    not retained, and NCMD subscribed at QoS 1 before the NBIRTH is published.

    tck-id-principles-persistence-clean-session-50 (clean start), tck-id-payloads-ndeath-will-message,
    tck-id-message-flow-edge-node-birth-publish-will-message-topic,
    tck-id-message-flow-edge-node-birth-publish-will-message-qos,
    tck-id-message-flow-edge-node-birth-publish-will-message-will-retained,
    tck-id-payloads-ndeath-will-message-qos, tck-id-payloads-ndeath-will-message-retain,
    tck-id-message-flow-edge-node-ncmd-subscribe (QoS 1, before the NBIRTH).
    """
    w = witnesses(debug_broker.port)
    p = plants(spb_config(), tmp_path / "state", debug_broker.port)
    wait_verb(w, "NBIRTH")
    cid = re.escape(p.link.sparkplug.client_id)
    log = debug_broker.log.read_text()
    connect = re.search(rf"New client connected from \S+ as {cid} \(p(\d), c(\d), k\d+\)\.\n"
                        rf"[^\n]*Will message specified \(\d+ bytes\) \(r(\d), q(\d)\)\.\n"
                        rf"[^\n]*\t(\S+)\n", log)
    assert connect, f"no CONNECT with a will from {cid} in the broker log:\n{log[-3000:]}"
    protocol, clean, will_retain, will_qos, will_topic = connect.groups()
    assert (protocol, clean) == ("5", "1"), "MQTT 5 CONNECT with Clean Start"
    assert (will_topic, will_qos, will_retain) == (T_NDEATH, "1", "0")
    subscribed = re.search(rf"\n[^\n]*: {cid} (\d) {re.escape(T_NCMD)}\n", log)
    birth = re.search(rf"Received PUBLISH from {cid} \([^)]*\'{re.escape(T_NBIRTH)}\'", log)
    assert subscribed and birth, "NCMD subscription or NBIRTH missing from the broker log"
    assert subscribed.group(1) == "1", "NCMD must be subscribed at QoS 1"
    assert subscribed.start() < birth.start(), "NCMD subscribed after the NBIRTH went out"


# -- 2. bdSeq across restarts ----------------------------------------------------------------------
def test_bdseq_starts_at_zero_and_goes_on_by_one_across_a_clean_restart(tmp_path, broker, witnesses,
                                                                           controllers):
    """A fresh state dir: bdSeq 0. SIGTERM: an NDEATH with that bdSeq before the connection ends.
    The next start on the same state dir: NBIRTH bdSeq + 1, and the state file holds it.

    tck-id-topics-nbirth-bdseq-increment (start at zero, +1 on every new CONNECT),
    tck-id-operational-behavior-edge-node-intentional-disconnect-ndeath,
    tck-id-payloads-ndeath-will-message-publisher-disconnect-mqtt50 (the will is published: it arrives),
    tck-id-payloads-ndeath-bdseq, tck-id-message-flow-edge-node-birth-publish-will-message-payload-bdSeq.
    """
    config, state = spb_config_file(tmp_path), tmp_path / "state"
    w = witnesses(broker.port)
    first = controllers(config, state, broker.port)
    b0 = bdseq(wait_verb(w, "NBIRTH")[0])
    assert b0 == 0, "a node with no bdSeq history starts at 0"
    wait_verb(w, "NDATA")
    first.terminate()
    death = wait_verb(w, "NDEATH")[0]
    check_ndeath(death, b0)
    assert w.flags(T_NDEATH) == [(1, False)]

    controllers(config, state, broker.port)
    births = wait_verb(w, "NBIRTH", 2)
    b1 = bdseq(births[1])
    assert b1 == (b0 + 1) % 256
    assert births[1]["seq"] == 0
    saved = json.loads((state / "sparkplug-cell1.json").read_text())
    assert saved.get("bdSeq") == b1, f"state file {saved}, NBIRTH bdSeq {b1}"
    # The restart's NBIRTH comes after the first session's NDEATH, and only one NDEATH so far.
    msgs = node_messages(w)
    assert [m["verb"] for m in msgs].count("NDEATH") == 1
    assert index_of(msgs, "NDEATH", 1) < index_of(msgs, "NBIRTH", 2)


def test_bdseq_wraps_from_255_to_0(tmp_path, broker, witnesses, plants):
    """The CONNECT after one that carried bdSeq 255 carries 0 (state file seeded with 255, the value
    the node itself writes: see test_bdseq_starts_at_zero_and_goes_on_by_one_across_a_clean_restart).

    tck-id-message-flow-edge-node-birth-publish-will-message-payload-bdSeq (255 -> 0),
    tck-id-payloads-nbirth-bdseq-repeat, tck-id-payloads-ndeath-bdseq.
    """
    state = tmp_path / "state"
    state.mkdir()
    (state / "sparkplug-cell1.json").write_text(json.dumps({"bdSeq": 255}))
    w = witnesses(broker.port)
    p = plants(spb_config(), state, broker.port)
    birth = wait_verb(w, "NBIRTH")[0]
    assert bdseq(birth) == 0
    plants.stop(p)
    check_ndeath(wait_verb(w, "NDEATH")[0], 0)


# -- 3. broker restart -----------------------------------------------------------------------------
def test_broker_restart_new_session_bdseq_plus_one_and_seq_from_zero(tmp_path, persistent_broker,
                                                                     subscriber_factory, plants):
    """The broker restarts under a node in session: a new CONNECT, so a new NBIRTH with bdSeq + 1 and
    seq 0, then NDATA seq 1, 2, 3, ... (and the first session's NDATA were consecutive too).

    tck-id-topics-nbirth-bdseq-increment, tck-id-message-flow-edge-node-birth-publish-nbirth-payload-bdSeq,
    tck-id-topics-nbirth-seq-num, tck-id-topics-ndata-seq-num, tck-id-payloads-ndata-seq-inc,
    tck-id-payloads-sequence-num-incrementing, tck-id-payloads-ndeath-bdseq (an NDEATH seen, if any,
    is the first session's).
    """
    b = persistent_broker
    # MQTT 3.1.1 persistent session: the NBIRTH the node sends before this subscriber is back waits
    # for it in the broker (see persistent_broker).
    w = subscriber_factory(b.port, "spBv1.0/#", client_id="spb-session-witness", persistent=True)
    wait_for(w.subscribed.is_set, what="the persistent subscriber's SUBACK")
    plants(spb_config(), tmp_path / "state", b.port)
    wait_verb(w, "NBIRTH")
    wait_for(lambda: count_topic(w, T_NDATA) >= 3, what="3 NDATA in the first session")
    b.restart()
    wait_verb(w, "NBIRTH", 2, timeout=30)

    def ndata_after_second_birth() -> int:
        topics = raw_topics(w)
        second = [i for i, t in enumerate(topics) if t == T_NBIRTH][1]
        return sum(1 for t in topics[second + 1:] if t == T_NDATA)

    wait_for(lambda: ndata_after_second_birth() >= 3, what="3 NDATA after the new NBIRTH")

    msgs = node_messages(w)
    i1, i2 = index_of(msgs, "NBIRTH", 1), index_of(msgs, "NBIRTH", 2)
    b0 = bdseq(msgs[i1])
    assert bdseq(msgs[i2]) == (b0 + 1) % 256, "a new CONNECT: bdSeq goes up by one"
    assert msgs[i1]["seq"] == 0 and msgs[i2]["seq"] == 0
    for lo, hi in ((i1, i2), (i2, len(msgs))):
        seqs = [0] + [m["seq"] for m in msgs[lo + 1:hi] if m["verb"] == "NDATA"]
        assert seqs[1] == 1 and seq_run_ok(seqs), f"NDATA seqs after the NBIRTH at {lo}: {seqs}"
    for d in verbs(msgs, "NDEATH"):
        check_ndeath(d, b0)
    assert all(m["verb"] == "NDATA" for m in msgs[i2 + 1:]), [m["verb"] for m in msgs[i2 + 1:]]


# -- 4. the primary host's STATE -------------------------------------------------------------------
def test_no_nbirth_until_the_primary_host_is_online(tmp_path, broker, witnesses, plants):
    """With a primary host configured: connected but no STATE yet, or only another host's: no NBIRTH.
    The host's online STATE: the NBIRTH (bdSeq 0, seq 0).

    tck-id-message-flow-edge-node-birth-publish-phid-wait,
    tck-id-message-flow-edge-node-birth-publish-phid-wait-id,
    tck-id-message-flow-edge-node-birth-publish-phid-wait-online,
    tck-id-operational-behavior-edge-node-birth-sequence-wait.
    """
    w = witnesses(broker.port)
    p = plants(spb_config(primary_host_id=HOST), tmp_path / "state", broker.port)
    wait_for(lambda: p.link.sparkplug.stats()["connected"], what="the edge node connected")
    host_state(w, "another-host", True)      # online, but not our primary host
    time.sleep(WINDOW_S)
    assert count_topic(w, T_NBIRTH) == 0, "NBIRTH before the primary host said it is online"
    assert count_topic(w, T_NDATA) == 0, "NDATA without a session"

    host_state(w, HOST, True)
    birth = wait_verb(w, "NBIRTH")[0]
    assert bdseq(birth) == 0 and birth["seq"] == 0


def test_rebirth_request_does_not_birth_before_the_primary_host_is_online(tmp_path, broker, witnesses,
                                                                          plants):
    """A Rebirth Request (from some other host application) while the node waits for its primary host:
    still no NBIRTH and no NDATA (the held data stays held); the host's online STATE then brings the
    one NBIRTH, bdSeq 0 (the only CONNECT), seq 0.

    tck-id-operational-behavior-edge-node-birth-sequence-wait ("MUST also wait to publish its BIRTH
    sequence until an online=true STATE message is received"),
    tck-id-message-flow-edge-node-birth-publish-phid-wait. (Not against
    tck-id-operational-behavior-data-commands-rebirth-action-2: that birth belongs to a session, and a
    node waiting for its primary host has none.)
    """
    w = witnesses(broker.port)
    p = plants(spb_config(primary_host_id=HOST), tmp_path / "state", broker.port)
    wait_for(lambda: p.link.sparkplug.stats()["connected"], what="the edge node connected")
    w.publish(T_NCMD, rebirth_ncmd_payload())
    time.sleep(WINDOW_S)
    assert count_topic(w, T_NBIRTH) == 0, "NBIRTH on a Rebirth Request while the primary host is not online"
    assert count_topic(w, T_NDATA) == 0, "NDATA while the primary host is not online"

    host_state(w, HOST, True)
    birth = wait_verb(w, "NBIRTH")[0]
    assert bdseq(birth) == 0 and birth["seq"] == 0


def test_stale_or_malformed_state_does_not_end_the_session(tmp_path, broker, witnesses, plants):
    """An offline STATE older than the last online one (an old host session's late will), then a STATE
    that is not JSON: both ignored. Proof the MQTT session went on: a Rebirth Request then gets an
    NBIRTH with the SAME bdSeq (a reconnect would have a new one), and no NDEATH at all.

    tck-id-operational-behavior-edge-node-termination-host-offline-timestamp,
    tck-id-message-flow-edge-node-birth-publish-phid-offline (only a STATE >= the online one counts),
    tck-id-operational-behavior-data-commands-rebirth-action-3 (the rebirth's bdSeq is the session's).
    """
    w = witnesses(broker.port)
    p = plants(spb_config(primary_host_id=HOST), tmp_path / "state", broker.port)
    t1 = host_state(w, HOST, True)
    b = bdseq(wait_verb(w, "NBIRTH")[0])

    host_state(w, HOST, False, t1 - 60_000)
    w.publish(T_STATE, b"{not json at all", retain=True)
    w.publish(T_NCMD, rebirth_ncmd_payload())
    births = wait_verb(w, "NBIRTH", 2, timeout=10)
    ndata_before = count_topic(w, T_NDATA)
    wait_for(lambda: count_topic(w, T_NDATA) > ndata_before, what="NDATA after the rebirth")

    assert bdseq(births[1]) == b and births[1]["seq"] == 0
    assert count_topic(w, T_NDEATH) == 0, "an ignored STATE must not end the session"
    assert p.link.sparkplug.stats()["connected"]
    # Self-check: the independent decoder reads the hand-made NCMD as a Rebirth Request.
    ncmd = verbs(decoded(w), "NCMD")
    assert len(ncmd) == 1 and metric(ncmd[0], "Node Control/Rebirth")["value"] is True, ncmd


def test_offline_state_ends_the_session_until_the_host_returns(tmp_path, broker, witnesses, plants):
    """The primary host's offline STATE (timestamp equal to the online one's: >= counts): one NDEATH
    with the session's bdSeq, a reconnect, and no NBIRTH (nor NDATA) while the host stays offline,
    not even for an online STATE older than that offline one. Online again (newer timestamp): the
    next NBIRTH has bdSeq + 1 (one new CONNECT) and seq 0.

    tck-id-message-flow-edge-node-birth-publish-phid-offline,
    tck-id-operational-behavior-edge-node-termination-host-offline,
    tck-id-operational-behavior-edge-node-termination-host-offline-reconnect,
    tck-id-message-flow-edge-node-birth-publish-phid-wait-timestamp (the stale online STATE),
    tck-id-operational-behavior-edge-node-birth-sequence-wait, tck-id-payloads-ndeath-bdseq,
    tck-id-topics-nbirth-bdseq-increment.
    """
    w = witnesses(broker.port)
    plants(spb_config(primary_host_id=HOST), tmp_path / "state", broker.port)
    t1 = host_state(w, HOST, True)
    b = bdseq(wait_verb(w, "NBIRTH")[0])

    host_state(w, HOST, False, t1)
    check_ndeath(wait_verb(w, "NDEATH")[0], b)
    host_state(w, HOST, True, t1 - 1)        # a birth older than the death just honoured
    time.sleep(WINDOW_S)
    topics = raw_topics(w)
    after_death = topics[topics.index(T_NDEATH):]
    deaths = after_death.count(T_NDEATH)
    assert deaths == 1, (f"{deaths} NDEATH messages while the host stayed offline for {WINDOW_S} s: "
                         "one session ended, so one death certificate")
    assert T_NBIRTH not in after_death, "NBIRTH while the primary host is offline"
    assert T_NDATA not in after_death, "NDATA while the primary host is offline"

    host_state(w, HOST, True, max(int(time.time() * 1000), t1 + 1))
    births = wait_verb(w, "NBIRTH", 2)
    assert bdseq(births[1]) == (b + 1) % 256, (
        f"NBIRTH bdSeq {bdseq(births[1])} after one reconnect from bdSeq {b}")
    assert births[1]["seq"] == 0
    assert w.flags(T_NDEATH)[0] == (1, False)


def test_node_started_while_the_host_is_offline_waits_for_it(tmp_path, broker, witnesses, plants):
    """The broker holds the primary host's retained offline STATE when the node starts (the first STATE
    it sees: honoured as it is). No NBIRTH, no NDATA, and no churn: the node has no session to end,
    so at most one NDEATH / extra CONNECT (the most literal reading of
    tck-id-message-flow-edge-node-birth-publish-phid-offline), not one per redelivery of the same
    retained STATE. Online: the NBIRTH, bdSeq 0 or 1 accordingly, seq 0.

    tck-id-message-flow-edge-node-birth-publish-phid-wait-online,
    tck-id-message-flow-edge-node-birth-publish-phid-wait-timestamp ("if no previous STATE ... consider
    the incoming STATE message to be the latest/valid"),
    tck-id-operational-behavior-edge-node-birth-sequence-wait,
    tck-id-operational-behavior-edge-node-termination-host-offline-reconnect (a reconnect "after being
    in a Sparkplug session"), tck-id-topics-nbirth-bdseq-increment.
    """
    w = witnesses(broker.port)
    t0 = host_state(w, HOST, False)
    p = plants(spb_config(primary_host_id=HOST), tmp_path / "state", broker.port)
    wait_for(lambda: p.link.sparkplug.stats()["connected"], what="the edge node connected")
    time.sleep(WINDOW_S)
    deaths = count_topic(w, T_NDEATH)
    assert count_topic(w, T_NBIRTH) == 0, "NBIRTH while the primary host is offline"
    assert count_topic(w, T_NDATA) == 0, "NDATA while the primary host is offline"
    assert deaths <= 1, f"{deaths} NDEATH messages in {WINDOW_S} s from a node that never had a session"

    host_state(w, HOST, True, max(int(time.time() * 1000), t0 + 1))
    birth = wait_verb(w, "NBIRTH")[0]
    assert bdseq(birth) <= deaths, f"NBIRTH bdSeq {bdseq(birth)}: {bdseq(birth)} CONNECTs before it"
    assert birth["seq"] == 0


# -- 5. store and forward --------------------------------------------------------------------------
LEVELS = [30.0, 40.0, 50.0, 60.0]     # temp_gas, C: far apart, so no deadband or noise hides a step
LIVE = 70.0


def check_forwarded(msgs: list[dict], levels: list[float], live: float | None) -> None:
    """After the last NBIRTH: NDATA seq 1, 2, ...; historical metrics first, in time order, older than
    the birth, every level present in order; then live (non-historical) ones in time order."""
    i2 = max(i for i, m in enumerate(msgs) if m["verb"] == "NBIRTH")
    birth = msgs[i2]
    after = msgs[i2 + 1:]
    assert all(m["verb"] == "NDATA" for m in after), [m["verb"] for m in after]
    seqs = [birth["seq"]] + [m["seq"] for m in after]
    assert birth["seq"] == 0 and seq_run_ok(seqs), f"seqs from the NBIRTH on: {seqs}"

    historical = [x for m in after for x in m["metrics"] if x["is_historical"]]
    assert historical, "no historical NDATA after the host came back"
    stamps = [x["timestamp"] for x in historical]
    assert all(isinstance(s, int) for s in stamps), "every historical metric carries its own timestamp"
    assert stamps == sorted(stamps), "historical values out of chronological order"
    assert stamps[-1] <= birth["timestamp"], "a historical value newer than the NBIRTH"
    held = [x["value"] for x in historical if x["name"] == "Sensors/temp_gas"]
    seen = [k for k in (level_of(v, levels) for v in held) if k is not None]
    assert sorted(set(seen)) == list(range(len(levels))), f"levels lost: held temp_gas {held}"
    assert seen == sorted(seen), f"temp_gas levels out of order: {held}"

    first_live = next((k for k, m in enumerate(after) if not has_historical(m)), None)
    if live is None:
        return
    assert first_live is not None, "no live NDATA after the held ones"
    assert not any(has_historical(m) for m in after[first_live:]), "historical NDATA after live ones"
    live_metrics = [x for m in after[first_live:] for x in m["metrics"]]
    live_stamps = [x["timestamp"] for x in live_metrics]
    assert live_stamps == sorted(live_stamps) and live_stamps[0] >= birth["timestamp"]
    assert any(x["name"] == "Sensors/temp_gas" and abs(x["value"] - live) < LEVEL_TOL for x in live_metrics)


def test_store_and_forward_while_the_primary_host_is_offline(tmp_path, broker, witnesses, plants):
    """Values that change while the primary host is offline are held and, after the next NBIRTH, sent
    as NDATA with is_historical = true, oldest first, none lost; live NDATA follow; seq runs on from
    the NBIRTH's 0 through all of them.

    Spec 1.x 'Primary Host Application' and 5 'Edge Node Session Establishment' (store while the
    host is offline, send all stored data once it is back), 6 Metric.is_historical;
    tck-id-operational-behavior-data-publish-nbirth-order (live values in time order),
    tck-id-payloads-sequence-num-incrementing, tck-id-payloads-ndata-seq-inc,
    tck-id-message-flow-edge-node-birth-publish-phid-offline (no data while the host is offline).
    """
    w = witnesses(broker.port)
    t1 = host_state(w, HOST, True)
    p = plants(spb_config(primary_host_id=HOST), tmp_path / "state", broker.port)
    wait_verb(w, "NBIRTH")
    host_state(w, HOST, False, max(int(time.time() * 1000), t1))
    wait_verb(w, "NDEATH")
    ndata_offline = count_topic(w, T_NDATA)
    for level in LEVELS:
        hold_level(p, "temp_gas", level)
    assert count_topic(w, T_NDATA) == ndata_offline, "NDATA published while the host is offline"

    host_state(w, HOST, True)
    wait_for(lambda: count_topic(w, T_NBIRTH) >= 2, what="the NBIRTH after the host's return")
    p.force("temp_gas", LIVE)

    def live_seen() -> bool:
        msgs = node_messages(w)
        i2 = index_of(msgs, "NBIRTH", 2)
        return any(x["name"] == "Sensors/temp_gas" and not x["is_historical"]
                   and abs(x["value"] - LIVE) < LEVEL_TOL for m in msgs[i2 + 1:] for x in m["metrics"])

    wait_for(live_seen, interval=0.3, what=f"live NDATA with temp_gas {LIVE}")
    check_forwarded(node_messages(w), LEVELS, LIVE)


def test_held_records_survive_a_restart(tmp_path, broker, witnesses, plants):
    """Held values are on disk: a plant stopped while the host is offline and started again on the same
    state dir (the host still offline) sends them, historical and in order, after its NBIRTH.

    As test_store_and_forward_while_the_primary_host_is_offline, across a restart;
    tck-id-operational-behavior-edge-node-birth-sequence-wait (a node started while the host is
    offline waits for it).
    """
    state, config = tmp_path / "state", spb_config(primary_host_id=HOST)
    w = witnesses(broker.port)
    t1 = host_state(w, HOST, True)
    first = plants(config, state, broker.port)
    wait_verb(w, "NBIRTH")
    host_state(w, HOST, False, max(int(time.time() * 1000), t1))
    wait_verb(w, "NDEATH")
    levels = LEVELS[:2]
    for level in levels:
        hold_level(first, "temp_gas", level)
    plants.stop(first)

    second = plants(config, state, broker.port)
    wait_for(lambda: second.link.sparkplug.stats()["connected"], what="the restarted node connected")
    births_before = count_topic(w, T_NBIRTH)
    host_state(w, HOST, True)
    wait_for(lambda: count_topic(w, T_NBIRTH) > births_before, what="the restarted node's NBIRTH")

    def drained() -> bool:
        msgs = node_messages(w)
        i2 = max(i for i, m in enumerate(msgs) if m["verb"] == "NBIRTH")
        return any(not has_historical(m) for m in msgs[i2 + 1:])   # live data: the held ones went first

    wait_for(drained, interval=0.3, what="live NDATA after the held ones")
    check_forwarded(node_messages(w), levels, None)


# -- 6. JSON only ----------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["absent", "disabled"])
def test_json_only_config_has_no_sparkplug_at_all(tmp_path, logging_broker, subscriber_factory, plants,
                                                  variant):
    """[sparkplug] absent, or present with enabled = false: no second client, no spBv1.0 topic, and the
    JSON status and telemetry as before. (No tck-id: Sparkplug is off; the JSON link is our contract.)"""
    config = fast_config() if variant == "absent" else spb_config(enabled=False)
    sub = subscriber_factory(logging_broker.port, "#", client_id="json-only-watch")
    wait_for(sub.connected.is_set, what="subscriber")
    p = plants(config, tmp_path / "state", logging_broker.port)
    assert p.link.sparkplug is None
    wait_for(lambda: sub.snapshot("cell1/status") and sub.snapshot("cell1/telemetry"),
             what="JSON status and telemetry")
    time.sleep(WINDOW_S / 2)                 # a second client would have connected by now
    topics = {t for t, _p, _r in sub.snapshot()}
    assert not [t for t in topics if t.startswith("spBv1.0")], sorted(topics)
    connected = re.findall(r"New client connected from \S+ as (\S+) ", logging_broker.log.read_text())
    others = [c for c in connected if c != "json-only-watch"]
    assert others == [p.link.client_id], f"clients that connected besides the test's: {others}"
