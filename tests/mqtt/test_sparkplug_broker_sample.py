"""The edge node on the shipped broker sample (deploy/mosquitto/): TLS, passwords, the ACL, and
client ids bound to usernames.

Hazard: with `use_username_as_clientid`, two connections of one user throw each other off, over
and over. The JSON link and the node are two connections, so the node gets its own user
([sparkplug] username); the planted-bug twin shows the storm when it does not.
"""

from __future__ import annotations

import dataclasses
import json
import time

import pytest
import samples
from brokers import make_ca, make_passwords
from conftest import Subscriber, wait_for
from plant import Plant, fast_config

USERS = {"crushcell-cell1": "c1-secret", "crushcell-cell1-spb": "c1-spb-secret", "scada": "scada-secret",
         "viewer-grafana": "view-secret"}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    folder = tmp_path_factory.mktemp("spb-sample")
    certs = make_ca(folder / "certs")
    passwd = make_passwords(folder, USERS)
    acl = folder / "crushcell.acl"
    acl.write_text(samples.acl_for(["cell1"]))
    for user, secret in USERS.items():
        pw = folder / f"{user}.pw"
        pw.write_text(secret + "\n")
        pw.chmod(0o600)
    return folder, certs, passwd, acl


def config(site, *, own_user: bool):
    folder, certs, _passwd, _acl = site
    base = fast_config(tls=True, require_tls=True, ca_file=certs["ca.crt"], username="crushcell-cell1",
                       password_file=str(folder / "crushcell-cell1.pw"))
    sp = {"enabled": True, "primary_host_id": "scada", "sample_period_s": 0.1}
    if own_user:
        sp.update(username="crushcell-cell1-spb", password_file=str(folder / "crushcell-cell1-spb.pw"))
    return dataclasses.replace(base, sparkplug=dataclasses.replace(base.sparkplug, **sp))


@pytest.mark.parametrize("own_user", [True, False], ids=["own-user", "planted-bug-shared-user"])
def test_the_node_and_the_json_link_share_the_sample_broker_without_throwing_each_other_off(
        site, tmp_path, own_user):
    folder, certs, passwd, acl = site
    broker = samples.sample_broker(tmp_path / "broker", passwd=passwd, acl=str(acl), certs=certs).start()
    tls = {"ca": certs["ca.crt"]}
    host = Subscriber(broker.port, ["spBv1.0/#"], username="scada", password=USERS["scada"], tls=tls)
    viewer = Subscriber(broker.port, ["crushcell/#"], username="viewer-grafana",
                        password=USERS["viewer-grafana"], tls=tls)
    plant = None
    try:
        assert host.connected.wait(10) and viewer.connected.wait(10)
        # The host says it is online, as Sparkplug 3.0 has it (its user may write its own STATE).
        state = {"online": True, "timestamp": int(time.time() * 1000)}
        host.publish("spBv1.0/STATE/scada", json.dumps(state), retain=True)
        plant = Plant(config(site, own_user=own_user), tmp_path / "state",
                      broker=f"127.0.0.1:{broker.port}").start()
        link, node = plant.link, plant.link.sparkplug
        if own_user:
            wait_for(lambda: any(t == "spBv1.0/crushcell/NBIRTH/cell1" for t, _p, _r in host.snapshot()),
                     what="the NBIRTH through the sample ACL")
            wait_for(lambda: any(t == "spBv1.0/crushcell/NDATA/cell1" for t, _p, _r in host.snapshot()),
                     what="NDATA through the sample ACL")
            wait_for(lambda: any(t == "crushcell/cell1/status" for t, _p, _r in viewer.snapshot()),
                     what="the JSON status beside it")
            connects = (link.counters["connects"], node.counters["connects"])
            time.sleep(2.0)   # a window for a takeover to show; not a timing assertion
            assert (link.counters["connects"], node.counters["connects"]) == connects == (1, 1)
            assert link.counters["disconnects"] == 0 and node.counters["disconnects"] == 0
        else:
            # One user, one client id on this broker: each connection throws the other off.
            wait_for(lambda: link.counters["disconnects"] + node.counters["disconnects"] >= 4,
                     what="the takeover storm of two connections sharing a user")
    finally:
        if plant is not None:
            plant.stop()
        host.close()
        viewer.close()
        broker.stop()
