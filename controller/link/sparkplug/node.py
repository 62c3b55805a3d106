"""SparkplugNode: the cell as a Sparkplug B 3.0 edge node, beside the JSON link.

A paho client of its own, because one MQTT client has one last will: the JSON link's says
`availability offline`, ours is the NDEATH, and each must reach the broker in the CONNECT of
the session it belongs to. Both clients use the [mqtt] broker, credentials and TLS settings.

Threads, as in the JSON link (controller/link/mqtt.py):
- paho's network thread runs our callbacks: they record what happened and wake the worker;
  on_pre_connect picks the bdSeq of the CONNECT about to go out and registers its NDEATH.
- the pump thread calls offer_event(): one flag, so a state change, trip or alarm is sampled
  at once rather than at the next sample period.
- the scan thread may call a command's reply: one append.
- our worker thread ("crushcell-spb"): births, data by exception, commands, the held store.

Safety never depends on any of it: the node reads snapshots and submits commands to the same
queue, with the same refusals, as the JSON link.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from cellspec.names import COMMANDS
from controller.link import client as mq
from controller.link import commands, payloads
from controller.link.outbox import Outbox, OutboxError
from controller.link.pacing import Backoff, LogThrottle
from controller.link.sparkplug import schema
from controller.link.sparkplug.bdseq import BdSeqStore
from controller.link.sparkplug.metrics import (
    BDSEQ,
    LAST_ACCEPTED,
    LAST_REASON,
    LAST_REPLY,
    REBIRTH,
    Catalogue,
    command_metric,
)

log = logging.getLogger("crushcell.sparkplug")

NAMESPACE = "spBv1.0"
TICK_S = 0.05            # the worker's longest sleep
DRAIN_WINDOW = 8         # held NDATA messages handed to paho and not yet written to the socket
DRAIN_ROWS = 50          # held records (one sample's changes each) per historical NDATA message
LOG_EVERY_S = 60.0
SUPERVISE_EVERY_S = 1.0  # the worker looks at paho's network thread this often
RESTART_MIN_S = 10.0     # at most one client replacement per this many seconds
STOP_WAIT_S = 6.0        # a replaced client's network thread is waited for this long (paho's
                         # connect timeout is 5 s) before its replacement connects
STATE_EVENTS = ("state", "trip", "alarm", "outputs", "end")
NCMD_MAX_BYTES = 65536   # a larger NCMD is refused unread (a rebirth request is about 40 bytes)
NCMD_PER_PASS = 32       # NCMDs read per worker pass: a flood must not keep a trip from being sampled
REFUSALS_PER_S = 5.0     # refusals the node itself tells the host (unreadable, unknown metric, ...):
REFUSAL_BURST = 20       # this rate on average, bursts up to this; past it counted, not told


def WITH_WILL() -> ReasonCode:  # noqa: N802 - reads as the reason code it is
    """MQTT 5 DISCONNECT reason 0x04: the broker publishes our will (the NDEATH) as we go."""
    return ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message")


def _stop(client: Any, reasoncode: ReasonCode | None, wait_s: float = 0.0) -> None:
    """Send a replaced client away for good: DISCONNECT (0x04: the broker publishes its NDEATH),
    and its network thread told to end, joined by a thread of its own (it may be the very thing
    that is stuck). wait_s: how long the caller waits for it to end (0 from paho's thread)."""
    try:
        client.disconnect(reasoncode=reasoncode)
    except Exception:   # noqa: BLE001 - a broken client must not stop its replacement
        pass
    reaper = threading.Thread(target=_join_quietly, args=(client,), name="crushcell-spb-reaper", daemon=True)
    reaper.start()
    if wait_s > 0:
        reaper.join(wait_s)


def _join_quietly(client: Any) -> None:
    try:
        client.loop_stop()
    except Exception:   # noqa: BLE001 - nothing to do about a client that will not stop
        pass


def _short(text: str, limit: int = 80) -> str:
    """A host's text in our replies and logs, cut: a 1 MB metric name must not come back whole."""
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def topic(group: str, verb: str, node: str) -> str:
    return f"{NAMESPACE}/{group}/{verb}/{node}"


def now_ms(clock: Callable[[], float]) -> int:
    return int(round(clock() * 1000))


class SparkplugNode:
    """Public API (PlantLink uses it): start(), offer_event(event), close(), stats()."""

    def __init__(self, config: Any, link: Any, state_dir: str, clock: Callable[[], float] = time.time):
        self.config = config
        self.link = link
        self.loop = link.loop
        self.sp = sp = config.sparkplug
        self.s = link.s
        self.clock = clock
        self.host, self.port = link.host, link.port
        self.group, self.node_id = sp.group_id, sp.edge_node_id
        self.t_nbirth = topic(self.group, "NBIRTH", self.node_id)
        self.t_ndeath = topic(self.group, "NDEATH", self.node_id)
        self.t_ndata = topic(self.group, "NDATA", self.node_id)
        self.t_ncmd = topic(self.group, "NCMD", self.node_id)
        self.t_state = f"{NAMESPACE}/STATE/{sp.primary_host_id}" if sp.primary_host_id else None
        self.client_id = sp.client_id or f"crushcell-{config.cell_id}-spb"
        self.catalogue = Catalogue(config, commands=sp.commands)
        self.bdseq = BdSeqStore(os.path.join(state_dir, f"sparkplug-{config.cell_id}.json"))
        self.counters: collections.Counter = collections.Counter()
        self._log = LogThrottle(LOG_EVERY_S)
        self._backoff = Backoff(self.s.reconnect_min_s, self.s.reconnect_max_s)
        # Store and forward (with a primary host only): samples taken while no host listens wait
        # here, on disk, and go out in order, flagged historical, after the next NBIRTH.
        self.store: Outbox | None = None
        if self.t_state is not None:
            self.store = Outbox(os.path.join(state_dir, f"sparkplug-{config.cell_id}.sqlite3"),
                                sp.store_max_messages, "normal")

        # Set by paho's thread, read by the worker.
        self._connected = False
        self._session_bd: int | None = None      # the bdSeq of the current session's CONNECT
        self._host_online: bool | None = None    # None: no STATE seen yet
        self._host_ts: int | None = None         # timestamp of the last STATE we honoured
        self._host_dropped: Any = None           # the client whose session a valid offline STATE ends
        self._ncmd: collections.deque[bytes | int] = collections.deque(maxlen=256)   # int: an oversize one
        self._written: collections.deque[tuple[Any, int]] = collections.deque()   # (client, mid)
        self._replies: collections.deque[dict] = collections.deque(maxlen=64)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._sample_now = True
        self._stale_snap: Any = None             # the snapshot that was current when an event came

        # Worker-only state.
        self._born = False
        self._birth_ts = 0                       # ms: rows older than this are historical
        self._seq = 0
        self._last: dict[str, Any] = {}          # the values last reported (or stored)
        self._extra: dict[str, Any] = {LAST_REPLY: "", LAST_ACCEPTED: False, LAST_REASON: ""}
        self._last_snap: Any = None
        self._next_sample = 0.0
        self._inflight: dict[int, list[int]] = {}   # mid -> held record seqs it carries
        self._sent_after = 0                         # highest held seq handed to paho
        self._worker: threading.Thread | None = None
        self._net_started = False
        self._supervise_at = 0.0
        self._restart_at = 0.0
        self._refusal_limit = commands.RateLimit(REFUSALS_PER_S, time.monotonic(), burst=REFUSAL_BURST)
        self.client: Any = None
        self.client = self._new_client()

    # -- public -----------------------------------------------------------------------------------
    def start(self) -> None:
        self._worker = threading.Thread(target=self._run, name="crushcell-spb", daemon=True)
        self._worker.start()
        mq.start(self.client, self.host, self.port, self.s.keepalive_s)
        self._net_started = True
        held = f", {self.store.pending} held record(s) waiting" if self.store is not None else ""
        log.info("sparkplug: edge node %s/%s on %s:%d%s%s", self.group, self.node_id, self.host, self.port,
                 f", primary host {self.sp.primary_host_id!r}" if self.t_state else "", held)

    def offer_event(self, event: dict) -> None:
        """Pump thread: a state change, trip or alarm is sampled now, not at the next period."""
        if event.get("type") in STATE_EVENTS:
            # The snapshot at hand predates the event: sample the next one, not this one.
            self._stale_snap = self.loop.latest
            self.loop.request_snapshot()
            self._sample_now = True
            self._wake.set()

    def close(self, timeout: float = 5.0) -> None:
        """Clean stop: the broker publishes our NDEATH (MQTT 5 'Disconnect with will message')."""
        self._stop.set()
        self._wake.set()
        if self._worker is not None:
            self._worker.join(timeout)
        try:
            if self._connected:
                self.client.disconnect(reasoncode=WITH_WILL())
        except Exception:   # noqa: BLE001 - stopping must go on whatever paho says
            pass
        finally:
            if self._net_started:
                self.client.loop_stop()
            if self.store is not None:
                self.store.close()

    def stats(self) -> dict:
        return {"connected": self._connected, "born": self._born, "seq": self._seq,
                "bdseq": self._session_bd, "host_online": self._host_online,
                "held": self.store.pending if self.store is not None else 0, **self.counters}

    # -- the paho client ----------------------------------------------------------------------------
    def _new_client(self) -> Any:
        s, section = self.s, "[mqtt]"
        if self.sp.username:   # the node's own broker user; TLS and the rest stay [mqtt]'s
            s = dataclasses.replace(s, username=self.sp.username, password_file=self.sp.password_file,
                                    password_env=self.sp.password_env)
            section = "[sparkplug]"
        password = mq.read_password(s, section=section)
        client = mq.make_client(s, self.client_id, password=password)
        del password
        client.on_pre_connect = self._guard(self._on_pre_connect)
        client.on_connect = self._guard(self._on_connect)
        client.on_connect_fail = self._guard(self._on_connect_fail)
        client.on_disconnect = self._guard(self._on_disconnect)
        client.on_message = self._guard(self._on_message)
        client.on_publish = self._guard(self._on_publish)
        return client

    def _guard(self, callback: Callable[..., None]) -> Callable[..., None]:
        """A callback never raises (paho's thread would die) and a replaced client is not heard.

        Hazard: a replaced client whose network thread was inside a reconnect when it was told to
        go can still connect, with our client id: the broker then throws the new client off, the
        new one throws the old one off, for ever (a storm of NDEATH/NBIRTH at every host). A
        replaced client that connects is disconnected at once (plainly: its session's NDEATH was
        published when it was replaced)."""
        is_connect = callback == self._on_connect

        def guarded(client: Any, *args: Any) -> None:
            if client is not self.client:
                if is_connect:
                    self.counters["retired_client_connected"] += 1
                    _stop(client, None)
                return
            try:
                callback(client, *args)
            except Exception:
                self.counters["callback_errors"] += 1
                if self._log.hit() is not None:
                    log.exception("sparkplug: error in a paho callback; the node carries on")
        return guarded

    def _on_pre_connect(self, client: Any, _userdata: Any) -> None:
        """A CONNECT is about to go out: its bdSeq, persisted first, and its NDEATH as the will."""
        bd = self.bdseq.for_connect()
        client.will_set(self.t_ndeath, self._death_payload(bd), qos=1, retain=False)
        self._session_bd = bd

    def _on_connect(self, client: Any, _userdata: Any, _flags: Any, reason_code: Any, _props: Any) -> None:
        self.bdseq.used()   # a CONNECT carried this number: the next CONNECT takes the next one
        if mq.is_failure(reason_code):
            self.counters["connect_refused"] += 1
            if self._log.hit() is not None:
                log.warning("sparkplug: broker %s:%d refused the connection: %s (retrying)",
                            self.host, self.port, mq.connack_text(reason_code))
            return
        self._backoff.reset()
        self.counters["connects"] += 1
        # NCMD at QoS 1 (Sparkplug 3.0) before the birth: a host's rebirth request must reach us.
        mq.subscribe(client, self.t_ncmd, qos=1)
        if self.t_state is not None:
            # A new session waits for the host's STATE again (the retained one comes at once):
            # what we knew before the connection dropped may be stale by now.
            self._host_online = None
            mq.subscribe(client, self.t_state, qos=1)
        self._connected = True
        self._wake.set()
        log.info("sparkplug: connected to %s:%d (bdSeq %d)", self.host, self.port, self._session_bd)

    def _on_connect_fail(self, client: Any, _userdata: Any) -> None:
        self.counters["connect_failed"] += 1
        mq.set_next_delay(client, self._backoff.next())

    def _on_disconnect(self, client: Any, _userdata: Any, _flags: Any, reason_code: Any, _props: Any) -> None:
        self.bdseq.used()
        if self._connected and not self._stop.is_set():
            log.warning("sparkplug: disconnected from %s:%d (%s)", self.host, self.port,
                        mq.connack_text(reason_code))
        self._connected = False
        self.counters["disconnects"] += 1
        mq.set_next_delay(client, self._backoff.next())
        self._wake.set()

    def _on_message(self, _client: Any, _userdata: Any, msg: Any) -> None:
        if msg.topic == self.t_ncmd:
            if len(msg.payload) > NCMD_MAX_BYTES:
                # Not even queued: 256 of these must not hold 256 MB.
                self._ncmd.append(len(msg.payload))
            else:
                self._ncmd.append(bytes(msg.payload))
            self._wake.set()
        elif msg.topic == self.t_state:
            self._state_message(bytes(msg.payload), _client)

    def _on_publish(self, client: Any, _userdata: Any, mid: int, _reason_code: Any, _props: Any) -> None:
        self._written.append((client, mid))
        self._wake.set()

    def _state_message(self, payload: bytes, client: Any = None) -> None:
        """The primary host's STATE (Sparkplug 3.0: JSON {"online": bool, "timestamp": ms}).

        A STATE older than the last one honoured is ignored (a host's late will must not end
        the session its newer birth began); the first one is honoured as it is.
        """
        try:
            body = json.loads(payload.decode("utf-8"))
            online, ts = body["online"], body["timestamp"]
            # "a numeric value" (ms since the epoch): an integer from most hosts, a JSON float
            # from some; never a boolean, NaN or infinite.
            if not isinstance(online, bool) or not isinstance(ts, (int, float)) or isinstance(ts, bool) \
                    or not math.isfinite(ts):
                raise ValueError("online must be a boolean and timestamp a number")
            ts = int(ts)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            self.counters["state_invalid"] += 1
            if self._log.hit() is not None:
                log.warning("sparkplug: ignored a STATE message from %r that is not Sparkplug 3.0 "
                            "(%s): %.80r", self.sp.primary_host_id, exc, payload)
            return
        if self._host_ts is not None and ts < self._host_ts:
            self.counters["state_stale"] += 1
            return
        self._host_ts = ts
        was = self._host_online
        self._host_online = online
        # Only a session (born, after the host said online) is ended: a retained offline STATE
        # seen again after the reconnect must not end the next connection too (a reconnect storm).
        if not online and self._connected and self._born:
            self._host_dropped = client
        if was != online:
            log.warning("sparkplug: primary host %r is %s", self.sp.primary_host_id,
                        "online" if online else "offline; data is held until it returns")
        self._wake.set()

    # -- payloads -------------------------------------------------------------------------------------
    def _death_payload(self, bd: int) -> bytes:
        """NDEATH: one metric, bdSeq (Int64), and no seq (Sparkplug 3.0)."""
        p = schema.Payload()
        p.timestamp = now_ms(self.clock)
        m = p.metrics.add()
        m.name = BDSEQ
        m.datatype = schema.INT64
        m.timestamp = p.timestamp
        schema.set_value(m, schema.INT64, bd)
        return p.SerializeToString()

    def _birth_payload(self, values: dict[str, Any], ts: int) -> bytes:
        cat = self.catalogue
        p = schema.Payload()
        p.timestamp = ts
        p.seq = 0
        for d, value in ((cat.bdseq, self._session_bd or 0), (cat.rebirth, False)):
            m = p.metrics.add()
            m.name = d.name
            if d.alias is not None:
                m.alias = d.alias
            m.datatype = d.datatype
            m.timestamp = ts
            schema.set_value(m, d.datatype, value)
        for d in cat.defs:
            m = p.metrics.add()
            m.name = d.name
            m.alias = d.alias
            m.datatype = d.datatype
            m.timestamp = ts
            schema.set_value(m, d.datatype, values.get(d.name))
            if d.unit:
                m.properties.keys.append("engUnit")
                prop = m.properties.values.add()
                prop.type = schema.STRING
                prop.string_value = d.unit
        return p.SerializeToString()

    def _data_payload(self, records: list[tuple[int, list[tuple[str, Any]]]], historical: bool) -> bytes:
        """NDATA: aliases only (no names, no datatypes), each metric with its own timestamp."""
        by_name = self.catalogue.by_name
        p = schema.Payload()
        p.timestamp = now_ms(self.clock)
        self._seq = (self._seq + 1) % 256
        p.seq = self._seq
        for ts, changes in records:
            for name, value in changes:
                d = by_name.get(name)
                if d is None:   # a held record from another config: that metric is gone
                    self.counters["held_unknown_metric"] += 1
                    continue
                m = p.metrics.add()
                m.alias = d.alias
                m.timestamp = ts
                if historical:
                    m.is_historical = True
                schema.set_value(m, d.datatype, value)
        return p.SerializeToString()

    # -- worker ---------------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(TICK_S)
            self._wake.clear()
            try:
                self._step()
            except Exception:
                self.counters["worker_errors"] += 1
                if self._log.hit() is not None:
                    log.exception("sparkplug: worker pass failed; the controller runs on, the node retries")
                self._stop.wait(1.0)

    def _step(self) -> None:
        self._supervise()
        self._take_written()
        dropped, self._host_dropped = self._host_dropped, None
        if dropped is not None and dropped is self.client:
            # Only the session the offline STATE came in is ended: one that reached the old
            # connection while the node was leaving it must not end the next session before its
            # birth (that one waits for the host's retained STATE like any new session).
            self._start_over("the primary host went offline")
            return
        if not self._connected and self._born:
            self._born = False   # the broker has published our NDEATH; the next session births again
        host_ok = self.t_state is None or self._host_online is True
        if self._connected and not self._born and host_ok:
            if not self._birth():
                return
        self._commands()
        self._replies_to_metrics()
        self._sample()
        if self._born:
            self._drain()

    def _supervise(self) -> None:
        """paho's network thread can die (an exception escaping paho) with the socket still open:
        the node would look alive and never publish again. Replace the client, as the JSON link's
        supervisor does (at most once per RESTART_MIN_S)."""
        now = time.monotonic()
        if now < self._supervise_at or not self._net_started or self._stop.is_set():
            return
        self._supervise_at = now + SUPERVISE_EVERY_S
        if not mq.network_alive(self.client) and now >= self._restart_at:
            self._restart_at = now + RESTART_MIN_S
            self.counters["restarts"] += 1
            self._start_over("paho's network thread has stopped")

    def _start_over(self, why: str) -> None:
        """Sparkplug 3.0: on the primary host's offline STATE, NDEATH and disconnect, then connect
        anew (a new bdSeq) and wait for the host before the next NBIRTH."""
        log.warning("sparkplug: %s: ending the session (the broker publishes the NDEATH) and "
                    "connecting again; data waits in the held store when a primary host is set", why)
        self.counters["sessions_ended"] += 1
        old = self.client
        self._connected = False
        self._born = False
        self._inflight.clear()
        self._sent_after = 0
        self.client = self._new_client()   # from here the old client's callbacks are not heard
        # The old network thread must be gone before the new client connects: caught inside a
        # reconnect, it could connect again with our client id and take the new session over.
        # Waiting here holds only this worker (never the scan), at most STOP_WAIT_S.
        _stop(old, WITH_WILL(), STOP_WAIT_S)
        self.bdseq.used()
        mq.start(self.client, self.host, self.port, self.s.keepalive_s)

    def _take_written(self) -> None:
        """Held records whose NDATA paho has written to the socket leave the store."""
        done: list[int] = []
        while self._written:
            client, mid = self._written.popleft()
            seqs = self._inflight.pop(mid, None) if client is self.client else None
            if seqs:
                done.extend(seqs)
        if done and self.store is not None:
            try:
                self.store.delete(done)
            except (OutboxError, OSError, Exception) as exc:   # noqa: BLE001 - sent twice at worst
                self.counters["store_errors"] += 1
                if self._log.hit() is not None:
                    log.warning("sparkplug: could not delete sent records from the held store: %s", exc)

    def _birth(self) -> bool:
        snap = self.loop.latest
        self.loop.request_snapshot()
        if snap is None:
            return False
        ts = now_ms(self.clock)
        values = self.catalogue.sample(snap, self.link._health(), self._extra)
        payload = self._birth_payload(values, ts)
        self.client.publish(self.t_nbirth, payload, qos=0, retain=False)
        self._seq = 0
        self._born = True
        self._birth_ts = ts
        self._last = values
        self._last_snap = snap
        self._inflight.clear()
        self._sent_after = 0
        self.counters["births"] += 1
        self.counters["bytes"] += len(payload)
        log.info("sparkplug: NBIRTH %s (bdSeq %s, %d metrics)", self.t_nbirth, self._session_bd,
                 len(self.catalogue.defs) + 2)
        return True

    def _commands(self) -> None:
        """Every NCMD waiting, in order; then one birth however many rebirth requests they held
        (one NCMD of 2,000 Rebirth metrics, or 2,000 NCMDs at once, must not be 2,000 NBIRTHs)."""
        rebirth = False
        for _ in range(NCMD_PER_PASS):
            if not self._ncmd:
                break
            rebirth = self._ncmd_message(self._ncmd.popleft()) or rebirth
        if self._ncmd:
            self._wake.set()   # more next pass, after this one has sampled
        if rebirth:
            # Sparkplug 3.0: stop data at once (no NDATA goes out before this in the pass) and send
            # the birth again, same bdSeq. Not born yet (waiting for the primary host): the birth
            # comes when it may.
            if self._connected and self._born:
                log.info("sparkplug: rebirth requested by NCMD")
                self._birth()

    def _ncmd_message(self, raw: bytes | int) -> bool:
        """One NCMD: commands submitted, refusals told; True when it asks for a rebirth."""
        if isinstance(raw, int):
            self.counters["ncmd_too_large"] += 1
            self._refused(None, f"an NCMD of {raw} bytes is over this node's limit of {NCMD_MAX_BYTES}; "
                                "not read")
            return False
        try:
            payload = schema.Payload.FromString(raw)
        except Exception as exc:   # noqa: BLE001 - protobuf's DecodeError and friends
            self.counters["ncmd_invalid"] += 1
            if self._log.hit() is not None:
                log.warning("sparkplug: ignored an NCMD that is not a Sparkplug B payload (%s)", exc)
            self._refused(None, f"an NCMD that is not a Sparkplug B payload ({_short(str(exc))}); not read")
            return False
        cat = self.catalogue
        rebirth = False
        for m in payload.metrics:
            d = cat.by_alias.get(m.alias) if m.HasField("alias") else None
            name = d.name if d is not None else (m.name if m.HasField("name") else None)
            if isinstance(name, bytes):   # protobuf hands back a name that is not UTF-8 as bytes
                self._refused(None, f"NCMD metric name {_short(repr(name))} is not UTF-8")
                continue
            value = schema.get_value(m)
            if name == REBIRTH:
                if value is True:
                    self.counters["rebirths"] += 1
                    rebirth = True
                continue
            action = self._command_action(name)
            if action is None:
                self.counters["ncmd_unknown"] += 1
                what = _short(repr(name or m.alias))
                writable = "Node Control/Rebirth" + (", Commands/<action>" if cat.commands else "")
                self._refused(None, f"NCMD metric {what} is not writable on this node (writable: {writable})")
                continue
            if value is not True:
                self._refused(action, f"NCMD {command_metric(action)} must be written true to act")
                continue
            by = f"sparkplug:{self.sp.primary_host_id or 'host'}"
            cmd_id = f"spb-{uuid.uuid4().hex}"
            if not cat.commands:
                self.link.submit_command(commands.Refusal(
                    cmd_id, action, by, "commands over Sparkplug are off on this controller ([sparkplug] "
                                        "commands = false); only Node Control/Rebirth is accepted"),
                    self._deliver)
                continue
            self.link.submit_command(commands.Command(cmd_id, action, by), self._deliver)
        return rebirth

    @staticmethod
    def _command_action(name: str | None) -> str | None:
        if name and name.startswith("Commands/"):
            action = name[len("Commands/"):]
            if action in COMMANDS:
                return action
        return None

    def _refused(self, action: str | None, reason: str) -> None:
        """A refusal decided here (not by the command path): told to the host, at a bounded rate."""
        if not self._refusal_limit.allow(time.monotonic()):
            self.counters["refusals_untold"] += 1
            return
        state = self._last.get("State")
        self._deliver(payloads.reply(None, False, reason, state, ts=self.clock(), action=action))

    def _deliver(self, body: dict) -> None:
        """A command's reply (any thread, the scan thread too): one append, one flag."""
        self._replies.append(body)
        self._sample_now = True

    def _replies_to_metrics(self) -> None:
        while self._replies:
            body = self._replies.popleft()
            self._extra = {LAST_REPLY: payloads.dumps(body), LAST_ACCEPTED: bool(body.get("accepted")),
                           LAST_REASON: str(body.get("reason") or "")}
            # Reported now, each in its own NDATA: left for a later sample, the next reply could
            # overwrite it first and the host would never see it.
            self._sample(force=True)

    def _sample(self, force: bool = False) -> None:
        mono = time.monotonic()
        if not (force or self._sample_now or mono >= self._next_sample):
            return
        if mono >= self._next_sample:
            self._next_sample = mono + self.sp.sample_period_s
        snap = self.loop.latest
        self.loop.request_snapshot()
        if snap is None:
            return
        if snap is self._last_snap and not (force or self._sample_now):
            return
        stale = snap is self._stale_snap
        if stale and not force:
            return   # an event is newer than this snapshot: keep _sample_now, take the next one
        if not stale:
            self._sample_now = False   # (a forced sample of a stale snapshot leaves it set)
        self._last_snap = snap
        values = self.catalogue.sample(snap, self.link._health(), self._extra)
        changes = self.catalogue.changes(values, self._last)
        if not changes:
            return
        ts = now_ms(self.clock)
        if self._born and (self.store is None or (self.store.pending == 0 and not self._inflight)):
            payload = self._data_payload([(ts, changes)], historical=False)
            self.client.publish(self.t_ndata, payload, qos=0, retain=False)
            self.counters["ndata"] += 1
            self.counters["bytes"] += len(payload)
        elif self.store is not None:
            # No host listens (or held records still go out first): keep the order on disk.
            self._hold(ts, changes)
        else:
            return   # no session and no store: the next NBIRTH carries the current values
        self._last.update(changes)

    def _hold(self, ts: int, changes: list[tuple[str, Any]]) -> None:
        body = json.dumps({"ts": ts, "m": changes}, separators=(",", ":"), allow_nan=False)
        try:
            dropped = self.store.append([(ts / 1000.0, body, None)])
        except (OutboxError, OSError, Exception) as exc:   # noqa: BLE001 - the node must run on
            self.counters["store_errors"] += 1
            if self._log.hit() is not None:
                log.warning("sparkplug: could not hold data while the host is away: %s", exc)
            return
        self.counters["held_total"] += 1
        if dropped:
            self.counters["held_dropped"] += dropped
            if self._log.hit() is not None:
                log.warning("sparkplug: held store full (%d records): dropped the %d oldest",
                            self.store.max_events, dropped)

    def _drain(self) -> None:
        """Held records, oldest first, as NDATA: historical when older than this session's birth."""
        store = self.store
        if store is None or not store.pending:
            return
        while len(self._inflight) < DRAIN_WINDOW and self._connected and self._born:
            rows = store.read_after(self._sent_after, DRAIN_ROWS)
            if not rows:
                return
            # Records older than this session's NBIRTH are history; the rest (sampled while the
            # history went out) are current data that waited its turn. Never reordered.
            n_old = 0
            while n_old < len(rows) and rows[n_old][1] * 1000.0 < self._birth_ts:
                n_old += 1
            historical = rows[:n_old]
            batch = historical or rows
            records = []
            for _seq, _ts, body in batch:
                rec = json.loads(body)
                records.append((int(rec["ts"]), [tuple(c) for c in rec["m"]]))
            payload = self._data_payload(records, historical=bool(historical))
            info = self.client.publish(self.t_ndata, payload, qos=0, retain=False)
            self._inflight[info.mid] = [r[0] for r in batch]
            self._sent_after = batch[-1][0]
            self.counters["ndata"] += 1
            self.counters["ndata_historical" if historical else "ndata_delayed"] += 1
            self.counters["bytes"] += len(payload)
