"""Real `crushcell run --hal sim` subprocesses for the tests that need process death."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def busy_scenario(folder: Path, duration_s: float = 3600.0, period_s: float = 0.5) -> Path:
    """A scenario that keeps producing events: a sensor fault toggled on and off."""
    lines = ['name = "busy"', f"duration_s = {duration_s}", ""]
    t, on = 1.0, True
    while t < duration_s:
        mode = "disconnect" if on else "clear"
        lines += ["[[at]]", f"t = {t:.1f}", 'fault = "hf_room"', f'mode = "{mode}"', ""]
        t += period_s
        on = not on
    path = folder / "busy.toml"
    path.write_text("\n".join(lines))
    return path


class Controller:
    def __init__(self, config: Path, state_dir: Path, port: int, *, scenario: Path | None = None,
                 speed: float = 2.0, log: Path | None = None):
        self.args = [sys.executable, "-m", "controller.cli", "run", "--config", str(config), "--hal", "sim",
                     "--no-status", "--broker", f"127.0.0.1:{port}", "--state-dir", str(state_dir),
                     "--speed", str(speed)]
        if scenario is not None:
            self.args += ["--scenario", str(scenario)]
        self.state_dir = state_dir
        self.log = log or state_dir.parent / "controller.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Controller:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(self.args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=logf, env=env)
        return self

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def outbox(self, cell: str = "cell1") -> tuple[int, int]:
        """(rows waiting, highest seq ever) read from the outbox file (WAL: readers do not block)."""
        path = self.state_dir / f"outbox-{cell}.sqlite3"
        if not path.exists():
            return 0, 0
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            pending = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
            row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
            return pending, (row[0] if row else 0)
        except sqlite3.OperationalError:
            return 0, 0
        finally:
            db.close()

    def stop(self) -> None:
        if self.alive():
            try:
                self.terminate()
            except subprocess.TimeoutExpired:
                self.kill9()
