"""Trends (issue 13): the trend CSV of `simulate` and `run`, the chart, and rounded MQTT telemetry.

The CSV is checked against the event log of the same run (the trip time, the state), the chart
by what a reader gets (a PNG of the promised pixel size and a sane file size, an SVG), `run`
writes its CSV from the pump thread without ever importing matplotlib, and a machine without
matplotlib gets a usage error naming the extra, checked in a subprocess whose imports of
matplotlib really fail (a sitecustomize that blocks them), not by mocking our own functions.
"""

from __future__ import annotations

import csv
import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from cellspec.names import INPUTS, OUTPUTS, SENSORS
from controller import cli, trendcsv, trendplot
from controller.config import load as load_config
from controller.link import payloads
from controller.loop import Snapshot

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "config" / "cell.toml")

# 40 s: purge, an E-stop (a trip at a time that is not a whole second), an O2 sensor fault, the
# release and a reset: every column moves, and the run takes a fraction of a second.
SCENARIO = """
name = "trend test"
duration_s = 40
seed = 3

[[at]]
t = 3
command = "purge"

[[at]]
t = 12.3
event = "estop"

[[at]]
t = 20
fault = "o2_a"
mode = "disconnect"

[[at]]
t = 25
event = "estop_release"

[[at]]
t = 32
command = "reset"
"""


@pytest.fixture(scope="module")
def scenario_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("scenario") / "trend_test.toml"
    path.write_text(SCENARIO)
    return path


