#!/usr/bin/env bash
# Check the deploy story under a real systemd, without a board: boot Debian bookworm (systemd 252
# as PID 1, as on Raspberry Pi OS 12) in a systemd-nspawn container, install crushcell into it
# with deploy/install.sh from this checkout (a wheel built from it), on the simulated cell
# selected by the config ([hal] backend = "sim"), and check what only a real service manager
# shows:
#   a  READY=1 only after the self-test (state left BOOT); StatusText gives state and causes
#   b  the watchdog kills and restarts a stopped (SIGSTOP) controller
#   c  kill -9 restarts it, and a latched trip comes back latched with the same cause
#   d  a trip is visible with journalctl -p warning
#   s  a stray SIGTERM (a kill, not systemctl stop) and a SIGHUP restart it
#   e  systemd-analyze security exposure of the unit (at most 2.0)
#   f  install.sh --upgrade to a good version, then rollbacks from (i) a version whose
#      check-config fails, (ii) one that never sends READY=1, (iii) one that exits at start;
#      the previous version runs again, current and previous as before
#   g  install.sh --uninstall --purge leaves nothing
#   h  install.sh --with-mosquitto: the broker starts with the shipped files and the controller
#      connects to it (retained status)
#   (and "hal": the unit runs the simulated cell from the config alone, without a drop-in)
# Every check prints PASS or FAIL with its measured figures; the exit status is 1 when any
# check failed, 2 on bad arguments, 3 when the container could not be set up, 77 when this
# machine cannot run systemd-nspawn at all (not root, no namespaces, no container starts).
#
# Needs root, systemd-nspawn and debootstrap (apt-get install systemd-container debootstrap;
# installed here when missing), and the network: the Debian mirror of this machine's apt
# sources, PyPI for pip. The Debian root is built once (about a minute) and cached under
# --cache, keyed by a hash of what goes into it; every run boots a fresh copy of it.
set -Eeuo pipefail
trap 'echo "check-systemd: error: line $LINENO: $BASH_COMMAND exited $?" >&2' ERR

usage() {
    cat <<'EOF'
usage: deploy/check-systemd.sh [options]

  --cache DIR     where the built Debian root is cached
                  (default /var/cache/crushcell-check-systemd)
  --mirror URL    Debian mirror (default: the one in this machine's apt sources)
  --rebuild       build the cached root again
  --keep          keep this run's copy of the root and the console log (path printed)
  -h, --help      this text
EOF
}

die() { echo "check-systemd: error: $*" >&2; exit 3; }
log() { echo "check-systemd: $*"; }
skip() { echo "check-systemd: SKIP: $*" >&2; exit 77; }

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache=/var/cache/crushcell-check-systemd
mirror=""
rebuild=0
keep=0
readonly suite=bookworm
readonly service=crushcell.service

while [ $# -gt 0 ]; do
    case "$1" in
        --cache) [ $# -ge 2 ] || { usage >&2; exit 2; }; cache="$2"; shift 2 ;;
        --mirror) [ $# -ge 2 ] || { usage >&2; exit 2; }; mirror="$2"; shift 2 ;;
        --rebuild) rebuild=1; shift ;;
        --keep) keep=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "check-systemd: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
case "$cache" in /?*) ;; *) echo "check-systemd: --cache wants an absolute path" >&2; exit 2 ;; esac

started=$SECONDS

# ---- can this machine run a container at all? ----------------------------------------------
[ "$(id -u)" -eq 0 ] || skip "needs root (systemd-nspawn, debootstrap); run with sudo"
unshare --pid --mount --uts --ipc --fork true 2>/dev/null \
    || skip "this machine cannot create PID/mount namespaces, so systemd-nspawn cannot run here"
if ! command -v systemd-nspawn >/dev/null || ! command -v debootstrap >/dev/null; then
    command -v apt-get >/dev/null || die "systemd-nspawn or debootstrap missing and no apt-get"
    log "installing systemd-container and debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q systemd-container debootstrap >/dev/null \
        || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive \
                 apt-get install -y -q systemd-container debootstrap >/dev/null; } \
        || die "cannot install systemd-container debootstrap"
fi
for tool in systemd-nspawn debootstrap script nsenter python3 sha256sum; do
    command -v "$tool" >/dev/null || die "$tool not found"
done

# The mirror comes from this machine's apt sources (deb822 .sources or a one-line list): the
# stanza or line that serves $suite itself (not -security, -updates).
mirror_from_apt() {
    python3 - "$suite" <<'PY'
import glob, re, sys
suite = sys.argv[1]
for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    for stanza in re.split(r"\n\s*\n", open(path, encoding="utf-8", errors="replace").read()):
        fields = {}
        for line in stanza.splitlines():
            m = re.match(r"^([A-Za-z-]+):\s*(.*)$", line)
            if m:
                fields[m.group(1).lower()] = m.group(2).split()
        if fields.get("enabled", ["yes"])[0] == "no" or "deb" not in fields.get("types", []):
            continue
        if suite in fields.get("suites", []) and fields.get("uris"):
            print(fields["uris"][0])
            sys.exit(0)
for path in ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list")):
    try:
        lines = open(path, encoding="utf-8", errors="replace").read().splitlines()
    except OSError:
        continue
    for line in lines:
        words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
        if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
            print(words[1])
            sys.exit(0)
sys.exit(1)
PY
}
if [ -z "$mirror" ]; then
    mirror="$(mirror_from_apt)" || die "no Debian mirror for '$suite' in this machine's apt sources; pass --mirror URL"
