#!/usr/bin/env bash
# Install, upgrade or remove crushcell on a Raspberry Pi OS (Debian 12, arm64) board.
#
#   deploy/install.sh [options] SOURCE           install (idempotent: safe to run again)
#   deploy/install.sh --upgrade [options] SOURCE install beside the running version, switch, roll back if unhealthy
#   deploy/install.sh --uninstall [--purge]      remove (config and state stay unless --purge)
#
# SOURCE is a crushcell wheel, a source directory (with pyproject.toml), or a prebuilt
# environment directory (with bin/crushcell, made for /opt/crushcell/<version>; needs --version).
#
# Layout: /opt/crushcell/<version>/ (one virtual environment per version, root-owned, read-only
# for the service), /opt/crushcell/current -> <version> (what the unit runs),
# /opt/crushcell/previous -> <version> (for a manual rollback), /etc/crushcell/cell.toml,
# /var/lib/crushcell, /var/log/crushcell, /etc/systemd/system/crushcell.service.
#
# Exit status: 0 done; 1 error (nothing switched); 2 bad arguments; 3 upgrade rolled back (the
# previous version runs again); 4 the service is not healthy and could not be made so (the cell
# outputs are dead: the external watchdog relay has dropped them).
#
# For tests: --root DIR installs into DIR and only prints the host steps (user creation,
# systemctl, raspi-config) instead of running them. These environment variables replace
# the commands, and are run even with --root:
#   CRUSHCELL_SYSTEMCTL, CRUSHCELL_USERADD, CRUSHCELL_USERMOD, CRUSHCELL_GROUPADD,
#   CRUSHCELL_USERDEL, CRUSHCELL_RASPI_CONFIG, CRUSHCELL_PYTHON (python3 for the venv),
#   CRUSHCELL_MOSQUITTO_PASSWD (mosquitto_passwd)
# deploy/check-systemd.sh runs this script for real under systemd (Debian 12 in systemd-nspawn).
set -euo pipefail

readonly SERVICE=crushcell.service
readonly SERVICE_USER=crushcell
readonly SERVICE_GROUPS=(gpio i2c)

usage() {
    cat <<'EOF'
usage: install.sh [options] SOURCE
       install.sh --upgrade [options] SOURCE
       install.sh --uninstall [--purge] [--root DIR]

SOURCE: a crushcell wheel, a source directory, or a prebuilt environment directory
        (bin/crushcell; needs --version)

  --upgrade            install beside the current version, check the config with it, switch,
                       restart, and roll back if it is not healthy within --ready-timeout
  --uninstall          stop and remove the service and /opt/crushcell
  --purge              with --uninstall: also remove /etc/crushcell, /var/lib/crushcell,
                       /var/log/crushcell and the crushcell user
  --config FILE        config to install as /etc/crushcell/cell.toml if that is absent
                       (default: SOURCE/config/cell.toml or config/cell.toml beside deploy/)
  --version VERSION    version label (default: from the wheel name or pyproject.toml)
  --extras LIST        extras to install (default: hardware; "" for none)
  --with-mosquitto     also set up a local Mosquitto broker from deploy/mosquitto/: its config,
                       ACL, a generated password for this cell's controller and, when absent,
                       certificates; a config installed by this run is pointed at it
  --ready-timeout SEC  how long the service may take to become active/running, counted from
                       the restart (default 60); a start systemd reports failed ends it at once
  --settle SEC         how long it must then stay up without a restart (default 5)
  --no-start           install and enable, but do not (re)start the service
  --root DIR           install into DIR (tests); host steps are printed, not run
  -h, --help           this text
EOF
}

die() { echo "install.sh: error: $*" >&2; exit 1; }
say() { echo "install.sh: $*"; }
bad_usage() { echo "install.sh: $*" >&2; usage >&2; exit 2; }

# ---- arguments ---------------------------------------------------------------------------
mode=install
purge=0
config_src=""
version=""
extras=hardware
with_mosquitto=0
ready_timeout=60
settle=5
no_start=0
root=""
source_arg=""

need_value() { [ "$2" -ge 2 ] || bad_usage "$1 needs a value"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --upgrade) mode=upgrade; shift ;;
        --uninstall) mode=uninstall; shift ;;
        --purge) purge=1; shift ;;
        --config) need_value "$1" $#; config_src="$2"; shift 2 ;;
        --version) need_value "$1" $#; version="$2"; shift 2 ;;
        --extras) need_value "$1" $#; extras="$2"; shift 2 ;;
        --with-mosquitto) with_mosquitto=1; shift ;;
        --ready-timeout) need_value "$1" $#; ready_timeout="$2"; shift 2 ;;
        --settle) need_value "$1" $#; settle="$2"; shift 2 ;;
        --no-start) no_start=1; shift ;;
        --root) need_value "$1" $#; root="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        --) shift; break ;;
        -*) bad_usage "unknown option: $1" ;;
        *) [ -z "$source_arg" ] || bad_usage "only one SOURCE, got '$source_arg' and '$1'"
           source_arg="$1"; shift ;;
    esac
