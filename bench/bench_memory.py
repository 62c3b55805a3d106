"""Memory over a simulated week: is the controller's footprint flat once it has warmed up?

Issue 11 item 8: "a slow RSS creep (+0.26 % over 31.7 simulated hours) is probably harmless: show it
flat over a longer soak, or find it."

The workload is the soak of tests/test_soak.py for a whole week (the suite soaks its first days):
two shifts a day, a seeded operator, about a hundred upsets and faults, one scan per simulated
second, and every invariant of the soak checked after every scan. Wired as `serve()` wires a
controller: the scan loop on the simulated cell, the event Pump thread, the persister (event
numbers, audit journal, fsynced latch file), the calibration tracker, an event log file, and the
plant link (outbox with the shipped fsync setting, status, telemetry) against a real Mosquitto of
its own on loopback. The soak's checker drains the loop's events after each scan and hands them
to the Pump, which sees them as it would see the loop's.

Sampled every simulated hour, after a full garbage collection: RSS (/proc/self/statm) and the
number of blocks the Python allocators hold (sys.getallocatedblocks(): every live object, cheap to
read). Growth is the least-squares slope after the first simulated day (warm-up: journal and
outbox files opening, SQLite's page cache, caches filling, the first of every kind of event), in
KiB per simulated day; blocks are turned into KiB at the mean size of a live block.
Where growth goes: the length of every list, dict, set and deque held by the long-lived objects
(loop, core, cell, link, paho client, outbox, persister, journal, pump and its helpers) at the
end of warm-up and at the end; those that grew are listed by name. tracemalloc would slow the
simulation some twenty times, so it runs only over the last TRACE_H simulated hours (left out of
the slopes): the allocation sites whose live memory grew between a snapshot SETTLE_H hours into
that window and one at its end are listed, largest first (over so short a window, objects that
are merely replaced, such as ring buffers, show too; a site that grows in every run is the lead).

Target: the controller may grow by at most 16 MiB over a year of unattended operation (a few per
cent of the smallest supported board's memory; no restart needed between yearly inspections).
A production day has ten times the scans of a simulated day here (100 ms scans, not 1 s), and the
same number of upsets per shift. Taking the worse case, that all growth is per scan, the budget
of one simulated day here is 16 MiB / 365 / 10 = 4.5 KiB; each slope is judged against it.

    python -m bench bench_memory            the week (70-80 s on a 2-core machine)
    BENCH_MEMORY_DAYS=14 python -m bench bench_memory          two weeks (about 2 minutes)
    BENCH_MEMORY_FRAMES=8 ...               tracemalloc keeps 8 frames: sites with their callers
    BENCH_MEMORY_TRACE_H=48 BENCH_MEMORY_SETTLE_H=24 ...      trace two days, compare the last one
                                            (slow: some 20 minutes with 12 frames)
"""

from __future__ import annotations

import array
import collections
import contextlib
import dataclasses
import gc
import json
import linecache
import os
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT / "tests", ROOT / "tests" / "mqtt"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from brokers import Broker  # noqa: E402
from test_soak import DAY_S, SEED, WEEK_S, Soak  # noqa: E402

YEAR_BUDGET_KIB = 16 * 1024          # growth allowed over a year of production
PRODUCTION_SCANS_PER_DAY = 864_000   # 100 ms scans (config/cell.toml)
TARGET_KIB_PER_SIM_DAY = round(YEAR_BUDGET_KIB / 365 * DAY_S / PRODUCTION_SCANS_PER_DAY, 1)   # 4.5
WARMUP_S = DAY_S                     # simulated seconds left out of the slopes
SAMPLE_EVERY_S = 3600                # one sample per simulated hour
TRACE_H = int(os.environ.get("BENCH_MEMORY_TRACE_H", "8"))        # tracemalloc over the last hours,
SETTLE_H = int(os.environ.get("BENCH_MEMORY_SETTLE_H", "1"))      # compared from this far into them
TOP_SITES = 12                       # allocation sites listed from the snapshot comparison
FRAMES = int(os.environ.get("BENCH_MEMORY_FRAMES", "1"))   # tracemalloc frames per allocation
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") / 1024


