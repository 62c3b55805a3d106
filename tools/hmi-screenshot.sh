#!/usr/bin/env bash
# Remake docs/hmi-cell-thermal-runaway.png, the README's screenshot of the HMI's cell view.
#
#   tools/hmi-screenshot.sh [OUT.png] [SPEED]
#
# Starts, all on loopback and in a temp dir: a Mosquitto on a free port, a real
# `crushcell run --hal sim --scenario config/scenarios/thermal_runaway.toml --speed SPEED` (default 20)
# and `crushcell hmi`; waits for the cell to trip (first-out temp_rise, t = 400 s of the scenario),
# lets the trends draw a few more points, then takes the page with
# `chromium --headless --screenshot --window-size=1280,800`. Needs mosquitto and chromium.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${1:-docs/hmi-cell-thermal-runaway.png}
SPEED=${2:-20}
PY=${PY:-.venv/bin/python}
CRUSHCELL=("$PY" -m controller.cli)
AFTER_TRIP_S=${AFTER_TRIP_S:-12}
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
CHROMIUM=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
[ -x "$MOSQUITTO" ] || { echo "hmi-screenshot: mosquitto is not installed (make mosquitto)" >&2; exit 1; }
[ -n "$CHROMIUM" ] || { echo "hmi-screenshot: chromium is not installed (apt-get install chromium)" >&2; exit 1; }

TMP=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT

free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
BROKER_PORT=$(free_port)
HTTP_PORT=$(free_port)

printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$BROKER_PORT" >"$TMP/mosquitto.conf"
"$MOSQUITTO" -c "$TMP/mosquitto.conf" >"$TMP/mosquitto.log" 2>&1 &
PIDS+=($!)
"${CRUSHCELL[@]}" hmi --config config/cell.toml --broker "127.0.0.1:$BROKER_PORT" \
  --listen "127.0.0.1:$HTTP_PORT" --state-dir "$TMP/state" >"$TMP/hmi.log" 2>&1 &
PIDS+=($!)
sleep 1
"${CRUSHCELL[@]}" run --config config/cell.toml --hal sim --no-status \
  --scenario config/scenarios/thermal_runaway.toml --speed "$SPEED" --state-dir "$TMP/state" \
  --broker "127.0.0.1:$BROKER_PORT" >"$TMP/run.log" 2>&1 &
PIDS+=($!)

# cell1's state and first-out cause, as the HMI shows them
state() {
  "$PY" - "$HTTP_PORT" <<'PY' 2>/dev/null || true
import json, re, sys, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}"
with urllib.request.urlopen(base + "/api/state", timeout=5) as r:
    state = json.load(r).get("cells", {}).get("cell1", {}).get("state") or ""
with urllib.request.urlopen(base + "/cell/cell1", timeout=5) as r:
    first = re.search(r'class="cause first-out">([^<]*)<', r.read().decode())
print(state, "first-out:", first.group(1) if first else "none")
PY
}

echo "hmi-screenshot: thermal runaway at ${SPEED}x: the trip comes at t = 400 s, about $((400 / SPEED)) s from now"
deadline=$((SECONDS + 400 / SPEED + 60))
until [[ "$(state)" == TRIPPED* ]]; do
  if ((SECONDS > deadline)); then
    echo "hmi-screenshot: no trip seen; the end of the logs:" >&2
    tail -n 20 "$TMP/run.log" "$TMP/hmi.log" >&2
    exit 1
  fi
  sleep 0.5
done
echo "hmi-screenshot: $(state); waiting ${AFTER_TRIP_S} s for the trends"
sleep "$AFTER_TRIP_S"
"$CHROMIUM" --headless --no-sandbox --disable-gpu --no-first-run --hide-scrollbars \
  --user-data-dir="$TMP/profile" --window-size=1280,800 --screenshot="$TMP/shot.png" \
  "http://127.0.0.1:$HTTP_PORT/cell/cell1" >/dev/null 2>&1
mv "$TMP/shot.png" "$OUT"
echo "hmi-screenshot: wrote $OUT ($(wc -c <"$OUT") bytes)"