done
if [ $# -gt 0 ]; then
    if [ -n "$source_arg" ] || [ $# -ne 1 ]; then bad_usage "only one SOURCE"; fi
    source_arg="$1"
fi

is_uint() { case "$1" in ''|*[!0-9]*) return 1 ;; esac; }
is_uint "$ready_timeout" || bad_usage "--ready-timeout wants whole seconds, got '$ready_timeout'"
is_uint "$settle" || bad_usage "--settle wants whole seconds, got '$settle'"
[ "$purge" -eq 0 ] || [ "$mode" = uninstall ] || bad_usage "--purge only goes with --uninstall"
case "$extras" in *[!A-Za-z0-9,_-]*) bad_usage "--extras: letters, digits, '-', '_' and ',' only" ;; esac
if [ "$mode" = uninstall ]; then
    [ -z "$source_arg" ] || bad_usage "--uninstall takes no SOURCE"
else
    [ -n "$source_arg" ] || bad_usage "SOURCE missing"
fi
if [ -n "$root" ]; then
    [ -d "$root" ] || die "--root $root is not a directory"
    root="$(cd "$root" && pwd)"
    [ "$root" != / ] || root=""
fi

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
prefix="$root/opt/crushcell"
etc_dir="$root/etc/crushcell"
config_file="$etc_dir/cell.toml"
state_dir="$root/var/lib/crushcell"
logs_dir="$root/var/log/crushcell"
unit_file="$root/etc/systemd/system/$SERVICE"

# ---- the indirection for host steps --------------------------------------------------------
# host NAME ENV_VAR ARGS...: run the command NAME (or the one named by ENV_VAR). Under --root
# without an override the step is printed, not run: the test root is not a booted system.
host() {
    local name="$1" override="${!2:-}"
    shift 2
    if [ -n "$override" ]; then
        "$override" "$@"
    elif [ -n "$root" ]; then
        echo "install.sh: skipped under --root: $name $*"
    else
        "$name" "$@"
    fi
}
systemctl_() { host systemctl CRUSHCELL_SYSTEMCTL "$@"; }
can_query_systemd() { [ -n "${CRUSHCELL_SYSTEMCTL:-}" ] || [ -z "$root" ]; }

# chown to the service user, which does not exist in a --root tree.
chown_() {
    if [ -n "$root" ]; then
        echo "install.sh: skipped under --root: chown $*"
    else
        chown "$@"
    fi
}

# ---- helpers -----------------------------------------------------------------------------
valid_version() {
    case "$1" in
        ''|.*|current|previous|*[!A-Za-z0-9._+-]*) return 1 ;;
    esac
}

# The version of SOURCE, from --version, the wheel's file name or pyproject.toml.
detect_version() {
    local src="$1" base
    if [ -n "$version" ]; then
        echo "$version"
    elif [ "$(dirname "$src")" = "$prefix" ]; then
        basename "$src"  # a version already installed here
    elif [ -f "$src" ]; then
        base="$(basename "$src")"
        case "$base" in
            crushcell-*.whl) base="${base#crushcell-}"; echo "${base%%-*}" ;;
            *) die "SOURCE $src is not a crushcell-*.whl file" ;;
        esac
    elif [ -f "$src/pyproject.toml" ]; then
        "${CRUSHCELL_PYTHON:-python3}" -c '
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    print(tomllib.load(f)["project"]["version"])' "$src/pyproject.toml" \
            || die "cannot read [project] version from $src/pyproject.toml; pass --version"
    else
        die "cannot tell the version of $src; pass --version"
    fi
}

current_version() {
    local link
    link="$(readlink "$prefix/current" 2>/dev/null)" || return 1
    basename "$link"
}

# Switch a symlink atomically (rename over it), so the unit never sees a missing link.
set_link() {
    local name="$1" target="$2"
    ln -sfn "$target" "$prefix/.$name.new"
    mv -Tf "$prefix/.$name.new" "$prefix/$name"
}

# Build /opt/crushcell/<version>. A directory without the completion marker is the rest of an
# interrupted run and is rebuilt; a complete one is reused unless $2 is "fresh".
build_version() {
    local src="$1" fresh="$2" dir="$prefix/$ver" py spec
    if [ -d "$dir" ] && [ "$(cd "$src" 2>/dev/null && pwd -P)" = "$(cd "$dir" && pwd -P)" ]; then
        # Going back to a version that is still installed: use it as it is, never delete it.
        [ -f "$dir/.crushcell-complete" ] || die "$dir is an incomplete install; cannot use it"
        say "using the installed version $ver in $dir"
        return 0
    fi
    if [ -f "$dir/.crushcell-complete" ] && [ "$fresh" != fresh ]; then
        say "version $ver already installed in $dir"
        return 0
    fi
    changed=1
    created=1
    rm -rf "$dir"
    mkdir -p "$prefix"
    if [ -d "$src" ] && [ ! -f "$src/pyproject.toml" ]; then
        [ -x "$src/bin/crushcell" ] || die "SOURCE $src has neither pyproject.toml nor bin/crushcell"
        say "copying the prebuilt environment $src to $dir"
        cp -a "$src" "$dir"
    else
        py="${CRUSHCELL_PYTHON:-python3}"
        "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
            || die "$py is older than 3.11 (Raspberry Pi OS 12 ships 3.11)"
        say "creating the virtual environment $dir"
        "$py" -m venv "$dir"
        spec="$src"
        [ -z "$extras" ] || spec="${src}[${extras}]"
        # On Raspberry Pi OS /etc/pip.conf adds piwheels, which has arm wheels for the
        # C extensions of the hardware extra.
        "$dir/bin/python" -m pip install --disable-pip-version-check --no-input "$spec" \
            || { rm -rf "$dir"; die "pip could not install $spec"; }
    fi
    [ -x "$dir/bin/crushcell" ] || { rm -rf "$dir"; die "$dir/bin/crushcell missing after install"; }
    # Each version carries the unit it was installed with, so a rollback restores both.
    install -m 0644 "$script_dir/$SERVICE" "$dir/$SERVICE"
    chmod 0755 "$dir"
    touch "$dir/.crushcell-complete"
}

