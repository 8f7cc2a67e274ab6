#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build Perennial: libuv's
# headers (and pkg-config). Needs root or sudo only when something is missing.
set -euo pipefail
if pkg-config --exists libuv 2>/dev/null; then exit 0; fi
echo "setup: installing libuv1-dev and pkg-config" >&2
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libuv1-dev pkg-config >/dev/null