def simulate(capsys, scenario, *extra):
    code = cli.main(["simulate", str(scenario), "--config", CONFIG, *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], [dict(zip(rows[0], r, strict=True)) for r in rows[1:]]


def png_size(path):
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


# -- the CSV of simulate ----------------------------------------------------------------------------
def test_simulate_writes_one_row_per_second_that_agrees_with_the_event_log(tmp_path, capsys,
                                                                           scenario_file):
    out, events = tmp_path / "trend.csv", tmp_path / "events.jsonl"
    code, _, err = simulate(capsys, scenario_file, "--events", str(events), "--telemetry", str(out))
    assert code == 0, err
    assert f"telemetry: 41 rows in {out}" in err
    header, rows = read_csv(out)
    assert header == trendcsv.columns()
    assert header[:3] == ["t", "state", "voted_o2"]
    assert {"o2_a", "o2_a_quality", "in_estop_ok", "out_crusher", "causes"} <= set(header)
    assert len(header) == 3 + 2 * len(SENSORS) + len(INPUTS) + len(OUTPUTS) + 1
    assert [float(r["t"]) for r in rows] == [float(k) for k in range(41)]

    log = [json.loads(line) for line in events.read_text().splitlines()]
    trip = next(e for e in log if e["type"] == "trip")
    assert trip["causes"] == ["estop"] and not float(trip["t"]).is_integer()
    first = next(i for i, r in enumerate(rows) if r["state"] == "TRIPPED")
    assert float(rows[first]["t"]) == math.ceil(trip["t"])       # the first row after the trip
    assert rows[first - 1]["state"] != "TRIPPED"
    assert rows[first]["causes"] == "estop" and rows[first]["in_estop_ok"] == "0"
    assert rows[first]["out_crusher"] == "0" and rows[first]["out_alarm"] == "1"
    # Every state the event log went through at a whole second is the row's state then.
    changes = [(e["t"], e["to"]) for e in log if e["type"] == "state"]
    for r in rows:
        t = float(r["t"])
        assert r["state"] == [s for at, s in changes if at <= t][-1]
    # The fault: its quality, no value (a missing value is an empty cell), the others go on.
    at20 = rows[20]
    assert at20["o2_a_quality"] == "fault:disconnect" and at20["o2_a"] == ""
    assert at20["o2_b_quality"] == "good" and at20["o2_b"] != ""
    # Rounded to each sensor's resolution: O2 0.005 -> 3 decimals, temperatures 0.0625 -> 2.
    assert len(rows[5]["o2_b"].split(".")[1]) == 3
    assert len(rows[5]["temp_gas"].split(".")[1]) == 2
    assert len(rows[5]["voted_o2"].split(".")[1]) == 3
    assert all(r[f"in_{n}"] in ("0", "1") for r in rows for n in INPUTS)


def test_telemetry_every_scan_puts_the_trip_row_at_the_trip_time(tmp_path, capsys, scenario_file):
    out, events = tmp_path / "fine.csv", tmp_path / "events.jsonl"
    code, _, err = simulate(capsys, scenario_file, "--events", str(events), "--telemetry", str(out),
                            "--telemetry-every", "0.1")
    assert code == 0, err
    _, rows = read_csv(out)
    assert len(rows) == 401
    trip = next(json.loads(line) for line in events.read_text().splitlines() if '"type":"trip"' in line)
    first = next(r for r in rows if r["state"] == "TRIPPED")
    assert float(first["t"]) == trip["t"]


@pytest.mark.parametrize("args, message", [
    (["--telemetry-every", "0"], "--telemetry-every 0.0 must be a number of seconds above 0"),
    (["--telemetry-every", "nan"], "--telemetry-every nan must be a number of seconds above 0"),
    (["--plot", "chart.jpg"], "give a file ending in .png, .svg, .pdf"),
])
def test_bad_trend_options_are_usage_errors(tmp_path, capsys, scenario_file, args, message):
    code, out, err = simulate(capsys, scenario_file, "--telemetry", str(tmp_path / "t.csv"), *args)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert out == ""   # refused before the run


# -- the chart -----------------------------------------------------------------------------------------
def test_plot_png_and_svg_from_simulate_and_from_a_csv(tmp_path, capsys, scenario_file):
    png, svg, table = tmp_path / "trend.png", tmp_path / "trend.svg", tmp_path / "trend.csv"
    code, _, err = simulate(capsys, scenario_file, "--events", str(tmp_path / "e.jsonl"),
                            "--telemetry", str(table), "--plot", str(png))
    assert code == 0, err
    assert f"chart: {png}" in err
    assert png_size(png) == trendplot.PIXELS == (1754, 1240)     # A4 landscape at 150 dpi
    assert 20_000 < png.stat().st_size < 300_000
    from PIL import Image

    with Image.open(png) as img:
        assert img.size == (1754, 1240)
        assert img.mode == "P"                   # stored with a palette (small)
        assert len(img.convert("RGB").getcolors(4096)) > 20    # and not blank

    code, _, err = simulate(capsys, scenario_file, "--events", str(tmp_path / "e2.jsonl"), "--plot", str(svg))
    assert code == 0, err
    text = svg.read_text()
    assert text.startswith("<?xml") and "<svg" in text and text.rstrip().endswith("</svg>")
    assert 20_000 < len(text) < 3_000_000

    again = tmp_path / "again.png"
    assert cli.main(["plot", str(table), "--out", str(again), "--config", CONFIG]) == 0
    assert png_size(again) == (1754, 1240)


def test_trend_from_a_csv_finds_the_states_and_trips(tmp_path, capsys, scenario_file):
    table = tmp_path / "trend.csv"
    simulate(capsys, scenario_file, "--events", str(tmp_path / "e.jsonl"), "--telemetry", str(table))
    trend = trendplot.Trend.from_csv(table)
    assert trend.every_s == 1.0
    assert trend.trip_marks() == [(13.0, ["estop"])]
    spans = trend.state_spans()
    assert [s for _, _, s in spans] == ["BOOT", "IDLE", "PURGING", "TRIPPED", "PURGING"]
    assert spans[-1][1] == 40.0
    assert math.isnan(trend.series["o2_a"][20]) and not math.isnan(trend.series["o2_b"][20])


def test_the_plot_command_refuses_what_is_not_a_trend_csv(tmp_path, capsys):
    bogus = tmp_path / "x.csv"
    bogus.write_text("a,b\n1,2\n")
    assert cli.main(["plot", str(bogus), "--out", str(tmp_path / "x.png"), "--config", CONFIG]) == 2
    assert "not a crushcell trend CSV" in capsys.readouterr().err


# -- without matplotlib --------------------------------------------------------------------------------
BLOCK_MATPLOTLIB = '''
import sys

class _Block:
    def find_spec(self, name, path=None, target=None):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib")
        return None

sys.meta_path.insert(0, _Block())
'''


def test_without_matplotlib_plot_is_a_usage_error_naming_the_extra(tmp_path, scenario_file):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCK_MATPLOTLIB)
    env = dict(os.environ, PYTHONPATH=str(site))
    probe = subprocess.run([sys.executable, "-c", "import matplotlib"], env=env, capture_output=True,
                           text=True, timeout=60)
    assert probe.returncode != 0 and "No module named 'matplotlib'" in probe.stderr

    png = tmp_path / "chart.png"
    r = subprocess.run([sys.executable, "-m", "controller.cli", "simulate", str(scenario_file), "--config",
                        CONFIG, "--plot", str(png)], env=env, capture_output=True, text=True, timeout=60,
                       cwd=ROOT)
    assert r.returncode == 2, r.stderr
    assert "pip install 'crushcell[plot]'" in r.stderr
    assert "Traceback" not in r.stderr
    assert r.stdout == "" and not png.exists()      # refused before the simulation ran

    table = tmp_path / "t.csv"
    table.write_text(",".join(trendcsv.columns()) + "\n")
    r = subprocess.run([sys.executable, "-m", "controller.cli", "plot", str(table), "--out", str(png),
                        "--config", CONFIG], env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2 and "pip install 'crushcell[plot]'" in r.stderr and "Traceback" not in r.stderr


# -- run --telemetry -----------------------------------------------------------------------------------
def test_run_writes_the_csv_rotated_by_size_and_never_imports_matplotlib(tmp_path):
    table = tmp_path / "run.csv"
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "controller.cli", "run", "--config", CONFIG,
         "--hal", "sim", "--no-mqtt", "--no-status", "--state-dir", str(tmp_path / "state"),
         "--duration", "10", "--speed", "4", "--telemetry", str(table), "--telemetry-every", "0.5",
         "--telemetry-max-bytes", "1K", "--telemetry-files", "2"],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    imported = [line for line in r.stderr.splitlines() if line.startswith("import time:")]
    assert any("controller.trendcsv" in line for line in imported)    # -X importtime did report
    assert not [line for line in imported if "matplotlib" in line]
    older = tmp_path / "run.1.csv"
    assert table.exists() and older.exists() and not (tmp_path / "run.2.csv").exists()
    rows = []
    for path in (older, table):
        header, part = read_csv(path)
        assert header == trendcsv.columns(wall_clock=True)
        assert path.stat().st_size <= 1024
        rows += part
    ts = [float(r["ts"]) for r in rows]
    t = [float(r["t"]) for r in rows]
    assert t == sorted(t) and ts == sorted(ts) and len(set(t)) == len(t)
    assert all(abs(x - ts[0]) < 3600 for x in ts)     # the wall clock, Unix seconds


