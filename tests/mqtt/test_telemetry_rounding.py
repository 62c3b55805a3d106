"""Telemetry on the wire carries each reading to its sensor's resolution (issue 13), not
`20.341610114521412`: the real scan loop, simulated cell, pump and link, a real Mosquitto, and
every captured payload validated against docs/schemas/telemetry.schema.json (conftest.py)."""

from __future__ import annotations

import decimal
import json

from conftest import wait_for
from plant import Plant, fast_config

from cellspec.names import O2_SENSORS, SENSORS
from controller.link.payloads import decimals

BASE = "crushcell/cell1"


def places_of(number: decimal.Decimal) -> int:
    return max(0, -number.as_tuple().exponent)


def test_telemetry_values_are_rounded_to_each_sensors_resolution(broker, tmp_path, subscriber_factory):
    config = fast_config(port=broker.port, telemetry_period_s=0.2)
    plant = Plant(config, tmp_path / "state").start()
    try:
        sub = subscriber_factory(broker.port, [f"{BASE}/telemetry"])
        wait_for(lambda: len(sub.snapshot("/telemetry")) >= 3, what="three telemetry messages")
    finally:
        plant.stop()
    allowed = {name: decimals(config.sensors[name].resolution) for name in SENSORS}
    assert allowed["o2_a"] == 3 and allowed["temp_gas"] == 2 and allowed["co_cell"] == 1
    seen = 0
    for _topic, payload, _retain in sub.snapshot("/telemetry"):
        body = json.loads(payload, parse_float=decimal.Decimal)
        for name in SENSORS:
            value = body["sensors"][name]["value"]
            if isinstance(value, decimal.Decimal):
                assert places_of(value) <= allowed[name], (name, value)
                seen += 1
        voted = body["voted"]["o2"]
        if isinstance(voted, decimal.Decimal):
            assert places_of(voted) <= max(allowed[n] for n in O2_SENSORS), voted
    assert seen >= 3 * len(SENSORS) - 3