fi

# ---- the cached Debian root ------------------------------------------------------------------
# Everything that changes the root goes into the key: the suite, the mirror, the package list
# and this recipe's version. Bump recipe when build_root changes.
readonly recipe=1
readonly packages=systemd,systemd-sysv,dbus,python3,python3-venv,procps,ca-certificates,openssl
key="$(printf '%s\n' "$recipe" "$suite" "$mirror" "$packages" | sha256sum | cut -c1-16)"
cached_root="$cache/root-$key"

build_root() {
    local tmp="$cached_root.building"
    log "building the $suite root from $mirror (cached afterwards in $cached_root)"
    rm -rf --one-file-system "$tmp"
    mkdir -p "$cache"
    debootstrap --variant=minbase --include="$packages" "$suite" "$tmp" "$mirror" >"$cache/debootstrap.log" 2>&1 \
        || { tail -n 20 "$cache/debootstrap.log" >&2; die "debootstrap failed (log: $cache/debootstrap.log)"; }
    # Package lists, so that install.sh --with-mosquitto can apt-get install mosquitto inside.
    SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 systemd-nspawn -q -D "$tmp" --register=no --keep-unit \
        apt-get update -q >>"$cache/debootstrap.log" 2>&1 || die "apt-get update failed in the new root"
    touch "$tmp/.check-systemd-root"
    mv -T "$tmp" "$cached_root"
    # Older roots (another key) are of no further use.
    local old
    for old in "$cache"/root-*; do
        [ "$old" = "$cached_root" ] || [ ! -d "$old" ] || rm -rf --one-file-system "$old"
    done
}

# One builder at a time: another run may be building or copying the root (lock released once
# this run has its copy).
mkdir -p "$cache"
exec 8>"$cache/.lock"
flock 8
if [ "$rebuild" -eq 1 ] && [ -d "$cached_root" ]; then
    rm -rf --one-file-system "$cached_root"
fi
t=$SECONDS
if [ -f "$cached_root/.check-systemd-root" ]; then
    log "using the cached root $cached_root"
else
    build_root
    log "root built in $((SECONDS - t)) s"
fi

# ---- this run's copy, the wheel, the config ----------------------------------------------------
work="$(mktemp -d /var/tmp/crushcell-check-systemd.XXXXXX)"
ct_root="$work/root"
machine="crushcell-check-$$"
script_pid=""
nspawn_pid=""
ct_pid=""

cleanup() {
    local rc=$?
    if [ -n "$script_pid" ] && kill -0 "$script_pid" 2>/dev/null; then
        shutdown_container || true
    fi
    rmdir "/run/systemd/nspawn/propagate/$machine" 2>/dev/null || true
    if [ "$keep" -eq 1 ]; then
        log "kept $work (root, console.log, logs)"
    elif [ -d "$work" ]; then
        # Nothing is mounted in it once the container is gone; stay on this file system anyway.
        rm -rf --one-file-system "$work"
    fi
    exit "$rc"
}
trap cleanup EXIT

t=$SECONDS
cp -a --reflink=auto "$cached_root" "$ct_root"
exec 8>&-   # the cache lock: this run has its copy
log "copied the root in $((SECONDS - t)) s"
# pip inside reaches PyPI through whatever this machine trusts.
cp /etc/ssl/certs/ca-certificates.crt "$ct_root/etc/ssl/certs/ca-certificates.crt"
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\ndisable-pip-version-check = true\n' \
    > "$ct_root/etc/pip.conf"

src="$ct_root/root/src"
mkdir -p "$src/dist" "$work/build"
# The wheel is built from a copy of the sources, so the checkout gets no build/ or egg-info.
cp -a "$repo/pyproject.toml" "$repo/README.md" "$repo/controller" "$repo/hal" "$repo/cellspec" "$work/build/"
find "$work/build" -name __pycache__ -prune -exec rm -rf {} +
python3 -m pip wheel --no-deps --quiet -w "$src/dist" "$work/build" >"$work/wheel.log" 2>&1 \
    || { cat "$work/wheel.log" >&2; die "could not build the wheel"; }
wheel="$(cd "$src/dist" && ls crushcell-*.whl)"
version="${wheel#crushcell-}"
version="${version%%-*}"
cp -a "$repo/deploy" "$src/deploy"
log "built $wheel"

# The board has no hardware here: the simulated cell, chosen by the config (no drop-in).
self_test_s="$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["timers"]["self_test_s"])' \
    "$repo/config/cell.toml")"
# The shipped config with [hal] backend = "sim" (the table is added when the config has none).
python3 - "$repo/config/cell.toml" "$src/cell-sim.toml" <<'PY'
import re, sys, tomllib
text = open(sys.argv[1], encoding="utf-8").read()
if "hal" in tomllib.loads(text):
    m = re.search(r"(?m)^\[hal\][^\n]*\n", text)
    end = re.compile(r"(?m)^\[").search(text, m.end())
    end = end.start() if end else len(text)
    body, n = re.subn(r'(?m)^backend\s*=.*$', 'backend = "sim"   # check-systemd: no board here',
                      text[m.end():end])
    if n != 1:
        sys.exit("cannot find backend = in [hal] of " + sys.argv[1])
    text = text[:m.end()] + body + text[end:]
else:
    text += '\n# check-systemd: no board here, the simulated cell.\n[hal]\nbackend = "sim"\n'
