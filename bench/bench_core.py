"""Cost of the safety core's step(), on CPython and under MicroPython, against an anchor.

The anchor is the `transitions` library driving the same state table: one event through it is
what a typical Python state machine costs, so the whole step (all sensors, voting, limits, table)
should cost less than that one event.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from corekit import Bench, params  # noqa: E402

from bench.stats import summary_us  # noqa: E402
from cellspec.names import INPUTS  # noqa: E402
from controller.core import STATES, TRANSITIONS  # noqa: E402

N = 20_000


def step_cost_cpython(n: int = N) -> dict:
    b = Bench(params())
    b.to_state("RUNNING")
    core = b.core
    reads = [b.readings(), b.readings()]
    b.inputs["crusher_running"] = True
    ins = [b.inputs[k] for k in INPUTS]
    now = b.now
    samples = []
    clock = time.perf_counter
    step = core.step
    for k in range(n):
        r = [(v, f, now) for (v, f, _t) in reads[k & 1]]   # fresh samples, built outside the timing
        t = clock()
        step(now, r, ins)
        samples.append(clock() - t)
        now += 100
    assert core.state_name == "RUNNING", core.causes()
    return summary_us(samples)


def step_worst_cpython(n: int = 2000) -> dict:
    """The worst scan: a trip in the same scan as several alarms coming on (events, latch, outputs).

    Each sample starts from a copy of the same RUNNING core, made outside the timing.
    """
    import copy

    b = Bench(params())
    b.to_state("RUNNING")
    b.inputs["crusher_running"] = True
    ins = [b.inputs[k] for k in INPUTS]
    hot = dict(b.values, h2_cell=2.5, lel_cell=30.0, co_cell=300.0, hf_room=0.8, temp_gas=65.0)
    b.values = hot
    r0 = b.readings()
    now = b.now
    samples = []
    clock = time.perf_counter
    for _ in range(n):
        core = copy.deepcopy(b.core)
        r = [(v, f, now) for (v, f, _t) in r0]
        t = clock()
        core.step(now, r, ins)
        samples.append(clock() - t)
    assert core.state_name == "TRIPPED" and len(core.active_alarms()) >= 5, core.active_alarms()
    return summary_us(samples)


MP_SCRIPT = r"""
import sys, time
sys.path.insert(0, ROOT); sys.path.insert(0, ROOT + "/tests")
import corekit
corekit.PARAMS_JSON = PARAMS
from corekit import Bench, params
from cellspec.names import INPUTS
b = Bench(params())
b.to_state("RUNNING")
core = b.core
reads = [b.readings(), b.readings()]
b.inputs["crusher_running"] = True
ins = [b.inputs[k] for k in INPUTS]
now = b.now
samples = []
for k in range(N):
    r = [(x[0], x[1], now) for x in reads[k & 1]]
    t = time.ticks_us()
    core.step(now, r, ins)
    samples.append(time.ticks_diff(time.ticks_us(), t))
    now += 100
samples.sort()
print(samples[len(samples) // 2], samples[int(len(samples) * 0.99)], core.state_name)
"""


def step_cost_micropython(n: int = 5000) -> dict:
    exe = shutil.which("micropython") or str(Path(sys.executable).with_name("micropython"))
    if not Path(exe).exists():
        return {"skipped": "micropython not installed"}
    from controller import config

    with tempfile.TemporaryDirectory() as tmp:
        pj = os.path.join(tmp, "params.json")
        with open(pj, "w") as f:
            json.dump(config.load(ROOT / "config" / "cell.toml").core_params(), f)
        script = os.path.join(tmp, "mp_bench.py")
        with open(script, "w") as f:
            f.write(f"ROOT = {str(ROOT)!r}\nPARAMS = {pj!r}\nN = {n}\n" + MP_SCRIPT)
        out = subprocess.run([exe, "-X", "heapsize=64M", script], capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        return {"error": out.stderr[-500:]}
    med, p99, state = out.stdout.split()
    return {"median_us": float(med), "p99_us": float(p99), "n": n, "state": state}


def transitions_anchor(n: int = N) -> dict:
    """One event through `transitions` on the same table: the cost we must beat per whole step."""
    try:
        from transitions import Machine
    except ImportError:
        return {"skipped": "transitions not installed"}

    class Model:
        pass

    rows = [{"trigger": ev, "source": STATES[src], "dest": STATES[dst]} for src, ev, dst, _g in TRANSITIONS]
    model = Model()
    Machine(model=model, states=list(STATES), transitions=rows, initial="IDLE", auto_transitions=False)
    cycle = ("purge", "inerted", "start", "stop", "rundown_done", "shutdown")
    samples = []
    clock = time.perf_counter
    for k in range(n):
        ev = cycle[k % len(cycle)]
        t = clock()
        model.trigger(ev)
        samples.append(clock() - t)
    return summary_us(samples)


def _verdict(ok: bool, target: str) -> str:
    """A figure that misses its target says so beside it."""
    return ("OK: " if ok else "MISS: ") + target


def run(rounds: int = 10) -> dict:
    """Interleave core and anchor in rounds so both see the same machine load."""
    core_s: list[dict] = []
    anchor_s: list[dict] = []
    worst_s: list[dict] = []
    for _ in range(rounds):
        core_s.append(step_cost_cpython(N // rounds))
        anchor_s.append(transitions_anchor(N // rounds))
        worst_s.append(step_worst_cpython(200))
    core = {"median_us": sorted(r["median_us"] for r in core_s)[rounds // 2],
            "p99_us": sorted(r["p99_us"] for r in core_s)[rounds // 2], "n": N}
    anchor = {"median_us": sorted(r["median_us"] for r in anchor_s)[rounds // 2],
              "p99_us": sorted(r["p99_us"] for r in anchor_s)[rounds // 2], "n": N}
    worst = {"median_us": sorted(r["median_us"] for r in worst_s)[rounds // 2],
             "p99_us": sorted(r["p99_us"] for r in worst_s)[rounds // 2], "n": 200 * rounds}
    return {
        "core_step_cpython": core,
        "core_step_worst_trip_with_alarms_cpython": worst,
        "transitions_event_anchor": anchor,
        "core_step_vs_one_transitions_event": round(core["median_us"] / anchor["median_us"], 2),
        "core_step_target": _verdict(core["median_us"] < 25.0 and core["median_us"] < anchor["median_us"],
                                     "median < 25 us and below one transitions event"),
        "core_step_micropython": step_cost_micropython(),
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
