"""The Sparkplug 3.0 topic forms, exactly: spBv1.0/<group>/<verb>/<edge node>, with IDs that are
not the defaults (a dash in the node ID), and nothing published anywhere else under spBv1.0."""

from conftest import wait_for
from plant import Plant
from spb import decoded, rebirth_ncmd_payload, spb_config, verbs

GROUP, NODE = "recycling-2", "cell-7"


def test_every_message_uses_the_spec_topic_form_and_ncmd_is_heard_on_its_own(broker, subscriber_factory,
                                                                            tmp_path):
    """tck-id-topic-structure, tck-id-topic-structure-namespace-a, tck-id-topics-nbirth-topic,
    tck-id-topics-ndata-topic, tck-id-topics-ndeath-topic, tck-id-topics-ncmd-topic,
    tck-id-message-flow-edge-node-birth-publish-nbirth-topic,
    tck-id-message-flow-edge-node-birth-publish-nbirth-payload,
    tck-id-message-flow-edge-node-birth-publish-nbirth-payload-seq,
    tck-id-payloads-sequence-num-req-nbirth, tck-id-message-flow-edge-node-birth-publish-connect."""
    sub = subscriber_factory(broker.port, "#")
    assert sub.connected.wait(10)
    plant = Plant(spb_config(group_id=GROUP, edge_node_id=NODE), tmp_path / "state",
                  broker=f"127.0.0.1:{broker.port}").start()
    base = f"spBv1.0/{GROUP}"
    try:
        wait_for(lambda: any(t == f"{base}/NDATA/{NODE}" for t, _p, _r in sub.snapshot()), what="NDATA")
        # A rebirth request on exactly spBv1.0/<group>/NCMD/<node> is heard: a second NBIRTH.
        sub.publish(f"{base}/NCMD/{NODE}", rebirth_ncmd_payload(), qos=0)
        # ... and one on another node's NCMD topic is not.
        sub.publish(f"{base}/NCMD/{NODE}x", rebirth_ncmd_payload(), qos=0)
        wait_for(lambda: sum(t == f"{base}/NBIRTH/{NODE}" for t, _p, _r in sub.snapshot()) >= 2,
                 what="the NBIRTH a rebirth request brings")
    finally:
        plant.stop()
    wait_for(lambda: any(t == f"{base}/NDEATH/{NODE}" for t, _p, _r in sub.snapshot()), what="NDEATH")

    node_topics = {t for t, _p, _r in sub.snapshot() if t.startswith("spBv1.0/")} - {f"{base}/NCMD/{NODE}",
                                                                                   f"{base}/NCMD/{NODE}x"}
    assert node_topics == {f"{base}/NBIRTH/{NODE}", f"{base}/NDATA/{NODE}", f"{base}/NDEATH/{NODE}"}
    messages = decoded(sub)
    own = [m for m in messages if m["topic"].split("/")[2] in ("NBIRTH", "NDATA", "NDEATH")]
    assert own[0]["verb"] == "NBIRTH", "the node's first message is its birth certificate"
    assert not [m for m in own if "error" in m], [m["error"] for m in own if "error" in m]
    births = verbs(messages, "NBIRTH")
    assert len(births) == 2
    assert all(b["seq"] == 0 and "seq" in b["raw"] for b in births)
    # The JSON face is there as ever, beside it.
    assert any(t == "crushcell/cell1/status" for t, _p, _r in sub.snapshot())


def test_a_state_timestamp_written_as_a_json_float_is_honoured(broker, subscriber_factory, tmp_path):
    """tck-id-message-flow-edge-node-birth-publish-phid-wait-online: the STATE payload's timestamp
    is "a numeric value"; a host that writes it as a JSON float (1.7e12) is a host like any other."""
    import json
    import time

    sub = subscriber_factory(broker.port, "spBv1.0/#")
    assert sub.connected.wait(10)
    sub.publish("spBv1.0/STATE/scada", json.dumps({"online": True, "timestamp": time.time() * 1000.0}),
                retain=True)
    plant = Plant(spb_config(primary_host_id="scada"), tmp_path / "state",
                  broker=f"127.0.0.1:{broker.port}").start()
    try:
        wait_for(lambda: any(t.endswith("/NBIRTH/cell1") for t, _p, _r in sub.snapshot()),
                 what="the NBIRTH after a STATE with a float timestamp")
    finally:
        plant.stop()
