#!/usr/bin/env bash
# Make sure a `mosquitto` broker binary exists: the MQTT tests start their own on loopback.
# Installs Debian's package when we are root (or have sudo); otherwise says what to install.
set -euo pipefail
if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then
  exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else SUDO="none"; fi
  if [ "$SUDO" != none ]; then
    echo "Installing Mosquitto from Debian's packages (needed by the MQTT tests)..."
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mosquitto mosquitto-clients >/dev/null
    # The tests start their own brokers; do not leave the packaged service fighting for port 1883.
    exit 0
  fi
fi
cat >&2 <<'MSG'
Mosquitto is not installed and I cannot install it here.
The MQTT tests need the `mosquitto` broker binary. Install it, for example:
  Debian/Ubuntu/Raspberry Pi OS:  sudo apt-get install mosquitto mosquitto-clients
  Fedora:                          sudo dnf install mosquitto
  macOS (Homebrew):                brew install mosquitto
Then run `make test` again.
MSG
exit 1
