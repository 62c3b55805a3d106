"""Laptops and CI without the vendor packages can still import hal and controller."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

BLOCK = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'gpiozero', 'smbus2', 'board', 'busio', 'adafruit_bus_device',
                                  'adafruit_mcp9600', 'adafruit_ads1x15', 'adafruit_extended_bus',
                                  'lgpio', 'RPi'}:
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
"""


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + code], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def test_hal_and_controller_import_without_vendor_packages():
    r = run("import hal, hal.hardware, controller.probe, cellspec.bindings, controller.config\n"
            "from hal.hardware import HardwareCell\nprint('ok')")
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_building_the_backend_without_libraries_says_what_is_missing():
    r = run("from controller.config import load\nfrom hal.hardware import HardwareCell\n"
            "try:\n    HardwareCell(load('config/cell.toml'))\n"
            "except ImportError as exc:\n    print('ImportError', exc)\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ImportError") and "adafruit-blinka" in r.stdout


def test_benchmark_runs():
    sys.path.insert(0, str(ROOT / "bench"))
    import bench_hardware

    r = bench_hardware.run(scans=30)
    assert r["i2c_transactions_per_scan"]["1"] == 10.0
    assert set(r["software_to_bus_ratio"]) == {"100kHz", "400kHz"}
