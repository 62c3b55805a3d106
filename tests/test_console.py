"""The live status line (issue 13, "The status line and watch").

Hazard H-STATUS: mid-incident the line was cut at 200 characters inside an alarm name and, wider
than an 80-column terminal, it wrapped, so every redraw (\\r) left a stale copy on the screen. An
operator must see, at any width: the state, the first-out cause (what tripped first), and what to
do next; detail gives way first (the alarm list, "+N more").
"""

from __future__ import annotations

import dataclasses
import io
import re

import pytest
from corekit import Bench, params

from cellspec.names import SENSORS
from controller import config as cfg
from controller.console import StatusLine, cells, next_action, status_line
from controller.loop import Snapshot

CONFIG = cfg.load(cfg.__file__.rsplit("/", 2)[0] + "/config/cell.toml")
ANSI = re.compile(r"\033\[[0-9;]*m")

CAUSES = ["co_rise", "h2_high", "co_high", "temp_gas_high", "temp_material_high",
          "sensor_fault:temp_material", "temp_rise", "dp_rise"]
ALARMS = ["o2", "h2_cell", "co_cell", "temp_gas", "temp_material", "lel_cell", "sensor_fault:temp_material",
          "o2_deviation", "dp_cell", "temp_rise", "rto_not_ready"]


def snapshot(state: str = "TRIPPED", causes=CAUSES, alarms=ALARMS) -> Snapshot:
    values = {"o2_a": 20.9, "o2_b": 20.8, "o2_c": 21.0, "lel_cell": 10.0, "h2_cell": 1.5, "co_cell": 350.0,
              "hf_room": 0.5, "lel_rto": 5.0, "temp_gas": 120.0, "temp_material": 95.0, "dp_cell": -40.0,
              "n2_supply": 6.0}
    quality = ["fault:open_circuit" if n == "temp_material" else "good" for n in SENSORS]
    return Snapshot(t=1234.5, state=state, since=1000.0, values=[values[n] for n in SENSORS], quality=quality,
                    voted_o2=20.9, inputs=[True] * 6, outputs=[False] * 8, causes=list(causes),
                    alarms=[(a, "warning", i % 2 == 0) for i, a in enumerate(alarms)], scans=1,
                    overruns_total=0)


@pytest.mark.parametrize("width", [40, 80, 200])
def test_a_long_incident_fits_and_keeps_the_first_out_and_the_next_action(width):
    line = status_line(snapshot(), CONFIG, width)
    assert "\n" not in line and "\r" not in line
    assert cells(line) <= width - 1, (cells(line), line)        # the last column stays free: no wrap
    assert line.startswith("TRIPPED | ")
    assert re.search(r"\b(first-out|1st): co_rise\b", line), line
    assert any(variant in line for variant in next_action("TRIPPED", CONFIG)), line
    if width >= 80:
        assert "first-out: co_rise" in line
        assert "reset at the panel" in line and "5 s" in line, line


def test_the_alarm_list_gives_way_first_with_plus_n_more():
    snap = snapshot("RUNNING", causes=[], alarms=ALARMS)
    full = status_line(snap, CONFIG, None)
    assert "alarms: o2, h2_cell!, co_cell" in full and "Tmat FAULT" in full
    width = cells(full) - 20
    line = status_line(snap, CONFIG, width)
    assert cells(line) <= width - 1
    assert re.search(r"alarms: o2, h2_cell!.* \+\d+ more", line), line        # cut name by name
    for sensor in ("O2 20.90 % (3/3)", "H2 1.50 vol%", "LEL 10.0 %LEL", "CO 350 ppm", "Tmat FAULT",
                   "dp -40 Pa"):
        assert sensor in line, (sensor, line)                               # the sensors all stay


def test_units_come_from_the_config_and_faults_say_so():
    line = status_line(snapshot("IDLE", causes=[], alarms=[]), CONFIG, None)
    assert "O2 20.90 % (3/3) | H2 1.50 vol% | LEL 10.0 %LEL | CO 350 ppm | Tmat FAULT | dp -40 Pa" in line
    other = dataclasses.replace(CONFIG, sensors={**CONFIG.sensors,
                                                 "co_cell": dataclasses.replace(CONFIG.sensors["co_cell"],
                                                                                unit="mg/m3")})
    assert "CO 350 mg/m3" in status_line(snapshot("IDLE", causes=[], alarms=[]), other, None)


