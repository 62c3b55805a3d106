"""The running controller, wired: scan loop, event pump, persistence, plant link, signals, lock.

`crushcell run` (controller/cli.py) parses arguments and opens the backend; everything it then
runs is here, so that tests and benchmarks wire a controller exactly as `run` does without going
through the command line.

Why the pieces sit where they do:
- The scan thread does no I/O. The pump thread (Pump) moves events out of it: it numbers them and
  writes the latch and the journal (controller/persist.py), the event file, stdout (JSON lines
  only; the journal under systemd, with priorities) and the plant link. People's lines (banner,
  log, status line, summary) go to stderr (controller/logsetup.py, controller/console.py).
- Signals are handled in the main thread, which runs the scan loop: every one that would end or
  suspend the process stops the loop, and the loop's `finally` forces the outputs safe.
- One controller per state dir, decided by a kernel lock (flock), never by a pid file.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from controller import journald, logsetup
from controller.console import RunRecord, StatusLine
from controller.logsetup import TERMINAL_LOCK
from controller.persist import JOURNALED

EXIT_OK = 0


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit 2."""


BUS_RECOVERED_HOLD_S = 60.0   # i2c_bus_recovered stays active this long after a recovery
LOGGED_EVENTS = ("state", "trip", "command", "alarm", "sensor", "scenario", "config", "persist", "stall",
                 "end", "panel")
log = logging.getLogger("crushcell.run")


class Pump(threading.Thread):
    """Moves events out of the scan thread: to the event file, stdout (JSON lines; the journal
    under systemd) and the link; draws the status line on stderr."""

    def __init__(self, loop: Any, *, events_file: Any, show_status: bool, link: Any = None,
                 period_s: float = 0.25, echo: bool = True, persister: Any = None,
                 calibration: Any = None, trend: Any = None):
        super().__init__(name="crushcell-pump", daemon=True)
        self.loop = loop
        self.events_file = events_file
        self.show_status = show_status
        self.link = link
        self.period_s = period_s
        self.echo = echo   # JSON event lines on stdout (the journal under systemd)
        self.done = threading.Event()
        self.last_status = 0.0
        self.persister = persister        # latch file, event numbers, audit journal (controller.persist)
        self.calibration = calibration    # calibration records -> loop (controller.calibration)
        self.trend = trend                # run --telemetry: the rotated trend CSV (controller.trendcsv)
        self.journal_prefix = journald.stream_is_journal(sys.stderr)   # <3>, <4>, <6> for journalctl -p
        # The JSON event lines go to stdout (never mixed with prose, which goes to stderr); under
        # systemd stdout is the journal too, and they carry their own priorities.
        self.events_prefix = journald.stream_is_journal(sys.stdout)
        self.record = RunRecord()         # counts, trips and the end record, for the exit summary
        self.status = StatusLine(getattr(loop, "config", None)) if show_status else None   # on stderr
        self.failures = 0                 # flushes that raised (each reported once per kind)
        self._recoveries_seen = 0         # I2C bus recoveries already raised as an alarm
        self._failure_kinds: set[str] = set()

    def run(self) -> None:
        wake = self.loop.wake
        while not self.done.is_set():
            # Woken by the scan loop as soon as events wait; otherwise every period for the status line.
            wake.wait(self.period_s)
            wake.clear()
            self.safe_flush()
        self.safe_flush()

    def safe_flush(self) -> None:
        """flush(), and whatever goes wrong in it, the pump lives on: a dead pump would stop the
        latch file, the journal, stderr and MQTT for good while the cell runs."""
        try:
            self.flush()
        except Exception as exc:   # noqa: BLE001 - reported, counted, and the pump runs on
            self.failures += 1
            kind = type(exc).__name__
            if kind not in self._failure_kinds:
                self._failure_kinds.add(kind)
                try:
                    # Through logging: every line of the traceback carries <3> under the journal.
                    log.error("the event pump failed (%s: %s); it runs on", kind, exc, exc_info=True)
                except Exception:   # noqa: BLE001 - stderr itself may be what fails
                    pass

    def flush(self) -> None:
        loop = self.loop
        loop.expire_platform_alarms()
        self._bus_alarms()
        events = loop.drain_events()
        if self.persister is not None:
            self.persister.handle(events)   # numbers them (seq), journals, writes the latch
        self.record.feed(events, JOURNALED)   # for the exit summary: counts, trips, the end record
        if self.calibration is not None:
            self.calibration.tick(time.monotonic())
        if events:
            if self.events_file is not None:
                self.events_file.write(events)
            for e in events if self.echo else ():
                if e["type"] in LOGGED_EVENTS:
                    line = json.dumps(e, separators=(",", ":"), default=str)
                    if self.events_prefix:
                        line = journald.prefix(journald.event_priority(e)) + line
                    self._print(line, sys.stdout)
            if self.link is not None:
                for e in events:
                    self.link.offer_event(e)
        if self.trend is not None:
            # A row from the latest snapshot when one is due (the scan thread only copies its state
            # into a Snapshot when asked); the next flush reads the one asked for here.
            problem = self.trend.offer(loop.latest, time.time())
            loop.request_snapshot()
            if problem:
                self._print((journald.prefix(journald.WARNING) if self.journal_prefix else "")
                            + "crushcell: WARNING: " + problem, sys.stderr)
        now = time.monotonic()
        if self.show_status and now - self.last_status >= 0.25:
            self.last_status = now
            loop.request_snapshot()
            snap = loop.latest
            if snap is not None and self.status is not None:
                self.status.draw(snap)   # fitted to the terminal's width, never wrapped (console.py)

    def _bus_alarms(self) -> None:
        """I2C lock-ups the hardware backend counts (its sensors are already faulted: worst case)."""
        io = self.loop.io
        stuck = getattr(io, "buses_stuck", None)
        if stuck is None:
            return
        self.loop.set_platform_alarm("i2c_bus_stuck", bool(stuck()))
        recovered = sum(int(r.get("cleared", 0)) + int(r.get("power_cycles", 0))
                        for r in io.bus_recoveries().values())
        if recovered > self._recoveries_seen:
            self.loop.raise_platform_alarm("i2c_bus_recovered", BUS_RECOVERED_HOLD_S)
        self._recoveries_seen = recovered

    def _print(self, text: str, stream: Any) -> None:
        with TERMINAL_LOCK:
            if self.status is not None:
                self.status.clear()
            print(text, file=stream, flush=True)


