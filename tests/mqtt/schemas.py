"""docs/schemas/ as validators: every payload the MQTT tests capture is checked against them.

A backlog batch is checked as a frame, then each of its events on its own against the event
schema's `$defs/event` (docs/mqtt.md): one bad record must never cost a consumer the others.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"
# Topic suffix -> schema. `cmd` is inbound (the tests send malformed ones on purpose) and
# Home Assistant's discovery configs are asserted exactly by their own tests.
BY_TOPIC = (("/cmd/reply", "cmd_reply"), ("/availability", "availability"), ("/status", "status"),
            ("/telemetry", "telemetry"), ("/events", "event"))


@cache
def load(name: str) -> dict:
    return json.loads((SCHEMAS / f"{name}.schema.json").read_text(encoding="utf-8"))


@cache
def validator(name: str) -> Draft202012Validator:
    schema = load(name)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


@cache
def event_validator() -> Draft202012Validator:
    """One event-log record on its own: a single event message, or one entry of a batch."""
    schema = load("event")
    return Draft202012Validator({"$schema": schema["$schema"], "$defs": schema["$defs"],
                                 "$ref": "#/$defs/event"})


def _messages(v: Draft202012Validator, obj: Any, where: str) -> list[str]:
    return [f"{where}: {'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message[:300]}"
            for e in v.iter_errors(obj)]


def schema_for(topic: str) -> str | None:
    if topic.startswith("homeassistant/"):   # HA's own topics (homeassistant/status is plain text)
        return None
    for suffix, name in BY_TOPIC:
        if topic.endswith(suffix):
            return name
    return None


def check(topic: str, payload: bytes) -> list[str]:
    """Schema errors of one captured message: [] when it is valid or no schema covers its topic."""
    name = schema_for(topic)
    if name is None:
        return []
    if name == "availability":
        return _messages(validator(name), payload.decode("utf-8", "replace"), topic)
    try:
        obj = json.loads(payload)
    except ValueError as exc:
        return [f"{topic}: not JSON ({exc}): {payload[:200]!r}"]
    found = _messages(validator(name), obj, topic)
    if name == "event" and isinstance(obj, dict) and isinstance(obj.get("events"), list):
        for entry in obj["events"]:
            seq = entry.get("seq") if isinstance(entry, dict) else None
            found += _messages(event_validator(), entry, f"{topic} batch entry seq {seq}")
    return found


def check_event(record: dict) -> list[str]:
    """Schema errors of one event record (e.g. from the journal or --events, with an epoch ts)."""
    return _messages(event_validator(), record, f"event seq {record.get('seq')}")
