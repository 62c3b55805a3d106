"""Fleet: many cells, one broker. N real controllers against one Mosquitto and one historian.

    python -m bench.bench_fleet [--cells 20] [--scan-period 0.1] [--event-period 0.2] [--window 30]

What runs, and why this way:
- the broker is the shipped sample (deploy/mosquitto/mosquitto.conf and crushcell.acl, TLS,
  passwords, client ids bound to usernames, one ACL block per cell), started by the bench on a
  free loopback port (tests/mqtt/samples.py): the per-message ACL and TLS work a plant broker
  does is in the figure;
- each controller is a real `crushcell run --hal sim` process with its own config (cell id,
  credentials): the scan loop, Pump, persister (fsynced latch file), outbox (fsynced) and link
  run exactly as in production, and a controller's CPU is its process's CPU. N loops and links
  in one interpreter would share one GIL and measure a contention no plant has (each cell has
  its own board). The price: N controllers share this machine's cores, which no plant does, so
  the controller figures are pessimistic;
- a sensor fault toggled every `event_period` s (a scenario) makes two event-log records per
  toggle per cell (the scenario step and the sensor change): 10 events a second at 0.2 s;
- the historian is one persistent subscriber (MQTT 3.1.1, clean session false, as a plant
  historian; `viewer-grafana` of the sample ACL) on crushcell/+/events.

Figures, each with its target and PASS or MISS:
- delivery: after the controllers stop (SIGTERM: they deliver what is left and write `end`),
  every cell's events 1..last seq (read from its outbox file) arrived, the first copies in order;
- latency: link hand-over (`ts`, when the Pump gives the event to the link) to the historian,
  over the measurement window. The controller's own path before the hand-over (Pump,
  persister) is measured by bench_mqtt on an unloaded machine; here it would mostly measure N
  controllers sharing two cores;
- broker CPU (from /proc/<pid>/stat) per cell, and controller CPU per cell (each process's
  /proc/<pid>/stat), over the window, in % of one core.
Bounded in time: about 50 s at 20 cells, 70 to 90 s at 50 (which fit at the default 100 ms scan
here; a longer --scan-period also raises [thresholds.dp_rise] window_s to the 10 scan periods the
config check demands: the fleet's events never involve that threshold).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "mqtt"))

import samples  # noqa: E402
from brokers import make_ca, make_passwords  # noqa: E402

from bench.bench_mqtt import LATENCY_P99_MS, figure, instrument  # noqa: E402
from bench.stats import percentile  # noqa: E402

HISTORIAN = ("viewer-grafana", "historian-secret")
# Targets (docs/mqtt.md, "Many cells, many plants"). Broker: 0.5 % of one core per cell means one
# core carries 200 cells at this event rate. Controller: 10 % of one core of this machine per
# cell; a Pi 4 core is a few times slower, so this keeps the board well under half busy.
BROKER_CPU_PER_CELL = 0.5
CONTROLLER_CPU_PER_CELL = 10.0
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process, from /proc/<pid>/stat (None once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICK   # fields 14 and 15 of proc(5)


def cell_names(n: int) -> list[str]:
    return [f"cell{i:02d}" for i in range(1, n + 1)]


def scenario(path: Path, duration_s: float, period_s: float) -> Path:
    """A sensor fault toggled every period_s: one event per toggle."""
    lines = ['name = "fleet"', f"duration_s = {duration_s}", ""]
    t, on = 3.0, True   # after BOOT's self-test
    while t < duration_s:
        mode = "disconnect" if on else "clear"
        lines += ["[[at]]", f"t = {t:.2f}", 'fault = "hf_room"', f'mode = "{mode}"', ""]
        t += period_s
        on = not on
    path.write_text("\n".join(lines))
    return path


def cell_config(folder: Path, cell: str, *, scan_period_s: float, ca: str) -> Path:
    """The shipped cell.toml with this cell's id and credentials (TLS, as the sample broker wants)."""
    text = (ROOT / "config" / "cell.toml").read_text()
    text, n = re.subn(r'^id = "cell1"', f'id = "{cell}"', text, count=1, flags=re.M)
    text, m = re.subn(r"^scan_period_s = [0-9.]+", f"scan_period_s = {scan_period_s}", text, count=1,
                      flags=re.M)
    # The config check wants the dp rise window to span 10 scans; only a slower scan needs more.
    text, k = re.subn(r"(\[thresholds\.dp_rise\][^\[]*?^window_s = )([0-9.]+)",
                      lambda g: g[1] + str(max(float(g[2]), round(10 * scan_period_s, 3))), text, count=1,
                      flags=re.M | re.S)
    if n != 1 or m != 1 or k != 1:
        raise RuntimeError("config/cell.toml: [cell] id, scan_period_s or [thresholds.dp_rise] window_s "
                           "not found; update bench_fleet.py")
    pw = folder / f"{cell}.password"
    pw.write_text(f"{cell}-secret\n")
    pw.chmod(0o600)
    text = text.replace("[mqtt]\n", f'[mqtt]\ntls = true\nrequire_tls = true\nca_file = "{ca}"\n'
                        f'username = "crushcell-{cell}"\npassword_file = "{pw}"\n', 1)
    path = folder / f"{cell}.toml"
    path.write_text(text)
    return path


