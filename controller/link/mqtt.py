"""PlantLink: MQTT beside the scan loop, never in its way.

Threads and what each may do:
- scan thread: calls our command reply callback. It only appends to a deque (never blocks).
- pump thread: calls `offer_event()`. It only appends to a deque and sets a flag (quick).
- paho's network thread: runs our MQTT callbacks. They only record what happened, subscribe,
  publish availability, check a command and hand it to `loop.submit()`.
- our worker thread ("crushcell-link"): everything slow. It owns the SQLite outbox, writes
  offered events to it, publishes events from it (at most `publish_window` unacknowledged),
  deletes them on PUBACK, and publishes status, telemetry and command replies.

If the broker is slow or gone, only the worker waits; the loop and the pump never notice. Safety
never depends on the link.

Delivery: an event is on disk before it is published and leaves the disk only after its PUBACK.
paho keeps unacknowledged messages across reconnects and resends them itself, so after an outage
nothing is sent twice by us; after a crash the outbox is replayed from its oldest row (a consumer
may then see an event twice, with the same seq: dedupe by seq). Events that waited through an
outage or a restart are flagged "historical" and may travel in batches (docs/mqtt.md).
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from typing import Any

from controller import __version__
from controller.link import client as mq
from controller.link import commands, payloads
from controller.link.client import LinkConfigError
from controller.link.outbox import Outbox, OutboxError

log = logging.getLogger("crushcell.link")

TICK_S = 0.02            # the worker's longest sleep: bounds reply latency when nothing wakes it
REPLY_QUEUE_MAX = 256    # replies waiting to be published; beyond it they are dropped (counted)
AUDIT_RATE_PER_S = 5.0   # link-refused commands written to the event log: this rate on average,
AUDIT_BURST = 50         # bursts up to this; past it they are counted and summarised
DELETE_BATCH = 500       # acknowledged rows deleted in one transaction...
DELETE_EVERY_S = 0.2     # ...or at least this often
PREFETCH = 2000          # outbox rows read at once while draining
CLOSE_DRAIN_S = 2.0      # on clean shutdown, time given to deliver the rest of the backlog

__all__ = ["PlantLink", "LinkConfigError", "OutboxError"]


class PlantLink:
    """The MQTT plant link of one controller.

    Public API (used by controller/cli.py):
        PlantLink(config, loop, broker=None, state_dir="var", clock=time.time)
        start()              connect in the background and start the worker
        offer_event(event)   hand over one event-log record (pump thread; quick)
        close(timeout=5.0)   deliver what it can, publish offline, disconnect, stop
        stats()              counters for tests and the benchmark
    """

    def __init__(self, config: Any, loop: Any, broker: str | None = None, state_dir: str = "var",
                 clock: Any = time.time):
        self.config = config
        self.loop = loop
        self.s = s = config.mqtt
        self.clock = clock
        host, port = s.host, s.port
        if broker:
            host, port = mq.parse_broker(broker, s.port)
        self.host, self.port = host, port
        self.base = payloads.base_topic(s.topic_prefix, config.cell_id)
        self.t_avail = f"{self.base}/{payloads.AVAILABILITY}"
        self.t_status = f"{self.base}/{payloads.STATUS}"
        self.t_telemetry = f"{self.base}/{payloads.TELEMETRY}"
        self.t_events = f"{self.base}/{payloads.EVENTS}"
        self.t_cmd = f"{self.base}/{payloads.CMD}"
        self.t_reply = f"{self.base}/{payloads.CMD_REPLY}"
        self.t_ha_status = f"{s.homeassistant_prefix}/status"
        self.units = {name: sc.unit for name, sc in getattr(config, "sensors", {}).items()}
        password = mq.read_password(s)
        self.client = mq.make_client(s, s.client_id or f"crushcell-{config.cell_id}", password=password,
                                     will=(self.t_avail, payloads.OFFLINE))
        del password
        self._window = s.publish_window
        self.receive_maximum = 0
        # paho's own cap on unacknowledged QoS 1 messages (fixed before connecting): our event
        # window plus room for status, availability and replies.
        self.client.max_inflight_messages_set(s.publish_window + 8)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self.outbox = Outbox(os.path.join(state_dir, f"outbox-{config.cell_id}.sqlite3"),
                             s.outbox_max_events, s.outbox_sync)

        # Hand-over queues (deque append/popleft are atomic: no locks on the loop's threads).
        self._offered: collections.deque[tuple[float, dict]] = collections.deque()
        self._replies: collections.deque[dict] = collections.deque()
        self._awaiting: collections.deque[tuple[str, str, str, bool, str]] = collections.deque()
        self._acked: collections.deque[int] = collections.deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None

        # Worker-only state.
        self._inflight: dict[int, list[int]] = {}   # paho mid -> event seqs it carries
        self._sent_seq = 0                           # highest seq handed to paho
        self._rows: collections.deque = collections.deque()   # prefetched rows after _sent_seq
        self._fetched_seq = 0                        # highest seq in _rows
        self._done: list[int] = []                   # acknowledged, not yet deleted
        self._delete_at = 0.0
        self._connected_at = 0.0                     # wall clock of the current CONNACK
        self._telemetry_seq = 0
        self._next_telemetry = 0.0
        self._status_due = True
        self._status_old: Any = None
        self._status_last: dict | None = None
        self._history_tokens = 0.0
        self._history_last = 0.0

        # Set from paho's thread, read by the worker.
        self._connected = False
        self._birth_due = False
        self._ha_due = False
        self._limit = commands.RateLimit(s.command_rate_per_s, time.monotonic())
        self._audit_limit = commands.RateLimit(AUDIT_RATE_PER_S, time.monotonic(), burst=AUDIT_BURST)
        self._audit_suppressed = 0
        self.counters = collections.Counter()
        self._last_refusal_log = 0.0

    # -- public --------------------------------------------------------------------------------------
    def start(self) -> None:
        self._worker = threading.Thread(target=self._run, name="crushcell-link", daemon=True)
        self._worker.start()
        self.loop.request_snapshot()
        mq.start(self.client, self.host, self.port, self.s.keepalive_s)
        log.info("plant link: broker %s:%d, topics %s/#, outbox %s (%d waiting, %d dropped so far)",
                 self.host, self.port, self.base, self.outbox.path, self.outbox.pending, self.outbox.dropped)

    def offer_event(self, event: dict) -> None:
        """Called by the pump for every event-log record. Quick: one append, one flag."""
        self._offered.append((self.clock(), event))
        self._wake.set()

    def close(self, timeout: float = 5.0) -> None:
        """Clean shutdown: store the last events, deliver what we can, publish offline, disconnect."""
        if self._worker is None:
            self.outbox.close()
            return
        self._stop.set()
        self._wake.set()
        self._worker.join(timeout)
        try:
            if self._connected:
                snap = self._final_snapshot()
                if snap is not None:
                    self._publish_status(snap)
                info = self.client.publish(self.t_avail, payloads.OFFLINE, qos=1, retain=True)
                try:
                    info.wait_for_publish(timeout=2.0)
                except (RuntimeError, ValueError):
                    pass
            self.client.disconnect()
        finally:
            self.client.loop_stop()
            self.outbox.close()

    def stats(self) -> dict:
        return {"pending": self.outbox.pending, "dropped": self.outbox.dropped,
                "last_seq": self.outbox.last_seq, "inflight": len(self._inflight),
                "connected": self._connected, **self.counters}

    # -- paho callbacks (network thread: short, never block) ----------------------------------------
    def _on_connect(self, client: Any, _userdata: Any, _flags: Any, reason_code: Any, _props: Any) -> None:
        if mq.is_failure(reason_code):
            # Wrong password, not authorised, ...: paho retries with backoff; say so once a minute.
            now = time.monotonic()
            if now - self._last_refusal_log > 60:
                self._last_refusal_log = now
                log.warning("plant link: broker %s:%d refused the connection: %s (retrying)",
                            self.host, self.port, mq.connack_text(reason_code))
            self.counters["connect_refused"] += 1
            return
        # Never have more QoS 1 messages unacknowledged than the broker accepts (MQTT 5 Receive
        # Maximum; mosquitto disconnects a client that exceeds it). A few slots stay free for
        # status and replies.
        rmax = mq.receive_maximum(_props)
        self.receive_maximum = rmax
        self._window = max(1, min(self.s.publish_window, rmax - 4))
        self._connected_at = self.clock()
        self._connected = True
        self.counters["connects"] += 1
        # Subscriptions are renewed on every connect (clean session: the broker forgot them).
        mq.subscribe(client, self.t_cmd, qos=1)
        if self.s.homeassistant_discovery:
            mq.subscribe(client, self.t_ha_status, qos=1)
            self._ha_due = True
        client.publish(self.t_avail, payloads.ONLINE, qos=1, retain=True)
        self._birth_due = True
        self._wake.set()
        log.info("plant link: connected to %s:%d", self.host, self.port)

    def _on_disconnect(self, _client: Any, _userdata: Any, _flags: Any, reason_code: Any,
                       _props: Any) -> None:
        if self._connected and not self._stop.is_set():
            log.warning("plant link: disconnected from %s:%d (%s); events wait in the outbox",
                        self.host, self.port, mq.connack_text(reason_code))
        self._connected = False
        self.counters["disconnects"] += 1

    def _on_publish(self, _client: Any, _userdata: Any, mid: int, _reason_code: Any, _props: Any) -> None:
        self._acked.append(mid)
        self._wake.set()

    def _on_message(self, _client: Any, _userdata: Any, msg: Any) -> None:
        if msg.topic == self.t_ha_status:
            if msg.payload == b"online":
                self._ha_due = True
                self._wake.set()
            return
        if msg.topic == self.t_cmd:
            self._command(msg.payload, bool(msg.retain))

    def _command(self, payload: bytes, retained: bool) -> None:
        self.counters["commands_received"] += 1
        parsed = commands.parse(payload, retained=retained, max_bytes=self.s.command_max_bytes)
        if isinstance(parsed, commands.Command) and not self._limit.allow(time.monotonic()):
            parsed = commands.Refusal(parsed.id, parsed.action, parsed.by,
                                      f"rate limit: more than {self.s.command_rate_per_s:g} commands "
                                      "per second; try again")
        if isinstance(parsed, commands.Refusal):
            self._refuse(parsed)
            return
        cmd_id, action, by = parsed.id, parsed.action, parsed.by
        awaiting, replies, clock = self._awaiting, self._replies, self.clock

        def reply(accepted: bool, reason: str, state: str) -> None:
            # Runs on the SCAN THREAD: append only, never block, never raise.
            awaiting.append((cmd_id, by, action, accepted, reason))
            if len(replies) < REPLY_QUEUE_MAX:
                replies.append(payloads.reply(cmd_id, accepted, reason, state, ts=clock(), action=action))

        if not self.loop.submit(action, "remote", reply):
            self._refuse(commands.Refusal(cmd_id, action, by, "command queue full; try again"))
            return
        self.counters["commands_submitted"] += 1

    def _audit_summary(self) -> None:
        """A flood of refused commands left some out of the event log: say how many (worker)."""
        if self._audit_suppressed and self._audit_limit.allow(time.monotonic()):
            n, self._audit_suppressed = self._audit_suppressed, 0
            snap = self.loop.latest
            self.offer_event({"t": snap.t if snap is not None else None, "type": "command", "action": None,
                              "source": "remote", "accepted": False, "id": None, "by": None, "stage": "link",
                              "reason": f"{n} more refused commands not logged one by one (flood)",
                              "suppressed": n})

    def _refuse(self, r: commands.Refusal) -> None:
        self.counters["commands_refused"] += 1
        state = self._status_last["state"] if self._status_last else None
        if len(self._replies) < REPLY_QUEUE_MAX:
            self._replies.append(payloads.reply(r.id, False, r.reason, state, ts=self.clock(),
                                                action=r.action))
        else:
            self.counters["replies_dropped"] += 1
        # Audit: refused commands go to the event log too, but a flood must not fill the outbox.
        if self._audit_limit.allow(time.monotonic()):
            snap = self.loop.latest
            record = {"t": snap.t if snap is not None else None, "type": "command", "action": r.action,
                      "source": "remote", "accepted": False, "reason": r.reason, "id": r.id, "by": r.by,
                      "stage": "link"}
            if self._audit_suppressed:
                record["suppressed"] = self._audit_suppressed
                self._audit_suppressed = 0
            self.offer_event(record)
        else:
            self._audit_suppressed += 1

    # -- worker ----------------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._wake.wait(TICK_S)
                self._wake.clear()
                self._step()
            self._finish()
        except Exception:   # never let the link take anything else down; say what happened
            log.exception("plant link: worker stopped by an unexpected error; the controller runs on")
            self.counters["worker_crashed"] += 1

    def _step(self) -> None:
        self._audit_summary()
        self._store_offered()
        self._process_acks()
        now = self.clock()
        if self._connected:
            self._publish_replies()
            if self._birth_due:
                # (Re)connected: re-publish the retained status whatever its last snapshot.
                self._birth_due = False
                self._status_due = True
                self._status_old = None
            if self._ha_due:
                self._ha_due = False
                self._publish_discovery()
        self._status(now)
        self._telemetry(now)
        if self._connected:
            self._drain(now)

    def _store_offered(self) -> None:
        offered = self._offered
        if not offered:
            return
        rows = []
        pop = offered.popleft
        status_events = ("state", "trip", "alarm", "outputs", "end")
        while offered:
            ts, event = pop()
            if event.get("type") == "command" and event.get("source") == "remote" and "stage" not in event:
                event = self._enrich(event)
            if event.get("type") in status_events:
                self._want_status()
            body, seq = payloads.event_body(event, ts)
            rows.append((ts, body, seq))
        dropped = self.outbox.append(rows)
        if dropped:
            log.warning("plant link: outbox full (%d events): dropped the %d oldest; %d dropped in all",
                        self.outbox.max_events, dropped, self.outbox.dropped)
            self._want_status()

    def _enrich(self, event: dict) -> dict:
        """Add the MQTT caller's id and operator to the core's record of a remote command."""
        awaiting = self._awaiting
        if awaiting:
            cmd_id, by, action, accepted, reason = awaiting[0]
            seen = (event.get("action"), event.get("accepted"), event.get("reason"))
            if (action, accepted, reason) == seen:
                awaiting.popleft()
                event = dict(event)
                event["id"], event["by"], event["stage"] = cmd_id, by, "core"
        return event

    def _process_acks(self, force: bool = False) -> None:
        acked = self._acked
        done = self._done
        inflight = self._inflight
        while acked:
            seqs = inflight.pop(acked.popleft(), None)
            if seqs:
                done.extend(seqs)
        # Deleting is batched (one transaction per DELETE_BATCH rows or DELETE_EVERY_S): a crash
        # in between only means those acknowledged events are sent again (same seq) at restart.
        if done and (force or len(done) >= DELETE_BATCH or time.monotonic() >= self._delete_at):
            self.outbox.delete(done)
            self.counters["events_acked"] += len(done)
            done.clear()
            self._delete_at = time.monotonic() + DELETE_EVERY_S

    def _publish_replies(self) -> None:
        replies = self._replies
        while replies:
            self.client.publish(self.t_reply, payloads.dumps(replies.popleft()), qos=1)
            self.counters["replies_sent"] += 1

    def _want_status(self) -> None:
        self._status_due = True
        self._status_old = self.loop.latest
        self.loop.request_snapshot()

    def _status(self, now: float) -> None:
        if not self._status_due or not self._connected:
            return
        snap = self.loop.latest
        if snap is None or snap is self._status_old:
            self.loop.request_snapshot()
            return
        self._status_due = False
        self._status_old = None
        self._publish_status(snap)

    def _publish_status(self, snap: Any) -> None:
        body = payloads.status(snap, ts=self.clock(), cell_id=self.config.cell_id, version=__version__,
                               config_sha256=getattr(self.config, "sha256", ""),
                               outbox_pending=self.outbox.pending, outbox_dropped=self.outbox.dropped)
        self._status_last = body
        self.client.publish(self.t_status, payloads.dumps(body), qos=1, retain=True)
        self.counters["status_sent"] += 1

    def _final_snapshot(self) -> Any:
        snapshot = getattr(self.loop, "snapshot", None)
        if callable(snapshot):
            try:
                return snapshot()   # the scan loop has ended: reading the core is safe now
            except Exception:
                return self.loop.latest
        return self.loop.latest

    def _telemetry(self, now: float) -> None:
        if now < self._next_telemetry:
            return
        period = self.s.telemetry_period_s
        self._next_telemetry = max(self._next_telemetry + period, now + period / 2)
        snap = self.loop.latest
        self.loop.request_snapshot()   # read on the next period: the loop is never waited for
        if snap is None or not self._connected:
            return
        self._telemetry_seq += 1
        body = payloads.telemetry(snap, ts=now, seq=self._telemetry_seq, units=self.units)
        self.client.publish(self.t_telemetry, payloads.dumps(body), qos=0)

    def _publish_discovery(self) -> None:
        for topic, cfg in payloads.homeassistant_configs(ha_prefix=self.s.homeassistant_prefix,
                                                          base=self.base, cell_id=self.config.cell_id,
                                                          version=__version__, units=self.units):
            self.client.publish(topic, payloads.dumps(cfg), qos=1, retain=True)
        self._status_due = True

    def _drain(self, now: float) -> None:
        """Publish outbox rows in order while fewer than the window await their PUBACK."""
        s = self.s
        window = self._window
        inflight = self._inflight
        rows = self._rows
        connected_at = self._connected_at
        batch = s.history_batch
        publish = self.client.publish
        topic = self.t_events
        while len(inflight) < window and self._connected:
            if len(rows) < batch:
                fetched = self.outbox.read_after(self._fetched_seq, PREFETCH)
                if fetched:
                    rows.extend(fetched)
                    self._fetched_seq = fetched[-1][0]
                if not rows:
                    return
            seq, ts, body = rows[0]
            if ts < connected_at:
                # Waited through an outage or a restart: historical, paced, maybe batched.
                if not self._history_allowed():
                    return
                chunk = [rows.popleft()]
                while batch > 1 and rows and len(chunk) < batch and rows[0][1] < connected_at:
                    chunk.append(rows.popleft())
                if len(chunk) == 1:
                    text = payloads.historical(body)
                else:
                    text = payloads.history_batch([(r[0], r[2]) for r in chunk])
                seqs = [r[0] for r in chunk]
                self.counters["historical_sent"] += len(chunk)
            else:
                rows.popleft()
                text, seqs = body, [seq]
            info = publish(topic, text, qos=1)
            inflight[info.mid] = seqs
            self._sent_seq = seqs[-1]
            self.counters["events_sent"] += len(seqs)
            self.counters["event_messages"] += 1

    def _history_allowed(self) -> bool:
        """Token bucket on backlog messages: a subscriber's broker queue must not overflow."""
        rate = self.s.history_rate_per_s
        now = time.monotonic()
        burst = max(1.0, min(rate, float(self._window)))
        self._history_tokens = min(burst, self._history_tokens + (now - self._history_last) * rate)
        self._history_last = now
        if self._history_tokens >= 1.0:
            self._history_tokens -= 1.0
            return True
        return False

    def _finish(self) -> None:
        """Worker's last act at close(): store everything offered; deliver for a short while."""
        self._store_offered()
        deadline = time.monotonic() + CLOSE_DRAIN_S
        while time.monotonic() < deadline and self._connected:
            self._process_acks()
            self._publish_replies()
            self._drain(self.clock())
            if not self._inflight and not self._rows and \
                    self.outbox.pending <= len(self._done):
                break
            self._wake.wait(TICK_S)
            self._wake.clear()
        self._process_acks(force=True)
        if self.outbox.pending:
            log.warning("plant link: %d events left in the outbox; they are sent at the next start",
                        self.outbox.pending)
