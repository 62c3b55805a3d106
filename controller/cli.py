"""`crushcell`: run, simulate, check-config, probe.

Why every command catches its own input errors: a plant engineer at a terminal must get one clear
line naming the problem and exit code 2, never a traceback. Only a genuine crash prints one, and
even then the outputs are forced safe first.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import math
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from controller import __version__, journald

DEFAULT_CONFIG = os.environ.get("CRUSHCELL_CONFIG", "config/cell.toml")
EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit 2."""


def _load_config(path: str):
    from controller import config as cfg

    try:
        return cfg.load(path)
    except cfg.ConfigError as exc:
        raise UsageError("\n".join(exc.errors) + f"\ncrushcell: refusing to start: {len(exc.errors)} "
                         "configuration error(s)") from None


# -- check-config ------------------------------------------------------------------------------
def cmd_check_config(args: argparse.Namespace) -> int:
    from controller import config as cfg

    try:
        cfg.load(args.path)
    except cfg.ConfigError as exc:
        for line in exc.errors:
            print(line)
        return EXIT_USAGE
    print("ok")
    return EXIT_OK


# -- simulate ----------------------------------------------------------------------------------
def cmd_simulate(args: argparse.Namespace) -> int:
    from controller import scenario as sc

    config = _load_config(args.config)
    try:
        scenario = sc.load(args.scenario)
    except sc.ScenarioError as exc:
        raise UsageError("\n".join(exc.errors)) from None
    if args.events in (None, "-"):
        sc.simulate(scenario, config, sys.stdout)
        sys.stdout.flush()
    else:
        try:
            with open(args.events, "w", encoding="utf-8") as stream:
                end = sc.simulate(scenario, config, stream)
        except OSError as exc:
            raise UsageError(f"cannot write events to {args.events}: {exc.strerror or exc}") from None
        print(f"{scenario.name}: ended in {end['state']} after {end['t']:.1f} s simulated; "
              f"events in {args.events}", file=sys.stderr)
    return EXIT_OK


# -- run ---------------------------------------------------------------------------------------
KEY_SENSORS = (("o2", "O2", "%.2f%%"), ("h2_cell", "H2", "%.2f"), ("lel_cell", "LEL", "%.1f"),
               ("co_cell", "CO", "%.0f"), ("temp_material", "Tmat", "%.0fC"), ("dp_cell", "dp", "%.0fPa"))


def status_line(snap: Any) -> str:
    from controller.names import SENSORS

    parts = [f"{snap.state:<8}", f"t={snap.t:8.1f}s"]
    for key, label, form in KEY_SENSORS:
        if key == "o2":
            v = snap.voted_o2
            bad = sum(1 for i, n in enumerate(SENSORS) if n.startswith("o2_") and snap.quality[i] != "good")
            text = "----" if v != v else form % v
            parts.append(f"{label} {text}({3 - bad}/3)")
        else:
            i = SENSORS.index(key)
            v = snap.values[i]
            ok = snap.quality[i] == "good"
            parts.append(f"{label} {form % v if ok and not math.isnan(v) else 'FAULT'}")
    parts.append("causes: " + (",".join(snap.causes) or "-"))
    alarms = [a[0] for a in snap.alarms]
    parts.append("alarms: " + (",".join(alarms) or "-"))
    return " | ".join(parts)


BUS_RECOVERED_HOLD_S = 60.0   # i2c_bus_recovered stays active this long after a recovery
LOGGED_EVENTS = ("state", "trip", "command", "alarm", "sensor", "scenario", "config", "persist", "stall",
                 "end")


