"""`crushcell`: the command line (arguments, messages, exit codes); what `run` runs is controller/runtime.py.

Why every command catches its own input errors: a plant engineer at a terminal must get one clear
line naming the problem and exit code 2, never a traceback. Only a genuine crash prints one, and
even then the outputs are forced safe first.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from controller import __version__
from controller.runtime import UsageError, claim_state_dir, release_state_dir, serve

DEFAULT_CONFIG = os.environ.get("CRUSHCELL_CONFIG", "config/cell.toml")
EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


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
    pidfile = claim_state_dir(args.state_dir)
    try:
        io = hal.open_backend(args.hal, config, **options)
    except ImportError as exc:
        release_state_dir(pidfile)
        hint = (" Without a board (a laptop, a training board): --hal sim, or [hal] backend = \"sim\" "
                f"in {args.config}." if args.hal == "hardware" else "")
        raise UsageError(f"the {args.hal} backend needs a package that is not installed: {exc}. "
                         "Install with: pip install 'crushcell[hardware]'." + hint) from None
    try:
        return serve(args, config, io, scenario)
    finally:
        io.close()   # forces the safe state again, then releases the devices
        release_state_dir(pidfile)


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
