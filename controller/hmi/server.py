"""`crushcell hmi`: the web server (stdlib ThreadingHTTPServer, server-sent events) and its MQTT client.

A separate process from the controller: it subscribes to the public topics and, only with
`[hmi] commands = true`, publishes to `cmd` exactly what any other client may (docs/mqtt.md); the
controller's link and core apply their guards to it as to anyone. Why the standard library and not
a framework: docs/hmi.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from controller.hmi import journal, views
from controller.hmi.model import Store

EXIT_OK, EXIT_USAGE = 0, 2
ACTIONS = ("purge", "start", "stop", "shutdown", "ack")   # reset only with [cell] remote_reset = true
SSE_TICK_S = 1.0        # the page's ages move at least this often
MAX_BODY = 1024
BAD_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
CELL_RE = re.compile(r"^/cell/([^/#+]+)(/sse|/cmd)?$")


class Usage(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    from controller import statedir
    from controller.clihelp import HelpFormatter

    p = argparse.ArgumentParser(
        prog="crushcell hmi", formatter_class=HelpFormatter,
        description="Local web HMI: every cell on the broker, live (a plain MQTT client of the public "
                    "topics).",
        epilog="examples:\n  crushcell hmi                              # http://127.0.0.1:8080/\n"
               "  crushcell hmi --broker 10.0.0.5 --listen 0.0.0.0:8080   # the shift lead's screen\n"
               "  crushcell hmi --state-dir var/demo         # beside make run: its journal and calibration")
    p.add_argument("--config", default=os.environ.get("CRUSHCELL_CONFIG", "config/cell.toml"), metavar="PATH",
                   help="plant configuration: broker, topic prefix, limits, [hmi] listen and commands")
    p.add_argument("--broker", metavar="HOST[:PORT]", help="MQTT broker (overrides the config)")
    p.add_argument("--listen", metavar="HOST:PORT", help="where to serve the pages (default: [hmi] listen, "
                                                         "127.0.0.1:8080)")
    p.add_argument("--state-dir", metavar="DIR",
                   help="the controller's state dir, read only: the journal search and the calibration dates "
                        f"(default: [hmi] state_dir, else the rule of `crushcell run`: ${statedir.ENV}, else "
                        f"{statedir.BOARD_STATE_DIR} if it exists, else ./{statedir.DEV_STATE_DIR}; here: "
                        f"{statedir.default_state_dir()}; the demo, make run: var/demo)")
    return p


class Hmi:
    """The MQTT side and the state the pages render; `publish_command` is the only thing that sends."""

    def __init__(self, config: Any, host: str, port: int, *, commands: bool, state_dir: str | None = None):
        from controller import statedir
        from controller.link import client as mq

        self.config = config
        # Read only, for the journal search and the calibration dates: --state-dir, else [hmi] state_dir,
        # else the rule every command uses (controller/statedir.py).
        self.state_dir = state_dir or config.hmi.state_dir or statedir.default_state_dir()
        self.settings = config.mqtt
        self.prefix = config.mqtt.topic_prefix
        self.commands = commands
        self.actions = ACTIONS + (("reset",) if config.remote_reset else ())
        self.store = Store(self.prefix, config.mqtt.telemetry_period_s)
        self.host, self.port = host, port
        self._ce: str | None = None
        self.sse_clients = 0   # pages connected to an event stream now
        password = mq.read_password(self.settings)
        self.client = mq.make_client(self.settings, "", password=password)
        self.client.reconnect_delay_set(min_delay=min(self.settings.reconnect_min_s, 0.5),  # type: ignore[arg-type]
                                        max_delay=min(self.settings.reconnect_max_s, 2.0))  # type: ignore[arg-type]
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = lambda _c, _u, msg: self.store.feed(msg.topic, msg.payload)

    def start(self) -> None:
        from controller.link import client as mq

        mq.start(self.client, self.host, self.port, 30)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        from controller.link import client as mq
        from controller.link.watch import describe_connack

        if mq.is_failure(rc):
            self.store.set_link(False, describe_connack(rc, self.host, self.port)[1])
            return
        for kind in ("availability", "status", "telemetry", "events", "cmd/reply"):
            client.subscribe(f"{self.prefix}/+/{kind}", qos=1 if kind != "telemetry" else 0)
        self.store.set_link(True, f"connected to {self.host}:{self.port}")

    def _on_connect_fail(self, _c: Any, _u: Any) -> None:
        from controller.link.watch import describe_failure

        self.store.set_link(False, describe_failure(sys.exc_info()[1], self.host, self.port, 5.0)[1])

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self.store.set_link(False, f"lost the connection to {self.host}:{self.port} ({rc}); reconnecting")

    def cause_effect(self) -> str:
        if self._ce is None:
            from controller import causeeffect

            self._ce = causeeffect.render(self.config, "html")
        return self._ce

    def calibration(self, cell: str) -> dict[str, Any]:
        """The gas sensors' records as `crushcell calibration show` judges them (controller/calibration.py)
        for the config's [hal] backend, read from the state dir; only for the config's own cell."""
        import datetime as dt

        from controller import calibration as cal

        where = journal.shown(self.state_dir)
        answer: dict[str, Any] = {"cell": self.config.cell_id, "dir": where}
        if cell != self.config.cell_id:
            return dict(answer, other=True)
        problem = journal.state_dir_problem(self.state_dir)
        if problem:
            return dict(answer, problem=problem)
        backend = self.config.hal_backend
        path = os.path.join(self.state_dir, cal.CALIBRATION_FILE)
        try:
            records, error = cal.load(self.state_dir), None
        except cal.CalibrationError as exc:   # as the controller's Tracker: never tested
            records, error = {}, str(exc)
        try:
            applies = cal.enforced(self.state_dir, backend == "hardware")
            exists = os.path.exists(path)
        except OSError as exc:
            return dict(answer, problem=f"cannot read {path}: {exc.strerror or exc}; {journal.HINT}")
        today = dt.date.today()
        try:
            rows = cal.status(records, self.config.calibration, today)
        except (TypeError, ValueError, KeyError) as exc:   # a hand-edited file: a date that is no string
            return dict(answer, problem=f"cannot judge {path}: {exc!r}")
        return dict(answer, backend=backend, path=path, exists=exists, applies=applies, error=error,
                    rows=rows, overdue=cal.due_and_overdue(rows)[1], today=today.isoformat())

    def publish_command(self, cell: str, action: str, by: str) -> tuple[int, dict[str, Any]]:
        """(HTTP status, answer). Never retained; a fresh id each time (docs/mqtt.md)."""
        if not self.commands:
            return 403, {"message": "commands are off on this HMI ([hmi] commands = false)"}
        if action not in self.actions:
            why = ("reset stays at the panel: this config has [cell] remote_reset = false"
                   if action == "reset" else f"unknown action {action!r}")
            return 403, {"message": f"not sent: {why}"}
        if not isinstance(by, str) or not 1 <= len(by.strip()) <= 40 or BAD_CHARS.search(by):
            return 400, {"message": "not sent: give your name (1 to 40 printable characters)"}
        if cell not in self.store.view()["cells"]:
            return 404, {"message": f"not sent: no cell {cell!r} seen on the broker"}
        if not self.store.connected:
            return 503, {"message": "not sent: the HMI is not connected to the broker"}
        cmd_id = str(uuid.uuid4())
        who = f"hmi:{by.strip()}"
        self.store.sent(cell, cmd_id, who)
        payload = json.dumps({"id": cmd_id, "action": action, "by": who}, separators=(",", ":"))
        info = self.client.publish(f"{self.prefix}/{cell}/cmd", payload, qos=1, retain=False)
        if info.rc != 0:
            return 503, {"message": f"not sent: publish failed ({info.rc})"}
        return 202, {"id": cmd_id, "message": f"{action} sent as {who} (id {cmd_id[:8]}); waiting for the "
                                              "controller's reply"}


class Handler(BaseHTTPRequestHandler):
    server_version = "crushcell-hmi"
    hmi: Hmi   # set on the subclass made by make_server

    def log_message(self, fmt: str, *args: Any) -> None:   # quiet: no line per request
        pass

    def _send(self, code: int, body: str, ctype: str = "text/html; charset=utf-8") -> None:
        data = body.encode("utf-8")
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        # Everything is served from here: no CDN, no other origin, no framing by another site.
        self.send_header("Content-Security-Policy", "default-src 'self'; style-src 'unsafe-inline'; "
                         "script-src 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:   # noqa: N802 - http.server's name
        path = unquote(urlsplit(self.path).path)
        hmi = self.hmi
        if path == "/":
            view = hmi.store.view()
            self._send(200, views.page("crushcell plant", views.plant(view), "/sse"))
        elif path == "/sse":
            self._sse(lambda: views.plant(hmi.store.view()))
        elif path == "/cause-effect":
            self._send(200, hmi.cause_effect())
        elif path == "/journal":
            self._journal()
        elif path == "/api/state":
            view = hmi.store.view()
            brief = {n: {k: c[k] for k in ("availability", "state", "age", "offline", "stale")}
                     for n, c in view["cells"].items()}
            self._send(200, json.dumps({"connected": view["connected"], "cells": brief}), "application/json")
        elif (m := CELL_RE.match(path)) and m.group(2) != "/cmd":
            name = m.group(1)

            def render() -> str:
                return views.cell(hmi.store.view(name), name, hmi.config, time.time(),
                                  calib=hmi.calibration(name))

            if m.group(2) == "/sse":
                self._sse(render)
            else:
                extra = views.commands_panel(name, hmi.actions) if hmi.commands else ""
                self._send(200, views.page(f"crushcell {name}", render(), f"/cell/{name}/sse", extra))
        else:
            self._send(404, "not found", "text/plain; charset=utf-8")

    def _journal(self) -> None:
        """The journal search: 400 with the problems in words for a bad query, never a traceback."""
        try:
            params = parse_qs(urlsplit(self.path).query, keep_blank_values=True, max_num_fields=20)
        except ValueError:
            params = {}
            problems = ["too many query parameters (since, until, type, cause, limit)"]
        else:
            problems = []
        q, more = journal.parse_query(params)
        problems += more
        result = None if problems else journal.search(self.hmi.state_dir, q)
        where = f"state dir {journal.shown(self.hmi.state_dir)}"
        body = views.journal(q, problems, result, where, self.hmi.config.cell_id)
        self._send(400 if problems else 200, views.page("crushcell journal", body, ""))

    def _sse(self, render: Any) -> None:
        """Server-sent events: the live HTML on every change (at most 4 a second) and every second."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        store = self.hmi.store
        version, last = -1, None
        with store.lock:
            self.hmi.sse_clients += 1
        try:
            self.wfile.write(b"retry: 1000\n\n")
            while not self.server.stopping:   # type: ignore[attr-defined]
                version = store.wait(version, SSE_TICK_S)
                body = render()
                if body != last:
                    last = body
                    data = "".join(f"data: {line}\n" for line in body.split("\n"))
                    self.wfile.write(f"event: update\n{data}\n".encode())
                else:
                    self.wfile.write(b": tick\n\n")
                self.wfile.flush()
                time.sleep(0.25)
        except (BrokenPipeError, ConnectionResetError, OSError):
            return
        finally:
            with store.lock:
                self.hmi.sse_clients -= 1

    def do_POST(self) -> None:   # noqa: N802
        m = CELL_RE.match(unquote(urlsplit(self.path).path))
        if not m or m.group(2) != "/cmd":
            self._send(404, "not found", "text/plain; charset=utf-8")
            return
        answer: tuple[int, dict[str, Any]]
        origin = self.headers.get("Origin")
        if not self.hmi.commands:
            answer = 403, {"message": "commands are off on this HMI ([hmi] commands = false)"}
        elif origin and urlsplit(origin).netloc != self.headers.get("Host"):
            answer = 403, {"message": "refused: a command must come from this HMI's own page"}
        elif (self.headers.get("Content-Type") or "").split(";")[0].strip() != "application/json":
            answer = 415, {"message": "refused: send JSON (Content-Type: application/json)"}
        else:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if not 0 < length <= MAX_BODY:
                answer = 400, {"message": f"refused: a body of 1 to {MAX_BODY} bytes"}
            else:
                try:
                    body = json.loads(self.rfile.read(length))
                    action, by = body["action"], body["by"]
                except (ValueError, KeyError, TypeError):
                    answer = 400, {"message": "refused: give {\"action\": ..., \"by\": ...}"}
                else:
                    answer = self.hmi.publish_command(m.group(1), str(action), by)
        self._send(answer[0], json.dumps(answer[1]), "application/json")


