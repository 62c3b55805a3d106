"""What goes on the wire: topic names and JSON payloads. Pure functions, no MQTT, no clock reads.

The topic names and fields are a public contract (docs/mqtt.md, docs/schemas/): extend, never
rename. JSON has no NaN: a missing number travels as null.
"""

from __future__ import annotations

import json
import math
from typing import Any

from cellspec.names import INPUTS, O2_SENSORS, OUTPUTS, SENSORS, STATES

# Topic levels under <topic_prefix>/<cell_id>/
AVAILABILITY = "availability"
STATUS = "status"
TELEMETRY = "telemetry"
EVENTS = "events"
CMD = "cmd"
CMD_REPLY = "cmd/reply"
ONLINE, OFFLINE = "online", "offline"


def base_topic(prefix: str, cell_id: str) -> str:
    return f"{prefix}/{cell_id}"


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def dumps(obj: Any) -> str:
    """Compact JSON; NaN and infinities become null (only then is the slow path taken)."""
    try:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False, default=str)
    except ValueError:
        return json.dumps(_clean(obj), separators=(",", ":"), allow_nan=False, default=str)


def num(value: float) -> float | None:
    return None if value != value or math.isinf(value) else value


def rounded(value: float, places: int | None) -> float | None:
    """num(), rounded to `places` decimals (None: as it is)."""
    if value != value or math.isinf(value):
        return None
    return value if places is None else round(value, places)


# -- events ---------------------------------------------------------------------------------------
def event_body(event: dict, ts: float) -> tuple[str, int | None]:
    """An event record as published, without its seq (the outbox adds it): fields + wall-clock ts.

    Returns the body and the seq the controller already gave the event (None if it gave none).
    """
    record = dict(event)
    seq = record.pop("seq", None)
    record["ts"] = round(ts, 6)
    return dumps(record), seq if isinstance(seq, int) else None


def historical(body: str) -> str:
    """The same event flagged as delivered late, after an outage or a restart."""
    return body[:-1] + ',"historical":true}'


def history_batch(bodies: list[tuple[int, str]]) -> str:
    """Several historical events in one message (see docs/mqtt.md, "Backlog batches")."""
    inner = ",".join(historical(b) for _, b in bodies)
    return (f'{{"historical":true,"first_seq":{bodies[0][0]},"last_seq":{bodies[-1][0]},'
            f'"count":{len(bodies)},"events":[{inner}]}}')


# -- status and telemetry ---------------------------------------------------------------------------
def health(*, scans: int, overruns: int, overruns_total: int, scan_max_s: float, events_dropped: int,
           outbox_pending: int, outbox_dropped: int, link_restarts: int,
           io_faults: dict[str, int]) -> dict:
    """The loop's and the link's own health, the same object in status and telemetry.

    io_faults: failed reads per sensor since start from a backend that counts them (the hardware
    cell); {} from one that does not (the simulated cell).
    """
    return {
        "scans": scans,
        "overruns": overruns,
        "overruns_total": overruns_total,
        "scan_max_s": round(scan_max_s, 6),
        "events_dropped": events_dropped,
        "outbox_pending": outbox_pending,
        "outbox_dropped": outbox_dropped,
        "link_restarts": link_restarts,
        "io_faults": io_faults,
    }


def status(snap: Any, *, ts: float, cell_id: str, version: str, config_sha256: str,
           outbox_pending: int, outbox_dropped: int, health: dict | None = None) -> dict:
    """The retained status: what a dashboard needs to draw the cell after it (re)connects."""
    body = {
        "ts": round(ts, 3),
        "cell_id": cell_id,
        "state": snap.state,
        "since": round(ts - max(0.0, snap.t - snap.since), 3),   # wall clock
        "since_t": snap.since,                                    # controller clock, as in events
        "t": snap.t,
        "causes": list(snap.causes),
        "alarms": [{"name": a[0], "severity": a[1], "acked": bool(a[2])} for a in snap.alarms],
        "outputs": dict(zip(OUTPUTS, snap.outputs, strict=True)),
        "version": version,
        "config_sha256": config_sha256,
        "outbox_pending": outbox_pending,
        "outbox_dropped": outbox_dropped,
    }
    if health is not None:
        body["health"] = health
    return body


