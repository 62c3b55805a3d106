"""Scenario files: timed commands, process events, faults and forced values for the sim.

Why: the same controller runs the same story every time (seeded), so a trip, a recovery or a
regression can be replayed, diffed and asserted on. A scenario that names anything unknown is
rejected before it runs, with the file, the step and the name.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from cellspec.configtools import InputFileError, Section, fmt, read_toml
from cellspec.names import COMMANDS, OUTPUTS, SENSORS, SOURCES

MAX_DURATION_S = 30 * 24 * 3600.0   # a month of simulated time per scenario at most
STEP_ACTIONS = ("command", "event", "fault", "force")
STEP_KEYS = ("t", *STEP_ACTIONS, "source", "mode", "value")   # every key an [[at]] step may have


class ScenarioError(InputFileError):
    """The scenario file is wrong; `errors` lists every problem."""


@dataclass(frozen=True)
class Step:
    t: float
    kind: str           # command | event | fault | force
    name: str           # action, event name, sensor/input/output name
    arg: Any = None     # source, fault mode, forced value (None = release)


@dataclass(frozen=True)
class Scenario:
    path: str
    name: str
    duration_s: float
    seed: int
    steps: tuple[Step, ...]


def _sim_vocabulary() -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
    """The sim's events, and the fault modes allowed for each fault target (sensor, input, output)."""
    from hal.sim import (
        EVENTS,
        INPUT_FAULT_MODES,
        INPUT_FAULT_TARGETS,
        OUTPUT_FAULT_MODES,
        SENSOR_FAULT_MODES,
    )

    modes = {name: tuple(SENSOR_FAULT_MODES) for name in SENSORS}
    modes.update((name, tuple(INPUT_FAULT_MODES)) for name in INPUT_FAULT_TARGETS)
    modes.update((name, tuple(OUTPUT_FAULT_MODES)) for name in OUTPUTS)
    return tuple(EVENTS), modes


def load(path: str | Path) -> Scenario:
    path = Path(path)
    data, _blob = read_toml(path, ScenarioError)
    return parse(data, str(path))


def parse(data: dict[str, Any], name: str = "<scenario>") -> Scenario:
    errors: list[str] = []
    events, fault_modes = _sim_vocabulary()
    fault_targets = tuple(fault_modes)
    root = Section(name, "", data, errors)
    title = root.string("name", "unnamed")
    root.string("description", "")
    duration = root.number("duration_s", above=0.0, maxval=MAX_DURATION_S)
    seed = root.integer("seed", 0, minval=0)
    raw_steps = root._raw("at", [])
    root.check_unknown()
    if not isinstance(raw_steps, list):
        root.error("at must be a list of [[at]] tables")
        raw_steps = []
    steps = []
    for k, raw in enumerate(raw_steps, start=1):
        t_label = f"t = {fmt(raw.get('t'))}" if isinstance(raw, dict) and "t" in raw else "no t"
        s = Section(name, "at", raw, errors, label=f"[[at]] #{k} ({t_label}) ")
        t = s.number("t", minval=0.0)
        if isinstance(duration, float) and t == t and t > duration:
            s.key_error("t", f"is after the end of the scenario (duration_s = {fmt(duration)})")
        actions = [a for a in STEP_ACTIONS if a in s.data]
        if len(actions) != 1:
            unknown = [k for k in s.data if k not in STEP_KEYS]
            hints = [f"unknown key '{k}'" + (f" (did you mean '{m[0]}'?)" if (m := difflib.get_close_matches(
                k, STEP_KEYS, n=1, cutoff=0.6)) else "") for k in unknown]
            s.error("needs exactly one of command, event, fault, force"
                    + (f" (has {', '.join(actions)})" if actions else "")
                    + ("; " + "; ".join(hints) if hints else ""))
            s.used.update(s.data)
            continue
        kind = actions[0]
        if kind == "command":
            action = s.string("command", choices=COMMANDS)
            source = s.string("source", "local", choices=SOURCES)
            steps.append(Step(t, kind, action, source))
        elif kind == "event":
            steps.append(Step(t, kind, s.string("event", choices=events)))
        elif kind == "fault":
            target = s.string("fault", choices=fault_targets)
            # An unknown target is reported once, by name; its mode cannot be judged without it.
            modes = fault_modes.get(target)
            steps.append(Step(t, kind, target, s.string("mode", choices=modes)))
        else:
            target = s.string("force", choices=SENSORS)
            if s.data.get("value") == "release":
                s.used.add("value")
                value = None
            else:
                value = s.number("value")
            steps.append(Step(t, kind, target, value))
        s.check_unknown()
    if errors:
        raise ScenarioError(errors)
    steps.sort(key=lambda st: st.t)   # stable: steps at the same time keep file order
    return Scenario(name, title, duration, seed, tuple(steps))


