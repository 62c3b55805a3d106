"""`crushcell watch`: a live terminal view of one or more cells, from their MQTT topics.

Read-only: it subscribes to availability, status and telemetry (and counts events) and never
publishes. On a terminal it redraws a table; otherwise (pipes, logs) it prints one line per
change. Bad arguments give a usage message and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import Any

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
KEY_SENSORS = (("o2_a", "O2a", "{:.2f}"), ("o2_b", "O2b", "{:.2f}"), ("o2_c", "O2c", "{:.2f}"),
               ("h2_cell", "H2", "{:.2f}"), ("lel_cell", "LEL", "{:.1f}"), ("co_cell", "CO", "{:.0f}"),
               ("temp_material", "Tmat", "{:.0f}"), ("dp_cell", "dp", "{:.0f}"))


class Usage(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:   # argparse exits 2 itself; keep it one clean message
        self.print_usage(sys.stderr)
        raise Usage(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="crushcell watch", description="Live view of crushcell cells over MQTT.")
    p.add_argument("--config", default=os.environ.get("CRUSHCELL_CONFIG", "config/cell.toml"),
                   metavar="PATH", help="plant configuration: broker, TLS, credentials, topic prefix")
    p.add_argument("--broker", metavar="HOST[:PORT]", help="MQTT broker (overrides the config)")
    p.add_argument("--cell", action="append", metavar="ID",
                   help="cell id to show (repeatable; default: every cell seen)")
    p.add_argument("--prefix", metavar="PREFIX", help="topic prefix (default: from the config)")
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    p.add_argument("--plain", action="store_true", help="one line per update, no screen redraw")
    return p


class View:
    """What we know of every cell; rendered by `lines()`. Fed from paho's thread under a lock."""

    def __init__(self, prefix: str, cells: list[str] | None):
        self.prefix = prefix
        self.cells = cells
        self.data: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.changed = threading.Event()

    def feed(self, topic: str, payload: bytes) -> str | None:
        parts = topic[len(self.prefix) + 1:].split("/", 1) if topic.startswith(self.prefix + "/") else []
        if len(parts) != 2:
            return None
        cell, kind = parts
        if self.cells and cell not in self.cells:
            return None
        with self.lock:
            d = self.data.setdefault(cell, {"availability": "?", "status": None, "telemetry": None,
                                            "events": 0, "last_event": None})
            if kind == "availability":
                d["availability"] = payload.decode("utf-8", "replace")[:16]
            elif kind in ("status", "telemetry", "events"):
                try:
                    obj = json.loads(payload)
                except ValueError:
                    return None
                if kind == "events":
                    d["events"] += obj.get("count", 1) if isinstance(obj, dict) else 1
                    d["last_event"] = obj
                else:
                    d[kind] = obj
            else:
                return None
        self.changed.set()
        return cell

    def line(self, cell: str) -> str:
        with self.lock:
            d = dict(self.data.get(cell, {}))
        st, tel = d.get("status") or {}, d.get("telemetry") or {}
        parts = [f"{cell:<10}", f"{d.get('availability', '?'):<7}",
                 f"{(tel.get('state') or st.get('state') or '?'):<8}"]
        sensors = tel.get("sensors") or {}
        for key, label, form in KEY_SENSORS:
            s = sensors.get(key) or {}
            v = s.get("value")
            ok = s.get("quality") == "good" and isinstance(v, int | float)
            parts.append(f"{label} {form.format(v) if ok else '--'}")
        causes = st.get("causes") or []
        alarms = [a.get("name", "?") + ("" if a.get("acked") else "!") for a in st.get("alarms") or []]
        parts.append("causes: " + (",".join(causes) or "-"))
        parts.append("alarms: " + (",".join(alarms) or "-"))
        if st.get("outbox_dropped"):
            parts.append(f"DROPPED {st['outbox_dropped']}")
        parts.append(f"events {d.get('events', 0)}")
        return " | ".join(parts)

    def lines(self) -> list[str]:
        with self.lock:
            cells = sorted(self.data)
        return [self.line(c) for c in cells]


def main(argv: list[str]) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.duration is not None and not args.duration > 0:
            raise Usage(f"--duration {args.duration} must be above 0")
        return _watch(args)
    except Usage as exc:
        print(f"crushcell watch: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK


def _settings(args: argparse.Namespace) -> tuple[Any, str]:
    from controller import config as cfg

    try:
        config = cfg.load(args.config)
    except cfg.ConfigError as exc:
        raise Usage("\n".join(exc.errors)) from None
    return config.mqtt, args.prefix or config.mqtt.topic_prefix


def _watch(args: argparse.Namespace) -> int:
    from controller.link import client as mq

    settings, prefix = _settings(args)
    host, port = settings.host, settings.port
    try:
        if args.broker:
            host, port = mq.parse_broker(args.broker, settings.port)
        password = mq.read_password(settings)
        c = mq.make_client(settings, "", password=password)
    except mq.LinkConfigError as exc:
        raise Usage(str(exc)) from None
    view = View(prefix, args.cell)
    plain = args.plain or not sys.stdout.isatty()
    state = {"connected": False, "refused": None}

    def on_connect(client: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if mq.is_failure(rc):
            state["refused"] = str(rc)
            return
        state["connected"] = True
        cells = args.cell or ["+"]
        for cell in cells:
            for kind in ("availability", "status", "telemetry", "events"):
                client.subscribe(f"{prefix}/{cell}/{kind}", qos=0)

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        cell = view.feed(msg.topic, msg.payload)
        if cell is not None and plain and not msg.topic.endswith("/telemetry"):
            print(time.strftime("%H:%M:%S ") + view.line(cell), flush=True)

    c.on_connect = on_connect
    c.on_message = on_message
    mq.start(c, host, port, 30)
    end = None if args.duration is None else time.monotonic() + args.duration
    last_plain = 0.0
    try:
        while end is None or time.monotonic() < end:
            view.changed.wait(0.5)
            view.changed.clear()
            if plain:
                now = time.monotonic()
                if now - last_plain >= 5.0:    # telemetry: a line per cell every 5 s at most
                    last_plain = now
                    for line in view.lines():
                        print(time.strftime("%H:%M:%S ") + line, flush=True)
                continue
            out = ["\033[H\033[J" + f"crushcell watch  {host}:{port}  {prefix}/"
                   + ("+" if not args.cell else ",".join(args.cell))
                   + ("  (connecting...)" if not state["connected"] else "")
                   + (f"  REFUSED: {state['refused']}" if state["refused"] else "")]
            out += view.lines() or ["(no cell seen yet)"]
            sys.stdout.write("\n".join(out) + "\n")
            sys.stdout.flush()
    finally:
        c.disconnect()
        c.loop_stop()
    return EXIT_OK if state["connected"] else EXIT_FAIL