def telemetry(snap: Any, *, ts: float, seq: int, units: dict[str, str], health: dict | None = None,
              resolutions: dict[str, float] | None = None) -> dict:
    """resolutions: each sensor's `resolution`; its value is rounded to the decimals that shows
    (0.005 -> 3, 0.0625 -> 2, 0.5 -> 1), the voted O2 to the O2 sensors' (see decimals())."""
    values, quality = snap.values, snap.quality
    places = [decimals(resolutions.get(name)) for name in SENSORS] if resolutions else [None] * len(SENSORS)
    o2 = [p for name, p in zip(SENSORS, places, strict=True) if name in O2_SENSORS and p is not None]
    body = {
        "ts": round(ts, 3),
        "seq": seq,
        "t": snap.t,
        "state": snap.state,
        "sensors": {name: {"value": rounded(values[i], places[i]), "unit": units.get(name, ""),
                           "quality": quality[i]}
                    for i, name in enumerate(SENSORS)},
        "voted": {"o2": rounded(snap.voted_o2, max(o2) if o2 else None)},
        "inputs": dict(zip(INPUTS, snap.inputs, strict=True)),
        "outputs": dict(zip(OUTPUTS, snap.outputs, strict=True)),
    }
    if health is not None:
        body["health"] = health
    return body


def reply(cmd_id: str | None, accepted: bool, reason: str, state: str | None, *, ts: float,
          action: str | None = None) -> dict:
    return {"id": cmd_id, "action": action, "accepted": accepted, "reason": reason, "state": state,
            "ts": round(ts, 3)}


# -- Home Assistant discovery --------------------------------------------------------------------------
# Home Assistant checks a sensor's unit against its device_class and refuses the entity when they
# do not match (HA 2025.7+: "C" is not a temperature unit, "°C" is). The pairs below are HA's own
# (homeassistant/components/sensor/const.py, DEVICE_CLASS_UNITS); a sensor whose configured unit
# is not among them gets no device_class rather than an entity HA rejects.
HA_UNITS = {"C": "°C", "degC": "°C", "F": "°F", "degF": "°F"}   # our unit -> HA's spelling
HA_DEVICE_CLASS = {"temp_gas": "temperature", "temp_material": "temperature", "dp_cell": "pressure",
                   "n2_supply": "pressure", "co_cell": "carbon_monoxide"}
HA_CLASS_UNITS = {
    "temperature": ("°C", "°F", "K"),
    "pressure": ("Pa", "hPa", "kPa", "mbar", "cbar", "bar", "mmHg", "inHg", "psi"),
    "carbon_monoxide": ("ppm",),
}
HA_STATE_MAX = 255          # HA refuses a longer state
HA_EXPIRE_PERIODS = 3       # telemetry periods without a message before HA shows "unavailable"
CAUSES_TEXT_MAX = 230       # room left for the " … +N more" marker below HA_STATE_MAX

# The trip causes as one line, cut at a cause boundary with a marker when too long; the full list
# is the entity's `causes` attribute.
CAUSES_TEMPLATE = (
    "{%- set ns = namespace(text='', more=0) -%}"
    "{%- for c in value_json.causes -%}"
    "{%- set t = ns.text ~ (', ' if ns.text else '') ~ c -%}"
    "{%- if ns.more == 0 and t | length <= " + str(CAUSES_TEXT_MAX) + " -%}{%- set ns.text = t -%}"
    "{%- else -%}{%- set ns.more = ns.more + 1 -%}{%- endif -%}"
    "{%- endfor -%}"
    "{{ 'none' if not value_json.causes else ns.text ~ (' … +' ~ ns.more ~ ' more' if ns.more else '') }}"
)