class Player:
    """Applies a scenario's steps to a running loop when their time comes."""

    def __init__(self, scenario: Scenario, loop: Any):
        self.steps = scenario.steps
        self.loop = loop
        self.next = 0

    def __call__(self, now_ms: int) -> None:
        steps = self.steps
        while self.next < len(steps) and steps[self.next].t * 1000.0 <= now_ms:
            self.apply(steps[self.next], now_ms)
            self.next += 1

    def apply(self, step: Step, now_ms: int) -> None:
        io = self.loop.io
        record: dict[str, Any] = {"t": now_ms / 1000.0, "type": "scenario", "action": step.kind,
                                  "name": step.name}
        if step.kind == "command":
            self.loop.submit(step.name, step.arg)
            record["source"] = step.arg
        elif step.kind == "event":
            io.event(step.name)
        elif step.kind == "fault":
            io.inject_fault(step.name, step.arg)
            record["mode"] = step.arg
        else:
            io.force(step.name, step.arg)
            record["value"] = "release" if step.arg is None else step.arg
        self.loop.events.append(record)


class EventLog:
    """Writes events as JSON lines (compact, one per line, in order).

    Every batch is flushed to the operating system before write() returns: a kill -9 then
    loses nothing that was written (issue 10: a buffered file lost 26 events), and the pump
    echoes an event to the journal only after it is in the file.
    """

    def __init__(self, stream: IO[str]):
        self.stream = stream
        self.count = 0
        self._end_cut_line(stream)

    @staticmethod
    def _end_cut_line(stream: IO[str]) -> None:
        """Appending to a file whose last line a crash cut: end that line first, or the first event
        of this run would be glued to it and lost to every reader."""
        try:
            name = stream.name
            if not isinstance(name, str) or stream.tell() == 0:
                return
            with open(name, "rb") as f:
                f.seek(-1, 2)
                last = f.read(1)
        except (AttributeError, OSError, ValueError):
            return
        if last != b"\n":
            stream.write("\n")
            stream.flush()

    def write(self, events: list[dict]) -> None:
        w = self.stream.write
        dumps = json.dumps
        for e in events:
            w(dumps(e, separators=(",", ":"), allow_nan=False, default=str) + "\n")
        self.stream.flush()
        self.count += len(events)


def clean(value: Any) -> Any:
    """JSON has no NaN: a missing number travels as null."""
    if isinstance(value, float) and value != value:
        return None
    return value


def end_record(loop: Any, **why: Any) -> dict:
    """The last line: the state, and the outputs as they were left.

    Once the loop has forced the safe state, `outputs` are the configured safe states and
    `commanded` what the last scan had commanded: a log must never say the crusher was left on
    when it was switched off on the way out. `why` adds fields (the signal that ended a run).
    """
    core = loop.core
    rec = {"t": core.now / 1000.0, "type": "end", "state": core.state_name, "causes": core.causes()}
    if getattr(loop, "forced_safe", False):
        rec["outputs"] = loop.config.safe_outputs()
        rec["forced_safe"] = True
        rec["commanded"] = core.outputs_dict()
    else:
        rec["outputs"] = core.outputs_dict()
        rec["forced_safe"] = False
    rec.update(why)
    return rec


def simulate(scenario: Scenario, config: Any, stream: IO[str], recorder: Any = None) -> dict:
    """Run `scenario` in simulated time; write the event log to `stream`; return the end record.

    recorder: sees every event (on_events) and the loop after every scan (on_scan), e.g. the
    trend CSV and chart of controller/trendcsv.py; it runs in this thread, between scans.
    """
    from controller.loop import ScanLoop
    from hal.sim import SimulatedCell

    cell = SimulatedCell(config, seed=scenario.seed)
    loop = ScanLoop(config, cell)
    log = EventLog(stream)
    first = loop.initial_events()
    log.write(first)
    if recorder is not None:
        recorder.on_events(first)
    player = Player(scenario, loop)

    def after_scan() -> None:
        if loop.events:
            events = loop.drain_events()
            log.write(events)
            if recorder is not None:
                recorder.on_events(events)
        if recorder is not None:
            recorder.on_scan(loop)

    loop.run_simulated(int(scenario.duration_s * 1000), before_scan=player, after_scan=after_scan)
    end = end_record(loop)
    log.write([end])
    if recorder is not None:
        recorder.on_events([end])
    return end