# Check the live config with the given version's binary, as the service user where possible
# (that also proves the service can read it).
check_config_with() {
    local bin="$prefix/$1/bin/crushcell"
    if [ -z "$root" ] && command -v runuser >/dev/null && id "$SERVICE_USER" >/dev/null 2>&1; then
        runuser -u "$SERVICE_USER" -- "$bin" check-config "/etc/crushcell/cell.toml"
    else
        "$bin" check-config "$config_file"
    fi
}

# Put version $1's unit in place; reload systemd when it changed.
install_unit_of() {
    local unit_src="$prefix/$1/$SERVICE"
    [ -f "$unit_src" ] || unit_src="$script_dir/$SERVICE"
    mkdir -p "$(dirname "$unit_file")"
    if ! cmp -s "$unit_src" "$unit_file"; then
        install -m 0644 "$unit_src" "$unit_file"
        changed=1
        systemctl_ daemon-reload
    fi
}

# show_prop NAME: one property of the service from `systemctl show`.
show_prop() {
    { systemctl_ show -p "$1" "$SERVICE" 2>/dev/null || true; } | sed -n "s/^$1=//p" | head -n 1
}

# Healthy means what Type=notify gives: active/running only after READY=1, which the
# controller sends after its first healthy scan once the self-test has left BOOT. Then it must
# stay up for --settle seconds without a restart (a version that crashes right after READY is
# not healthy). $1: the deadline (in $SECONDS) for active/running.
wait_healthy() {
    local deadline="$1" active sub restarts pid
    while :; do
        active="$(show_prop ActiveState)"
        sub="$(show_prop SubState)"
        if [ "$active" = active ] && [ "$sub" = running ]; then
            break
        fi
        if [ "$active" = failed ]; then
            say "$SERVICE failed (ActiveState=failed, SubState=$sub)"
            return 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            say "$SERVICE not ready within ${ready_timeout}s of the restart (ActiveState=$active, SubState=$sub)"
            return 1
        fi
        sleep 1
    done
    restarts="$(show_prop NRestarts)"
    pid="$(show_prop MainPID)"
    if [ "$settle" -gt 0 ]; then
        sleep "$settle"
    fi
    active="$(show_prop ActiveState)"
    sub="$(show_prop SubState)"
    if [ "$active" != active ] || [ "$sub" != running ] \
        || [ "$(show_prop NRestarts)" != "$restarts" ] || [ "$(show_prop MainPID)" != "$pid" ]; then
        say "$SERVICE became ready but did not stay up for ${settle}s (ActiveState=$active, SubState=$sub)"
        return 1
    fi
    say "$SERVICE is active/running"
}

# Restart and wait until healthy. The --ready-timeout deadline starts before the restart, so it
# bounds the whole wait. With Type=notify `systemctl restart` returns when READY=1 arrives, or
# fails when the start failed (the process exited, or sent no READY=1 within the unit's
# TimeoutStartSec): that failure is systemd's verdict, and it is final here: a version that
# fails its first start is not waited for through Restart= attempts.
restart_and_wait() {
    local deadline=$((SECONDS + ready_timeout)) left rc=0
    if ! can_query_systemd; then
        systemctl_ reset-failed "$SERVICE" || true
        systemctl_ restart "$SERVICE"
        say "not waiting for the service under --root"
        return 0
    fi
    # A version that exits at start uses up StartLimitBurst within seconds; systemd then refuses
    # every start ("Start request repeated too quickly") until the failed state is reset.
    systemctl_ reset-failed "$SERVICE" 2>/dev/null || true
    left=$((deadline - SECONDS))
    [ "$left" -ge 1 ] || left=1
    timeout "$left" "${CRUSHCELL_SYSTEMCTL:-systemctl}" restart "$SERVICE" || rc=$?
    if [ "$rc" -eq 124 ]; then
        say "$SERVICE not ready within ${ready_timeout}s of the restart (systemctl restart still waiting)"
        return 1
    elif [ "$rc" -ne 0 ]; then
        say "systemctl restart $SERVICE returned $rc: the start failed (exit, crash or no READY=1 within TimeoutStartSec)"
        return 1
    fi
    wait_healthy "$deadline"
}

