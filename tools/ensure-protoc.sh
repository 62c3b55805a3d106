#!/usr/bin/env bash
# Make sure `protoc` exists: tests/test_sparkplug_config_and_schema.py compiles the Sparkplug B
# schema again and checks that controller/link/sparkplug/descriptor.py matches it.
# Installs Debian's package when we are root (or have sudo); otherwise says what to install.
set -euo pipefail
if command -v protoc >/dev/null 2>&1; then
  exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else SUDO="none"; fi
  if [ "$SUDO" != none ]; then
    echo "Installing protoc from Debian's packages (the Sparkplug schema test compiles the .proto)..."
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends protobuf-compiler >/dev/null
    exit 0
  fi
fi
cat >&2 <<'MSG'
protoc (the protobuf compiler) is not installed and I cannot install it here.
The Sparkplug schema test needs it. Install it, for example:
  Debian/Ubuntu/Raspberry Pi OS:  sudo apt-get install protobuf-compiler
  Fedora:                          sudo dnf install protobuf-compiler
  macOS (Homebrew):                brew install protobuf
Then run `make test` again.
MSG
exit 1
