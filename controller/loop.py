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

from cellspec.names import INPUTS, OUTPUTS, SENSORS
from controller.core import Core
from controller.rules import BOOT, PLATFORM_ALARM_NAMES

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
        # A scan that starts more than this many periods after its slot (a stalled process: SIGSTOP,
        # a real-time hog, a hung disk) trips scan_overrun at once: the stall is the lost reaction time.
        self.overrun_limit = int(config.overrun_trip_count)
        self.late_limit_periods = float(getattr(config, "late_scan_trip_periods", 5))
        self.stalls = 0                 # scans that started too late (each tripped)
        self.worst_lateness_s = 0.0
        self.scans = 0
        self.write_ok = True
        self.notifier = notifier
        self.ready_sent = False
        self._status_state = -1         # state and persist_gen last told to systemd (STATUS=)
        self._status_gen = -1
        self.next_watchdog = 0.0
        self.watchdog_half_s = None
        if notifier is not None:
            interval = notifier.watchdog_interval_s()
            self.watchdog_half_s = interval / 2 if interval else None
        self.snapshot_every = snapshot_every
        self.snapshot_wanted = False
        self.latest: Snapshot | None = None
        self.stop_requested = False
        self.forced_safe = False        # run_* ended and put every output in its safe state
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
        # Board faults (disk, clock, files) reported by other threads: name -> monotonic expiry
        # (inf while the condition holds). The scan thread applies `_platform_names` when it changes.
        self._platform_lock = threading.Lock()
        self._platform_expiry: dict[str, float] = {}
        self._platform_names: tuple[str, ...] = ()
        self._platform_applied: tuple[str, ...] = ()
        self._persist_gen = -1
        self.latch_state: tuple[int, tuple[str, ...], bool, tuple[str, ...]] = (-1, (), True, ())
        self.publish_latch()

    def __getstate__(self) -> dict:
        """Snapshots of a loop (the fault-matrix tests copy one per state) leave the Event out."""
        state = self.__dict__.copy()
        del state["wake"]
        del state["_platform_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.wake = threading.Event()
        self._platform_lock = threading.Lock()

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

    def set_platform_alarm(self, name: str, active: bool) -> None:
        """A board fault that holds until told otherwise (e.g. `state_write_failed`). Any thread."""
        self._set_platform(name, float("inf") if active else None)

    def raise_platform_alarm(self, name: str, hold_s: float) -> None:
        """A momentary board fault (e.g. `journal_reopened`): an alarm for `hold_s`. Any thread."""
        self._set_platform(name, time.monotonic() + hold_s)

    def expire_platform_alarms(self, now: float | None = None) -> None:
        """Drop momentary alarms whose hold has passed (the pump calls this; the scan never does)."""
        now = time.monotonic() if now is None else now
        with self._platform_lock:
            if any(t <= now for t in self._platform_expiry.values()):
                self._platform_expiry = {n: t for n, t in self._platform_expiry.items() if t > now}
                self._platform_names = tuple(sorted(self._platform_expiry))

    def platform_alarms(self) -> tuple[str, ...]:
        return self._platform_names

    def _set_platform(self, name: str, expiry: float | None) -> None:
        if name not in PLATFORM_ALARM_NAMES:
            raise ValueError(f"unknown platform alarm {name!r}; known: {', '.join(PLATFORM_ALARM_NAMES)}")
        with self._platform_lock:
            table = dict(self._platform_expiry)
            if expiry is None:
                table.pop(name, None)
            else:
                table[name] = max(expiry, table.get(name, 0.0))
            self._platform_expiry = table
            names = tuple(sorted(table))
            if names != self._platform_names:
                # A new tuple only when the set changes: the scan applies it by identity, and the
                # pump re-asserts held alarms (i2c_bus_stuck) every pass.
                self._platform_names = names

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
        platform = self._platform_names
        if platform is not self._platform_applied:
            self._platform_applied = platform
            core.set_platform_alarms(platform)
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
        if self.notifier is not None:
            if core.state != self._status_state or core.persist_gen != self._status_gen:
                self._tell_status()
            if healthy:
                self._notify()

    def _tell_status(self) -> None:
        """systemctl status / StatusText: the state and the latched causes, sent on a change only
        (healthy or not: the status is information, not a sign of life)."""
        core = self.core
        self._status_state, self._status_gen = core.state, core.persist_gen
        text = core.state_name
        if core.latched:
            text += " causes: " + ",".join(core.causes())
        self.notifier.status(text)

    def _notify(self) -> None:
        notifier = self.notifier
        core = self.core
        if not self.ready_sent and core.state != BOOT:
            # READY only once the self-test has concluded (IDLE, or TRIPPED on a failed self-test
            # or a restored latch): `systemctl start` and install.sh --upgrade wait for it.
            notifier.ready()
            self.ready_sent = True
        if self.watchdog_half_s is not None:
            now = time.monotonic()
            if now >= self.next_watchdog:
                notifier.watchdog()
                self.next_watchdog = now + self.watchdog_half_s

    def _stalled(self, late: float, limit: float) -> None:
        """A scan starts `late` s after its slot, past the limit: nobody scanned for that long.

        It counts as overrun_trip_count late scans, so this very scan trips scan_overrun (and
        sends no heartbeat and no watchdog ping). The event tells the stall from slow scans.
        """
        self.stalls += 1
        if late > self.worst_lateness_s:
            self.worst_lateness_s = late
        if self.overruns < self.overrun_limit:
            self.overruns = self.overrun_limit
        self.events.append({"t": self.core.now / 1000.0, "type": "stall", "late_s": round(late, 3),
                            "limit_s": round(limit, 3)})

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
        now = self.core.clock_ms   # the raw clock the core last saw (its own time never steps back)
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
            self.forced_safe = True

    # -- real time ------------------------------------------------------------------------------
    def run_realtime(self, duration_s: float | None = None, speed: float = 1.0,
                     before_scan: Callable[[int], None] | None = None) -> None:
        """Scan every period on the monotonic clock; `speed` > 1 runs a simulated cell faster.

        A scan that ends after its successor should have started is late; late scans are
        counted, missed slots are skipped (never bursts), and `overrun_trip_count` consecutive
        ones trip. A scan that starts more than `late_scan_trip_periods` after its slot (the
        process was stalled: SIGSTOP, starved, a hung device) trips `scan_overrun` in that scan.
        """
        period_s = self.period_ms / 1000.0 / speed
        # In real seconds, whatever the speed: a simulated cell run 10x faster must not trip on a
        # 50 ms hiccup of a shared laptop (the stall limit then spans more simulated time).
        late_limit_s = self.late_limit_periods * self.period_ms / 1000.0
        mono = time.monotonic
        t0 = mono()
        start_ms = self.core.clock_ms
        next_t = t0
        end = None if duration_s is None else t0 + duration_s / speed
        try:
            while not self.stop_requested:
                now_wall = mono()
                if end is not None and now_wall >= end:
                    break
                late = now_wall - next_t     # after this scan's slot: a stall, or an overrun
                if self.lateness_s is not None:
                    self.lateness_s.append(late)
                if late > late_limit_s:
                    self._stalled(late, late_limit_s)
                    next_t = now_wall            # skip the missed slots (never a burst of scans)
                elif self.overruns and late > 0.0:
                    next_t = now_wall            # the last scan overran its slot: re-align here
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
                    # Late: the next slot has already begun. Count it; the next scan re-aligns.
                    self.overruns += 1
                    self.overruns_total += 1
                else:
                    self.overruns = 0
                    delay = next_t - mono()
                    if delay > 0:
                        time.sleep(delay)
        finally:
            self.io.force_safe()
            self.forced_safe = True


def _record_ids(pending: list[Command], events: list[dict]) -> None:
    """Put each command's id into its command event (the core makes one per command, in order)."""
    ids = iter([c[4] for c in pending])
    for e in events:
        if e.get("type") == "command":
            cmd_id = next(ids, None)
            if cmd_id is not None:
                e["id"] = cmd_id
                e["stage"] = "core"