def make_server(hmi: Hmi, host: str, port: int) -> ThreadingHTTPServer:
    handler = type("BoundHandler", (Handler,), {"hmi": hmi})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    server.stopping = False   # type: ignore[attr-defined]
    return server


def main(argv: list[str]) -> int:
    try:
        args = build_parser().parse_args(argv)
        from controller import config as cfg
        from controller.hmi.settings import parse_listen
        from controller.link import client as mq

        try:
            config = cfg.load(args.config)
        except cfg.ConfigError as exc:
            raise Usage("\n".join(exc.errors)) from None
        try:
            host, port = parse_listen(args.listen) if args.listen else config.hmi.address
        except ValueError as exc:
            raise Usage(f"--listen {args.listen}: {exc}") from None
        try:
            bhost, bport = (mq.parse_broker(args.broker, config.mqtt.port) if args.broker
                            else (config.mqtt.host, config.mqtt.port))
            hmi = Hmi(config, bhost, bport, commands=config.hmi.commands, state_dir=args.state_dir)
        except mq.LinkConfigError as exc:
            raise Usage(str(exc)) from None
        try:
            server = make_server(hmi, host, port)
        except OSError as exc:
            raise Usage(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    except Usage as exc:
        print(f"crushcell hmi: {exc}", file=sys.stderr)
        return EXIT_USAGE
    hmi.start()

    def stop(_sig: int, _frame: Any) -> None:
        server.stopping = True   # type: ignore[attr-defined]
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    where = f"[{host}]" if ":" in host else host
    print(f"crushcell hmi: http://{where}:{port}/ for the cells on {bhost}:{bport} under "
          f"{config.mqtt.topic_prefix}/; commands {'ON' if config.hmi.commands else 'off'}; "
          f"state dir (read only) {journal.shown(hmi.state_dir)}", file=sys.stderr,
          flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
        hmi.stop()
    return EXIT_OK
