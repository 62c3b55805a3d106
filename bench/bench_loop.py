"""Full scan cost with the simulated cell, simulated-time speed, real-time jitter, peak RSS.

Anchors measured in the same run: a bare sleep-until loop at the same period (its lateness is
what the OS gives any Python loop), so our jitter is judged against the machine, not a guess.
"""

from __future__ import annotations

import io
import json
import resource
import time
from pathlib import Path

from bench.stats import percentile, summary_us
from controller import config as cfg
from controller import scenario as sc
from controller.loop import ScanLoop
from hal.sim import SimulatedCell

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config" / "cell.toml"


def scan_cost(scans: int = 20_000) -> dict:
    """One whole scan (read sim, step core, write sim, hand over events) in simulated time."""
    config = cfg.load(CONFIG)
    loop = ScanLoop(config, SimulatedCell(config, seed=1))
    loop.run_simulated(3000)
    loop.submit("purge", "local")
    loop.run_simulated(200_000)
    loop.submit("start", "local")
    loop.run_simulated(205_000)
    assert loop.core.state_name == "RUNNING", loop.core.causes()
    loop.drain_events()
    now = loop.core.now + loop.period_ms
    samples = []
    clock = time.perf_counter
    for _ in range(scans):
        t = clock()
        loop.scan(now)
        samples.append(clock() - t)
        now += loop.period_ms
        if loop.events:
            loop.drain_events()
    return summary_us(samples) | {"state": loop.core.state_name}


def shift_speed(hours: float = 8.0) -> dict:
    """An 8-hour shift of the normal-shift scenario pattern in simulated time, events to memory."""
    config = cfg.load(CONFIG)
    base = sc.load(ROOT / "config" / "scenarios" / "normal_shift.toml")
    shift = sc.Scenario(base.path, base.name, hours * 3600.0, base.seed, base.steps)
    out = io.StringIO()
    t = time.perf_counter()
    end = sc.simulate(shift, config, out)
    wall = time.perf_counter() - t
    return {"simulated_s": shift.duration_s, "wall_s": round(wall, 2),
            "simulated_s_per_wall_s": round(shift.duration_s / wall, 1),
            "events": out.getvalue().count("\n"), "end_state": end["state"]}


def bare_loop_lateness(period_s: float, seconds: float) -> list[float]:
    """The anchor: sleep until the next slot, do nothing, measure how late we wake."""
    late = []
    mono = time.monotonic
    next_t = mono()
    end = next_t + seconds
    while next_t < end:
        now = mono()
        late.append(now - next_t)
        next_t += period_s
        delay = next_t - mono()
        if delay > 0:
            time.sleep(delay)
    return late


def realtime_jitter(period_s: float = 0.02, seconds: float = 20.0, chunks: int = 4) -> dict:
    """Scan start lateness of the real-time loop (sim backend) against the bare loop's.

    The two alternate in chunks so that both see the same load from the rest of the machine.
    """
    data = cfg.parse(_with_period(period_s), str(CONFIG))
    ours: list[float] = []
    bare: list[float] = []
    overruns = 0
    for _ in range(chunks):
        loop = ScanLoop(data, SimulatedCell(data, seed=1))
        loop.lateness_s = []
        loop.run_realtime(duration_s=seconds / chunks)
        ours += loop.lateness_s[1:]
        overruns += loop.overruns_total
        bare += bare_loop_lateness(period_s, seconds / chunks)[1:]
    p99_ours = percentile(ours, 99)
    p99_bare = percentile(bare, 99)
    return {"period_ms": period_s * 1000, "seconds_each": seconds,
            "loop_lateness": summary_us(ours), "bare_sleep_loop_lateness": summary_us(bare),
            "p99_ratio_to_bare": round(p99_ours / p99_bare, 2) if p99_bare > 0 else None,
            "overruns": overruns}


def _with_period(period_s: float) -> dict:
    import tomllib

    data = tomllib.loads(CONFIG.read_text())
    data["cell"]["scan_period_s"] = period_s
    return data


def peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def run() -> dict:
    return {
        "scan_cost_sim": scan_cost(),
        "shift_8h_simulated": shift_speed(),
        "realtime_jitter_20ms": realtime_jitter(0.02, 20.0),
        "realtime_jitter_100ms": realtime_jitter(0.1, 20.0),
        "peak_rss_mib": peak_rss_mib(),
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
