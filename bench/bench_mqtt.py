"""The plant link against a loopback Mosquitto of its own (never the system broker).

Every figure is like for like and carries its target and PASS or MISS:

- drain after an outage: OUTAGE_EVENTS events wait in an outbox; the link starts and the clock
  runs until a persistent subscriber (a historian: clean session false) has every event, checked
  by seq and unpacked from backlog batches. Events per second delivered, against a baseline that
  delivers the same events (the same bytes the link sends one per message) by raw paho QoS 1 to
  the same kind of subscriber. Three link runs: one event per message unpaced (like for like
  with the baseline: what the link itself costs), batched unpaced (what it can do), and the
  shipped settings (batched and paced: history_rate_per_s x history_batch caps it on purpose, to
  keep a historian's broker queue from overflowing; the figure says when the pace bound it).
- latency: a scan that produces an event to a subscriber receiving it, through the real scan
  loop on the simulated cell, the Pump (echo to stderr included, written to a file here), the
  persister (event numbers, audit journal, fsynced latch file), the link with the shipped
  settings (outbox fsynced), the broker and paho. Wired as controller/cli.py `serve()` does.
- scan cost: ScanLoop.scan() on the simulated cell with the link attached vs without.
- reconnect: the shipped backoff (1 s doubling to 5 s) through a 16 s broker outage, the link
  back within the cap plus a second (the suite runs it at a quarter scale).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "mqtt"))

from brokers import Broker  # noqa: E402
from fakeloop import FakeLoop  # noqa: E402

from bench.stats import percentile  # noqa: E402
from controller import config as cfg  # noqa: E402
from controller.link import payloads  # noqa: E402
from controller.link.outbox import Outbox  # noqa: E402

OUTAGE_EVENTS = 100_000
SAMPLE_EVENT = {"t": 1234.5, "type": "alarm", "name": "o2_deviation", "active": True, "severity": "warning"}
EVENTS_TOPIC = "crushcell/cell1/events"
UNPACED = 100_000.0     # history_rate_per_s high enough never to bind (the config's maximum)

# Targets (docs/mqtt.md, "Many cells, many plants"): the drain keeps up with raw paho carrying
# the same events, an event reaches the plant within 20 ms at p99, the link adds under 5 % to the
# scan.
DRAIN_VS_BASELINE = 0.70
LATENCY_P99_MS = 20.0
SCAN_ADDED_PERCENT = 5.0
RECONNECT_SLACK_S = 1.0


def figure(value, unit: str, target: str, ok: bool, **extra) -> dict:
    """One measured figure with its target and verdict (bench/__main__.py lists them all)."""
    return {"value": value, "unit": unit, "target": target, "verdict": "PASS" if ok else "MISS", **extra}


def instrument(client) -> None:
    """The bench's own subscribers send their PUBACKs at once (TCP_NODELAY): with Nagle's
    algorithm a small PUBACK can wait up to 40 ms for a delayed TCP ACK, and the broker's window
    towards the subscriber (20 messages) then caps what is measured at about 500 messages/s.
    The instrument must not be the bottleneck; the controller's socket is left as it ships."""
    client.on_socket_open = lambda _c, _u, sock: sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _config(port: int, **mqtt):
    config = cfg.load(ROOT / "config" / "cell.toml")
    return dataclasses.replace(config, mqtt=dataclasses.replace(config.mqtt, port=port, **mqtt))


def _client(**kw):
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    return mqtt.Client(CallbackAPIVersion.VERSION2, **kw)


