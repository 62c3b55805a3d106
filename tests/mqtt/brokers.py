"""Real Mosquitto brokers for tests and the benchmark: each on a free loopback port, own config.

Never the system broker on 1883: every broker here is a child process with a config file, a
password file, an ACL and certificates of its own in a temporary folder, stopped at the end.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


def find_mosquitto() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    for path in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/opt/homebrew/sbin/mosquitto"):
        if os.access(path, os.X_OK):
            return path
    return None


def find_mosquitto_passwd() -> str | None:
    found = shutil.which("mosquitto_passwd")
    if found:
        return found
    for path in ("/usr/bin/mosquitto_passwd", "/usr/local/bin/mosquitto_passwd"):
        if os.access(path, os.X_OK):
            return path
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


class Broker:
    """One mosquitto process. `restart()` keeps port and config (and persistence, if enabled)."""

    def __init__(self, folder: Path, *, extra: str = "", persistence: bool = False,
                 max_queued: int = 1000, port: int | None = None):
        self.exe = find_mosquitto()
        if self.exe is None:
            raise RuntimeError("mosquitto not found")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.conf = self.folder / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1"]
        if "allow_anonymous" not in extra:
            lines.append("allow_anonymous true")
        lines += [
            f"max_queued_messages {max_queued}",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            # The broker sends at once (no Nagle): otherwise a small message to a client that has
            # not yet ACKed the previous one waits up to 40 ms for its delayed ACK, and each
            # request/reply round trip of a test pays that twice. Tests never judge latency (the
            # bench does, on a broker like this one); the shipped samples are tested as shipped.
            "set_tcp_nodelay true",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            # Started as root, mosquitto drops to user "mosquitto", which cannot read our tmp files.
            lines.append("user root")
        if persistence:
            lines += ["persistence true", f"persistence_location {self.folder}/",
                      "autosave_interval 1"]
        self.conf.write_text("\n".join(lines) + "\n" + extra)
        self.proc: subprocess.Popen | None = None
        self.log = self.folder / "mosquitto.log"

    def start(self) -> Broker:
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=logf, stderr=logf,
                                         cwd=self.folder)
        if not wait_port(self.port) or self.proc.poll() is not None:
            # Not listening, or exited (the port taken meanwhile, e.g. by another test worker's
            # broker): say so rather than let a test talk to somebody else's broker.
            self.stop()
            raise RuntimeError(f"mosquitto did not open port {self.port}: {self.log.read_text()[-2000:]}")
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def restart(self) -> None:
        self.stop()
        self.start()


def make_ca(folder: Path) -> dict[str, str]:
    """A throw-away CA, a server certificate for 127.0.0.1 and a client certificate (openssl CLI)."""
    folder.mkdir(parents=True, exist_ok=True)
    f = {k: str(folder / k) for k in ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt",
                                      "client.key", "client.csr", "client.crt", "ext.cnf")}
    Path(f["ext.cnf"]).write_text("subjectAltName = IP:127.0.0.1, DNS:localhost\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f["ca.key"], "-out", f["ca.crt"],
        "-days", "2", "-subj", "/CN=crushcell test CA")
    for who, cn in (("server", "localhost"), ("client", "crushcell-test-client")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f[f"{who}.key"], "-out", f[f"{who}.csr"],
            "-subj", f"/CN={cn}")
        extra = ["-extfile", f["ext.cnf"]] if who == "server" else []
        run("x509", "-req", "-in", f[f"{who}.csr"], "-CA", f["ca.crt"], "-CAkey", f["ca.key"],
            "-CAcreateserial", "-out", f[f"{who}.crt"], "-days", "2", *extra)
    return f


def make_passwords(folder: Path, users: dict[str, str]) -> str:
    exe = find_mosquitto_passwd()
    if exe is None:
        raise RuntimeError("mosquitto_passwd not found")
    path = folder / "passwd"
    path.write_text("")
    for user, password in users.items():
        subprocess.run([exe, "-b", str(path), user, password], check=True, capture_output=True, timeout=30)
    os.chmod(path, 0o600)
    return str(path)
