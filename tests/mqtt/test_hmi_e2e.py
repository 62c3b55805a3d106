"""End to end, as people use it: a real Mosquitto, a real `crushcell run --hal sim --scenario` and a
real `crushcell hmi` (both subprocesses), the pages open in a real headless Chromium (DevTools over
a pipe, tests/mqtt/test_hmi.py's Browser).

The scenario presses the E-stop a few seconds in. The test records when the controller's trip event
reaches a plain MQTT client and when the cause appears on the open cell view (a MutationObserver in
the page takes Date.now()), and prints the delay: the target is 2 s, the assert allows 10 s so a
loaded 2-core CI machine does not fail it. Then the controller is killed (SIGKILL) and the plant
view's tile must turn OFFLINE from the broker's last will. Screenshots go to the test's tmp dir.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest
from brokers import free_port, wait_port
from conftest import ROOT, wait_for
from controllers import Controller
from plant import fast_config_file
from test_hmi import Browser, _chromium

BASE = "crushcell/cell1"
TRIP_AT_S = 4.0     # scenario time of the E-stop
SPEED = 1.0
TARGET_S = 2.0      # issue 14: the trip with its cause on the page within 2 s
ALLOWED_S = 10.0    # what the assert allows on a loaded machine

# Observes #live from the moment the script runs; records the first time the trip and its cause show.
OBSERVER = """
(() => {
  window.__seen = null;
  const check = () => {
    const badge = document.querySelector('#live [data-state]');
    const cause = document.querySelector('#live .cause.first-out');
    if (!window.__seen && badge && badge.dataset.state === 'TRIPPED'
        && cause && cause.textContent === 'estop') {
      window.__seen = Date.now();
    }
  };
  new MutationObserver(check).observe(document.body, {subtree: true, childList: true, characterData: true});
  check();
  return 'ok';
})()
"""


def estop_scenario(folder) -> os.PathLike:
    path = folder / "estop_early.toml"
    path.write_text('name = "estop early"\nduration_s = 3600\nseed = 5\n\n'
                    '[[at]]\nt = 1\ncommand = "purge"\n\n'
                    f'[[at]]\nt = {TRIP_AT_S}\nevent = "estop"\n')
    return path


class HmiProcess:
    def __init__(self, config, broker_port: int, state_dir, log):
        self.port = free_port()
        argv = [sys.executable, "-m", "controller.cli", "hmi", "--config", str(config),
                "--broker", f"127.0.0.1:{broker_port}", "--listen", f"127.0.0.1:{self.port}",
                "--state-dir", str(state_dir)]
        with open(log, "ab") as logf:
            self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=logf, stderr=logf,
                                         env=dict(os.environ, PYTHONUNBUFFERED="1"))
        if not wait_port(self.port, 20):
            self.stop()
            raise AssertionError(f"crushcell hmi did not listen on {self.port}: {log.read_text()[-2000:]}")

    def state(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/state", timeout=5) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def screenshot(browser: Browser, session: str, path) -> None:
    shot = browser.call("Page.captureScreenshot", session, format="png")
    path.write_bytes(base64.b64decode(shot["data"]))


def first_trip(sub) -> float | None:
    """Wall-clock arrival time of the first trip record on the events topic, or None."""
    offset = time.time() - time.monotonic()
    with sub.lock:
        items = list(zip(sub.all, sub.arrivals, strict=True))
    for (topic, payload, _retain), arrived in items:
        if not topic.endswith("/events"):
            continue
        obj = json.loads(payload)
        for ev in obj["events"] if "events" in obj else [obj]:
            if ev.get("type") == "trip" and "estop" in json.dumps(ev.get("causes") or ev):
                return arrived + offset
    return None


def test_a_real_controller_trips_and_dies_and_the_open_pages_show_it(broker, subscriber_factory, tmp_path):
    _chromium()
    config = fast_config_file(tmp_path)
    state = tmp_path / "state"
    sub = subscriber_factory(broker.port, [f"{BASE}/events", f"{BASE}/availability"])
    wait_for(sub.subscribed.is_set, 10, what="the test client to subscribe")
    hmi = HmiProcess(config, broker.port, state, tmp_path / "hmi.log")
    ctl = Controller(config, state, broker.port, scenario=estop_scenario(tmp_path), speed=SPEED,
                     log=tmp_path / "controller.log")
    browser = None
    try:
        browser = Browser(tmp_path)
        ctl.start()
        wait_for(lambda: hmi.state().get("cells", {}).get("cell1", {}).get("availability") == "online", 15,
                 what="cell1 online at the HMI")
        cell = browser.open(f"http://127.0.0.1:{hmi.port}/cell/cell1")
        browser.call("Page.enable", cell)
        live = "document.getElementById('live') ? document.getElementById('live').innerText : ''"
        wait_for(lambda: "cell1" in browser.text(cell, "document.title") and browser.text(cell, live), 15,
                 what="the cell view to load")
        assert browser.text(cell, OBSERVER) == "ok"
        # The live state, before the trip: the controller is purging or inerted (or already tripped
        # if the machine is very slow; the trip itself is checked below).
        badge = "(document.querySelector('#live [data-state]') || {dataset: {}}).dataset.state || ''"
        wait_for(lambda: browser.text(cell, badge) in ("IDLE", "PURGING", "READY", "TRIPPED"), 15,
                 what="the live state on the cell view")

        tripped = wait_for(lambda: first_trip(sub), 20, what="the controller's trip event")
        seen = wait_for(lambda: float(browser.text(cell, "String(window.__seen || '')") or 0), ALLOWED_S + 5,
                        what="the trip and its cause on the open page")
        delay = seen / 1000.0 - tripped
        print(f"\ntrip event -> cause on the page: {delay * 1000:.0f} ms (target {TARGET_S * 1000:.0f} ms)")
        text = browser.text(cell, live)
        assert text.startswith("TRIPPED") and "first-out: estop" in text, text
        assert delay < ALLOWED_S, f"the trip took {delay:.1f} s to show (target {TARGET_S} s)"
        # The trend has points (one every 5 s from the first telemetry: wait for the second).
        points = "Math.max(0, ...[...document.querySelectorAll('[data-trend]')].map(f => +f.dataset.points))"
        wait_for(lambda: float(browser.text(cell, f"String({points})") or 0) >= 1, 15,
                 what="points in the trends")
        assert browser.text(cell, "document.querySelector('[data-trend] polyline') ? 'y' : 'n'") == "y"
        screenshot(browser, cell, tmp_path / "cell-tripped.png")

        plant = browser.open(f"http://127.0.0.1:{hmi.port}/")
        browser.call("Page.enable", plant)
        tile = "document.getElementById('tile-cell1') ? document.getElementById('tile-cell1').innerText : ''"
        wait_for(lambda: "online" in browser.text(plant, tile), 15, what="the tile online")
        assert "OFFLINE" not in browser.text(plant, tile)
        ctl.kill9()
        wait_for(lambda: sub.snapshot("/availability")[-1][1] == b"offline", 30, what="the last will")
        wait_for(lambda: "OFFLINE" in browser.text(plant, tile), 15, what="the tile to turn OFFLINE")
        cls = browser.text(plant, "document.getElementById('tile-cell1').className")
        assert "offline" in cls.split(), cls
        screenshot(browser, plant, tmp_path / "plant-offline.png")
    except BaseException:
        for name in ("hmi.log", "controller.log"):
            p = tmp_path / name
            if p.exists():
                print(f"--- {name}\n{p.read_text()[-3000:]}")
        raise
    finally:
        if browser is not None:
            browser.close()
        ctl.stop()
        hmi.stop()


if __name__ == "__main__":   # pragma: no cover
    sys.exit(pytest.main([__file__, "-s"]))