class Historian:
    """A persistent subscriber (clean session false, as a plant historian) that collects every
    event by seq, unpacking backlog batches, and notes when the `expect`-th distinct one came."""

    def __init__(self, port: int, client_id: str, expect: int, topic: str = EVENTS_TOPIC):
        import paho.mqtt.client as mqtt

        self.expect = expect
        self.seqs: list[int] = []
        self.seen: set[int] = set()
        self.messages = 0
        self.done = threading.Event()
        self.done_at = 0.0
        self.arrivals: list[tuple[float, dict]] = []   # (wall clock, event) for latency
        self.keep_events = False
        ready = threading.Event()
        self.c = _client(client_id=client_id, protocol=mqtt.MQTTv311, clean_session=False)
        instrument(self.c)
        self.c.on_connect = lambda c, *_a: c.subscribe(topic, qos=1)
        self.c.on_subscribe = lambda *_a: ready.set()
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        if not ready.wait(10):
            raise RuntimeError("historian: no SUBACK from the bench broker")

    def _on_message(self, _c, _u, msg):
        now = time.time()
        obj = json.loads(msg.payload)
        events = obj["events"] if "events" in obj else [obj]
        self.messages += 1
        for e in events:
            seq = e["seq"]
            self.seqs.append(seq)
            self.seen.add(seq)
            if self.keep_events:
                self.arrivals.append((now, e))
        if len(self.seen) >= self.expect and not self.done.is_set():
            self.done_at = time.perf_counter()
            self.done.set()

    def in_order(self) -> bool:
        """First copies in ascending seq order, none missing (QoS 1 may repeat, never reorder)."""
        first = list(dict.fromkeys(self.seqs))
        return first == sorted(first) and len(first) == self.expect

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def fill_outbox(path: Path, config, n: int) -> None:
    """n events waiting in an outbox, stored as an outage would leave them (a minute ago)."""
    box = Outbox(str(path), config.mqtt.outbox_max_events, "normal")
    past = time.time() - 60
    for start in range(0, n, 10_000):
        box.append([(past, *payloads.event_body(dict(SAMPLE_EVENT, i=start + i), past))
                    for i in range(min(10_000, n - start))])
    box.close()


