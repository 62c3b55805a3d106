"""deploy/install.sh run against a temporary root, with fake host commands.

The "versions" are prebuilt environment directories whose bin/crushcell is a shell script:
one passes check-config, one rejects it. A fake systemctl records every call and reports the
service active/running only while /opt/crushcell/current points at a version named in
FAKE_HEALTHY (space-separated), which is how a version that never sends READY=1 looks to
install.sh. The version named by FAKE_FLAPPING is active but changes its main PID each time.
A version named in FAKE_EXITS fails its start, and (like Restart= using up StartLimitBurst)
leaves every further start refused until `reset-failed`. With FAKE_RESTART_SLEEP, restarting a
version that never becomes ready blocks that long, as `systemctl restart` of a Type=notify unit
does while it waits for READY=1, and then leaves a marker file.

deploy/check-systemd.sh runs the same script under a real systemd.
"""

import base64
import hashlib
import os
import shutil
import stat
import subprocess
import tomllib
from pathlib import Path

import pytest

from controller.config import load as load_config

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"

GOOD_BIN = '#!/bin/sh\necho "crushcell {version} $*"\nexit 0\n'
BAD_CONFIG_BIN = (
    '#!/bin/sh\n[ "$1" = check-config ] || exit 0\necho "$2: [o2] trip_pct = 7.0 is above 5.0" >&2\nexit 1\n'
)
FAKE_SYSTEMCTL = """#!/bin/sh
echo "$*" >> "$FAKE_LOG"
cur="$(readlink "$FAKE_ROOT/opt/crushcell/current")"
limit="$FAKE_ROOT/.fake-start-limit-hit"
if [ "$1" = reset-failed ]; then
    rm -f "$limit"
fi
if [ "$1" = restart ] && [ "$2" = crushcell.service ]; then
    if [ -e "$limit" ]; then
        echo "Job for crushcell.service failed: Start request repeated too quickly." >&2
        exit 1
    fi
    case " $FAKE_EXITS " in
        *" ${cur:-none} "*)
            touch "$limit"
            echo "Job for crushcell.service failed because the control process exited with error code." >&2
            exit 1 ;;
    esac
    case " $FAKE_HEALTHY " in
        *" ${cur:-none} "*) ;;
        *)
            if [ -n "$FAKE_RESTART_SLEEP" ]; then
                sleep "$FAKE_RESTART_SLEEP" </dev/null >/dev/null 2>&1
                touch "$FAKE_ROOT/.fake-restart-returned-$cur"
            fi ;;
    esac
fi
if [ "$1" = show ]; then
    if [ -e "$limit" ]; then
        printf 'ActiveState=failed\\nSubState=failed\\nNRestarts=4\\nMainPID=0\\n'
        exit 0
    fi
    case " $FAKE_HEALTHY " in
        *" ${cur:-none} "*)
            # A flapping version restarts between two looks: its main PID changes.
            pid=4242; [ "$cur" = "$FAKE_FLAPPING" ] && pid=$$
            printf 'ActiveState=active\\nSubState=running\\nNRestarts=0\\nMainPID=%s\\n' "$pid" ;;
        *)
            printf 'ActiveState=activating\\nSubState=start\\nNRestarts=0\\nMainPID=0\\n' ;;
    esac
fi
exit 0
"""
FAKE_RECORDER = '#!/bin/sh\necho "$(basename "$0") $*" >> "$FAKE_LOG"\n'


