"""The fixed-period scan: read the HAL, step the core, write every output, hand over events.

Why it is built this way:
- The scan thread does no logging, no network and no file I/O. Events and snapshots leave it
  through a bounded deque; a pump thread (real time) or the caller (simulated time) drains it.
- Commands arrive from any thread through another deque and are applied at the next scan, so a
  command can never be half-applied and never bypasses the core's guards.
- Whatever ends the loop (stop request, SIGTERM, an exception anywhere) ends in `force_safe()`.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from controller.core import Core
from controller.names import INPUTS, OUTPUTS, SENSORS

EVENT_QUEUE_MAX = 100_000   # events waiting for the pump; past it the oldest are dropped (counted)
COMMAND_QUEUE_MAX = 1_000   # commands waiting for a scan; past it new ones are refused


@dataclass(slots=True)
class Snapshot:
    """What the plant link and the console need of one scan (copied, so threads never share)."""

    t: float
    state: str
    since: float
    values: list[float]
    quality: list[str]
    voted_o2: float
    inputs: list[bool]
    outputs: list[bool]
    causes: list[str]
    alarms: list[tuple[str, str, bool]]
    scans: int
    overruns_total: int

    def sensor_dict(self) -> dict[str, tuple[float, str]]:
        return {SENSORS[i]: (self.values[i], self.quality[i]) for i in range(len(SENSORS))}

    def inputs_dict(self) -> dict[str, bool]:
        return dict(zip(INPUTS, self.inputs, strict=True))

    def outputs_dict(self) -> dict[str, bool]:
        return dict(zip(OUTPUTS, self.outputs, strict=True))


Reply = Callable[[bool, str, str], None]   # accepted, reason, resulting state
# A queued command: action, source, reply, operator (by), the caller's id (plant link).
Command = tuple[str, str, Reply | None, str | None, str | None]


class ScanLoop:
    """Runs a Core against a HAL backend. One instance per process."""

    def __init__(self, config: Any, io: Any, *, start_ms: int = 0, notifier: Any = None,
                 snapshot_every: int = 0):
        self.config = config
        self.io = io
        self.core = Core(config.core_params(), start_ms)
        self.period_ms = int(round(config.scan_period_s * 1000))
        self.events: collections.deque[dict] = collections.deque()
        self.events_dropped = 0
        self.commands: collections.deque[Command] = collections.deque()
        self.overruns = 0               # consecutive late scans
        self.overruns_total = 0
        self.scans = 0
        self.write_ok = True
        self.notifier = notifier
        self.ready_sent = False
        self.next_watchdog = 0.0
        self.watchdog_half_s = None
        if notifier is not None:
            interval = notifier.watchdog_interval_s()
            self.watchdog_half_s = interval / 2 if interval else None
        self.snapshot_every = snapshot_every
        self.snapshot_wanted = False
        self.latest: Snapshot | None = None
        self.stop_requested = False
        self.last_scan_s = 0.0          # cost of the last scan (s), for the status line
        # Worst scan cost per window (run_realtime only): kept by the scan thread alone with two
        # compares a scan, no lock; read by the plant link through worst_scan_s().
        self.scan_window_s = 60.0
        self._scan_max_now = 0.0        # this window so far
        self._scan_max_prev = 0.0       # the window before
        self._scan_window_end = 0.0
        self._pending: list[Command] = []
        self.lateness_s: list[float] | None = None   # benchmarks: scan start minus its slot
        self.wake = threading.Event()   # set when events wait: the pump need not poll
        # Calibration status handed in by another thread: (due names, overdue names), applied at a scan.
        self._calibration: tuple[tuple[str, ...], tuple[str, ...]] | None = None
        self._calibration_applied: tuple[tuple[str, ...], tuple[str, ...]] | None = None
        # What must survive a restart, as an immutable tuple the pump thread may read at any time:
        # (persist_gen, latched causes, trip acknowledged, acknowledged active alarms).
        self._persist_gen = -1
        self.latch_state: tuple[int, tuple[str, ...], bool, tuple[str, ...]] = (-1, (), True, ())
        self.publish_latch()

    def __getstate__(self) -> dict:
        """Snapshots of a loop (the fault-matrix tests copy one per state) leave the Event out."""
        state = self.__dict__.copy()
        del state["wake"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.wake = threading.Event()

    # -- called from any thread ----------------------------------------------------------------
    def submit(self, action: str, source: str, reply: Reply | None = None, *, by: str | None = None,
               id: str | None = None) -> bool:
        """Queue a command for the next scan; False (and no reply) if the queue is full.

        by: who sent it (an operator name from the plant link), recorded in the command event.
        id: the caller's command id (plant link); recorded in the command event with
            "stage": "core", so the journal, the event log and MQTT carry the same record.
        """
        if len(self.commands) >= COMMAND_QUEUE_MAX:
            return False
        self.commands.append((action, source, reply, by, id))
        return True

    def record_event(self, event: dict) -> None:
        """Hand over an event made outside the core (the plant link's refused commands).

        It joins the core's events: the pump numbers it, journals it, writes it to the event log
        and offers it to the link, like any other. Any thread; one append, one flag.
        """
        self.events.append(event)
        self.wake.set()

    def worst_scan_s(self) -> float:
        """The longest scan of the last minute: the worst of this window and the one before."""
        prev, now = self._scan_max_prev, self._scan_max_now
        return prev if prev > now else now

    def set_calibration(self, due: tuple[str, ...] | list[str], overdue: tuple[str, ...] | list[str]) -> None:
        """Gas sensors due for a bump test or calibration, and those overdue beyond the grace."""
        self._calibration = (tuple(due), tuple(overdue))

    def publish_latch(self) -> None:
        """Copy what must survive a restart into `latch_state` (only when the core says it changed)."""
        core = self.core
        if core.persist_gen != self._persist_gen:
            self._persist_gen = core.persist_gen
            trip_acked, acked = core.ack_state()
            self.latch_state = (core.persist_gen, tuple(core.causes()), trip_acked, tuple(acked))

    def request_snapshot(self) -> None:
        self.snapshot_wanted = True

    def stop(self) -> None:
        self.stop_requested = True

    def drain_events(self) -> list[dict]:
        out = []
        pop = self.events.popleft
        while self.events:
            out.append(pop())
        return out

    # -- the scan ------------------------------------------------------------------------------
    def initial_events(self) -> list[dict]:
        """The first lines of an event log: where the controller starts."""
        core = self.core
        t = core.now / 1000.0
        return [{"t": t, "type": "state", "from": None, "to": core.state_name, "cause": "start"},
                {"t": t, "type": "outputs", "outputs": core.outputs_dict()}]

    def scan(self, now_ms: int) -> None:
        io = self.io
        core = self.core
        readings = io.read_sensors(now_ms)
        inputs = io.read_inputs(now_ms)
        pending = self._pending
        if self.commands:
            pop = self.commands.popleft
            while self.commands:
                pending.append(pop())
            cmds = tuple((c[0], c[1]) if c[3] is None else (c[0], c[1], c[3]) for c in pending)
        else:
            cmds = ()
        cal = self._calibration
        if cal is not self._calibration_applied:
            self._calibration_applied = cal
            if cal is not None:
                core.set_calibration(cal[0], cal[1])
        outputs = core.step(now_ms, readings, inputs, cmds, self.overruns, self.write_ok)
        self.write_ok = bool(io.write_outputs(outputs))
        self.scans += 1
        if pending:
            state = core.state_name
            for (_a, _s, reply, _by, _id), (accepted, reason) in zip(pending, core.command_results,
                                                                     strict=False):
                if reply is not None:
                    reply(accepted, reason, state)
            for c in pending:
                if c[4] is not None:
                    _record_ids(pending, core.events)
                    break
            pending.clear()
        ev_waiting = bool(core.events)
        if ev_waiting:
            ev = self.events
            ev.extend(core.events)
            core.events.clear()
            while len(ev) > EVENT_QUEUE_MAX:
                ev.popleft()
                self.events_dropped += 1
        if core.persist_gen != self._persist_gen:
            self.publish_latch()
            self.wake.set()   # a changed latch is written at once, not at the next poll
        elif ev_waiting:
            self.wake.set()
        healthy = self.write_ok and self.overruns == 0
        if healthy:
            io.heartbeat()   # the external watchdog relay drops the outputs when this stops
        if self.snapshot_wanted or (self.snapshot_every and self.scans % self.snapshot_every == 0):
            self.snapshot_wanted = False
            self.latest = self.snapshot()
        if self.notifier is not None and healthy:
            self._notify()

    def _notify(self) -> None:
        notifier = self.notifier
        if not self.ready_sent:
            notifier.ready()
            self.ready_sent = True
        if self.watchdog_half_s is not None:
            now = time.monotonic()
            if now >= self.next_watchdog:
                notifier.watchdog()
                self.next_watchdog = now + self.watchdog_half_s

    def snapshot(self) -> Snapshot:
        core = self.core
        h = core.health
        return Snapshot(
            t=core.now / 1000.0, state=core.state_name, since=core.state_since / 1000.0,
            values=list(h.value), quality=list(h.quality), voted_o2=core.voted_o2,
            inputs=list(core.inputs), outputs=list(core.outputs),
            causes=core.causes() if core.latched else [],
            alarms=core.active_alarms() if any(core.alarm_active) else [],
            scans=self.scans, overruns_total=self.overruns_total,
        )

    # -- simulated time -------------------------------------------------------------------------
    def run_simulated(self, until_ms: int, before_scan: Callable[[int], None] | None = None,
                      after_scan: Callable[[], None] | None = None) -> None:
        """Scan as fast as the CPU allows, the clock advancing one period per scan."""
        now = self.core.now
        try:
            while now <= until_ms and not self.stop_requested:
                if before_scan is not None:
                    before_scan(now)
                self.scan(now)
                if after_scan is not None:
                    after_scan()
                now += self.period_ms
        finally:
            self.io.force_safe()

    # -- real time ------------------------------------------------------------------------------
    def run_realtime(self, duration_s: float | None = None, speed: float = 1.0,
                     before_scan: Callable[[int], None] | None = None) -> None:
        """Scan every period on the monotonic clock; `speed` > 1 runs a simulated cell faster.

        A scan that ends after its successor should have started is late; late scans are
        counted, missed slots are skipped (never bursts), and consecutive ones trip.
        """
        period_s = self.period_ms / 1000.0 / speed
        mono = time.monotonic
        t0 = mono()
        start_ms = self.core.now
        next_t = t0
        end = None if duration_s is None else t0 + duration_s / speed
        try:
            while not self.stop_requested:
                now_wall = mono()
                if end is not None and now_wall >= end:
                    break
                if self.lateness_s is not None:
                    self.lateness_s.append(now_wall - next_t)
                now_ms = start_ms + int((now_wall - t0) * 1000.0 * speed)
                if before_scan is not None:
                    before_scan(now_ms)
                self.scan(now_ms)
                done = mono()
                cost = self.last_scan_s = done - now_wall
                if cost > self._scan_max_now:
                    self._scan_max_now = cost
                if done >= self._scan_window_end:
                    self._scan_max_prev, self._scan_max_now = self._scan_max_now, 0.0
                    self._scan_window_end = done + self.scan_window_s
                next_t += period_s
                if done > next_t:
                    # Late: the next slot has already begun. Count it and re-align.
                    self.overruns += 1
                    self.overruns_total += 1
                    next_t = done
                else:
                    self.overruns = 0
                    delay = next_t - mono()
                    if delay > 0:
                        time.sleep(delay)
        finally:
            self.io.force_safe()


def _record_ids(pending: list[Command], events: list[dict]) -> None:
    """Put each command's id into its command event (the core makes one per command, in order)."""
    ids = iter([c[4] for c in pending])
    for e in events:
        if e.get("type") == "command":
            cmd_id = next(ids, None)
            if cmd_id is not None:
                e["id"] = cmd_id
                e["stage"] = "core"
