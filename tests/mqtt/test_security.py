"""TLS, passwords and the shipped ACL (deploy/mosquitto/crushcell.acl) on a real broker."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest
from brokers import Broker, free_port, make_ca, make_passwords
from conftest import ROOT, Subscriber, plant_config, wait_for
from fakeloop import FakeLoop, Runner

from controller.link import client as mq
from controller.link.client import LinkConfigError, parse_broker, read_password
from controller.link.mqtt import PlantLink

BASE = "crushcell/cell1"
USERS = {"crushcell-cell1": "ctl-secret", "operator-alice": "alice-secret", "viewer-grafana": "view-secret"}


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("secure")
    certs = make_ca(tmp / "certs")
    passwd = make_passwords(tmp, USERS)
    acl = tmp / "crushcell.acl"
    acl.write_text((ROOT / "deploy" / "mosquitto" / "crushcell.acl").read_text())
    extra = (f"allow_anonymous false\npassword_file {passwd}\nacl_file {acl}\n"
             f"cafile {certs['ca.crt']}\ncertfile {certs['server.crt']}\nkeyfile {certs['server.key']}\n")
    broker = Broker(tmp / "broker", extra=extra).start()
    yield broker, certs, tmp
    broker.stop()


def secure_link(broker, certs, tmp, password, name):
    pw = tmp / f"{name}.pw"
    pw.write_text(password + "\n")
    pw.chmod(0o600)   # require_tls refuses a password file others can read
    config = plant_config(port=broker.port, tls=True, require_tls=True, ca_file=certs["ca.crt"],
                          username="crushcell-cell1", password_file=str(pw))
    return PlantLink(config, FakeLoop(), state_dir=str(tmp / f"state-{name}"))


def test_tls_password_and_acl(secure):
    broker, certs, tmp = secure
    link = secure_link(broker, certs, tmp, USERS["crushcell-cell1"], "good")
    runner = Runner(link.loop, link)
    runner.start()
    link.start()
    tls = {"ca": certs["ca.crt"]}
    alice = Subscriber(broker.port, [f"{BASE}/#"], username="operator-alice",
                       password=USERS["operator-alice"], tls=tls)
    stranger = Subscriber(broker.port, [f"{BASE}/#"], username="viewer-grafana",
                          password=USERS["viewer-grafana"], tls=tls)
    clear = Subscriber(broker.port, [f"{BASE}/#"])   # no TLS on a TLS-only listener
    try:
        wait_for(lambda: link.stats()["connected"], what="controller connected over TLS")
        wait_for(lambda: alice.snapshot("/status"), what="status readable by an operator")
        # A stranger (read-only role) publishes a command first; the broker's ACL drops it.
        stranger.publish(f"{BASE}/cmd", json.dumps({"id": "evil", "action": "purge", "by": "x"}))
        alice.publish(f"{BASE}/cmd", json.dumps({"id": "good", "action": "purge", "by": "alice"}))
        replies = wait_for(lambda: [r for r in alice.json("/cmd/reply") if r["id"] == "good"], what="reply")
        assert replies[0]["accepted"] is True
        assert not [r for r in alice.json("/cmd/reply") if r["id"] == "evil"]
        assert link.stats()["commands_received"] == 1
        assert not clear.connected.is_set()
    finally:
        for s in (alice, stranger, clear):
            s.close()
        runner.stop()
        link.close()


def test_wrong_password_is_refused_and_retried(secure):
    broker, certs, tmp = secure
    link = secure_link(broker, certs, tmp, "not-the-password", "bad")
    link.start()
    try:
        wait_for(lambda: link.stats().get("connect_refused", 0) >= 2, what="refusals (and a retry)")
        assert not link.stats()["connected"]
    finally:
        link.close()


def test_require_tls_refuses_clear_text(tmp_path):
    cfg = tmp_path / "cell.toml"
    text = (ROOT / "config" / "cell.toml").read_text().replace("[mqtt]\n", "[mqtt]\nrequire_tls = true\n", 1)
    cfg.write_text(text)
    out = subprocess.run([sys.executable, "-m", "controller.cli", "run", "--config", str(cfg), "--hal", "sim",
                          "--state-dir", str(tmp_path / "s"), "--duration", "1"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "require_tls = true needs tls = true" in out.stderr and "Traceback" not in out.stderr


def test_password_sources_and_broker_override(monkeypatch):
    config = plant_config(username="u", password_env="CRUSHCELL_TEST_PW")
    monkeypatch.setenv("CRUSHCELL_TEST_PW", "s3cret")
    assert read_password(config.mqtt) == "s3cret"
    assert "s3cret" not in repr(config.mqtt)
    monkeypatch.delenv("CRUSHCELL_TEST_PW")
    with pytest.raises(LinkConfigError, match="CRUSHCELL_TEST_PW"):
        read_password(config.mqtt)
    assert parse_broker("host", 1883) == ("host", 1883)
    assert parse_broker("10.0.0.2:8883", 1883) == ("10.0.0.2", 8883)
    assert parse_broker("[::1]:1884", 1883) == ("::1", 1884)
    for bad in ("", "h:0", "h:x", "mqtt://h", "[::1"):
        with pytest.raises(LinkConfigError):
            parse_broker(bad, 1883)


def test_bad_broker_option_exits_2_without_traceback(tmp_path):
    out = subprocess.run([sys.executable, "-m", "controller.cli", "run", "--hal", "sim",
                          "--broker", "h:99999", "--state-dir", str(tmp_path / "s"), "--duration", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "port must be a number" in out.stderr and "Traceback" not in out.stderr


# -- issue 10, item 7: security faults are said, not silent ------------------------------------------
def security_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "crushcell.link" and r.levelno >= logging.WARNING]


def test_readable_password_file_and_clear_text_username_are_warned_once(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(mq, "_warned", set())
    caplog.set_level(logging.WARNING, logger="crushcell.link")
    pw = tmp_path / "mqtt.password"
    pw.write_text("s3cret\n")
    pw.chmod(0o644)
    config = plant_config(username="crushcell-cell1", password_file=str(pw))
    for n in range(2):
        PlantLink(config, FakeLoop(), state_dir=str(tmp_path / f"s{n}")).close()
    said = security_warnings(caplog)
    mode = [m for m in said if "readable or writable by group or others" in m]
    clear = [m for m in said if "over plain TCP" in m]
    assert len(mode) == 1 and "mode 0644" in mode[0] and f"chmod 600 {pw}" in mode[0]
    assert len(clear) == 1 and "set tls = true" in clear[0]
    assert not any("s3cret" in m for m in said)
    pw.chmod(0o600)                      # private: nothing more to say
    monkeypatch.setattr(mq, "_warned", set())
    caplog.clear()
    assert read_password(config.mqtt) == "s3cret"
    assert not [m for m in security_warnings(caplog) if "group or others" in m]


def test_require_tls_refuses_a_credentials_file_others_can_read(tmp_path, monkeypatch):
    monkeypatch.setattr(mq, "_warned", set())
    pw = tmp_path / "mqtt.password"
    pw.write_text("s3cret\n")
    pw.chmod(0o640)
    config = plant_config(tls=True, require_tls=True, username="crushcell-cell1", password_file=str(pw))
    with pytest.raises(LinkConfigError, match=r"mode 0640.*chmod 600.*require_tls = true"):
        PlantLink(config, FakeLoop(), state_dir=str(tmp_path / "s"))
    # The same through `crushcell run`: refused at start, exit 2, one clear message.
    cfg = tmp_path / "cell.toml"
    keys = (f'tls = true\nrequire_tls = true\nusername = "crushcell-cell1"\npassword_file = "{pw}"\n')
    cfg.write_text((ROOT / "config" / "cell.toml").read_text().replace("[mqtt]\n", "[mqtt]\n" + keys, 1))
    out = subprocess.run([sys.executable, "-m", "controller.cli", "run", "--config", str(cfg), "--hal", "sim",
                          "--state-dir", str(tmp_path / "s2"), "--duration", "1", "--no-status"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert "password_file" in out.stderr and "chmod 600" in out.stderr and "Traceback" not in out.stderr
    assert "s3cret" not in out.stderr


def test_tls_handshake_and_socket_failures_are_logged(secure, broker, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="crushcell.link")
    secure_broker, certs, _tmp = secure
    cases = (
        # TLS against a plain listener: the broker drops the handshake.
        (broker.port, {"tls": True, "ca_file": certs["ca.crt"]}, "over TLS: ConnectionResetError"),
        # The system's CAs do not know the test CA: the server certificate is rejected.
        (secure_broker.port, {"tls": True}, "over TLS: TLS certificate rejected: self-signed"),
        # Nothing listens.
        (free_port(), {}, "Connection refused"),
    )
    for n, (port, mqtt, words) in enumerate(cases):
        caplog.clear()
        # Retries every 0.1..0.2 s: three failed attempts come within a second (one warning all the same).
        config = plant_config(port=port, reconnect_min_s=0.1, reconnect_max_s=0.2, **mqtt)
        link = PlantLink(config, FakeLoop(), state_dir=str(tmp_path / f"s{n}"))
        link.start()
        try:
            wait_for(lambda: link.counters["connect_failed"] >= 3, what=f"failed attempts ({words})")  # noqa: B023
        finally:
            link.close()
        said = [m for m in security_warnings(caplog) if "cannot connect" in m]
        assert len(said) == 1 and words in said[0], (words, said)