class Board:
    """A temporary root plus the fakes, and a way to run install.sh against it."""

    def __init__(self, tmp: Path, deploy_dir: Path = DEPLOY) -> None:
        self.tmp = tmp
        self.root = tmp / "root"
        self.root.mkdir()
        self.log = tmp / "calls.log"
        self.log.touch()
        self.config = tmp / "cell.toml"
        self.config.write_text("# shipped config\nscan_period_s = 0.1\n")
        self.script = deploy_dir / "install.sh"
        fakes = tmp / "fakes"
        fakes.mkdir()
        self.env = dict(os.environ, FAKE_LOG=str(self.log), FAKE_ROOT=str(self.root))
        self.env.update(FAKE_HEALTHY="", FAKE_FLAPPING="", FAKE_EXITS="", FAKE_RESTART_SLEEP="")
        self.env.pop("NOTIFY_SOCKET", None)
        for name, text, var in (
            ("systemctl", FAKE_SYSTEMCTL, "CRUSHCELL_SYSTEMCTL"),
            ("useradd", FAKE_RECORDER, "CRUSHCELL_USERADD"),
            ("usermod", FAKE_RECORDER, "CRUSHCELL_USERMOD"),
            ("groupadd", FAKE_RECORDER, "CRUSHCELL_GROUPADD"),
            ("userdel", FAKE_RECORDER, "CRUSHCELL_USERDEL"),
        ):
            path = fakes / name
            path.write_text(text)
            path.chmod(0o755)
            self.env[var] = str(path)

    def version(self, name: str, body: str = GOOD_BIN) -> Path:
        src = self.tmp / f"build-{name}"
        (src / "bin").mkdir(parents=True)
        exe = src / "bin" / "crushcell"
        exe.write_text(body.format(version=name))
        exe.chmod(0o755)
        return src

    def run(self, *args: str, healthy: str = "") -> subprocess.CompletedProcess[str]:
        env = dict(self.env, FAKE_HEALTHY=healthy)
        return subprocess.run(
            ["bash", str(self.script), "--root", str(self.root), *args],
            capture_output=True,
            text=True,
            env=env,
            check=False,
            stdin=subprocess.DEVNULL,
        )

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines()

    def current(self) -> str:
        return os.readlink(self.root / "opt/crushcell/current")

    def install(self, name: str = "1.0.0", *extra: str) -> subprocess.CompletedProcess[str]:
        src = self.version(name) if not (self.tmp / f"build-{name}").exists() else self.tmp / f"build-{name}"
        return self.run(
            "--config", str(self.config), "--version", name, "--settle", "0", *extra, str(src), healthy=name
        )

    def snapshot(self) -> dict[str, tuple[str, str]]:
        """Every path under the root: mode and link target or content."""
        out = {}
        for path in sorted(self.root.rglob("*")):
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                what = "-> " + os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                what = path.read_text()
            else:
                what = "dir"
            out[str(path.relative_to(self.root))] = (oct(st.st_mode), what)
        return out


@pytest.fixture
def board(tmp_path):
    return Board(tmp_path)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_fresh_install_layout(board):
    result = board.install("1.0.0")
    assert result.returncode == 0, result.stderr
    root = board.root
    assert board.current() == "1.0.0"  # relative, so the tree can be inspected from anywhere
    version_dir = root / "opt/crushcell/1.0.0"
    assert mode(version_dir) == 0o755
    assert os.access(version_dir / "bin/crushcell", os.X_OK)
    unit = root / "etc/systemd/system/crushcell.service"
    assert unit.read_text() == (DEPLOY / "crushcell.service").read_text()
    assert mode(unit) == 0o644
    assert mode(root / "etc/crushcell") == 0o750
    config = root / "etc/crushcell/cell.toml"
    assert config.read_text() == board.config.read_text()
    assert mode(config) == 0o640  # may hold plant-link credentials
    assert mode(root / "var/lib/crushcell") == 0o750
    assert mode(root / "var/log/crushcell") == 0o750

    calls = board.calls()
    useradd = [c for c in calls if c.startswith("useradd ")]
    assert len(useradd) == 1 and useradd[0].endswith(" crushcell") and "--groups gpio,i2c" in useradd[0]
    assert "groupadd --system -f gpio" in calls and "groupadd --system -f i2c" in calls
    # The config is checked (by the new version) before the service is started.
    assert "crushcell 1.0.0 check-config" in result.stdout
    assert calls.index("enable crushcell.service") < calls.index("restart crushcell.service")
    assert "daemon-reload" in calls


def test_host_steps_are_printed_not_run_under_root(tmp_path):
    board = Board(tmp_path)
    for var in ("CRUSHCELL_SYSTEMCTL", "CRUSHCELL_USERADD", "CRUSHCELL_USERMOD", "CRUSHCELL_GROUPADD"):
        del board.env[var]
    result = board.install("1.0.0")
    assert result.returncode == 0, result.stderr
    assert board.calls() == []
    assert "skipped under --root: useradd --system" in result.stdout
    assert "skipped under --root: systemctl enable crushcell.service" in result.stdout


def test_install_twice_changes_nothing_and_does_not_restart(board):
    assert board.install("1.0.0").returncode == 0
    first = board.snapshot()
    board.log.write_text("")
    second = board.install("1.0.0")
    assert second.returncode == 0, second.stderr
    assert board.snapshot() == first
    # A no-op re-run must not restart a controller that may be supervising a running cell.
    assert "restart crushcell.service" not in board.calls()
    assert "not restarting" in second.stdout


