"""Benchmark: software cost of one hardware-backend scan against the I2C time it needs.

Runs read_sensors + read_inputs + write_outputs of HardwareCell over the register-level fakes
(tests/hardware/hwfakes.py) and gpiozero's MockFactory, so it measures our Python and the
Adafruit/smbus2/gpiozero layers, plus the fakes themselves (counted against us: conservative).
Not measured: the kernel's I2C ioctl cost on a real board.

    python bench/bench_hardware.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "hardware"))

SCANS = 3000
SCAN_MS = 100


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(scans: int = SCANS) -> dict:
    from gpiozero.pins.mock import MockFactory
    from hwfakes import FakeCellWiring, make_config

    from cellspec.names import OUTPUTS
    from hal.hardware import HardwareCell
    from hal.hardware.ads1115 import conversion_ms

    config = make_config()
    wiring = FakeCellWiring()                    # the MCP9600 fakes convert every 320 ms (18 bits)
    cell = HardwareCell(config, i2c=wiring.i2c, smbus=wiring.smbus, pin_factory=MockFactory())
    outputs = [[config.outputs[n].safe for n in OUTPUTS], [not config.outputs[n].safe for n in OUTPUTS]]
    clock = wiring.clock
    for _ in range(50):                          # every chip initialised and sampled
        clock.advance(SCAN_MS)
        cell.read_sensors(clock.now_ms)
    buses = {1: wiring.bus1, 3: wiring.bus3}
    tx0 = {b: bus.transactions for b, bus in buses.items()}
    bits0 = {b: bus.bits for b, bus in buses.items()}
    costs_us = []
    for i in range(scans):
        now = clock.advance(SCAN_MS)
        t0 = time.perf_counter_ns()
        readings = cell.read_sensors(now)
        cell.read_inputs(now)
        ok = cell.write_outputs(outputs[i & 1])
        costs_us.append((time.perf_counter_ns() - t0) / 1000.0)
        assert ok and all(r.fault is None for r in readings)
    cell.close()
    tx = {b: (buses[b].transactions - tx0[b]) / scans for b in buses}
    bits = {b: (buses[b].bits - bits0[b]) / scans for b in buses}
    median = statistics.median(costs_us)
    p99 = _percentile(costs_us, 0.99)

    # Bus 1 (ADS1115, SDP810) runs at 100 kHz (Pi default) or 400 kHz (both chips allow it);
    # bus 3 (MCP9600, i2c-gpio) stays at 100 kHz at most: the MCP9600's limit.
    bus_us = {
        "100kHz": (bits[1] + bits[3]) / 100e3 * 1e6,
        "400kHz": bits[1] / 400e3 * 1e6 + bits[3] / 100e3 * 1e6,
    }
    adc = {}
    for name, s in config.sensors.items():
        hw = s.hardware
        if hw["kind"] == "ads1115_4_20ma":
            per_chip = sum(1 for t in config.sensors.values()
                           if t.hardware["kind"] == hw["kind"] and t.hardware["address"] == hw["address"])
            conv = conversion_ms(hw["data_rate"])
            scans_per_sample = max(1, -(-int(conv) // SCAN_MS))
            adc[name] = {"data_rate_sps": hw["data_rate"], "conversion_ms": round(conv, 2),
                         "refresh_ms": per_chip * scans_per_sample * SCAN_MS}
    return {
        "scans": scans,
        "scan_period_ms": SCAN_MS,
        "software_us": {"median": round(median, 1), "p99": round(p99, 1)},
        "i2c_transactions_per_scan": {str(b): round(v, 2) for b, v in tx.items()},
        "i2c_bits_per_scan": {str(b): round(v, 1) for b, v in bits.items()},
        "bus_time_us": {k: round(v, 1) for k, v in bus_us.items()},
        "software_to_bus_ratio": {k: round(median / v, 3) for k, v in bus_us.items()},
        "conversion": {
            "ads1115": adc,
            "mcp9600": "converts continuously; 18-bit hot junction about every 320 ms (datasheet)",
            "sdp810": "continuous averaged mode: a sample every 0.5 ms, read once per scan",
        },
    }


def main() -> int:
    r = run()
    print(f"hardware backend, {r['scans']} scans of read_sensors + read_inputs + write_outputs "
          f"over fake buses (scan period {r['scan_period_ms']} ms)")
    sw = r["software_us"]
    print(f"  software cost per scan: median {sw['median']} us, p99 {sw['p99']} us")
    tx = r["i2c_transactions_per_scan"]
    bits = r["i2c_bits_per_scan"]
    print(f"  I2C per scan: bus 1 {tx['1']} transactions ({bits['1']} bits), "
          f"bus 3 {tx['3']} transactions ({bits['3']} bits)")
    for speed, us in r["bus_time_us"].items():
        ratio = r["software_to_bus_ratio"][speed]
        verdict = "OK" if ratio < 0.10 else "OVER the 10 % budget"
        print(f"  bus time per scan at {speed} (bus 3 at most 100 kHz): {us} us; "
              f"software / bus = {ratio:.1%} ({verdict})")
    print("  conversion times at the configured data rates:")
    for name, a in r["conversion"]["ads1115"].items():
        print(f"    {name:10} ADS1115 {a['data_rate_sps']:4} SPS: {a['conversion_ms']} ms per conversion, "
              f"refreshed every {a['refresh_ms']} ms (one channel per chip per scan)")
    print(f"    MCP9600: {r['conversion']['mcp9600']}")
    print(f"    SDP810:  {r['conversion']['sdp810']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
