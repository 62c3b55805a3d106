"""`crushcell watch`: a live terminal view of one or more cells, from their MQTT topics.

Read-only: it subscribes to availability, status, telemetry and events and never publishes. On a
terminal it redraws a table; otherwise (pipes, logs, `--plain`) it prints a line for every state
change at once, telemetry at the configured rate (`[mqtt] telemetry_period_s`) and one line per
event. Bad arguments give a usage message and exit 2, never a traceback.

Why each rule (issue 13):
- The state shown is the newest by message time (`newer()`): status and telemetry both carry it,
  and an older telemetry message must not show RUNNING after the status said TRIPPED.
- Every failure says why, with the broker's address: refused, DNS, timeout, TLS, login refused.
  The terminal view shows it in its header and keeps retrying; `--plain` (scripts, logs) gives up
  after `--connect-timeout` with exit 3 (could not reach the broker) or 4 (the broker refused us).
- A `--cell` that sends nothing is named after a short wait, with the cells that are on the broker.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import threading
import time
from typing import Any

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
EXIT_NO_BROKER = 3    # never connected: refused, DNS, timeout, TLS, network (the message says which)
EXIT_REFUSED = 4      # the broker answered and refused us: login, permissions
DISCOVERY_S = 2.0     # connected this long without a word from a --cell: say which cells are there
STALE_S = 10.0        # the state shown gives way to any message after this long (a wall clock stepped back)
# (sensor, label, decimals); the unit comes with the telemetry (else from the config).
KEY_SENSORS = (("o2_a", "O2a", 2), ("o2_b", "O2b", 2), ("o2_c", "O2c", 2), ("h2_cell", "H2", 2),
               ("lel_cell", "LEL", 1), ("co_cell", "CO", 0), ("temp_material", "Tmat", 0),
               ("dp_cell", "dp", 0))


class Usage(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:   # argparse exits 2 itself; keep it one clean message
        self.print_usage(sys.stderr)
        raise Usage(message)


def build_parser() -> argparse.ArgumentParser:
    from controller.clihelp import HelpFormatter

    p = _Parser(prog="crushcell watch", description="Live view of crushcell cells over MQTT.",
                formatter_class=HelpFormatter,
                epilog="examples:\n"
                       "  crushcell watch --broker 127.0.0.1:1883   # every cell on a local broker\n"
                       "  crushcell watch --cell cell1 --plain      # one line per update (logs, ssh)")
    p.add_argument("--config", default=os.environ.get("CRUSHCELL_CONFIG", "config/cell.toml"),
                   metavar="PATH", help="plant configuration: broker, TLS, credentials, topic prefix")
    p.add_argument("--broker", metavar="HOST[:PORT]", help="MQTT broker (overrides the config)")
    p.add_argument("--cell", action="append", metavar="ID",
                   help="cell id to show (repeatable; default: every cell seen)")
    p.add_argument("--prefix", metavar="PREFIX", help="topic prefix (default: from the config)")
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    p.add_argument("--plain", action="store_true", help="one line per update, no screen redraw")
    p.add_argument("--connect-timeout", type=float, default=10.0, metavar="S",
                   help="--plain (or not a terminal): give up when not connected after S seconds "
                        "(exit 3: broker unreachable, 4: login refused)")
    from controller import logsetup

    logsetup.add_arguments(p)   # -v / -q: the log on stderr (TLS and credential warnings)
    return p


class Connection:
    """What the broker connection is doing, in words: set from paho's thread, read by the main one."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.lock = threading.Lock()
        self.connected = False
        self.ever_connected = False
        self.connected_at = 0.0          # monotonic
        self.attempts = 0                # failed attempts since the last connection
        self.kind: str | None = None     # refused, dns, timeout, tls, network, auth, broker
        self.why: str | None = None      # the last failure, in words, with the broker's address

    @property
    def where(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def failed(self, kind: str, why: str) -> bool:
        """Record a failed attempt; True when it is a new kind of failure (say it at once)."""
        with self.lock:
            new = kind != self.kind or why != self.why
            self.connected = False
            self.attempts += 1
            self.kind, self.why = kind, why
            return new

    def up(self) -> None:
        with self.lock:
            self.connected = self.ever_connected = True
            self.connected_at = time.monotonic()
            self.attempts = 0
            self.kind = self.why = None

    def exit_code(self) -> int:
        return EXIT_REFUSED if self.kind in ("auth", "broker") else EXIT_NO_BROKER

    def header(self) -> str:
        """The terminal view's connection state: never '(connecting...)' once an attempt failed."""
        with self.lock:
            if self.connected:
                return "connected"
            if self.why is None:
                return f"connecting to {self.where}..."
            lost = "connection lost; " if self.ever_connected and self.kind != "lost" else ""
            return f"NOT CONNECTED: {lost}{self.why} (attempt {self.attempts}, retrying)"


def describe_failure(exc: BaseException | None, host: str, port: int, timeout_s: float) -> tuple[str, str]:
    """A failed connection attempt as (kind, words), naming the broker: refused, DNS, timeout, TLS."""
    import socket
    import ssl

    where = f"{host}:{port}"
    if isinstance(exc, ConnectionRefusedError):
        return "refused", (f"connection refused by {where}: nothing listens there (is the broker running? "
                           "is the port right?)")
    if isinstance(exc, socket.gaierror):
        return "dns", (f"cannot resolve the host name {host!r} ({exc.strerror or exc}); check --broker "
                       "or [mqtt] host")
    if isinstance(exc, TimeoutError):
        return "timeout", (f"no answer from {where} within {timeout_s:g} s (broker down, wrong address, "
                           "or a firewall)")
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = exc.verify_message or exc.reason or exc
        return "tls", f"TLS: the certificate of {where} was rejected: {why}"
    if isinstance(exc, ssl.SSLError):
        return "tls", f"TLS handshake with {where} failed: {exc.reason or exc}"
    if isinstance(exc, OSError):
        return "network", f"cannot reach {where}: {exc.strerror or exc}"
    return "network", f"cannot connect to {where}" + (f": {exc}" if exc is not None else "")


def describe_connack(reason_code: Any, host: str, port: int) -> tuple[str, str]:
    """The broker answered and refused us (CONNACK failure): credentials or permissions, usually."""
    value = getattr(reason_code, "value", None)
    text = str(reason_code)
    if value in (134, 135, 140):   # bad user name or password, not authorized, bad authentication method
        return "auth", (f"{host}:{port} refused the login: {text} (check [mqtt] username and "
                        "password_file or password_env in the config)")
    return "broker", f"{host}:{port} refused the connection: {text}"


def _fmt(value: Any, decimals: int, unit: str) -> str:
    return f"{value:.{decimals}f} {unit}".rstrip()


def _mtime(obj: dict | None) -> tuple[float, float] | None:
    """(t, ts) of a status or telemetry message: the controller clock and the wall clock."""
    if not isinstance(obj, dict):
        return None
    t, ts = obj.get("t"), obj.get("ts")
    if not isinstance(t, int | float) or not isinstance(ts, int | float):
        return None
    return float(t), float(ts)


def newer(new: dict, old: dict | None) -> bool:
    """Is message `new` (status or telemetry) at least as recent as `old`?

    By `ts`, the wall clock the controller stamps when it publishes: one worker publishes both
    topics, each from the newest snapshot of the scan loop, so a later `ts` never carries an older
    state within a run, and across a restart (whose controller clock `t` starts again near 0) the
    newer run has the later `ts`. Equal `ts`: the later controller clock `t`. (A wall clock stepped
    back is handled by View.feed: a state held longer than STALE_S gives way to what comes.)"""
    a, b = _mtime(new), _mtime(old)
    if b is None:
        return True
    if a is None:
        return False
    if a[1] != b[1]:
        return a[1] > b[1]
    return a[0] >= b[0]


class View:
    """What we know of every cell, and what to print when it changes. Fed from paho's thread."""

    def __init__(self, prefix: str, cells: list[str] | None, telemetry_period_s: float = 1.0,
                 units: dict[str, str] | None = None):
        self.prefix = prefix
        self.cells = cells
        self.telemetry_period_s = telemetry_period_s
        self.units = units or {}
        self.data: dict[str, dict[str, Any]] = {}
        self.seen: set[str] = set()       # every cell id heard under the prefix, shown or not
        self.lock = threading.Lock()
        self.changed = threading.Event()

    def _cell(self, cell: str) -> dict[str, Any]:
        return self.data.setdefault(cell, {"availability": "?", "status": None, "telemetry": None,
                                           "newest": None, "newest_at": 0.0, "events": 0, "last_event": None,
                                           "printed_state": None, "printed_status": None, "tel_printed": 0.0})

    def feed(self, topic: str, payload: bytes, now: float | None = None) -> list[str]:
        """Take one message; return the plain-mode lines it calls for (state changes at once,
        telemetry at the configured period, events one line each)."""
        now = time.monotonic() if now is None else now
        parts = topic[len(self.prefix) + 1:].split("/", 1) if topic.startswith(self.prefix + "/") else []
        if len(parts) != 2 or not parts[0]:
            return []
        cell, kind = parts
        if kind not in ("availability", "status", "telemetry", "events"):
            return []
        with self.lock:
            self.seen.add(cell)
        if self.cells and cell not in self.cells:
            return []
        obj: Any = None
        if kind != "availability":
            try:
                obj = json.loads(payload)
            except ValueError:
                return []
            if not isinstance(obj, dict):
                return []
        out: list[str] = []
        with self.lock:
            d = self._cell(cell)
            if kind == "availability":
                text = payload.decode("utf-8", "replace")[:16] or "?"
                if text != d["availability"]:
                    d["availability"] = text
                    out.append(self._line(cell, d))
            elif kind == "events":
                count = obj.get("count", 1) if "events" in obj else 1
                d["events"] += count if isinstance(count, int) and count > 0 else 1
                d["last_event"] = obj
                if obj.get("type") != "outputs":   # outputs: the status line shows them
                    out.append(self._event_line(cell, obj))
            else:
                d[kind] = obj
                if newer(obj, d["newest"]) or now - d["newest_at"] > STALE_S:
                    d["newest"], d["newest_at"] = obj, now
                state = (d["newest"] or {}).get("state")
                key = None
                if kind == "status":
                    key = (obj.get("state"), tuple(obj.get("causes") or ()),
                           tuple((a.get("name"), a.get("acked")) for a in obj.get("alarms") or ()
                                 if isinstance(a, dict)))
                if state != d["printed_state"] or (key is not None and key != d["printed_status"]):
                    out.append(self._line(cell, d))      # a state change, new causes or alarms: at once
                elif kind == "telemetry" and now - d["tel_printed"] >= 0.9 * self.telemetry_period_s:
                    out.append(self._line(cell, d))      # telemetry: at the configured rate
                if out:
                    d["printed_state"] = state
                    d["tel_printed"] = now
                if key is not None:
                    d["printed_status"] = key
        self.changed.set()
        return out

    def _event_line(self, cell: str, obj: dict) -> str:
        if "events" in obj:   # a backlog batch (docs/mqtt.md)
            return (f"{cell:<10} events {obj.get('first_seq')}..{obj.get('last_seq')}: {obj.get('count')} "
                    "historical (sent after an outage)")
        skip = ("t", "ts", "seq", "type", "outputs", "commanded", "historical")
        rest = " ".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in obj.items()
                        if k not in skip)
        hist = " (historical)" if obj.get("historical") else ""
        return f"{cell:<10} event {obj.get('seq', '?')} {obj.get('type', '?')}{hist} {rest}".rstrip()

    def _parts(self, cell: str, d: dict[str, Any]) -> tuple[list[str], list[str], list[str]] | None:
        """(state, causes), (sensors with units), (alarms, counts) of one cell; None before data."""
        avail = d.get("availability", "?")
        st, tel, newest = d.get("status") or {}, d.get("telemetry") or {}, d.get("newest") or {}
        if not st and not tel:
            return None
        state = newest.get("state") or "?"
        head = [f"{cell:<10} {avail:<7} {state:<8}"]
        causes = [str(c) for c in st.get("causes") or []] if st.get("state") == state else []
        if causes:
            head.append(f"first-out: {causes[0]}" + (f" also: {','.join(causes[1:])}" if causes[1:] else ""))
        alarms = [a.get("name", "?") + ("" if a.get("acked") else "!") for a in st.get("alarms") or []
                  if isinstance(a, dict)]
        tail = ["alarms: " + (",".join(alarms) or "-")]
        if st.get("outbox_dropped"):
            tail.append(f"DROPPED {st['outbox_dropped']}")
        tail.append(f"events {d.get('events', 0)}")
        sensors = tel.get("sensors") or {}
        values = [] if sensors else ["sensors: no telemetry yet"]
        for key, label, decimals in KEY_SENSORS if sensors else ():
            s = sensors.get(key) or {}
            v = s.get("value")
            unit = s.get("unit") or self.units.get(key, "")
            quality = s.get("quality")
            if quality == "good" and isinstance(v, int | float):
                values.append(f"{label} {_fmt(v, decimals, unit)}")
            else:
                values.append(f"{label} {'--' if quality is None else 'FAULT'}")
        return head, values, tail

    def _line(self, cell: str, d: dict[str, Any]) -> str:
        """One cell as one line (plain mode): state, first-out cause, alarms, sensors with units."""
        parts = self._parts(cell, d)
        if parts is None:
            return f"{cell:<10} {d.get('availability', '?'):<7} waiting for data from {cell} (no status yet)"
        head, values, tail = parts
        return " | ".join(head + values + tail)

    def line(self, cell: str) -> str:
        with self.lock:
            return self._line(cell, dict(self.data.get(cell) or self._cell(cell)))

    def rows(self) -> list[str]:
        """The terminal view: two rows per cell (state and causes; sensors), cut to the width later."""
        with self.lock:
            out = []
            for cell in sorted(self.data):
                d = self.data[cell]
                parts = self._parts(cell, d)
                if parts is None:
                    out.append(self._line(cell, d))
                else:
                    out += [" | ".join(parts[0] + parts[2]), " " * 11 + " | ".join(parts[1])]
            return out

    def lines(self) -> list[str]:
        with self.lock:
            cells = sorted(self.data)
        return [self.line(c) for c in cells]

    def missing(self) -> list[str]:
        """Cells asked for with --cell that have sent nothing yet."""
        with self.lock:
            return [c for c in self.cells or [] if c not in self.data]

    def seen_text(self) -> str:
        with self.lock:
            seen = sorted(self.seen)
        if not seen:
            return f"no cell seen under {self.prefix}/ at all (is --prefix right? is a controller connected?)"
        return "cells seen: " + ", ".join(seen)


