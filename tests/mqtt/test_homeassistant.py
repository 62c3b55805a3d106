"""Home Assistant discovery as HA expects it (issue 10 item 11): the exact retained configs on a
real broker, and their templates rendered (Jinja2, as HA does) against the real status and telemetry.

HA's rules checked here (homeassistant/components/sensor/const.py DEVICE_CLASS_UNITS and the MQTT
sensor docs): a device_class only with one of its units (temperature in °C, never C, which HA
2025.7+ rejects); a template that renders "None" makes the state unknown; a state is at most 255
characters; expire_after makes an entity unavailable when its topic goes quiet.
"""

from __future__ import annotations

import json

import pytest
from conftest import plant_config, wait_for
from fakeloop import FakeLoop, Runner
from jinja2.sandbox import ImmutableSandboxedEnvironment

from cellspec.names import OUTPUTS, SENSORS, STATES
from controller.link import payloads
from controller.link.mqtt import PlantLink
from controller.rules import CAUSES

BASE = "crushcell/cell1"
NODE = "crushcell_cell1"
AVAIL = {"availability_topic": f"{BASE}/availability", "payload_available": "online",
         "payload_not_available": "offline"}


def render(template: str, value_json: dict) -> str:
    """Render like HA's MQTT value templates: the payload as value_json, the result as text."""
    env = ImmutableSandboxedEnvironment()
    return env.from_string(template).render(value_json=value_json, value=json.dumps(value_json)).strip()


def reading(name, unit, places, *, device_class=None):
    r = f"value_json.sensors.{name}"
    cfg = {"name": name, "unique_id": f"{NODE}_{name}", "state_topic": f"{BASE}/telemetry",
           "value_template": (f"{{{{ {r}.value | round({places}) if {r}.value is number and "
                              f"{r}.quality == 'good' else None }}}}"),
           "unit_of_measurement": unit, "state_class": "measurement"}
    if device_class:
        cfg["device_class"] = device_class
    cfg.update({"suggested_display_precision": places, "expire_after": 3,
                "json_attributes_topic": f"{BASE}/telemetry",
                "json_attributes_template": f"{{{{ {{'quality': {r}.quality}} | tojson }}}}"})
    return cfg


# The shipped config/cell.toml: units, resolutions -> decimals, telemetry every 1 s -> expire after 3 s.
EXPECTED = {
    "o2_a": reading("o2_a", "%", 3),
    "co_cell": reading("co_cell", "ppm", 1, device_class="carbon_monoxide"),
    "hf_room": reading("hf_room", "ppm", 3),                      # HF: HA has no class for it
    "h2_cell": reading("h2_cell", "vol%", 3),
    "lel_cell": reading("lel_cell", "%LEL", 2),
    "temp_gas": reading("temp_gas", "°C", 2, device_class="temperature"),
    "temp_material": reading("temp_material", "°C", 2, device_class="temperature"),
    "dp_cell": reading("dp_cell", "Pa", 1, device_class="pressure"),
    "n2_supply": reading("n2_supply", "bar", 3, device_class="pressure"),
}


@pytest.fixture
def discovery(broker, tmp_path, subscriber_factory):
    """The retained configs a late Home Assistant finds, plus live status and telemetry."""
    loop = FakeLoop()
    link = PlantLink(plant_config(port=broker.port, homeassistant_discovery=True), loop,
                     state_dir=str(tmp_path / "s"))
    runner = Runner(loop, link)
    runner.start()
    link.start()
    try:
        wait_for(lambda: link.stats().get("status_sent"), what="status sent (discovery goes first)")
        ha = subscriber_factory(broker.port, ["homeassistant/#", f"{BASE}/status", f"{BASE}/telemetry"])
        n = len(SENSORS) + 2 + len(OUTPUTS)
        configs = wait_for(lambda: (lambda c: c if len(c) >= n else None)(
            {m[0]: json.loads(m[1]) for m in ha.snapshot() if m[0].endswith("/config") and m[2]}),
            what="every retained discovery config")
        wait_for(lambda: ha.json("/telemetry") and ha.json("/status"), what="status and telemetry")
        yield configs, ha, loop, link
    finally:
        runner.stop()
        link.close()


