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
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from controller import __version__
from controller.link import client as mq
from controller.link import commands, payloads
from controller.link.client import LinkConfigError
from controller.link.outbox import Outbox, OutboxError
from controller.link.pacing import Backoff, LogThrottle

log = logging.getLogger("crushcell.link")

TICK_S = 0.02            # the worker's longest sleep: bounds reply latency when nothing wakes it
REPLY_QUEUE_MAX = 256    # replies waiting to be published; beyond it they are dropped (counted)
AUDIT_RATE_PER_S = 5.0   # link-refused commands written to the event log: this rate on average,
AUDIT_BURST = 50         # bursts up to this; past it they are counted and summarised
DELETE_BATCH = 500       # acknowledged rows deleted in one transaction...
DELETE_EVERY_S = 0.2     # ...or at least this often
PREFETCH = 2000          # outbox rows read at once while draining
CLOSE_DRAIN_S = 2.0      # on clean shutdown, time given to deliver the rest of the backlog
SUPERVISE_EVERY_S = 1.0  # the supervisor looks at paho's thread and the acknowledgements this often
ACK_STALL_S = 30.0       # connected, messages in flight, no PUBACK for this long: restart the client
RESTART_MIN_S = 10.0     # at most one restart per this many seconds
LOG_EVERY_S = 60.0       # repeated warnings (outbox full, connect failures, errors): one line per this
HEALTH_STATUS_MIN_S = 10.0   # status re-published for a health change (overruns, drops, I/O faults,
                             # restarts) at most this often; telemetry carries health every period

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
        self.resolutions = {name: getattr(sc, "resolution", None)
                            for name, sc in getattr(config, "sensors", {}).items()}
        self.client_id = s.client_id or f"crushcell-{config.cell_id}"
        # Supervision (issue 10): `restarts` counts how often the supervisor replaced paho's
        # client (dead network thread, stalled acknowledgements); status carries it.
        self.restarts = 0
        self.ack_stall_s = ACK_STALL_S
        self._callback_log = LogThrottle(LOG_EVERY_S)
        self._connect_fail_log = LogThrottle(LOG_EVERY_S)
        self._connect_fail_why = ""
        self._outbox_full_log = LogThrottle(LOG_EVERY_S)
        self._worker_error_log = LogThrottle(LOG_EVERY_S)
        self._backoff = Backoff(s.reconnect_min_s, s.reconnect_max_s)
        self._net_started = False
        self._supervise_at = 0.0
        self._restart_at = 0.0                       # monotonic: no restart before this
        self._ack_progress_at = time.monotonic()     # last PUBACK, or when something began to wait
        self.client = None   # callbacks from any client but the current one are ignored
        self.client = self._new_client()
        self._window = s.publish_window
        self.receive_maximum = 0
        self.outbox = Outbox(os.path.join(state_dir, f"outbox-{config.cell_id}.sqlite3"),
                             s.outbox_max_events, s.outbox_sync)

        # Hand-over queues (deque append/popleft are atomic: no locks on the loop's threads).
        self._offered: collections.deque[tuple[float, dict]] = collections.deque()
        self._replies: collections.deque[dict] = collections.deque()
        self._acked: collections.deque[tuple[Any, int]] = collections.deque()   # (client, mid)
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
        self._next_telemetry = 0.0                   # monotonic: the next telemetry is due then
        self._status_due = True
        self._status_old: Any = None
        self._status_last: dict | None = None
        self._history_tokens = 0.0
        self._history_last = 0.0
        self._health_key: tuple | None = None        # the health counts the last status carried
        self._health_status_at = 0.0                 # monotonic time of the last status

        # Set from paho's thread, read by the worker.
        self._connected = False
        self._birth_due = False
        self._ha_due = False
        self._limits = commands.ClientLimits(s.command_rate_per_s)   # per `by`; stop/shutdown exempt
        self._recent_ids = commands.RecentIds()
        self._audit_limit = commands.RateLimit(AUDIT_RATE_PER_S, time.monotonic(), burst=AUDIT_BURST)
        self._audit_suppressed = 0
        # The audit limiter is used from paho's thread (_refuse) and the worker (_audit_summary):
        # without the lock a refusal could be counted both one by one and in a summary.
        self._audit_lock = threading.Lock()
        self.counters = collections.Counter()
        self._last_refusal_log = 0.0
        # The Sparkplug B face (docs/sparkplug.md): off unless [sparkplug] enabled; a client of
        # its own (its own last will), the same broker, snapshots and command path.
        self.sparkplug: Any = None
        sp = getattr(config, "sparkplug", None)
        if sp is not None and sp.enabled:
            from controller.link.sparkplug.node import SparkplugNode
            self.sparkplug = SparkplugNode(config, self, state_dir, clock)

    # -- public --------------------------------------------------------------------------------------
    def start(self) -> None:
        self._worker = threading.Thread(target=self._run, name="crushcell-link", daemon=True)
        self._worker.start()
        self.loop.request_snapshot()
        mq.start(self.client, self.host, self.port, self.s.keepalive_s)
        self._net_started = True
        if self.sparkplug is not None:
            self.sparkplug.start()
        log.info("plant link: broker %s:%d, topics %s/#, outbox %s (%d waiting, %d dropped so far)",
                 self.host, self.port, self.base, self.outbox.path, self.outbox.pending, self.outbox.dropped)

    def offer_event(self, event: dict) -> None:
        """Called by the pump for every event-log record. Quick: one append, one flag."""
        self._offered.append((self.clock(), event))
        self._wake.set()
        if self.sparkplug is not None:
            self.sparkplug.offer_event(event)

    def close(self, timeout: float = 5.0) -> None:
        """Clean shutdown: store the last events, deliver what we can, publish offline, disconnect."""
        if self.sparkplug is not None:
            try:
                self.sparkplug.close(timeout)   # NDEATH first: the host marks the node offline
            except Exception:
                log.exception("sparkplug: error while closing the edge node")
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

    # -- the paho client: built here, replaced by the supervisor -------------------------------------
    def _new_client(self) -> Any:
        """A configured, unconnected paho client with our (guarded) callbacks."""
        s = self.s
        password = mq.read_password(s)
        client = mq.make_client(s, self.client_id, password=password, will=(self.t_avail, payloads.OFFLINE))
        del password
        # paho's own cap on unacknowledged QoS 1 messages (fixed before connecting): our event
        # window plus room for status, availability and replies.
        client.max_inflight_messages_set(s.publish_window + 8)
        client.on_connect = self._guard("on_connect", self._on_connect)
        client.on_connect_fail = self._guard("on_connect_fail", self._on_connect_fail)
        client.on_disconnect = self._guard("on_disconnect", self._on_disconnect)
        client.on_publish = self._guard("on_publish", self._on_publish)
        client.on_message = self._guard("on_message", self._on_message)
        return client

    def _guard(self, name: str, callback: Callable[..., None]) -> Callable[..., None]:
        """Wrap a paho callback: it never raises, and a client the link replaced is not heard.

        Hazard: an exception escaping a callback stops paho's network thread; the link then
        looks online (the socket stays open, telemetry is queued) but never answers again.
        """
        def guarded(client: Any, *args: Any) -> None:
            if client is not self.client:
                return   # a retired client's late callback (its message ids mean nothing now)
            try:
                callback(client, *args)
            except Exception:
                self.counters["callback_errors"] += 1
                n = self._callback_log.hit()
                if n is not None:
                    log.exception("plant link: error in paho callback %s (%d since the last report); "
                                  "the link carries on", name, n)
        return guarded

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
        self._ack_progress_at = time.monotonic()
        self._connected = True
        self.counters["connects"] += 1
        self._backoff.reset()
        if self._connect_fail_why:
            log.warning("plant link: connected to %s:%d (after %d failed attempt(s) in all)",
                        self.host, self.port, self._connect_fail_log.total)
            self._connect_fail_log = LogThrottle(LOG_EVERY_S)
            self._connect_fail_why = ""
        # Subscriptions are renewed on every connect (clean session: the broker forgot them).
        mq.subscribe(client, self.t_cmd, qos=1)
        if self.s.homeassistant_discovery:
            mq.subscribe(client, self.t_ha_status, qos=1)
            self._ha_due = True
        client.publish(self.t_avail, payloads.ONLINE, qos=1, retain=True)
        self._birth_due = True
        self._wake.set()
        log.info("plant link: connected to %s:%d", self.host, self.port)

    def _on_disconnect(self, client: Any, _userdata: Any, _flags: Any, reason_code: Any,
                       _props: Any) -> None:
        if self._connected and not self._stop.is_set():
            log.warning("plant link: disconnected from %s:%d (%s); events wait in the outbox",
                        self.host, self.port, mq.connack_text(reason_code))
        self._connected = False
        self.counters["disconnects"] += 1
        mq.set_next_delay(client, self._backoff.next())

    def _on_connect_fail(self, client: Any, _userdata: Any) -> None:
        """A connection attempt failed before CONNACK: socket refused or timed out, DNS, TLS.

        paho calls this inside its `except OSError`, so the error is the one being handled. The
        first failure and any new kind of failure are logged at once, repeats once a minute.
        """
        self.counters["connect_failed"] += 1
        why = mq.connect_error_text(sys.exc_info()[1])
        delay = self._backoff.next()
        mq.set_next_delay(client, delay)
        if why != self._connect_fail_why:
            self._connect_fail_why = why
            self._connect_fail_log.last = None   # a new kind of failure is said at once
        n = self._connect_fail_log.hit()
        if n is not None:
            over = " over TLS" if self.s.tls else ""
            log.warning("plant link: cannot connect to %s:%d%s: %s (%d attempt(s) since the last report; "
                        "retrying every %g s at most)", self.host, self.port, over, why, n,
                        self._backoff.max_s)

    def _on_publish(self, client: Any, _userdata: Any, mid: int, _reason_code: Any, _props: Any) -> None:
        self._acked.append((client, mid))
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
        if parsed is None:
            # Empty: the documented way to clear a stuck retained command. No reply, no audit.
            self.counters["commands_empty"] += 1
            return
        self.submit_command(parsed)

    def submit_command(self, parsed: commands.Command | commands.Refusal,
                       deliver: Callable[[dict], None] | None = None) -> None:
        """The one path of every remote command, JSON or Sparkplug: duplicate ids and the rate
        limit refused here, the rest to the scan loop, which decides; the same audit records.

        deliver: where the reply goes (any thread: append only, never block, never raise);
        None: the JSON `cmd/reply` topic.
        """
        now = time.monotonic()
        if isinstance(parsed, commands.Command):
            if self._recent_ids.check(parsed.id, now):
                # Hazard: a captured command replayed later would act again.
                parsed = commands.Refusal(parsed.id, parsed.action, parsed.by,
                                          "duplicate id: a command with this id was already received; "
                                          "use a new id for every command")
            elif not self._limits.allow(parsed.by, parsed.action, now):
                parsed = commands.Refusal(parsed.id, parsed.action, parsed.by,
                                          f"rate limit: more than {self.s.command_rate_per_s:g} commands "
                                          "per second from this 'by'; try again (stop and shutdown are "
                                          "never limited)")
        if isinstance(parsed, commands.Refusal):
            self._refuse(parsed, deliver)
            return
        cmd_id, action, by = parsed.id, parsed.action, parsed.by
        replies, clock = self._replies, self.clock

        def reply(accepted: bool, reason: str, state: str) -> None:
            # Runs on the SCAN THREAD: append only, never block, never raise.
            body = payloads.reply(cmd_id, accepted, reason, state, ts=clock(), action=action)
            if deliver is not None:
                deliver(body)
            elif len(replies) < REPLY_QUEUE_MAX:
                replies.append(body)

        # The loop records by and id in the core's command event ("stage": "core"): the journal,
        # the event log and MQTT carry the same record under the same seq.
        if not self.loop.submit(action, "remote", reply, by=by, id=cmd_id):
            self._refuse(commands.Refusal(cmd_id, action, by, "command queue full; try again"), deliver)
            return
        self._recent_ids.remember(cmd_id, now)
        self.counters["commands_submitted"] += 1

    def _audit_summary(self) -> None:
        """A flood of refused commands left some out of the event log: say how many (worker)."""
        if not self._audit_suppressed:
            return
        with self._audit_lock:
            if not (self._audit_suppressed and self._audit_limit.allow(time.monotonic())):
                return
            n, self._audit_suppressed = self._audit_suppressed, 0
        snap = self.loop.latest
        self._audit({"t": snap.t if snap is not None else None, "type": "command", "action": None,
                     "source": "remote", "accepted": False, "id": None, "by": None, "stage": "link",
                     "reason": f"{n} more refused commands not logged one by one (flood)",
                     "suppressed": n})

    def _audit(self, record: dict) -> None:
        """A command the link refused joins the loop's event stream, when the loop takes one: the
        pump numbers it, journals it, writes it to --events and offers it back to us, so the journal
        and MQTT carry the same record under one seq. Any thread: one append, one flag."""
        record_event = getattr(self.loop, "record_event", None)
        if callable(record_event):
            record_event(record)
        else:   # a loop without an event stream (tests' FakeLoop): straight to the outbox
            self.offer_event(record)

    def _refuse(self, r: commands.Refusal, deliver: Callable[[dict], None] | None = None) -> None:
        self.counters["commands_refused"] += 1
        state = self._status_last["state"] if self._status_last else None
        # A client that keeps being refused gets a burst of replies, then its command rate: every
        # operator receives every reply, and one client's flood must not bury theirs.
        if not self._limits.notify(r.by or "", time.monotonic()):
            self.counters["replies_suppressed"] += 1
        elif deliver is not None:
            deliver(payloads.reply(r.id, False, r.reason, state, ts=self.clock(), action=r.action))
        # Refusals may fill only half the reply queue: the other half stays free for the core's
        # answers, so a flood of refused commands cannot crowd out another operator's reply.
        elif len(self._replies) < REPLY_QUEUE_MAX // 2:
            self._replies.append(payloads.reply(r.id, False, r.reason, state, ts=self.clock(),
                                                action=r.action))
            self._wake.set()
        else:
            self.counters["replies_dropped"] += 1
        # Audit: refused commands go to the event log too, but a flood must not fill the outbox.
        with self._audit_lock:
            allowed = self._audit_limit.allow(time.monotonic())
            if allowed:
                suppressed, self._audit_suppressed = self._audit_suppressed, 0
            else:
                self._audit_suppressed += 1
        if allowed:
            snap = self.loop.latest
            record = {"t": snap.t if snap is not None else None, "type": "command", "action": r.action,
                      "source": "remote", "accepted": False, "reason": r.reason, "id": r.id, "by": r.by,
                      "stage": "link"}
            if suppressed:
                record["suppressed"] = suppressed
            self._audit(record)

    # -- worker ----------------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(TICK_S)
            self._wake.clear()
            try:
                self._step()
            except Exception:   # never let the link take anything else down; say what happened
                # A failed pass (a full disk under the outbox, say) is logged and counted and the
                # worker carries on: the next pass may succeed, and the supervisor keeps watching.
                self.counters["worker_errors"] += 1
                n = self._worker_error_log.hit()
                if n is not None:
                    log.exception("plant link: worker pass failed (%d since the last report); "
                                  "the controller runs on and the link retries", n)
                self._stop.wait(1.0)
        try:
            self._finish()
        except Exception:
            log.exception("plant link: could not finish delivering at shutdown; the rest stays in the outbox")
            self.counters["worker_crashed"] += 1

    def _step(self) -> None:
        self._supervise()
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
            if event.get("type") in status_events:
                self._want_status()
            body, seq = payloads.event_body(event, ts)
            rows.append((ts, body, seq))
        dropped = self.outbox.append(rows)
        if dropped:
            # Said the first time, then at most once a minute with the count (SD-card wear).
            self._report_outbox_full(self._outbox_full_log.hit(dropped))
            self._want_status()

    def _report_outbox_full(self, n: int | None) -> None:
        if n is not None:
            log.warning("plant link: outbox full (%d events): dropped the %d oldest since the last report "
                        "(at most one report a minute); %d dropped in all", self.outbox.max_events, n,
                        self.outbox.dropped)

    def _process_acks(self, force: bool = False) -> None:
        acked = self._acked
        done = self._done
        inflight = self._inflight
        client = self.client
        while acked:
            by, mid = acked.popleft()
            seqs = inflight.pop(mid, None) if by is client else None
            if seqs:
                done.extend(seqs)
                self._ack_progress_at = time.monotonic()
        # Deleting is batched (one transaction per DELETE_BATCH rows or DELETE_EVERY_S): a crash
        # in between only means those acknowledged events are sent again (same seq) at restart.
        if done and (force or len(done) >= DELETE_BATCH or time.monotonic() >= self._delete_at):
            self.outbox.delete(done)
            self.counters["events_acked"] += len(done)
            done.clear()
            self._delete_at = time.monotonic() + DELETE_EVERY_S

    # -- supervisor (worker thread) ---------------------------------------------------------------
    def _supervise(self) -> None:
        """Notice a link that looks alive but is not, and replace paho's client (counted, logged).

        Hazard: paho's network thread can die (an exception escaping paho, a bug) while the socket
        stays open; availability then stays `online` and nothing says that events and commands
        have stopped. Also: connected, messages in flight, and no PUBACK for ack_stall_s.
        """
        now = time.monotonic()
        if now < self._supervise_at:
            return
        self._supervise_at = now + SUPERVISE_EVERY_S
        self._report_outbox_full(self._outbox_full_log.flush())
        if not self._inflight:
            self._ack_progress_at = now   # nothing waits for an acknowledgement
        if not self._net_started or self._stop.is_set() or now < self._restart_at:
            return
        why = None
        if not mq.network_alive(self.client):
            why = "paho's network thread has stopped"
        elif self._connected and now - self._ack_progress_at > self.ack_stall_s:
            why = (f"no PUBACK for {now - self._ack_progress_at:.0f} s with {len(self._inflight)} "
                   "event messages in flight")
        if why is not None:
            self._restart(why)

    def _restart(self, why: str) -> None:
        """Replace paho's client with a new one; events not yet acknowledged are sent again."""
        self._restart_at = time.monotonic() + RESTART_MIN_S
        self.restarts += 1
        log.warning("plant link: restarting the MQTT client: %s (restart %d since start)", why, self.restarts)
        self._process_acks(force=True)   # what the old client had acknowledged stays acknowledged
        try:
            new = self._new_client()
        except (LinkConfigError, OSError, ValueError) as exc:
            log.warning("plant link: cannot build a new MQTT client (%s); trying again in %g s", exc,
                        RESTART_MIN_S)
            return
        old, self.client = self.client, new   # from here the old client's callbacks are ignored
        self._connected = False
        mq.retire(old)
        # paho's queue went with the old client: every event not yet acknowledged is read again
        # from the outbox and sent again (same seq, flagged historical; consumers dedupe by seq).
        self._acked.clear()
        self._inflight.clear()
        self._rows.clear()
        self._fetched_seq = 0
        self._ack_progress_at = time.monotonic()
        self._backoff.reset()
        mq.start(new, self.host, self.port, self.s.keepalive_s)

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
        health = self._health()
        body = payloads.status(snap, ts=self.clock(), cell_id=self.config.cell_id, version=__version__,
                               config_sha256=getattr(self.config, "sha256", ""),
                               outbox_pending=self.outbox.pending, outbox_dropped=self.outbox.dropped,
                               health=health)
        self._health_key = self._trouble(health)
        self._health_status_at = time.monotonic()
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
        """now: the wall clock, the payload's `ts` only. The period runs on time.monotonic(): a
        wall clock stepped back (NTP, a hand-set clock) must not stop telemetry for the length
        of the step, nor a step forward make it burst."""
        mono = time.monotonic()
        if mono < self._next_telemetry:
            return
        period = self.s.telemetry_period_s
        self._next_telemetry = max(self._next_telemetry + period, mono + period / 2)
        snap = self.loop.latest
        self.loop.request_snapshot()   # read on the next period: the loop is never waited for
        if snap is None or not self._connected:
            return
        self._telemetry_seq += 1
        health = self._health()
        body = payloads.telemetry(snap, ts=now, seq=self._telemetry_seq, units=self.units, health=health,
                                  resolutions=self.resolutions)
        self.client.publish(self.t_telemetry, payloads.dumps(body), qos=0)
        # A count of trouble moved (late scans, dropped events, I/O faults, link restarts): the
        # retained status says so too, at most every HEALTH_STATUS_MIN_S.
        if self._trouble(health) != self._health_key and not self._status_due and \
                time.monotonic() - self._health_status_at >= HEALTH_STATUS_MIN_S:
            self._want_status()

    def _health(self) -> dict:
        """The loop's and the link's health (worker thread; plain reads of counters, no locks)."""
        loop = self.loop
        worst = getattr(loop, "worst_scan_s", None)
        return payloads.health(
            scans=getattr(loop, "scans", 0), overruns=getattr(loop, "overruns", 0),
            overruns_total=getattr(loop, "overruns_total", 0),
            scan_max_s=worst() if callable(worst) else getattr(loop, "last_scan_s", 0.0),
            events_dropped=getattr(loop, "events_dropped", 0),
            outbox_pending=self.outbox.pending, outbox_dropped=self.outbox.dropped,
            link_restarts=getattr(self, "restarts", 0), io_faults=self._io_faults())

    def _io_faults(self) -> dict[str, int]:
        """Failed reads per sensor from a backend that counts them (hardware); {} otherwise."""
        counts = getattr(getattr(self.loop, "io", None), "fault_counts", None)
        if not callable(counts):
            return {}
        try:
            return {str(k): int(v) for k, v in counts().items()}
        except Exception:   # a backend's counters must never stop the link; say nothing rather than lie
            return {}

    @staticmethod
    def _trouble(health: dict) -> tuple:
        return (health["overruns_total"], health["events_dropped"], health["outbox_dropped"],
                health["link_restarts"], tuple(sorted(health["io_faults"].items())))

    def _publish_discovery(self) -> None:
        for topic, cfg in payloads.homeassistant_configs(ha_prefix=self.s.homeassistant_prefix,
                                                          base=self.base, cell_id=self.config.cell_id,
                                                          version=__version__, units=self.units,
                                                          resolutions=self.resolutions,
                                                          telemetry_period_s=self.s.telemetry_period_s):
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