def serve(args: argparse.Namespace, config: Any, io: Any, scenario: Any = None) -> int:
    """Run the scan loop on `io` until a signal, the duration or an error; outputs end safe."""
    from controller import scenario as sc
    from controller.loop import ScanLoop
    from controller.sdnotify import SystemdNotifier

    io.force_safe()   # start-up: every output in its safe state before the first scan
    notifier = SystemdNotifier()
    try:
        loop = ScanLoop(config, io, notifier=notifier)
        events_file = None
        stream = None
        if args.events:
            try:
                stream = open(args.events, "a", encoding="utf-8")  # noqa: SIM115
            except OSError as exc:
                raise UsageError(f"cannot write events to {args.events}: {exc.strerror or exc}") from None
            events_file = sc.EventLog(stream)
        trend = _open_trend(args, config)
        persister, tracker = _open_state(args, config, loop)
        start_records = persister.restore()   # a latched trip comes back before the first scan
        loop.publish_latch()
        _banner(args, config, scenario)
        link = _start_link(args, config, loop)
        if link is not None:
            # One sequence for the event log, the journal and MQTT: never behind what the outbox holds.
            persister.seq = max(persister.seq, link.outbox.last_seq)
        # The status line is for the person at the terminal: on stderr, with the logs (stdout is the
        # JSON event stream), so `crushcell run > events.jsonl` still shows it.
        show_status = args.status if args.status is not None else sys.stderr.isatty()
        pump = Pump(loop, events_file=events_file, show_status=show_status, link=link,
                    persister=persister, calibration=tracker, trend=trend)
        logsetup.set_before_emit(pump.status.clear if pump.status is not None else None)
        loop.events.extend(loop.initial_events())
        loop.events.extend(start_records)
        pump.start()

        stopped_by: list[int] = []

        def on_signal(signum: int, _frame: Any) -> None:
            if not stopped_by:
                stopped_by.append(signum)
                if signum == signal.SIGQUIT:
                    faulthandler.dump_traceback(all_threads=True)   # quit with a diagnosis
                notifier.stopping()
            loop.stop()

        install_signal_handlers(on_signal)
        player = sc.Player(scenario, loop) if scenario else None
        panel = _open_panel(args, io, loop)   # the simulated cell's field panel; never on the hardware
        duration = args.duration
        if duration is None and scenario is not None:
            duration = scenario.duration_s
        try:
            loop.run_realtime(duration_s=duration, speed=args.speed,
                              before_scan=panel.hook(player) if panel is not None else player)
        finally:
            if panel is not None:
                panel.close()
            why = {"signal": signal_name(stopped_by[0])} if stopped_by else {}
            loop.events.append(sc.end_record(loop, **why))
            pump.done.set()
            loop.wake.set()
            pump.join(timeout=5)
            persister.close()
            if link is not None:
                link.close()
            if stream is not None:
                stream.close()
            if trend is not None:
                trend.close()
            if pump.status is not None:
                pump.status.clear()
            logsetup.set_before_emit(None)
            _summary(args, config, pump.record, stopped_by, scenario, failed=sys.exc_info()[0] is not None)
    finally:
        io.force_safe()   # whatever ended the loop: signal, duration, exception
    if stopped_by and stopped_by[0] not in (signal.SIGTERM, signal.SIGINT):
        # Not a stop anyone asked for: exit as the signal would have (128 + N), so that systemd's
        # Restart= starts the controller again (the latch is kept), and the status says why.
        return 128 + stopped_by[0]
    return EXIT_OK


