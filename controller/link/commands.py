"""Checking a command that arrived over MQTT before it may reach the scan loop. Pure, no MQTT.

Why so strict: `cmd` is how a remote operator starts a crusher full of charged cells. Anything
that is not exactly a well-formed command from a live (not retained) message is refused with a
reply that says why, and the controller runs on. The core still applies its own guards (remote
start needs the remote_enable key switch; remote reset needs remote_reset = true).
"""

from __future__ import annotations

import collections
import json
from typing import Any, NamedTuple

from cellspec.names import COMMANDS

KEYS = ("id", "action", "by")
MAX_ID = 128
MAX_BY = 64
MAX_DEPTH = 16           # JSON nesting accepted at all (a command is one flat object)
EXEMPT = ("stop", "shutdown")   # never rate-limited: they only ever make the cell safer
MAX_CLIENTS = 256        # per-client rate limits remembered (least recently seen forgotten first)
NOTICE_BURST = 50        # refusal replies to one client at once (at least; then its command rate)
RECENT_IDS = 1000        # command ids remembered against replays...
RECENT_IDS_S = 600.0     # ...for at most this long


def _forbidden(ch: str) -> bool:
    """C0/C1 controls, DEL, bidirectional embeddings/overrides/isolates, lone surrogates."""
    o = ord(ch)
    return (o < 0x20 or 0x7F <= o <= 0x9F or 0x202A <= o <= 0x202E or 0x2066 <= o <= 0x2069
            or 0xD800 <= o <= 0xDFFF)


def _bad_char(value: str) -> str | None:
    for i, ch in enumerate(value):
        if _forbidden(ch):
            return f"U+{ord(ch):04X} at position {i + 1}"
    return None


class _DuplicateKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    obj: dict = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKey(key)
        obj[key] = value
    return obj


def _depth(text: str) -> int:
    """The deepest nesting of [ and { outside strings (a cheap scan, no recursion)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


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
        # Never echo control or bidi-override characters into a reply or the audit trail.
        if isinstance(value, str) and 0 < len(value) <= limit and _bad_char(value) is None:
            return value
    return None


def parse(payload: bytes, *, retained: bool, max_bytes: int) -> Command | Refusal | None:
    """Turn a `cmd` message into a Command, a Refusal naming the problem, or None (ignore it).

    Never raises, whatever the payload: it runs on paho's network thread, and an exception
    there would stop the whole link (issue 10: a 2 KB nested array did, with RecursionError).
    """
    # An empty message is how an operator clears a stuck retained command (the broker delivers
    # it once, live): nothing to refuse, nothing to audit.
    if not payload:
        return None
    # Oversize first, before any parsing: a huge payload must cost nothing.
    if len(payload) > max_bytes:
        return Refusal(None, None, None,
                       f"payload of {len(payload)} bytes is over command_max_bytes ({max_bytes})")
    try:
        text = bytes(payload).decode("utf-8")
    except UnicodeDecodeError:
        return Refusal(None, None, None, "payload is not UTF-8 text")
    # Hazard: deep nesting makes json recurse until RecursionError, on paho's thread. A command
    # is one flat object, so anything nested deeper than MAX_DEPTH is refused before parsing.
    if text.count("[") + text.count("{") > MAX_DEPTH and _depth(text) > MAX_DEPTH:
        return Refusal(None, None, None, f"payload is nested deeper than {MAX_DEPTH} levels; "
                       "a command is one flat JSON object")
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as exc:
        # Hazard: {"action":"ack","action":"start"} would otherwise run the last one.
        return Refusal(None, None, None, f"duplicate key {exc.key[:32]!a}: each key may appear once")
    except json.JSONDecodeError as exc:
        return Refusal(None, None, None, f"payload is not valid JSON: {exc.msg} at character {exc.pos}")
    except (ValueError, RecursionError, OverflowError, MemoryError) as exc:
        # e.g. an integer of more than 4300 digits (Python's int/str conversion limit)
        return Refusal(None, None, None, f"payload cannot be read as JSON: {str(exc)[:120]}")
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
        bad = _bad_char(value)
        if bad is not None:
            # Hazard: NUL, controls and bidi overrides in `by`/`id` would reach the audit trail
            # and make a journal line read differently from what was recorded.
            return Refusal(cmd_id, action, by, f"'{key}' contains a control, bidirectional-override "
                           f"or surrogate character ({bad})")
    if obj["action"] not in COMMANDS:
        return Refusal(cmd_id, None, by, f"unknown action {obj['action'][:32]!a}; choose one of: "
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


class ClientLimits:
    """Token buckets per client, so one client's flood cannot lock out the others.

    The client is the command's `by` (the operator: every command carries it, and the broker's
    ACL decides who may publish to `cmd` at all); refusals of unreadable payloads share the
    client "". Per client, two buckets:
    - commands: `rate` a second, bursts of max(1, rate); `stop` and `shutdown` are never limited;
    - refusal replies: bursts of max(NOTICE_BURST, 10 x rate), then `rate` a second. Every
      operator subscribed to cmd/reply receives every reply: a flood must not become a flood of
      replies that buries their answers (or overflows their broker queue).
    At most `max_clients` clients are kept; the least recently seen is forgotten first (it then
    starts again with full buckets).
    """

    def __init__(self, rate: float, max_clients: int = MAX_CLIENTS):
        self.rate = rate
        self.max_clients = max_clients
        self.buckets: collections.OrderedDict[str, tuple[RateLimit, RateLimit]] = collections.OrderedDict()

    def _get(self, client: str, now: float) -> tuple[RateLimit, RateLimit]:
        pair = self.buckets.get(client)
        if pair is None:
            pair = self.buckets[client] = (RateLimit(self.rate, now),
                                           RateLimit(self.rate, now, burst=max(NOTICE_BURST, 10 * self.rate)))
            while len(self.buckets) > self.max_clients:
                self.buckets.popitem(last=False)
        else:
            self.buckets.move_to_end(client)
        return pair

    def allow(self, client: str, action: str, now: float) -> bool:
        if action in EXEMPT:
            self._get(client, now)
            return True   # a flood must never stand between an operator and a safe stop
        return self._get(client, now)[0].allow(now)

    def notify(self, client: str, now: float) -> bool:
        """May a refusal be replied to? (False: refuse silently, counted by the caller.)"""
        return self._get(client, now)[1].allow(now)


class RecentIds:
    """Command ids seen lately (at most `max_ids`, for at most `max_age_s`): replays are refused."""

    def __init__(self, max_ids: int = RECENT_IDS, max_age_s: float = RECENT_IDS_S):
        self.max_ids = max_ids
        self.max_age_s = max_age_s
        self.seen: collections.OrderedDict[str, float] = collections.OrderedDict()

    def _expire(self, now: float) -> None:
        seen = self.seen
        while seen and (len(seen) > self.max_ids or now - next(iter(seen.values())) > self.max_age_s):
            seen.popitem(last=False)

    def check(self, cmd_id: str, now: float) -> bool:
        """True if `cmd_id` was remembered within the window."""
        self._expire(now)
        return cmd_id in self.seen

    def remember(self, cmd_id: str, now: float) -> None:
        self.seen[cmd_id] = now
        self.seen.move_to_end(cmd_id)
        self._expire(now)