def test_existing_config_is_never_overwritten(board):
    config = board.root / "etc/crushcell/cell.toml"
    config.parent.mkdir(parents=True)
    config.write_text("# tuned at commissioning\n")
    result = board.install("1.0.0")
    assert result.returncode == 0, result.stderr
    assert config.read_text() == "# tuned at commissioning\n"
    assert "keeping the existing" in result.stdout


def test_fresh_install_with_rejected_config_does_not_start(board):
    src = board.version("1.0.0", BAD_CONFIG_BIN)
    result = board.run("--config", str(board.config), "--version", "1.0.0", str(src))
    assert result.returncode == 1
    assert "rejects" in result.stderr and "trip_pct" in result.stderr
    assert not (board.root / "opt/crushcell/current").exists()
    assert not any(c.startswith(("restart", "start", "enable")) for c in board.calls())


def test_i2c_enabled_in_config_txt_once(board):
    cfg = board.root / "boot/firmware/config.txt"
    cfg.parent.mkdir(parents=True)
    cfg.write_text("dtparam=audio=on\n#dtparam=i2c_arm=on\n")
    result = board.install("1.0.0")
    assert result.returncode == 0, result.stderr
    assert cfg.read_text() == "dtparam=audio=on\ndtparam=i2c_arm=on\n"
    assert (board.root / "etc/modules-load.d/crushcell-i2c.conf").read_text() == "i2c-dev\n"
    # I2C only works after a reboot, so the service is enabled but not started now.
    assert "reboot" in result.stdout
    assert "restart crushcell.service" not in board.calls()
    assert board.install("1.0.0").returncode == 0
    assert cfg.read_text().count("i2c_arm") == 1


def test_i2c_line_appended_when_absent(board):
    cfg = board.root / "boot/firmware/config.txt"
    cfg.parent.mkdir(parents=True)
    cfg.write_text("[all]\ndtparam=audio=on\n")
    assert board.install("1.0.0").returncode == 0
    lines = cfg.read_text().splitlines()
    assert lines[:2] == ["[all]", "dtparam=audio=on"]
    assert lines.count("dtparam=i2c_arm=on") == 1


def test_raspi_config_used_when_present(board, tmp_path):
    fake = tmp_path / "fakes" / "raspi-config"
    # get_i2c prints 1 (off) until do_i2c 0 has run.
    fake.write_text(
        '#!/bin/sh\necho "raspi-config $*" >> "$FAKE_LOG"\n'
        'if [ "$2" = get_i2c ]; then [ -f "$FAKE_ROOT/i2c-on" ] && echo 0 || echo 1; fi\n'
        'if [ "$2" = do_i2c ]; then touch "$FAKE_ROOT/i2c-on"; fi\n'
    )
    fake.chmod(0o755)
    board.env["CRUSHCELL_RASPI_CONFIG"] = str(fake)
    assert board.install("1.0.0").returncode == 0
    assert "raspi-config nonint do_i2c 0" in board.calls()
    board.log.write_text("")
    assert board.install("1.0.0").returncode == 0
    assert "raspi-config nonint do_i2c 0" not in board.calls()


OVERLAY = "dtoverlay=i2c-gpio,bus=3,i2c_gpio_sda=16,i2c_gpio_scl=18"
BUS3_CONFIG = (
    '[cell]\nid = "cell1"\n\n[sensors.temp_gas]\nhardware = { kind = "mcp9600", bus = 3, address = 0x60 }\n'
)


def test_overlay_is_the_documented_bus_3():
    """install.sh adds exactly the line of docs/hardware.md, and the shipped config uses that bus."""
    assert f"`{OVERLAY}`" in (REPO / "docs/hardware.md").read_text()
    assert f'readonly I2C_GPIO_OVERLAY="{OVERLAY}"' in (DEPLOY / "install.sh").read_text()
    with open(REPO / "config/cell.toml", "rb") as f:
        sensors = tomllib.load(f)["sensors"]
    assert {s["hardware"]["bus"] for s in sensors.values() if s["hardware"]["kind"] == "mcp9600"} == {3}