def _banner(args: argparse.Namespace, config: Any, scenario: Any) -> None:
    """A few lines on stderr at start: what runs, on what, talking to whom, state where, how to stop."""
    from controller import __version__
    from controller.console import banner_lines

    hal = getattr(args, "hal", None) or getattr(config, "hal_backend", "?")
    if hal in ("sim", "mock"):   # mock: the simulated cell (hal.SIMULATED)
        detail = f"simulated cell, seed {scenario.seed if scenario else getattr(args, 'seed', 0)}"
        speed = getattr(args, "speed", 1.0)
        detail += f", {speed:g}x real time" if speed != 1.0 else ", real time"
        if scenario is not None:
            detail += f", scenario {getattr(args, 'scenario', '')} ({scenario.duration_s:g} s simulated)"
    else:
        detail = "I2C sensors and GPIO relays (docs/hardware.md)"
    if getattr(args, "no_mqtt", False):
        broker = "none (--no-mqtt): the cell runs without the plant link"
    elif not config.mqtt.enabled:
        broker = "none ([mqtt] enabled = false): the cell runs without the plant link"
    else:
        s = config.mqtt
        where = getattr(args, "broker", None) or f"{s.host}:{s.port}"
        broker = (f"{where}{' (TLS)' if s.tls else ''}, topics {s.topic_prefix}/{config.cell_id}/#: "
                  "connecting (the log says when connected, or why not)")
    systemd = journald.stream_is_journal(sys.stderr) or "INVOCATION_ID" in os.environ
    if systemd:
        stop = "systemctl stop crushcell (SIGTERM)"
    elif sys.stdin is not None and sys.stdin.isatty():
        stop = f"Ctrl-C or kill {os.getpid()} (SIGTERM)"
    else:
        stop = f"kill {os.getpid()} (SIGTERM)"
    stop += ": outputs go safe, a latched trip is kept"
    duration = getattr(args, "duration", None) or (scenario.duration_s if scenario is not None else None)
    if duration:
        speed = getattr(args, "speed", 1.0)
        stop += f"; ends by itself after {duration:g} s" + (
            f" simulated ({duration / speed:g} s at {speed:g}x)" if speed != 1.0 else "")
    for line in banner_lines(version=__version__, config=config, hal=hal, hal_detail=detail, broker=broker,
                             state_dir=args.state_dir, events_path=getattr(args, "events", None), stop=stop):
        log.info("%s", line, extra={"plain": True})
    log.debug("wiring: scan period %g s; JSON event lines on stdout (journal priorities: %s); logs on "
              "stderr (journal priorities: %s); python %s; argv %s", config.scan_period_s,
              "yes" if journald.stream_is_journal(sys.stdout) else "no",
              "yes" if journald.stream_is_journal(sys.stderr) else "no", sys.version.split()[0], sys.argv[1:])


def _summary(args: argparse.Namespace, config: Any, record: RunRecord, stopped_by: list[int],
             scenario: Any, failed: bool) -> None:
    """One summary on stderr at exit: final state, trips and causes, events, how to read the journal."""
    from controller.console import summary_lines

    if stopped_by:
        why = f"by {signal_name(stopped_by[0])}"
    elif failed:
        why = "by an error, reported below"
    elif getattr(args, "duration", None):
        why = f"--duration {args.duration:g} s reached"
    elif scenario is not None:
        why = "the scenario ended"
    else:
        why = "the loop ended"
    for line in summary_lines(record, state_dir=args.state_dir, events_path=getattr(args, "events", None),
                              why=why, config=config):
        log.info("%s", line, extra={"plain": True})