class Historian:
    """One persistent subscriber for the whole fleet: events by cell, arrival times, availability."""

    def __init__(self, port: int, ca: str):
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.lock = threading.Lock()
        self.seqs: dict[str, list[int]] = {}
        self.latency: list[tuple[float, float]] = []   # (hand-over ts, arrival), wall clock
        self.online: set[str] = set()
        self.events = 0
        self.ready = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=HISTORIAN[0], protocol=mqtt.MQTTv311,
                             clean_session=False)
        instrument(self.c)
        self.c.username_pw_set(*HISTORIAN)
        self.c.tls_set(ca_certs=ca)
        topics = [("crushcell/+/events", 1), ("crushcell/+/availability", 1)]
        self.c.on_connect = lambda c, *_a: c.subscribe(topics)
        self.c.on_subscribe = lambda *_a: self.ready.set()
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        if not self.ready.wait(20):
            raise RuntimeError("historian: no SUBACK from the fleet broker")

    def _on_message(self, _c, _u, msg):
        now = time.time()
        cell = msg.topic.split("/")[1]
        if msg.topic.endswith("/availability"):
            with self.lock:
                (self.online.add if msg.payload == b"online" else self.online.discard)(cell)
            return
        obj = json.loads(msg.payload)
        events = obj["events"] if "events" in obj else [obj]
        with self.lock:
            seqs = self.seqs.setdefault(cell, [])
            for e in events:
                seqs.append(e["seq"])
                self.latency.append((e["ts"], now))
            self.events += len(events)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def outbox(state_dir: Path, cell: str) -> tuple[int, int]:
    """(rows still waiting, highest seq ever) from a stopped controller's outbox file."""
    path = state_dir / f"outbox-{cell}.sqlite3"
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        pending = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        return pending, (row[0] if row else 0)
    finally:
        db.close()


def wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def state_root(on_disk: bool) -> str | None:
    """Where the controllers keep their state dirs: tmpfs unless asked for the disk (see above)."""
    shm = "/dev/shm"
    return None if on_disk or not os.access(shm, os.W_OK) else shm


