"""Checking a command that arrived over MQTT before it may reach the scan loop. Pure, no MQTT.

Why so strict: `cmd` is how a remote operator starts a crusher full of charged cells. Anything
that is not exactly a well-formed command from a live (not retained) message is refused with a
reply that says why, and the controller runs on. The core still applies its own guards (remote
start needs the remote_enable key switch; remote reset needs remote_reset = true).
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from controller.names import COMMANDS

KEYS = ("id", "action", "by")
MAX_ID = 128
MAX_BY = 64


class Command(NamedTuple):
    id: str
    action: str
    by: str


class Refusal(NamedTuple):
    id: str | None        # the caller's id when it could be read, else None
    action: str | None
    by: str | None
    reason: str


def _peek(obj: Any, key: str, limit: int) -> str | None:
    """A field of a refused command, for the reply and the audit, only when it is a sane string."""
    if isinstance(obj, dict):
        value = obj.get(key)
        if isinstance(value, str) and 0 < len(value) <= limit:
            return value
    return None


def parse(payload: bytes, *, retained: bool, max_bytes: int) -> Command | Refusal:
    """Turn a `cmd` message into a Command, or a Refusal naming the problem."""
    # Oversize first, before any parsing: a huge payload must cost nothing.
    if len(payload) > max_bytes:
        return Refusal(None, None, None,
                       f"payload of {len(payload)} bytes is over command_max_bytes ({max_bytes})")
    try:
        obj = json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError:
        return Refusal(None, None, None, "payload is not UTF-8 text")
    except ValueError as exc:
        return Refusal(None, None, None, f"payload is not valid JSON: {exc.msg} at character {exc.pos}")
    cmd_id, action, by = _peek(obj, "id", MAX_ID), _peek(obj, "action", 32), _peek(obj, "by", MAX_BY)
    if retained:
        # Hazard: a retained command would be replayed at every (re)connect and could start the
        # crusher after a reboot (the Tasmota lesson). Never act on it.
        return Refusal(cmd_id, action, by, "retained command ignored: publish commands with retain=false")
    if not isinstance(obj, dict):
        return Refusal(None, None, None, "payload must be a JSON object with id, action and by")
    unknown = sorted(k for k in obj if k not in KEYS)
    if unknown:
        return Refusal(cmd_id, action, by, "unknown key(s) " + ", ".join(repr(k) for k in unknown)
                       + "; a command has exactly: id, action, by")
    for key, limit in (("id", MAX_ID), ("action", 32), ("by", MAX_BY)):
        if key not in obj:
            return Refusal(cmd_id, action, by, f"missing key '{key}'")
        value = obj[key]
        if not isinstance(value, str):
            return Refusal(cmd_id, action, by, f"'{key}' must be a string, not {type(value).__name__}")
        if not value.strip() or len(value) > limit:
            return Refusal(cmd_id, action, by, f"'{key}' must be 1 to {limit} characters")
    if obj["action"] not in COMMANDS:
        return Refusal(cmd_id, None, by, f"unknown action '{obj['action'][:32]}'; choose one of: "
                       + ", ".join(COMMANDS))
    return Command(obj["id"], obj["action"], obj["by"])


class RateLimit:
    """Token bucket: `rate` per second on average, bursts of up to max(1, rate). Clock passed in."""

    def __init__(self, rate: float, now: float, burst: float | None = None):
        self.rate = rate
        self.burst = max(1.0, rate) if burst is None else burst
        self.tokens = self.burst
        self.last = now

    def allow(self, now: float) -> bool:
        elapsed = max(0.0, now - self.last)
        self.last = now
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False
