"""Reconnect: capped, jittered backoff in fractions of a second, and a quiet log (issue 10, item 9).

After a broker restart the controller needed about 29 s (backoff capped at 30 s, rounded to
whole seconds). The shipped defaults now cap it at 5 s with jitter.
"""

from __future__ import annotations

import logging
import re
import time

from brokers import Broker, free_port
from conftest import CONFIG, plant_config, wait_for
from fakeloop import FakeLoop

from controller import config as cfg
from controller.link.mqtt import PlantLink
from controller.link.pacing import Backoff

# The shipped schedule (config/cell.toml: 1 s doubling to a 5 s cap) at a quarter of its length:
# the same 1:5 ratio, in fractions of a second, and an outage that spends most of its time at the
# cap (20 s at full scale). The three facts behind "back within seconds with the shipped config"
# are each proved here: the shipped keys say 1 and 5 s
# (test_reconnect_keys_take_fractions_and_default_to_a_5_s_cap), Backoff doubles to its cap and
# never above it (test_backoff_doubles_to_its_cap_with_jitter_never_above_it), and the link follows
# the configured schedule through a real outage (this test). The same run at full scale with the
# shipped keys (16 s outage) is a figure of `make bench` (bench_mqtt: reconnect_shipped).
SCALE = 0.25
OUTAGE_S = 20.0 * SCALE
BACK_WITHIN_S = 3.5   # the 1.25 s cap plus room for the broker's start on a loaded machine


def shipped_link(port: int, folder, scale: float = 1.0, **mqtt) -> PlantLink:
    """A link with the shipped config/cell.toml reconnect keys, times multiplied by `scale`."""
    shipped = cfg.load(CONFIG).mqtt
    config = plant_config(port=port, reconnect_min_s=shipped.reconnect_min_s * scale,
                          reconnect_max_s=shipped.reconnect_max_s * scale, **mqtt)
    return PlantLink(config, FakeLoop(), state_dir=str(folder))


def test_link_is_back_within_seconds_of_a_broker_restart(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="crushcell.link")
    broker = Broker(tmp_path / "broker").start()
    link = shipped_link(broker.port, tmp_path / "s", scale=SCALE)
    link.start()
    try:
        wait_for(lambda: link.stats()["connected"], what="connected")
        broker.stop()
        wait_for(lambda: not link.stats()["connected"], what="disconnected")
        time.sleep(OUTAGE_S)
        attempts = link.counters["connect_failed"]
        back = time.monotonic()
        broker.start()
        wait_for(lambda: link.stats()["connected"], timeout=60, what="reconnected")
        took = time.monotonic() - back
        print(f"\nreconnect: link back {took:.2f} s after the broker (down {OUTAGE_S:.0f} s, "
              f"{attempts} failed attempts, backoff {link.s.reconnect_min_s:g}.."
              f"{link.s.reconnect_max_s:g} s)")
        # <= 1.25 s by design; generous here: timing is not for unit tests on a shared machine.
        assert took < BACK_WITHIN_S, took
        assert attempts >= 4
        # One line for the first failure (then at most one a minute), not one per attempt.
        failing = [r for r in caplog.records if "cannot connect" in r.getMessage()]
        assert len(failing) == 1, [r.getMessage() for r in failing]
        assert "Connection refused" in failing[0].getMessage()
        assert any(re.search(r"connected to .* \(after \d+ failed attempt", r.getMessage())
                   for r in caplog.records)
    finally:
        link.close()
        broker.stop()


def test_fractional_reconnect_delays_are_honoured(tmp_path):
    # Nothing listens: attempts every 0.1..0.2 s (jittered), not rounded up to whole seconds.
    link = PlantLink(plant_config(port=free_port(), reconnect_min_s=0.2, reconnect_max_s=0.2),
                     FakeLoop(), state_dir=str(tmp_path / "s"))
    link.start()
    try:
        # At least 8 attempts within 3 s (whole seconds would allow 3): done once the 8th is seen.
        wait_for(lambda: link.counters["connect_failed"] >= 8, timeout=3.0, interval=0.01,
                 what="8 failed attempts within 3 s")
    finally:
        link.close()


def test_reconnect_keys_take_fractions_and_default_to_a_5_s_cap(tmp_path):
    keys = "reconnect_min_s = 0.25\nreconnect_max_s = 0.5\n"
    text = CONFIG.read_text().replace("[mqtt]\n", "[mqtt]\n" + keys, 1)
    path = tmp_path / "cell.toml"
    path.write_text(text)
    mqtt = cfg.load(path).mqtt
    assert (mqtt.reconnect_min_s, mqtt.reconnect_max_s) == (0.25, 0.5)
    shipped = cfg.load(CONFIG).mqtt
    assert (shipped.reconnect_min_s, shipped.reconnect_max_s) == (1.0, 5.0)


def test_backoff_doubles_to_its_cap_with_jitter_never_above_it():
    top = Backoff(1.0, 5.0, rand=lambda: 1.0)
    assert [top.next() for _ in range(6)] == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    low = Backoff(1.0, 5.0, rand=lambda: 0.0)
    assert [low.next() for _ in range(5)] == [1.0, 1.0, 2.0, 2.5, 2.5]
    low.reset()
    assert low.next() == 1.0
    assert Backoff(0.25, 0.25, rand=lambda: 0.0).next() == 0.25