ensure_user() {
    local group
    for group in "${SERVICE_GROUPS[@]}"; do
        # Raspberry Pi OS has these groups (its udev rules give them the device nodes).
        if [ -n "$root" ] || ! getent group "$group" >/dev/null; then
            host groupadd CRUSHCELL_GROUPADD --system -f "$group"
        fi
    done
    if [ -n "$root" ] || ! id "$SERVICE_USER" >/dev/null 2>&1; then
        host useradd CRUSHCELL_USERADD --system --user-group --no-create-home \
            --home-dir /var/lib/crushcell --shell /usr/sbin/nologin \
            --groups "$(IFS=,; echo "${SERVICE_GROUPS[*]}")" "$SERVICE_USER"
    fi
    local have=""
    [ -n "$root" ] || have=" $(id -nG "$SERVICE_USER" 2>/dev/null || true) "
    if [[ "$have" != *" gpio "* || "$have" != *" i2c "* ]]; then
        host usermod CRUSHCELL_USERMOD --append --groups "$(IFS=,; echo "${SERVICE_GROUPS[*]}")" "$SERVICE_USER"
    fi
}

# The boot configuration of a Raspberry Pi (Bookworm: /boot/firmware/config.txt), or nothing.
boot_config() {
    local cfg
    for cfg in "$root/boot/firmware/config.txt" "$root/boot/config.txt"; do
        if [ -f "$cfg" ]; then
            echo "$cfg"
            return 0
        fi
    done
    return 1
}

# Enable I2C: bus 1 (the Pi's controller) and, when the config puts a sensor on it, bus 3
# (bit-banged i2c-gpio, for the MCP9600s). Sets i2c_changed when a reboot is needed before the
# controller can read its sensors.
i2c_changed=0
enable_i2c() {
    local cfg line
    if [ -n "${CRUSHCELL_RASPI_CONFIG:-}" ] || { [ -z "$root" ] && command -v raspi-config >/dev/null; }; then
        # do_i2c 0 means "enable" in raspi-config's nonint convention. get_i2c prints 0 when on.
        if [ "$(host raspi-config CRUSHCELL_RASPI_CONFIG nonint get_i2c 2>/dev/null)" != 0 ]; then
            host raspi-config CRUSHCELL_RASPI_CONFIG nonint do_i2c 0
            i2c_changed=1
        fi
        enable_i2c_gpio
        return 0
    fi
    if ! cfg="$(boot_config)"; then
        say "warning: no raspi-config and no /boot/firmware/config.txt: enable I2C on this board by hand"
        enable_i2c_gpio
        return 0
    fi
    line="$(grep -E '^[[:space:]]*#?[[:space:]]*dtparam=i2c_arm=' "$cfg" | head -n 1 || true)"
    if grep -qxE '[[:space:]]*dtparam=i2c_arm=on' "$cfg"; then
        :
    elif [ -n "$line" ]; then
        # A commented-out or "off" line: turn the first one on, in place.
        sed -i -E '0,/^[[:space:]]*#?[[:space:]]*dtparam=i2c_arm=.*/s//dtparam=i2c_arm=on/' "$cfg"
        i2c_changed=1
    else
        # [all]: the lines before may sit under a board filter such as [cm5].
        printf '\n[all]\n# crushcell: I2C for the sensors\ndtparam=i2c_arm=on\n' >> "$cfg"
        i2c_changed=1
    fi
    mkdir -p "$root/etc/modules-load.d"
    if [ ! -f "$root/etc/modules-load.d/crushcell-i2c.conf" ]; then
        echo i2c-dev > "$root/etc/modules-load.d/crushcell-i2c.conf"
        i2c_changed=1
    fi
    enable_i2c_gpio
}

# Bus 3 of the reference wiring (docs/hardware.md): the MCP9600s stretch the clock, which the
# Pi's I2C controller mishandles, so they sit on a bit-banged bus. The Pi firmware sets it up
# from this overlay line at boot; nothing else does (raspi-config does not).
readonly I2C_GPIO_OVERLAY="dtoverlay=i2c-gpio,bus=3,i2c_gpio_sda=16,i2c_gpio_scl=18"

# True when the config (the live one, else the one about to be installed) has a sensor on bus 3.
config_uses_bus3() {
    local cfg="$config_file"
    [ -f "$cfg" ] || cfg="$(config_source)" || return 1
    [ -f "$cfg" ] || return 1
    "${CRUSHCELL_PYTHON:-python3}" - "$cfg" <<'PY'
import sys, tomllib
try:
    with open(sys.argv[1], "rb") as f:
        sensors = tomllib.load(f).get("sensors", {})
except (OSError, ValueError):
    sys.exit(0)   # unreadable here: check-config reports it; assume the reference wiring
sys.exit(0 if any(isinstance(s, dict) and isinstance(s.get("hardware"), dict)
                  and s["hardware"].get("bus") == 3 for s in sensors.values()) else 1)
PY
}