def rss_kib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE_KIB


def slope_per_day(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares slope of ys against xs (simulated s) per simulated day, and its standard error."""
    n = len(xs)
    if n < 3:
        return float("nan"), float("nan")
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    resid = sum((y - my - b * (x - mx)) ** 2 for x, y in zip(xs, ys, strict=True))
    return b * DAY_S, (resid / (n - 2) / sxx) ** 0.5 * DAY_S


def figure(value, unit: str, target: str, ok: bool, **extra) -> dict:
    return {"value": value, "unit": unit, "target": target, "verdict": "PASS" if ok else "MISS", **extra}


class _PumpView:
    """The loop as the Pump sees it, but for its events: those the soak's checker drained."""

    def __init__(self, loop) -> None:
        self._loop = loop
        self.queue: collections.deque = collections.deque()

    def __getattr__(self, name):
        return getattr(self._loop, name)

    def drain_events(self) -> list[dict]:
        out = []
        pop = self.queue.popleft
        while self.queue:
            out.append(pop())
        return out


def _census(objects: dict[str, object]) -> dict[str, int]:
    """len() of every container held by the long-lived objects (and one level into their dicts):
    a container that keeps growing after warm-up is a leak with a name, no tracemalloc needed."""
    out: dict[str, int] = {}
    for name, obj in objects.items():
        try:
            attrs = vars(obj)
        except TypeError:
            continue
        for key, value in attrs.items():
            if isinstance(value, (list, dict, set, collections.deque, bytearray)):
                out[f"{name}.{key}"] = len(value)
            if isinstance(value, dict):
                for k2, v2 in value.items():
                    if isinstance(v2, (list, dict, set, collections.deque)):
                        out[f"{name}.{key}[{k2!r}]"] = len(v2)
    return out


def _where(frame) -> str:
    name = frame.filename
    return f"{Path(name).relative_to(ROOT) if name.startswith(str(ROOT)) else name}:{frame.lineno}"


def _top_growth(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot) -> list[dict]:
    keep = (tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, linecache.__file__),
            tracemalloc.Filter(False, __file__))
    stats = after.filter_traces(keep).compare_to(before.filter_traces(keep),
                                                 "lineno" if FRAMES == 1 else "traceback")
    out = []
    for s in sorted(stats, key=lambda s: s.size_diff, reverse=True)[:TOP_SITES]:
        if s.size_diff <= 0:
            break
        out.append({"site": " <- ".join(_where(f) for f in s.traceback), "grew_bytes": s.size_diff,
                    "blocks_grew": s.count_diff, "bytes_now": s.size})
    return out


