"""The plant link against a loopback Mosquitto of its own (never the system broker).

Measures, in one run:
- ceiling: paho-mqtt publishing QoS 1 messages of an event's size as fast as it can;
- drain: events/s from the outbox to the broker after an outage of 100,000 events, with the
  shipped settings (backlog batches, paced) and with batching off and pacing off;
- latency: event handed to the link -> received by a subscriber, p50/p99, in normal running
  (the lead's Pump adds up to its 50 ms period before the link sees an event);
- scan cost: ScanLoop.scan() on the simulated cell with the link attached vs without.
"""

from __future__ import annotations

import dataclasses
import json
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


def _config(port: int, **mqtt):
    config = cfg.load(ROOT / "config" / "cell.toml")
    return dataclasses.replace(config, mqtt=dataclasses.replace(config.mqtt, port=port, **mqtt))


def _client():
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    return mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)


def ceiling(port: int, size: int, n: int = 20_000) -> float:
    """paho QoS 1, as fast as it goes (its default 20 in flight), messages of `size` bytes."""
    c = _client()
    done = threading.Event()
    acked = [0]

    def on_publish(*_a):
        acked[0] += 1
        if acked[0] >= n:
            done.set()

    c.on_publish = on_publish
    c.connect("127.0.0.1", port)
    c.loop_start()
    payload = b"x" * size
    t0 = time.perf_counter()
    for _ in range(n):
        c.publish("bench/ceiling", payload, qos=1)
    done.wait(120)
    rate = n / (time.perf_counter() - t0)
    c.disconnect()
    c.loop_stop()
    return rate


def drain(port: int, folder: Path, **mqtt) -> dict:
    """Fill an outbox with OUTAGE_EVENTS (as an outage would), then time the drain."""
    from controller.link.mqtt import PlantLink

    config = _config(port, **mqtt)
    state = folder / f"drain-{time.monotonic_ns()}"
    box = Outbox(str(state / f"outbox-{config.cell_id}.sqlite3"), config.mqtt.outbox_max_events)
    past = time.time() - 60
    for start in range(0, OUTAGE_EVENTS, 10_000):
        box.append([(past, *payloads.event_body(dict(SAMPLE_EVENT, i=start + i), past))
                    for i in range(10_000)])
    box.close()
    link = PlantLink(config, FakeLoop(), state_dir=str(state))
    t0 = time.perf_counter()
    link.start()
    deadline = time.monotonic() + 600
    while link.outbox.pending and time.monotonic() < deadline:
        time.sleep(0.01)
    elapsed = time.perf_counter() - t0
    stats = link.stats()
    link.close()
    return {"events_per_s": round(OUTAGE_EVENTS / elapsed), "seconds": round(elapsed, 2),
            "messages": stats.get("event_messages", 0), "left": stats["pending"]}


def latency(port: int, folder: Path, n: int = 500, rate: float = 50.0) -> dict:
    from controller.link.mqtt import PlantLink

    link = PlantLink(_config(port), FakeLoop(), state_dir=str(folder / "latency"))
    got: list[float] = []
    sub = _client()
    ready = threading.Event()
    sub.on_connect = lambda c, *_a: c.subscribe("crushcell/cell1/events", qos=1)
    sub.on_subscribe = lambda *_a: ready.set()

    def on_message(_c, _u, msg):
        got.append(time.time() - json.loads(msg.payload)["ts"])

    sub.on_message = on_message
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    ready.wait(10)
    link.start()
    while not link.stats()["connected"]:
        time.sleep(0.01)
    time.sleep(0.5)
    for i in range(n):
        link.offer_event(dict(SAMPLE_EVENT, i=i))
        time.sleep(1.0 / rate)
    deadline = time.monotonic() + 30
    while len(got) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    link.close()
    sub.disconnect()
    sub.loop_stop()
    return {"p50_ms": round(percentile(got, 50) * 1000, 2), "p99_ms": round(percentile(got, 99) * 1000, 2),
            "n": len(got)}


def scan_cost(port: int, folder: Path, scans: int = 1500) -> dict:
    """Median/mean cost of ScanLoop.scan() on the simulated cell, link attached or not, with the
    Pump running and telemetry at 10 Hz (10 x the default) so the link is busy."""
    from controller.cli import Pump
    from controller.link.mqtt import PlantLink
    from controller.loop import ScanLoop
    from hal.sim import SimulatedCell

    def run(with_link: bool) -> tuple[list[float], list[float]]:
        config = _config(port, telemetry_period_s=0.1)
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
    # Interleaved rounds: the machine is shared, so A/B/A/B and compare the totals.
    wall0: list[float] = []
    wall1: list[float] = []
    cpu0: list[float] = []
    cpu1: list[float] = []
    for _ in range(3):
        w, c = run(False)
        wall0 += w
        cpu0 += c
        w, c = run(True)
        wall1 += w
        cpu1 += c
    mean = statistics.mean
    return {"cpu_without_mean_us": round(mean(cpu0) * 1e6, 1), "cpu_with_mean_us": round(mean(cpu1) * 1e6, 1),
            "cpu_added_percent": round((mean(cpu1) / mean(cpu0) - 1) * 100, 1),
            "wall_without_mean_us": round(mean(wall0) * 1e6, 1),
            "wall_with_mean_us": round(mean(wall1) * 1e6, 1),
            "wall_without_median_us": round(statistics.median(wall0) * 1e6, 1),
            "wall_with_median_us": round(statistics.median(wall1) * 1e6, 1),
            "wall_added_percent": round((mean(wall1) / mean(wall0) - 1) * 100, 1)}


def run() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        broker = Broker(folder / "broker", max_queued=100_000).start()
        try:
            size = len(payloads.event_body(dict(SAMPLE_EVENT, i=12345), time.time())[0]) + 12
            ceil = ceiling(broker.port, size)
            shipped = drain(broker.port, folder)
            single = drain(broker.port, folder, history_batch=1, history_rate_per_s=100_000.0)
            lat = latency(broker.port, folder)
            scan = scan_cost(broker.port, folder)
        finally:
            broker.stop()
    return {
        "ceiling_msgs_per_s": round(ceil),
        "event_bytes": size,
        "drain_shipped": {**shipped, "vs_ceiling": round(shipped["events_per_s"] / ceil, 2)},
        "drain_unbatched_unpaced": {**single, "vs_ceiling": round(single["events_per_s"] / ceil, 2)},
        "latency": lat,
        "scan_cost": scan,
        "targets": {"drain_vs_ceiling": ">= 0.70", "latency_p99_ms": "< 20", "scan_added_percent": "< 5"},
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