def test_i2c_gpio_overlay_added_once_for_bus_3(board):
    board.config.write_text(BUS3_CONFIG)
    cfg = board.root / "boot/firmware/config.txt"
    cfg.parent.mkdir(parents=True)
    # Raspberry Pi OS ends its config.txt with board filters: the line must apply to [all].
    cfg.write_text("dtparam=i2c_arm=on\n[cm5]\ndtoverlay=dwc2,dr_mode=host\n")
    (board.root / "etc/modules-load.d").mkdir(parents=True)
    (board.root / "etc/modules-load.d/crushcell-i2c.conf").write_text("i2c-dev\n")
    result = board.install("1.0.0")
    assert result.returncode == 0, result.stderr
    lines = cfg.read_text().splitlines()
    assert lines.count(OVERLAY) == 1
    section = [ln for ln in lines[: lines.index(OVERLAY)] if ln.startswith("[")][-1]
    assert section == "[all]"
    assert f"added '{OVERLAY}' to {cfg}" in result.stdout and "reboot" in result.stdout
    assert "restart crushcell.service" not in board.calls()   # bus 3 exists only after the reboot
    text = cfg.read_text()
    assert board.install("1.0.0").returncode == 0
    assert cfg.read_text() == text


def test_i2c_gpio_overlay_added_when_raspi_config_enables_i2c(board, tmp_path):
    board.config.write_text(BUS3_CONFIG)
    fake = tmp_path / "fakes" / "raspi-config"
    fake.write_text('#!/bin/sh\n[ "$2" = get_i2c ] && echo 0\nexit 0\n')   # I2C already on
    fake.chmod(0o755)
    board.env["CRUSHCELL_RASPI_CONFIG"] = str(fake)
    cfg = board.root / "boot/firmware/config.txt"
    cfg.parent.mkdir(parents=True)
    cfg.write_text("dtparam=i2c_arm=on\n")
    assert board.install("1.0.0").returncode == 0
    assert cfg.read_text().splitlines().count(OVERLAY) == 1


def test_no_overlay_without_a_bus_3_sensor(board):
    cfg = board.root / "boot/firmware/config.txt"
    cfg.parent.mkdir(parents=True)
    cfg.write_text("dtparam=i2c_arm=on\n")
    assert board.install("1.0.0").returncode == 0
    assert "i2c-gpio" not in cfg.read_text()   # GPIO16/18 stay free for a site wired otherwise


def test_another_bus_3_overlay_is_left_alone(board):
    board.config.write_text(BUS3_CONFIG)
    cfg = board.root / "boot/firmware/config.txt"
    cfg.parent.mkdir(parents=True)
    cfg.write_text("dtparam=i2c_arm=on\ndtoverlay=i2c-gpio,bus=3,i2c_gpio_sda=5,i2c_gpio_scl=6\n")
    before = cfg.read_text()
    result = board.install("1.0.0")
    assert result.returncode == 0, result.stderr
    assert cfg.read_text() == before
    assert "already makes bus 3" in result.stdout


def test_no_boot_config_prints_the_overlay_line(board):
    board.config.write_text(BUS3_CONFIG)
    result = board.install("1.0.0")
    assert result.returncode == 0, result.stderr
    assert OVERLAY in result.stdout


def test_upgrade_switches_and_keeps_previous(board):
    assert board.install("1.0.0").returncode == 0
    src = board.version("2.0.0")
    result = board.run("--upgrade", "--version", "2.0.0", "--settle", "0", str(src), healthy="2.0.0")
    assert result.returncode == 0, result.stderr
    assert board.current() == "2.0.0"
    assert os.readlink(board.root / "opt/crushcell/previous") == "1.0.0"
    assert (board.root / "opt/crushcell/1.0.0/bin/crushcell").exists()
    assert "crushcell 2.0.0 check-config" in result.stdout


def test_upgrade_rejected_by_check_config_changes_nothing(board):
    assert board.install("1.0.0").returncode == 0
    board.log.write_text("")
    src = board.version("2.0.0", BAD_CONFIG_BIN)
    result = board.run("--upgrade", "--version", "2.0.0", "--ready-timeout", "0", str(src), healthy="1.0.0")
    assert result.returncode == 1
    assert board.current() == "1.0.0"
    assert "2.0.0 rejects" in result.stderr
    assert "trip_pct = 7.0 is above 5.0" in result.stderr  # the controller's own reason is shown
    assert "1.0.0 is still current" in result.stderr
    assert not (board.root / "opt/crushcell/2.0.0").exists()
    assert not any(c.startswith("restart") for c in board.calls())