# Signals whose default action would end the process with the outputs as they were, and what
# crushcell does instead (docs/safety.md "Signals"). Faults of the process itself (SIGSEGV,
# SIGBUS, SIGFPE, SIGILL, SIGABRT) stay with faulthandler: it dumps every thread's stack and the
# process dies; the external watchdog relay drops the outputs. SIGKILL and SIGSTOP cannot be
# caught (a stop is caught by the stall trip when the process continues, and by the watchdogs).
DIAGNOSE_SIGNALS = ("SIGUSR1",)          # dump every thread's stack to stderr, run on
IGNORED_SIGNALS = ("SIGPIPE", "SIGXFSZ")  # the failing write reports EPIPE / EFBIG instead
NOT_STOPS = ("SIGKILL", "SIGSTOP", "SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL", "SIGABRT", "SIGCHLD",
             "SIGCONT", "SIGURG", "SIGWINCH") + DIAGNOSE_SIGNALS + IGNORED_SIGNALS


def signal_name(signum: int) -> str:
    """SIGHUP, ..., and SIGRTMIN+N for the real-time signals (they have no names)."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"SIGRTMIN+{signum - signal.SIGRTMIN}"


def stop_signals() -> list[signal.Signals]:
    """Every signal that stops the controller safely: each one that would otherwise end (or, for
    SIGTSTP, SIGTTIN and SIGTTOU, suspend) the process, real-time signals included."""
    out = []
    for sig in sorted(signal.valid_signals()):
        try:
            s = signal.Signals(sig)
        except ValueError:
            name = None
        else:
            name = s.name
        if name is None:
            if signal.SIGRTMIN <= sig <= signal.SIGRTMAX:
                out.append(sig)
            continue
        if name not in NOT_STOPS:
            out.append(s)
    return out


def install_signal_handlers(on_stop: Any) -> None:
    """Stop signals call `on_stop`; SIGUSR1 dumps the stacks; SIGPIPE and SIGXFSZ are ignored."""
    for sig in stop_signals():
        try:
            signal.signal(sig, on_stop)
        except (OSError, ValueError):   # a signal this kernel or runtime does not let us catch
            pass
    for name in IGNORED_SIGNALS:
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    for name in DIAGNOSE_SIGNALS:
        faulthandler.register(getattr(signal, name), all_threads=True, chain=False)


def _open_trend(args: argparse.Namespace, config: Any) -> Any:
    """`run --telemetry FILE.csv`: the trend CSV, rotated by size, written by the pump thread."""
    path = getattr(args, "telemetry", None)
    if not path:
        return None
    from controller import trendcsv

    try:
        return trendcsv.RotatingTrendFile(
            path, config, every_s=getattr(args, "telemetry_every", trendcsv.TREND_EVERY_S),
            max_bytes=getattr(args, "telemetry_max_bytes", trendcsv.TREND_MAX_BYTES),
            files=getattr(args, "telemetry_files", trendcsv.TREND_FILES))
    except OSError as exc:
        raise UsageError(f"cannot write telemetry to {path}: {exc.strerror or exc}") from None


def _open_state(args: argparse.Namespace, config: Any, loop: Any) -> tuple[Any, Any]:
    """The persistent latch and journal, and calibration tracking, in --state-dir."""
    from controller.calibration import Tracker
    from controller.persist import Persister

    # Never refuses to start: a state dir that cannot be written (read-only, full) leaves the safety
    # loop running with `state_write_failed` active (start refused) while the persister retries.
    persister = Persister(args.state_dir, loop, config, events_path=getattr(args, "events", None))
    tracker = Tracker(args.state_dir, config, loop, always=getattr(args, "hal", "sim") == "hardware")
    return persister, tracker


LOCK_FILE = "crushcell.lock"   # in the state dir; locked (flock) for as long as a controller lives
PID_FILE = "crushcell.pid"     # for `probe --outputs` and for people; the lock is what decides


def claim_state_dir(state_dir: str) -> tuple[Path, int]:
    """One controller per state dir: an exclusive flock on <state-dir>/crushcell.lock.

    Hazard: two controllers driving one cell. A pid file alone cannot tell: after a power cut
    or a kill -9 the recorded pid is often another process's at the next start (a restart 3 s
    after a kill -9 was refused). The kernel drops a flock when its process dies however it
    dies, so a dead controller never blocks a new one and a live one always does. The lock file
    is never deleted (deleting it would let two processes lock two different files).

    A full or read-only state dir must not keep the safety loop from running (the persister
    then raises state_write_failed, which refuses `start`): the lock file is opened read-only
    when it cannot be opened for writing (a flock needs no write access), the pid is written
    only where it can be, and a read-only dir that never had a lock file is locked itself.
    """
    import fcntl

    folder = Path(state_dir)
    lock_path, path = folder / LOCK_FILE, folder / PID_FILE
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if not folder.is_dir():
            raise UsageError(f"cannot use state dir {state_dir}: {exc.strerror or exc}") from None
    fd, what = _open_lock(folder, lock_path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        try:
            other = os.pread(fd, 32, 0).decode("ascii", "replace").strip() if what == lock_path else ""
        except OSError:
            other = ""
        os.close(fd)
        if isinstance(exc, BlockingIOError):
            who = f"pid {other}" if other.isdigit() else "another process"
            raise UsageError(f"another controller ({who}) already runs with state dir {state_dir}: it "
                             f"holds {what}. Two controllers must never drive one cell; stop that "
                             "one first (systemctl stop crushcell) or give a different --state-dir") from None
        raise UsageError(f"cannot lock {what}: {exc.strerror or exc}") from None
    mine = f"{os.getpid()}\n"
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, mine.encode("ascii"), 0)
    except OSError:
        pass   # read-only or full: the lock is what decides; the pid is only for people
    try:
        path.write_text(mine)   # replaces any stale one: the lock says it is ours
    except OSError:
        pass
    return path, fd


def _open_lock(folder: Path, lock_path: Path) -> tuple[int, Path]:
    """The lock file for writing; else read-only; else (never created, read-only dir) the dir."""
    try:
        return os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644), lock_path
    except OSError as first:
        try:
            return os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC), lock_path
        except FileNotFoundError:
            try:
                return os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), folder
            except OSError:
                pass
        except OSError:
            pass
        raise UsageError(f"cannot use state dir {folder}: cannot open {lock_path}: "
                         f"{first.strerror or first}") from None


def release_state_dir(claim: tuple[Path, int]) -> None:
    path, fd = claim
    try:
        if path.read_text().strip() == str(os.getpid()):
            path.unlink()
    except OSError:
        pass
    try:
        os.close(fd)   # drops the lock (the kernel would at exit anyway)
    except OSError:
        pass


def _open_panel(args: argparse.Namespace, io: Any, loop: Any) -> Any:
    """The field panel of the simulated cell (hal/sim_panel.py), if `io` is one: only a backend with
    `open_panel` makes it (the hardware backend has none). The cell runs the same without it."""
    open_panel = getattr(io, "open_panel", None)
    if open_panel is None:
        return None
    try:
        panel = open_panel(args.state_dir, loop)
    except OSError as exc:
        log.warning("the simulated panel is off (crushcell panel cannot reach this controller): %s",
                    exc.strerror or exc)
        return None
    log.info("simulated panel: crushcell panel reset|estop|estop-release|door-open|door-close|fault|status "
             "--state-dir %s", args.state_dir)
    return panel


def _start_link(args: argparse.Namespace, config: Any, loop: Any) -> Any:
    """The MQTT plant link, when configured; the controller runs the same without it."""
    if args.no_mqtt or not config.mqtt.enabled:
        return None
    try:
        from controller.link.mqtt import LinkConfigError, OutboxError, PlantLink
    except ImportError as exc:
        # Safety does not need the link, so the cell still runs, but say so loudly.
        log.warning("running without the MQTT plant link: %s", exc)
        return None
    try:
        link = PlantLink(config, loop, broker=args.broker, state_dir=args.state_dir)
    except LinkConfigError as exc:
        raise UsageError(str(exc)) from None
    except OutboxError as exc:
        link, why, path, moved_to = None, f"running without the MQTT plant link: {exc}", None, None
    else:
        # Corrupt or unopenable at start: moved aside, or kept in memory (controller/link/outbox.py).
        why, path, moved_to = link.outbox.reset, link.outbox.path, link.outbox.moved_to
    if why is not None:
        # The outbox is not safety state: the cell runs on, with a warning alarm for an hour and a
        # persist event that names the file (and where the old one went).
        log.warning("%s", why)
        raise_alarm = getattr(loop, "raise_platform_alarm", None)
        if callable(raise_alarm):
            raise_alarm("outbox_reset", 3600.0)
        event: dict[str, Any] = {"t": loop.core.now / 1000.0, "type": "persist", "error": why}
        if path is not None:
            event["file"] = path
        if moved_to is not None:
            event["moved_to"] = moved_to
        loop.record_event(event)
    if link is not None:
        link.start()
    return link
