"""`crushcell watch` against a real Mosquitto (issue 13, "The status line and watch").

Hazards:
- H-WATCH-STALE: watch showed RUNNING after a trip: it preferred the last telemetry to the newer
  status. The state shown must be the newest by message time.
- H-WATCH-SILENT: against a dead broker `watch --plain` printed nothing and exited 1; the terminal
  view showed "(connecting...)" forever; an unknown --cell showed nothing. Each must say why.
- In --plain mode telemetry came at most every 5 s and state changes waited for it.
"""

from __future__ import annotations

import json
import os
import pty
import queue
import select
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest
from brokers import Broker, free_port
from conftest import ROOT, Subscriber

from cellspec.names import INPUTS, OUTPUTS, SENSORS
from controller.link import payloads
from controller.link.watch import View, newer

UNITS = {"o2_a": "%", "o2_b": "%", "o2_c": "%", "h2_cell": "vol%", "lel_cell": "%LEL", "co_cell": "ppm",
         "temp_material": "C", "dp_cell": "Pa"}


def snap(state: str, t: float, causes=(), alarms=()):
    values = {n: 0.5 for n in SENSORS} | {"co_cell": 12.0, "temp_material": 31.0, "dp_cell": -80.0}
    return SimpleNamespace(t=t, state=state, since=t, values=[values[n] for n in SENSORS],
                           quality=["good"] * len(SENSORS), voted_o2=0.5, inputs=[True] * len(INPUTS),
                           outputs=[False] * len(OUTPUTS), causes=list(causes),
                           alarms=[(a, "warning", False) for a in alarms])


def status(state: str, t: float, ts: float, causes=(), alarms=()) -> bytes:
    body = payloads.status(snap(state, t, causes, alarms), ts=ts, cell_id="cell1", version="test",
                           config_sha256="0" * 64, outbox_pending=0, outbox_dropped=0)
    return json.dumps(body).encode()


def telemetry(state: str, t: float, ts: float, seq: int = 1) -> bytes:
    return json.dumps(payloads.telemetry(snap(state, t), ts=ts, seq=seq, units=UNITS)).encode()


# -- the state shown is the newest one --------------------------------------------------------------
def test_the_newest_message_decides_the_state_not_the_topic():
    view = View("crushcell", None, telemetry_period_s=1.0)
    now = 1_700_000_000.0
    view.feed("crushcell/cell1/telemetry", telemetry("RUNNING", 100.0, now), now=0.0)
    view.feed("crushcell/cell1/status", status("TRIPPED", 100.4, now + 0.4, causes=["estop"]), now=0.4)
    assert "TRIPPED" in view.line("cell1") and "first-out: estop" in view.line("cell1")
    # A telemetry message taken before the trip, delivered after the status: not newer.
    view.feed("crushcell/cell1/telemetry", telemetry("RUNNING", 100.2, now + 0.2, seq=2), now=0.5)
    assert "TRIPPED" in view.line("cell1") and "RUNNING" not in view.line("cell1")
    view.feed("crushcell/cell1/telemetry", telemetry("TRIPPED", 101.0, now + 1.0, seq=3), now=1.0)
    assert "TRIPPED" in view.line("cell1")
    # A restarted controller: its clock `t` starts again near 0, the wall clock `ts` goes on.
    view.feed("crushcell/cell1/telemetry", telemetry("BOOT", 0.5, now + 60.0, seq=1), now=60.0)
    assert "BOOT" in view.line("cell1") and "first-out" not in view.line("cell1")
    # A retained status of the last run (older by both clocks) arriving late changes nothing.
    old, new = json.loads(status("TRIPPED", 100.4, now + 0.4)), json.loads(telemetry("BOOT", 0.5, now + 60))
    assert newer(new, old) and not newer(old, new)
    view.feed("crushcell/cell1/status", status("TRIPPED", 100.4, now + 0.4, causes=["estop"]), now=61.0)
    assert "BOOT" in view.line("cell1")


def test_units_are_shown_and_no_empty_line_before_data():
    view = View("crushcell", None, telemetry_period_s=1.0)
    (line,) = view.feed("crushcell/cell1/availability", b"online", now=0.0)
    assert line.endswith("online  waiting for data from cell1 (no status yet)"), line
    assert "?" not in line and "--" not in line
    (line,) = view.feed("crushcell/cell1/telemetry", telemetry("READY", 5.0, 1000.0), now=1.0)
    for text in ("O2a 0.50 %", "H2 0.50 vol%", "LEL 0.5 %LEL", "CO 12 ppm", "Tmat 31 C", "dp -80 Pa"):
        assert text in line, (text, line)