def test_upgrade_that_never_becomes_ready_rolls_back(board):
    assert board.install("1.0.0").returncode == 0
    board.log.write_text("")
    src = board.version("2.0.0")
    result = board.run(
        "--upgrade", "--version", "2.0.0", "--ready-timeout", "0", "--settle", "0", str(src), healthy="1.0.0"
    )
    assert result.returncode == 3, result.stdout + result.stderr
    assert board.current() == "1.0.0"
    calls = board.calls()
    assert calls.count("restart crushcell.service") == 2  # the new version, then the old again
    assert "did not become healthy; rolling back to 1.0.0" in result.stderr
    assert "1.0.0 is running again" in result.stderr
    assert "ActiveState=activating" in result.stdout
    # There was no previous version before the upgrade, and there is none after the rollback.
    assert not (board.root / "opt/crushcell/previous").is_symlink()


def test_rollback_that_also_fails_says_the_cell_is_down(board):
    assert board.install("1.0.0").returncode == 0
    src = board.version("2.0.0")
    result = board.run("--upgrade", "--version", "2.0.0", "--ready-timeout", "0", str(src), healthy="none")
    assert result.returncode == 4
    assert board.current() == "1.0.0"
    assert "the cell is down" in result.stderr


def test_rollback_restores_the_old_unit(board):
    assert board.install("1.0.0").returncode == 0
    unit = board.root / "etc/systemd/system/crushcell.service"
    old_unit = unit.read_text()
    # Pretend 1.0.0 shipped another unit; 2.0.0 brings the current one.
    (board.root / "opt/crushcell/1.0.0/crushcell.service").write_text(old_unit + "# 1.0.0\n")
    unit.write_text(old_unit + "# 1.0.0\n")
    src = board.version("2.0.0")
    board.log.write_text("")
    result = board.run(
        "--upgrade", "--version", "2.0.0", "--ready-timeout", "0", "--settle", "0", str(src), healthy="1.0.0"
    )
    assert result.returncode == 3
    assert unit.read_text() == old_unit + "# 1.0.0\n"
    assert "daemon-reload" in board.calls()


def test_upgrade_that_restarts_right_after_ready_rolls_back(board):
    assert board.install("1.0.0").returncode == 0
    src = board.version("2.0.0")
    board.env["FAKE_FLAPPING"] = "2.0.0"
    result = board.run("--upgrade", "--version", "2.0.0", "--settle", "0", str(src), healthy="1.0.0 2.0.0")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "did not stay up" in result.stdout
    assert board.current() == "1.0.0"


def restarts(calls: list[str]) -> list[str]:
    return [c for c in calls if c in ("reset-failed crushcell.service", "restart crushcell.service")]


def test_rollback_after_a_version_that_exits_at_start(board):
    """A version that exits at start uses up StartLimitBurst; systemd then refuses the rollback's
    restart until `reset-failed`, and the cell would stay down (exit 4)."""
    assert board.install("1.0.0").returncode == 0
    board.log.write_text("")
    board.env["FAKE_EXITS"] = "2.0.0"
    src = board.version("2.0.0")
    result = board.run("--upgrade", "--version", "2.0.0", "--ready-timeout", "30", "--settle", "0", str(src),
                       healthy="1.0.0")
    assert result.returncode == 3, result.stdout + result.stderr
    assert board.current() == "1.0.0"
    assert "1.0.0 is running again" in result.stderr
    # The failed start is final: no waiting for Restart= attempts, and reset-failed before both restarts.
    assert "the start failed" in result.stdout
    assert restarts(board.calls()) == ["reset-failed crushcell.service", "restart crushcell.service"] * 2


def test_install_resets_a_failed_service_before_starting_it(board):
    board.root.joinpath(".fake-start-limit-hit").touch()   # e.g. left by a crash loop
    result = board.install("1.0.0")
    assert result.returncode == 0, result.stdout + result.stderr
    assert restarts(board.calls()) == ["reset-failed crushcell.service", "restart crushcell.service"]


def test_ready_timeout_counts_from_before_the_restart(board):
    """`systemctl restart` of a Type=notify unit blocks until READY=1 or failure. The deadline
    starts before it, so a restart still blocking at --ready-timeout is cut off there: the fake
    restart below would return after 4 s, past the 1 s deadline, and must never get that far."""
    assert board.install("1.0.0").returncode == 0
    board.env["FAKE_RESTART_SLEEP"] = "4"
    src = board.version("2.0.0")
    result = board.run("--upgrade", "--version", "2.0.0", "--ready-timeout", "1", "--settle", "0", str(src),
                       healthy="1.0.0")
    assert result.returncode == 3, result.stdout + result.stderr
    assert board.current() == "1.0.0"
    assert "not ready within 1s of the restart" in result.stdout
    assert not (board.root / ".fake-restart-returned-2.0.0").exists()