def run(cells: int = 20, scan_period_s: float = 0.1, event_period_s: float = 0.2, window_s: float = 30.0,
        warmup_s: float = 5.0, state_on_disk: bool = False) -> dict:
    names = cell_names(cells)
    root = state_root(state_on_disk)
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory(dir=root) as state_tmp:
        folder = Path(tmp)
        states = Path(state_tmp)
        certs = make_ca(folder / "certs")
        users = {f"crushcell-{c}": f"{c}-secret" for c in names} | {HISTORIAN[0]: HISTORIAN[1]}
        passwd = make_passwords(folder, users)
        acl = folder / "crushcell.acl"
        acl.write_text(samples.acl_for(names))
        broker = samples.sample_broker(folder / "broker", passwd=passwd, acl=str(acl), certs=certs).start()
        procs: dict[str, subprocess.Popen] = {}
        hist = None
        try:
            hist = Historian(broker.port, certs["ca.crt"])
            scen = scenario(folder / "fleet.toml", 600.0, event_period_s)
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            t_launch = time.monotonic()
            for cell in names:
                config = cell_config(folder, cell, scan_period_s=scan_period_s, ca=certs["ca.crt"])
                args = [sys.executable, "-m", "controller.cli", "run", "--config", str(config),
                        "--hal", "sim", "--no-status", "--broker", f"127.0.0.1:{broker.port}", "--state-dir",
                        str(states / f"state-{cell}"), "--scenario", str(scen)]
                with open(folder / f"{cell}.log", "wb") as log:
                    procs[cell] = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log,
                                                   env=env)
            exited = lambda: any(p.poll() is not None for p in procs.values())  # noqa: E731
            if not wait(lambda: len(hist.online) == cells or exited(), 90.0) or exited():
                dead = {c: (folder / f"{c}.log").read_text()[-500:]
                        for c, p in procs.items() if p.poll() is not None}
                raise RuntimeError(f"only {len(hist.online)} of {cells} cells came online; exited: {dead}")
            startup_s = time.monotonic() - t_launch
            time.sleep(warmup_s)

            # The measurement window: CPU of every process, the events that crossed meanwhile.
            pids = {c: p.pid for c, p in procs.items()}
            b0 = cpu_seconds(broker.proc.pid)
            c0 = {c: cpu_seconds(pid) for c, pid in pids.items()}
            me0 = time.process_time()
            load0 = os.getloadavg()[0]
            w0 = time.time()
            time.sleep(window_s)
            w1 = time.time()
            b1 = cpu_seconds(broker.proc.pid)
            c1 = {c: cpu_seconds(pid) for c, pid in pids.items()}
            me1 = time.process_time()
            load1 = os.getloadavg()[0]

            for p in procs.values():
                p.send_signal(signal.SIGTERM)
            codes = {c: p.wait(60) for c, p in procs.items()}
            boxes = {c: outbox(states / f"state-{c}", c) for c in names}

            def complete() -> bool:
                with hist.lock:
                    return all(set(hist.seqs.get(c, ())) >= set(range(1, boxes[c][1] + 1)) for c in names)

            wait(complete, 20.0)
        finally:
            for p in procs.values():
                if p.poll() is None:
                    p.kill()
                    p.wait(10)
            if hist is not None:
                hist.close()
            broker.stop()

    with hist.lock:
        seqs = {c: list(v) for c, v in hist.seqs.items()}
        lat = [arrived - ts for ts, arrived in hist.latency if w0 <= ts <= w1]
        total_events = hist.events
    problems = []
    for c in names:
        pending, last = boxes[c]
        first = list(dict.fromkeys(seqs.get(c, [])))
        if pending:
            problems.append(f"{c}: {pending} events still in its outbox after a clean stop")
        if first != list(range(1, last + 1)):
            missing = sorted(set(range(1, last + 1)) - set(first))
            problems.append(f"{c}: {len(missing)} missing (first {missing[:5]}), "
                            f"in order: {first == sorted(first)}")
    cpu_c = [(c1[c] - c0[c]) / window_s * 100 for c in names if c0[c] is not None and c1[c] is not None]
    broker_pct = (b1 - b0) / window_s * 100
    p99 = round(percentile(lat, 99) * 1000, 2)
    return {
        "cells": cells, "scan_period_s": scan_period_s, "event_period_s": event_period_s,
        "window_s": window_s, "warmup_s": warmup_s, "startup_s": round(startup_s, 1),
        "machine_cores": os.cpu_count(), "controller_state_dirs": "tmpfs" if root else "disk",
        # The machine's 1-minute load average at the window's start and end: other jobs show here.
        "load_average": [round(load0, 1), round(load1, 1)],
        "events_delivered": total_events, "events_per_s_in_window": round(len(lat) / window_s, 1),
        "exit_codes": sorted(set(codes.values())),
        "delivery": figure("complete" if not problems else f"{len(problems)} cells incomplete", "",
                           "every event of every cell, first copies in seq order", not problems,
                           problems=problems[:10]),
        "latency_link_to_historian": figure(p99, "ms p99", f"< {LATENCY_P99_MS:g} ms p99",
                                            p99 < LATENCY_P99_MS,
                                            p50_ms=round(percentile(lat, 50) * 1000, 2),
                                            max_ms=round(max(lat) * 1000, 2) if lat else None, n=len(lat)),
        "broker_cpu": figure(round(broker_pct / cells, 3), "% of one core per cell",
                             f"< {BROKER_CPU_PER_CELL:g} % of one core per cell",
                             broker_pct / cells < BROKER_CPU_PER_CELL, total_percent=round(broker_pct, 2)),
        "controller_cpu": figure(round(sum(cpu_c) / len(cpu_c), 2), "% of one core per controller (mean)",
                                 f"< {CONTROLLER_CPU_PER_CELL:g} % of one core per controller",
                                 max(cpu_c) < CONTROLLER_CPU_PER_CELL, max_percent=round(max(cpu_c), 2),
                                 total_percent=round(sum(cpu_c), 1)),
        "historian_process_cpu_percent": round((me1 - me0) / window_s * 100, 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cells", type=int, default=20,
                   help="controllers (default 20; 50 fits with --scan-period 0.2)")
    p.add_argument("--scan-period", type=float, default=0.1, help="each controller's scan period (s)")
    p.add_argument("--event-period", type=float, default=0.2, help="one event per cell every this many s")
    p.add_argument("--window", type=float, default=30.0, help="measurement window (s)")
    p.add_argument("--warmup", type=float, default=5.0, help="wait after the last cell is online (s)")
    p.add_argument("--state-on-disk", action="store_true",
                   help="controllers' state dirs on disk instead of tmpfs (they then share one disk)")
    a = p.parse_args(argv)
    print(json.dumps(run(a.cells, a.scan_period, a.event_period, a.window, a.warmup, a.state_on_disk),
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
