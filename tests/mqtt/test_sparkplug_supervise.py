"""Hazard: paho's network thread dies (an exception escaping paho) while the socket stays open.
The node would look alive to the broker and never publish again; the host would hold stale
values as good. The node's worker replaces the client: the old session ends with its NDEATH and
a new one is born with the next bdSeq."""

from conftest import wait_for
from plant import Plant
from spb import decoded, spb_config, verbs


def test_a_dead_network_thread_is_noticed_and_the_node_is_born_again(broker, subscriber_factory, tmp_path):
    sub = subscriber_factory(broker.port, "spBv1.0/#")
    assert sub.connected.wait(10)
    plant = Plant(spb_config(), tmp_path / "state", broker=f"127.0.0.1:{broker.port}").start()
    node = plant.link.sparkplug
    try:
        wait_for(lambda: verbs(decoded(sub), "NBIRTH"), what="the first NBIRTH")
        old = node.client
        old.loop_stop()   # the network thread ends; the socket stays open, as after a crash in paho
        wait_for(lambda: len(verbs(decoded(sub), "NBIRTH")) >= 2, what="a new NBIRTH after the client died")
    finally:
        plant.stop()
    messages = decoded(sub)
    births = verbs(messages, "NBIRTH")
    deaths = verbs(messages, "NDEATH")
    first, second = (next(m["value"] for m in b["metrics"] if m["name"] == "bdSeq") for b in births[:2])
    assert second == (first + 1) % 256
    assert node.client is not old and node.counters["restarts"] == 1
    # The first session's death was published (the host marks the node offline in between).
    assert [m["value"] for d in deaths for m in d["metrics"]][:1] == [first]
