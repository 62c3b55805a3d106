"""`crushcell hmi` (issue 14) against a real Mosquitto, looked at in a real headless Chromium.

Two cells are played by a plain MQTT client publishing the public topics (availability, status,
telemetry as docs/mqtt.md and docs/schemas/ define them); the HMI runs in this process on a free
port. The browser is Debian's `chromium` (.ci/run installs it); the browser tests are skipped, with
the reason, only when it is not installed or cannot start here.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import shutil
import subprocess
import threading
import time
from html.parser import HTMLParser

import pytest
import schemas
from conftest import plant_config, wait_for

from controller.hmi.server import Hmi, make_server
from controller.hmi.settings import HmiSettings

PREFIX = "crushcell"
SENSOR_VALUES = {"o2_a": 1.1, "o2_b": 1.12, "o2_c": 1.09, "lel_cell": 3.2, "h2_cell": 0.05, "co_cell": 640.0,
                 "hf_room": 0.1, "lel_rto": 2.5, "n2_supply": 6.1, "temp_gas": 41.0, "temp_material": 77.5,
                 "dp_cell": -60.0}
OUTPUTS = {"crusher": False, "feed": False, "n2_purge": True, "n2_boost": True, "exhaust": False,
           "vent": True, "alarm": True, "horn": False}
HEALTH = {"scans": 10, "overruns": 0, "overruns_total": 0, "scan_max_s": 0.01, "events_dropped": 0,
          "outbox_pending": 0, "outbox_dropped": 0, "link_restarts": 0, "io_faults": {}}


def status(cell: str, state: str, causes=(), alarms=(), ts: float | None = None) -> str:
    ts = time.time() if ts is None else ts
    return json.dumps({"ts": ts, "cell_id": cell, "state": state, "since": ts - 5, "since_t": 1.0, "t": 6.0,
                       "causes": list(causes), "alarms": list(alarms), "outputs": OUTPUTS, "version": "0.1.0",
                       "config_sha256": "0" * 64, "outbox_pending": 0, "outbox_dropped": 0, "health": HEALTH})


def telemetry(state: str, seq: int = 1, ts: float | None = None) -> str:
    ts = time.time() if ts is None else ts
    units = plant_config().sensors
    sensors = {k: {"value": v, "unit": units[k].unit, "quality": "good"} for k, v in SENSOR_VALUES.items()}
    sensors["hf_room"] = {"value": None, "unit": "ppm", "quality": "fault:disconnect"}
    inputs = {k: True for k in ("estop_ok", "door_closed", "rto_ready", "remote_enable")}
    inputs.update(crusher_running=False, local_reset=False)
    return json.dumps({"ts": ts, "seq": seq, "t": 6.0, "state": state, "sensors": sensors,
                       "voted": {"o2": 1.1}, "inputs": inputs, "outputs": OUTPUTS, "health": HEALTH})


@pytest.fixture
def start_hmi(broker):
    made = []

    def start(commands: bool = False, remote_reset: bool = False):
        config = dataclasses.replace(plant_config(), remote_reset=remote_reset,
                                     hmi=HmiSettings(listen="127.0.0.1:0", commands=commands))
        hmi = Hmi(config, "127.0.0.1", broker.port, commands=commands)
        server = make_server(hmi, "127.0.0.1", 0)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        hmi.start()
        made.append((hmi, server))
        wait_for(lambda: hmi.store.connected, 10, what="the HMI to connect to the broker")
        return hmi, server.server_address[1]

    yield start
    for hmi, server in made:
        server.stopping = True
        server.shutdown()
        server.server_close()
        hmi.stop()


@pytest.fixture
def two_cells(broker, subscriber_factory):
    """cell1 TRIPPED on co_rise (online), cell2 RUNNING but offline; retained as a controller does."""
    pub = subscriber_factory(broker.port, [f"{PREFIX}/+/cmd"])
    wait_for(pub.connected.is_set, 10, what="the test client to connect")
    pub.publish(f"{PREFIX}/cell1/availability", "online", retain=True)
    alarm = {"name": "co_cell", "severity": "warning", "acked": False}
    pub.publish(f"{PREFIX}/cell1/status", status("cell1", "TRIPPED", ["co_rise", "temp_rise"], [alarm]),
                retain=True)
    pub.publish(f"{PREFIX}/cell2/availability", "offline", retain=True)
    pub.publish(f"{PREFIX}/cell2/status", status("cell2", "RUNNING"), retain=True)
    return pub


def test_the_played_cells_speak_the_public_contract():
    """What the tests publish is what a controller publishes: valid against docs/schemas/."""
    alarm = {"name": "co_cell", "severity": "warning", "acked": False}
    payload = status("cell1", "TRIPPED", ["co_rise"], [alarm]).encode()
    assert schemas.check(f"{PREFIX}/cell1/status", payload) == []
    assert schemas.check(f"{PREFIX}/cell1/telemetry", telemetry("TRIPPED").encode()) == []


def get(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    r = conn.getresponse()
    return r.status, r.read().decode()


def post(port: int, path: str, body: dict, ctype: str = "application/json") -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", path, json.dumps(body), {"Content-Type": ctype})
    r = conn.getresponse()
    return r.status, json.loads(r.read())


def seen(hmi, cell: str, what: str = "state"):
    return lambda: hmi.store.view().get("cells", {}).get(cell, {}).get(what)


# -- in a real browser ------------------------------------------------------------------------------------
def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no Chromium installed (Debian: apt-get install chromium; .ci/run installs it)")


def dump_dom(tmp_path, url: str) -> str:
    argv = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", url]
    try:
        run = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except OSError as exc:
        pytest.skip(f"Chromium cannot run on this machine: {exc}")
    if run.returncode != 0 or "<html" not in run.stdout:
        pytest.skip(f"Chromium cannot run on this machine (exit {run.returncode}): {run.stderr[-800:]}")
    return run.stdout


class Dom(HTMLParser):
    """Text and attributes of every element with an id or a data-cell / data-sensor attribute."""

    def __init__(self, text: str):
        super().__init__()
        self.by_key: dict[str, dict] = {}
        self.buttons: list[str] = []
        self._open: list[tuple[str, str | None]] = []
        self._text: dict[int, list[str]] = {}
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        key = ((a.get("data-cell") and "cell:" + a["data-cell"])
               or (a.get("data-sensor") and "sensor:" + a["data-sensor"]) or a.get("id"))
        if tag == "button":
            self.buttons.append(a.get("data-action") or "")
        if tag in ("input", "meta", "br"):
            return
        self._open.append((tag, key))
        self._text[len(self._open)] = []
        if key:
            self.by_key[key] = {"attrs": a, "text": ""}

    def handle_endtag(self, tag):
        while self._open:
            depth = len(self._open)
            t, key = self._open.pop()
            text = " ".join(self._text.pop(depth, []))
            if self._open:
                self._text.setdefault(len(self._open), []).append(text)
            if key:
                self.by_key[key]["text"] = " ".join(text.split())
            if t == tag:
                break

    def handle_data(self, data):
        if self._open:
            self._text.setdefault(len(self._open), []).append(data)


def test_plant_and_cell_views_in_a_real_browser(start_hmi, two_cells, tmp_path):
    hmi, port = start_hmi()
    wait_for(seen(hmi, "cell1"), 10, what="cell1's status at the HMI")
    wait_for(seen(hmi, "cell2"), 10, what="cell2's status at the HMI")
    now = time.time()
    two_cells.publish(f"{PREFIX}/cell1/telemetry", telemetry("TRIPPED", 1, now - 10), qos=0)
    two_cells.publish(f"{PREFIX}/cell1/telemetry", telemetry("TRIPPED", 2, now), qos=0)
    wait_for(lambda: (seen(hmi, "cell1", "telemetry")() or {}).get("seq") == 2, 10,
             what="cell1's telemetry at the HMI")

    dom = Dom(dump_dom(tmp_path, f"http://127.0.0.1:{port}/"))
    tile1, tile2 = dom.by_key["cell:cell1"], dom.by_key["cell:cell2"]
    assert "TRIPPED" in tile1["text"] and "first-out: co_rise" in tile1["text"], tile1
    assert "OFFLINE" not in tile1["text"] and "online" in tile1["text"]
    assert "alarms: 1" in tile1["text"] and "s ago" in tile1["text"], tile1
    assert "RUNNING" in tile2["text"] and "OFFLINE" in tile2["text"], tile2
    assert "offline" in tile2["attrs"]["class"].split()
    assert "no telemetry yet" in tile2["text"]

    dom = Dom(dump_dom(tmp_path, f"http://127.0.0.1:{port}/cell/cell1"))
    text = dom.by_key["live"]["text"]
    assert "TRIPPED" in text and "first-out: co_rise" in text and "also latched: temp_rise" in text, text
    assert "reset at the panel" in text   # the next action, from the config (remote_reset false)
    assert "co_cell warning NO" in text
    co = dom.by_key["sensor:co_cell"]["text"]
    assert co.startswith("co_cell 640 ppm good"), co
    assert "warning 200, trip 1000" in co
    assert dom.by_key["sensor:hf_room"]["text"].startswith("hf_room -- ppm fault:disconnect")
    assert dom.by_key["sensor:temp_material"]["text"].startswith("temp_material 77.5 C good")
    assert dom.buttons == [], "commands are off by default: no button"
    page = get(port, "/cell/cell1")[1]   # the trends: a point every 5 s, drawn on the server
    assert 'data-trend="voted_o2" data-points="2"' in page and 'data-trend="temp_gas" data-points="2"' in page


def test_the_event_stream_pushes_a_new_status(start_hmi, two_cells, broker):
    hmi, port = start_hmi()
    wait_for(seen(hmi, "cell1"), 10, what="cell1's status at the HMI")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/sse")
    r = conn.getresponse()
    assert r.status == 200 and r.getheader("Content-Type") == "text/event-stream"

    def next_update() -> str:
        data = []
        while True:
            line = r.fp.readline().decode()
            assert line, "the stream ended"
            if line.startswith("data: "):
                data.append(line[6:].rstrip("\n"))
            elif line == "\n" and data:
                return "\n".join(data)

    first = next_update()
    assert "TRIPPED" in first and "IDLE" not in first
    two_cells.publish(f"{PREFIX}/cell1/status", status("cell1", "IDLE"), retain=True)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        update = next_update()
        if "IDLE" in update:
            break
    else:
        raise AssertionError("no update with the new state within 5 s")
    conn.close()


def test_commands_are_off_by_default(start_hmi, two_cells):
    hmi, port = start_hmi()
    wait_for(seen(hmi, "cell1"), 10, what="cell1's status at the HMI")
    code, page = get(port, "/cell/cell1")
    assert code == 200 and "<button" not in page and 'id="cmds"' not in page
    code, answer = post(port, "/cell/cell1/cmd", {"action": "stop", "by": "ana"})
    assert code == 403 and "commands are off" in answer["message"]
    time.sleep(0.3)
    assert two_cells.snapshot("/cmd") == []


def test_commands_on_reach_the_cmd_topic_with_by_and_never_offer_reset(start_hmi, two_cells):
    hmi, port = start_hmi(commands=True, remote_reset=False)
    wait_for(seen(hmi, "cell1"), 10, what="cell1's status at the HMI")
    dom = Dom(get(port, "/cell/cell1")[1])
    assert dom.buttons == ["purge", "start", "stop", "shutdown", "ack"]
    code, answer = post(port, "/cell/cell1/cmd", {"action": "start", "by": "ana"})
    assert code == 202, answer
    msgs = wait_for(lambda: two_cells.json("/cell1/cmd"), 10, what="the command on the cmd topic")
    assert msgs[0]["action"] == "start" and msgs[0]["by"] == "hmi:ana" and msgs[0]["id"] == answer["id"]
    assert not two_cells.snapshot("/cell1/cmd")[0][2], "a command is never retained"
    # The controller's reply (played here) shows on the cell view, with who sent it.
    two_cells.publish(f"{PREFIX}/cell1/cmd/reply", json.dumps(
        {"id": answer["id"], "action": "start", "accepted": False, "reason": "state TRIPPED: reset first",
         "state": "TRIPPED", "ts": time.time()}))
    wait_for(lambda: hmi.store.view("cell1")["cells"]["cell1"]["replies"], 10, what="the reply at the HMI")
    page = get(port, "/cell/cell1")[1]
    assert "REFUSED" in page and "state TRIPPED: reset first" in page and "hmi:ana" in page
    # reset: not offered, and refused when asked for anyway
    code, answer = post(port, "/cell/cell1/cmd", {"action": "reset", "by": "ana"})
    assert code == 403 and "reset stays at the panel" in answer["message"]
    # not from a form of another site, not without a name
    assert post(port, "/cell/cell1/cmd", {"action": "stop", "by": "ana"}, "text/plain")[0] == 415
    assert post(port, "/cell/cell1/cmd", {"action": "stop", "by": ""})[0] == 400
    time.sleep(0.3)
    assert [m["action"] for m in two_cells.json("/cell1/cmd")] == ["start"]


def test_reset_is_offered_only_with_remote_reset(start_hmi, two_cells):
    hmi, port = start_hmi(commands=True, remote_reset=True)
    wait_for(seen(hmi, "cell1"), 10, what="cell1's status at the HMI")
    assert Dom(get(port, "/cell/cell1")[1]).buttons[-1] == "reset"


def test_the_cause_and_effect_matrix_of_the_running_config(start_hmi):
    _hmi, port = start_hmi()
    code, page = get(port, "/cause-effect")
    assert code == 200 and 'id="cell-id">cell1<' in page



class Browser:
    """A headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe:
    JSON messages separated by NUL, commands on fd 3, answers on fd 4): no driver, no package."""

    def __init__(self, tmp_path):
        import os
        import queue

        to_r, to_w = os.pipe()
        from_r, from_w = os.pipe()

        def fds():   # in the child: the pipe ends onto fds 3 and 4 (copied high first: no clobbering)
            import fcntl

            high_r, high_w = fcntl.fcntl(to_r, fcntl.F_DUPFD, 10), fcntl.fcntl(from_w, fcntl.F_DUPFD, 10)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        argv = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                f"--user-data-dir={tmp_path / 'profile'}", "--remote-debugging-pipe", "about:blank"]
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, preexec_fn=fds, close_fds=False)
        except OSError as exc:
            pytest.skip(f"Chromium cannot run on this machine: {exc}")
        os.close(to_r)
        os.close(from_w)
        self.out = os.fdopen(to_w, "wb", buffering=0)
        self.inp = os.fdopen(from_r, "rb", buffering=0)
        self.answers: queue.Queue = queue.Queue()
        self.next_id = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        buf = b""
        while True:
            chunk = self.inp.read(65536)
            if not chunk:
                self.answers.put(None)
                return
            buf += chunk
            while b"\0" in buf:
                msg, buf = buf.split(b"\0", 1)
                obj = json.loads(msg)
                if "id" in obj:
                    self.answers.put(obj)

    def call(self, method: str, session: str | None = None, **params):
        import queue

        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        self.out.write(json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                obj = self.answers.get(timeout=1)
            except queue.Empty:
                continue
            if obj is None:
                pytest.skip("Chromium exited: it cannot run on this machine")
            if obj.get("id") == self.next_id:
                assert "error" not in obj, obj
                return obj["result"]
        pytest.skip(f"Chromium did not answer {method} within 20 s on this machine")

    def open(self, url: str) -> str:
        target = self.call("Target.createTarget", url=url)["targetId"]
        return self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def text(self, session: str, js: str) -> str:
        result = self.call("Runtime.evaluate", session, expression=js, returnByValue=True)
        return result["result"].get("value") or ""

    def close(self):
        self.proc.kill()
        self.proc.wait()
        self.out.close()


def test_a_new_state_reaches_the_open_page_in_a_real_browser(start_hmi, two_cells, tmp_path):
    """Pushed, not reloaded: the page is open in Chromium when the status changes, and shows the
    new state without a reload (the event stream brought it)."""
    hmi, port = start_hmi()
    wait_for(seen(hmi, "cell1"), 10, what="cell1's status at the HMI")
    browser = Browser(tmp_path)
    try:
        page = browser.open(f"http://127.0.0.1:{port}/cell/cell1")
        wait_for(lambda: hmi.sse_clients > 0, 20, what="the page to open its event stream")
        live = "document.getElementById('live') ? document.getElementById('live').innerText : ''"
        assert browser.text(page, live).startswith("TRIPPED")
        browser.call("Runtime.evaluate", page, expression="window.marker = 42")
        two_cells.publish(f"{PREFIX}/cell1/status", status("cell1", "IDLE"), retain=True)
        wait_for(lambda: browser.text(page, live).startswith("IDLE"), 10, what="IDLE on the open page")
        assert browser.text(page, "String(window.marker)") == "42", "the page was reloaded"
        assert browser.text(page, "document.getElementById('conn').innerText") == "live"
    finally:
        browser.close()