def test_next_action_in_words_from_the_config():
    assert next_action("TRIPPED", CONFIG)[0] == "causes must clear for 5 s, then reset at the panel"
    remote = dataclasses.replace(CONFIG, remote_reset=True, timers={**CONFIG.timers, "reset_hold_s": 7.0})
    assert next_action("TRIPPED", remote)[0] == ("causes must clear for 7 s, then reset at the panel or "
                                                 "over MQTT")
    assert next_action("IDLE", CONFIG)[1] == "purge to inert"
    assert next_action("READY", CONFIG)[1] == "start when READY"
    permissive = CONFIG.thresholds["o2"]["start_permissive"]
    assert next_action("PURGING", CONFIG)[0] == (f"inerting: O2 below {permissive:g} % for 10 s, "
                                                 "then start when READY")
    assert next_action("STOPPING", CONFIG)[0] == "run-down 15 s, then READY"


def test_first_out_is_the_first_cause_the_core_latched():
    bench = Bench(params())
    bench.to_state("RUNNING")
    bench.values["h2_cell"] = params()["thresholds"]["h2_cell"]["trip"] + 0.5
    bench.run(1)
    assert bench.core.state_name == "TRIPPED"
    bench.inputs["estop_ok"] = False          # a second cause joins the latch afterwards
    bench.run(1)
    core = bench.core
    assert core.causes()[0] == "h2_high" and "estop" in core.causes()
    snap = Snapshot(t=core.now / 1000.0, state=core.state_name, since=0.0, values=list(core.health.value),
                    quality=list(core.health.quality), voted_o2=core.voted_o2, inputs=list(core.inputs),
                    outputs=list(core.outputs), causes=core.causes(), alarms=core.active_alarms(), scans=1,
                    overruns_total=0)
    assert "first-out: h2_high | also: estop" in status_line(snap, CONFIG, 200)


def test_colour_on_a_terminal_only_and_never_with_no_color(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    tty = Tty()
    StatusLine(CONFIG, stream=tty, width=80).draw(snapshot())
    drawn = tty.getvalue()
    assert drawn.startswith("\r\033[K") and "\033[1;31mfirst-out: co_rise\033[0m" in drawn
    assert cells(ANSI.sub("", drawn[len("\r\033[K"):])) <= 79           # escapes take no columns

    monkeypatch.setenv("NO_COLOR", "1")
    plain = Tty()
    StatusLine(CONFIG, stream=plain, width=80).draw(snapshot())
    assert "\033[1" not in plain.getvalue() and "\033[0m" not in plain.getvalue()

    monkeypatch.delenv("NO_COLOR")
    pipe = io.StringIO()                                                   # not a terminal
    StatusLine(CONFIG, stream=pipe, width=80).draw(snapshot())
    assert "\033[1" not in pipe.getvalue()


def test_the_width_comes_from_the_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "60")
    out = io.StringIO()
    status = StatusLine(CONFIG, stream=out)
    status.draw(snapshot())
    assert cells(out.getvalue()[len("\r\033[K"):]) <= 59
    status.clear()
    assert out.getvalue().endswith("\r\033[K") and not status.shown


def test_the_exit_summary_keeps_a_bounded_list_of_trips():
    """A controller that runs for months must not grow with every trip (found by bench_memory)."""
    from controller.console import SUMMARY_TRIPS, RunRecord

    record = RunRecord()
    for k in range(SUMMARY_TRIPS * 5):
        record.feed([{"type": "trip", "t": float(k), "causes": ["estop"], "seq": k + 1}])
    assert record.trip_count == SUMMARY_TRIPS * 5
    assert len(record.trips) == SUMMARY_TRIPS and record.trips[-1][0] == SUMMARY_TRIPS * 5 - 1