def soak_week(folder: Path, days: int = 7) -> dict:
    from controller import scenario as sc
    from controller.calibration import Tracker
    from controller.link.mqtt import PlantLink
    from controller.persist import Persister
    from controller.runtime import Pump

    t_start = time.perf_counter()
    broker = Broker(folder / "broker").start()
    soak = Soak(SEED, days)
    loop = soak.loop
    config = dataclasses.replace(soak.config, mqtt=dataclasses.replace(soak.config.mqtt, port=broker.port))
    state = folder / "state"
    view = _PumpView(loop)
    real_drain = loop.drain_events

    def drain_and_hand_over() -> list[dict]:   # scan thread: the checker's drain feeds the Pump
        events = real_drain()
        view.queue.extend(events)
        return events

    loop.drain_events = drain_and_hand_over
    # Samples go into arrays allocated up front: the bench's own bookkeeping must not grow the
    # heap it measures (a dict per sample would be some 14 KiB a day, three times the target).
    end_s = days * DAY_S
    trace_from_s = end_s - TRACE_H * 3600
    n_samples = end_s // SAMPLE_EVERY_S + 1
    t_at, rss_at, blocks_at, wall_at = (array.array("d", bytes(8 * n_samples)) for _ in range(4))
    taken = array.array("q", [0])
    snapshots: dict[str, tracemalloc.Snapshot] = {}
    census: dict[str, dict[str, int]] = {}
    wall0 = array.array("d", [0.0])

    def sample(t_s: int) -> None:
        if t_s == WARMUP_S:   # before the reading: the census's own dict is not counted as growth
            census["warm"] = _census(long_lived())
        gc.collect()
        i = taken[0]
        t_at[i], rss_at[i], blocks_at[i] = t_s, rss_kib(), sys.getallocatedblocks()
        wall_at[i] = time.perf_counter() - wall0[0]
        taken[0] = i + 1
        if t_s == trace_from_s:
            tracemalloc.start(FRAMES)
        elif t_s == trace_from_s + SETTLE_H * 3600:
            snapshots["from"] = tracemalloc.take_snapshot()

    persister = Persister(state, loop, config)
    start_records = persister.restore()
    loop.publish_latch()
    link = PlantLink(config, loop, state_dir=str(state))
    link.start()
    persister.seq = max(persister.seq, link.outbox.last_seq)
    tracker = Tracker(state, config, loop, always=False)
    events_stream = open(folder / "events.jsonl", "a", encoding="utf-8")   # noqa: SIM115
    try:
        # The Pump's echo (JSON event lines on stdout, logs on stderr: the journal) to a file.
        with open(folder / "journal-echo.log", "w", encoding="utf-8") as echo, \
                contextlib.redirect_stdout(echo), contextlib.redirect_stderr(echo):
            pump = Pump(view, events_file=sc.EventLog(events_stream), show_status=False, link=link,
                        persister=persister, calibration=tracker)

            def long_lived() -> dict[str, object]:
                objs = {"loop": loop, "core": loop.core, "cell": loop.io,
                        "model": getattr(loop.io, "model", None), "link": link, "paho": link.client,
                        "outbox": link.outbox, "persister": persister, "journal": persister.journal,
                        "pump": pump, "tracker": tracker}
                objs.update({f"pump.{k}": v for k, v in vars(pump).items()
                             if hasattr(v, "__dict__") and not isinstance(v, type)
                             and type(v).__module__.startswith("controller")})
                return objs

            loop.events.extend(loop.initial_events())
            loop.events.extend(start_records)
            pump.start()
            deadline = time.monotonic() + 10
            while not link.stats()["connected"] and time.monotonic() < deadline:
                time.sleep(0.01)
            wall0[0] = time.perf_counter()
            checker = soak.before

            def before(now_ms: int) -> None:
                checker(now_ms)
                if now_ms % (SAMPLE_EVERY_S * 1000) == 0:
                    sample(now_ms // 1000)

            soak.before = before
            figures = soak.run()
            soak_wall = time.perf_counter() - wall0[0]
            census["end"] = _census(long_lived())
            gc.collect()
            snapshots["end"] = tracemalloc.take_snapshot()
            tracemalloc.stop()
            loop.events.append(sc.end_record(loop))
            loop.drain_events()
            pump.done.set()
            loop.wake.set()
            pump.join(10)
            pump_failures = pump.failures
    finally:
        tracemalloc.stop()
        persister.close()
        link_stats = link.stats()
        link.close()
        events_stream.close()
        broker.stop()

    n = taken[0]
    fit = [i for i in range(n) if WARMUP_S <= t_at[i] <= trace_from_s]
    xs = [t_at[i] for i in fit]
    rss_slope, rss_se = slope_per_day(xs, [rss_at[i] for i in fit])
    blocks_slope, blocks_se = slope_per_day(xs, [blocks_at[i] for i in fit])
    end = snapshots["end"]
    traced = sum(t.size for t in end.traces)
    block_bytes = traced / max(1, len(end.traces))        # mean size of a live block (traced window)
    py_slope = blocks_slope * block_bytes / 1024
    window_s = end_s - (trace_from_s + SETTLE_H * 3600)
    grew = (traced - sum(t.size for t in snapshots["from"].traces)) if "from" in snapshots else 0
    w0, w1 = fit[0], fit[-1]
    target = (f"< {TARGET_KIB_PER_SIM_DAY} KiB per simulated day after day 1 (16 MiB a year at 10 scans/s, "
              "all growth taken as per scan)")
    week_ok = (end_s >= WEEK_S and figures["scans"] == end_s + 1
               and figures["state_s"].get("RUNNING", 0) > 0.3 * 7 * 16 * 3600
               and figures["trips"] >= 10 and figures["resets"] >= 10 and figures["controlled_stops"] >= 5
               and figures["started"] >= 14)
    return {
        "simulated_days": days,
        "soak_figures": {k: figures[k] for k in ("scans", "trips", "resets", "controlled_stops", "started",
                                                  "commands_refused", "upsets")},
        "soak_week_invariants": figure(figures["scans"], "scans, every invariant checked after each",
                                       "no invariant broken, and the week's bounds of tests/test_soak.py "
                                       "(trips, resets, stops, starts >= 10/10/5/14; RUNNING > 30 % of "
                                       "shift time)", week_ok, trip_causes=figures["trip_causes"]),
        "rss_growth_after_warmup": figure(
            round(rss_slope, 2), "KiB per simulated day (RSS)", target, rss_slope < TARGET_KIB_PER_SIM_DAY,
            stderr=round(rss_se, 2), fitted_hours=[round(t_at[w0] / 3600), round(t_at[w1] / 3600)],
            kib_at_start=round(rss_at[0]), kib_at_warmup=round(rss_at[w0]), kib_at_fit_end=round(rss_at[w1]),
            percent_after_warmup=round((rss_at[w1] / rss_at[w0] - 1) * 100, 3)),
        "python_heap_growth_after_warmup": figure(
            round(py_slope, 2), "KiB per simulated day (Python allocator blocks x mean block size)", target,
            py_slope < TARGET_KIB_PER_SIM_DAY, blocks_per_day=round(blocks_slope, 1),
            blocks_stderr=round(blocks_se, 1), mean_block_bytes=round(block_bytes, 1),
            blocks_at_warmup=int(blocks_at[w0]), blocks_at_fit_end=int(blocks_at[w1])),
        "traced_window": {"simulated_h": round(window_s / 3600, 1), "live_bytes_grew": grew,
                          "kib_per_simulated_day": round(grew / 1024 * DAY_S / window_s, 2) if window_s > 0
                          else None,
                          "top_growing_sites": _top_growth(snapshots["from"], end) if "from" in snapshots
                          else []},
        "containers_grown_after_warmup": {k: [census["warm"].get(k, 0), n_end]
                                          for k, n_end in sorted(census.get("end", {}).items())
                                          if n_end > census.get("warm", {}).get(k, 0) and "warm" in census},
        "samples_every_simulated_hour": {"t_h": [round(t_at[i] / 3600) for i in range(n)],
                                         "rss_kib": [round(rss_at[i]) for i in range(n)],
                                         "python_blocks": [int(blocks_at[i]) for i in range(n)]},
        "link_and_pump": {"events_acked": link_stats.get("events_acked"),
                          "pending": link_stats.get("pending"), "pump_failures": pump_failures},
        "soak_wall_s": round(soak_wall, 1),
        "run_time_s": round(time.perf_counter() - t_start, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
    }


def run() -> dict:
    days = int(os.environ.get("BENCH_MEMORY_DAYS", "7"))
    with tempfile.TemporaryDirectory(prefix="crushcell-bench-memory-") as tmp:
        figures = soak_week(Path(tmp), days)
    print(f"bench_memory: {days} simulated days in {figures['run_time_s']} s "
          f"(the soak {figures['soak_wall_s']} s, of which the traced last {TRACE_H} h)", flush=True)
    return figures


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