enable_i2c_gpio() {
    local cfg
    config_uses_bus3 || return 0
    if ! cfg="$(boot_config)"; then
        say "warning: no /boot/firmware/config.txt: add this line to the board's boot config by hand" \
            "(I2C bus 3 for the MCP9600s): $I2C_GPIO_OVERLAY"
        return 0
    fi
    if grep -qxE "[[:space:]]*${I2C_GPIO_OVERLAY}[[:space:]]*" "$cfg"; then
        return 0
    fi
    if grep -qE '^[[:space:]]*dtoverlay=i2c-gpio,(.*,)?bus=3([,[:space:]]|$)' "$cfg"; then
        say "warning: $cfg already makes bus 3 with another i2c-gpio line; left as it is" \
            "(the reference wiring is: $I2C_GPIO_OVERLAY)"
        return 0
    fi
    printf '\n[all]\n# crushcell: I2C bus 3, bit-banged on GPIO16 (SDA) and GPIO18 (SCL), for the MCP9600s (docs/hardware.md)\n%s\n' \
        "$I2C_GPIO_OVERLAY" >> "$cfg"
    i2c_changed=1
    say "added '$I2C_GPIO_OVERLAY' to $cfg (I2C bus 3 for the MCP9600s); it takes effect at the next reboot"
}

# The config file to install when there is none: --config, SOURCE/config/cell.toml, or the one
# beside deploy/.
config_source() {
    if [ -n "$config_src" ]; then
        echo "$config_src"
    elif [ -d "$source_arg" ] && [ -f "$source_arg/config/cell.toml" ]; then
        echo "$source_arg/config/cell.toml"
    else
        echo "$script_dir/../config/cell.toml"
    fi
}

config_installed=0
install_config() {
    local src
    mkdir -p "$etc_dir" "$state_dir" "$logs_dir"
    chmod 0750 "$etc_dir" "$state_dir" "$logs_dir"
    chown_ "root:$SERVICE_USER" "$etc_dir"
    chown_ "$SERVICE_USER:$SERVICE_USER" "$state_dir" "$logs_dir"
    if [ -e "$config_file" ]; then
        say "keeping the existing $config_file"
        return 0
    fi
    src="$(config_source)"
    [ -f "$src" ] || die "no config to install: $src not found; pass --config FILE"
    # May hold plant-link credentials: readable by the service group only.
    install -m 0640 "$src" "$config_file"
    chown_ "root:$SERVICE_USER" "$config_file"
    config_installed=1
    say "installed $src as $config_file"
}

# ---- the sample Mosquitto broker (--with-mosquitto) ------------------------------------------
# deploy/mosquitto/mosquitto.conf goes to /etc/mosquitto/conf.d/crushcell.conf (Debian's main
# config includes conf.d/); every other file goes where that conf points: the ACL (acl_file),
# a password file (password_file) with a generated password for this cell's controller, and,
# when none of them exist, a generated CA and server certificate (cafile, certfile, keyfile) for
# its TLS listener. Existing files are never overwritten. The controller's side: the password
# in /etc/crushcell/mqtt.password (mode 0600, the service user's), the CA in
# /etc/crushcell/ca.crt and, in a config installed by this run, [mqtt] pointing at them.
# Everything created is listed in $mosquitto_manifest, which --purge removes.
mosquitto_manifest="$etc_dir/mosquitto-files"
mosq_changed=0

created_file() {  # record a file (or directory) this run created, for --purge
    echo "${1#"$root"}" >> "$mosquitto_manifest"
    mosq_changed=1
}

# conf_value FILE KEY: the first value of KEY in a mosquitto config file.
conf_value() { awk -v k="$2" '$1 == k { print $2; exit }' "$1"; }

# cell_id: [cell] id of the live config (the MQTT user is crushcell-<id>).
cell_id() {
    "${CRUSHCELL_PYTHON:-python3}" - "$config_file" <<'PY'
import sys, tomllib
try:
    with open(sys.argv[1], "rb") as f:
        print(tomllib.load(f)["cell"]["id"])
except (OSError, ValueError, KeyError) as exc:
    sys.exit(f"cannot read [cell] id from {sys.argv[1]}: {exc}")
PY
}

mosquitto_passwd_() { "${CRUSHCELL_MOSQUITTO_PASSWD:-mosquitto_passwd}" "$@"; }