def main(argv: list[str]) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.duration is not None and not args.duration > 0:
            raise Usage(f"--duration {args.duration} must be above 0")
        if not args.connect_timeout > 0:
            raise Usage(f"--connect-timeout {args.connect_timeout} must be above 0")
        from controller import logsetup

        logsetup.configure(logsetup.level_from(args))
        return _watch(args)
    except Usage as exc:
        print(f"crushcell watch: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK


def _settings(args: argparse.Namespace) -> tuple[Any, str, dict[str, str]]:
    from controller import config as cfg

    try:
        config = cfg.load(args.config)
    except cfg.ConfigError as exc:
        raise Usage("\n".join(exc.errors)) from None
    from controller import logsetup

    logsetup.set_level(logsetup.level_from(args, config.log_level))
    units = {name: sc.unit for name, sc in config.sensors.items()}
    return config.mqtt, args.prefix or config.mqtt.topic_prefix, units


def _watch(args: argparse.Namespace) -> int:
    import queue

    from controller.console import cut, terminal_width
    from controller.link import client as mq

    settings, prefix, units = _settings(args)
    host, port = settings.host, settings.port
    try:
        if args.broker:
            host, port = mq.parse_broker(args.broker, settings.port)
        password = mq.read_password(settings)
        c = mq.make_client(settings, "", password=password)
    except mq.LinkConfigError as exc:
        raise Usage(str(exc)) from None
    connect_timeout = min(5.0, args.connect_timeout)
    c.connect_timeout = connect_timeout
    # A viewer retries quickly (a broker that comes back is seen within 2 s); it publishes nothing.
    c.reconnect_delay_set(min_delay=min(settings.reconnect_min_s, 0.5),   # type: ignore[arg-type]
                          max_delay=min(settings.reconnect_max_s, 2.0))   # type: ignore[arg-type]
    view = View(prefix, args.cell, settings.telemetry_period_s, units)
    conn = Connection(host, port)
    plain = args.plain or not sys.stdout.isatty()
    lines: queue.Queue[str] = queue.Queue()   # plain mode: printed by the main thread only
    cells = args.cell or ["+"]
    scope = f"{prefix}/" + ("+" if not args.cell else ",".join(args.cell))

    def say(text: str) -> None:
        if plain:
            lines.put(text)
        view.changed.set()

    def on_connect(client: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if mq.is_failure(rc):
            kind, why = describe_connack(rc, host, port)
            if conn.failed(kind, why):
                say(f"{why}; retrying")
            return
        conn.up()
        for cell in cells:
            for kind in ("availability", "status", "telemetry", "events"):
                client.subscribe(f"{prefix}/{cell}/{kind}", qos=0)
        if args.cell:   # to say which cells exist when one asked for is not there
            client.subscribe(f"{prefix}/+/availability", qos=0)
            client.subscribe(f"{prefix}/+/status", qos=0)
        say(f"connected to {conn.where}, watching {scope}")

    def on_connect_fail(_client: Any, _u: Any) -> None:
        # paho calls this inside its `except OSError`: the error being handled is the cause.
        kind, why = describe_failure(sys.exc_info()[1], host, port, connect_timeout)
        if conn.failed(kind, why):
            say(f"{why}; retrying")

    def on_disconnect(_client: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if conn.connected:
            conn.failed("lost", f"lost the connection to {conn.where} ({rc}); reconnecting")
            say(conn.why or "")

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        for text in view.feed(msg.topic, msg.payload):
            say(text)

    c.on_connect = on_connect
    c.on_connect_fail = on_connect_fail
    c.on_disconnect = on_disconnect
    c.on_message = on_message
    say(f"connecting to {conn.where} for {scope} ...")
    mq.start(c, host, port, 30)
    start = time.monotonic()
    end = None if args.duration is None else start + args.duration
    told_missing = False

    def print_lines() -> None:
        while True:
            try:
                text = lines.get_nowait()
            except queue.Empty:
                return
            print(time.strftime("%H:%M:%S ") + text, flush=True)

    try:
        while end is None or time.monotonic() < end:
            view.changed.wait(0.2)
            view.changed.clear()
            now = time.monotonic()
            if not conn.ever_connected and now - start >= args.connect_timeout and plain:
                break   # plain mode (scripts, logs): say why and exit, never wait silently
            missing = view.missing() if conn.connected and now - conn.connected_at >= DISCOVERY_S else []
            if missing and not told_missing:
                told_missing = True
                say(f"no data from cell {', '.join(missing)} under {prefix}/ on {conn.where} after "
                    f"{DISCOVERY_S:g} s; {view.seen_text()}")
            if plain:
                print_lines()
                continue
            width = terminal_width(sys.stdout)
            state = conn.header()
            out = [f"crushcell watch  {conn.where}  {scope}  " + ("connected" if conn.connected else "")]
            if not conn.connected:   # the whole reason, wrapped: never cut off, never "(connecting...)" alone
                out += textwrap.wrap(state, max(20, width - 1), subsequent_indent="  ")
            out += view.rows() or ["(no cell seen yet)"]
            if missing:
                out += textwrap.wrap(f"no data from cell {', '.join(missing)} after {DISCOVERY_S:g} s; "
                                     f"{view.seen_text()}", max(20, width - 1))
            sys.stdout.write("\033[H\033[J" + "\n".join(cut(line, width - 1) for line in out) + "\n")
            sys.stdout.flush()
    finally:
        waited = time.monotonic() - start
        c.disconnect()
        if conn.ever_connected:
            c.loop_stop()   # else paho may sleep out a reconnect wait first: its thread is a daemon
        if plain:
            print_lines()   # what came in since the last pass
    if conn.ever_connected:
        return EXIT_OK
    why = conn.why or f"no answer from {conn.where} yet"
    print(f"crushcell watch: not connected: {why}; gave up after {waited:.1f} s "
          f"({conn.attempts} failed attempt(s)); exit {conn.exit_code()}", file=sys.stderr)
    return conn.exit_code()