# -- against a real broker ----------------------------------------------------------------------------
class Watch:
    """`crushcell watch` as a subprocess; its stdout lines as they come."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "watch", *args], cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put((time.monotonic(), line.rstrip("\n")))

    def expect(self, what, timeout: float = 10.0) -> tuple[float, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                at, line = self.lines.get(timeout=0.05)
            except queue.Empty:
                continue
            self.seen.append(line)
            if what(line):
                return at, line
        raise AssertionError(f"no line matched within {timeout} s; saw:\n" + "\n".join(self.seen[-20:]))

    def drain(self, seconds: float) -> list[str]:
        end, out = time.monotonic() + seconds, []
        while time.monotonic() < end:
            try:
                out.append(self.lines.get(timeout=0.05)[1])
            except queue.Empty:
                pass
        self.seen += out
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def watch():
    made: list[Watch] = []

    def start(*args: str) -> Watch:
        w = Watch(*args)
        made.append(w)
        return w

    yield start
    for w in made:
        w.stop()


def test_plain_prints_state_changes_at_once_and_telemetry_at_the_configured_rate(broker, watch):
    pub = Subscriber(broker.port, "unused/#")
    try:
        pub.connected.wait(10)
        pub.publish("crushcell/cell1/availability", b"online", retain=True)
        w = watch("--plain", "--broker", f"127.0.0.1:{broker.port}", "--cell", "cell1", "--duration", "20")
        w.expect(lambda ln: "connected to 127.0.0.1:" in ln)
        w.expect(lambda ln: ln.endswith("cell1      online  waiting for data from cell1 (no status yet)"))
        now = time.time()
        pub.publish("crushcell/cell1/telemetry", telemetry("RUNNING", 10.0, now), qos=0)
        w.expect(lambda ln: " RUNNING " in ln and "O2a 0.50 %" in ln and "CO 12 ppm" in ln)
        # Telemetry faster than the configured period (1 s): one line per period, not one per message.
        for i in range(5):
            body = telemetry("RUNNING", 10.1 + i / 10, now + i / 10, seq=2 + i)
            pub.publish("crushcell/cell1/telemetry", body, qos=0)
        assert not [ln for ln in w.drain(0.5) if " RUNNING " in ln]
        sent = time.monotonic()
        pub.publish("crushcell/cell1/status", status("TRIPPED", 10.8, now + 0.8, causes=["estop"],
                                                     alarms=["o2"]), retain=True)
        at, line = w.expect(lambda ln: " TRIPPED " in ln)
        assert at - sent < 1.0, "a state change waits for nothing"
        assert "first-out: estop" in line and "alarms: o2!" in line, line
        # A late, older telemetry message: the newest state (TRIPPED) stays.
        mark = len(w.seen)
        pub.publish("crushcell/cell1/telemetry", telemetry("RUNNING", 10.5, now + 0.5, seq=9), qos=0)
        time.sleep(1.0)                                                   # one telemetry period later
        pub.publish("crushcell/cell1/telemetry", telemetry("TRIPPED", 12.0, now + 2.0, seq=10), qos=0)
        w.drain(0.5)
        later = w.seen[mark:]
        assert not [ln for ln in later if " RUNNING " in ln], later
        assert [ln for ln in later if " TRIPPED " in ln], later          # telemetry goes on, at its rate
    finally:
        pub.close()


def test_plain_against_a_dead_broker_says_why_and_exits_3(watch):
    port = free_port()   # nothing listens there
    w = watch("--plain", "--broker", f"127.0.0.1:{port}", "--connect-timeout", "0.5")
    assert w.proc.wait(15) == 3
    refused = f"connection refused by 127.0.0.1:{port}: nothing listens there"
    w.drain(0.2)
    assert any(refused in ln for ln in w.seen), w.seen
    err = w.proc.stderr.read()
    assert f"crushcell watch: not connected: {refused}" in err and "exit 3" in err, err


def test_a_broker_that_refuses_the_login_exits_4(tmp_path, watch):
    strict = Broker(tmp_path / "strict", extra="allow_anonymous false\n").start()
    try:
        w = watch("--plain", "--broker", f"127.0.0.1:{strict.port}", "--connect-timeout", "0.5")
        assert w.proc.wait(15) == 4
        err = w.proc.stderr.read()
        assert f"127.0.0.1:{strict.port} refused the login: " in err and "password_file" in err, err
    finally:
        strict.stop()


def test_an_unknown_cell_is_named_with_the_cells_on_the_broker(broker, watch):
    pub = Subscriber(broker.port, "unused/#")
    try:
        pub.connected.wait(10)
        for cell in ("cell1", "cell2"):
            pub.publish(f"crushcell/{cell}/availability", b"online", retain=True)
        w = watch("--plain", "--broker", f"127.0.0.1:{broker.port}", "--cell", "cell9", "--duration", "10")
        _, line = w.expect(lambda ln: "no data from cell cell9" in ln)
        where = f"127.0.0.1:{broker.port}"
        assert line.endswith(f"no data from cell cell9 under crushcell/ on {where} after 2 s; "
                             "cells seen: cell1, cell2"), line
    finally:
        pub.close()


def test_the_terminal_view_says_why_it_is_not_connected():
    port = free_port()
    parent, child = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "watch", "--broker", f"127.0.0.1:{port}",
                             "--duration", "1"], cwd=ROOT, stdin=child, stdout=child, stderr=child,
                            env=dict(os.environ, COLUMNS="100"))
    os.close(child)
    screen = b""
    try:
        while True:
            ready, _, _ = select.select([parent], [], [], 10)
            if not ready:
                break
            try:
                chunk = os.read(parent, 65536)
            except OSError:   # the child closed the terminal
                break
            if not chunk:
                break
            screen += chunk
    finally:
        code = proc.wait(10)
        os.close(parent)
    text = screen.decode("utf-8", "replace")
    last = text.rsplit("\033[H\033[J", 1)[-1]                      # the last frame drawn
    assert "NOT CONNECTED: connection refused by 127.0.0.1:" in last, last
    assert "connecting" not in last, last
    assert all(len(ln) < 100 for ln in last.replace("\r", "").splitlines()[:3]), last
    assert code == 3