assert tomllib.loads(text)["hal"]["backend"] == "sim"
open(sys.argv[2], "w", encoding="utf-8").write(text)
PY
hal_key=1
if ! PYTHONPATH="$repo" python3 -c 'import sys; from controller.cli import main; sys.exit(main(sys.argv[1:]))' \
        check-config "$src/cell-sim.toml" >"$work/hal-check.log" 2>&1; then
    hal_key=0
    cp "$repo/config/cell.toml" "$src/cell-sim.toml"
fi
# Check c plays this against the simulated cell: E-stop pressed in IDLE, and held.
cat > "$src/trip.toml" <<'EOF'
name = "check-systemd: E-stop held"
description = "The E-stop is pressed in IDLE and stays pressed: TRIPPED, cause estop."
duration_s = 100000
seed = 1

[[at]]
t = 4
event = "estop"
EOF

# ---- the container ---------------------------------------------------------------------------
in_ct() {
    nsenter -t "$ct_pid" -a env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"
}

boot_container() {
    local cmd p state=""
    printf -v cmd 'systemd-nspawn -q -D %q -M %q --register=no --keep-unit -b --console=read-only' \
        "$ct_root" "$machine"
    SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 script -qfec "$cmd" "$work/console.log" >/dev/null 2>&1 </dev/null &
    script_pid=$!
    for _ in $(seq 100); do
        for p in $(pgrep -x systemd-nspawn || true); do
            if tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | grep -qF -- " -M $machine "; then
                nspawn_pid=$p
            fi
        done
        # The container's PID 1 is the nspawn child that runs systemd; an earlier child can be
        # nspawn's own short-lived helper, and nsenter into it fails once it has gone.
        [ -z "$nspawn_pid" ] || ct_pid="$(pgrep -P "$nspawn_pid" -x systemd | head -n 1 || true)"
        [ -z "$ct_pid" ] || break
        kill -0 "$script_pid" 2>/dev/null || break
        sleep 0.1
    done
    if [ -z "$ct_pid" ]; then
        tail -n 20 "$work/console.log" >&2 || true
        skip "systemd-nspawn could not start a container on this machine (its output is above)"
    fi
    for _ in $(seq 300); do
        state="$(in_ct systemctl is-system-running 2>/dev/null || true)"
        case "$state" in running|degraded) break ;; esac
        sleep 0.2
    done
    case "$state" in
        running) ;;
        degraded) log "container is degraded: $(in_ct systemctl --failed --no-legend --plain | awk '{print $1}' | xargs)" ;;
        *) tail -n 20 "$work/console.log" >&2 || true; die "systemd in the container is '$state', not running" ;;
    esac
}

shutdown_container() {
    in_ct systemctl poweroff >/dev/null 2>&1 || true
    for _ in $(seq 150); do
        kill -0 "$script_pid" 2>/dev/null || break
        sleep 0.2
    done
    if kill -0 "$script_pid" 2>/dev/null; then
        log "the container did not power off; stopping systemd-nspawn"
        [ -z "$nspawn_pid" ] || kill "$nspawn_pid" 2>/dev/null || true
        sleep 2
        [ -z "$nspawn_pid" ] || kill -9 "$nspawn_pid" 2>/dev/null || true
    fi
    wait "$script_pid" 2>/dev/null || true
    script_pid=""
}

t=$SECONDS
boot_container
log "container booted in $((SECONDS - t)) s: $(in_ct systemctl --version | head -n 1), $(in_ct python3 --version)"

# ---- helpers for the checks -------------------------------------------------------------------
failures=0
summary=()
result() {  # result NAME PASS|FAIL TEXT
    local line
    line="$(printf '%-4s %-3s %s' "$2" "$1" "$3")"
    echo "$line"
    summary+=("$line")
    [ "$2" = PASS ] || failures=$((failures + 1))
}

# props NAME...: "NAME=value" lines of the service
props() {
    local args=() p
    for p in "$@"; do args+=(-p "$p"); done
    in_ct systemctl show "${args[@]}" "$service"
}
prop() { in_ct systemctl show -p "$1" --value "$service"; }

# The kernel's CLOCK_MONOTONIC in microseconds: the clock of systemd's *TimestampMonotonic and
# the journal's __MONOTONIC_TIMESTAMP (the container shares the host's kernel clock).
mono_us() { python3 -c 'import time; print(time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)'; }
# secs A_us B_us: (B - A) in seconds, 2 decimals
secs() { python3 -c 'import sys; print(f"{(int(sys.argv[2]) - int(sys.argv[1])) / 1e6:.2f}")' "$1" "$2"; }
# le X Y: X <= Y for decimal numbers
le() { python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) <= float(sys.argv[2]) else 1)' "$1" "$2"; }

# Signal the service's main process from inside; print the monotonic time just before the kill.
signal_main() {  # signal_main SIGNAL PID
    in_ct python3 -c 'import os, signal, sys, time
t = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
os.kill(int(sys.argv[2]), getattr(signal, sys.argv[1]))
print(t)' "$1" "$2"
}

# Wait until the main PID differs from $1 and the service is active/running (READY=1 again).
# Prints the new main PID; fails after $2 seconds.
wait_new_ready() {
    local old="$1" limit="$2" end out pid
    end=$((SECONDS + limit))
    while [ "$SECONDS" -lt "$end" ]; do
        out="$(props MainPID ActiveState SubState)"
        pid="$(sed -n 's/^MainPID=//p' <<<"$out")"
        if [ "$pid" != 0 ] && [ "$pid" != "$old" ] && grep -qx ActiveState=active <<<"$out" \
            && grep -qx SubState=running <<<"$out"; then
            echo "$pid"
            return 0
        fi
        sleep 0.1
    done
    return 1
}

