"""`crushcell`: the command line (arguments, messages, exit codes); what `run` runs is controller/runtime.py.

Why every command catches its own input errors: a plant engineer at a terminal must get one clear
line naming the problem and exit code 2, never a traceback. Only a genuine crash prints one, and
even then the outputs are forced safe first.
"""

from __future__ import annotations

import argparse
import faulthandler
import hashlib
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from controller import __version__, logsetup
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

    # The sha256 of the bytes read, so that a reviewed config can be matched to what runs (the
    # `config` record of `run` carries the same hash).
    try:
        config = cfg.load(args.path)
    except cfg.ConfigError as exc:
        for line in exc.errors:
            print(line)
        try:
            digest = "sha256 " + hashlib.sha256(Path(args.path).read_bytes()).hexdigest()
        except OSError as err:
            digest = f"not read ({err.strerror or err}): no sha256"
        print(f"failed: {args.path} {digest}: {len(exc.errors)} error(s)")
        return EXIT_USAGE
    print(f"ok: {args.path} sha256 {config.sha256}")
    return EXIT_OK


# -- simulate ----------------------------------------------------------------------------------
def cmd_simulate(args: argparse.Namespace) -> int:
    from controller import scenario as sc

    config = _load_config(args.config)
    try:
        scenario = sc.load(args.scenario)
    except sc.ScenarioError as exc:
        raise UsageError("\n".join(exc.errors)) from None
    trends = _SimTrends(args, config, scenario)   # checks --plot and opens --telemetry before the run
    try:
        if args.events in (None, "-"):
            end = sc.simulate(scenario, config, sys.stdout, trends.recorder)
            sys.stdout.flush()
        else:
            try:
                with open(args.events, "w", encoding="utf-8") as stream:
                    end = sc.simulate(scenario, config, stream, trends.recorder)
            except OSError as exc:
                raise UsageError(f"cannot write events to {args.events}: {exc.strerror or exc}") from None
            print(f"{scenario.name}: ended in {end['state']} after {end['t']:.1f} s simulated; "
                  f"events in {args.events}", file=sys.stderr)
    finally:
        trends.close()
    trends.finish(end)
    return EXIT_OK


class _SimTrends:
    """`simulate --telemetry FILE.csv` and `--plot FILE.png|svg|pdf` (controller/trendcsv.py,
    controller/trendplot.py): a missing matplotlib or a bad file name is a usage error before the run."""

    def __init__(self, args: argparse.Namespace, config: Any, scenario: Any):
        import math

        from controller import trendcsv, trendplot

        self.args, self.config, self.scenario = args, config, scenario
        self.recorder = self.stream = self.trend = None
        telemetry, plot = getattr(args, "telemetry", None), getattr(args, "plot", None)
        if telemetry is None and plot is None:
            return
        every = args.telemetry_every
        if not (every > 0 and math.isfinite(every)):
            raise UsageError(f"--telemetry-every {every} must be a number of seconds above 0")
        if plot is not None:
            try:
                trendplot.check_path(plot)
                trendplot.require()
            except (ValueError, trendplot.PlotUnavailable) as exc:
                raise UsageError(f"--plot: {exc}") from None
            samples = scenario.duration_s / every + 1
            self.trend = trendplot.Trend(stride=math.ceil(samples / trendplot.MAX_POINTS), every_s=every)
        if telemetry is not None:
            try:
                self.stream = open(telemetry, "w", encoding="utf-8", newline="")  # noqa: SIM115
            except OSError as exc:
                raise UsageError(f"cannot write telemetry to {telemetry}: {exc.strerror or exc}") from None
        self.recorder = trendcsv.SimRecorder(config, every, self.stream, self.trend)

    def close(self) -> None:
        if self.stream is not None:
            try:
                self.stream.close()
            except OSError as exc:
                raise UsageError(f"cannot write telemetry to {self.args.telemetry}: "
                                 f"{exc.strerror or exc}") from None

    def finish(self, end: dict) -> None:
        from controller import trendplot

        if self.stream is not None:
            print(f"telemetry: {self.recorder.count} rows in {self.args.telemetry}", file=sys.stderr)
        if self.trend is None:
            return
        scenario, config = self.scenario, self.config
        subtitle = (f"crushcell {__version__}; {scenario.path}, seed {scenario.seed}; config {config.path} "
                    f"sha256 {config.sha256[:12]}; ended {end['state']} at {end['t']:g} s")
        try:
            trendplot.render(self.trend, config, self.args.plot, title=f"{scenario.name}: trend",
                             subtitle=subtitle)
        except OSError as exc:
            raise UsageError(f"cannot write the chart to {self.args.plot}: {exc.strerror or exc}") from None
        print(f"chart: {self.args.plot}", file=sys.stderr)


