"""`make bench`: run every benchmark, print the figures, write bench/results.json."""

from __future__ import annotations

import importlib
import json
import platform
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

SUITES = ("bench.bench_core", "bench.bench_loop", "bench.bench_hardware", "bench.bench_mqtt")

TARGETS = """
Targets (from the issues): core step() < 25 us median and faster than one `transitions` event;
full scan < 300 us median; 8-hour shift simulated in < 60 s; scan lateness p99 within 1.5x the
bare sleep loop's; hardware software overhead < 10 % of bus time; MQTT drain >= 70 % of the raw
QoS 1 ceiling, event latency p99 < 20 ms, link adds < 5 % to the scan.
"""


def main(argv: list[str]) -> int:
    only = argv[1:] or SUITES
    results: dict = {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "python": sys.version.split()[0],
                     "machine": platform.machine(), "processor": platform.processor() or platform.machine()}
    for name in SUITES:
        if not any(name.endswith(o) or name == o for o in only):
            continue
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            results[name.split(".")[-1]] = {"skipped": f"not available: {exc}"}
            continue
        print(f"== {name}", flush=True)
        try:
            figures = module.run()
        except Exception as exc:  # a benchmark that breaks is reported, the others still run
            traceback.print_exc()
            figures = {"error": repr(exc)}
        print(json.dumps(figures, indent=2), flush=True)
        results[name.split(".")[-1]] = figures
    out = ROOT / "bench" / "results.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(TARGETS)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