def decimals(resolution: float | None) -> int | None:
    """Decimal places that show a value to its resolution (0.005 -> 3, 0.0625 -> 2, 0.5 -> 1)."""
    if not resolution or resolution <= 0 or math.isinf(resolution) or resolution != resolution:
        return None
    return max(0, math.ceil(-math.log10(resolution) - 1e-9))


def homeassistant_configs(*, ha_prefix: str, base: str, cell_id: str, version: str,
                          units: dict[str, str], resolutions: dict[str, float] | None = None,
                          telemetry_period_s: float = 1.0) -> list[tuple[str, dict]]:
    """Retained discovery configs: one sensor per gas/temperature/pressure reading, the state,
    the trip causes, and one binary sensor per output.

    Readings: rounded to their resolution, shown as unknown unless their quality is good (the
    quality is an attribute), and expired by HA after HA_EXPIRE_PERIODS telemetry periods without
    telemetry, so a stalled stream never shows old values as current. State and causes come from
    the retained status, which is only sent on change: they never expire (availability covers a
    dead controller).
    """
    resolutions = resolutions or {}
    node = f"crushcell_{cell_id}"
    device = {"identifiers": [node], "name": f"crushcell {cell_id}", "manufacturer": "crushcell",
              "model": "crushing cell controller", "sw_version": version}
    avail = {"availability_topic": f"{base}/{AVAILABILITY}", "payload_available": ONLINE,
             "payload_not_available": OFFLINE}
    expire = max(1, math.ceil(HA_EXPIRE_PERIODS * telemetry_period_s))
    out: list[tuple[str, dict]] = []
    for name in SENSORS:
        unit = units.get(name, "")
        unit = HA_UNITS.get(unit, unit)
        places = decimals(resolutions.get(name))
        reading = "value_json.sensors." + name
        shown = reading + ".value" + (f" | round({places})" if places is not None else "")
        cfg: dict[str, Any] = {
            "name": name, "unique_id": f"{node}_{name}", "state_topic": f"{base}/{TELEMETRY}",
            "value_template": ("{{ " + shown + " if " + reading + ".value is number and " + reading
                               + ".quality == 'good' else None }}"),
            "unit_of_measurement": unit, "state_class": "measurement"}
        device_class = HA_DEVICE_CLASS.get(name)
        if device_class is not None and unit in HA_CLASS_UNITS[device_class]:
            cfg["device_class"] = device_class
        if places is not None:
            cfg["suggested_display_precision"] = places
        cfg.update({"expire_after": expire, "json_attributes_topic": f"{base}/{TELEMETRY}",
                    "json_attributes_template": "{{ {'quality': " + reading + ".quality} | tojson }}",
                    "device": device, **avail})
        out.append((f"{ha_prefix}/sensor/{node}/{name}/config", cfg))
    out.append((f"{ha_prefix}/sensor/{node}/state/config",
                {"name": "state", "unique_id": f"{node}_state", "state_topic": f"{base}/{STATUS}",
                 "value_template": "{{ value_json.state }}", "device_class": "enum",
                 "options": list(STATES), "device": device, **avail}))
    out.append((f"{ha_prefix}/sensor/{node}/causes/config",
                {"name": "trip causes", "unique_id": f"{node}_causes", "state_topic": f"{base}/{STATUS}",
                 "value_template": CAUSES_TEMPLATE,
                 "json_attributes_topic": f"{base}/{STATUS}",
                 "json_attributes_template": "{{ {'causes': value_json.causes} | tojson }}",
                 "device": device, **avail}))
    for name in OUTPUTS:
        out.append((f"{ha_prefix}/binary_sensor/{node}/{name}/config",
                    {"name": name, "unique_id": f"{node}_out_{name}", "state_topic": f"{base}/{TELEMETRY}",
                     "value_template": "{{ 'ON' if value_json.outputs." + name + " else 'OFF' }}",
                     "expire_after": expire, "device": device, **avail}))
    return out