def cmd_plot(args: argparse.Namespace) -> int:
    """`crushcell plot FILE.csv --out FILE.png`: the chart of a trend CSV written before."""
    from controller import trendplot

    config = _load_config(args.config)
    try:
        trendplot.check_path(args.out)
        trendplot.require()
    except (ValueError, trendplot.PlotUnavailable) as exc:
        raise UsageError(f"plot: {exc}") from None
    try:
        trend = trendplot.Trend.from_csv(args.csv)
    except OSError as exc:
        raise UsageError(f"cannot read {args.csv}: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(str(exc)) from None
    if not trend.t:
        raise UsageError(f"{args.csv}: no rows to plot")
    title = args.title or f"{Path(args.csv).name}: trend"
    try:
        trendplot.render(trend, config, args.out, title=title,
                         subtitle=f"crushcell {__version__}; {args.csv}; limits from {config.path}")
    except OSError as exc:
        raise UsageError(f"cannot write the chart to {args.out}: {exc.strerror or exc}") from None
    print(f"chart: {args.out}", file=sys.stderr)
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    import hal
    from controller import scenario as sc

    faulthandler.enable()   # a watchdog abort prints every thread's stack to the journal
    # Human logs on stderr (stdout is the JSON event stream): -v/-q now, the config's level next.
    logsetup.configure(logsetup.level_from(args))
    config = _load_config(args.config)
    logsetup.set_level(logsetup.level_from(args, config.log_level))
    if args.hal is None:
        args.hal = config.hal_backend
    if args.duration is not None and not 0 < args.duration < float("inf"):   # also refuses nan
        raise UsageError(f"--duration {args.duration} must be a number of seconds above 0")
    if not 0 < args.speed <= 1000:   # also refuses nan
        raise UsageError(f"--speed {args.speed} must be above 0 and at most 1000")
    if not 0 < args.telemetry_every < float("inf"):   # also refuses nan
        raise UsageError(f"--telemetry-every {args.telemetry_every} must be a number of seconds above 0")
    if args.telemetry_files < 1:
        raise UsageError(f"--telemetry-files {args.telemetry_files} must be at least 1")
    if args.speed != 1.0 and args.hal not in hal.SIMULATED:
        raise UsageError("--speed only applies to the simulated cell (--hal sim or mock)")
    scenario = None
    if args.scenario:
        if args.hal not in hal.SIMULATED:
            raise UsageError("--scenario only applies to the simulated cell (--hal sim or mock)")
        try:
            scenario = sc.load(args.scenario)
        except sc.ScenarioError as exc:
            raise UsageError("\n".join(exc.errors)) from None
    options: dict[str, Any] = {}
    if args.hal in hal.SIMULATED:
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
    demo = "the demo (make run) keeps its journal in var/demo: crushcell journal --state-dir var/demo"
    if not Path(args.state_dir).is_dir():
        raise UsageError(f"no state dir {args.state_dir} (give --state-dir; {demo})")
    printed = 0
    for rec in persist.read_journal(args.state_dir, since):
        print(json.dumps(rec, separators=(",", ":"), default=str))
        printed += 1
    if not printed:   # say so on stderr: stdout stays JSON lines
        files = persist.journal_files(args.state_dir)
        what = (f"no record since {args.since} in" if files and since is not None
                else "an empty journal in" if files else f"no {persist.JOURNAL_FILE} in")
        print(f"crushcell: {what} state dir {args.state_dir}; {demo}", file=sys.stderr)
    return EXIT_OK


def cmd_calibration(args: argparse.Namespace) -> int:
    import datetime as dt

    from controller import calibration as cal
    from controller import persist

    today = dt.date.today()
    try:
        if args.action == "show":
            config = _load_config(args.config)
            backend = args.hal or config.hal_backend   # judged as `run` with that --hal would
            sys.stdout.write(cal.show(args.state_dir, config.calibration, today,
                                      always=backend == "hardware", backend=backend))
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


# -- panel -------------------------------------------------------------------------------------
def cmd_panel(args: argparse.Namespace) -> int:
    """Exit 0: done (a reset accepted); 1: the controller answered that it could not (a reset refused,
    with the core's reason); 2: a malformed request, or no simulated panel in that state dir."""
    from hal import sim_panel

    try:
        request = sim_panel.parse_words([args.action, *args.args])
        reply = sim_panel.send(args.state_dir, request)
    except sim_panel.PanelError as exc:
        raise UsageError(f"panel: {exc}") from None
    print(reply.get("message", reply))
    return EXIT_OK if reply.get("ok") else EXIT_FAIL


# -- probe -------------------------------------------------------------------------------------
def cmd_probe(argv: list[str]) -> int:
    try:
        from controller.probe import main as probe_main
    except ImportError as exc:
        raise UsageError(f"probe needs the hardware backend: {exc}") from None
    return probe_main(argv)


# -- parser ------------------------------------------------------------------------------------
# One example (or two) per subcommand, shown at the end of its --help.
EXAMPLES = {
    "": "examples:\n  make run                   # the demo: simulated cell, normal shift, 10x\n"
        "  crushcell run --hal sim --state-dir var/demo --scenario config/scenarios/normal_shift.toml\n"
        "  crushcell COMMAND --help   # every option of COMMAND, with its default",
    "run": "examples:\n  crushcell run --hal sim --speed 10 --scenario config/scenarios/normal_shift.toml "
           "--state-dir var/demo\n"
           "  crushcell run --config /etc/crushcell/cell.toml --state-dir /var/lib/crushcell   "
           "# the board (what the service runs)",
    "simulate": "examples:\n  crushcell simulate config/scenarios/normal_shift.toml --events shift.jsonl\n"
                "  crushcell simulate config/scenarios/thermal_runaway.toml --events /dev/null "
                "--telemetry runaway.csv --plot runaway.png",
    "plot": "example:\n  crushcell plot shift.csv --out shift.png",
    "check-config": "example:\n  crushcell check-config /etc/crushcell/cell.toml\n"
                    "  -> ok: /etc/crushcell/cell.toml sha256 <hex>   (exit 0; errors: exit 2)",
    "cause-effect": "example:\n  crushcell cause-effect --format html > cause-effect.html   "
                    "# print it: A3 landscape, for sign-off",
    "journal": "examples:\n  crushcell journal --state-dir var/demo --since 2h   # the demo's (make run)\n"
               "  crushcell journal --since 7d                        # this machine's default state dir",
    "calibration record": "example:\n  crushcell calibration record o2_a --calibration --by ana",
    "calibration show": "example:\n  crushcell calibration show --hal sim --state-dir var/demo",
    "calibration": "examples:\n  crushcell calibration record co_cell --bump --by ana\n"
                   "  crushcell calibration show",
    "panel": "examples (a controller on the simulated cell, e.g. make run):\n"
             "  crushcell panel estop --state-dir var/demo\n"
             "  crushcell panel estop-release --state-dir var/demo\n"
             "  crushcell panel reset --state-dir var/demo      # the panel's reset button\n"
             "  crushcell panel fault o2_a disconnect --state-dir var/demo",
}


def _size(text: str) -> int:
    from controller.trendcsv import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    from controller import statedir
    from controller.clihelp import HelpParser
    from hal import BACKENDS as hal_backends

    default_state = statedir.default_state_dir()   # one rule for every command: controller/statedir.py
    p = HelpParser(   # --help shows defaults; the subcommands' parsers are HelpParsers too
        prog="crushcell",
        description="Safety controller for a sealed, nitrogen-inerted battery crushing cell.")
    p.add_argument("--version", action="version", version=f"crushcell {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    run = sub.add_parser("run", help="run the controller in real time")
    run.add_argument("--config", default=DEFAULT_CONFIG, metavar="PATH", help="plant configuration")
    run.add_argument("--hal", choices=hal_backends, default=None,
                     help="backend: hardware (the board), sim (the simulated cell) or mock (the same "
                          "simulated cell, the laptop backend); default: the config's [hal] backend, "
                          "hardware if absent")
    run.add_argument("--scenario", metavar="PATH", help="play a scenario on the simulated cell")
    run.add_argument("--speed", type=float, default=1.0, metavar="X",
                     help="simulated cell only: run X times faster than real time")
    run.add_argument("--duration", type=float, metavar="S", help="stop after S (simulated) seconds")
    run.add_argument("--seed", type=int, default=0, help="simulated cell's random seed")
    run.add_argument("--events", metavar="PATH", help="append the event log (JSON lines) to PATH")
    run.add_argument("--broker", metavar="HOST[:PORT]", help="MQTT broker (overrides config)")
    run.add_argument("--no-mqtt", action="store_true", help="run without the plant link")
    run.add_argument("--state-dir", default=default_state, metavar="DIR",
                     help=statedir.help_text("the latch, journal, outbox and lock of this controller"))
    run.add_argument("--status", dest="status", action="store_true", default=None,
                     help="show the live status line on stderr (default: when stderr is a terminal)")
    run.add_argument("--no-status", dest="status", action="store_false")
    logsetup.add_arguments(run)   # -v / -q
    from controller import trendcsv

    run.add_argument("--telemetry", metavar="FILE.csv",
                     help="append the trend CSV to FILE.csv (rotated by size: FILE.1.csv is older)")
    run.add_argument("--telemetry-every", type=float, default=trendcsv.TREND_EVERY_S, metavar="S",
                     help="one row per S seconds of controller time (default: 1)")
    run.add_argument("--telemetry-max-bytes", type=_size, default=trendcsv.TREND_MAX_BYTES, metavar="SIZE",
                     help="rotate the CSV past this size: bytes, or 512K, 10M, 1G (default: 10M)")
    run.add_argument("--telemetry-files", type=int, default=trendcsv.TREND_FILES, metavar="N",
                     help=f"CSV files kept, the current one included (default: {trendcsv.TREND_FILES})")
    run.set_defaults(func=cmd_run)

    sim = sub.add_parser("simulate", help="run a scenario in simulated time and write its event log")
    sim.add_argument("scenario", metavar="SCENARIO", help="scenario file (TOML)")
    sim.add_argument("--config", default=DEFAULT_CONFIG, metavar="PATH", help="plant configuration")
    sim.add_argument("--events", metavar="PATH", help="write the event log here (default: stdout)")
    sim.add_argument("--telemetry", metavar="FILE.csv",
                     help="write the trend CSV here: state, every sensor, voted O2, inputs, outputs, causes")
    sim.add_argument("--telemetry-every", type=float, default=1.0, metavar="S",
                     help="one CSV row (and chart sample) per S seconds of simulated time (default: 1)")
    sim.add_argument("--plot", metavar="FILE.png",
                     help="draw the trend chart (.png, .svg or .pdf); needs pip install 'crushcell[plot]'")
    sim.set_defaults(func=cmd_simulate)

    plt = sub.add_parser("plot", help="draw the trend chart of a trend CSV written before")
    plt.add_argument("csv", metavar="FILE.csv", help="a CSV from simulate --telemetry or run --telemetry")
    plt.add_argument("--out", required=True, metavar="FILE.png", help="the chart (.png, .svg or .pdf)")
    plt.add_argument("--config", default=DEFAULT_CONFIG, metavar="PATH",
                     help="plant configuration (the warning and trip lines)")
    plt.add_argument("--title", metavar="TEXT", help="chart title (default: the CSV's name)")
    plt.set_defaults(func=cmd_plot)

    chk = sub.add_parser("check-config", help="validate a plant configuration",
                         description="Validate a plant configuration: print `ok: PATH sha256 <hex>` and "
                                     "exit 0,\nor every error, then the path and sha256 of the file read, "
                                     "and exit 2.\nThe sha256 is the one `run` journals at start (its "
                                     "`config` record).")
    chk.add_argument("path", nargs="?", default=DEFAULT_CONFIG, metavar="PATH",
                     help="the plant configuration (TOML) to check")
    chk.set_defaults(func=cmd_check_config)

    ce = sub.add_parser("cause-effect",
                        help="print the cause-and-effect matrix (measured by driving the safety core)")
    ce.add_argument("--config", default=DEFAULT_CONFIG, metavar="PATH", help="plant configuration")
    ce.add_argument("--format", choices=("md", "csv", "html"), default="md",
                    help="output format (default: md)")
    ce.set_defaults(func=cmd_cause_effect)

    jr = sub.add_parser("journal", help="print the audit journal (JSON lines)")
    jr.add_argument("--state-dir", default=default_state, metavar="DIR",
                    help=statedir.help_text("the controller's state dir, which holds journal.jsonl"))
    jr.add_argument("--since", metavar="ISO-TIME|DURATION", help="only records since then (e.g. 2h, 7d)")
    jr.set_defaults(func=cmd_journal)

    from cellspec.names import CALIBRATED_SENSORS

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
    rec.add_argument("--state-dir", default=default_state, metavar="DIR",
                     help=statedir.help_text("the controller's state dir (calibration.json, journal)"))
    shw = cal_sub.add_parser("show", help="last dates, due dates and what blocks start")
    shw.add_argument("--state-dir", default=default_state, metavar="DIR",
                     help=statedir.help_text("the controller's state dir (calibration.json)"))
    shw.add_argument("--config", default=DEFAULT_CONFIG, metavar="PATH", help="plant configuration")
    shw.add_argument("--hal", choices=hal_backends, default=None,
                     help="judge as a controller on this backend would (the simulated cell enforces "
                          "the records only once a calibration.json exists); default: the config's "
                          "[hal] backend")
    cal.set_defaults(func=cmd_calibration)

    from hal.sim_panel import ACTIONS as PANEL_ACTIONS

    pnl = sub.add_parser("panel", help="the simulated cell's field panel, for a running controller",
                         description="The field panel of a controller running on the simulated cell "
                                     "(--hal sim or mock):\nthe reset button, the E-stop, the door, and "
                                     "hal/sim.py's faults. A controller on the\nhardware has none: its panel "
                                     "is the real one. Actions:\n" + "\n".join(
                                         f"  {' '.join((a, *w)):<19} {what}"
                                         for a, (w, what) in PANEL_ACTIONS.items()))
    pnl.add_argument("action", choices=tuple(PANEL_ACTIONS), metavar="ACTION",
                     help=", ".join(PANEL_ACTIONS))
    pnl.add_argument("args", nargs="*", metavar="ARG", help="fault: TARGET MODE (e.g. o2_a disconnect)")
    pnl.add_argument("--state-dir", default=default_state, metavar="DIR",
                     help=statedir.help_text("the running controller's state dir (its sim-panel.sock)"))
    pnl.set_defaults(func=cmd_panel)

    sub.add_parser("probe", help="commissioning: check every device and wire (hardware)",
                   add_help=False)
    sub.add_parser("watch", help="live view of one or more cells over MQTT", add_help=False)
    sub.add_parser("hmi", help="local web HMI: every cell on the broker, live, in a browser",
                   add_help=False)
    p.epilog = EXAMPLES[""]
    named = [*sub.choices.items(), *(("calibration " + n, q) for n, q in cal_sub.choices.items())]
    for name, parser in named:
        parser.epilog = parser.epilog or EXAMPLES.get(name)
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
    if argv and argv[0] == "hmi":
        from controller.hmi.server import main as hmi_main

        return hmi_main(argv[1:])
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