install_mosquitto() {
    local src_dir="$script_dir/mosquitto" conf acl passwd cafile certfile keyfile port cell user
    if [ ! -f "$src_dir/mosquitto.conf" ]; then
        say "skipping Mosquitto: $src_dir/mosquitto.conf not found"
        return 0
    fi
    if [ -z "$root" ]; then
        local need=()
        command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
        command -v openssl >/dev/null || need+=(openssl)
        if [ "${#need[@]}" -gt 0 ]; then
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" \
                || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"; } \
                || die "could not install ${need[*]}"
        fi
    fi
    mkdir -p "$etc_dir"

    conf="$root/etc/mosquitto/conf.d/crushcell.conf"
    if [ -e "$conf" ]; then
        say "keeping the existing $conf"
    else
        mkdir -p "$(dirname "$conf")"
        install -m 0644 "$src_dir/mosquitto.conf" "$conf"
        created_file "$conf"
        say "installed $conf"
    fi
    # The other files go where the installed conf (maybe edited on site) says.
    acl="$(conf_value "$conf" acl_file)"
    passwd="$(conf_value "$conf" password_file)"
    cafile="$(conf_value "$conf" cafile)"
    certfile="$(conf_value "$conf" certfile)"
    keyfile="$(conf_value "$conf" keyfile)"
    port="$(conf_value "$conf" listener)"
    cell="$(cell_id)" || die "the MQTT user is named after [cell] id; fix $config_file"
    user="crushcell-$cell"

    if [ -n "$acl" ]; then
        if [ -e "$root$acl" ]; then
            say "keeping the existing $root$acl"
        else
            if [ ! -d "$root$(dirname "$acl")" ]; then
                mkdir -p "$root$(dirname "$acl")"
                created_file "$root$(dirname "$acl")"
            fi
            install -m 0644 "$src_dir/crushcell.acl" "$root$acl"
            created_file "$root$acl"
            say "installed $root$acl"
        fi
        grep -qx "user $user" "$root$acl" \
            || say "warning: $root$acl has no block for $user: add one (deploy/mosquitto/README.md shows how)"
    fi

    if [ -n "$passwd" ]; then
        mosquitto_password "$root$passwd" "$user"
    fi
    if [ -n "$certfile" ]; then
        mosquitto_certificates "$cafile" "$certfile" "$keyfile"
    fi
    mqtt_client_config "$user" "$port" "${cafile:+/etc/crushcell/ca.crt}"

    systemctl_ enable mosquitto.service
    if [ "$mosq_changed" -eq 0 ]; then
        say "Mosquitto files unchanged: not restarting mosquitto"
        return 0
    fi
    if ! systemctl_ restart mosquitto.service; then
        say "warning: mosquitto did not start: journalctl -u mosquitto -n 30 (the controller runs without its broker)"
    fi
}

# A broker user for this cell's controller with a generated password: its hash in the broker's
# password file, the password itself where the controller reads it. Kept when both exist.
mosquitto_password() {
    local file="$1" user="$2" secret="$etc_dir/mqtt.password" tmp password
    if [ -f "$file" ] && grep -q "^$user:" "$file" && [ -s "$secret" ]; then
        say "keeping the broker user $user ($file) and $secret"
        return 0
    fi
    password="$(head -c 24 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
    tmp="$(umask 077 && mktemp)"
    printf '%s:%s\n' "$user" "$password" > "$tmp"
    # -U hashes the file in place: the password never appears on a command line.
    mosquitto_passwd_ -U "$tmp" || { rm -f "$tmp"; die "mosquitto_passwd -U failed"; }
    mkdir -p "$(dirname "$file")"
    if [ -f "$file" ]; then
        # Replace this user's line (its old password is unknown to the controller).
        { grep -v "^$user:" "$file" || true; cat "$tmp"; } > "$tmp.new"
        cat "$tmp.new" > "$file"
        rm -f "$tmp.new"
        mosq_changed=1
    else
        install -m 0640 "$tmp" "$file"
        created_file "$file"
    fi
    rm -f "$tmp"
    chmod 0640 "$file"
    chown_ root:mosquitto "$file"
    (umask 077 && printf '%s\n' "$password" > "$secret")
    chmod 0600 "$secret"
    chown_ "$SERVICE_USER:$SERVICE_USER" "$secret"
    say "created the broker user $user: password hash in $file, the password in $secret (mode 0600, for the controller)"
}

# make_certificates DIR NAME: DIR/ca.crt, DIR/server.crt, DIR/server.key for host NAME. EC P-256,
# 10 years. The CA key signs this one certificate and is deleted with DIR: a plant with its own
# PKI replaces the three files (and /etc/crushcell/ca.crt).
make_certificates() {
    local dir="$1" name="$2"
    openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -days 3650 \
        -subj "/CN=crushcell broker CA ($name)" -keyout "$dir/ca.key" -out "$dir/ca.crt" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null \
        || return 1
    openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -subj "/CN=$name" \
        -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null || return 1
    printf 'subjectAltName=DNS:%s,DNS:%s.local,DNS:localhost,IP:127.0.0.1,IP:::1\n%s\n%s\n%s\n' "$name" "$name" \
        basicConstraints=CA:FALSE keyUsage=critical,digitalSignature extendedKeyUsage=serverAuth > "$dir/ext"
    openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
        -days 3650 -extfile "$dir/ext" -out "$dir/server.crt" 2>/dev/null
}

# A CA and a server certificate for the TLS listener, when none of the three files exists.
mosquitto_certificates() {
    local cafile="$1" certfile="$2" keyfile="$3" tmp name
    if [ -e "$root$cafile" ] && [ -e "$root$certfile" ] && [ -e "$root$keyfile" ]; then
        say "keeping the existing TLS files $root$cafile, $root$certfile, $root$keyfile"
    elif [ -e "$root$cafile" ] || [ -e "$root$certfile" ] || [ -e "$root$keyfile" ]; then
        say "warning: some of $cafile, $certfile, $keyfile exist: not generating any; Mosquitto needs all three"
        return 0
    else
        command -v openssl >/dev/null || die "openssl missing (apt-get install openssl)"
        name="$(hostname 2>/dev/null || echo crushcell)"
        tmp="$(mktemp -d)"
        make_certificates "$tmp" "$name" || { rm -rf "$tmp"; die "openssl could not make the broker's certificates"; }
        mkdir -p "$root$(dirname "$cafile")" "$root$(dirname "$certfile")" "$root$(dirname "$keyfile")"
        install -m 0644 "$tmp/ca.crt" "$root$cafile"
        created_file "$root$cafile"
        install -m 0644 "$tmp/server.crt" "$root$certfile"
        created_file "$root$certfile"
        install -m 0640 "$tmp/server.key" "$root$keyfile"
        created_file "$root$keyfile"
        chown_ root:mosquitto "$root$keyfile"
        rm -rf "$tmp"
        say "generated a CA and the broker's certificate (localhost, 127.0.0.1, $name): $root$cafile, $root$certfile, $root$keyfile"
    fi
    if [ ! -e "$etc_dir/ca.crt" ] && [ -f "$root$cafile" ]; then
        install -m 0644 "$root$cafile" "$etc_dir/ca.crt"
        say "copied the broker's CA to $etc_dir/ca.crt (the controller's [mqtt] ca_file); give it to the plant's MQTT clients too"
    fi
}

