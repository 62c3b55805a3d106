"""What goes on the wire: topic names and JSON payloads. Pure functions, no MQTT, no clock reads.

The topic names and fields are a public contract (docs/mqtt.md, docs/schemas/): extend, never
rename. JSON has no NaN: a missing number travels as null.
"""

from __future__ import annotations

import json
import math
from typing import Any

from controller.names import INPUTS, OUTPUTS, SENSORS

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
def status(snap: Any, *, ts: float, cell_id: str, version: str, config_sha256: str,
           outbox_pending: int, outbox_dropped: int) -> dict:
    """The retained status: what a dashboard needs to draw the cell after it (re)connects."""
    return {
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


def telemetry(snap: Any, *, ts: float, seq: int, units: dict[str, str]) -> dict:
    values, quality = snap.values, snap.quality
    return {
        "ts": round(ts, 3),
        "seq": seq,
        "t": snap.t,
        "state": snap.state,
        "sensors": {name: {"value": num(values[i]), "unit": units.get(name, ""), "quality": quality[i]}
                    for i, name in enumerate(SENSORS)},
        "voted": {"o2": num(snap.voted_o2)},
        "inputs": dict(zip(INPUTS, snap.inputs, strict=True)),
        "outputs": dict(zip(OUTPUTS, snap.outputs, strict=True)),
    }


def reply(cmd_id: str | None, accepted: bool, reason: str, state: str | None, *, ts: float,
          action: str | None = None) -> dict:
    return {"id": cmd_id, "action": action, "accepted": accepted, "reason": reason, "state": state,
            "ts": round(ts, 3)}


# -- Home Assistant discovery --------------------------------------------------------------------------
def homeassistant_configs(*, ha_prefix: str, base: str, cell_id: str, version: str,
                          units: dict[str, str]) -> list[tuple[str, dict]]:
    """Retained discovery configs: one sensor per gas/temperature/pressure reading, the state,
    the trip causes, and one binary sensor per output."""
    node = f"crushcell_{cell_id}"
    device = {"identifiers": [node], "name": f"crushcell {cell_id}", "manufacturer": "crushcell",
              "model": "crushing cell controller", "sw_version": version}
    avail = {"availability_topic": f"{base}/{AVAILABILITY}", "payload_available": ONLINE,
             "payload_not_available": OFFLINE}
    out: list[tuple[str, dict]] = []
    for name in SENSORS:
        cfg = {"name": name, "unique_id": f"{node}_{name}", "state_topic": f"{base}/{TELEMETRY}",
               "value_template": "{{ value_json.sensors." + name + ".value }}",
               "unit_of_measurement": units.get(name, ""), "state_class": "measurement",
               "device": device, **avail}
        out.append((f"{ha_prefix}/sensor/{node}/{name}/config", cfg))
    out.append((f"{ha_prefix}/sensor/{node}/state/config",
                {"name": "state", "unique_id": f"{node}_state", "state_topic": f"{base}/{STATUS}",
                 "value_template": "{{ value_json.state }}", "device": device, **avail}))
    out.append((f"{ha_prefix}/sensor/{node}/causes/config",
                {"name": "trip causes", "unique_id": f"{node}_causes", "state_topic": f"{base}/{STATUS}",
                 "value_template": "{{ value_json.causes | join(', ') if value_json.causes else 'none' }}",
                 "device": device, **avail}))
    for name in OUTPUTS:
        out.append((f"{ha_prefix}/binary_sensor/{node}/{name}/config",
                    {"name": name, "unique_id": f"{node}_out_{name}", "state_topic": f"{base}/{TELEMETRY}",
                     "value_template": "{{ 'ON' if value_json.outputs." + name + " else 'OFF' }}",
                     "device": device, **avail}))
    return out