def baseline(port: int, folder: Path, n: int) -> dict:
    """Raw paho: the bytes the link sends for these events one per message, QoS 1, at most
    publish_window (20) unacknowledged as the link does, to a persistent subscriber. (Handing
    paho all 100,000 at once is not a baseline: its queue costs O(n) per PUBACK.)"""
    import paho.mqtt.client as mqtt

    config = _config(port)
    path = folder / "baseline" / "outbox.sqlite3"
    fill_outbox(path, config, n)
    box = Outbox(str(path), config.mqtt.outbox_max_events, "normal")
    bodies = [payloads.historical(body) for _seq, _ts, body in box.read_after(0, n)]
    box.close()
    hist = Historian(port, f"bench-historian-baseline-{time.monotonic_ns()}", n)
    window = threading.Semaphore(config.mqtt.publish_window)
    c = _client(protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(config.mqtt.publish_window)
    c.on_publish = lambda *_a: window.release()
    c.connect("127.0.0.1", port)
    c.loop_start()
    t0 = time.perf_counter()
    for body in bodies:
        window.acquire()
        c.publish(EVENTS_TOPIC, body, qos=1)
    ok = hist.done.wait(300)
    elapsed = (hist.done_at if ok else time.perf_counter()) - t0
    c.disconnect()
    c.loop_stop()
    hist.close()
    return {"events_per_s": round(len(hist.seen) / elapsed), "seconds": round(elapsed, 2),
            "messages": hist.messages, "delivered": len(hist.seen), "in_order": hist.in_order()}


def drain(port: int, folder: Path, n: int, name: str, **mqtt) -> dict:
    """n events in the outbox (as an outage leaves them); time from link start until a
    persistent subscriber has all of them."""
    from controller.link.mqtt import PlantLink

    config = _config(port, **mqtt)
    state = folder / f"drain-{name}"
    fill_outbox(state / f"outbox-{config.cell_id}.sqlite3", config, n)
    hist = Historian(port, f"bench-historian-{name}-{time.monotonic_ns()}", n)
    link = PlantLink(config, FakeLoop(), state_dir=str(state))
    t0 = time.perf_counter()
    link.start()
    ok = hist.done.wait(300)
    elapsed = (hist.done_at if ok else time.perf_counter()) - t0
    link.close()
    hist.close()
    s = config.mqtt
    return {"events_per_s": round(len(hist.seen) / elapsed), "seconds": round(elapsed, 2),
            "messages": hist.messages, "delivered": len(hist.seen), "in_order": hist.in_order(),
            "history_batch": s.history_batch, "history_rate_per_s": s.history_rate_per_s,
            "paced_cap_events_per_s": round(s.history_batch * s.history_rate_per_s)}


def latency(port: int, folder: Path, seconds: float = 25.0) -> dict:
    """Scan -> subscriber, through the loop, Pump, persister and link, wired as `serve()` wires
    them. A sensor fault toggled every scan makes one event per scan (10 a second)."""
    from controller.calibration import Tracker
    from controller.link.mqtt import PlantLink
    from controller.loop import ScanLoop
    from controller.persist import Persister
    from controller.runtime import Pump
    from hal.sim import SimulatedCell

    config = _config(port)   # shipped [mqtt] settings: outbox_sync = "full"
    state = folder / "latency"
    io = SimulatedCell(config, seed=1)
    loop = ScanLoop(config, io)
    scan_wall: dict[int, float] = {}
    toggle = [False]

    def before_scan(now_ms: int) -> None:   # scan thread, like the scenario player
        scan_wall[now_ms] = time.time()
        if now_ms >= 3000:   # after BOOT: one event per scan from here
            toggle[0] = not toggle[0]
            io.inject_fault("hf_room", "disconnect" if toggle[0] else "clear")

    hist = Historian(port, f"bench-historian-latency-{time.monotonic_ns()}", 1 << 30)
    hist.keep_events = True
    persister = Persister(state, loop, config)
    start_records = persister.restore()
    loop.publish_latch()
    link = PlantLink(config, loop, state_dir=str(state))
    link.start()
    persister.seq = max(persister.seq, link.outbox.last_seq)
    tracker = Tracker(state, config, loop, always=False)
    # The Pump's echo (JSON event lines on stdout, logs on stderr: the journal) goes to a file.
    with open(state / "journal-echo.log", "w", encoding="utf-8") as echo, contextlib.redirect_stdout(echo), \
            contextlib.redirect_stderr(echo):
        pump = Pump(loop, events_file=None, show_status=False, link=link, persister=persister,
                    calibration=tracker)
        loop.events.extend(loop.initial_events())
        loop.events.extend(start_records)
        pump.start()
        while not link.stats()["connected"]:
            time.sleep(0.01)
        loop.run_realtime(duration_s=seconds, before_scan=before_scan)
        pump.done.set()
        loop.wake.set()
        pump.join(5)
        persister.close()
        link.close()
    hist.close()
    lat, pump, wire = [], [], []
    for arrived, e in hist.arrivals:
        t_ms = round((e.get("t") or 0) * 1000)
        if t_ms >= 3000 and t_ms in scan_wall:   # events of a scan we timed (not the start records)
            lat.append(arrived - scan_wall[t_ms])
            pump.append(e["ts"] - scan_wall[t_ms])   # ts: when the Pump handed it to the link
            wire.append(arrived - e["ts"])
    loop.io.close()

    def ms(values: list[float], q: float) -> float:
        return round(percentile(values, q) * 1000, 2)

    # Where the time goes: scan -> link hand-over (Pump wake-up, persister with its fsyncs), then
    # hand-over -> subscriber (outbox commit with fsync, publish, broker, paho).
    return {"p50_ms": ms(lat, 50), "p99_ms": ms(lat, 99), "max_ms": ms(lat, 100), "n": len(lat),
            "scan_to_link_p50_ms": ms(pump, 50), "scan_to_link_p99_ms": ms(pump, 99),
            "link_to_subscriber_p50_ms": ms(wire, 50), "link_to_subscriber_p99_ms": ms(wire, 99),
            "overruns": loop.overruns_total}


def scan_cost(port: int, folder: Path, scans: int = 1500, sparkplug: dict | None = None,
              rounds: int = 5) -> dict:
    """Median/mean cost of ScanLoop.scan() on the simulated cell, link attached or not, with the
    Pump running and telemetry at 10 Hz (10 x the default) so the link is busy.

    sparkplug: [sparkplug] keys for the run with the link (bench_sparkplug: both faces on)."""
    from controller.link.mqtt import PlantLink
    from controller.loop import ScanLoop
    from controller.runtime import Pump
    from hal.sim import SimulatedCell

    def run(with_link: bool) -> tuple[list[float], list[float]]:
        config = _config(port, telemetry_period_s=0.1)
        if sparkplug is not None:
            config = dataclasses.replace(config, sparkplug=dataclasses.replace(config.sparkplug, **sparkplug))
        loop = ScanLoop(config, SimulatedCell(config, seed=1))
        link = PlantLink(config, loop, state_dir=str(folder / f"scan-{with_link}")) if with_link else None
        pump = Pump(loop, events_file=None, show_status=False, link=link, echo=False)
        if link:
            link.start()
        pump.start()
        costs, cpu = [], []
        now = 0
        clock = time.perf_counter
        tclock = time.thread_time
        for i in range(scans):
            if i % 20 == 0:   # some events to carry: toggle a sensor fault every 2 s simulated
                loop.io.inject_fault("hf_room", "disconnect" if i % 40 == 0 else "clear")
            c0 = tclock()
            t0 = clock()
            loop.scan(now)
            costs.append(clock() - t0)
            cpu.append(tclock() - c0)
            now += 100
            time.sleep(0.002)
        pump.done.set()
        pump.join(5)
        if link:
            link.close()
        loop.io.close()
        return costs, cpu

    run(False)   # warm-up
    # Thread CPU time is the scan's own cost; wall time also counts being preempted by the other
    # threads (and other processes: the machine is shared).
    # Paired rounds, interleaved (without, with, without, with, ...): each round's ratio compares
    # runs a few seconds apart, and the figure is the median round, with every round beside it
    # (one round can be 10 % off either way on a shared machine).
    wall0: list[float] = []
    wall1: list[float] = []
    cpu0: list[float] = []
    cpu1: list[float] = []
    wall_rounds: list[float] = []
    cpu_rounds: list[float] = []
    mean = statistics.mean
    for _ in range(rounds):
        w0, c0 = run(False)
        w1, c1 = run(True)
        wall0 += w0
        cpu0 += c0
        wall1 += w1
        cpu1 += c1
        wall_rounds.append(round((mean(w1) / mean(w0) - 1) * 100, 1))
        cpu_rounds.append(round((mean(c1) / mean(c0) - 1) * 100, 1))
    return {"rounds": rounds, "scans_per_run": scans,
            "cpu_without_mean_us": round(mean(cpu0) * 1e6, 1), "cpu_with_mean_us": round(mean(cpu1) * 1e6, 1),
            "cpu_added_percent": statistics.median(cpu_rounds), "cpu_added_percent_rounds": cpu_rounds,
            "wall_without_mean_us": round(mean(wall0) * 1e6, 1),
            "wall_with_mean_us": round(mean(wall1) * 1e6, 1),
            "wall_without_median_us": round(statistics.median(wall0) * 1e6, 1),
            "wall_with_median_us": round(statistics.median(wall1) * 1e6, 1),
            "wall_added_percent": statistics.median(wall_rounds), "wall_added_percent_rounds": wall_rounds}


def reconnect_shipped(folder: Path, outage_s: float = 16.0) -> dict:
    """The shipped reconnect keys (config/cell.toml: 1 s doubling to a 5 s cap, jittered) through a
    real broker outage of `outage_s`: how long after the broker is back the link is connected again.
    tests/mqtt/test_reconnect.py runs the same at a quarter of the scale."""
    from controller.link.mqtt import PlantLink

    def wait(predicate, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.01)
        return False

    broker = Broker(folder / "reconnect-broker").start()
    config = _config(broker.port)
    link = PlantLink(config, FakeLoop(), state_dir=str(folder / "reconnect"))
    link.start()
    try:
        if not wait(lambda: link.stats()["connected"]):
            raise RuntimeError("reconnect: the link never connected to the bench broker")
        broker.stop()
        wait(lambda: not link.stats()["connected"])
        time.sleep(outage_s)
        attempts = link.counters["connect_failed"]
        back = time.monotonic()
        broker.start()
        ok = wait(lambda: link.stats()["connected"], 60.0)
        took = time.monotonic() - back
    finally:
        link.close()
        broker.stop()
    s = config.mqtt
    return {"took_s": round(took, 2) if ok else None, "outage_s": outage_s, "failed_attempts": attempts,
            "reconnect_min_s": s.reconnect_min_s, "reconnect_max_s": s.reconnect_max_s}


def _drain_figure(run: dict, base: dict, what: str) -> dict:
    ratio = run["events_per_s"] / base["events_per_s"]
    ok = ratio >= DRAIN_VS_BASELINE and run["in_order"] and run["delivered"] == OUTAGE_EVENTS
    extra = {}
    if run["history_rate_per_s"] < UNPACED:
        # Paced by configuration: say whether the pace, not the link, set the figure.
        extra["pace_bound"] = run["events_per_s"] >= 0.9 * run["paced_cap_events_per_s"]
    return figure(run["events_per_s"], "events/s delivered",
                  f">= {DRAIN_VS_BASELINE:.2f} x baseline ({base['events_per_s']} events/s), all in order",
                  ok, vs_baseline=round(ratio, 2), what=what, run=run, **extra)


def run() -> dict:
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        # Queues big enough for a whole outage for each historian (the plant sample: 20000 messages).
        broker = Broker(folder / "broker", max_queued=OUTAGE_EVENTS + 1000).start()
        try:
            base = baseline(broker.port, folder, OUTAGE_EVENTS)
            single = drain(broker.port, folder, OUTAGE_EVENTS, "unbatched", history_batch=1,
                           history_rate_per_s=UNPACED)
            batched = drain(broker.port, folder, OUTAGE_EVENTS, "batched", history_rate_per_s=UNPACED)
            shipped = drain(broker.port, folder, OUTAGE_EVENTS, "shipped")
            lat = latency(broker.port, folder)
            scan = scan_cost(broker.port, folder)
        finally:
            broker.stop()
        back = reconnect_shipped(folder)
    return {
        # The machine's 1-minute load average before and after: other jobs show here.
        "load_average": [round(load0, 1), round(os.getloadavg()[0], 1)],
        "event_bytes": len(payloads.event_body(dict(SAMPLE_EVENT, i=12345), time.time())[0]) + 12,
        "outage_events": OUTAGE_EVENTS,
        "drain_baseline_raw_paho": base,
        "drain_one_per_message": _drain_figure(single, base, "link, history_batch = 1, unpaced: like for "
                                               "like with the baseline"),
        "drain_batched_unpaced": _drain_figure(batched, base, "link, history_batch = 100, unpaced: what "
                                               "the link can do"),
        "drain_shipped": _drain_figure(shipped, base, "link, shipped settings (batched, paced): what a "
                                       "plant gets after an outage"),
        "latency_scan_to_subscriber": figure(lat["p99_ms"], "ms p99", f"< {LATENCY_P99_MS:g} ms p99",
                                             lat["p99_ms"] < LATENCY_P99_MS, **lat),
        # Judged on wall time: the scan's deadline is wall time, and it includes waiting for the
        # GIL while the link's threads run (CPU time, the scan's own work, is beside it).
        "scan_cost_with_link": figure(scan["wall_added_percent"], "% wall time added to a scan (mean; "
                                      "median of paired rounds)",
                                      f"< {SCAN_ADDED_PERCENT:g} %",
                                      scan["wall_added_percent"] < SCAN_ADDED_PERCENT, **scan),
        # The shipped backoff's cap plus a second for the broker's start and the connection.
        "reconnect_shipped": figure(back["took_s"], "s from broker back to link connected",
                                    f"< {back['reconnect_max_s'] + RECONNECT_SLACK_S:g} s (the shipped "
                                    f"{back['reconnect_max_s']:g} s cap + {RECONNECT_SLACK_S:g} s)",
                                    back["took_s"] is not None
                                    and back["took_s"] < back["reconnect_max_s"] + RECONNECT_SLACK_S, **back),
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