def test_the_pump_thread_writes_the_run_csv_never_the_scan_thread(tmp_path):
    import threading

    from controller.loop import ScanLoop
    from controller.runtime import Pump
    from hal.sim import SimulatedCell

    config = load_config(CONFIG)
    writers = set()

    class Watched(trendcsv.RotatingTrendFile):
        def offer(self, snap, ts):
            writers.add(threading.current_thread().name)
            return super().offer(snap, ts)

    trend = Watched(tmp_path / "t.csv", config, every_s=0.5)
    loop = ScanLoop(config, SimulatedCell(config, seed=2))
    pump = Pump(loop, events_file=None, show_status=False, echo=False, trend=trend)
    pump.start()
    try:
        loop.run_realtime(duration_s=2.0, speed=2.0)    # the scan runs in this (the main) thread
    finally:
        pump.done.set()
        loop.wake.set()
        pump.join(5)
        trend.close()
    assert writers == {"crushcell-pump"}
    assert trend.written >= 2


def test_runtime_and_cli_do_not_import_matplotlib():
    code = ("import sys, controller.cli, controller.runtime, controller.trendcsv, controller.trendplot\n"
            "sys.exit(1 if [m for m in sys.modules if m.split('.')[0] == 'matplotlib'] else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=60).returncode == 0


def snap(t, o2=20.341610114521412, state="IDLE", causes=()):
    values = [o2] * len(SENSORS)
    values[SENSORS.index("temp_gas")] = 21.03125
    values[SENSORS.index("co_cell")] = math.nan
    quality = ["good"] * len(SENSORS)
    quality[SENSORS.index("co_cell")] = "fault:nan"
    return Snapshot(t=t, state=state, since=0.0, values=values, quality=quality, voted_o2=o2,
                    inputs=[True] * len(INPUTS), outputs=[False] * len(OUTPUTS), causes=list(causes),
                    alarms=[], scans=0, overruns_total=0)


def test_the_run_csv_rotates_keeps_n_files_and_appends_after_a_restart(tmp_path):
    config = load_config(CONFIG)
    path = tmp_path / "t.csv"
    header = ",".join(trendcsv.columns(wall_clock=True)) + "\n"
    f = trendcsv.RotatingTrendFile(path, config, every_s=1.0, max_bytes=len(header) + 500, files=3)
    for k in range(30):
        assert f.offer(snap(k * 0.5), 1e9 + k) is None     # rows at 0, 1, 2, ... s: half are not due
    f.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["t.1.csv", "t.2.csv", "t.csv"]          # 3 files kept, the oldest dropped
    assert f.rotations > 2
    for p in tmp_path.iterdir():
        text = p.read_text()
        assert text.startswith(header) and text.count("t,ts,") == 1 and len(text) <= len(header) + 500
    newest = [r["t"] for r in read_csv(path)[1]]
    assert newest[-1] == "14.0"
    # A restart appends under the same header; a file with other columns is moved aside first.
    f = trendcsv.RotatingTrendFile(path, config)
    f.offer(snap(100.0), 1e9)
    f.close()
    assert path.read_text().count("t,ts,") == 1 and read_csv(path)[1][-1]["t"] == "100.0"
    path.write_text("old,columns\n1,2")                       # and cut mid-line by a crash
    f = trendcsv.RotatingTrendFile(path, config)
    f.offer(snap(5.0), 1e9)
    f.close()
    assert (tmp_path / "t.1.csv").read_text() == "old,columns\n1,2"
    assert read_csv(path)[1][0]["t"] == "5.0"


def test_a_failing_disk_is_told_once_and_never_raises(tmp_path):
    config = load_config(CONFIG)
    folder = tmp_path / "gone"
    folder.mkdir()
    f = trendcsv.RotatingTrendFile(folder / "t.csv", config)
    (folder / "t.csv").unlink()
    folder.rmdir()
    f.close()                                        # the next row must reopen, and cannot
    first = f.offer(snap(1.0), 1e9)
    assert first is not None and "cannot write telemetry" in first
    assert f.offer(snap(2.0), 1e9) is None           # told once per kind
    folder.mkdir()
    assert f.offer(snap(3.0), 1e9) is None and f.written == 1


# -- MQTT telemetry rounded to each sensor's resolution ------------------------------------------------
def test_telemetry_values_are_rounded_to_each_sensors_resolution():
    config = load_config(CONFIG)
    resolutions = {name: s.resolution for name, s in config.sensors.items()}
    body = payloads.telemetry(snap(3.0), ts=1.0, seq=1, units={}, resolutions=resolutions)
    text = payloads.dumps(body)
    assert "20.341610114521412" not in text
    assert body["sensors"]["o2_a"]["value"] == 20.342                # resolution 0.005: 3 decimals
    assert body["sensors"]["lel_cell"]["value"] == 20.34             # 0.05: 2
    assert body["sensors"]["co_cell"]["value"] is None               # NaN travels as null
    assert body["sensors"]["dp_cell"]["value"] == 20.3               # 0.1: 1
    assert body["sensors"]["temp_gas"]["value"] == 21.03             # 0.0625: 2
    assert body["voted"]["o2"] == 20.342
    # Without resolutions (an older caller) nothing changes.
    raw = payloads.telemetry(snap(3.0), ts=1.0, seq=1, units={})
    assert raw["sensors"]["o2_a"]["value"] == 20.341610114521412