def test_exact_discovery_payloads(discovery):
    configs, _ha, _loop, _link = discovery
    device = {"identifiers": [NODE], "name": "crushcell cell1", "manufacturer": "crushcell",
              "model": "crushing cell controller", "sw_version": configs[
                  f"homeassistant/sensor/{NODE}/o2_a/config"]["device"]["sw_version"]}
    for name, expected in EXPECTED.items():
        topic = f"homeassistant/sensor/{NODE}/{name}/config"
        assert configs[topic] == {**expected, "device": device, **AVAIL}
    assert configs[f"homeassistant/sensor/{NODE}/state/config"] == {
        "name": "state", "unique_id": f"{NODE}_state", "state_topic": f"{BASE}/status",
        "value_template": "{{ value_json.state }}", "device_class": "enum", "options": list(STATES),
        "device": device, **AVAIL}
    assert configs[f"homeassistant/sensor/{NODE}/causes/config"] == {
        "name": "trip causes", "unique_id": f"{NODE}_causes", "state_topic": f"{BASE}/status",
        "value_template": payloads.CAUSES_TEMPLATE, "json_attributes_topic": f"{BASE}/status",
        "json_attributes_template": "{{ {'causes': value_json.causes} | tojson }}", "device": device, **AVAIL}
    assert configs[f"homeassistant/binary_sensor/{NODE}/horn/config"] == {
        "name": "horn", "unique_id": f"{NODE}_out_horn", "state_topic": f"{BASE}/telemetry",
        "value_template": "{{ 'ON' if value_json.outputs.horn else 'OFF' }}", "expire_after": 3,
        "device": device, **AVAIL}


def test_every_device_class_has_a_unit_ha_accepts_and_live_data_expires(discovery):
    configs, _ha, _loop, _link = discovery
    for topic, cfg in configs.items():
        unit = cfg.get("unit_of_measurement")
        assert unit != "C", topic
        if cfg.get("device_class") in payloads.HA_CLASS_UNITS:
            assert unit in payloads.HA_CLASS_UNITS[cfg["device_class"]], topic
        if cfg["state_topic"].endswith("/telemetry"):
            assert cfg["expire_after"] == 3, topic    # three telemetry periods of 1 s
        else:
            assert "expire_after" not in cfg, topic   # status is sent on change only: never expires


def test_templates_render_rounded_values_unknown_faults_and_attributes(discovery):
    configs, ha, _loop, _link = discovery
    tel = ha.json("/telemetry")[-1]
    cfg = configs[f"homeassistant/sensor/{NODE}/o2_a/config"]
    tel["sensors"]["o2_a"].update(value=20.123456, quality="good")
    assert render(cfg["value_template"], tel) == "20.123"
    assert json.loads(render(cfg["json_attributes_template"], tel)) == {"quality": "good"}
    # A faulted reading is unknown in HA ("None"), never an old number shown as current.
    tel["sensors"]["o2_a"]["quality"] = "fault:stale"
    assert render(cfg["value_template"], tel) == "None"
    co = configs[f"homeassistant/sensor/{NODE}/co_cell/config"]
    assert tel["sensors"]["co_cell"]["value"] is None         # NaN on the wire is null
    assert render(co["value_template"], tel) == "None"
    horn = configs[f"homeassistant/binary_sensor/{NODE}/horn/config"]
    assert render(horn["value_template"], tel) == "OFF"
    state = configs[f"homeassistant/sensor/{NODE}/state/config"]
    assert render(state["value_template"], ha.json("/status")[-1]) in STATES


def test_trip_causes_stay_under_255_characters_with_the_full_list_as_an_attribute(discovery):
    configs, ha, loop, link = discovery
    cfg = configs[f"homeassistant/sensor/{NODE}/causes/config"]
    assert render(cfg["value_template"], ha.json("/status")[-1]) == "none"
    # Every cause latched at once: 541 characters joined, far over HA's limit.
    loop.causes = list(CAUSES)
    loop.state = "TRIPPED"
    link.offer_event({"t": loop.t, "type": "trip", "causes": list(CAUSES)})   # status follows a trip
    status = wait_for(lambda: [s for s in ha.json("/status") if len(s["causes"]) == len(CAUSES)],
                      what="status with every cause")[-1]
    text = render(cfg["value_template"], status)
    assert len(text) <= payloads.HA_STATE_MAX
    shown = text.split(" … +")[0].split(", ")
    more = int(text.split(" … +")[1].split(" ")[0])
    assert shown == list(CAUSES[:len(shown)]) and len(shown) + more == len(CAUSES)   # cut at a cause
    assert json.loads(render(cfg["json_attributes_template"], status)) == {"causes": list(CAUSES)}
    few = dict(status, causes=["estop", "door_open"])
    assert render(cfg["value_template"], few) == "estop, door_open"


def test_decimals_follow_the_resolution():
    assert [payloads.decimals(r) for r in (0.005, 0.0625, 0.5, 0.1, 1.0, 2.0, 0.002, 0.05)] == \
        [3, 2, 1, 1, 0, 0, 3, 2]
    assert payloads.decimals(None) is None and payloads.decimals(0.0) is None