class Pump(threading.Thread):
    """Moves events out of the scan thread: to the event file, stderr (journal) and the link."""

    def __init__(self, loop: Any, *, events_file: Any, show_status: bool, link: Any = None,
                 period_s: float = 0.25, echo: bool = True, persister: Any = None,
                 calibration: Any = None):
        super().__init__(name="crushcell-pump", daemon=True)
        self.loop = loop
        self.events_file = events_file
        self.show_status = show_status
        self.link = link
        self.period_s = period_s
        self.echo = echo   # log events to stderr (the journal under systemd)
        self.done = threading.Event()
        self.last_status = 0.0
        self.persister = persister        # latch file, event numbers, audit journal (controller.persist)
        self.calibration = calibration    # calibration records -> loop (controller.calibration)
        self.journal_prefix = journald.stream_is_journal(sys.stderr)   # <3>, <4>, <6> for journalctl -p
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
                    text = f"crushcell: the event pump failed ({kind}: {exc}); it runs on"
                    print((journald.prefix(journald.ERR) if self.journal_prefix else "") + text,
                          file=sys.stderr, flush=True)
                    traceback.print_exc()
                except Exception:   # noqa: BLE001 - stderr itself may be what fails
                    pass

    def flush(self) -> None:
        loop = self.loop
        loop.expire_platform_alarms()
        self._bus_alarms()
        events = loop.drain_events()
        if self.persister is not None:
            self.persister.handle(events)   # numbers them (seq), journals, writes the latch
        if self.calibration is not None:
            self.calibration.tick(time.monotonic())
        if events:
            if self.events_file is not None:
                self.events_file.write(events)
            for e in events if self.echo else ():
                if e["type"] in LOGGED_EVENTS:
                    line = json.dumps(e, separators=(",", ":"), default=str)
                    if self.journal_prefix:
                        line = journald.prefix(journald.event_priority(e)) + line
                    self._print(line, sys.stderr)
            if self.link is not None:
                for e in events:
                    self.link.offer_event(e)
        now = time.monotonic()
        if self.show_status and now - self.last_status >= 0.25:
            self.last_status = now
            loop.request_snapshot()
            snap = loop.latest
            if snap is not None:
                sys.stdout.write("\r\033[K" + status_line(snap)[:200])
                sys.stdout.flush()

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
        if self.show_status:
            sys.stdout.write("\r\033[K")
            sys.stdout.flush()
        print(text, file=stream, flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    import hal
    from controller import scenario as sc

    faulthandler.enable()   # a watchdog abort prints every thread's stack to the journal
    config = _load_config(args.config)
    if args.hal is None:
        args.hal = config.hal_backend
    if args.duration is not None and not 0 < args.duration < float("inf"):   # also refuses nan
        raise UsageError(f"--duration {args.duration} must be a number of seconds above 0")
    if not 0 < args.speed <= 1000:   # also refuses nan
        raise UsageError(f"--speed {args.speed} must be above 0 and at most 1000")
    if args.speed != 1.0 and args.hal != "sim":
        raise UsageError("--speed only applies to the simulated cell (--hal sim)")
    scenario = None
    if args.scenario:
        if args.hal != "sim":
            raise UsageError("--scenario only applies to the simulated cell (--hal sim)")
        try:
            scenario = sc.load(args.scenario)
        except sc.ScenarioError as exc:
            raise UsageError("\n".join(exc.errors)) from None
    options: dict[str, Any] = {}
    if args.hal == "sim":
        options["seed"] = scenario.seed if scenario else args.seed
    pidfile = _claim_pidfile(args.state_dir)
    try:
        io = hal.open_backend(args.hal, config, **options)
    except ImportError as exc:
        _release_pidfile(pidfile)
        hint = (" Without a board (a laptop, a training board): --hal sim, or [hal] backend = \"sim\" "
                f"in {args.config}." if args.hal == "hardware" else "")
        raise UsageError(f"the {args.hal} backend needs a package that is not installed: {exc}. "
                         "Install with: pip install 'crushcell[hardware]'." + hint) from None
    try:
        return serve(args, config, io, scenario)
    finally:
        io.close()   # forces the safe state again, then releases the devices
        _release_pidfile(pidfile)


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
        persister, tracker = _open_state(args, config, loop)
        start_records = persister.restore()   # a latched trip comes back before the first scan
        loop.publish_latch()
        link = _start_link(args, config, loop)
        if link is not None:
            # One sequence for the event log, the journal and MQTT: never behind what the outbox holds.
            persister.seq = max(persister.seq, link.outbox.last_seq)
        show_status = args.status if args.status is not None else sys.stdout.isatty()
        pump = Pump(loop, events_file=events_file, show_status=show_status, link=link,
                    persister=persister, calibration=tracker)
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
        duration = args.duration
        if duration is None and scenario is not None:
            duration = scenario.duration_s
        try:
            loop.run_realtime(duration_s=duration, speed=args.speed, before_scan=player)
        finally:
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
            if show_status:
                print()
    finally:
        io.force_safe()   # whatever ended the loop: signal, duration, exception
    if stopped_by and stopped_by[0] not in (signal.SIGTERM, signal.SIGINT):
        # Not a stop anyone asked for: exit as the signal would have (128 + N), so that systemd's
        # Restart=on-failure starts the controller again (the latch is kept).
        return 128 + stopped_by[0]
    return EXIT_OK


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


def _claim_pidfile(state_dir: str) -> tuple[Path, int]:
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


def _release_pidfile(claim: tuple[Path, int]) -> None:
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


def _start_link(args: argparse.Namespace, config: Any, loop: Any) -> Any:
    """The MQTT plant link, when configured; the controller runs the same without it."""
    if args.no_mqtt or not config.mqtt.enabled:
        return None
    try:
        from controller.link.mqtt import LinkConfigError, OutboxError, PlantLink
    except ImportError as exc:
        # Safety does not need the link, so the cell still runs, but say so loudly.
        print(f"crushcell: WARNING: running without the MQTT plant link: {exc}", file=sys.stderr)
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
        print(f"crushcell: WARNING: {why}", file=sys.stderr)
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


# -- cause-effect ------------------------------------------------------------------------------
def cmd_cause_effect(args: argparse.Namespace) -> int:
    from controller import causeeffect

    config = _load_config(args.config)
    sys.stdout.write(causeeffect.render(config, args.format))
    return EXIT_OK


# -- journal and calibration -------------------------------------------------------------------------
def cmd_journal(args: argparse.Namespace) -> int:
    from controller import persist

    since = None
    if args.since:
        try:
            since = persist.parse_since(args.since)
        except ValueError:
            raise UsageError(f"--since {args.since}: give an ISO time (2025-01-31T06:00) or a duration "
                             "(90s, 30m, 2h, 7d)") from None
    if not Path(args.state_dir).is_dir():
        raise UsageError(f"no state dir {args.state_dir} (give --state-dir)")
    for rec in persist.read_journal(args.state_dir, since):
        print(json.dumps(rec, separators=(",", ":"), default=str))
    return EXIT_OK


def cmd_calibration(args: argparse.Namespace) -> int:
    import datetime as dt

    from controller import calibration as cal
    from controller import persist

    today = dt.date.today()
    try:
        if args.action == "show":
            config = _load_config(args.config)
            sys.stdout.write(cal.show(args.state_dir, config.calibration, today))
            return EXIT_OK
        date = cal.parse_date(args.date, today) if args.date else today
        rec = cal.record(args.state_dir, args.sensor, "bump" if args.bump else "calibration", date)
    except cal.CalibrationError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot use state dir {args.state_dir}: {exc.strerror or exc}") from None
    rec["by"] = args.by
    rec["ts"] = persist.utc_now()
    journal = persist.Journal(args.state_dir)
    journal.append([rec])
    journal.close()
    print(f"{args.sensor}: {rec['kind']} recorded on {rec['date']}")
    return EXIT_OK


# -- probe -------------------------------------------------------------------------------------
def cmd_probe(argv: list[str]) -> int:
    try:
        from hal.hardware.probe import main as probe_main
    except ImportError as exc:
        raise UsageError(f"probe needs the hardware backend: {exc}") from None
    return probe_main(argv)


# -- parser ------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="crushcell",
        description="Safety controller for a sealed, nitrogen-inerted battery crushing cell.")
    p.add_argument("--version", action="version", version=f"crushcell {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    run = sub.add_parser("run", help="run the controller in real time")
    run.add_argument("--config", default=DEFAULT_CONFIG, metavar="PATH", help="plant configuration")
    run.add_argument("--hal", choices=("sim", "hardware"), default=None,
                     help="backend (default: the config's [hal] backend, hardware if absent)")
    run.add_argument("--scenario", metavar="PATH", help="play a scenario on the simulated cell")
    run.add_argument("--speed", type=float, default=1.0, metavar="X",
                     help="simulated cell only: run X times faster than real time")
    run.add_argument("--duration", type=float, metavar="S", help="stop after S (simulated) seconds")
    run.add_argument("--seed", type=int, default=0, help="simulated cell's random seed")
    run.add_argument("--events", metavar="PATH", help="append the event log (JSON lines) to PATH")
    run.add_argument("--broker", metavar="HOST[:PORT]", help="MQTT broker (overrides config)")
    run.add_argument("--no-mqtt", action="store_true", help="run without the plant link")
    run.add_argument("--state-dir", default=os.environ.get("CRUSHCELL_STATE_DIR", "var"), metavar="DIR",
                     help="where the outbox and persistent state live (default: ./var)")
    run.add_argument("--status", dest="status", action="store_true", default=None,
                     help="show the live status line (default: when stdout is a terminal)")
    run.add_argument("--no-status", dest="status", action="store_false")
    run.set_defaults(func=cmd_run)

    sim = sub.add_parser("simulate", help="run a scenario in simulated time and write its event log")
    sim.add_argument("scenario", metavar="SCENARIO", help="scenario file (TOML)")
    sim.add_argument("--config", default=DEFAULT_CONFIG, metavar="PATH", help="plant configuration")
    sim.add_argument("--events", metavar="PATH", help="write the event log here (default: stdout)")
    sim.set_defaults(func=cmd_simulate)

    chk = sub.add_parser("check-config", help="validate a plant configuration")
    chk.add_argument("path", nargs="?", default=DEFAULT_CONFIG, metavar="PATH")
    chk.set_defaults(func=cmd_check_config)

    ce = sub.add_parser("cause-effect",
                        help="print the cause-and-effect matrix (measured by driving the safety core)")
    ce.add_argument("--config", default=DEFAULT_CONFIG, metavar="PATH", help="plant configuration")
    ce.add_argument("--format", choices=("md", "csv", "html"), default="md",
                    help="output format (default: md)")
    ce.set_defaults(func=cmd_cause_effect)

    default_state = os.environ.get("CRUSHCELL_STATE_DIR", "var")
    jr = sub.add_parser("journal", help="print the audit journal (JSON lines)")
    jr.add_argument("--state-dir", default=default_state, metavar="DIR", help="default: ./var")
    jr.add_argument("--since", metavar="ISO-TIME|DURATION", help="only records since then (e.g. 2h, 7d)")
    jr.set_defaults(func=cmd_journal)

    from controller.names import CALIBRATED_SENSORS

    cal = sub.add_parser("calibration", help="bump tests and calibrations of the gas sensors")
    cal_sub = cal.add_subparsers(dest="action", metavar="ACTION")
    cal_sub.required = True
    rec = cal_sub.add_parser("record", help="record a bump test or a calibration")
    rec.add_argument("sensor", choices=CALIBRATED_SENSORS, metavar="SENSOR",
                     help=", ".join(CALIBRATED_SENSORS))
    kind = rec.add_mutually_exclusive_group(required=True)
    kind.add_argument("--bump", action="store_true", help="a bump test")
    kind.add_argument("--calibration", action="store_true", help="a calibration (counts as a bump test too)")
    rec.add_argument("--date", metavar="YYYY-MM-DD", help="default: today")
    rec.add_argument("--by", metavar="NAME", default=os.environ.get("USER") or None, help="who did it")
    rec.add_argument("--state-dir", default=default_state, metavar="DIR", help="default: ./var")
    shw = cal_sub.add_parser("show", help="last dates, due dates and what blocks start")
    shw.add_argument("--state-dir", default=default_state, metavar="DIR", help="default: ./var")
    shw.add_argument("--config", default=DEFAULT_CONFIG, metavar="PATH", help="plant configuration")
    cal.set_defaults(func=cmd_calibration)

    sub.add_parser("probe", help="commissioning: check every device and wire (hardware)",
                   add_help=False)
    sub.add_parser("watch", help="live view of one or more cells over MQTT", add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "probe":
        try:
            return cmd_probe(argv[1:])
        except UsageError as exc:
            print(f"crushcell: {exc}", file=sys.stderr)
            return EXIT_USAGE
    if argv and argv[0] == "watch":
        from controller.link.watch import main as watch_main

        return watch_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"crushcell: {exc}" if "\n" not in str(exc) else str(exc), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_FAIL
    except BrokenPipeError:
        return EXIT_FAIL
    except Exception:   # a crash: the loop has already forced every output safe on its way out
        traceback.print_exc()
        print("crushcell: stopped on an unexpected error; outputs were forced to their safe states",
              file=sys.stderr)
        return EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
