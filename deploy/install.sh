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
#   CRUSHCELL_USERDEL, CRUSHCELL_RASPI_CONFIG, CRUSHCELL_PYTHON (python3 for the venv)
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
  --with-mosquitto     also install the sample Mosquitto broker config from deploy/mosquitto/
  --ready-timeout SEC  how long the service may take to become active/running (default 60)
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
# controller sends after its first healthy scan. Then it must stay up for --settle seconds
# without a restart (a version that crashes right after READY is not healthy).
wait_healthy() {
    local deadline=$((SECONDS + ready_timeout)) active sub restarts pid
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
            say "$SERVICE not ready after ${ready_timeout}s (ActiveState=$active, SubState=$sub)"
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

# Restart and wait until healthy. The restart blocks until READY=1 or failure (Type=notify),
# bounded by --ready-timeout; then wait_healthy checks what systemd reports.
restart_and_wait() {
    local rc=0
    if ! can_query_systemd; then
        systemctl_ restart "$SERVICE"
        say "not waiting for the service under --root"
        return 0
    fi
    timeout "$((ready_timeout + 5))" "${CRUSHCELL_SYSTEMCTL:-systemctl}" restart "$SERVICE" || rc=$?
    [ "$rc" -eq 0 ] || say "systemctl restart $SERVICE returned $rc"
    wait_healthy
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

# Enable I2C. Prints "reboot" when a reboot is needed before the controller can read sensors.
i2c_changed=0
enable_i2c() {
    local cfg line
    if [ -n "${CRUSHCELL_RASPI_CONFIG:-}" ] || { [ -z "$root" ] && command -v raspi-config >/dev/null; }; then
        # do_i2c 0 means "enable" in raspi-config's nonint convention. get_i2c prints 0 when on.
        if [ "$(host raspi-config CRUSHCELL_RASPI_CONFIG nonint get_i2c 2>/dev/null)" != 0 ]; then
            host raspi-config CRUSHCELL_RASPI_CONFIG nonint do_i2c 0
            i2c_changed=1
        fi
        return 0
    fi
    cfg="$root/boot/firmware/config.txt"
    [ -f "$cfg" ] || cfg="$root/boot/config.txt"
    if [ ! -f "$cfg" ]; then
        say "warning: no raspi-config and no /boot/firmware/config.txt: enable I2C on this board by hand"
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
        printf '\n# crushcell: I2C for the sensors\ndtparam=i2c_arm=on\n' >> "$cfg"
        i2c_changed=1
    fi
    mkdir -p "$root/etc/modules-load.d"
    if [ ! -f "$root/etc/modules-load.d/crushcell-i2c.conf" ]; then
        echo i2c-dev > "$root/etc/modules-load.d/crushcell-i2c.conf"
        i2c_changed=1
    fi
}

install_config() {
    local src="$config_src"
    mkdir -p "$etc_dir" "$state_dir" "$logs_dir"
    chmod 0750 "$etc_dir" "$state_dir" "$logs_dir"
    chown_ "root:$SERVICE_USER" "$etc_dir"
    chown_ "$SERVICE_USER:$SERVICE_USER" "$state_dir" "$logs_dir"
    if [ -e "$config_file" ]; then
        say "keeping the existing $config_file"
        return 0
    fi
    if [ -z "$src" ]; then
        if [ -d "$source_arg" ] && [ -f "$source_arg/config/cell.toml" ]; then
            src="$source_arg/config/cell.toml"
        else
            src="$script_dir/../config/cell.toml"
        fi
    fi
    [ -f "$src" ] || die "no config to install: $src not found; pass --config FILE"
    # May hold plant-link credentials: readable by the service group only.
    install -m 0640 "$src" "$config_file"
    chown_ "root:$SERVICE_USER" "$config_file"
    say "installed $src as $config_file"
}

mosquitto_manifest="$etc_dir/mosquitto-files"
install_mosquitto() {
    local src_dir="$script_dir/mosquitto" f dest
    if [ ! -d "$src_dir" ]; then
        say "skipping Mosquitto: $src_dir not found"
        return 0
    fi
    if [ -z "$root" ] && ! command -v mosquitto >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y mosquitto
    fi
    # *.conf go to conf.d (Debian's mosquitto.conf includes it); other files (ACL, ...) to
    # /etc/mosquitto/crushcell/. Existing files are never overwritten.
    for f in "$src_dir"/*; do
        [ -f "$f" ] || continue
        case "$f" in
            *.conf) dest="$root/etc/mosquitto/conf.d/$(basename "$f")" ;;
            *) dest="$root/etc/mosquitto/crushcell/$(basename "$f")" ;;
        esac
        if [ -e "$dest" ]; then
            say "keeping the existing $dest"
            continue
        fi
        mkdir -p "$(dirname "$dest")"
        install -m 0644 "$f" "$dest"
        echo "${dest#"$root"}" >> "$mosquitto_manifest"
        say "installed $dest"
    done
    systemctl_ enable mosquitto.service
    systemctl_ restart mosquitto.service
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
    enable_i2c
    build_version "$src" reuse
    install_config
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
        while IFS= read -r f; do
            [ -n "$f" ] && rm -f "$root$f"
        done < "$mosquitto_manifest"
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