# journal_json ARGS...: journalctl -o json of the container, for the python helpers below.
journal_json() { in_ct journalctl -q --no-pager -o json "$@"; }

# first_mono PATTERN [AFTER_US]: the monotonic time (us) of the first journal entry on stdin
# (at or after AFTER_US) whose message contains PATTERN; empty when none. first_message: its text.
first_entry() {
    python3 -c '
import json, sys
pattern, after, field = sys.argv[1], int(sys.argv[2]), sys.argv[3]
for line in sys.stdin:
    entry = json.loads(line)
    message = entry.get("MESSAGE")
    if isinstance(message, list):
        message = bytes(message).decode("utf-8", "replace")
    if message and pattern in message and int(entry["__MONOTONIC_TIMESTAMP"]) >= after:
        print(entry["__MONOTONIC_TIMESTAMP"] if field == "mono" else message)
        break
' "$1" "${2:-0}" "$3"
}
first_mono() { first_entry "$1" "${2:-0}" mono; }
first_message() { first_entry "$1" "${2:-0}" message; }

# state_status: wait (up to $1 s) for StatusText to start with $2; print the last StatusText.
wait_status() {
    local limit="$1" want="$2" text="" end
    end=$((SECONDS + limit))
    while :; do
        text="$(prop StatusText)"
        case "$text" in "$want"*) break ;; esac
        [ "$SECONDS" -lt "$end" ] || break
        sleep 0.2
    done
    echo "$text"
}

healthy_for() {  # healthy_for SECONDS: active/running with the same main PID for that long
    local pid
    pid="$(prop MainPID)"
    sleep "$1"
    [ "$(prop ActiveState)/$(prop SubState)" = active/running ] && [ "$(prop MainPID)" = "$pid" ] && [ "$pid" != 0 ]
}

install_log="$work/install.log"
# run_install ARGS...: install.sh inside, its output in $install_log with each line prefixed by
# the seconds since the start; returns its exit status.
run_install() {
    local rc t0=${EPOCHREALTIME/./} us
    { in_ct bash /root/src/deploy/install.sh "$@" 2>&1 || echo "exit=$?"; } | while IFS= read -r line; do
        us=$(( ${EPOCHREALTIME/./} - t0 ))
        printf '%3d.%02d %s\n' $((us / 1000000)) $((us % 1000000 / 10000)) "$line"
    done >"$install_log"
    rc="$(sed -n 's/^ *[0-9.]* exit=\([0-9]*\)$/\1/p' "$install_log" | tail -n 1)"
    return "${rc:-0}"
}
# log_time TEXT: the seconds (from the start of the last run_install) of the first line with TEXT
log_time() { { grep -F -- "$1" "$install_log" || true; } | head -n 1 | awk '{print $1}'; }
show_log() { sed 's/^/    | /' "$install_log" | tail -n "${1:-15}"; }

watchdog_s="$(awk -F= '$1 == "WatchdogSec" {sub(/s$/, "", $2); print $2}' "$repo/deploy/crushcell.service")"
restart_s="$(awk -F= '$1 == "RestartSec" {sub(/s$/, "", $2); print $2}' "$repo/deploy/crushcell.service")"
start_timeout_s="$(awk -F= '$1 == "TimeoutStartSec" {sub(/s$/, "", $2); print $2}' "$repo/deploy/crushcell.service")"

# ---- install ---------------------------------------------------------------------------------
log "installing $wheel with deploy/install.sh (simulated cell, no extras)"
t=$SECONDS
if ! run_install --config /root/src/cell-sim.toml --extras "" "/root/src/dist/$wheel"; then
    show_log 40
    in_ct journalctl -q --no-pager -u crushcell -n 30 -o cat | sed 's/^/    journal| /' || true
    die "install.sh failed; nothing else can be checked"
fi
log "installed in $((SECONDS - t)) s"
if [ "$hal_key" -eq 1 ]; then
    result hal PASS "the simulated cell runs from [hal] backend = \"sim\" in the config, no drop-in; ExecStart: $(prop ExecStart | grep -o 'argv\[\]=[^;]*' | sed 's/^argv\[\]=//; s/ *$//')"
else
    result hal FAIL "this crushcell rejects [hal] backend = \"sim\" ($(head -n 1 "$work/hal-check.log")); installed without it (crushcell run's default backend)"
fi

