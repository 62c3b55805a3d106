"""`make bench`: run every benchmark, print the figures, then every target with PASS or MISS,
and write bench/results.json.

    python -m bench [suite ...]      e.g. python -m bench bench_mqtt bench_fleet
    make bench BENCH="bench_memory"  the same through make

Each suite's run time is printed after its figures and kept in results.json (`run_time_s`).
"""

from __future__ import annotations

import importlib
import json
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

SUITES = ("bench.bench_core", "bench.bench_loop", "bench.bench_hardware", "bench.bench_mqtt",
          "bench.bench_fleet", "bench.bench_memory", "bench.bench_hmi", "bench.bench_sparkplug")

# Targets of suites that report plain figures: (suite, path to the figure, bound, target).
# bench_mqtt and bench_fleet report {"value", "target", "verdict"} themselves; bench_core says
# "OK: ..." or "MISS: ..." beside its figure.
CHECKS: tuple[tuple[str, tuple[str, ...], Any, str], ...] = (
    ("bench_loop", ("scan_cost_sim", "median_us"), lambda v: v < 300.0, "full scan < 300 us median"),
    ("bench_loop", ("shift_8h_simulated", "wall_s"), lambda v: v < 60.0, "8-hour shift simulated in < 60 s"),
    ("bench_loop", ("realtime_jitter_20ms", "output_written_p99_fraction_of_period"), lambda v: v <= 0.5,
     "outputs written p99 within half the scan period after the slot (20 ms period)"),
    ("bench_loop", ("realtime_jitter_100ms", "output_written_p99_fraction_of_period"), lambda v: v <= 0.5,
     "outputs written p99 within half the scan period after the slot (100 ms period)"),
    ("bench_loop", ("realtime_jitter_100ms", "output_written_late"), lambda v: v == 0,
     "no output write completed after its scan period ended (100 ms period)"),
    ("bench_loop", ("realtime_jitter_20ms", "p99_ratio_to_bare"), lambda v: v <= 1.5,
     "anchor: scan start lateness p99 within 1.5 x the bare sleep loop's (20 ms period)"),
    ("bench_hardware", ("software_to_bus_ratio",), lambda v: all(r < 0.10 for r in v.values()),
     "hardware software overhead < 10 % of bus time (every bus speed)"),
)


def _get(figures: dict, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(figures, dict) or key not in figures:
            return None
        figures = figures[key]
    return figures


def verdicts(suite: str, figures: Any, path: str = "") -> list[dict]:
    """Every target a suite's figures carry, as {suite, figure, value, target, verdict}."""
    out: list[dict] = []
    if isinstance(figures, dict):
        if "error" in figures and not path:
            return [{"suite": suite, "figure": "(suite)", "value": figures["error"], "target": "runs",
                     "verdict": "ERROR"}]
        if figures.get("verdict") in ("PASS", "MISS") and "target" in figures:
            value = f"{figures.get('value')} {figures.get('unit', '')}".strip()
            return [{"suite": suite, "figure": path, "value": value, "target": figures["target"],
                     "verdict": figures["verdict"]}]
        for key, sub in figures.items():
            out += verdicts(suite, sub, f"{path}.{key}" if path else key)
    elif isinstance(figures, str) and figures.startswith(("OK: ", "MISS: ")):
        ok, _, target = figures.partition(": ")
        out.append({"suite": suite, "figure": path, "value": "", "target": target,
                    "verdict": "PASS" if ok == "OK" else "MISS"})
    return out


def checked(suite: str, figures: dict) -> list[dict]:
    out = []
    for name, path, ok, target in CHECKS:
        if name != suite or "error" in figures or "skipped" in figures:
            continue
        value = _get(figures, path)
        verdict = "NOT REPORTED" if value is None else ("PASS" if ok(value) else "MISS")
        out.append({"suite": suite, "figure": ".".join(path), "value": json.dumps(value), "target": target,
                    "verdict": verdict})
    return out


def main(argv: list[str]) -> int:
    only = argv[1:] or SUITES
    results: dict = {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "python": sys.version.split()[0],
                     "machine": platform.machine(), "processor": platform.processor() or platform.machine()}
    table: list[dict] = []
    for name in SUITES:
        if not any(name.endswith(o) or name == o for o in only):
            continue
        short = name.split(".")[-1]
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            results[short] = {"skipped": f"not available: {exc}"}
            continue
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        try:
            figures = module.run()
        except Exception as exc:  # a benchmark that breaks is reported, the others still run
            traceback.print_exc()
            figures = {"error": repr(exc)}
        took = round(time.perf_counter() - t0, 1)
        if isinstance(figures, dict):
            figures.setdefault("run_time_s", took)
        print(json.dumps(figures, indent=2), flush=True)
        print(f"== {name}: {took} s", flush=True)
        results[short] = figures
        table += verdicts(short, figures) + checked(short, figures)
    results["verdicts"] = table
    out = ROOT / "bench" / "results.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print("\nTargets, this run:")
    for v in table:
        print(f"  {v['verdict']:<5} {v['suite']}.{v['figure']}: {v['value']}  (target: {v['target']})")
    missed = [v for v in table if v["verdict"] != "PASS"]
    print(f"{len(table) - len(missed)} of {len(table)} targets met" +
          (f"; MISSED: {', '.join(v['suite'] + '.' + v['figure'] for v in missed)}" if missed else ""))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
