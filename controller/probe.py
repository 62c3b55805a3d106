"""`crushcell probe`: commissioning check of every chip, sensor, input and (optionally) output.

    crushcell probe [--config PATH] [--state-dir DIR] [--outputs [--yes] [--pulse-s S]]

Exit 0 when every expected I2C device answered, every sensor gave a fault-free reading, every
input could be read and (with --outputs) every feedback followed its output; 1 otherwise;
2 on a usage or configuration error, or when --outputs is refused.

Moving outputs is the dangerous part, so --outputs needs all of:
- no running controller: the probe takes `<state-dir>/crushcell.lock`, the lock a controller holds
  for its whole life, and keeps it until it ends (the service owns the relays; two writers would
  fight, and a controller must not start while outputs are being moved);
- a typed confirmation: the operator types the cell id (or passes --yes in a script);
- the operator's own isolation: energising the crusher contactor starts the motor if its power
  is on. The probe cannot know; the prompt says so, and shows the E-stop chain state (with the
  chain open, outputs wired through the safety relay will not move and their feedback fails).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from cellspec.names import INPUTS, OUTPUTS, SENSORS

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
DEFAULT_STATE_DIR = "/var/lib/crushcell"   # a board's; the default follows controller/statedir.py
LOCK_FILE = "crushcell.lock"   # controller/cli.py: held (flock) for as long as a controller lives
# Output -> the input that proves it moved (contactor auxiliary contact).
FEEDBACK = {"crusher": "crusher_running"}


class ProbeRefused(Exception):
    """--outputs may not run now; the message says why and what to do."""


def build_parser() -> argparse.ArgumentParser:
    from controller import statedir
    from controller.clihelp import HelpParser

    p = HelpParser(prog="crushcell probe",
                   description="Commissioning check: I2C devices, sensors, inputs, outputs.",
                   epilog="examples:\n  crushcell probe --config /etc/crushcell/cell.toml\n"
                          "  sudo systemctl stop crushcell && crushcell probe --outputs   "
                          "# loop check: moves every output")
    p.add_argument("--config", default=os.environ.get("CRUSHCELL_CONFIG", "config/cell.toml"),
                   metavar="PATH", help="plant configuration")
    # The same default as run's (controller/statedir.py): on a board, the service's state dir, so
    # --outputs sees the running controller's lock.
    p.add_argument("--state-dir", default=statedir.default_state_dir(), metavar="DIR",
                   help=statedir.help_text(f"where a running controller holds {LOCK_FILE}"))
    p.add_argument("--outputs", action="store_true",
                   help="also pulse every output (loop check); needs the controller stopped")
    p.add_argument("--yes", action="store_true", help="skip the typed confirmation for --outputs")
    p.add_argument("--pulse-s", type=float, default=1.0, metavar="S",
                   help="how long each output is energised (0.1 to 10 s, default 1)")
    return p


def claim_state_lock(state_dir: str) -> int:
    """Hold `<state-dir>/crushcell.lock` (flock) for the probe: the lock a controller holds for its life.

    Hazard: two writers on one relay board. A pid file cannot tell (after a kill -9 or a power
    cut its pid is often another process's; a deleted pid file hides a live controller); the
    kernel's lock can: it is held exactly as long as a controller lives. Holding it while the
    outputs move also keeps a controller from starting in the middle of the probe.
    Raises ProbeRefused when a controller holds it, or when it cannot be taken.
    """
    import fcntl

    folder = Path(state_dir)
    path = folder / LOCK_FILE
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise ProbeRefused(f"cannot open {path}: {exc.strerror or exc}; cannot tell whether a "
                           "controller runs (give the controller's --state-dir, as its user)") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        except OSError:
            holder = ""
        os.close(fd)
        who = f"pid {holder}" if holder.isdigit() else "another process"
        raise ProbeRefused(f"a controller is running ({who} holds {path}); "
                           "stop it first: systemctl stop crushcell") from None
    except OSError as exc:
        os.close(fd)
        raise ProbeRefused(f"cannot lock {path}: {exc.strerror or exc}") from None
    return fd

def main(argv: list[str], *, open_cell: Callable[[Any], Any] | None = None, stdin: TextIO | None = None,
         out: TextIO | None = None, clock: Callable[[], float] = time.monotonic,
         sleep: Callable[[float], None] = time.sleep) -> int:
    """Run the probe. The keyword arguments let tests pass fakes; `crushcell probe` passes none."""
    out = out or sys.stdout
    stdin = stdin or sys.stdin
    err = out if out is not sys.stdout else sys.stderr
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:       # argparse already printed the usage and the problem
        return EXIT_OK if exc.code == 0 else EXIT_USAGE
    if not 0.1 <= args.pulse_s <= 10.0:
        print(f"crushcell probe: --pulse-s {args.pulse_s:g} must lie between 0.1 and 10", file=err)
        return EXIT_USAGE

    from controller.config import ConfigError, load

    try:
        config = load(args.config)
    except ConfigError as exc:
        print("crushcell probe: the configuration has errors:", file=err)
        for line in exc.errors:
            print(f"  {line}", file=err)
        return EXIT_USAGE

    lock = None
    if args.outputs:
        try:
            lock = confirm_outputs(args, config, stdin, out)
        except ProbeRefused as exc:
            print(f"crushcell probe: --outputs refused: {exc}", file=err)
            return EXIT_USAGE
    try:
        return _probe(args, config, open_cell, out, err, clock, sleep)
    finally:
        if lock is not None:
            os.close(lock)   # a controller may start again


def _probe(args: argparse.Namespace, config: Any, open_cell: Callable[[Any], Any] | None, out: TextIO,
           err: TextIO, clock: Callable[[], float], sleep: Callable[[float], None]) -> int:

    from controller.probe_datasheet import probe_datasheet
    from hal.hardware.plan import WiringError

    try:
        if open_cell is None:
            from hal.hardware import HardwareCell

            open_cell = HardwareCell
        cell = open_cell(config)
    except WiringError as exc:
        print(f"crushcell probe: {config.path}: {exc}", file=err)
        return EXIT_USAGE
    except ImportError as exc:      # NoGpio, NoI2c, smbus2 missing: this machine cannot probe
        print(f"crushcell probe: {exc}", file=err)
        return EXIT_FAIL
    try:
        ok = probe_devices(cell, out)
        from hal.hardware.busrecovery import probe_recovery

        ok = probe_recovery(cell, out) and ok          # the bus recovery wiring, at rest
        ok = probe_sensors(cell, config, out, clock, sleep) and ok
        ok = probe_datasheet(cell, config, out) and ok   # loops vs bands, SDP810 part, MCP9600 bias
        inputs = probe_inputs(cell, config, out, clock)
        ok = None not in inputs and ok
        if args.outputs:
            ok = probe_outputs(cell, config, out, clock, sleep, args.pulse_s) and ok
    except KeyboardInterrupt:
        print("\ninterrupted: outputs to their safe states", file=out)
        ok = False
    finally:
        cell.force_safe()
        cell.close()
    print("PROBE OK" if ok else "PROBE FAILED: see the lines marked !!", file=out)
    return EXIT_OK if ok else EXIT_FAIL


def confirm_outputs(args: argparse.Namespace, config: Any, stdin: TextIO, out: TextIO) -> int:
    """The lock (returned: held until the probe ends), then the operator's confirmation."""
    lock = claim_state_lock(args.state_dir)
    try:
        _confirm(args, config, stdin, out)
    except BaseException:
        os.close(lock)
        raise
    return lock


def _confirm(args: argparse.Namespace, config: Any, stdin: TextIO, out: TextIO) -> None:
    if args.yes:
        return
    print(f"--outputs energises every output of cell {config.cell_id!r} in turn, for "
          f"{args.pulse_s:g} s each: {', '.join(OUTPUTS)}.\n"
          "The crusher contactor WILL start the motor if its power is on: isolate it first.\n"
          f"Type the cell id ({config.cell_id}) to go on: ", end="", file=out)
    out.flush()
    answer = stdin.readline()
    if answer.strip() != config.cell_id:
        raise ProbeRefused("confirmation did not match the cell id; nothing was moved")


def probe_devices(cell: Any, out: TextIO) -> bool:
    print("I2C devices", file=out)
    expected = cell.expected_devices()
    found = cell.scan_buses()
    ok = True
    for bus in sorted(expected):
        got = found.get(bus, "not scanned")
        if isinstance(got, str):
            print(f"  !! bus {bus}: cannot scan: {got}", file=out)
            ok = False
            continue
        for addr, label in sorted(expected[bus].items()):
            if addr in got:
                print(f"     bus {bus} 0x{addr:02X} found     {label}", file=out)
            else:
                print(f"  !! bus {bus} 0x{addr:02X} MISSING   {label}", file=out)
                ok = False
        for addr in got:
            if addr not in expected[bus]:
                print(f"  ?? bus {bus} 0x{addr:02X} unexpected (not in the config)", file=out)
    return ok


def probe_sensors(cell: Any, config: Any, out: TextIO, clock: Callable[[], float],
                  sleep: Callable[[float], None], timeout_s: float = 3.0) -> bool:
    """Scan until every sensor has a sample or a fault (each ADC channel needs its turn)."""
    start = clock()
    while True:
        readings = cell.read_sensors(int(clock() * 1000))
        if all(r.fault is not None or r.t_ms != 0 for r in readings) or clock() - start > timeout_s:
            break
        sleep(0.02)
    print("Sensors", file=out)
    details = cell.details()
    ok = True
    for name in SENSORS:
        d = details[name]
        unit = config.sensors[name].unit
        raw = "  ".join(f"{k}={d[k]}" for k in ("raw", "ma", "config", "status", "scale", "celsius", "answer")
                        if k in d)
        if d["fault"] is not None:
            why = f" ({d['error']})" if d["error"] else ""
            line = f"  !! {name:14} FAULT {d['fault']}{why}"
            ok = False
        elif math.isnan(d["value"]):
            line = f"  !! {name:14} no reading within {timeout_s:g} s"
            ok = False
        else:
            line = f"     {name:14} {d['value']:10.3f} {unit:5}"
        print(f"{line}  [{d['device']}]  {raw}".rstrip(), file=out)
    return ok


def probe_inputs(cell: Any, config: Any, out: TextIO, clock: Callable[[], float]) -> list[bool | None]:
    values = list(cell.read_inputs(int(clock() * 1000)))
    print("Inputs", file=out)
    for name, value in zip(INPUTS, values, strict=True):
        c = config.inputs[name]
        polarity = "active-low" if c.active_low else "active-high"
        mark = "!!" if value is None else "  "
        shown = "READ FAILED" if value is None else str(value)
        print(f"  {mark} {name:16} {shown:11} GPIO{c.pin} {polarity}", file=out)
    return values


def probe_outputs(cell: Any, config: Any, out: TextIO, clock: Callable[[], float],
                  sleep: Callable[[float], None], pulse_s: float) -> bool:
    safe = [config.outputs[n].safe for n in OUTPUTS]
    estop = dict(zip(INPUTS, cell.read_inputs(int(clock() * 1000)), strict=True))["estop_ok"]
    print(f"Outputs (estop_ok = {estop}; with the chain open, relayed outputs cannot move)", file=out)
    ok = True
    for i, name in enumerate(OUTPUTS):
        c = config.outputs[name]
        values = list(safe)
        values[i] = not c.safe
        written = cell.write_outputs(values)
        sleep(pulse_s)
        fb_on = _feedback(cell, name, clock)
        back = cell.write_outputs(safe)
        sleep(min(pulse_s, 0.5))
        fb_off = _feedback(cell, name, clock)
        line = (f"{name:9} GPIO{c.pin} {'active-low' if c.active_low else 'active-high'} "
                f"safe={'on' if c.safe else 'off'}: "
                f"energised (logical {'off' if c.safe else 'on'}) {pulse_s:g} s")
        good = written and back
        if not good:
            line += ", WRITE FAILED"
        if name in FEEDBACK:
            fb = FEEDBACK[name]
            follows = fb_on is True and fb_off is False
            line += f", {fb}: {fb_on} then {fb_off}" + ("" if follows else " (should be True then False)")
            good = good and follows
        print(f"  {'  ' if good else '!!'} {line}", file=out)
        ok = ok and good
    return ok


def _feedback(cell: Any, output: str, clock: Callable[[], float]) -> bool | None:
    if output not in FEEDBACK:
        return None
    inputs = dict(zip(INPUTS, cell.read_inputs(int(clock() * 1000)), strict=True))
    return inputs[FEEDBACK[output]]