def test_rollback_restores_the_earlier_previous(board):
    assert board.install("1.0.0").returncode == 0
    up = board.run("--upgrade", "--version", "2.0.0", "--settle", "0", str(board.version("2.0.0")),
                   healthy="1.0.0 2.0.0")
    assert up.returncode == 0, up.stdout + up.stderr
    assert os.readlink(board.root / "opt/crushcell/previous") == "1.0.0"
    bad = board.run("--upgrade", "--version", "3.0.0", "--ready-timeout", "0", "--settle", "0",
                    str(board.version("3.0.0")), healthy="1.0.0 2.0.0")
    assert bad.returncode == 3, bad.stdout + bad.stderr
    assert board.current() == "2.0.0"
    # 1.0.0 stays the version to go back to by hand; 2.0.0 is current again, not "previous".
    assert os.readlink(board.root / "opt/crushcell/previous") == "1.0.0"


def test_install_of_another_version_requires_upgrade(board):
    assert board.install("1.0.0").returncode == 0
    result = board.install("2.0.0")
    assert result.returncode == 1
    assert "use --upgrade" in result.stderr
    assert board.current() == "1.0.0"


def test_uninstall_keeps_config_and_state(board):
    assert board.install("1.0.0").returncode == 0
    board.log.write_text("")
    result = board.run("--uninstall")
    assert result.returncode == 0, result.stderr
    assert "disable --now crushcell.service" in board.calls()
    assert not (board.root / "opt/crushcell").exists()
    assert not (board.root / "etc/systemd/system/crushcell.service").exists()
    assert (board.root / "etc/crushcell/cell.toml").exists()
    assert (board.root / "var/lib/crushcell").is_dir()
    assert not any(c.startswith("userdel") for c in board.calls())


def test_uninstall_purge_removes_everything(board):
    assert board.install("1.0.0").returncode == 0
    result = board.run("--uninstall", "--purge")
    assert result.returncode == 0, result.stderr
    for rel in ("opt/crushcell", "etc/crushcell", "var/lib/crushcell", "var/log/crushcell"):
        assert not (board.root / rel).exists(), rel
    assert "userdel crushcell" in board.calls()


def copy_deploy(tmp_path: Path, with_mosquitto: bool) -> Path:
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    for name in ("install.sh", "crushcell.service"):
        (deploy / name).write_bytes((DEPLOY / name).read_bytes())
    if with_mosquitto:
        shutil.copytree(DEPLOY / "mosquitto", deploy / "mosquitto")
    return deploy


def test_mosquitto_skipped_when_sample_missing(tmp_path):
    board = Board(tmp_path, copy_deploy(tmp_path, with_mosquitto=False))
    result = board.install("1.0.0", "--with-mosquitto")
    assert result.returncode == 0, result.stderr
    assert "skipping Mosquitto" in result.stdout
    assert not (board.root / "etc/mosquitto").exists()


# --with-mosquitto, with the real samples, the real mosquitto_passwd and openssl.
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or (
    "/usr/bin/mosquitto_passwd" if os.path.exists("/usr/bin/mosquitto_passwd") else None)
needs_mosquitto = pytest.mark.skipif(
    MOSQUITTO_PASSWD is None or shutil.which("openssl") is None,
    reason="mosquitto_passwd or openssl missing (Debian: mosquitto, openssl; .ci/run installs them)",
)


def conf_values(conf: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in conf.read_text().splitlines():
        words = line.split()
        if len(words) >= 2 and not words[0].startswith("#"):
            out.setdefault(words[0], words[1])
    return out


def password_matches(line: str, password: str) -> bool:
    """Mosquitto 2's `user:$7$iterations$salt$hash` (PBKDF2-HMAC-SHA512, base64)."""
    _user, hashed = line.split(":", 1)
    _empty, kind, iterations, salt, digest = hashed.split("$")
    assert kind == "7"
    want = base64.b64decode(digest)
    got = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt), int(iterations), len(want))
    return got == want


@pytest.fixture
def plant(board):
    """A board whose config is the shipped one (cell1, [mqtt] on 127.0.0.1)."""
    board.config.write_text((REPO / "config/cell.toml").read_text())
    board.env["CRUSHCELL_MOSQUITTO_PASSWD"] = str(MOSQUITTO_PASSWD)
    return board


