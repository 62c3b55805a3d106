"""The link's log stays readable under a fault that repeats (issue 10, item 6).

At the outbox cap "outbox full ... dropped the N oldest" was logged about 100 times a second
(5,648 lines a minute): SD-card wear and a drowned journal. Now: the first occurrence, then at
most one line a minute with the count.
"""

from __future__ import annotations

import dataclasses
import logging

from brokers import free_port
from conftest import plant_config
from fakeloop import FakeLoop

from controller.link.mqtt import PlantLink


def outbox_lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "outbox full" in r.getMessage()]


def test_outbox_full_is_said_once_then_summarised_once_a_minute(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="crushcell.link")
    config = plant_config(port=free_port())   # no broker: nothing leaves the outbox
    config = dataclasses.replace(config, mqtt=dataclasses.replace(config.mqtt, outbox_max_events=10))
    link = PlantLink(config, FakeLoop(), state_dir=str(tmp_path / "s"))   # not started: we drive it
    now = [1000.0]
    link._outbox_full_log.clock = lambda: now[0]

    def a_second_of_events():
        for i in range(100):              # the worker's passes in one second at the cap
            for _ in range(5):
                link.offer_event({"t": float(i), "type": "alarm", "name": "o2_deviation", "active": True})
            link._store_offered()
            now[0] += 0.01

    try:
        a_second_of_events()
        lines = outbox_lines(caplog)
        assert len(lines) == 1, [r.getMessage() for r in lines]
        first = lines[0].args[1]          # dropped at the first occurrence
        for _ in range(59):               # the rest of the minute: silence
            a_second_of_events()
        assert len(outbox_lines(caplog)) == 1
        a_second_of_events()              # a minute later: one line with everything since
        lines = outbox_lines(caplog)
        assert len(lines) == 2
        assert "since the last report" in lines[1].getMessage()
        assert lines[1].args[1] == lines[1].args[2] - first    # every drop counted, none twice
        # Drops that stop are still reported, by the worker's once-a-second look (the supervisor).
        a_second_of_events()
        unreported = link.outbox.dropped - first - lines[1].args[1]
        now[0] += 61
        link._supervise()
        lines = outbox_lines(caplog)
        assert len(lines) == 3 and lines[2].args[1] == unreported
        print(f"\noutbox full: {link.outbox.dropped} events dropped over 62 s at the cap, 3 log lines")
    finally:
        link.outbox.close()
