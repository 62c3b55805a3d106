"""`[hmi]` in the plant config (issue 14) and deploy/crushcell-hmi.service."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from controller import config as cfg
from controller.hmi.settings import parse_listen

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config" / "cell.toml"
BIN = "/opt/crushcell/current/bin/crushcell"


def parse_with(hmi_toml: str):
    data = tomllib.loads(CONFIG.read_text())
    data["hmi"] = tomllib.loads(hmi_toml)
    return cfg.parse(data, "cell.toml")


def test_defaults_loopback_and_no_commands():
    hmi = cfg.load(CONFIG).hmi
    assert hmi.listen == "127.0.0.1:8080" and hmi.commands is False
    assert parse_with('listen = "0.0.0.0:9000"\ncommands = true').hmi.address == ("0.0.0.0", 9000)
    assert parse_listen("[::1]:8080") == ("::1", 8080)
    assert hmi.state_dir is None   # the rule of `crushcell run` (controller/statedir.py)
    assert parse_with('state_dir = "/var/lib/crushcell"').hmi.state_dir == "/var/lib/crushcell"


@pytest.mark.parametrize(("toml", "error"), [
    ('listen = "8080"', '[hmi] listen = "8080" must be HOST:PORT'),
    ('listen = "127.0.0.1:0"', '[hmi] listen = "127.0.0.1:0" must end in a port number from 1 to 65535'),
    ('listen = ":8080"', '[hmi] listen = ":8080" has no host'),
    ('listen = 8080', "[hmi] listen = 8080 must be a string"),
    ("commands = 1", "[hmi] commands = 1 must be true or false"),
    ("command = true", "[hmi] unknown key 'command'"),
    ("state_dir = 1", "[hmi] state_dir = 1 must be a string"),
    ('state_dir = ""', '[hmi] state_dir = "" must not be empty'),
])
def test_errors_name_the_file_the_key_and_the_problem(toml, error):
    with pytest.raises(cfg.ConfigError) as exc:
        parse_with(toml)
    assert any(line.startswith("cell.toml: " + error) for line in exc.value.errors), exc.value.errors


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze not installed (Debian package 'systemd'); .ci/run installs it")
def test_systemd_accepts_the_hmi_unit(tmp_path):
    stub = tmp_path / "bin" / "crushcell"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    for name in ("crushcell.service", "crushcell-hmi.service"):
        text = (ROOT / "deploy" / name).read_text()
        (tmp_path / name).write_text(text.replace(BIN, str(stub)))
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(tmp_path / "crushcell-hmi.service")],
                          capture_output=True, text=True, check=False, cwd=tmp_path)
    problems = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "crushcell-hmi" in ln]
    assert proc.returncode == 0 and problems == [], proc.stdout + proc.stderr


def test_the_hmi_unit_wants_the_controller_and_the_controller_does_not_need_it():
    hmi = (ROOT / "deploy" / "crushcell-hmi.service").read_text()
    assert "Wants=crushcell.service" in hmi and "Requires=" not in hmi and "BindsTo=" not in hmi
    assert "crushcell-hmi" not in (ROOT / "deploy" / "crushcell.service").read_text()
    for line in ("ProtectSystem=strict", "NoNewPrivileges=yes", "CapabilityBoundingSet=",
                 "PrivateDevices=yes"):
        assert line in hmi.splitlines(), line