# [mqtt] of the controller's config for the local broker. Only a config this run installed is
# changed (an existing one is never edited); otherwise the lines to set are printed.
mqtt_client_config() {
    local user="$1" port="$2" ca="$3" args
    args=(username "\"$user\"" password_file "\"/etc/crushcell/mqtt.password\"")
    if [ -n "$ca" ]; then
        args+=(tls true require_tls true ca_file "\"$ca\"")
    fi
    [ -z "$port" ] || args+=(port "$port")
    if [ "$config_installed" -ne 1 ]; then
        if ! grep -q "^[[:space:]]*username[[:space:]]*=" "$config_file" 2>/dev/null; then
            say "note: $config_file was there before, so it is not changed. For the local broker, set in [mqtt]:"
            local i
            for ((i = 0; i < ${#args[@]}; i += 2)); do
                say "    ${args[i]} = ${args[i + 1]}"
            done
        fi
        return 0
    fi
    "${CRUSHCELL_PYTHON:-python3}" - "$config_file" "${args[@]}" <<'PY' || die "could not set [mqtt] in $config_file"
import os, re, sys, tomllib
path, pairs = sys.argv[1], sys.argv[2:]
values = dict(zip(pairs[::2], pairs[1::2]))          # key -> TOML literal
text = open(path, encoding="utf-8").read()
mqtt = tomllib.loads(text).get("mqtt", {})
if not mqtt.get("enabled", True) or mqtt.get("host", "127.0.0.1") not in ("127.0.0.1", "localhost", "::1"):
    print(f"install.sh: note: [mqtt] in {path} is off or names another broker; not changed")
    sys.exit(0)
head = re.search(r"(?m)^\[mqtt\][ \t]*(#.*)?\n", text)
if head is None:
    text = text.rstrip("\n") + "\n\n[mqtt]\n"
    head = re.search(r"(?m)^\[mqtt\][ \t]*\n", text)
start = head.end()
nxt = re.compile(r"(?m)^\[").search(text, start)
end = nxt.start() if nxt else len(text)
body = text[start:end]
for key, literal in values.items():
    line = f"{key} = {literal}   # set by install.sh --with-mosquitto"
    body, n = re.subn(rf"(?m)^[ \t]*{re.escape(key)}[ \t]*=.*$", line, body, count=1)
    if n == 0:   # else a commented-out example of the key, else a new line
        body, n = re.subn(rf"(?m)^[ \t]*#[ \t]*{re.escape(key)}[ \t]*=.*$", line, body, count=1)
    if n == 0:
        stripped = body.rstrip("\n")
        body = stripped + "\n" + line + "\n" + body[len(stripped):].lstrip("\n")
text = text[:start] + body + text[end:]
got = tomllib.loads(text)["mqtt"]
for key, literal in values.items():
    assert got[key] == tomllib.loads(f"v = {literal}")["v"], key
tmp = path + ".new"
with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
st = os.stat(path)
os.chown(tmp, st.st_uid, st.st_gid)   # root:crushcell 0640, as install_config left it
os.chmod(tmp, st.st_mode & 0o7777)
os.replace(tmp, path)
print(f"install.sh: set [mqtt] {', '.join(values)} in {path} for the local broker")
PY
}

lock() {
    mkdir -p "$prefix"
    exec 9>"$prefix/.install.lock"
    flock -n 9 || die "another install.sh is running ($prefix/.install.lock)"
}

# ---- the three modes ----------------------------------------------------------------------
do_install() {
    local src="$1"
    ver="$(detect_version "$src")"
    valid_version "$ver" || die "bad version '$ver' (letters, digits, . _ + - only)"
    local old=""
    old="$(current_version || true)"
    if [ -n "$old" ] && [ "$old" != "$ver" ]; then
        die "version $old is installed; use --upgrade to move to $ver"
    fi
    lock
    ensure_user
    build_version "$src" reuse
    install_config
    enable_i2c
    [ "$with_mosquitto" -eq 0 ] || install_mosquitto
    # Checked before the service is started: a config the controller rejects never runs.
    check_config_with "$ver" \
        || die "crushcell $ver rejects $config_file; fix it and run install.sh again"
    install_unit_of "$ver"
    [ "$(current_version || true)" = "$ver" ] || changed=1
    set_link current "$ver"
    systemctl_ enable "$SERVICE"
    if [ "$i2c_changed" -eq 1 ]; then
        say "I2C was just enabled: reboot the board; crushcell starts at boot"
    elif [ "$no_start" -eq 1 ]; then
        say "not starting (--no-start): systemctl start $SERVICE"
    elif [ "$changed" -eq 0 ] && can_query_systemd && [ "$(show_prop ActiveState)" = active ]; then
        # A re-run that changed nothing must not restart a controller that supervises a
        # running cell: a restart goes through BOOT and stops the crusher.
        say "nothing changed and $SERVICE is running: not restarting it"
    else
        restart_and_wait || { say "see: journalctl -u crushcell -n 100"; exit 4; }
    fi
    say "crushcell $ver installed"
}

# A version built by this run and then refused is removed, so that a retry with a fixed build
# of the same version starts clean. One that was already there is left alone.
remove_if_created() {
    if [ "$created" -eq 1 ]; then
        rm -rf "${prefix:?}/$ver"
        echo "install.sh: removed $prefix/$ver" >&2
    fi
}

do_upgrade() {
    local src="$1" old
    old="$(current_version)" || die "no installed version in $prefix/current; install first (without --upgrade)"
    ver="$(detect_version "$src")"
    valid_version "$ver" || die "bad version '$ver' (letters, digits, . _ + - only)"
    if [ "$ver" = "$old" ]; then
        say "version $ver is already current; nothing to do (give a new build a new version)"
        return 0
    fi
    lock
    build_version "$src" fresh
    if ! check_config_with "$ver"; then
        remove_if_created
        echo "install.sh: error: crushcell $ver rejects $config_file (check-config failed above)." >&2
        echo "install.sh: nothing changed: $old is still current and running." >&2
        exit 1
    fi
    say "switching from $old to $ver"
    local old_previous
    old_previous="$(readlink "$prefix/previous" 2>/dev/null || true)"
    set_link previous "$old"
    install_unit_of "$ver"
    set_link current "$ver"
    if restart_and_wait; then
        say "crushcell upgraded from $old to $ver ($old kept for: install.sh --upgrade $prefix/$old)"
        return 0
    fi
    # Rollback: the old version and its unit come back, and must become healthy again.
    echo "install.sh: error: crushcell $ver did not become healthy; rolling back to $old" >&2
    install_unit_of "$old"
    set_link current "$old"
    # previous goes back to what it was, so the version before $old is not lost.
    if [ -n "$old_previous" ]; then
        set_link previous "$old_previous"
    else
        rm -f "$prefix/previous"
    fi
    if restart_and_wait; then
        remove_if_created
        echo "install.sh: rolled back: $old is running again. See: journalctl -u crushcell" >&2
        exit 3
    fi
    echo "install.sh: error: rollback to $old did not become healthy either; the cell is down." >&2
    echo "install.sh: see: journalctl -u crushcell -n 200 and systemctl status crushcell" >&2
    exit 4
}

do_uninstall() {
    systemctl_ disable --now "$SERVICE" || say "warning: could not stop $SERVICE"
    if [ -e "$unit_file" ]; then
        rm -f "$unit_file"
        systemctl_ daemon-reload
    fi
    rm -rf "${prefix:?}"
    say "removed the service and $prefix"
    if [ "$purge" -eq 0 ]; then
        say "kept $etc_dir, $state_dir, $logs_dir and the $SERVICE_USER user (--purge removes them)"
        return 0
    fi
    if [ -f "$mosquitto_manifest" ]; then
        local f
        # Files first, then the directories this script created (when they are empty).
        while IFS= read -r f; do
            [ -z "$f" ] || [ -d "$root$f" ] || rm -f "$root$f"
        done < "$mosquitto_manifest"
        while IFS= read -r f; do
            [ -z "$f" ] || [ ! -d "$root$f" ] || rmdir "$root$f" 2>/dev/null \
                || say "kept $root$f: it holds files install.sh did not put there"
        done < "$mosquitto_manifest"
        say "removed the Mosquitto files install.sh had installed; restarting mosquitto without them"
        systemctl_ try-restart mosquitto.service || say "warning: mosquitto did not restart: journalctl -u mosquitto"
    fi
    rm -rf "$etc_dir" "$state_dir" "$logs_dir"
    if [ -n "$root" ] || id "$SERVICE_USER" >/dev/null 2>&1; then
        host userdel CRUSHCELL_USERDEL "$SERVICE_USER"
    fi
    say "purged config, state, logs and the $SERVICE_USER user"
}

if [ -z "$root" ] && [ "$(id -u)" -ne 0 ]; then
    die "run as root (sudo), or use --root DIR for a test tree"
fi
[ -f "$script_dir/$SERVICE" ] || die "$script_dir/$SERVICE missing; run install.sh from the deploy/ directory"
if [ "$mode" != uninstall ]; then
    [ -e "$source_arg" ] || die "SOURCE $source_arg does not exist"
    source_arg="$(cd "$(dirname "$source_arg")" && pwd)/$(basename "$source_arg")"
fi

ver=""
changed=0
created=0
case "$mode" in
    install) do_install "$source_arg" ;;
    upgrade) do_upgrade "$source_arg" ;;
    uninstall) do_uninstall ;;
esac