# ---- a: READY=1 after the self-test -----------------------------------------------------------
check_ready() {
    local out start_us ready_us inv boot_exit_us after lag
    out="$(props ExecMainStartTimestampMonotonic ActiveEnterTimestampMonotonic InvocationID)"
    start_us="$(sed -n 's/^ExecMainStartTimestampMonotonic=//p' <<<"$out")"
    ready_us="$(sed -n 's/^ActiveEnterTimestampMonotonic=//p' <<<"$out")"
    inv="$(sed -n 's/^InvocationID=//p' <<<"$out")"
    boot_exit_us="$(journal_json "_SYSTEMD_INVOCATION_ID=$inv" | first_mono '"from":"BOOT"')"
    after="$(secs "$start_us" "$ready_us")"
    if [ -z "$boot_exit_us" ]; then
        result a FAIL "READY=1 ${after} s after the main process started; no BOOT exit in its journal"
        return
    fi
    lag="$(secs "$boot_exit_us" "$ready_us")"
    # READY may be handled before the pump thread writes the state line: 0.5 s allowance.
    if le "$self_test_s" "$after" && le -0.5 "$lag"; then
        result a PASS "READY=1 ${after} s after the main process started (self_test_s = $self_test_s), ${lag} s after the BOOT exit line"
    else
        result a FAIL "READY=1 ${after} s after the main process started (self_test_s = $self_test_s), ${lag} s after the BOOT exit line: READY came before the self-test concluded"
    fi
}
check_ready
status_idle="$(wait_status 3 IDLE)"
# ---- e: the unit's exposure ----------------------------------------------------------------------
exposure="$(in_ct systemd-analyze security "$service" 2>/dev/null | sed -n 's/.*Overall exposure level for [^:]*: //p')"
score="${exposure%% *}"
if [ -n "$score" ] && le "$score" 2.0; then
    result e PASS "systemd-analyze security $service: exposure $exposure (limit 2.0)"
else
    result e FAIL "systemd-analyze security $service: exposure ${exposure:-not reported} (limit 2.0)"
fi

# ---- b: the watchdog --------------------------------------------------------------------------
in_ct systemctl reset-failed "$service" 2>/dev/null || true
pid="$(prop MainPID)"
t0="$(signal_main SIGSTOP "$pid")"
if wait_new_ready "$pid" 30 >/dev/null; then
    out="$(journal_json -u crushcell --since=-60s)"
    wd_us="$(first_mono 'Watchdog timeout' "$t0" <<<"$out")"
    gone_us="$(first_mono 'Main process exited' "$t0" <<<"$out")"
    dump="no"
    [ -z "$(first_mono 'Fatal Python error: Aborted' "$t0" <<<"$out")" ] || dump="yes"
    start_us="$(prop ExecMainStartTimestampMonotonic)"
    ready_us="$(prop ActiveEnterTimestampMonotonic)"
    limit="$(python3 -c "print($watchdog_s + $restart_s)")"
    took="$(secs "$t0" "$start_us")"
    over="$(python3 -c "print(f'{$took - $limit:+.2f}')")"
    # Allowed over WatchdogSec + RestartSec: the stopped process must handle SIGABRT (stack dump)
    # and the restart runs ExecStartPre (check-config, a Python start) before the main process.
    detail="SIGSTOP -> 'Watchdog timeout' $(secs "$t0" "${wd_us:-$t0}") s (WatchdogSec $watchdog_s s), -> process gone $(secs "$t0" "${gone_us:-$t0}") s, -> new main process $took s (WatchdogSec + RestartSec = $limit s, measured ${over} s, tolerance +1.0 s), -> READY=1 $(secs "$t0" "$ready_us") s; faulthandler's stack dump in the journal: $dump"
    if [ -n "$wd_us" ] && le "$(secs "$t0" "$wd_us")" "$(python3 -c "print($watchdog_s + 0.25)")" && le "$over" 1.0 \
        && [ "$dump" = yes ]; then
        result b PASS "$detail"
    else
        result b FAIL "$detail"
    fi
else
    result b FAIL "no restart within 30 s of SIGSTOP (ActiveState=$(prop ActiveState), SubState=$(prop SubState))"
    in_ct kill -CONT "$pid" 2>/dev/null || true
fi

# ---- c: kill -9 keeps the latch -----------------------------------------------------------------
dropin_dir="$ct_root/etc/systemd/system/crushcell.service.d"
install -m 0640 "$src/trip.toml" "$ct_root/etc/crushcell/check-trip.toml"
in_ct chown root:crushcell /etc/crushcell/check-trip.toml
mkdir -p "$dropin_dir"
# Only to trip the simulated cell: a scenario on the command line (the sim itself needs no drop-in).
cat > "$dropin_dir/check-trip.conf" <<'EOF'
[Service]
ExecStart=
ExecStart=/opt/crushcell/current/bin/crushcell run --config /etc/crushcell/cell.toml --state-dir /var/lib/crushcell --hal sim --scenario /etc/crushcell/check-trip.toml --duration 100000
EOF
in_ct systemctl daemon-reload
in_ct systemctl reset-failed "$service" 2>/dev/null || true
in_ct systemctl restart "$service" || true
latch="$ct_root/var/lib/crushcell/latch.json"
latch_causes() { python3 -c 'import json, sys; print(",".join(json.load(open(sys.argv[1]))["causes"]))' "$latch" 2>/dev/null || true; }
has_estop() { case ",$(latch_causes)," in *,estop,*) return 0 ;; esac; return 1; }
for _ in $(seq 150); do
    ! has_estop || break
    sleep 0.1
done
status_tripped_before="$(wait_status 3 TRIPPED)"
rm -f "$dropin_dir/check-trip.conf"
rmdir "$dropin_dir" 2>/dev/null || true
in_ct systemctl daemon-reload
if ! has_estop; then
    result c FAIL "the scenario did not trip the cell with cause estop (latch.json: '$(latch_causes)')"