@needs_mosquitto
def test_with_mosquitto_the_broker_and_the_controller_agree(plant):
    result = plant.install("1.0.0", "--with-mosquitto")
    assert result.returncode == 0, result.stdout + result.stderr
    root = plant.root
    conf = root / "etc/mosquitto/conf.d/crushcell.conf"
    assert conf.read_text() == (DEPLOY / "mosquitto/mosquitto.conf").read_text()
    values = conf_values(conf)
    at = {key: root / values[key].lstrip("/") for key in ("acl_file", "password_file", "cafile", "certfile",
                                                          "keyfile")}
    # Every file the shipped conf names is where it says, so the broker can start.
    assert at["acl_file"].read_text() == (DEPLOY / "mosquitto/crushcell.acl").read_text()
    for path in at.values():
        assert path.is_file(), path
    assert mode(at["password_file"]) == 0o640 and mode(at["keyfile"]) == 0o640
    # Only what the conf names: no README or bridge example among the broker's files.
    assert sorted(p.name for p in (root / "etc/mosquitto").rglob("*") if p.is_file()) == sorted(
        ["crushcell.conf", "crushcell.acl", "crushcell.passwd", "ca.crt", "server.crt", "server.key"])

    # The controller's password matches the broker's hash for the user of this cell.
    secret = root / "etc/crushcell/mqtt.password"
    assert mode(secret) == 0o600
    (line,) = at["password_file"].read_text().splitlines()
    assert line.startswith("crushcell-cell1:")
    assert password_matches(line, secret.read_text().strip())
    assert secret.read_text().strip() not in result.stdout + result.stderr   # never printed

    # The certificate is signed by the CA the controller trusts, for the address it connects to.
    ca = root / "etc/crushcell/ca.crt"
    assert ca.read_bytes() == at["cafile"].read_bytes()
    subprocess.run(["openssl", "verify", "-CAfile", str(ca), str(at["certfile"])], check=True,
                   capture_output=True)
    san = subprocess.run(["openssl", "x509", "-in", str(at["certfile"]), "-noout", "-ext", "subjectAltName"],
                         check=True, capture_output=True, text=True).stdout
    assert "IP Address:127.0.0.1" in san and "DNS:localhost" in san

    # The installed config points the controller at all of it, and still loads.
    cfg = root / "etc/crushcell/cell.toml"
    with open(cfg, "rb") as f:
        mqtt = tomllib.load(f)["mqtt"]
    assert mqtt["host"] == "127.0.0.1"
    assert mqtt["port"] == int(values["listener"])
    assert mqtt["tls"] is True and mqtt["require_tls"] is True
    assert mqtt["ca_file"] == "/etc/crushcell/ca.crt"
    assert mqtt["username"] == "crushcell-cell1"
    assert mqtt["password_file"] == "/etc/crushcell/mqtt.password"
    assert mode(cfg) == 0o640
    assert load_config(cfg).mqtt.username == "crushcell-cell1"
    assert plant.calls().index("restart mosquitto.service") < plant.calls().index("restart crushcell.service")


@needs_mosquitto
def test_with_mosquitto_twice_changes_nothing(plant):
    assert plant.install("1.0.0", "--with-mosquitto").returncode == 0
    first = plant.snapshot()
    plant.log.write_text("")
    again = plant.install("1.0.0", "--with-mosquitto")
    assert again.returncode == 0, again.stdout + again.stderr
    assert plant.snapshot() == first
    assert "restart mosquitto.service" not in plant.calls()


@needs_mosquitto
def test_with_mosquitto_keeps_site_files_and_an_existing_config(plant):
    root = plant.root
    acl = root / "etc/mosquitto/crushcell/crushcell.acl"
    acl.parent.mkdir(parents=True)
    acl.write_text("# site ACL\n")
    config = root / "etc/crushcell/cell.toml"
    config.parent.mkdir(parents=True)
    config.write_text(plant.config.read_text())
    result = plant.install("1.0.0", "--with-mosquitto")
    assert result.returncode == 0, result.stdout + result.stderr
    assert acl.read_text() == "# site ACL\n"
    assert config.read_text() == plant.config.read_text()    # never edited once it exists
    assert 'username = "crushcell-cell1"' in result.stdout    # what to set is printed instead
    assert "has no block for crushcell-cell1" in result.stdout
    # --purge removes what the installer put there, and only that.
    assert plant.run("--uninstall", "--purge").returncode == 0
    assert acl.read_text() == "# site ACL\n"
    assert not (root / "etc/mosquitto/conf.d/crushcell.conf").exists()
    assert not (root / "etc/mosquitto/crushcell.passwd").exists()


