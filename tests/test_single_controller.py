"""One controller per state dir, decided by a kernel lock, not by a pid that may be reused.

Hazard: two controllers driving one cell. Issue 10, item 5: `_claim_pidfile` trusted
`os.kill(pid, 0)`; after a power cut the recorded pid often belongs to another process at boot,
and a restart 3 s after kill -9 was refused. Now an flock on <state-dir>/crushcell.lock decides:
the kernel drops it when its holder dies, however it dies.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(state_dir: Path, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "controller.cli", "run", "--hal", "sim", "--no-mqtt",
                           "--no-status", "--state-dir", str(state_dir), "--duration", "0.5", *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0)
os.pwrite(fd, f"{os.getpid()}\\n".encode(), 0)
print("locked", flush=True)
time.sleep(120)
"""


def test_a_process_holding_the_lock_refuses_a_second_controller_and_its_death_frees_it(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(state / "crushcell.lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        out = run(state)
        assert out.returncode == 2, out.stderr
        assert f"another controller (pid {holder.pid}) already runs with state dir {state}" in out.stderr
        assert "crushcell.lock" in out.stderr and "Traceback" not in out.stderr
    finally:
        holder.send_signal(signal.SIGKILL)   # no clean-up at all: the kernel drops the lock
        holder.wait(10)
    out = run(state)
    assert out.returncode == 0, out.stderr


def test_a_stale_pid_file_naming_a_live_unrelated_process_does_not_block_a_start(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    # After a power cut the old pid is often someone else's: here, this very test process.
    (state / "crushcell.pid").write_text(f"{os.getpid()}\n")
    out = run(state)
    assert out.returncode == 0, out.stderr
    assert not (state / "crushcell.pid").exists()      # released at a clean exit
    assert (state / "crushcell.lock").exists()         # never deleted (see cli._claim_pidfile)


def test_a_killed_controller_never_blocks_the_next_one(tmp_path):
    state = tmp_path / "state"
    first = subprocess.Popen([sys.executable, "-m", "controller.cli", "run", "--hal", "sim", "--no-mqtt",
                              "--no-status", "--state-dir", str(state), "--duration", "120"],
                             cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (state / "crushcell.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (state / "crushcell.pid").read_text().strip() == str(first.pid)
        second = run(state)
        assert second.returncode == 2 and f"pid {first.pid}" in second.stderr, second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    assert (state / "crushcell.pid").exists()          # stale: kill -9 leaves it behind
    out = run(state)
    assert out.returncode == 0, out.stderr