else
    causes_before="$(latch_causes)"
    pid="$(prop MainPID)"
    t0="$(signal_main SIGKILL "$pid")"
    if wait_new_ready "$pid" 30 >/dev/null; then
        inv="$(prop InvocationID)"
        # The BOOT -> TRIPPED event goes to stdout through the event pump beside the scan loop,
        # so it can reach the journal a little after READY=1: look for up to 5 s.
        for _ in $(seq 25); do
            out="$(journal_json "_SYSTEMD_INVOCATION_ID=$inv")"
            restored="$(first_mono "\"restored\":[\"${causes_before//,/\",\"}\"]" <<<"$out")"
            back="$(first_mono '"from":"BOOT","to":"TRIPPED"' <<<"$out")"
            [ -z "$restored" ] || [ -z "$back" ] || break
            sleep 0.2
        done
        status_tripped="$(wait_status 3 TRIPPED)"
        audit="$(in_ct /opt/crushcell/current/bin/crushcell journal --state-dir /var/lib/crushcell --since 10m \
            | grep -c '"to":"TRIPPED"' || true)"
        detail="kill -9 -> new main process $(secs "$t0" "$(prop ExecMainStartTimestampMonotonic)") s (RestartSec $restart_s s), -> READY=1 $(secs "$t0" "$(prop ActiveEnterTimestampMonotonic)") s; latched before: '$causes_before', after the restart: latch.json '$(latch_causes)', journal restored them: $([ -n "$restored" ] && echo yes || echo no), BOOT -> TRIPPED: $([ -n "$back" ] && echo yes || echo no), crushcell journal: $audit entries into TRIPPED"
        if [ -n "$restored" ] && [ -n "$back" ] && [ "$(latch_causes)" = "$causes_before" ]; then
            result c PASS "$detail"
        else
            result c FAIL "$detail"
        fi
    else
        result c FAIL "no restart within 30 s of kill -9 (ActiveState=$(prop ActiveState), SubState=$(prop SubState))"
    fi
fi
# a, second half: the status text systemd shows, in IDLE and in TRIPPED (sent by the controller).
case "$status_idle|$status_tripped_before|${status_tripped:-}" in
    IDLE*\|TRIPPED*estop*\|TRIPPED*estop*) result a PASS "StatusText: '$status_idle' after start; '$status_tripped_before' tripped; '${status_tripped:-}' after kill -9" ;;
    *) result a FAIL "StatusText: '$status_idle' after start; '$status_tripped_before' tripped; '${status_tripped:-}' after kill -9 (want the state, and the causes when TRIPPED)" ;;
esac

# ---- d: a trip in journalctl -p warning -----------------------------------------------------------
warn_trips="$(in_ct journalctl -q --no-pager -u crushcell -p warning -o cat | grep -c '"type":"trip"' || true)"
all_trips="$(in_ct journalctl -q --no-pager -u crushcell -o cat | grep -c '"type":"trip"' || true)"
prios="$(journal_json -u crushcell | python3 -c '
import json, sys
seen = sorted({e.get("PRIORITY") for e in map(json.loads, sys.stdin) if "\"type\":\"trip\"" in str(e.get("MESSAGE"))})
print(",".join(seen))')"
if [ "$warn_trips" -gt 0 ]; then
    result d PASS "journalctl -u crushcell -p warning shows $warn_trips of $all_trips trip lines (priorities: $prios)"
else
    result d FAIL "journalctl -u crushcell -p warning shows 0 of $all_trips trip lines (stored at priority $prios; needs the <3> prefix)"
fi

# ---- s: stray signals (a kill, not systemctl stop) ------------------------------------------------
check_signal() {  # check_signal SIGNAL WHAT
    local sig="$1" what="$2" pid t0 out exited
    in_ct systemctl reset-failed "$service" 2>/dev/null || true
    pid="$(prop MainPID)"
    t0="$(signal_main "$sig" "$pid")"
    if wait_new_ready "$pid" 30 >/dev/null; then
        out="$(journal_json -u crushcell --since=-60s)"
        exited="$(first_message 'Main process exited' "$t0" <<<"$out")"
        [ -n "$exited" ] || exited="$(first_message 'Deactivated successfully' "$t0" <<<"$out")"
        exited="${exited#crushcell.service: }"
        result s PASS "$what: '$exited'; restarted: new main process $(secs "$t0" "$(prop ExecMainStartTimestampMonotonic)") s, READY=1 $(secs "$t0" "$(prop ActiveEnterTimestampMonotonic)") s after the signal"
    else
        out="$(journal_json -u crushcell --since=-60s)"
        exited="$(first_message 'Main process exited' "$t0" <<<"$out")"
        [ -n "$exited" ] || exited="$(first_message 'Deactivated successfully' "$t0" <<<"$out")"
        exited="${exited#crushcell.service: }"
        result s FAIL "$what: '${exited:-no exit seen}'; not restarted within 30 s (ActiveState=$(prop ActiveState), SubState=$(prop SubState))"
        in_ct systemctl reset-failed "$service" 2>/dev/null || true
        in_ct systemctl start "$service" || true
    fi
}
check_signal SIGTERM "kill -TERM of the main process (a stray TERM: systemd did not ask)"
check_signal SIGHUP "kill -HUP of the main process"