@needs_mosquitto
def test_purge_removes_every_mosquitto_file_it_made(plant):
    keep = plant.root / "etc/mosquitto/certs/README"
    keep.parent.mkdir(parents=True)
    keep.write_text("Debian's\n")
    assert plant.install("1.0.0", "--with-mosquitto").returncode == 0
    plant.log.write_text("")
    result = plant.run("--uninstall", "--purge")
    assert result.returncode == 0, result.stdout + result.stderr
    left = sorted(str(p.relative_to(plant.root)) for p in (plant.root / "etc/mosquitto").rglob("*"))
    assert left == ["etc/mosquitto/certs", "etc/mosquitto/certs/README", "etc/mosquitto/conf.d"]
    assert "try-restart mosquitto.service" in plant.calls()


@pytest.mark.parametrize(
    "args",
    [
        ["--bogus", "x"],
        [],
        ["--ready-timeout", "soon", "x"],
        ["--ready-timeout"],
        ["a", "b"],
        ["--purge", "x"],
        ["--uninstall", "x"],
    ],
)
def test_bad_arguments_print_usage_and_exit_2(board, args):
    result = board.run(*args)
    assert result.returncode == 2
    assert "usage: install.sh" in result.stderr
    assert board.calls() == []


def tiny_wheel(directory: Path, version: str) -> Path:
    """A real, dependency-free crushcell wheel whose check-config prints the config path."""
    import base64
    import hashlib
    import zipfile

    files = {
        "crushcell_fake.py": (
            "import sys\ndef main():\n    print('tiny crushcell', ' '.join(sys.argv[1:]))\n    return 0\n"
        ),
        f"crushcell-{version}.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: crushcell\nVersion: {version}\n"
        ),
        f"crushcell-{version}.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
        f"crushcell-{version}.dist-info/entry_points.txt": (
            "[console_scripts]\ncrushcell = crushcell_fake:main\n"
        ),
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text.encode())}")
    record_name = f"crushcell-{version}.dist-info/RECORD"
    record.append(f"{record_name},,")
    files[record_name] = "\n".join(record) + "\n"
    wheel = directory / f"crushcell-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return wheel


def test_wheel_installs_into_a_versioned_venv(board):
    """The real path: python3 -m venv + pip install of the wheel (offline: it has no dependencies)."""
    try:
        import ensurepip  # noqa: F401
    except ImportError:
        pytest.skip("this python3 cannot create a venv with pip (Debian: apt-get install python3-venv)")
    wheel = tiny_wheel(board.tmp, "0.0.1")
    env_extra = {"PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    board.env.update(env_extra)
    result = board.run("--config", str(board.config), "--settle", "0", str(wheel), healthy="0.0.1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert board.current() == "0.0.1"  # the version comes from the wheel's file name
    venv = board.root / "opt/crushcell/0.0.1"
    assert (venv / "pyvenv.cfg").is_file()
    assert "tiny crushcell check-config" in result.stdout
    out = subprocess.run([str(venv / "bin/crushcell"), "x"], capture_output=True, text=True, check=True)
    assert out.stdout == "tiny crushcell x\n"


def test_upgrade_back_to_an_installed_version_reuses_it(board):
    assert board.install("1.0.0").returncode == 0
    src = board.version("2.0.0")
    up = board.run("--upgrade", "--version", "2.0.0", "--settle", "0", str(src), healthy="1.0.0 2.0.0")
    assert up.returncode == 0, up.stderr
    old_dir = board.root / "opt/crushcell/1.0.0"
    # Back to 1.0.0 by naming its directory; 1.0.0 then never becomes ready, so roll forward
    # again to 2.0.0 -- and 1.0.0 must survive both moves.
    back = board.run("--upgrade", "--ready-timeout", "0", "--settle", "0", str(old_dir), healthy="2.0.0")
    assert back.returncode == 3, back.stdout + back.stderr
    assert board.current() == "2.0.0"
    assert (old_dir / "bin/crushcell").exists()
    back = board.run("--upgrade", "--settle", "0", str(old_dir), healthy="1.0.0")
    assert back.returncode == 0, back.stdout + back.stderr
    assert board.current() == "1.0.0"
    assert os.readlink(board.root / "opt/crushcell/previous") == "2.0.0"