# ---- f: upgrades that must roll back -------------------------------------------------------------
# Each other version is a copy of the installed environment (its scripts' #! lines moved to its
# own directory) with a patched entry point: "good" only passes through, the others are broken.
make_version() {  # make_version VERSION KIND: prints the directory to upgrade to
    local ver="$1" kind="$2" dir="$ct_root/root/versions/$1" f planted=""
    rm -rf "$dir"
    mkdir -p "$ct_root/root/versions"
    cp -a "$ct_root/opt/crushcell/$version" "$dir"
    rm -f "$dir/.crushcell-complete" "$dir/crushcell.service"
    mv "$dir/bin/crushcell" "$dir/bin/crushcell.real"
    for f in "$dir"/bin/*; do
        if [ -f "$f" ] && [ ! -L "$f" ] && head -n 1 "$f" | grep -q "^#!/opt/crushcell/$version/"; then
            sed -i "1s|^#!/opt/crushcell/$version/|#!/opt/crushcell/$ver/|" "$f"
        fi
    done
    # shellcheck disable=SC2016  # shell text for the wrapper: $1, $2 expand there, not here
    case "$kind" in
        good) ;;
        check-config) planted='[ "$1" != check-config ] || { echo "$2: [thresholds.o2] trip: refused by this planted build" >&2; exit 2; }' ;;
        never-ready) planted='[ "$1" != run ] || unset NOTIFY_SOCKET' ;;
        exits) planted='[ "$1" != run ] || { echo "planted: exits at start" >&2; exit 1; }' ;;
    esac
    cat > "$dir/bin/crushcell" <<EOF
#!/bin/sh
# check-systemd: version $ver ($kind).
$planted
exec "\$(dirname "\$0")/crushcell.real" "\$@"
EOF
    chmod 0755 "$dir/bin/crushcell"
    echo "/root/versions/$ver"
}

link_of() { readlink "$ct_root/opt/crushcell/$1" 2>/dev/null || echo none; }

# A good upgrade first, so that `previous` names a version the rollbacks must keep.
good="$version+good"
t="$(mono_us)"
rc=0
run_install --upgrade --version "$good" "$(make_version "$good" good)" || rc=$?
took="$(secs "$t" "$(mono_us)")"
if [ "$rc" -eq 0 ] && [ "$(link_of current)" = "$good" ] && [ "$(link_of previous)" = "$version" ] && healthy_for 2; then
    result f PASS "install.sh --upgrade to a good version ($good): exit 0 after $took s (restart, READY=1, 5 s --settle); current -> $good, previous -> $version"
else
    result f FAIL "install.sh --upgrade to a good version ($good): exit $rc after $took s; current -> $(link_of current), previous -> $(link_of previous)"
    show_log 12
fi

check_upgrade() {  # check_upgrade LABEL KIND EXPECTED_RC
    local label="$1" kind="$2" want="$3" ver dir rc=0 t before_pid cur_before prev_before took healthy=no problems=()
    ver="$version+$kind"
    dir="$(make_version "$ver" "$kind")"
    before_pid="$(prop MainPID)"
    cur_before="$(link_of current)"
    prev_before="$(link_of previous)"
    t="$(mono_us)"
    run_install --upgrade --version "$ver" "$dir" || rc=$?
    took="$(secs "$t" "$(mono_us)")"
    if healthy_for 3; then healthy=yes; fi
    [ "$rc" = "$want" ] || problems+=("exit $rc, want $want")
    [ "$(link_of current)" = "$cur_before" ] || problems+=("current -> $(link_of current), was $cur_before")
    [ "$(link_of previous)" = "$prev_before" ] || problems+=("previous -> $(link_of previous), was $prev_before")
    [ "$healthy" = yes ] || problems+=("$service not active/running afterwards")
    [ ! -e "$ct_root/opt/crushcell/$ver" ] || problems+=("/opt/crushcell/$ver left behind")
    if [ "$kind" = check-config ] && [ "$(prop MainPID)" != "$before_pid" ]; then
        problems+=("the running controller was restarted")
    fi
    local what switch back decided=""
    switch="$(log_time 'switching from')"
    back="$(log_time 'rolling back to')"
    if [ -n "$switch" ] && [ -n "$back" ]; then
        decided="$(python3 -c "print(f'{$back - $switch:.2f}')")"
        # The deadline (--ready-timeout, default 60 s) counts from the restart.
        le "$decided" 61 || problems+=("rollback decided ${decided} s after the switch, past the 60 s --ready-timeout")
        decided=", rollback decided ${decided} s after the switch"
    fi
    what="install.sh --upgrade to a version that $label: exit $rc after $took s${decided}; current -> $(link_of current), previous -> $(link_of previous); active/running and steady for 3 s: $healthy"
    if [ "${#problems[@]}" -eq 0 ]; then
        result f PASS "$what"
    else
        result f FAIL "$what; problems: $(IFS=';'; echo "${problems[*]}")"
        show_log 12
    fi
}
check_upgrade "fails check-config" check-config 1
check_upgrade "never sends READY=1 (TimeoutStartSec ${start_timeout_s} s)" never-ready 3
check_upgrade "exits at start" exits 3

# ---- g: uninstall --purge leaves nothing ----------------------------------------------------------
check_purge() {  # check_purge LABEL
    local rc=0 left=() p
    run_install --uninstall --purge || rc=$?
    [ "$rc" -eq 0 ] || left+=("install.sh exit $rc")
    for p in /etc/systemd/system/crushcell.service /opt/crushcell /etc/crushcell /var/lib/crushcell /var/log/crushcell; do
        [ ! -e "$ct_root$p" ] && [ ! -L "$ct_root$p" ] || left+=("$p")
    done
    [ "$(prop LoadState)" = not-found ] || left+=("unit LoadState=$(prop LoadState)")
    ! in_ct getent passwd crushcell >/dev/null || left+=("user crushcell")
    ! in_ct getent group crushcell >/dev/null || left+=("group crushcell")
    ! in_ct pgrep -u crushcell >/dev/null 2>&1 || left+=("crushcell processes")
    # Anything else named after us (outside our sources in /root).
    while IFS= read -r p; do
        left+=("$p")
    done < <(in_ct find / -xdev \( -path /root -o -path /proc -o -path /sys \) -prune -o -name '*crushcell*' -print 2>/dev/null)
    if [ "${#left[@]}" -eq 0 ]; then
        result g PASS "install.sh --uninstall --purge $1: no unit, /opt/crushcell, /etc/crushcell, /var/lib/crushcell, /var/log/crushcell, user or group, and no other file named *crushcell*"
    else
        result g FAIL "install.sh --uninstall --purge $1 left: $(IFS=' '; echo "${left[*]}")"
        show_log 10
    fi
}
check_purge "(after the checks above)"

# ---- h: the sample Mosquitto broker ---------------------------------------------------------------
cat > "$ct_root/root/src/substatus.py" <<'EOF'
"""Wait for the retained status of a cell on the local broker (as a viewer); print its state."""
import json
import ssl
import sys
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

user, password, ca, topic = sys.argv[1:5]
got = threading.Event()
result = {}


def on_connect(client, _userdata, _flags, reason, _props):
    if reason.is_failure:
        result["error"] = str(reason)
        got.set()
    else:
        client.subscribe(topic, qos=1)


def on_message(_client, _userdata, msg):
    result["retained"] = msg.retain
    result["payload"] = msg.payload.decode("utf-8", "replace")
    got.set()


client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
client.username_pw_set(user, password)
client.tls_set(ca_certs=ca, cert_reqs=ssl.CERT_REQUIRED)
client.on_connect = on_connect
client.on_message = on_message
client.connect("127.0.0.1", 8883)
client.loop_start()
got.wait(10)
client.loop_stop()
if "payload" not in result:
    print("no status:", result.get("error", "nothing within 10 s"))
    sys.exit(1)
state = json.loads(result["payload"]).get("state")
print(f"retained={result['retained']} state={state}")
EOF
check_mosquitto() {
    local rc=0 t took problems=() conf_ok acl_ok sub="" viewer_pw
    t="$(mono_us)"
    run_install --with-mosquitto --config /root/src/cell-sim.toml --extras "" "/root/src/dist/$wheel" || rc=$?
    took="$(secs "$t" "$(mono_us)")"
    [ "$rc" -eq 0 ] || problems+=("install.sh exit $rc")
    [ "$(in_ct systemctl is-active mosquitto.service 2>/dev/null || true)" = active ] \
        || problems+=("mosquitto.service $(in_ct systemctl is-active mosquitto.service 2>/dev/null || true)")
    conf_ok=no; acl_ok=no
    cmp -s "$repo/deploy/mosquitto/mosquitto.conf" "$ct_root/etc/mosquitto/conf.d/crushcell.conf" && conf_ok=yes
    cmp -s "$repo/deploy/mosquitto/crushcell.acl" "$ct_root/etc/mosquitto/crushcell/crushcell.acl" && acl_ok=yes
    [ "$conf_ok" = yes ] || problems+=("conf.d/crushcell.conf is not the shipped mosquitto.conf")
    [ "$acl_ok" = yes ] || problems+=("the ACL is not the shipped crushcell.acl")
    # A viewer, as a plant would add one, to read the controller's retained status.
    viewer_pw="$(python3 -c 'import secrets; print(secrets.token_urlsafe(16))')"
    if [ -f "$ct_root/etc/mosquitto/crushcell.passwd" ]; then
        in_ct mosquitto_passwd -b /etc/mosquitto/crushcell.passwd viewer-grafana "$viewer_pw"
        in_ct systemctl reload mosquitto.service || true
        sleep 0.5
        sub="$(in_ct /opt/crushcell/current/bin/python /root/src/substatus.py viewer-grafana "$viewer_pw" \
            /etc/mosquitto/certs/ca.crt crushcell/cell1/status 2>&1 || true)"
        case "$sub" in retained=True*) ;; *) problems+=("no retained status: $sub") ;; esac
    else
        problems+=("no /etc/mosquitto/crushcell.passwd")
    fi
    local what
    what="install.sh --with-mosquitto: exit $rc after $took s; mosquitto $(in_ct systemctl is-active mosquitto.service 2>/dev/null || true) with the shipped conf ($conf_ok) and ACL ($acl_ok); controller over TLS 8883 as crushcell-cell1, crushcell/cell1/status: ${sub:-none}"
    if [ "${#problems[@]}" -eq 0 ]; then
        result h PASS "$what"
    else
        result h FAIL "$what; problems: $(IFS=';'; echo "${problems[*]}")"
        show_log 20
        in_ct journalctl -q --no-pager -u mosquitto -n 10 -o cat | sed 's/^/    mosquitto| /' || true
    fi
}
check_mosquitto
check_purge "(after --with-mosquitto)"

shutdown_container
echo
echo "check-systemd: summary ($(( SECONDS - started )) s in all; $wheel in systemd-nspawn, $suite)"
printf '  %s\n' "${summary[@]}"
if [ "$failures" -gt 0 ]; then
    echo "check-systemd: $failures check(s) FAILED"
    exit 1
fi
echo "check-systemd: all checks passed"
